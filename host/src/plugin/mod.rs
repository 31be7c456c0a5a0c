//! The WebAssembly plugin host: compiling components once, caching their machine code by
//! digest, and running stage instances inside a sandbox (memory cap, epoch deadline, optional
//! fuel, no filesystem, network or environment).
//!
//! - [`PluginHost`] owns the wasmtime engines, the artifact cache and the epoch ticker.
//! - [`Plugin`] is one compiled component, named by the sha256 of its bytes.
//! - [`StageRunner`] runs one pipeline stage: it owns the current instance and replaces it after
//!   a trap, retrying the batch record by record so that only the poison record is lost to
//!   the dead-letter output.

pub mod bindings;
pub mod conformance;
mod instance;

use std::{
    fs,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use sha2::{Digest, Sha256};
use wasmtime::{
    Config, Engine, OptLevel,
    component::{Component, Linker},
};

use instance::HostState;
pub use instance::{StageRunner, SwapError, now_ms, same_outputs};

/// How often the epoch ticker advances the engines' epoch: the resolution of call deadlines.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Errors from loading or checking a plugin. All of them are the user's to fix.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The file could not be read.
    #[error("cannot read plugin {path}: {source}")]
    Read {
        /// The plugin file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The bytes are not a valid WebAssembly component.
    #[error("{path} is not a valid WebAssembly component: {reason}")]
    Invalid {
        /// The plugin file.
        path: String,
        /// What wasmtime reported.
        reason: String,
    },
    /// The component is valid but does not fit the `weir:plugin/stage` world.
    #[error("{path} does not implement the weir:plugin/stage world (wit/weir.wit): {reason}")]
    WrongWorld {
        /// The plugin file.
        path: String,
        /// What is missing or mismatched.
        reason: String,
    },
    /// The stage's `init` refused its configuration.
    #[error("stage `{stage}` refused its config: {message}")]
    Init {
        /// The stage.
        stage: String,
        /// The plugin's message.
        message: String,
    },
    /// The plugin trapped or timed out in `init`.
    #[error("stage `{stage}` crashed in init: {reason}")]
    InitTrap {
        /// The stage.
        stage: String,
        /// The trap.
        reason: String,
    },
}

/// Sandbox limits for one stage, from its `limits:` settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most linear memory one instance may have, in bytes.
    pub memory_bytes: usize,
    /// Longest a single call into the plugin may run.
    pub call_timeout: Duration,
    /// Fuel (roughly, WebAssembly instructions) a single call may burn, if metered at all.
    pub fuel_per_call: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 64 << 20,
            call_timeout: Duration::from_secs(5),
            fuel_per_call: None,
        }
    }
}

/// The wasmtime engines and the compiled-artifact cache shared by every stage of a process.
///
/// There are two engines because fuel metering is an engine-wide setting that slows every call
/// (~38% measured here, against ~19% for the epoch checks every instance gets): only stages
/// that ask for fuel pay for it.
pub struct PluginHost {
    /// Engine without fuel metering, used by most stages.
    plain: Engine,
    /// Engine with fuel metering, for stages with `fuel_per_call`.
    metered: Engine,
    /// Where precompiled artifacts are kept, named by plugin digest and engine hash.
    cache_dir: Option<PathBuf>,
    /// Stops the epoch ticker thread when the host is dropped.
    ticking: Arc<AtomicBool>,
}

impl PluginHost {
    /// Creates the engines and starts the epoch ticker. `cache_dir` of `None` disables the
    /// artifact cache (every start compiles again).
    pub fn new(cache_dir: Option<PathBuf>) -> wasmtime::Result<PluginHost> {
        let plain = Engine::new(&engine_config(false))?;
        let metered = Engine::new(&engine_config(true))?;
        let ticking = Arc::new(AtomicBool::new(true));
        let engines = (plain.weak(), metered.weak(), ticking.clone());
        thread::Builder::new()
            .name("weir-epoch".into())
            .spawn(move || {
                let (plain, metered, ticking) = engines;
                while ticking.load(Ordering::Relaxed) {
                    thread::sleep(EPOCH_TICK);
                    for engine in [&plain, &metered] {
                        if let Some(engine) = engine.upgrade() {
                            engine.increment_epoch();
                        }
                    }
                }
            })?;
        Ok(PluginHost {
            plain,
            metered,
            cache_dir,
            ticking,
        })
    }

    /// The default artifact cache: `$WEIR_CACHE_DIR`, else `$XDG_CACHE_HOME/weir/plugins`, else
    /// `~/.cache/weir/plugins`.
    pub fn default_cache_dir() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("WEIR_CACHE_DIR") {
            return Some(PathBuf::from(dir));
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))?;
        Some(base.join("weir").join("plugins"))
    }

    /// Loads the component at `path`, compiling it (or taking its machine code from the cache),
    /// and checks that it implements the `weir:plugin/stage` world.
    pub fn load(&self, path: &Path, metered: bool) -> Result<Plugin, PluginError> {
        let bytes = fs::read(path).map_err(|source| PluginError::Read {
            path: path.into(),
            source,
        })?;
        self.load_bytes(&path.display().to_string(), &bytes, metered)
    }

    /// Like [`PluginHost::load`], for bytes already in memory; `name` is used in messages.
    pub fn load_bytes(
        &self,
        name: &str,
        bytes: &[u8],
        metered: bool,
    ) -> Result<Plugin, PluginError> {
        let engine = if metered { &self.metered } else { &self.plain };
        let digest = hex::encode(Sha256::digest(bytes));
        let invalid = |e: wasmtime::Error| PluginError::Invalid {
            path: name.into(),
            reason: root_cause(&e),
        };
        let component = match self.cached(engine, &digest) {
            Some(component) => component,
            None => {
                let component = Component::new(engine, bytes).map_err(invalid)?;
                self.store_in_cache(engine, &digest, &component);
                component
            }
        };
        let mut linker = Linker::<HostState>::new(engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(invalid)?;
        bindings::Stage::add_to_linker::<HostState, wasmtime::component::HasSelf<HostState>>(
            &mut linker,
            |state| state,
        )
        .map_err(invalid)?;
        let wrong_world = |e: wasmtime::Error| PluginError::WrongWorld {
            path: name.into(),
            reason: root_cause(&e),
        };
        let pre = linker.instantiate_pre(&component).map_err(wrong_world)?;
        let pre = bindings::StagePre::new(pre).map_err(wrong_world)?;
        Ok(Plugin {
            name: name.into(),
            digest: digest.into(),
            pre: Arc::new(pre),
            engine: engine.clone(),
        })
    }

    fn artifact_path(&self, engine: &Engine, digest: &str) -> Option<PathBuf> {
        use std::hash::{DefaultHasher, Hash, Hasher};
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let dir = self.cache_dir.as_ref()?;
        Some(dir.join(format!("{digest}-{:016x}.cwasm", hasher.finish())))
    }

    fn cached(&self, engine: &Engine, digest: &str) -> Option<Component> {
        let path = self.artifact_path(engine, digest)?;
        if !path.exists() {
            return None;
        }
        // SAFETY: the file was written by `store_in_cache` below, from `Component::serialize`
        // of an engine with the same compatibility hash (it is part of the name), and it is
        // renamed into place only once complete. wasmtime still checks its header and version.
        #[allow(unsafe_code)]
        let component = unsafe { Component::deserialize_file(engine, &path) };
        match component {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(path = %path.display(), "ignoring unreadable cached artifact: {e}");
                None
            }
        }
    }

    fn store_in_cache(&self, engine: &Engine, digest: &str, component: &Component) {
        let Some(path) = self.artifact_path(engine, digest) else {
            return;
        };
        let write = || -> wasmtime::Result<()> {
            let bytes = component.serialize()?;
            fs::create_dir_all(path.parent().expect("artifact paths have a parent"))?;
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            fs::write(&tmp, bytes)?;
            fs::rename(&tmp, &path)?;
            Ok(())
        };
        if let Err(e) = write() {
            tracing::warn!(path = %path.display(), "could not cache the compiled plugin: {e}");
        }
    }
}

impl Drop for PluginHost {
    fn drop(&mut self) {
        self.ticking.store(false, Ordering::Relaxed);
    }
}

fn engine_config(fuel: bool) -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.cranelift_opt_level(OptLevel::Speed);
    config.epoch_interruption(true);
    config.consume_fuel(fuel);
    // `WEIR_WASM_PROFILER=perfmap` writes /tmp/perf-PID.map, so `perf` names plugin functions.
    if std::env::var("WEIR_WASM_PROFILER").is_ok_and(|p| p == "perfmap") {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    config
}

/// The innermost cause of an error chain, which is where wasmtime puts the useful sentence.
pub(crate) fn root_cause(e: &wasmtime::Error) -> String {
    let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
    chain.join(": ")
}

/// A compiled plugin, ready to instantiate.
#[derive(Clone)]
pub struct Plugin {
    /// The file (or upload) it came from, for messages.
    pub name: String,
    /// Hex sha256 of the component's bytes: the plugin's identity in caches, logs, DLQ headers,
    /// manifests and the `meta: plugin` column.
    pub digest: Arc<str>,
    /// The component with its imports already resolved, so instantiating is cheap.
    pre: Arc<bindings::StagePre<HostState>>,
    /// The engine it was compiled for.
    engine: Engine,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("digest", &self.digest)
            .finish()
    }
}
