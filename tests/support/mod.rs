//! The test harness shared by the integration tests: where things are, and independent readers.
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_path_buf()
}

/// A built plugin from `plugins/dist/`.
pub fn plugin(name: &str) -> PathBuf {
    let path = repo().join("plugins/dist").join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: build the plugins first (`make plugins`)",
        path.display()
    );
    path
}

/// The `weir` binary under test.
pub fn weir() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
    // Each test run compiles into its own cache, so a stale artifact can never hide a bug.
    cmd.env(
        "WEIR_CACHE_DIR",
        std::env::temp_dir().join("weir-test-cache"),
    );
    cmd
}

/// The Python that has the independent readers (pyarrow, duckdb): `$WEIR_PYTHON`, else the
/// virtualenv `make test` sets up.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("WEIR_PYTHON") {
        return p.into();
    }
    let home = std::env::var_os("HOME").expect("HOME is set");
    let venv = Path::new(&home).join(".cache/weir/venv/bin/python");
    assert!(
        venv.is_file(),
        "no Python with duckdb at {}: run `make test` (it sets one up) or set WEIR_PYTHON",
        venv.display()
    );
    venv
}

/// Runs a DuckDB query in a separate Python process and returns its rows as JSON values.
pub fn duckdb(sql: &str) -> Vec<serde_json::Value> {
    let script = r#"
import duckdb, json, sys
rows = duckdb.sql(sys.argv[1])
cols = rows.columns
print(json.dumps([dict(zip(cols, r)) for r in rows.fetchall()], default=str))
"#;
    let out = Command::new(python())
        .arg("-c")
        .arg(script)
        .arg(sql)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "duckdb failed on {sql}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("duckdb printed JSON")
}

/// Writes a pipeline file into `dir` after replacing `{plugins}` with the plugin folder and
/// `{out}` with `dir`.
pub fn pipeline_file(dir: &Path, name: &str, yaml: &str) -> PathBuf {
    let text = yaml
        .replace(
            "{plugins}",
            &repo().join("plugins/dist").display().to_string(),
        )
        .replace("{out}", &dir.display().to_string());
    let path = dir.join(name);
    std::fs::write(&path, text).expect("temp dir is writable");
    path
}

/// Runs `weir run --quiet FILE`, asserts it succeeded, and returns what it printed on stdout.
pub fn run_pipeline(file: &Path) -> String {
    let run = weir()
        .args(["run", "--quiet"])
        .arg(file)
        .output()
        .expect("weir starts");
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(
        run.status.success(),
        "weir run {} failed:\n{stdout}\n{}",
        file.display(),
        String::from_utf8_lossy(&run.stderr)
    );
    stdout
}

/// The text of `pipelines/quickstart.yaml`.
pub fn quickstart() -> String {
    std::fs::read_to_string(repo().join("pipelines/quickstart.yaml"))
        .expect("the quick start exists")
}
