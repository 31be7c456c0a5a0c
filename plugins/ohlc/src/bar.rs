//! One window's bar for one symbol, as kept in the host's state.

use crate::{Trade, Window};

/// The running aggregate of a window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bar {
    /// Price of the earliest trade (by event time; on a tie, the first to arrive).
    pub open: f64,
    /// Its event time.
    pub open_ms: i64,
    /// Highest price.
    pub high: f64,
    /// Lowest price.
    pub low: f64,
    /// Price of the latest trade (by event time; on a tie, the last to arrive).
    pub close: f64,
    /// Its event time.
    pub close_ms: i64,
    /// Sum of quantities.
    pub volume: f64,
    /// Sum of price × quantity, for the VWAP.
    pub notional: f64,
    /// Number of trades.
    pub trades: u64,
}

const ENCODED: usize = 9 * 8;

impl Bar {
    /// The bar of a window's first trade.
    pub fn first(t: &Trade) -> Bar {
        Bar {
            open: t.price,
            open_ms: t.time_ms,
            high: t.price,
            low: t.price,
            close: t.price,
            close_ms: t.time_ms,
            volume: t.quantity,
            notional: t.price * t.quantity,
            trades: 1,
        }
    }

    /// The bar with one more trade.
    pub fn with(mut self, t: &Trade) -> Bar {
        if t.time_ms < self.open_ms {
            (self.open, self.open_ms) = (t.price, t.time_ms);
        }
        if t.time_ms >= self.close_ms {
            (self.close, self.close_ms) = (t.price, t.time_ms);
        }
        self.high = self.high.max(t.price);
        self.low = self.low.min(t.price);
        self.volume += t.quantity;
        self.notional += t.price * t.quantity;
        self.trades += 1;
        self
    }

    /// 72 bytes: every field, big-endian.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ENCODED);
        for f in [
            self.open,
            self.high,
            self.low,
            self.close,
            self.volume,
            self.notional,
        ] {
            out.extend_from_slice(&f.to_be_bytes());
        }
        for n in [self.open_ms, self.close_ms, self.trades as i64] {
            out.extend_from_slice(&n.to_be_bytes());
        }
        out
    }

    /// The inverse of [`Bar::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Bar, String> {
        if bytes.len() != ENCODED {
            return Err(format!(
                "a bar in state has {} bytes, expected {ENCODED}",
                bytes.len()
            ));
        }
        let word = |i: usize| -> [u8; 8] { bytes[i * 8..i * 8 + 8].try_into().expect("8 bytes") };
        let f = |i| f64::from_be_bytes(word(i));
        let n = |i| i64::from_be_bytes(word(i));
        Ok(Bar {
            open: f(0),
            high: f(1),
            low: f(2),
            close: f(3),
            volume: f(4),
            notional: f(5),
            open_ms: n(6),
            close_ms: n(7),
            trades: n(8) as u64,
        })
    }

    /// The bar as the JSON object the stage emits.
    pub fn to_json(
        &self,
        symbol: &str,
        window: &Window,
        end_ms: i64,
        moving_average: Option<f64>,
    ) -> String {
        let mut value = serde_json::json!({
            "symbol": symbol,
            "window": window.name,
            "window_start": end_ms - window.size_ms,
            "window_end": end_ms,
            "open": self.open,
            "high": self.high,
            "low": self.low,
            "close": self.close,
            "volume": self.volume,
            "trades": self.trades,
            "vwap": (self.volume > 0.0).then(|| self.notional / self.volume),
        });
        if let Some(ma) = moving_average {
            value["moving_average"] = ma.into();
        }
        value.to_string()
    }
}
