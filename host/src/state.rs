//! Keyed state of the stages: held in sled on local disk, changed through a write-back map in
//! memory, and shipped to the checkpoint store at every checkpoint.
//!
//! ```text
//!  guest ──state.set──▶ dirty map (memory) ──checkpoint N──▶ sled (local) ──▶ chk-N.delta (store)
//!                            │ over the memory budget            every K-th: chk-N.full
//!                            └──▶ spilled to sled, journalled (so the delta still holds it)
//! ```
//!
//! Writing to sled happens on a writer thread of the database's own ([`StateDb::submit`]), in
//! the order the stage thread hands the work over, so a checkpoint does not stall the stages
//! for as long as sled and the state file take (hundreds of milliseconds with many keys). Until
//! the writer has applied a checkpoint's changes, the stage keeps them as a read-only
//! [`Layer`] that its reads look at before the database.
//!
//! A checkpoint's state file holds what changed since the one before (a **delta**), or every
//! entry (a **full** snapshot, every [`FULL_EVERY`] checkpoints and at the first one of a run);
//! the manifest names the chain a restore needs: the newest full file and the deltas after it.
//! The local sled database is a cache of that chain: on recovery it is used as it is only if it
//! stands exactly at the manifest's checkpoint (it records which, in the same atomic batch as
//! the checkpoint's changes); otherwise it is cleared and rebuilt from the chain. Nothing else
//! keeps state: sled holds it all, so it need not fit in memory.
//!
//! One sled tree holds every stage's entries, under prefixes that cannot collide (stage names
//! have no zero byte): `s STAGE 0 KEY` → value, `t STAGE 0 TIME KEY` → empty (a timer),
//! `c STAGE 0 KEY` → journal of spilled changes, and `m` → the checkpoint sled stands at.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead, BufReader, BufWriter, Read, Write},
    ops::Bound,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
};

use serde::{Deserialize, Serialize};

/// A full snapshot every this many checkpoints, so a restore reads a bounded chain.
pub const FULL_EVERY: u64 = 20;

/// Dirty bytes a stage keeps in memory between checkpoints before it spills them to sled.
pub const SPILL_AT_BYTES: usize = 64 << 20;

/// Jobs the writer may be behind by before a checkpoint waits for it, which bounds the memory
/// that changes in flight hold.
pub const MAX_BEHIND: u64 = 4;

/// The first bytes of a state file.
const MAGIC: &[u8; 8] = b"WEIRST1\n";

/// The meta key: the checkpoint the local database stands at.
const META: &[u8] = b"m";

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
#[error("state {path}: {message}")]
pub struct StateError {
    /// The database folder or state file.
    pub path: String,
    /// What happened.
    pub message: String,
}

/// What a manifest says about state: the files a restore applies, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateRef {
    /// Object paths in the checkpoint store: one full snapshot, then deltas.
    pub files: Vec<String>,
    /// Bytes of this checkpoint's own file.
    pub bytes: u64,
    /// Entries (keys and timers) in this checkpoint's own file.
    pub entries: u64,
}

/// Keys set (`Some`) or deleted (`None`), handed to the writer thread and kept, shared, by the
/// stage for its reads until the writer has applied them.
pub type Layer = Arc<BTreeMap<Vec<u8>, Option<Vec<u8>>>>;

/// Changes one stage made since the last checkpoint.
#[derive(Debug, Default)]
pub struct Changes {
    /// Keys set (`Some`) or deleted (`None`).
    pub state: Layer,
    /// Timers registered (`true`) or removed (`false`).
    pub timers: BTreeMap<(i64, Vec<u8>), bool>,
}

impl Changes {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.state.is_empty() && self.timers.is_empty()
    }
}

/// The state database of one pipeline on local disk.
#[derive(Clone)]
pub struct StateDb {
    db: sled::Db,
    /// Its folder, for messages.
    path: PathBuf,
    /// The writer thread; `None` in the writer's own handle.
    writer: Option<Arc<Writer>>,
}

/// Work for the writer thread, run on its handle to the database.
pub type Job = Box<dyn FnOnce(&StateDb) -> Result<(), StateError> + Send>;

/// The stage thread's end of the writer thread.
struct Writer {
    jobs: Mutex<mpsc::Sender<(u64, Job)>>,
    /// What the writer shares with the stage thread.
    shared: Arc<Progress>,
}

/// How far the writer has got.
#[derive(Default)]
struct Progress {
    /// The last sequence number handed out.
    reserved: AtomicU64,
    /// The sequence number of the last job done.
    applied: AtomicU64,
    /// Why the writer stopped, if it failed.
    failed: Mutex<Option<String>>,
}

/// A state file written for a checkpoint, waiting for upload.
#[derive(Debug)]
pub struct StateFile {
    /// Local path of the file.
    pub local: PathBuf,
    /// Whether it holds every entry.
    pub full: bool,
    /// Its size.
    pub bytes: u64,
    /// Entries in it.
    pub entries: u64,
}

fn state_key(stage: &str, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(stage.len() + key.len() + 2);
    k.push(b's');
    k.extend_from_slice(stage.as_bytes());
    k.push(0);
    k.extend_from_slice(key);
    k
}

fn journal_key(stage: &str, key: &[u8]) -> Vec<u8> {
    let mut k = state_key(stage, key);
    k[0] = b'c';
    k
}

/// Times sort as unsigned big-endian bytes once their sign bit is flipped.
fn timer_key(stage: &str, time_ms: i64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(stage.len() + key.len() + 10);
    k.push(b't');
    k.extend_from_slice(stage.as_bytes());
    k.push(0);
    k.extend_from_slice(&((time_ms as u64) ^ (1 << 63)).to_be_bytes());
    k.extend_from_slice(key);
    k
}

fn prefix(tag: u8, stage: &str) -> Vec<u8> {
    let mut p = vec![tag];
    p.extend_from_slice(stage.as_bytes());
    p.push(0);
    p
}

impl StateDb {
    /// Opens (or creates) the database in `path`.
    pub fn open(path: &Path) -> Result<StateDb, StateError> {
        std::fs::create_dir_all(path).map_err(|e| StateError {
            path: path.display().to_string(),
            message: format!("cannot create the folder: {e}"),
        })?;
        let db = sled::Config::new()
            .path(path.join("db"))
            .cache_capacity(256 << 20)
            .flush_every_ms(Some(1000))
            .open()
            .map_err(|e| StateError {
                path: path.display().to_string(),
                message: format!("cannot open the state database: {e} (is another run of this pipeline using it?)"),
            })?;
        let shared = Arc::new(Progress::default());
        let (tx, rx) = mpsc::channel::<(u64, Job)>();
        let own = StateDb {
            db: db.clone(),
            path: path.into(),
            writer: None,
        };
        let progress = shared.clone();
        std::thread::Builder::new()
            .name("weir-state".into())
            .spawn(move || {
                for (seq, job) in rx {
                    if let Err(e) = job(&own) {
                        *progress.failed.lock().expect("not poisoned") = Some(e.to_string());
                        return;
                    }
                    progress.applied.store(seq, Ordering::Release);
                }
            })
            .map_err(|e| StateError {
                path: path.display().to_string(),
                message: format!("cannot start the state writer: {e}"),
            })?;
        Ok(StateDb {
            db,
            path: path.into(),
            writer: Some(Arc::new(Writer {
                jobs: Mutex::new(tx),
                shared,
            })),
        })
    }

    fn writer(&self) -> &Writer {
        self.writer
            .as_ref()
            .expect("only the writer's own handle has no writer, and it submits nothing")
    }

    /// A sequence number for the next job: jobs must be submitted in this order, which the
    /// single stage thread does by reserving right before it submits.
    pub fn reserve(&self) -> u64 {
        self.writer().shared.reserved.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Runs `job` on the writer thread after every job submitted before it.
    pub fn submit(&self, seq: u64, job: Job) -> Result<(), StateError> {
        self.failed()?;
        self.writer()
            .jobs
            .lock()
            .expect("not poisoned")
            .send((seq, job))
            .map_err(|_| self.error("the state writer has stopped"))
    }

    /// The sequence number of the last job the writer has done.
    pub fn applied(&self) -> u64 {
        self.writer().shared.applied.load(Ordering::Acquire)
    }

    /// An error if the writer failed: the run cannot go on.
    pub fn failed(&self) -> Result<(), StateError> {
        match &*self.writer().shared.failed.lock().expect("not poisoned") {
            Some(message) => Err(self.error(message)),
            None => Ok(()),
        }
    }

    /// Waits until the writer has done job `seq` and every one before (or failed).
    pub fn wait_for(&self, seq: u64) -> Result<(), StateError> {
        while self.applied() < seq {
            self.failed()?;
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        self.failed()
    }

    /// Waits until the writer has done every job submitted so far (or failed).
    pub fn settled(&self) -> Result<(), StateError> {
        self.wait_for(self.writer().shared.reserved.load(Ordering::Acquire))
    }

    fn error(&self, e: impl std::fmt::Display) -> StateError {
        StateError {
            path: self.path.display().to_string(),
            message: e.to_string(),
        }
    }

    /// The checkpoint the database stands at (0: none, or changed since).
    pub fn checkpoint(&self) -> Result<u64, StateError> {
        let meta = self.db.get(META).map_err(|e| self.error(e))?;
        Ok(meta
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map_or(0, u64::from_be_bytes))
    }

    /// One stage's view of the database.
    pub fn stage(&self, stage: &str) -> Backing {
        Backing {
            db: self.clone(),
            stage: stage.into(),
            state_prefix: prefix(b's', stage),
        }
    }

    /// Whether `changes` and the stages' spill journals hold nothing: such a checkpoint only
    /// moves the database's checkpoint id ([`StateDb::mark`]) and needs no state file.
    pub fn unchanged<S: AsRef<str>>(&self, changes: &[(S, Changes)]) -> bool {
        changes.iter().all(|(stage, c)| {
            c.is_empty()
                && self
                    .db
                    .scan_prefix(prefix(b'c', stage.as_ref()))
                    .next()
                    .is_none()
        })
    }

    /// Records that the database stands at checkpoint `id`, with nothing else changed.
    pub fn mark(&self, id: u64) -> Result<(), StateError> {
        self.db
            .insert(META, &id.to_be_bytes())
            .map(drop)
            .map_err(|e| self.error(e))
    }

    /// Writes a checkpoint's changes (each stage's, in order) to the database, atomically with
    /// the checkpoint's id, and writes the state file to upload: the changes, or with `full`
    /// every entry.
    pub fn commit<S: AsRef<str>>(
        &self,
        id: u64,
        changes: &[(S, Changes)],
        full: bool,
        file: &Path,
    ) -> Result<StateFile, StateError> {
        let mut out = FileWriter::create(file).map_err(|e| self.error(e))?;
        let mut batch = sled::Batch::default();
        for (stage, changes) in changes {
            let stage = stage.as_ref();
            // Spilled changes first: the dirty map holds anything newer.
            for entry in self.db.scan_prefix(prefix(b'c', stage)) {
                let (k, v) = entry.map_err(|e| self.error(e))?;
                let key = state_key(stage, &k[stage.len() + 2..]);
                let value = (v.first() == Some(&1)).then(|| &v[1..]);
                if !full {
                    out.op(&key, value).map_err(|e| self.error(e))?;
                }
                batch.remove(k);
            }
            for (key, value) in changes.state.iter() {
                let key = state_key(stage, key);
                if !full {
                    out.op(&key, value.as_deref()).map_err(|e| self.error(e))?;
                }
                match value {
                    Some(v) => batch.insert(key, v.as_slice()),
                    None => batch.remove(key),
                }
            }
            for ((time, key), added) in &changes.timers {
                let key = timer_key(stage, *time, key);
                if !full {
                    out.op(&key, added.then_some(&[][..]))
                        .map_err(|e| self.error(e))?;
                }
                if *added {
                    batch.insert(key, &[][..]);
                } else {
                    batch.remove(key);
                }
            }
        }
        batch.insert(META, &id.to_be_bytes());
        self.db.apply_batch(batch).map_err(|e| self.error(e))?;
        if full {
            for tag in [b"s", b"t"] {
                for entry in self.db.scan_prefix(tag) {
                    let (k, v) = entry.map_err(|e| self.error(e))?;
                    out.op(&k, Some(&v)).map_err(|e| self.error(e))?;
                }
            }
        }
        let (bytes, entries) = out.finish().map_err(|e| self.error(e))?;
        Ok(StateFile {
            local: file.into(),
            full,
            bytes,
            entries,
        })
    }

    /// Clears the database and applies state files in order (a full snapshot, then deltas),
    /// then records that it stands at checkpoint `id`.
    pub fn restore(&self, id: u64, files: &[PathBuf]) -> Result<u64, StateError> {
        self.db.clear().map_err(|e| self.error(e))?;
        let mut applied = 0;
        for file in files {
            let error = |e: std::io::Error| StateError {
                path: file.display().to_string(),
                message: e.to_string(),
            };
            let mut reader = FileReader::open(file).map_err(error)?;
            let mut batch = sled::Batch::default();
            let mut in_batch = 0;
            while let Some((key, value)) = reader.next_op().map_err(error)? {
                match value {
                    Some(v) => batch.insert(key, v),
                    None => batch.remove(key),
                }
                in_batch += 1;
                applied += 1;
                if in_batch == 100_000 {
                    self.db
                        .apply_batch(std::mem::take(&mut batch))
                        .map_err(|e| self.error(e))?;
                    in_batch = 0;
                }
            }
            self.db.apply_batch(batch).map_err(|e| self.error(e))?;
        }
        self.db
            .insert(META, &id.to_be_bytes())
            .map_err(|e| self.error(e))?;
        self.db.flush().map_err(|e| self.error(e))?;
        Ok(applied)
    }

    /// Empties the database (a run with no checkpoint to restore).
    pub fn reset(&self) -> Result<(), StateError> {
        self.db.clear().map_err(|e| self.error(e))
    }
}

/// The keys a stage may have in the database: a Bloom filter, so that reading a key that was
/// never stored costs no lookup. That is the common read when keys are many and short-lived (a
/// window per symbol: at 100,000 symbols nearly every trade opens one), and a sled lookup that
/// finds nothing cost more than the stage's own work. No false negatives: every key that goes
/// to the database is added first; deleted keys stay in until the filter is rebuilt, which its
/// owner does once [`KeyFilter::full`].
#[derive(Clone, Debug)]
pub struct KeyFilter {
    /// The bits; a power of two of words.
    bits: Vec<u64>,
    /// Keys added.
    added: usize,
    /// Keys it is sized for.
    capacity: usize,
}

/// Bits per key the filter is sized for, and probes per key: about 0.2 % false positives when
/// full.
const FILTER_BITS_PER_KEY: usize = 16;
const FILTER_PROBES: u64 = 4;

impl KeyFilter {
    /// An empty filter for `keys` keys (at least 65,536).
    pub fn new(keys: usize) -> KeyFilter {
        let capacity = keys.max(1 << 16);
        KeyFilter {
            bits: vec![0; (capacity * FILTER_BITS_PER_KEY / 64).next_power_of_two()],
            added: 0,
            capacity,
        }
    }

    /// The bits of `key`: word index and mask, per probe.
    fn probes(&self, key: &[u8]) -> impl Iterator<Item = (usize, u64)> + use<> {
        fn mix(mut z: u64) -> u64 {
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        let fnv = key.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        let (h1, h2) = (mix(fnv), mix(fnv ^ 0x9E37_79B9_7F4A_7C15) | 1);
        let mask = (self.bits.len() as u64 * 64) - 1;
        (0..FILTER_PROBES).map(move |i| {
            let bit = h1.wrapping_add(i.wrapping_mul(h2)) & mask;
            ((bit / 64) as usize, 1 << (bit % 64))
        })
    }

    /// Notes that `key` may be in the database.
    pub fn insert(&mut self, key: &[u8]) {
        for (word, mask) in self.probes(key) {
            self.bits[word] |= mask;
        }
        self.added += 1;
    }

    /// Whether `key` may be in the database (`false`: it certainly is not).
    pub fn may_hold(&self, key: &[u8]) -> bool {
        self.probes(key)
            .all(|(word, mask)| self.bits[word] & mask != 0)
    }

    /// Whether it holds more keys than it was sized for, and should be rebuilt.
    pub fn full(&self) -> bool {
        self.added > self.capacity
    }
}

/// One stage's state in the database: what the write-back map in memory falls back to.
#[derive(Clone)]
pub struct Backing {
    db: StateDb,
    stage: String,
    state_prefix: Vec<u8>,
}

impl std::fmt::Debug for Backing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Backing({})", self.stage)
    }
}

impl Backing {
    /// The stored value of `key`. A read error is a failing disk: the run cannot go on.
    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.db
            .db
            .get(state_key(&self.stage, key))
            .unwrap_or_else(|e| panic!("state database {}: {e}", self.db.path.display()))
            .map(|v| v.to_vec())
    }

    /// A filter of the stage's stored keys, with room for as many again.
    pub fn key_filter(&self) -> Result<KeyFilter, StateError> {
        let keys = || {
            self.db
                .db
                .scan_prefix(&self.state_prefix)
                .keys()
                .map(|k| k.map_err(|e| self.db.error(e)))
        };
        let mut count = 0;
        for key in keys() {
            key?;
            count += 1;
        }
        let mut filter = KeyFilter::new(2 * count);
        for key in keys() {
            filter.insert(&key?[self.state_prefix.len()..]);
        }
        Ok(filter)
    }

    /// Stored entries whose key starts with `prefix`, from `from` on, in key order.
    pub fn range(
        &self,
        prefix: &[u8],
        from: Bound<Vec<u8>>,
    ) -> impl Iterator<Item = (Vec<u8>, Vec<u8>)> + '_ {
        let strip = self.state_prefix.len();
        let full = |k: Vec<u8>| state_key(&self.stage, &k);
        let lower = match from {
            Bound::Included(k) => Bound::Included(full(k)),
            Bound::Excluded(k) => Bound::Excluded(full(k)),
            Bound::Unbounded => Bound::Included(full(prefix.to_vec())),
        };
        let whole = full(prefix.to_vec());
        self.db
            .db
            .range::<Vec<u8>, _>((lower, Bound::Unbounded))
            .map(|e| e.unwrap_or_else(|e| panic!("state database: {e}")))
            .take_while(move |(k, _)| k.starts_with(&whole))
            .map(move |(k, v)| (k[strip..].to_vec(), v.to_vec()))
    }

    /// The stage's timers, as stored.
    pub fn timers(&self) -> Result<BTreeSet<(i64, Vec<u8>)>, StateError> {
        let p = prefix(b't', &self.stage);
        let mut timers = BTreeSet::new();
        for entry in self.db.db.scan_prefix(&p) {
            let (k, _) = entry.map_err(|e| self.db.error(e))?;
            let rest = &k[p.len()..];
            let time = u64::from_be_bytes(rest[..8].try_into().expect("8 bytes")) ^ (1 << 63);
            timers.insert((time as i64, rest[8..].to_vec()));
        }
        Ok(timers)
    }

    /// Moves changes out of memory into the database, journalled so that the next checkpoint's
    /// delta still holds them. The database then no longer stands at a checkpoint.
    pub fn spill(&self, layer: &BTreeMap<Vec<u8>, Option<Vec<u8>>>) -> Result<(), StateError> {
        let mut batch = sled::Batch::default();
        batch.insert(META, &0u64.to_be_bytes());
        for (key, value) in layer {
            let mut journal = vec![u8::from(value.is_some())];
            match &value {
                Some(v) => {
                    journal.extend_from_slice(v);
                    batch.insert(state_key(&self.stage, key), v.as_slice());
                }
                None => batch.remove(state_key(&self.stage, key)),
            }
            batch.insert(journal_key(&self.stage, key), journal);
        }
        self.db.db.apply_batch(batch).map_err(|e| self.db.error(e))
    }

    /// Spills `layer` on the writer thread, after everything submitted before; returns the
    /// job's sequence number (the layer must stay readable until [`StateDb::applied`] reaches
    /// it).
    pub fn spill_later(&self, layer: Layer) -> Result<u64, StateError> {
        let seq = self.db.reserve();
        let stage = self.stage.clone();
        self.db.submit(
            seq,
            Box::new(move |db: &StateDb| db.stage(&stage).spill(&layer)),
        )?;
        Ok(seq)
    }

    /// The sequence number of the last job the writer has done.
    pub fn applied(&self) -> u64 {
        self.db.applied()
    }
}

/// Writes a state file: the magic, then `op` entries: a tag (1 set, 0 delete), the key's
/// length (u32 LE) and bytes, and for a set the value's length and bytes.
struct FileWriter {
    out: BufWriter<std::fs::File>,
    bytes: u64,
    entries: u64,
}

impl FileWriter {
    fn create(path: &Path) -> std::io::Result<FileWriter> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
        out.write_all(MAGIC)?;
        Ok(FileWriter {
            out,
            bytes: MAGIC.len() as u64,
            entries: 0,
        })
    }

    fn op(&mut self, key: &[u8], value: Option<&[u8]>) -> std::io::Result<()> {
        self.out.write_all(&[u8::from(value.is_some())])?;
        self.out.write_all(&(key.len() as u32).to_le_bytes())?;
        self.out.write_all(key)?;
        self.bytes += 5 + key.len() as u64;
        if let Some(v) = value {
            self.out.write_all(&(v.len() as u32).to_le_bytes())?;
            self.out.write_all(v)?;
            self.bytes += 4 + v.len() as u64;
        }
        self.entries += 1;
        Ok(())
    }

    /// Flushes the file, without an fsync: it only waits for its upload, which is what makes it
    /// durable (a crash before the manifest discards it), and an fsync on the stage thread
    /// would stall every stage for as long as the disk takes.
    fn finish(mut self) -> std::io::Result<(u64, u64)> {
        self.out.flush()?;
        Ok((self.bytes, self.entries))
    }
}

/// One entry of a state file: a key, and its value or `None` for a deletion.
type Op = (Vec<u8>, Option<Vec<u8>>);

/// Reads a state file written by [`FileWriter`].
struct FileReader {
    input: BufReader<std::fs::File>,
}

impl FileReader {
    fn open(path: &Path) -> std::io::Result<FileReader> {
        let mut input = BufReader::with_capacity(1 << 20, std::fs::File::open(path)?);
        let mut magic = [0; 8];
        input.read_exact(&mut magic)?;
        if &magic != MAGIC {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "not a Weir state file",
            ));
        }
        Ok(FileReader { input })
    }

    fn next_op(&mut self) -> std::io::Result<Option<Op>> {
        if self.input.fill_buf()?.is_empty() {
            return Ok(None);
        }
        let mut tag = [0; 1];
        self.input.read_exact(&mut tag)?;
        let key = self.bytes()?;
        let value = match tag[0] {
            1 => Some(self.bytes()?),
            0 => None,
            t => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("unknown entry tag {t}"),
                ));
            }
        };
        Ok(Some((key, value)))
    }

    fn bytes(&mut self) -> std::io::Result<Vec<u8>> {
        let mut len = [0; 4];
        self.input.read_exact(&mut len)?;
        let mut bytes = vec![0; u32::from_le_bytes(len) as usize];
        self.input.read_exact(&mut bytes)?;
        Ok(bytes)
    }
}

/// The object path of checkpoint `id`'s state file.
pub fn object_path(pipeline: &str, id: u64, full: bool) -> String {
    let kind = if full { "full" } else { "delta" };
    format!("state/{pipeline}/chk-{id:020}.{kind}")
}

/// The checkpoint id in a state file's object path.
pub fn id_of(path: &str) -> Option<u64> {
    let name = path.rsplit('/').next()?;
    name.strip_prefix("chk-")?.split('.').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes(pairs: &[(&str, Option<&str>)], timers: &[(i64, &str, bool)]) -> Changes {
        Changes {
            state: Arc::new(
                pairs
                    .iter()
                    .map(|(k, v)| (k.as_bytes().to_vec(), v.map(|v| v.as_bytes().to_vec())))
                    .collect(),
            ),
            timers: timers
                .iter()
                .map(|(t, k, a)| ((*t, k.as_bytes().to_vec()), *a))
                .collect(),
        }
    }

    fn entries(b: &Backing) -> Vec<(String, String)> {
        b.range(b"", Bound::Unbounded)
            .map(|(k, v)| (String::from_utf8(k).unwrap(), String::from_utf8(v).unwrap()))
            .collect()
    }

    #[test]
    fn deltas_and_full_snapshots_restore_the_same_state() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(&dir.path().join("a")).unwrap();
        let f1 = db
            .commit(
                1,
                &[(
                    "ohlc",
                    changes(
                        &[("a", Some("1")), ("b", Some("2"))],
                        &[(-5, "a", true), (7, "b", true)],
                    ),
                )],
                true,
                &dir.path().join("1"),
            )
            .unwrap();
        assert!(f1.full);
        // Another stage's keys and a spill before the second checkpoint.
        let ohlc = db.stage("ohlc");
        let dirty = [(b"c".to_vec(), Some(b"3".to_vec()))].into_iter().collect();
        ohlc.spill(&dirty).unwrap();
        assert_eq!(db.checkpoint().unwrap(), 0, "a spill leaves the checkpoint");
        let f2 = db
            .commit(
                2,
                &[
                    (
                        "ohlc",
                        changes(&[("a", None), ("b", Some("22"))], &[(-5, "a", false)]),
                    ),
                    ("other", changes(&[("a", Some("x"))], &[])),
                ],
                false,
                &dir.path().join("2"),
            )
            .unwrap();
        assert_eq!(
            f2.entries, 5,
            "the spilled key, two keys, a timer, other's key"
        );
        assert_eq!(db.checkpoint().unwrap(), 2);
        let want = vec![("b".into(), "22".into()), ("c".into(), "3".into())];
        assert_eq!(entries(&ohlc), want);
        assert_eq!(
            ohlc.timers().unwrap(),
            [(7, b"b".to_vec())].into_iter().collect()
        );

        let copy = StateDb::open(&dir.path().join("b")).unwrap();
        copy.restore(2, &[f1.local.clone(), f2.local.clone()])
            .unwrap();
        assert_eq!(copy.checkpoint().unwrap(), 2);
        assert_eq!(entries(&copy.stage("ohlc")), want);
        assert_eq!(
            entries(&copy.stage("other")),
            vec![("a".into(), "x".into())]
        );
        assert_eq!(copy.stage("ohlc").timers().unwrap().len(), 1);

        // A full snapshot of the restored copy restores alone.
        let none: &[(&str, Changes)] = &[];
        let f3 = copy.commit(3, none, true, &dir.path().join("3")).unwrap();
        let third = StateDb::open(&dir.path().join("c")).unwrap();
        third.restore(3, &[f3.local]).unwrap();
        assert_eq!(entries(&third.stage("ohlc")), want);
        assert_eq!(third.stage("ohlc").timers().unwrap().len(), 1);
    }

    #[test]
    fn the_writer_runs_jobs_in_order_and_stops_at_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(dir.path()).unwrap();
        let first = db.reserve();
        db.submit(first, Box::new(|db: &StateDb| db.mark(7)))
            .unwrap();
        let layer: Layer = Arc::new([(b"k".to_vec(), Some(b"v".to_vec()))].into());
        let spill = db.stage("a").spill_later(layer).unwrap();
        assert!(spill > first);
        db.settled().unwrap();
        assert_eq!(db.applied(), spill);
        assert_eq!(db.checkpoint().unwrap(), 0, "the spill came after the mark");
        assert_eq!(db.stage("a").get(b"k"), Some(b"v".to_vec()));
        let failing = db.reserve();
        db.submit(failing, Box::new(|db: &StateDb| Err(db.error("disk full"))))
            .unwrap();
        let error = db.settled().unwrap_err();
        assert!(error.message.contains("disk full"), "{error}");
        assert_eq!(db.applied(), spill, "the failed job is not done");
        let next = db.reserve();
        assert!(db.submit(next, Box::new(|_: &StateDb| Ok(()))).is_err());
    }

    #[test]
    fn the_key_filter_never_forgets_a_key_and_rarely_claims_one() {
        let mut filter = KeyFilter::new(10_000);
        let key = |n: usize| format!("bar/0/{n}/S{n:06}USDT").into_bytes();
        for n in 0..10_000 {
            filter.insert(&key(n));
        }
        assert!(
            (0..10_000).all(|n| filter.may_hold(&key(n))),
            "no false negatives"
        );
        let false_positives = (10_000..110_000)
            .filter(|&n| filter.may_hold(&key(n)))
            .count();
        assert!(
            false_positives < 200,
            "{false_positives} of 100,000 absent keys claimed"
        );
        assert!(!filter.full());
        for n in 10_000..70_000 {
            filter.insert(&key(n));
        }
        assert!(filter.full(), "sized for 65,536 keys at the least");

        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(dir.path()).unwrap();
        db.stage("a")
            .spill(&[(b"k".to_vec(), Some(b"v".to_vec()))].into())
            .unwrap();
        db.stage("b")
            .spill(&[(b"other".to_vec(), Some(b"v".to_vec()))].into())
            .unwrap();
        let stored = db.stage("a").key_filter().unwrap();
        assert!(stored.may_hold(b"k"));
        assert!(!stored.may_hold(b"other"), "another stage's key");
    }

    #[test]
    fn ranges_stay_inside_the_prefix_and_the_stage() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(dir.path()).unwrap();
        db.commit(
            1,
            &[
                (
                    "s",
                    changes(
                        &[("ab", Some("1")), ("ac", Some("2")), ("b", Some("3"))],
                        &[],
                    ),
                ),
                ("s2", changes(&[("aa", Some("x"))], &[])),
            ],
            false,
            &dir.path().join("f"),
        )
        .unwrap();
        let s = db.stage("s");
        let keys: Vec<_> = s.range(b"a", Bound::Unbounded).map(|(k, _)| k).collect();
        assert_eq!(keys, vec![b"ab".to_vec(), b"ac".to_vec()]);
        let after: Vec<_> = s
            .range(b"a", Bound::Excluded(b"ab".to_vec()))
            .map(|(k, _)| k)
            .collect();
        assert_eq!(after, vec![b"ac".to_vec()]);
        assert_eq!(s.get(b"b"), Some(b"3".to_vec()));
        assert_eq!(s.get(b"aa"), None);
    }

    #[test]
    fn object_paths_name_their_checkpoint() {
        let p = object_path("p", 42, false);
        assert_eq!(p, "state/p/chk-00000000000000000042.delta");
        assert_eq!(id_of(&p), Some(42));
        assert_eq!(id_of("state/p/chk-00000000000000000007.full"), Some(7));
    }
}
