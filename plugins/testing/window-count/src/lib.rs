//! Test plugin for keyed state and event-time timers: counts records per key in tumbling
//! windows and emits each count when the watermark passes the window's end.
//!
//! - Every record needs a key (a record without one is a per-record error).
//! - The count of key `k` in the window ending at `e` is kept in host state under `count/e/k`
//!   (decimal text), and a timer for key `k` at time `e` closes it.
//! - On a watermark, each fired timer emits `{"key":"k","window_end":e,"count":n}` with key
//!   `k` and event time `e - 1`, and the count is deleted.
//! - The last watermark is kept in state under `watermark`; a record older than it is late
//!   and goes to the named output `late` unchanged.
//!
//! Config: `{"window_ms": N}` (default 1000).

use weir_sdk::{
    Context, Emitter, Record, Stage, Timer,
    host::{state, timers},
};

/// The stage.
pub struct WindowCount {
    window_ms: i64,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_window")]
    window_ms: i64,
}

fn default_window() -> i64 {
    1000
}

const WATERMARK: &[u8] = b"watermark";

fn count_key(window_end: i64, key: &[u8]) -> Vec<u8> {
    [format!("count/{window_end}/").as_bytes(), key].concat()
}

fn number(bytes: Option<Vec<u8>>) -> Option<i64> {
    std::str::from_utf8(&bytes?).ok()?.parse().ok()
}

impl Stage for WindowCount {
    fn init(config: &str) -> Result<Self, String> {
        let config: Config =
            serde_json::from_str(config).map_err(|e| format!("bad window-count config: {e}"))?;
        if config.window_ms <= 0 {
            return Err(format!(
                "window_ms must be positive, got {}",
                config.window_ms
            ));
        }
        Ok(WindowCount {
            window_ms: config.window_ms,
        })
    }

    fn outputs(&self) -> Vec<String> {
        vec!["late".into()]
    }

    fn process(&mut self, _cx: &Context, record: &Record, out: &mut Emitter) -> Result<(), String> {
        let key = record.key.ok_or("record has no key")?;
        if number(state::get(WATERMARK)).is_some_and(|w| record.timestamp_ms < w) {
            out.emit(
                1,
                record.key,
                record.value,
                record.timestamp_ms,
                record.headers,
            );
            return Ok(());
        }
        let end = (record.timestamp_ms.div_euclid(self.window_ms) + 1) * self.window_ms;
        let slot = count_key(end, key);
        let count = number(state::get(&slot)).unwrap_or(0) + 1;
        state::set(&slot, count.to_string().as_bytes());
        timers::register(key, end);
        Ok(())
    }

    fn on_watermark(&mut self, watermark_ms: i64, fired: &[Timer], out: &mut Emitter) {
        for timer in fired {
            let slot = count_key(timer.time_ms, &timer.key);
            let count = number(state::get(&slot)).unwrap_or(0);
            state::delete(&slot);
            let value = serde_json::json!({
                "key": String::from_utf8_lossy(&timer.key),
                "window_end": timer.time_ms,
                "count": count,
            });
            out.emit(
                0,
                Some(&timer.key),
                value.to_string().as_bytes(),
                timer.time_ms - 1,
                &[],
            );
        }
        state::set(WATERMARK, watermark_ms.to_string().as_bytes());
    }
}

weir_sdk::export_stage!(WindowCount);
