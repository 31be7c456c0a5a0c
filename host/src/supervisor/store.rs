//! The server's plugin store: every plugin a pipeline ran or a user uploaded, kept by the
//! sha256 of its bytes in `DATA_DIR/plugins/`, so a rollback or a restart can load any version
//! again whatever happened to the file it came from.

use std::{
    fs,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::plugin::now_ms;

/// A plugin in the store.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredPlugin {
    /// Hex sha256 of its bytes: its identity.
    pub sha256: String,
    /// The file name it was uploaded or loaded as, for people.
    pub name: String,
    /// Its size.
    pub bytes: u64,
    /// When it was first stored (ms since the epoch).
    pub stored_ms: i64,
}

/// The store's folder.
pub struct PluginStore {
    /// `DATA_DIR/plugins`: `<sha256>.wasm` and `<sha256>.json` (its [`StoredPlugin`]).
    dir: PathBuf,
}

/// Whether `s` looks like a hex sha256 (and so is safe to put in a file name).
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

impl PluginStore {
    /// The store in `dir`, created if missing.
    pub fn open(dir: PathBuf) -> std::io::Result<PluginStore> {
        fs::create_dir_all(&dir)?;
        Ok(PluginStore { dir })
    }

    fn paths(&self, sha256: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{sha256}.wasm")),
            self.dir.join(format!("{sha256}.json")),
        )
    }

    /// Keeps `bytes` (named `name`) unless the store has them already; returns the entry and
    /// where the bytes are.
    pub fn put(&self, name: &str, bytes: &[u8]) -> std::io::Result<(StoredPlugin, PathBuf)> {
        let sha256 = hex::encode(Sha256::digest(bytes));
        if let Some(found) = self.get(&sha256) {
            return Ok(found);
        }
        let (wasm, meta) = self.paths(&sha256);
        let entry = StoredPlugin {
            sha256,
            name: name.to_string(),
            bytes: bytes.len() as u64,
            stored_ms: now_ms(),
        };
        // The bytes first, each file renamed into place once whole: an entry whose metadata
        // exists always has its bytes.
        write_whole(&wasm, bytes)?;
        write_whole(&meta, &serde_json::to_vec_pretty(&entry)?)?;
        Ok((entry, wasm))
    }

    /// Copies the plugin file at `path` into the store (see [`PluginStore::put`]).
    pub fn put_file(&self, path: &Path) -> std::io::Result<(StoredPlugin, PathBuf)> {
        let bytes = fs::read(path)?;
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into(),
        );
        self.put(&name, &bytes)
    }

    /// The entry for `sha256` and where its bytes are, if the store has it.
    pub fn get(&self, sha256: &str) -> Option<(StoredPlugin, PathBuf)> {
        if !is_sha256(sha256) {
            return None;
        }
        let (wasm, meta) = self.paths(sha256);
        let entry: StoredPlugin = serde_json::from_slice(&fs::read(meta).ok()?).ok()?;
        wasm.is_file().then_some((entry, wasm))
    }

    /// Every plugin in the store, oldest first.
    pub fn list(&self) -> Vec<StoredPlugin> {
        let mut all: Vec<StoredPlugin> = fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name();
                let sha = name.to_str()?.strip_suffix(".json")?;
                self.get(sha).map(|(entry, _)| entry)
            })
            .collect();
        all.sort_by(|a, b| (a.stored_ms, &a.sha256).cmp(&(b.stored_ms, &b.sha256)));
        all
    }
}

/// Writes `bytes` to `path` through a temporary file renamed into place.
pub(crate) fn write_whole(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plugin_is_stored_once_by_its_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = PluginStore::open(dir.path().join("plugins")).unwrap();
        let (first, path) = store.put("a.wasm", b"bytes").unwrap();
        assert_eq!(
            first.sha256,
            "277089d91c0bdf4f2e6862ba7e4a07605119431f5d13f726dd352b06f1b206a9"
        );
        assert_eq!(std::fs::read(path).unwrap(), b"bytes");
        let (again, _) = store.put("b.wasm", b"bytes").unwrap();
        assert_eq!(again, first, "the first name and time stay");
        store.put("c.wasm", b"other").unwrap();
        assert_eq!(store.list().len(), 2);
        assert!(store.get("../../etc/passwd").is_none());
        assert!(store.get(&"0".repeat(64)).is_none());
    }
}
