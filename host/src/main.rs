//! The `weir` command line: a thin layer over the library.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use weir::{
    pipeline,
    plugin::PluginHost,
    runtime::{self, RunOptions},
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
    /// Checks pipeline files without running them: syntax, types, unknown keys, plugins
    /// (present, the right world, config accepted) and wiring.
    Validate {
        /// The pipeline files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
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
        Command::Run { file, quiet } => {
            let pipeline = match pipeline::load(&file, &host) {
                Ok(p) => p,
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::FAILURE;
                }
            };
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let name = pipeline.name.clone();
            eprintln!(
                "weir: running pipeline `{name}` from {} (Ctrl-C stops it gracefully)",
                file.display()
            );
            match rt.block_on(runtime::run(
                pipeline,
                stop_signal(),
                RunOptions { progress: !quiet },
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
