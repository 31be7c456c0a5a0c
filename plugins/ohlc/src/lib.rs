//! `ohlc`: open, high, low, close, volume, trade count and VWAP per symbol over event-time
//! windows, emitted when the watermark passes a window's end.
//!
//! Each input value is a JSON trade object; the symbol, price and quantity are read from the
//! fields named in the config (Binance's `s`, `p`, `q` by default; prices and quantities may be
//! JSON numbers or decimal strings). Event time is the record's timestamp, or a field's.
//!
//! Windows are tumbling (`windows: ["1m", "5m"]`) or sliding (`sliding: [{size: "5m", slide:
//! "1m"}]`); a trade counts in every window that covers it. Open and close are the trades with
//! the earliest and latest event time in the window (on a tie, the first and the last to
//! arrive), so bars do not depend on arrival order within the watermark's bound. With
//! `moving_average: N`, each bar also carries the mean close of its window kind's last N bars
//! (itself included) for the symbol.
//!
//! Everything lives in the host's keyed state — a bar per (window kind, window end, symbol), the
//! last closes per (window kind, symbol) — and a timer per (window kind, symbol, window end)
//! closes the bar, so a restart or a hot swap keeps windows in flight. The bars a batch touches are
//! read from the host once and written back at the batch's end, not at every trade. A trade for a window the
//! watermark has already closed goes to the named output `late`, unchanged. A value that is not
//! a trade (not JSON, a field missing or of the wrong type) is a per-record error.

mod bar;
mod config;
mod json;

use std::{
    collections::{HashMap, hash_map::Entry},
    hash::{BuildHasherDefault, Hasher},
};

use weir_sdk::{
    Context, Emitter, Record, Stage, Timer,
    host::{state, timers},
};

pub use bar::Bar;
pub use config::{Config, Window};

/// The stage.
#[derive(Debug)]
pub struct Ohlc {
    config: Config,
    /// The bars a batch touched, by symbol, then (window kind, window end): read from the host
    /// once per batch and written back at its end, not at every trade. Looked up by the
    /// symbol borrowed from the trade, so a symbol is copied once per batch, not per trade.
    pending: Map<String, Map<(usize, i64), Bar>>,
    /// The last watermark, read from the host once per batch.
    watermark: Option<i64>,
}

/// A hash map with FNV-1a: a batch's symbols are short, and SipHash's guard against crafted
/// collisions buys little for a map that holds one batch (at most a batch's worth of keys)
/// while it was a twentieth of the stage's time.
type Map<K, V> = HashMap<K, V, BuildHasherDefault<Fnv>>;

/// FNV-1a, 64 bits.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// State key of the bar of window kind `kind` ending at `end` for `symbol`; the timer that
/// closes it has key `kind/symbol` and time `end`.
fn bar_key(kind: usize, end: i64, symbol: &[u8]) -> Vec<u8> {
    [format!("bar/{kind}/{end}/").as_bytes(), symbol].concat()
}

fn timer_key(kind: usize, symbol: &[u8]) -> Vec<u8> {
    [format!("{kind}/").as_bytes(), symbol].concat()
}

/// State key of the last closes of window kind `kind` for `symbol`.
fn closes_key(kind: usize, symbol: &[u8]) -> Vec<u8> {
    [format!("ma/{kind}/").as_bytes(), symbol].concat()
}

impl Stage for Ohlc {
    fn init(config: &str) -> Result<Self, String> {
        Ok(Ohlc {
            config: Config::parse(config)?,
            pending: Map::default(),
            watermark: None,
        })
    }

    fn outputs(&self) -> Vec<String> {
        vec!["late".into()]
    }

    fn process(&mut self, _cx: &Context, record: &Record, out: &mut Emitter) -> Result<(), String> {
        let trade = self.config.trade(record)?;
        let watermark = *self.watermark.get_or_insert_with(state::watermark);
        let symbol: &str = &trade.symbol;
        if !self.pending.contains_key(symbol) {
            self.pending.insert(symbol.to_owned(), Map::default());
        }
        let bars = self.pending.get_mut(symbol).expect("inserted above");
        let mut late = true;
        for (kind, window) in self.config.windows.iter().enumerate() {
            for end in window.ends_covering(trade.time_ms) {
                if end <= watermark {
                    continue;
                }
                late = false;
                match bars.entry((kind, end)) {
                    Entry::Occupied(mut bar) => {
                        let next = bar.get().with(&trade);
                        bar.insert(next);
                    }
                    Entry::Vacant(slot) => {
                        let symbol = symbol.as_bytes();
                        let bar = match state::get(&bar_key(kind, end, symbol)) {
                            Some(bytes) => Bar::decode(&bytes)?.with(&trade),
                            None => {
                                timers::register(&timer_key(kind, symbol), end);
                                Bar::first(&trade)
                            }
                        };
                        slot.insert(bar);
                    }
                }
            }
        }
        if late {
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
        for (symbol, bars) in &mut self.pending {
            for ((kind, end), bar) in bars.drain() {
                state::set(&bar_key(kind, end, symbol.as_bytes()), &bar.encode());
            }
        }
        // The symbols stay for the next batch, unless there are many.
        if self.pending.len() > 1024 {
            self.pending.clear();
        }
        self.watermark = None;
    }

    fn on_watermark(&mut self, watermark_ms: i64, fired: &[Timer], out: &mut Emitter) {
        self.end_batch();
        for timer in fired {
            let Some((kind, symbol)) = std::str::from_utf8(&timer.key)
                .ok()
                .and_then(|k| k.split_once('/'))
                .and_then(|(kind, symbol)| Some((kind.parse::<usize>().ok()?, symbol)))
            else {
                continue;
            };
            let Some(window) = self.config.windows.get(kind) else {
                continue;
            };
            let key = bar_key(kind, timer.time_ms, symbol.as_bytes());
            let Some(bar) = state::get(&key).and_then(|b| Bar::decode(&b).ok()) else {
                continue;
            };
            state::delete(&key);
            let moving_average = self.config.moving_average.map(|n| {
                let key = closes_key(kind, symbol.as_bytes());
                let mut closes: Vec<f64> = state::get(&key)
                    .map(|b| {
                        b.chunks_exact(8)
                            .map(|c| f64::from_be_bytes(c.try_into().expect("8 bytes")))
                            .collect()
                    })
                    .unwrap_or_default();
                closes.push(bar.close);
                if closes.len() > n {
                    closes.drain(..closes.len() - n);
                }
                state::set(
                    &key,
                    &closes
                        .iter()
                        .flat_map(|c| c.to_be_bytes())
                        .collect::<Vec<u8>>(),
                );
                closes.iter().sum::<f64>() / closes.len() as f64
            });
            let value = bar.to_json(symbol, window, timer.time_ms, moving_average);
            out.emit(
                0,
                Some(symbol.as_bytes()),
                value.as_bytes(),
                timer.time_ms - 1,
                &[],
            );
        }
        state::note_watermark(watermark_ms);
    }
}

#[cfg(feature = "component")]
weir_sdk::export_stage!(Ohlc);

/// One trade, read from a record.
#[derive(Clone, Debug, PartialEq)]
pub struct Trade<'a> {
    /// The symbol, borrowed from the record when it can be.
    pub symbol: std::borrow::Cow<'a, str>,
    /// Price.
    pub price: f64,
    /// Quantity.
    pub quantity: f64,
    /// Event time, ms since the epoch.
    pub time_ms: i64,
}

#[cfg(test)]
mod tests;
