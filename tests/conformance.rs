//! The conformance vectors in `plugins/conformance/` against the plugins built from source:
//! `enrich` in Rust, C, JavaScript and Python passes the same vectors (identical outputs for
//! identical inputs, the same per-record errors), the stateful plugins (`ohlc`, `sessionize` and a
//! test plugin) pass their state and timer vectors, `cdc` its outputs and errors, and the harness
//! itself fails when a plugin does not conform.

mod support;

use std::path::Path;

/// `weir plugin test`, returning whether it passed and what it printed.
fn plugin_test(plugin: &Path, cases: &Path, extra: &[&str]) -> (bool, String) {
    let out = support::weir()
        .args(["plugin", "test"])
        .arg(plugin)
        .arg("--cases")
        .arg(cases)
        .args(extra)
        .output()
        .expect("weir runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn cases(name: &str) -> std::path::PathBuf {
    support::repo().join("plugins/conformance").join(name)
}

/// The languages `enrich` is written in, by the name of its build in `plugins/dist/`, with the
/// memory its instance needs (a JavaScript engine or a Python interpreter needs more than 64 MiB).
const ENRICH: [(&str, &str); 4] = [
    ("enrich", "64"),
    ("enrich-c", "64"),
    ("enrich-js", "256"),
    ("enrich-python", "256"),
];

#[test]
fn enrich_conforms_in_every_language() {
    let mut failures = Vec::new();
    for (name, memory) in ENRICH {
        let (passed, report) = plugin_test(
            &support::plugin(name),
            &cases("enrich"),
            &["--memory-mib", memory],
        );
        println!("{report}");
        assert!(
            report.contains("11 cases: "),
            "{name}: every case ran:\n{report}"
        );
        if !passed {
            failures.push(format!("{name}:\n{report}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn state_and_timer_vectors_pass() {
    for (plugin, vectors, count) in [
        ("test-window-count", "window-count", 4),
        ("ohlc", "ohlc", 4),
        ("sessionize", "sessionize", 7),
        ("cdc", "cdc", 6),
    ] {
        let (passed, report) = plugin_test(&support::plugin(plugin), &cases(vectors), &[]);
        assert!(passed, "{report}");
        assert!(
            report.contains(&format!("{count} cases: {count} passed, 0 failed")),
            "{report}"
        );
    }
}

#[test]
fn a_plugin_that_does_not_conform_fails_with_every_difference_named() {
    // The chaos plugin passes values through unchanged: no fields added, no errors.
    let (passed, report) = plugin_test(&support::plugin("test-chaos"), &cases("enrich"), &[]);
    assert!(!passed, "{report}");
    for part in [
        "FAIL 01-adds-fields",
        "record 0: value differs",
        "expected an error for record 0 starting \"value is not a JSON object\", got none",
        "init: expected an error starting \"enrich takes no settings, found `x`\"",
        "11 cases: 0 passed, 11 failed",
    ] {
        assert!(report.contains(part), "missing `{part}` in:\n{report}");
    }
    // The enrich vectors hold no state, so a stateful plugin's state shows up as a difference.
    let (passed, report) =
        plugin_test(&support::plugin("test-window-count"), &cases("enrich"), &[]);
    assert!(!passed);
    assert!(
        report.contains("declared outputs [\"late\"], expected []"),
        "{report}"
    );
}

#[test]
fn a_bad_case_file_is_named_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.json"),
        "{\n  \"steps\": [\n    {\"process\": {\"records\": [{\"valeu\": \"x\"}]}}\n  ]\n}\n",
    )
    .unwrap();
    let (passed, report) = plugin_test(&support::plugin("enrich"), dir.path(), &[]);
    assert!(!passed);
    assert!(
        report.contains("bad.json: unknown field `valeu`"),
        "{report}"
    );
    assert!(report.contains("line 3"), "{report}");

    let empty = tempfile::tempdir().unwrap();
    let (passed, report) = plugin_test(&support::plugin("enrich"), empty.path(), &[]);
    assert!(!passed);
    assert!(report.contains("no case files (*.json) here"), "{report}");
}
