//! Services the host gives a stage: logging, keyed state and event-time timers.
//!
//! In a component these call the host. Built natively (for a stage's unit tests) they work on
//! thread-local stand-ins: state is an in-memory map, timers a list that [`timers::take`]
//! empties, and log lines go to standard error.

/// Severity of a log message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Detail for debugging a stage.
    Debug,
    /// Normal operation.
    Info,
    /// Something a person should look at.
    Warn,
    /// Something failed.
    Error,
}

/// Writes a message to the host's log, tagged with the stage's name.
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    {
        use crate::wasm::bindings::weir::plugin::{host, types::Level as L};
        let level = match level {
            Level::Debug => L::Debug,
            Level::Info => L::Info,
            Level::Warn => L::Warn,
            Level::Error => L::Error,
        };
        host::log(level, message);
    }
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("[{level:?}] {message}");
}

/// Keyed state held by the host, scoped to the stage: it survives a trapped or replaced instance
/// and a restart, because the host keeps it in checkpoints.
pub mod state {
    #[cfg(target_arch = "wasm32")]
    use crate::wasm::bindings::weir::plugin::state as imp;

    #[cfg(not(target_arch = "wasm32"))]
    mod imp {
        use std::{cell::RefCell, collections::BTreeMap};

        thread_local! {
            static MAP: RefCell<BTreeMap<Vec<u8>, Vec<u8>>> = const { RefCell::new(BTreeMap::new()) };
        }

        pub fn get(key: &[u8]) -> Option<Vec<u8>> {
            MAP.with(|m| m.borrow().get(key).cloned())
        }
        pub fn set(key: &[u8], value: &[u8]) {
            MAP.with(|m| m.borrow_mut().insert(key.to_vec(), value.to_vec()));
        }
        pub fn delete(key: &[u8]) {
            MAP.with(|m| m.borrow_mut().remove(key));
        }
        pub fn scan_prefix(
            prefix: &[u8],
            start_after: Option<&[u8]>,
            limit: u32,
        ) -> Vec<(Vec<u8>, Vec<u8>)> {
            MAP.with(|m| {
                m.borrow()
                    .range(prefix.to_vec()..)
                    .take_while(|(k, _)| k.starts_with(prefix))
                    .filter(|(k, _)| start_after.is_none_or(|after| k.as_slice() > after))
                    .take(limit as usize)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
        }
    }

    /// The value stored under `key`, if any.
    pub fn get(key: &[u8]) -> Option<Vec<u8>> {
        imp::get(key)
    }
    /// Stores `value` under `key`.
    pub fn set(key: &[u8], value: &[u8]) {
        imp::set(key, value)
    }
    /// Removes `key`.
    pub fn delete(key: &[u8]) {
        imp::delete(key)
    }
    /// Up to `limit` entries whose key starts with `prefix`, in key order, after `start_after`.
    pub fn scan_prefix(
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: u32,
    ) -> Vec<(Vec<u8>, Vec<u8>)> {
        imp::scan_prefix(prefix, start_after, limit)
    }

    /// Where [`watermark`] is kept.
    const WATERMARK: &[u8] = b"wm";

    /// The newest watermark noted with [`note_watermark`], or `i64::MIN` before the first. A
    /// window stage notes each watermark it is handed and reads this in `process` to tell a
    /// late record from one whose window is still open; kept in the stage's state (key `wm`),
    /// it survives restarts.
    pub fn watermark() -> i64 {
        get(WATERMARK)
            .and_then(|v| v.try_into().ok())
            .map_or(i64::MIN, i64::from_be_bytes)
    }

    /// Notes `watermark_ms` for [`watermark`], if it is newer than the one noted.
    pub fn note_watermark(watermark_ms: i64) {
        if watermark_ms > watermark() {
            set(WATERMARK, &watermark_ms.to_be_bytes());
        }
    }
}

/// Event-time timers held by the host; they fire through [`Stage::on_watermark`](crate::Stage::on_watermark).
pub mod timers {
    #[cfg(target_arch = "wasm32")]
    use crate::wasm::bindings::weir::plugin::timers as imp;

    #[cfg(not(target_arch = "wasm32"))]
    mod imp {
        use std::{cell::RefCell, collections::BTreeSet};

        thread_local! {
            pub static SET: RefCell<BTreeSet<(i64, Vec<u8>)>> = const { RefCell::new(BTreeSet::new()) };
        }

        pub fn register(key: &[u8], time_ms: i64) {
            SET.with(|s| s.borrow_mut().insert((time_ms, key.to_vec())));
        }
        pub fn cancel(key: &[u8], time_ms: i64) {
            SET.with(|s| s.borrow_mut().remove(&(time_ms, key.to_vec())));
        }
    }

    /// Registers a timer for `key` at event time `time_ms`.
    pub fn register(key: &[u8], time_ms: i64) {
        imp::register(key, time_ms)
    }
    /// Cancels a timer registered earlier.
    pub fn cancel(key: &[u8], time_ms: i64) {
        imp::cancel(key, time_ms)
    }

    /// Native tests only: removes and returns the timers due at `watermark_ms`, in time order,
    /// as the host would hand them to `on_watermark`.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn take(watermark_ms: i64) -> Vec<crate::Timer> {
        imp::SET.with(|s| {
            let mut set = s.borrow_mut();
            let later = set.split_off(&(watermark_ms.saturating_add(1), Vec::new()));
            let due = std::mem::replace(&mut *set, later);
            due.into_iter()
                .map(|(time_ms, key)| crate::Timer { key, time_ms })
                .collect()
        })
    }
}
