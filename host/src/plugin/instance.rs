//! One stage's instance and its sandbox, and the trap containment around it.

use std::{
    collections::{BTreeMap, BTreeSet},
    ops::Bound,
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use wasmtime::{Store, StoreLimits, StoreLimitsBuilder, Trap, component::ResourceTable};
use wasmtime_wasi::{
    HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView,
    p2::pipe::MemoryOutputPipe,
};

use crate::state::{Backing, Changes, KeyFilter, Layer, SPILL_AT_BYTES};

use super::{
    EPOCH_TICK, Limits, Plugin, PluginError,
    bindings::{
        self, Batch, Header, InputRecord, Level, OutputBatch, RecordError, Span, Timer,
        weir::plugin::{host, state, timers, types},
    },
};

/// How much of a guest's standard error is kept, to explain its traps (a panic message).
const STDERR_CAPACITY: usize = 16 << 10;

/// Keyed state and timers of one stage, kept by the host so that they outlive any instance.
///
/// Writes go to `dirty`, a write-back map that the next checkpoint moves into the state
/// database ([`crate::state`]); reads look there first, then in the database. Without a
/// database (a plugin under test, a benchmark) the map is the whole state.
#[derive(Debug, Default)]
struct Keyed {
    /// The stage's state in the database, if it has one.
    backing: Option<Backing>,
    /// The keys the database may hold, so that a key never stored costs no lookup (`None`:
    /// look every key up).
    filter: Option<KeyFilter>,
    /// Keys set (`Some`) or deleted (`None`) since the last checkpoint.
    dirty: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Earlier changes handed to the database's writer thread and not yet applied, oldest
    /// first, each with the writer's sequence number: reads look here after `dirty`.
    in_flight: Vec<(u64, Layer)>,
    /// Bytes in `dirty`, to spill it before it outgrows its budget.
    dirty_bytes: usize,
    /// Registered event-time timers, ordered by time (all of them: a timer is small).
    timers: BTreeSet<(i64, Vec<u8>)>,
    /// Timers registered (`true`) or removed (`false`) since the last checkpoint.
    timer_changes: BTreeMap<(i64, Vec<u8>), bool>,
    /// Changes made by the call in progress, newest last, so that a trapped call can be undone
    /// before its batch is retried.
    undo: Vec<Undo>,
}

#[derive(Debug)]
enum Undo {
    /// A key's entry in `dirty` before the call changed it.
    State(Vec<u8>, Option<Option<Vec<u8>>>),
    /// A timer added (`true`) or removed, and its entry in `timer_changes` before.
    Timer(i64, Vec<u8>, bool, Option<bool>),
}

impl Keyed {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        if let Some(value) = self.dirty.get(key) {
            return value.clone();
        }
        for (_, layer) in self.in_flight.iter().rev() {
            if let Some(value) = layer.get(key) {
                return value.clone();
            }
        }
        if self.filter.as_ref().is_some_and(|f| !f.may_hold(key)) {
            return None;
        }
        self.backing.as_ref().and_then(|b| b.get(key))
    }

    /// Notes the keys `layer` sets in the filter before it goes to the database; a full filter
    /// is rebuilt from the database and the layers in flight (a scan of the stage's keys, once
    /// per as many new keys as it held).
    fn note_stored(&mut self, layer: &Layer) {
        let Some(filter) = &mut self.filter else {
            return;
        };
        for (key, value) in layer.iter() {
            if value.is_some() {
                filter.insert(key);
            }
        }
        if filter.full() {
            self.filter = self.backing.as_ref().and_then(|b| match b.key_filter() {
                Ok(mut filter) => {
                    for (_, layer) in &self.in_flight {
                        for (key, value) in layer.iter() {
                            if value.is_some() {
                                filter.insert(key);
                            }
                        }
                    }
                    Some(filter)
                }
                Err(e) => {
                    tracing::warn!("{e}: reads look every key up in the state database");
                    None
                }
            });
        }
    }

    /// Forgets the layers the writer has applied: the database holds them now.
    fn prune(&mut self) {
        if let (Some(backing), false) = (&self.backing, self.in_flight.is_empty()) {
            let applied = backing.applied();
            self.in_flight.retain(|(seq, _)| *seq > applied);
        }
    }

    /// Hands the dirty map to the database as layer `seq` (already submitted, or about to be).
    fn hand_over(&mut self, seq: u64) -> Layer {
        self.dirty_bytes = 0;
        let layer = Arc::new(std::mem::take(&mut self.dirty));
        self.in_flight.push((seq, layer.clone()));
        self.note_stored(&layer);
        layer
    }

    fn put(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.dirty_bytes += key.len() + value.as_ref().map_or(0, Vec::len) + 32;
        let old = self.dirty.insert(key.clone(), value);
        self.undo.push(Undo::State(key, old));
    }

    fn timer(&mut self, time_ms: i64, key: Vec<u8>, add: bool) {
        let changed = if add {
            self.timers.insert((time_ms, key.clone()))
        } else {
            self.timers.remove(&(time_ms, key.clone()))
        };
        if changed {
            // Without a database nothing reads the changes: the timers are all there is.
            let old = match self.backing {
                Some(_) => self.timer_changes.insert((time_ms, key.clone()), add),
                None => None,
            };
            self.undo.push(Undo::Timer(time_ms, key, add, old));
        }
    }

    fn rollback(&mut self) {
        while let Some(undo) = self.undo.pop() {
            match undo {
                Undo::State(key, Some(old)) => {
                    self.dirty.insert(key, old);
                }
                Undo::State(key, None) => {
                    self.dirty.remove(&key);
                }
                Undo::Timer(time, key, added, old) => {
                    if added {
                        self.timers.remove(&(time, key.clone()));
                    } else {
                        self.timers.insert((time, key.clone()));
                    }
                    match old {
                        Some(old) => self.timer_changes.insert((time, key), old),
                        None if self.backing.is_some() => self.timer_changes.remove(&(time, key)),
                        None => None,
                    };
                }
            }
        }
    }

    /// After a call that succeeded: forgets its undo log, and spills the dirty map to the
    /// database once it outgrows its budget.
    fn settle(&mut self) {
        self.undo.clear();
        self.prune();
        if self.dirty_bytes >= SPILL_AT_BYTES
            && let Some(backing) = self.backing.clone()
        {
            // Spilled on the writer thread; a writer that failed fails the next checkpoint.
            let layer = Arc::new(std::mem::take(&mut self.dirty));
            match backing.spill_later(layer.clone()) {
                Ok(seq) => {
                    // In flight before the filter notes it: a rebuild of the filter reads it
                    // there, whether or not the writer has stored it yet.
                    self.in_flight.push((seq, layer.clone()));
                    self.note_stored(&layer);
                    self.dirty_bytes = 0;
                }
                Err(_) => self.dirty = Arc::unwrap_or_clone(layer),
            }
        }
    }

    /// Entries whose key starts with `prefix`, after `from`, in key order: the dirty map over
    /// the layers in flight (newest first) over the database.
    fn scan(&self, prefix: &[u8], from: Bound<Vec<u8>>, limit: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        type Entry = (Vec<u8>, Option<Vec<u8>>);
        type Source<'s> = std::iter::Peekable<Box<dyn Iterator<Item = Entry> + 's>>;
        fn memory<'s>(
            map: &'s BTreeMap<Vec<u8>, Option<Vec<u8>>>,
            prefix: &'s [u8],
            from: &Bound<Vec<u8>>,
        ) -> Source<'s> {
            let range = map
                .range::<Vec<u8>, _>((from.clone(), Bound::Unbounded))
                .take_while(move |(k, _)| k.starts_with(prefix))
                .map(|(k, v)| (k.clone(), v.clone()));
            (Box::new(range) as Box<dyn Iterator<Item = Entry>>).peekable()
        }
        // In order of precedence: the newest source first.
        let mut sources: Vec<Source<'_>> = vec![memory(&self.dirty, prefix, &from)];
        sources.extend(
            self.in_flight
                .iter()
                .rev()
                .map(|(_, layer)| memory(layer, prefix, &from)),
        );
        if let Some(backing) = &self.backing {
            let stored = backing
                .range(prefix, from.clone())
                .map(|(k, v)| (k, Some(v)));
            sources.push((Box::new(stored) as Box<dyn Iterator<Item = Entry>>).peekable());
        }
        let mut out = Vec::new();
        while out.len() < limit {
            let Some(least) = sources
                .iter_mut()
                .filter_map(|s| s.peek().map(|(k, _)| k.clone()))
                .min()
            else {
                break;
            };
            // The first source holding the key has its newest value; the others' are older.
            let mut value = None;
            let mut found = false;
            for source in &mut sources {
                if source.peek().is_some_and(|(k, _)| *k == least) {
                    let (_, v) = source.next().expect("peeked");
                    if !found {
                        (value, found) = (v, true);
                    }
                }
            }
            if let Some(v) = value {
                out.push((least, v));
            }
        }
        out
    }
}

/// What a store holds for its instance: the WASI context (with nothing granted), the sandbox
/// limits, and the stage's keyed state while a call runs.
pub struct HostState {
    /// Name of the stage, to tag its log lines.
    stage: Arc<str>,
    /// WASI context: no preopened directories, no environment, no network, a frozen clock.
    wasi: WasiCtx,
    /// WASI resources.
    table: ResourceTable,
    /// Memory cap, and how far memory has grown.
    limits: Limiter,
    /// Keyed state and timers, lent to the store by the [`StageRunner`].
    keyed: Keyed,
}

/// The store's limits, noting the size linear memory has grown to (for the metrics: a swap or
/// a leak shows as memory).
struct Limiter {
    /// The caps.
    caps: StoreLimits,
    /// Bytes of linear memory, all memories of the instance together.
    memory_bytes: usize,
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.caps.memory_growing(current, desired, maximum)?;
        if allowed {
            self.memory_bytes = (self.memory_bytes + desired).saturating_sub(current);
        }
        Ok(allowed)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.caps.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.caps.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.caps.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.caps.instances()
    }

    fn tables(&self) -> usize {
        self.caps.tables()
    }

    fn memories(&self) -> usize {
        self.caps.memories()
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for HostState {}

impl host::Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        let stage = &*self.stage;
        match level {
            Level::Debug => tracing::debug!(stage, "{message}"),
            Level::Info => tracing::info!(stage, "{message}"),
            Level::Warn => tracing::warn!(stage, "{message}"),
            Level::Error => tracing::error!(stage, "{message}"),
        }
    }
}

impl state::Host for HostState {
    fn get(&mut self, key: Vec<u8>) -> Option<Vec<u8>> {
        self.keyed.get(&key)
    }

    fn set(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.keyed.put(key, Some(value));
    }

    fn delete(&mut self, key: Vec<u8>) {
        self.keyed.put(key, None);
    }

    fn scan_prefix(
        &mut self,
        prefix: Vec<u8>,
        start_after: Option<Vec<u8>>,
        limit: u32,
    ) -> Vec<(Vec<u8>, Vec<u8>)> {
        let from = match start_after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix.clone()),
        };
        self.keyed.scan(&prefix, from, limit as usize)
    }
}

impl timers::Host for HostState {
    fn register(&mut self, key: Vec<u8>, time_ms: i64) {
        self.keyed.timer(time_ms, key, true);
    }

    fn cancel(&mut self, key: Vec<u8>, time_ms: i64) {
        self.keyed.timer(time_ms, key, false);
    }
}

/// The guest's wall clock: the processing time of the batch being handled, so that a stage
/// reading the clock still gives the same output for the same input.
struct BatchClock(Arc<AtomicI64>);

impl HostWallClock for BatchClock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }
    fn now(&self) -> Duration {
        Duration::from_millis(self.0.load(Ordering::Relaxed).max(0) as u64)
    }
}

impl HostMonotonicClock for BatchClock {
    fn resolution(&self) -> u64 {
        1_000_000
    }
    fn now(&self) -> u64 {
        self.0.load(Ordering::Relaxed).max(0) as u64 * 1_000_000
    }
}

/// A live instance of a stage's component.
struct Instance {
    store: Store<HostState>,
    bindings: bindings::Stage,
    stderr: MemoryOutputPipe,
}

/// Runs one stage of a pipeline and keeps it running: a trap or a timeout replaces the
/// instance and retries the batch one record at a time, so only the poison record fails.
pub struct StageRunner {
    /// Stage name, for messages and logs.
    name: Arc<str>,
    /// The compiled plugin.
    plugin: Plugin,
    /// The stage's `config:` as JSON, handed to `init` by every new instance.
    config: String,
    /// Sandbox limits.
    limits: Limits,
    /// The processing time the guest's clock shows.
    clock: Arc<AtomicI64>,
    /// The current instance; `None` only while it is being replaced.
    instance: Option<Instance>,
    /// Named outputs the stage declared in `init`.
    outputs: Vec<String>,
    /// How many instances were replaced after a trap.
    replacements: u64,
    /// Fuel burnt by every call so far (stages with `fuel_per_call` only).
    fuel_consumed: u64,
}

/// A new version of a stage's plugin cannot take the running one's place.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    /// It declares other named outputs than those the pipeline wires.
    #[error(
        "the new version of stage `{stage}` declares the outputs [{new}], but the running one has [{old}], which the pipeline wires to its sinks"
    )]
    Outputs {
        /// The stage.
        stage: String,
        /// The running version's outputs.
        old: String,
        /// The new version's.
        new: String,
    },
    /// It was started for another stage.
    #[error("a runner for stage `{new}` cannot replace stage `{old}`")]
    Stage {
        /// The stage being swapped.
        old: String,
        /// The stage the runner was started for.
        new: String,
    },
}

/// Whether a new version of stage `stage`, declaring the named outputs `new`, can take the
/// place of one declaring `old`: the pipeline wires each named output to its sinks.
pub fn same_outputs(stage: &str, old: &[String], new: &[String]) -> Result<(), SwapError> {
    if old == new {
        Ok(())
    } else {
        Err(SwapError::Outputs {
            stage: stage.to_string(),
            old: old.join(", "),
            new: new.join(", "),
        })
    }
}

impl StageRunner {
    /// Instantiates the plugin and calls `init` with `config` (JSON text).
    pub fn start(
        name: &str,
        plugin: Plugin,
        config: String,
        limits: Limits,
    ) -> Result<StageRunner, PluginError> {
        let mut runner = StageRunner {
            name: name.into(),
            plugin,
            config,
            limits,
            clock: Arc::new(AtomicI64::new(now_ms())),
            instance: None,
            outputs: Vec::new(),
            replacements: 0,
            fuel_consumed: 0,
        };
        runner.outputs = runner.instantiate(Keyed::default())?;
        Ok(runner)
    }

    /// Puts `next` (a runner of the same stage, started with [`StageRunner::start`]) in this
    /// runner's place, handing it the stage's keyed state and timers, with the changes since
    /// the last checkpoint; returns the runner it replaced, to be dropped off the hot path.
    /// Costs no copy of the state: it lives in the host, and moves as it is.
    pub fn swap(&mut self, mut next: StageRunner) -> Result<StageRunner, SwapError> {
        if next.name != self.name {
            return Err(SwapError::Stage {
                old: self.name.to_string(),
                new: next.name.to_string(),
            });
        }
        same_outputs(&self.name, &self.outputs, &next.outputs)?;
        std::mem::swap(self.keyed_mut(), next.keyed_mut());
        next.replacements += self.replacements;
        next.fuel_consumed += self.fuel_consumed;
        std::mem::swap(self, &mut next);
        Ok(next)
    }

    /// The stage's `config:`, as the JSON text `init` receives.
    pub fn config(&self) -> &str {
        &self.config
    }

    /// The stage's sandbox limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Bytes of linear memory the current instance has.
    pub fn memory_bytes(&self) -> usize {
        self.instance
            .as_ref()
            .map_or(0, |i| i.store.data().limits.memory_bytes)
    }

    /// Fuel burnt by every call so far (0 without `fuel_per_call`).
    pub fn fuel_consumed(&self) -> u64 {
        self.fuel_consumed
    }

    /// The stage's named outputs, besides the default one.
    pub fn outputs(&self) -> &[String] {
        &self.outputs
    }

    /// The plugin this stage runs.
    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    /// How many times a trap made the runner replace the instance.
    pub fn replacements(&self) -> u64 {
        self.replacements
    }

    fn keyed(&self) -> &Keyed {
        &self
            .instance
            .as_ref()
            .expect("runner has an instance")
            .store
            .data()
            .keyed
    }

    /// The stage's keyed state, in key order.
    pub fn keyed_state(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.keyed().scan(&[], Bound::Unbounded, usize::MAX)
    }

    fn keyed_mut(&mut self) -> &mut Keyed {
        &mut self
            .instance
            .as_mut()
            .expect("runner has an instance")
            .store
            .data_mut()
            .keyed
    }

    /// Backs the stage's state with the state database, whose timers it loads; what the stage
    /// held in memory before is dropped (a stage is attached before its first batch).
    pub fn attach_state(&mut self, backing: Backing) -> Result<(), crate::state::StateError> {
        let timers = backing.timers()?;
        let filter = backing.key_filter()?;
        let keyed = self.keyed_mut();
        *keyed = Keyed {
            backing: Some(backing),
            filter: Some(filter),
            timers,
            ..Keyed::default()
        };
        Ok(())
    }

    /// The changes since the last call of this, for a checkpoint.
    ///
    /// They stay readable, as a layer over the database, until the database's writer has
    /// applied job `seq` (the one that carries them).
    pub fn take_changes(&mut self, seq: u64) -> Changes {
        let keyed = self.keyed_mut();
        keyed.prune();
        Changes {
            state: keyed.hand_over(seq),
            timers: std::mem::take(&mut keyed.timer_changes),
        }
    }

    /// The earliest registered timer, if any.
    pub fn next_timer(&self) -> Option<i64> {
        self.keyed().timers.first().map(|(t, _)| *t)
    }

    /// The registered timers, `(time_ms, key)` in time order.
    pub fn timers(&self) -> impl Iterator<Item = (i64, &[u8])> {
        self.keyed().timers.iter().map(|(t, k)| (*t, k.as_slice()))
    }

    /// Timers registered for event times at or before `watermark_ms`, removed from the set.
    fn due_timers(&mut self, watermark_ms: i64) -> Vec<Timer> {
        let keyed = self.keyed_mut();
        let later = keyed
            .timers
            .split_off(&(watermark_ms.saturating_add(1), Vec::new()));
        let due = std::mem::replace(&mut keyed.timers, later);
        due.into_iter()
            .map(|(time_ms, key)| {
                if keyed.backing.is_some() {
                    keyed.timer_changes.insert((time_ms, key.clone()), false);
                }
                Timer { key, time_ms }
            })
            .collect()
    }

    fn instantiate(&mut self, keyed: Keyed) -> Result<Vec<String>, PluginError> {
        let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
        let wasi = WasiCtxBuilder::new()
            .stderr(stderr.clone())
            .wall_clock(BatchClock(self.clock.clone()))
            .monotonic_clock(BatchClock(self.clock.clone()))
            .build();
        let state = HostState {
            stage: self.name.clone(),
            wasi,
            table: ResourceTable::new(),
            limits: Limiter {
                caps: StoreLimitsBuilder::new()
                    .memory_size(self.limits.memory_bytes)
                    .trap_on_grow_failure(true)
                    .build(),
                memory_bytes: 0,
            },
            keyed,
        };
        let mut store = Store::new(&self.plugin.engine, state);
        store.limiter(|state| &mut state.limits);
        let trap = |e: wasmtime::Error| PluginError::InitTrap {
            stage: self.name.to_string(),
            reason: super::root_cause(&e),
        };
        arm(&mut store, &self.limits).map_err(trap)?;
        let bindings = self.plugin.pre.instantiate(&mut store).map_err(trap)?;
        arm(&mut store, &self.limits).map_err(trap)?;
        let info = bindings
            .weir_plugin_transform()
            .call_init(&mut store, &self.config)
            .map_err(trap)?
            .map_err(|message| PluginError::Init {
                stage: self.name.to_string(),
                message,
            })?;
        self.instance = Some(Instance {
            store,
            bindings,
            stderr,
        });
        Ok(info.outputs)
    }

    /// Replaces a trapped instance with a fresh one, keeping (rolled-back) keyed state.
    fn replace(&mut self) -> Result<(), PluginError> {
        let old = self.instance.take().expect("runner has an instance");
        let mut keyed = old.store.into_data().keyed;
        keyed.rollback();
        self.replacements += 1;
        self.instantiate(keyed).map(|_| ())
    }

    /// Processes a batch. Never fails for a plugin's sake: per-record errors and contained
    /// traps come back in the output's `errors`. Fails only if a fresh instance cannot even be
    /// initialised again.
    pub fn process(&mut self, batch: &Batch) -> Result<OutputBatch, PluginError> {
        self.clock
            .store(batch.processing_time_ms, Ordering::Relaxed);
        match self.call(|b, s| b.weir_plugin_transform().call_process(s, batch)) {
            Ok(out) => Ok(out),
            Err(reason) => {
                tracing::warn!(
                    stage = &*self.name,
                    "plugin trapped on a batch of {}; retrying record by record: {reason}",
                    batch.records.len()
                );
                self.replace()?;
                self.process_one_by_one(batch)
            }
        }
    }

    fn process_one_by_one(&mut self, batch: &Batch) -> Result<OutputBatch, PluginError> {
        let mut merged = OutputBatch {
            records: Vec::new(),
            data: Vec::new(),
            headers: Vec::new(),
            errors: Vec::new(),
        };
        for (index, record) in batch.records.iter().enumerate() {
            let single = single_record_batch(batch, record);
            match self.call(|b, s| b.weir_plugin_transform().call_process(s, &single)) {
                Ok(out) => append(&mut merged, out, index as u32),
                Err(reason) => {
                    merged.errors.push(RecordError {
                        index: index as u32,
                        message: reason,
                    });
                    self.replace()?;
                }
            }
        }
        Ok(merged)
    }

    /// Advances event time: hands the stage the timers due at `watermark_ms`. A trap here loses
    /// the windows those timers would have closed, so it is reported as an error.
    pub fn on_watermark(&mut self, watermark_ms: i64) -> Result<OutputBatch, String> {
        let fired = self.due_timers(watermark_ms);
        self.clock.store(now_ms(), Ordering::Relaxed);
        match self.call(|b, s| {
            b.weir_plugin_transform()
                .call_on_watermark(s, watermark_ms, &fired)
        }) {
            Ok(out) => Ok(out),
            Err(reason) => {
                let _ = self.replace();
                Err(format!(
                    "stage `{}` trapped in on-watermark: {reason}",
                    self.name
                ))
            }
        }
    }

    /// Calls into the instance under its deadline and fuel, turning a trap into a sentence.
    fn call<T>(
        &mut self,
        f: impl FnOnce(&bindings::Stage, &mut Store<HostState>) -> wasmtime::Result<T>,
    ) -> Result<T, String> {
        let instance = self.instance.as_mut().expect("runner has an instance");
        let result = arm(&mut instance.store, &self.limits)
            .and_then(|()| f(&instance.bindings, &mut instance.store));
        if let Some(fuel) = self.limits.fuel_per_call {
            let left = instance.store.get_fuel().unwrap_or(0);
            self.fuel_consumed += fuel.saturating_sub(left);
        }
        match result {
            Ok(value) => {
                instance.store.data_mut().keyed.settle();
                Ok(value)
            }
            Err(e) => Err(describe_trap(&e, &self.limits, &instance.stderr)),
        }
    }
}

/// Sets the deadline and fuel for the next call.
fn arm(store: &mut Store<HostState>, limits: &Limits) -> wasmtime::Result<()> {
    let ticks = limits
        .call_timeout
        .as_millis()
        .div_ceil(EPOCH_TICK.as_millis()) as u64
        + 1;
    store.set_epoch_deadline(ticks);
    if let Some(fuel) = limits.fuel_per_call {
        store.set_fuel(fuel)?;
    }
    Ok(())
}

fn describe_trap(e: &wasmtime::Error, limits: &Limits, stderr: &MemoryOutputPipe) -> String {
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => {
            let ms = limits.call_timeout.as_millis();
            return format!("plugin call exceeded its deadline of {ms} ms (limits.call_timeout)");
        }
        Some(Trap::OutOfFuel) => {
            let fuel = limits.fuel_per_call.unwrap_or_default();
            return format!("plugin call ran out of fuel ({fuel} units, limits.fuel_per_call)");
        }
        _ => {}
    }
    let text = super::root_cause(e);
    if text.contains("forcing trap when growing memory")
        || text.contains("forcing a memory growth failure")
    {
        let mib = limits.memory_bytes >> 20;
        return format!("plugin exceeded its memory cap of {mib} MiB (limits.memory_mib)");
    }
    // One line: the trap and the last thing the guest said (a panic message), not the wasm
    // backtrace wasmtime wraps the trap in.
    let trap = e
        .downcast_ref::<Trap>()
        .map_or_else(|| e.root_cause().to_string(), Trap::to_string);
    let stderr = String::from_utf8_lossy(&stderr.contents()).into_owned();
    let said = stderr
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("note:"));
    match said {
        Some(said) => format!("plugin trapped: {trap} ({said})"),
        None => format!("plugin trapped: {trap}"),
    }
}

/// A batch holding one record of `batch`, with its own compact buffers.
fn single_record_batch(batch: &Batch, record: &InputRecord) -> Batch {
    let mut data = Vec::new();
    let mut copy = |span: Span| {
        let start = data.len() as u32;
        data.extend_from_slice(&batch.data[span.start as usize..(span.start + span.len) as usize]);
        Span {
            start,
            len: span.len,
        }
    };
    let key = record.key.map(&mut copy);
    let value = copy(record.value);
    let headers: Vec<Header> = batch.headers
        [record.headers.start as usize..(record.headers.start + record.headers.len) as usize]
        .to_vec();
    Batch {
        topic: batch.topic.clone(),
        partition: batch.partition,
        processing_time_ms: batch.processing_time_ms,
        records: vec![InputRecord {
            key,
            value,
            headers: Span {
                start: 0,
                len: headers.len() as u32,
            },
            ..*record
        }],
        data,
        headers,
    }
}

/// Appends the output of a single-record call to `merged`, rebasing its spans and lineage.
fn append(merged: &mut OutputBatch, out: OutputBatch, index: u32) {
    let data_base = merged.data.len() as u32;
    let header_base = merged.headers.len() as u32;
    let shift = |span: Span, base: u32| Span {
        start: span.start + base,
        len: span.len,
    };
    merged.records.extend(out.records.into_iter().map(|mut r| {
        r.key = r.key.map(|k| shift(k, data_base));
        r.value = shift(r.value, data_base);
        r.headers = shift(r.headers, header_base);
        r.derived_from = r.derived_from.map(|_| index);
        r
    }));
    merged.data.extend_from_slice(&out.data);
    merged.headers.extend(out.headers);
    merged
        .errors
        .extend(out.errors.into_iter().map(|e| RecordError {
            index,
            message: e.message,
        }));
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
