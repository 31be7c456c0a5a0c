//! The control plane of `weir serve`, as the real binary over HTTP: refusals that leave the
//! running pipeline untouched, the bearer token, restarts with backoff, `/metrics` read by
//! Prometheus' own parser, the web page in headless Chromium, and generated requests from the
//! OpenAPI document (schemathesis) that must all get the answers it describes.

mod support;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use support::serve::{Reply, Server, enrich_pipeline, records_in, running_ohlc, sha256};

#[test]
fn refused_plugins_leave_the_running_pipeline_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let server = running_ohlc(dir.path(), &["--max-wasm-bytes", "4000000"]);
    let v1 = sha256(&support::plugin("ohlc"));
    let swap = |bytes: Vec<u8>| {
        server.send(
            "PUT",
            "/api/pipelines/trades/stages/ohlc/plugin",
            "application/wasm",
            bytes,
        )
    };
    let ohlc = std::fs::read(support::plugin("ohlc")).unwrap();
    let refusals: Vec<(&str, Reply, u16, &str)> = vec![
        (
            "a component of another world",
            swap(std::fs::read(support::plugin("test-wrong-world")).unwrap()),
            422,
            "does not implement the weir:plugin/stage world",
        ),
        (
            "a truncated binary",
            swap(ohlc[..ohlc.len() / 2].to_vec()),
            400,
            "is not a valid WebAssembly component",
        ),
        (
            "a plugin whose init refuses the stage's config",
            swap(std::fs::read(support::plugin("enrich")).unwrap()),
            422,
            "refused its config",
        ),
        (
            "an upload over --max-wasm-bytes",
            swap(vec![0; 5_000_000]),
            413,
            "larger than",
        ),
        (
            "a stage the pipeline does not have",
            server.send(
                "PUT",
                "/api/pipelines/trades/stages/nope/plugin",
                "application/wasm",
                ohlc.clone(),
            ),
            404,
            "has no stage `nope`",
        ),
        (
            "neither bytes nor JSON",
            server.send(
                "PUT",
                "/api/pipelines/trades/stages/ohlc/plugin",
                "text/plain",
                b"hello".to_vec(),
            ),
            415,
            "application/wasm",
        ),
        (
            "a file on the server that is not a plugin",
            server.json(
                "PUT",
                "/api/pipelines/trades/stages/ohlc/plugin",
                &json!({"path": "/etc/hostname"}),
            ),
            400,
            "a plugin file's name ends in `.wasm`",
        ),
        (
            "a pipeline file sent as a form",
            server.send(
                "POST",
                "/api/pipelines",
                "application/x-www-form-urlencoded",
                b"version: 1".to_vec(),
            ),
            415,
            "application/yaml",
        ),
        (
            "an unknown digest",
            server.json(
                "PUT",
                "/api/pipelines/trades/stages/ohlc/plugin",
                &json!({"sha256": "0".repeat(64)}),
            ),
            404,
            "no uploaded plugin",
        ),
    ];
    for (what, (status, body), want, says) in &refusals {
        assert_eq!(status, want, "{what}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{what}: {body}");
        assert_eq!(body["error"]["kind"], "user", "{what}: {body}");
    }

    // Untouched: the same version, never swapped, still running and reading.
    let before = records_in(&server.get_ok("/api/pipelines/trades"));
    let after = server.wait_for("trades", 30, |d| records_in(d) > before + 20_000);
    assert_eq!(after["state"], "running");
    // The digest the stage thread reports running, not only the server's record of versions.
    assert_eq!(after["stages"][0]["plugin"]["sha256"], v1.as_str());
    assert_eq!(after["stages"][0]["swaps"], 0);
    assert_eq!(after["restarts"], 0);
    let refused = server.get_ok("/api/pipelines/trades/events")["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "swap_refused")
        .count();
    assert_eq!(
        refused, 4,
        "the plugins refused once read (another world, truncated, init, not a plugin file) are in the log"
    );

    // A plugin named by its path on the server is taken like an upload.
    let (status, body) = server.json(
        "PUT",
        "/api/pipelines/trades/stages/ohlc/plugin",
        &json!({"path": support::plugin("ohlc-v2")}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["to"], sha256(&support::plugin("ohlc-v2")).as_str());

    // A version whose named outputs differ from what the pipeline wires is refused too.
    let dir2 = tempfile::tempdir().unwrap();
    server.submit(&enrich_pipeline(dir2.path(), "pass", 1000));
    server.wait_state("pass", "running", 60);
    let (status, body) = server.send(
        "PUT",
        "/api/pipelines/pass/stages/enrich/plugin",
        "application/wasm",
        std::fs::read(support::plugin("test-chaos")).unwrap(),
    );
    assert_eq!(status, 200, "chaos takes any config: {body}");
    let (status, body) = server.send(
        "PUT",
        "/api/pipelines/pass/stages/enrich/plugin",
        "application/wasm",
        ohlc,
    );
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("declares the outputs [late]"),
        "{body}"
    );
    server.stop();
}

#[test]
fn a_server_beyond_loopback_wants_its_token() {
    let dir = tempfile::tempdir().unwrap();
    // Without a token it does not start at all.
    let refused = support::weir()
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("without a token"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let mut server = Server::start(
        dir.path(),
        &["--listen", "0.0.0.0:0", "--token", "s3cret-token"],
    );
    server.token = None;
    for path in ["/api/pipelines", "/metrics", "/api/plugins"] {
        let (status, body) = server.get(path);
        assert_eq!(status, 401, "GET {path} without the token: {body}");
        assert_eq!(body["error"]["kind"], "user");
    }
    server.token = Some("s3cret-tokeX".into());
    assert_eq!(server.get("/api/pipelines").0, 401, "a wrong token");
    server.token = Some("s3cret-token".into());
    assert_eq!(server.get("/api/pipelines").0, 200);
    server.token = None;
    for public in ["/healthz", "/openapi.json", "/"] {
        assert_eq!(server.get(public).0, 200, "{public} needs no token");
    }
    server.stop();
}

#[test]
fn pages_of_other_sites_cannot_drive_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let port = server.base.rsplit(':').next().unwrap().to_string();
    // A browser names the page's site in Origin: another site's page is refused…
    let (status, body) = server.send_with(
        "POST",
        "/api/pipelines/any/stop",
        &[("origin", "http://evil.example")],
        Vec::new(),
    );
    assert_eq!(status, 403, "{body}");
    // …the server's own page is not (the pipeline does not exist: 404).
    let own = format!("http://127.0.0.1:{port}");
    let (status, _) = server.send_with(
        "POST",
        "/api/pipelines/any/stop",
        &[("origin", &own)],
        Vec::new(),
    );
    assert_eq!(status, 404);
    // Without a token, a name another site points at 127.0.0.1 is refused.
    let (status, body) = server.send_with(
        "GET",
        "/api/pipelines",
        &[("host", &format!("rebound.example:{port}"))],
        Vec::new(),
    );
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        server
            .send_with(
                "GET",
                "/api/pipelines",
                &[("host", &format!("localhost:{port}"))],
                Vec::new()
            )
            .0,
        200
    );
    server.stop();
}

#[test]
fn a_swapped_in_version_survives_restarts_of_the_pipeline_and_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = running_ohlc(dir.path(), &[]);
    let v2 = sha256(&support::plugin("ohlc-v2"));
    server.swap("trades", "ohlc", &support::plugin("ohlc-v2"));
    let running = |server: &Server| {
        let d = server.wait_for("trades", 60, |d| {
            d["state"] == "running" && records_in(d) > 0
        });
        d["stages"][0]["plugin"]["sha256"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (status, body) = server.json("POST", "/api/pipelines/trades/stop", &json!({}));
    assert_eq!((status, &body["state"]), (200, &json!("stopped")), "{body}");
    let (status, body) = server.json("POST", "/api/pipelines/trades/start", &json!({}));
    assert_eq!(status, 202, "{body}");
    assert_eq!(running(&server), v2, "after a stop and a start");
    server.stop();
    let server = Server::start(dir.path(), &[]);
    assert_eq!(running(&server), v2, "after a restart of the server");
    server.stop();
}

#[test]
fn a_failing_pipeline_restarts_with_backoff_then_gives_up() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            "--restart-attempts",
            "2",
            "--restart-backoff-min",
            "300",
            "--restart-backoff-max",
            "5000",
        ],
    );
    // The sink's folder is a file: every run fails as the sink opens.
    std::fs::write(dir.path().join("blocker"), "a file, not a folder").unwrap();
    server.submit(&format!(
        "version: 1
name: unreachable
source:
  generator: {{ count: 1000 }}
sinks:
  - name: out
    input: source
    jsonl: {{ path: {dir}/blocker/out.jsonl }}
checkpoint: {{ store: {dir}/checkpoints }}
",
        dir = dir.path().display()
    ));
    let started = Instant::now();
    let failed = server.wait_state("unreachable", "failed", 60);
    assert!(
        started.elapsed() >= Duration::from_millis(300 + 600),
        "two waits, the second twice the first"
    );
    assert_eq!(failed["restarts"], 2);
    assert!(
        failed["error"].as_str().unwrap().contains("blocker"),
        "the error names what failed: {failed}"
    );
    let exceptions = server.get_ok("/api/pipelines/unreachable/exceptions")["exceptions"].clone();
    let attempts: Vec<u64> = exceptions
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(attempts, [3, 2, 1], "newest first");
    let waits: Vec<u64> = server.get_ok("/api/pipelines/unreachable/events")["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "restarting")
        .map(|e| e["wait_ms"].as_u64().unwrap())
        .collect();
    assert_eq!(waits, [300, 600]);
    let metrics = prometheus(&server);
    assert_eq!(
        metrics["weir_pipeline_restarts_total{pipeline=unreachable}"],
        2.0
    );
    assert_eq!(metrics["weir_pipeline_up{pipeline=unreachable}"], 0.0);
    server.stop();
}

/// `/metrics` as Prometheus' own Python parser reads it: `name{label=value,…}` → value.
fn prometheus(server: &Server) -> std::collections::BTreeMap<String, f64> {
    let (status, text) = server.get("/metrics");
    assert_eq!(status, 200);
    let script = r##"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        out[f"{s.name}{{{labels}}}"] = s.value
    out[f"# {family.name}"] = 0
print(json.dumps(out))
"##;
    let mut child = std::process::Command::new(support::python())
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_str().unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "Prometheus' parser refused /metrics: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        text.as_str().unwrap()
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn metrics_are_prometheus_text_that_agrees_with_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let server = running_ohlc(dir.path(), &[]);
    server.wait_for("trades", 60, |d| {
        d["last_checkpoint"].is_object() && d["stages"][0]["records_out"].as_u64() > Some(0)
    });
    let (status, _) = server.json("POST", "/api/pipelines/trades/savepoints", &json!({}));
    assert_eq!(status, 201);
    let detail = server.get_ok("/api/pipelines/trades");
    let m = prometheus(&server);
    let at_least = |key: &str, floor: f64| {
        let v = *m
            .get(key)
            .unwrap_or_else(|| panic!("{key} missing from {m:#?}"));
        assert!(v >= floor, "{key} = {v}, expected at least {floor}");
        v
    };
    let p = "pipeline=trades";
    assert_eq!(m[&format!("weir_pipeline_up{{{p}}}")], 1.0);
    // Read after the detail, so each counter is at least what the API said.
    at_least(
        &format!("weir_source_records_total{{{p}}}"),
        records_in(&detail) as f64,
    );
    at_least(
        &format!("weir_stage_records_in_total{{{p},stage=ohlc}}"),
        detail["stages"][0]["records_in"].as_f64().unwrap(),
    );
    at_least(
        &format!("weir_stage_records_out_total{{{p},stage=ohlc}}"),
        1.0,
    );
    at_least(&format!("weir_sink_records_total{{{p},sink=bars}}"), 1.0);
    at_least(&format!("weir_checkpoints_total{{{p}}}"), 1.0);
    at_least(&format!("weir_checkpoint_bytes{{{p}}}"), 1.0);
    at_least(
        &format!("weir_plugin_memory_bytes{{{p},stage=ohlc}}"),
        65536.0,
    );
    assert_eq!(
        m[&format!("weir_plugin_swaps_total{{{p},stage=ohlc}}")],
        0.0
    );
    // Histograms: cumulative buckets, +Inf equal to the count, samples in them.
    for h in [
        "weir_end_to_end_latency_seconds",
        "weir_checkpoint_duration_seconds",
    ] {
        let count = at_least(&format!("{h}_count{{{p}}}"), 1.0);
        assert_eq!(m[&format!("{h}_bucket{{le=+Inf,{p}}}")], count);
        let buckets: Vec<f64> = m
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{h}_bucket{{")))
            .map(|(_, v)| *v)
            .collect();
        assert!(buckets.len() > 10 && buckets.iter().all(|b| *b <= count));
    }
    for family in [
        "weir_dead_letters",
        "weir_checkpoint_failures",
        "weir_backpressure_seconds",
        "weir_kafka_consumer_lag",
        "weir_plugin_fuel_consumed",
        "weir_plugin_traps",
        "weir_plugin_swap_pause_seconds",
    ] {
        assert!(
            m.contains_key(&format!("# {family}")),
            "family {family} missing"
        );
    }
    server.stop();
}

#[test]
fn the_web_page_shows_the_running_pipeline_and_rolls_a_stage_back() {
    let installed = std::process::Command::new(support::repo().join("tests/ui/install.sh"))
        .status()
        .unwrap();
    assert!(installed.success(), "tests/ui/install.sh failed");
    let dir = tempfile::tempdir().unwrap();
    let server = running_ohlc(dir.path(), &[]);
    let v1 = sha256(&support::plugin("ohlc"));
    server.swap("trades", "ohlc", &support::plugin("ohlc-v2"));
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("weir-ui-rollback.png");
    let out = std::process::Command::new("node")
        .arg(support::repo().join("tests/ui/ui.mjs"))
        .args([&server.base, "trades", "ohlc"])
        .arg(&shot)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the browser test failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("the page, after its rollback: {}", shot.display());
    assert!(seen["rate"].as_f64().unwrap() > 0.0, "{seen}");
    assert_eq!(seen["after"], v1.as_str(), "{seen}");
    // The page's rollback went through the API: the stage runs v1 again.
    let versions = server.get_ok("/api/pipelines/trades/stages/ohlc/versions");
    assert_eq!(versions["current"]["sha256"], v1.as_str());
    assert_eq!(
        versions["history"].as_array().unwrap().last().unwrap()["action"],
        "rolled_back"
    );
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 10_000,
        "a screenshot"
    );
    server.stop();
}

#[test]
fn the_api_holds_to_its_openapi_document_under_generated_requests() {
    let dir = tempfile::tempdir().unwrap();
    // With a token, so that a request without one must be refused as the document says.
    let server = running_ohlc(dir.path(), &["--token", "schemathesis"]);
    let schemathesis = support::python().with_file_name("schemathesis");
    let out = std::process::Command::new(&schemathesis)
        .args(["run", &format!("{}/openapi.json", server.base)])
        .args(["--header", "Authorization: Bearer schemathesis"])
        // Every check but one: a body the schema allows may still be refused for what no
        // schema says (bytes that are not a component, YAML that is not a pipeline).
        .args([
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
        ])
        .args([
            "--max-examples",
            "25",
            "--seed",
            "1",
            "--no-color",
            // No database of examples left behind in the working folder.
            "--generation-database",
            "none",
            // Enough for every phase to run through every operation here.
            "--max-time",
            "60",
        ])
        // Whatever it keeps between runs (a crash cache) goes to the test's folder.
        .current_dir(dir.path())
        .env("PYTHONPATH", support::repo().join("tests"))
        .env("SCHEMATHESIS_HOOKS", "schemathesis_hooks")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    eprintln!("{report}");
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{report}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    server.stop();
}
