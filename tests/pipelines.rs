//! Pipeline files: every example in `pipelines/` (and `pipelines/served/`, for `weir serve`)
//! validates, and every invalid spec in
//! `tests/invalid/` fails with exactly the message (file, line, column, what was expected) in
//! its `.err` file. `WEIR_BLESS=1` rewrites the `.err` files from the current output.

mod support;

use std::{fs, path::PathBuf};

use weir::{pipeline, plugin::PluginHost};

fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(support::repo().join(dir))
        .expect("folder exists")
        .map(|e| e.expect("readable").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_pipeline_validates() {
    support::plugin("enrich");
    let host = PluginHost::new(None).unwrap();
    let files = [yaml_files("pipelines"), yaml_files("pipelines/served")].concat();
    assert!(!files.is_empty());
    for file in files {
        if let Err(e) = pipeline::load(&file, &host) {
            panic!("{} does not validate:\n{e}", file.display());
        }
    }
}

#[test]
fn invalid_specs_fail_with_their_exact_messages() {
    support::plugin("enrich");
    let host = PluginHost::new(None).unwrap();
    let root = format!("{}/", support::repo().display());
    let bless = std::env::var_os("WEIR_BLESS").is_some();
    let files = yaml_files("tests/invalid");
    assert!(files.len() >= 8, "at least eight invalid specs");
    let mut mismatches = Vec::new();
    for file in files {
        let message = match pipeline::load(&file, &host) {
            Ok(_) => format!("(no error: {} validated)", file.display()),
            Err(e) => e.to_string().replace(&root, ""),
        };
        let expected_file = file.with_extension("err");
        if bless {
            fs::write(&expected_file, format!("{message}\n")).unwrap();
            continue;
        }
        let expected = fs::read_to_string(&expected_file).unwrap_or_default();
        if expected.trim_end() != message {
            mismatches.push(format!(
                "{}:\n  expected: {}\n  got:      {message}",
                file.display(),
                expected.trim_end()
            ));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn validate_command_prints_the_errors_and_exits_non_zero() {
    let bad = support::repo().join("tests/invalid/unknown-key.yaml");
    let good = support::repo().join("pipelines/quickstart.yaml");
    let out = support::weir()
        .arg("validate")
        .arg(&good)
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("quickstart.yaml: ok"), "{stdout}");
    assert!(
        stderr.contains("unknown-key.yaml:5:5: unknown field `cout`"),
        "{stderr}"
    );
}

/// Every option of the pipeline file (a field of a spec struct) is described in
/// docs/pipeline.md, so the reference cannot fall behind the code.
#[test]
fn every_option_is_documented() {
    let spec = fs::read_to_string(support::repo().join("host/src/pipeline/spec.rs")).unwrap();
    let docs = fs::read_to_string(support::repo().join("docs/pipeline.md")).unwrap();
    let mut missing = Vec::new();
    for line in spec.lines() {
        let Some(field) = line
            .trim()
            .strip_prefix("pub ")
            .and_then(|rest| rest.split_once(':'))
            .map(|(f, _)| f)
        else {
            continue;
        };
        if !field.chars().all(|c| c.is_ascii_lowercase() || c == '_') || field == "kind" {
            continue; // not a field, or the type key of a sink / column (documented as such)
        }
        if !docs.contains(&format!("| `{field}` |")) {
            missing.push(field.to_string());
        }
    }
    for name in [
        "generator",
        "file",
        "parquet",
        "iceberg",
        "postgres",
        "redis",
        "object_store",
        "jsonl",
        "stdout",
        "blackhole",
    ] {
        if !docs.contains(&format!("`{name}`")) {
            missing.push(name.to_string());
        }
    }
    assert!(missing.is_empty(), "not in docs/pipeline.md: {missing:?}");
}
