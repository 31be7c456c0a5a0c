//! The `weir` command line: a thin layer over the library.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::{Parser, Subcommand};
use weir::{
    api::ApiSettings,
    datagen,
    pipeline::{
        self,
        spec::{DisorderSpec, GeneratorFormat, KafkaSinkSpec, unspanned},
    },
    plugin::{Limits, PluginHost, conformance},
    runtime::{self, RunOptions},
    supervisor::{RestartPolicy, Settings, Supervisor},
};

/// Weir runs dataflow pipelines whose transformations are WebAssembly components.
#[derive(Parser)]
#[command(name = "weir", version, about)]
struct Cli {
    /// Folder for compiled plugin artifacts (default: $XDG_CACHE_HOME/weir/plugins or
    /// ~/.cache/weir/plugins).
    #[arg(long, global = true, env = "WEIR_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Compile plugins on every start instead of caching the result.
    #[arg(long, global = true)]
    no_cache: bool,
    /// Log filter, such as `info` or `weir=debug` (also read from WEIR_LOG).
    #[arg(long, global = true, env = "WEIR_LOG", default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs a pipeline until its source ends or it is interrupted (Ctrl-C stops it gracefully:
    /// what is in flight is written, files are finished).
    Run {
        /// The pipeline file.
        file: PathBuf,
        /// Do not print the progress line every second.
        #[arg(long)]
        quiet: bool,
    },
    /// Writes generated data (trades, user events, metrics, CDC changes) to standard output, a
    /// file or a Kafka topic, at a target rate, the same for the same seed.
    Gen(GenArgs),
    /// Checks pipeline files without running them: syntax, types, unknown keys, plugins
    /// (present, the right world, config accepted) and wiring.
    Validate {
        /// The pipeline files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Works with plugins on their own, outside a pipeline.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Runs many pipelines in one process, with a REST API to submit, stop and start them, take
    /// savepoints and hot-swap their plugins, Prometheus metrics at /metrics and a web page at /
    /// (see docs/api.md).
    Serve(ServeArgs),
}

/// Options of `weir serve`.
#[derive(clap::Args)]
struct ServeArgs {
    /// Address of the API (`127.0.0.1:0` picks a free port; the address is printed).
    #[arg(long, env = "WEIR_LISTEN", default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// Bearer token every API call must send (`Authorization: Bearer TOKEN`); required when
    /// --listen is not a loopback address.
    #[arg(long, env = "WEIR_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Folder of pipeline files: every *.yaml there starts with the server, and pipelines
    /// submitted over the API are written there (default: DATA_DIR/pipelines).
    #[arg(long, env = "WEIR_PIPELINES")]
    pipelines: Option<PathBuf>,
    /// The server's own files: uploaded plugins by sha256, each pipeline's event log and
    /// plugin versions.
    #[arg(long, env = "WEIR_DATA_DIR", default_value = ".weir/serve")]
    data_dir: PathBuf,
    /// Largest pipeline file a request may carry, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_yaml_bytes: usize,
    /// Largest plugin upload, in bytes.
    #[arg(long, default_value_t = 128 << 20)]
    max_wasm_bytes: usize,
    /// Failures in a row after which a pipeline stays failed (0: never restart).
    #[arg(long, default_value_t = 10)]
    restart_attempts: u32,
    /// Wait before the first restart, in ms; doubled after each failure in a row.
    #[arg(long, default_value_t = 1000)]
    restart_backoff_min: u64,
    /// Longest wait between restarts, in ms.
    #[arg(long, default_value_t = 60_000)]
    restart_backoff_max: u64,
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Runs a plugin against golden vectors (a folder of JSON cases, see docs/plugins.md) and
    /// prints every difference; exits non-zero if any case fails.
    Test {
        /// The plugin component (`.wasm`).
        plugin: PathBuf,
        /// The folder of case files (`*.json`, run in name order).
        #[arg(long)]
        cases: PathBuf,
        /// Most linear memory the instance may use, in MiB.
        #[arg(long, default_value_t = 64)]
        memory_mib: u32,
        /// Longest one call may run, in seconds.
        #[arg(long, default_value_t = 5)]
        call_timeout_secs: u64,
    },
}

/// Options of `weir gen`.
#[derive(clap::Args)]
struct GenArgs {
    /// What to generate.
    #[arg(long, value_enum, default_value = "binance")]
    format: GeneratorFormat,
    /// Records to write; without it, runs until interrupted.
    #[arg(long)]
    count: Option<u64>,
    /// Records per second; without it, as fast as the output takes them.
    #[arg(long)]
    rate: Option<u64>,
    /// Seed: the same seed (and start time) gives the same records.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Event time of the first record, in ms since the Unix epoch (default: now).
    #[arg(long)]
    start_time_ms: Option<i64>,
    /// Event-time records per second: record `i` happens at start + i * 1000 / this ms
    /// (default: the rate, or 1000).
    #[arg(long)]
    events_per_sec: Option<u64>,
    /// Symbols to trade, comma-separated (trade formats; default: six USDT pairs).
    #[arg(long, value_delimiter = ',')]
    symbols: Option<Vec<String>>,
    /// Move each record's event time back by a random amount below this many ms (out of order
    /// within that bound), as the generator source's `disorder.max_ms`.
    #[arg(long, default_value_t = 0)]
    disorder_ms: u64,
    /// Make every N-th record late by `--late-by-ms` more, as `disorder.late_every`.
    #[arg(long, default_value_t = 0)]
    late_every: u64,
    /// How far back a late record moves, in ms, as `disorder.late_by_ms`.
    #[arg(long, default_value_t = 600_000)]
    late_by_ms: u64,
    /// Write to this file (one value per line) instead of standard output.
    #[arg(long, conflicts_with = "topic")]
    out: Option<PathBuf>,
    /// Write to this Kafka topic (created if missing) instead of standard output.
    #[arg(long)]
    topic: Option<String>,
    /// Kafka brokers, `host:port[,host:port…]`.
    #[arg(long, default_value = "127.0.0.1:9092", requires = "topic")]
    bootstrap_servers: String,
    /// Partitions of the topic, if it has to be created.
    #[arg(long, default_value_t = 3, requires = "topic")]
    partitions: i32,
    /// A producer property, `key=value` (allow-listed: batching, compression, timeouts,
    /// SASL/SSL); repeatable.
    #[arg(long = "property", value_parser = key_value, requires = "topic")]
    properties: Vec<(String, String)>,
    /// Do not print the progress line every second.
    #[arg(long)]
    quiet: bool,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected key=value, got `{s}`"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Command::Gen(args) = cli.command {
        return generate(args);
    }
    let cache = if cli.no_cache {
        None
    } else {
        cli.cache_dir.clone().or_else(PluginHost::default_cache_dir)
    };
    let host = match PluginHost::new(cache) {
        Ok(host) => host,
        Err(e) => {
            eprintln!("error: cannot start the WebAssembly engine: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Validate { files } => {
            let mut failed = false;
            for file in &files {
                match pipeline::load(file, &host) {
                    Ok(p) => println!(
                        "{}: ok (pipeline `{}`, {} stages, {} sinks)",
                        file.display(),
                        p.name,
                        p.stages.len(),
                        p.sinks.len()
                    ),
                    Err(errors) => {
                        eprintln!("{errors}");
                        failed = true;
                    }
                }
            }
            if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Command::Gen(_) => unreachable!("handled before the engine starts"),
        Command::Serve(args) => serve(host, args),
        Command::Plugin(PluginCommand::Test {
            plugin,
            cases,
            memory_mib,
            call_timeout_secs,
        }) => test_plugin(
            &host,
            &plugin,
            &cases,
            Limits {
                memory_bytes: memory_mib as usize * (1 << 20),
                call_timeout: std::time::Duration::from_secs(call_timeout_secs),
                fuel_per_call: None,
            },
        ),
        Command::Run { file, quiet } => {
            let pipeline = match pipeline::load(&file, &host) {
                Ok(p) => p,
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::FAILURE;
                }
            };
            let Some(rt) = runtime(tokio::runtime::Builder::new_multi_thread()) else {
                return ExitCode::FAILURE;
            };
            let name = pipeline.name.clone();
            eprintln!(
                "weir: running pipeline `{name}` from {} (Ctrl-C stops it gracefully)",
                file.display()
            );
            match rt.block_on(runtime::run(
                pipeline,
                stop_signal(),
                RunOptions {
                    progress: !quiet,
                    ..RunOptions::default()
                },
            )) {
                Ok(summary) => {
                    println!("pipeline `{name}` finished: {summary}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: pipeline `{name}` failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `weir serve`.
fn serve(host: PluginHost, args: ServeArgs) -> ExitCode {
    let token = args.token.filter(|t| !t.is_empty());
    if let Err(e) = weir::api::check_bind(args.listen, token.as_deref()) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let settings = Settings {
        pipelines_dir: args
            .pipelines
            .unwrap_or_else(|| args.data_dir.join("pipelines")),
        data_dir: args.data_dir,
        restart: RestartPolicy {
            attempts: args.restart_attempts,
            backoff_min: std::time::Duration::from_millis(args.restart_backoff_min),
            backoff_max: std::time::Duration::from_millis(
                args.restart_backoff_max.max(args.restart_backoff_min),
            ),
            ..RestartPolicy::default()
        },
        max_plugin_bytes: args.max_wasm_bytes as u64,
    };
    let Some(rt) = runtime(tokio::runtime::Builder::new_multi_thread()) else {
        return ExitCode::FAILURE;
    };
    let api = ApiSettings {
        token,
        max_yaml_bytes: args.max_yaml_bytes,
        max_wasm_bytes: args.max_wasm_bytes,
    };
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(args.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: cannot listen on {}: {e}", args.listen);
                return ExitCode::FAILURE;
            }
        };
        let supervisor = match Supervisor::new(std::sync::Arc::new(host), settings.clone()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!(
                    "error: cannot use {} and {}: {e}",
                    settings.pipelines_dir.display(),
                    settings.data_dir.display()
                );
                return ExitCode::FAILURE;
            }
        };
        let found = match supervisor.start_all() {
            Ok(n) => n,
            Err(e) => {
                eprintln!(
                    "error: cannot read {}: {e}",
                    settings.pipelines_dir.display()
                );
                return ExitCode::FAILURE;
            }
        };
        let addr = listener.local_addr().unwrap_or(args.listen);
        eprintln!(
            "weir: serving http://{addr} ({found} pipelines from {}; Ctrl-C stops them gracefully)",
            settings.pipelines_dir.display()
        );
        let served = weir::api::serve(listener, supervisor.clone(), api, stop_signal()).await;
        supervisor.stop_all().await;
        match served {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: the API stopped: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// `weir plugin test`.
fn test_plugin(host: &PluginHost, path: &Path, cases: &Path, limits: Limits) -> ExitCode {
    let cases = match conformance::load_cases(cases) {
        Ok(cases) => cases,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let plugin = match host.load(path, false) {
        Ok(plugin) => plugin,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "{} (sha256 {}): {} cases",
        path.display(),
        &plugin.digest[..12],
        cases.len()
    );
    let outcomes = conformance::run(&plugin, &limits, cases);
    print!("{}", conformance::report(&outcomes));
    if outcomes.iter().all(|o| o.differences.is_empty()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `weir gen`.
fn generate(args: GenArgs) -> ExitCode {
    let mut spec = datagen::spec(
        args.format,
        args.count,
        args.rate,
        args.seed,
        args.start_time_ms,
        args.events_per_sec,
        args.symbols,
    );
    spec.disorder = Some(DisorderSpec {
        max_ms: args.disorder_ms,
        late_every: args.late_every,
        late_by_ms: args.late_by_ms,
    });
    let output = match (args.topic, args.out) {
        (Some(topic), _) => datagen::Output::Kafka {
            sink: Box::new(KafkaSinkSpec {
                bootstrap_servers: unspanned(args.bootstrap_servers),
                topic: unspanned(topic),
                properties: unspanned(args.properties.into_iter().collect()),
            }),
            partitions: args.partitions,
        },
        (None, Some(path)) => datagen::Output::File(path),
        (None, None) => datagen::Output::Stdout,
    };
    let Some(rt) = runtime(tokio::runtime::Builder::new_current_thread()) else {
        return ExitCode::FAILURE;
    };
    match rt.block_on(datagen::run(&spec, output, !args.quiet, stop_signal())) {
        Ok(summary) => {
            eprintln!("gen: wrote {summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Builds a Tokio runtime, saying why on standard error if it cannot.
fn runtime(mut builder: tokio::runtime::Builder) -> Option<tokio::runtime::Runtime> {
    builder
        .enable_all()
        .build()
        .map_err(|e| eprintln!("error: cannot start the runtime: {e}"))
        .ok()
}

/// Completes on Ctrl-C or SIGTERM.
async fn stop_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
