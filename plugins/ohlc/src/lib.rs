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

use std::collections::{HashMap, hash_map::Entry};

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
    /// The bars a batch touched, by (window kind, window end, symbol): read from the host once
    /// per batch and written back at its end, not at every trade.
    pending: HashMap<(usize, i64, String), Bar>,
    /// The last watermark, read from the host once per batch.
    watermark: Option<i64>,
}

/// State key of the last watermark seen.
const WATERMARK: &[u8] = b"wm";

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

fn watermark() -> i64 {
    state::get(WATERMARK)
        .and_then(|v| v.try_into().ok())
        .map_or(i64::MIN, i64::from_be_bytes)
}

impl Stage for Ohlc {
    fn init(config: &str) -> Result<Self, String> {
        Ok(Ohlc {
            config: Config::parse(config)?,
            pending: HashMap::new(),
            watermark: None,
        })
    }

    fn outputs(&self) -> Vec<String> {
        vec!["late".into()]
    }

    fn process(&mut self, _cx: &Context, record: &Record, out: &mut Emitter) -> Result<(), String> {
        let trade = self.config.trade(record)?;
        let watermark = *self.watermark.get_or_insert_with(watermark);
        let mut late = true;
        for (kind, window) in self.config.windows.iter().enumerate() {
            for end in window.ends_covering(trade.time_ms) {
                if end <= watermark {
                    continue;
                }
                late = false;
                match self.pending.entry((kind, end, trade.symbol.clone())) {
                    Entry::Occupied(mut bar) => {
                        let next = bar.get().with(&trade);
                        bar.insert(next);
                    }
                    Entry::Vacant(slot) => {
                        let symbol = trade.symbol.as_bytes();
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
        for ((kind, end, symbol), bar) in self.pending.drain() {
            state::set(&bar_key(kind, end, symbol.as_bytes()), &bar.encode());
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
        if watermark_ms > watermark() {
            state::set(WATERMARK, &watermark_ms.to_be_bytes());
        }
    }
}

weir_sdk::export_stage!(Ohlc);

/// One trade, read from a record.
#[derive(Clone, Debug, PartialEq)]
pub struct Trade {
    /// The symbol.
    pub symbol: String,
    /// Price.
    pub price: f64,
    /// Quantity.
    pub quantity: f64,
    /// Event time, ms since the epoch.
    pub time_ms: i64,
}

#[cfg(test)]
mod tests;
