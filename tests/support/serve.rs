//! `weir serve` under test: started as the real binary on a free loopback port, driven over
//! HTTP with a client of its own, stopped with SIGINT (gracefully) when dropped.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;

/// A running server.
pub struct Server {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Its pipelines folder.
    pub pipelines: PathBuf,
    /// Sent with every request, when set (the `--token` it was started with, at first).
    pub token: Option<String>,
    client: reqwest::blocking::Client,
    /// What it printed on standard error after its first line.
    lines: std::sync::Mutex<mpsc::Receiver<String>>,
}

/// A response: its status and its body (JSON, or the text as a JSON string).
pub type Reply = (u16, Value);

impl Server {
    /// Starts `weir serve` with its pipelines and data folders in `dir` and the extra
    /// arguments `args` (`--listen` among them overrides the free loopback port); returns
    /// once it prints the address it serves.
    pub fn start(dir: &Path, args: &[&str]) -> Server {
        let pipelines = dir.join("pipelines");
        std::fs::create_dir_all(&pipelines).unwrap();
        let mut cmd = super::weir();
        cmd.arg("serve");
        if !args.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        let mut child = cmd
            .arg("--pipelines")
            .arg(&pipelines)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(args)
            .env("WEIR_LOG", "weir=info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("weir starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut said = Vec::new();
        let base = loop {
            let line = match lines.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => line,
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => continue,
                Err(_) => {
                    let _ = child.kill();
                    panic!("weir serve did not start:\n{}", said.join("\n"));
                }
            };
            if let Some(rest) = line.strip_prefix("weir: serving http://") {
                let addr = rest.split_whitespace().next().unwrap();
                break format!("http://{}", addr.replace("0.0.0.0", "127.0.0.1"));
            }
            said.push(line);
        };
        let token = args
            .iter()
            .position(|a| *a == "--token")
            .map(|i| args[i + 1].to_string());
        Server {
            child: Some(child),
            base,
            pipelines,
            token,
            client: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(180))
                .build()
                .unwrap(),
            lines: std::sync::Mutex::new(lines),
        }
    }

    /// What the server printed so far (its log), for a failure's message.
    pub fn log(&self) -> String {
        let lines = self
            .lines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        lines.try_iter().collect::<Vec<_>>().join("\n")
    }

    /// Sends a request with `body` of `content_type`.
    pub fn send(&self, method: &str, path: &str, content_type: &str, body: Vec<u8>) -> Reply {
        self.send_with(method, path, &[("content-type", content_type)], body)
    }

    /// Sends a request with `body` and the headers `headers`.
    pub fn send_with(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Reply {
        let mut request = self
            .client
            .request(method.parse().unwrap(), format!("{}{path}", self.base))
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().expect("the server answers");
        let status = response.status().as_u16();
        let text = response.text().unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, body)
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Reply {
        self.send("GET", path, "application/json", Vec::new())
    }

    /// `method path` with a JSON body.
    pub fn json(&self, method: &str, path: &str, body: &Value) -> Reply {
        self.send(
            method,
            path,
            "application/json",
            body.to_string().into_bytes(),
        )
    }

    /// `GET path`, asserting 200.
    pub fn get_ok(&self, path: &str) -> Value {
        let (status, body) = self.get(path);
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// Submits a pipeline file, asserting 201.
    pub fn submit(&self, yaml: &str) -> Value {
        let (status, body) = self.send(
            "POST",
            "/api/pipelines",
            "application/yaml",
            yaml.as_bytes().to_vec(),
        );
        assert_eq!(status, 201, "submitting the pipeline: {body}");
        body
    }

    /// Swaps a stage's plugin to the component at `wasm`, asserting 200; returns the swap.
    pub fn swap(&self, pipeline: &str, stage: &str, wasm: &Path) -> Value {
        let (status, body) = self.send(
            "PUT",
            &format!("/api/pipelines/{pipeline}/stages/{stage}/plugin"),
            "application/wasm",
            std::fs::read(wasm).unwrap(),
        );
        assert_eq!(
            status,
            200,
            "swapping {stage} to {}: {body}",
            wasm.display()
        );
        body
    }

    /// Waits (at most `secs`) until `done` holds of the pipeline's detail; returns it.
    pub fn wait_for(&self, pipeline: &str, secs: u64, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let detail = self.get_ok(&format!("/api/pipelines/{pipeline}"));
            if done(&detail) {
                return detail;
            }
            assert!(
                Instant::now() < deadline,
                "pipeline {pipeline} not there within {secs} s: {detail:#}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the pipeline is in `state`.
    pub fn wait_state(&self, pipeline: &str, state: &str, secs: u64) -> Value {
        self.wait_for(pipeline, secs, |d| d["state"] == state)
    }

    /// Stops the server with SIGINT and asserts it exited 0.
    pub fn stop(mut self) {
        let mut child = self.child.take().unwrap();
        std::process::Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        let status = child.wait().unwrap();
        assert!(
            status.success(),
            "weir serve exited {status:?}:\n{}",
            self.log()
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = std::process::Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The hex sha256 of a file's bytes.
pub fn sha256(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

/// Records the source handed out, from a pipeline's summary or detail.
pub fn records_in(detail: &Value) -> u64 {
    detail["records_in"].as_u64().unwrap()
}

/// A server running the OHLC pipeline `trades` at 20,000 trades a second for long enough.
pub fn running_ohlc(dir: &Path, args: &[&str]) -> Server {
    let server = Server::start(dir, args);
    server.submit(&super::ohlc::served_pipeline(
        dir, "trades", "ohlc", 50_000_000, 20_000,
    ));
    server.wait_for("trades", 60, |d| {
        d["state"] == "running" && records_in(d) > 0
    });
    server
}

/// A pipeline `name` of records generated at `rate` a second (without end, in practice)
/// through the Rust `enrich` plugin into a null sink, its checkpoints and state in `dir`.
pub fn enrich_pipeline(dir: &Path, name: &str, rate: u64) -> String {
    format!(
        "version: 1
name: {name}
source:
  generator: {{ count: 100000000, rate_per_sec: {rate} }}
stages:
  - name: enrich
    plugin: {}
sinks:
  - name: out
    input: enrich
    blackhole: {{}}
  - name: dead
    input: dlq
    blackhole: {{}}
checkpoint: {{ store: {dir}/checkpoints, state_dir: {dir}/state }}
",
        super::plugin("enrich").display(),
        dir = dir.display()
    )
}
