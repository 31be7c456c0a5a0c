//! What the server remembers of a pipeline between its runs and its own restarts, in
//! `DATA_DIR/pipelines/<name>/`: the event log (`events.jsonl`, appended) and the plugin
//! versions of its stages (`versions.json`, replaced whole).

use std::{collections::BTreeMap, fs, io::Write as _, path::PathBuf};

use serde::{Deserialize, Serialize};

use super::store::write_whole;
use crate::plugin::now_ms;

/// One entry of a pipeline's event log.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// When it happened (ms since the epoch).
    pub at_ms: i64,
    /// `submitted`, `started`, `failed`, `restarting`, `stopped`, `finished`, `savepoint`,
    /// `swapped`, `rolled_back`, `swap_refused`.
    pub kind: String,
    /// What happened, for people.
    pub message: String,
    /// The fields of its kind (a swap's stage and digests, a failure's attempt, …).
    #[serde(flatten)]
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// A plugin as a stage ran it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PluginRef {
    /// Hex sha256.
    pub sha256: String,
    /// Its file or upload name.
    pub name: String,
    /// Since when the stage runs it (ms since the epoch).
    pub since_ms: i64,
}

/// One change of a stage's plugin.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct VersionChange {
    /// The plugin the stage runs from then on.
    pub sha256: String,
    /// Its name.
    pub name: String,
    /// When.
    pub at_ms: i64,
    /// `loaded` (from the pipeline file), `swapped` or `rolled_back`.
    pub action: String,
    /// The checkpoint at whose barrier a swap happened.
    pub checkpoint: Option<u64>,
}

/// A stage's plugin versions.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StageVersions {
    /// What it runs.
    pub current: Option<PluginRef>,
    /// What it ran before the last swap: where a rollback goes.
    pub previous: Option<PluginRef>,
    /// Every change, oldest first.
    pub history: Vec<VersionChange>,
    /// Whether `current` came from a swap rather than the pipeline file: a restart then runs
    /// it instead of the file's plugin.
    #[serde(default)]
    pub swapped: bool,
}

impl StageVersions {
    /// The stage runs `plugin` after `action` (at `checkpoint`, for a swap).
    pub fn change(&mut self, plugin: PluginRef, action: &str, checkpoint: Option<u64>) {
        self.history.push(VersionChange {
            sha256: plugin.sha256.clone(),
            name: plugin.name.clone(),
            at_ms: plugin.since_ms,
            action: action.into(),
            checkpoint,
        });
        self.swapped = action != "loaded";
        self.previous = self.current.replace(plugin);
    }
}

/// A pipeline's folder of history.
pub struct History {
    /// `DATA_DIR/pipelines/<name>`.
    dir: PathBuf,
}

/// Events kept in memory and returned by the API: the newest this many.
pub const EVENTS_SHOWN: usize = 1000;

impl History {
    /// The history in `dir` (created when first written).
    pub fn open(dir: PathBuf) -> History {
        History { dir }
    }

    /// Appends an event; a failure to write it is logged, not raised: the log is a record of
    /// what happened, and must not stop it happening.
    pub fn record(&self, kind: &str, message: impl Into<String>, fields: serde_json::Value) {
        let event = Event {
            at_ms: now_ms(),
            kind: kind.into(),
            message: message.into(),
            fields: match fields {
                serde_json::Value::Object(mut map) => {
                    // The event's own fields win: a second `at_ms` would not read back.
                    for own in ["at_ms", "kind", "message"] {
                        map.remove(own);
                    }
                    map
                }
                _ => serde_json::Map::new(),
            },
        };
        let write = || -> std::io::Result<()> {
            fs::create_dir_all(&self.dir)?;
            let mut line = serde_json::to_vec(&event)?;
            line.push(b'\n');
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join("events.jsonl"))?
                .write_all(&line)
        };
        if let Err(e) = write() {
            tracing::warn!(dir = %self.dir.display(), "cannot write the event log: {e}");
        }
    }

    /// The newest [`EVENTS_SHOWN`] events, oldest first (a line a crash cut short is skipped).
    pub fn events(&self) -> Vec<Event> {
        let text = fs::read_to_string(self.dir.join("events.jsonl")).unwrap_or_default();
        let events: Vec<Event> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let skip = events.len().saturating_sub(EVENTS_SHOWN);
        events.into_iter().skip(skip).collect()
    }

    /// The stages' versions as last saved.
    pub fn versions(&self) -> BTreeMap<String, StageVersions> {
        fs::read(self.dir.join("versions.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Saves the stages' versions.
    pub fn save_versions(&self, versions: &BTreeMap<String, StageVersions>) -> std::io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        write_whole(
            &self.dir.join("versions.json"),
            &serde_json::to_vec_pretty(versions)?,
        )
    }

    /// Forgets everything (the pipeline was deleted).
    pub fn remove(&self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin(sha: &str) -> PluginRef {
        PluginRef {
            sha256: sha.into(),
            name: format!("{sha}.wasm"),
            since_ms: 1,
        }
    }

    #[test]
    fn events_and_versions_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let history = History::open(dir.path().join("p"));
        history.record(
            "started",
            "started",
            serde_json::json!({"attempt": 1, "at_ms": 5, "kind": "x"}),
        );
        history.record("stopped", "stopped", serde_json::Value::Null);
        let mut versions = BTreeMap::new();
        let stage: &mut StageVersions = versions.entry("s".to_string()).or_default();
        stage.change(plugin("a"), "loaded", None);
        stage.change(plugin("b"), "swapped", Some(4));
        history.save_versions(&versions).unwrap();

        let again = History::open(dir.path().join("p"));
        let events = again.events();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].fields["attempt"], 1);
        assert_eq!(events[0].kind, "started");
        assert_ne!(events[0].at_ms, 5);
        assert_eq!(events[1].kind, "stopped");
        let s = &again.versions()["s"];
        assert_eq!(s.current.as_ref().unwrap().sha256, "b");
        assert_eq!(s.previous.as_ref().unwrap().sha256, "a");
        assert!(s.swapped);
        assert_eq!(s.history[1].checkpoint, Some(4));
    }
}
