//! `sessionize`: session windows per key. A key's events less than `gap` apart form one
//! session; the session is emitted once the watermark passes its last event plus the gap.
//!
//! Each input value is a JSON object, such as the generator's `user_events`; the session key and
//! the event time are read from the fields named in the config (`user_id` and `ts_ms` by
//! default, or the record's own key and timestamp). Sessions do not depend on arrival order
//! within the watermark's bound: an event that arrives out of order joins, and so merges, every
//! open session of its key it is less than `gap` from.
//!
//! Everything lives in the host's keyed state — per key, its open sessions and the time before
//! which its events are late — and a timer per open session (key, last event + gap) closes it,
//! so a restart or a replaced instance keeps sessions in flight. The keys a batch touches are
//! read from the host once and written back at the batch's end, not at every event. An event
//! that can no longer be placed (its session would already have closed, or it would join one
//! already emitted) goes to the named output `late`, unchanged. A value that is not an event
//! (not a JSON object, the key or time missing or of the wrong type) is a per-record error.

mod config;
mod session;

use std::collections::HashMap;

use weir_sdk::{
    Context, Emitter, Level, Record, Stage, Timer,
    host::{state, timers},
};

pub use config::{Config, Event};
pub use session::{KeyState, Session};

/// The stage.
#[derive(Debug)]
pub struct Sessionize {
    /// Parsed settings.
    config: Config,
    /// The keys a batch touched, read from the host once per batch and written back at its end.
    pending: HashMap<String, Pending>,
    /// The last watermark, read from the host once per batch.
    watermark: Option<i64>,
}

/// A key's state while a batch runs.
#[derive(Debug)]
struct Pending {
    state: KeyState,
    /// The close times of the sessions as read from the host: their timers are registered.
    timers: Vec<i64>,
    /// Whether the batch changed the state.
    changed: bool,
}

/// State key of a key's sessions; the timers that close them have the key itself as key.
fn state_key(key: &[u8]) -> Vec<u8> {
    [b"k/", key].concat()
}

impl Stage for Sessionize {
    fn init(config: &str) -> Result<Self, String> {
        Ok(Sessionize {
            config: Config::parse(config)?,
            pending: HashMap::new(),
            watermark: None,
        })
    }

    fn outputs(&self) -> Vec<String> {
        vec!["late".into()]
    }

    fn process(&mut self, _cx: &Context, record: &Record, out: &mut Emitter) -> Result<(), String> {
        let event = self.config.event(record)?;
        let watermark = *self.watermark.get_or_insert_with(state::watermark);
        let gap_ms = self.config.gap_ms;
        if !self.pending.contains_key(event.key.as_ref()) {
            let state = match state::get(&state_key(event.key.as_bytes())) {
                Some(bytes) => KeyState::decode(&bytes)?,
                None => KeyState::new(watermark),
            };
            let timers = state.sessions.iter().map(|s| s.closes_at(gap_ms)).collect();
            let pending = Pending {
                state,
                timers,
                changed: false,
            };
            self.pending.insert(event.key.clone().into_owned(), pending);
        }
        let pending = self
            .pending
            .get_mut(event.key.as_ref())
            .expect("the key was just read");
        if pending.state.place(&event, gap_ms, watermark) {
            pending.changed = true;
        } else {
            out.emit(
                1,
                record.key,
                record.value,
                record.timestamp_ms,
                record.headers,
            );
        }
        Ok(())
    }

    fn end_batch(&mut self) {
        let gap_ms = self.config.gap_ms;
        for (key, pending) in self.pending.drain() {
            if !pending.changed {
                continue;
            }
            let key = key.as_bytes();
            let closes: Vec<i64> = pending
                .state
                .sessions
                .iter()
                .map(|s| s.closes_at(gap_ms))
                .collect();
            for time in pending.timers.iter().filter(|t| !closes.contains(t)) {
                timers::cancel(key, *time);
            }
            for time in closes.iter().filter(|t| !pending.timers.contains(t)) {
                timers::register(key, *time);
            }
            state::set(&state_key(key), &pending.state.encode());
        }
        self.watermark = None;
    }

    fn on_watermark(&mut self, watermark_ms: i64, fired: &[Timer], out: &mut Emitter) {
        self.end_batch();
        let gap_ms = self.config.gap_ms;
        for timer in fired {
            let slot = state_key(&timer.key);
            let Some(bytes) = state::get(&slot) else {
                continue;
            };
            let mut key_state = match KeyState::decode(&bytes) {
                Ok(key_state) => key_state,
                Err(e) => {
                    weir_sdk::log(Level::Error, &e);
                    continue;
                }
            };
            let closed = key_state.close(timer.time_ms, gap_ms);
            if closed.is_empty() {
                continue;
            }
            let key = String::from_utf8_lossy(&timer.key);
            for session in &closed {
                out.emit_with(0, Some(&timer.key), session.end, &[], |buf| {
                    session.write_json(&key, &self.config, buf)
                });
            }
            if key_state.sessions.is_empty() {
                state::delete(&slot);
            } else {
                state::set(&slot, &key_state.encode());
            }
        }
        state::note_watermark(watermark_ms);
    }
}

weir_sdk::export_stage!(Sessionize);

#[cfg(test)]
mod tests;
