//! The `generator` source: synthetic crypto trades shaped like Binance or Kraken trade
//! messages, deterministic for a given seed and start time.
//!
//! Trade `i` has offset `i`, trade id `1_000_000 + i`, event time
//! `start + i * 1000 / events_per_sec`, a symbol drawn from the list, and a price that follows
//! a random walk per symbol. Values are formatted with integer arithmetic (prices are kept in
//! units of 1e-8), so generating is cheap next to what the stages do.

use crate::{
    pipeline::spec::{GeneratorSpec, TradeFormat},
    record::Batch,
};

/// The topic name generated records carry.
pub const TOPIC: &str = "generator";

/// Symbols traded when the pipeline names none, with a starting price in whole quote units.
const DEFAULT_SYMBOLS: &[(&str, f64)] = &[
    ("BTCUSDT", 65_000.0),
    ("ETHUSDT", 3_500.0),
    ("SOLUSDT", 150.0),
    ("BNBUSDT", 600.0),
    ("XRPUSDT", 0.6),
    ("DOGEUSDT", 0.15),
];

/// First trade id: ids are `FIRST_TRADE_ID + offset`.
pub const FIRST_TRADE_ID: u64 = 1_000_000;

/// A small, fast, well-mixed generator (SplitMix64): the same seed always gives the same
/// sequence, on every platform.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform float in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct Symbol {
    binance: String,
    kraken: String,
    /// Current price in units of 1e-8.
    price: u64,
}

/// The generator's state.
pub struct Generator {
    rng: SplitMix64,
    symbols: Vec<Symbol>,
    format: TradeFormat,
    start_ms: i64,
    events_per_sec: u64,
    /// Offset of the next trade.
    next: u64,
    /// Trades to generate in all, if bounded.
    count: Option<u64>,
}

impl Generator {
    /// A generator for the given settings; `now_ms` is used when no start time is set.
    pub fn new(spec: &GeneratorSpec, now_ms: i64) -> Generator {
        let names: Vec<(String, f64)> = match &spec.symbols {
            Some(symbols) => symbols
                .value
                .iter()
                .map(|s| {
                    let price = DEFAULT_SYMBOLS
                        .iter()
                        .find(|(n, _)| n == s)
                        .map_or(100.0, |(_, p)| *p);
                    (s.clone(), price)
                })
                .collect(),
            None => DEFAULT_SYMBOLS
                .iter()
                .map(|(n, p)| (n.to_string(), *p))
                .collect(),
        };
        let symbols = names
            .into_iter()
            .map(|(name, price)| Symbol {
                kraken: kraken_pair(&name),
                binance: name,
                price: (price * 1e8) as u64,
            })
            .collect();
        Generator {
            rng: SplitMix64::new(spec.seed),
            symbols,
            format: spec.format,
            start_ms: spec.start_time_ms.unwrap_or(now_ms),
            events_per_sec: spec
                .events_per_sec
                .as_ref()
                .or(spec.rate_per_sec.as_ref())
                .map_or(1000, |r| r.value.max(1)),
            next: 0,
            count: spec.count,
        }
    }

    /// How many trades are left, if the source is bounded.
    pub fn remaining(&self) -> Option<u64> {
        self.count.map(|c| c.saturating_sub(self.next))
    }

    /// Appends up to `max` trades to `batch`; returns how many.
    pub fn fill(&mut self, batch: &mut Batch, max: usize) -> usize {
        let n = self
            .remaining()
            .map_or(max, |left| left.min(max as u64) as usize);
        for _ in 0..n {
            self.push_trade(batch);
        }
        n
    }

    fn push_trade(&mut self, batch: &mut Batch) {
        let offset = self.next;
        self.next += 1;
        let r = self.rng.next_u64();
        let symbol_index = (r % self.symbols.len() as u64) as usize;
        let step = self.rng.next_f64() - 0.5; // a move of at most ±0.05%
        let qty_draw = self.rng.next_f64();
        let flags = self.rng.next_u64();
        let symbol = &mut self.symbols[symbol_index];
        let moved = symbol.price as f64 * (1.0 + step * 0.001);
        symbol.price = (moved as u64).max(1);
        let price = symbol.price;
        // Quantities spread over three orders of magnitude, rounded to 1e-5.
        let qty = ((10f64.powf(qty_draw * 3.0 - 3.0) * 1e5).round() as u64).max(1) * 1000;
        let trade_time =
            self.start_ms + (offset as i128 * 1000 / self.events_per_sec as i128) as i64;
        let buyer_is_maker = flags & 1 == 1;
        let trade_id = FIRST_TRADE_ID + offset;
        let key = symbol.binance.as_bytes();
        match self.format {
            TradeFormat::Binance => {
                let event_time = trade_time + (flags >> 1 & 7) as i64;
                batch.push_with(Some(key), trade_time, offset as i64, &[], |buf| {
                    let mut n = itoa::Buffer::new();
                    buf.extend_from_slice(b"{\"e\":\"trade\",\"E\":");
                    buf.extend_from_slice(n.format(event_time).as_bytes());
                    buf.extend_from_slice(b",\"s\":\"");
                    buf.extend_from_slice(symbol.binance.as_bytes());
                    buf.extend_from_slice(b"\",\"t\":");
                    buf.extend_from_slice(n.format(trade_id).as_bytes());
                    buf.extend_from_slice(b",\"p\":\"");
                    write_fixed(buf, price);
                    buf.extend_from_slice(b"\",\"q\":\"");
                    write_fixed(buf, qty);
                    buf.extend_from_slice(b"\",\"T\":");
                    buf.extend_from_slice(n.format(trade_time).as_bytes());
                    buf.extend_from_slice(if buyer_is_maker {
                        b",\"m\":true,\"M\":true}"
                    } else {
                        b",\"m\":false,\"M\":true}"
                    });
                });
            }
            TradeFormat::Kraken => {
                let timestamp = chrono::DateTime::from_timestamp_millis(trade_time)
                    .unwrap_or_default()
                    .format("%Y-%m-%dT%H:%M:%S%.6fZ")
                    .to_string();
                let ord_type: &[u8] = if flags >> 4 & 3 == 0 {
                    b"limit"
                } else {
                    b"market"
                };
                batch.push_with(Some(key), trade_time, offset as i64, &[], |buf| {
                    let mut n = itoa::Buffer::new();
                    buf.extend_from_slice(
                        b"{\"channel\":\"trade\",\"type\":\"update\",\"data\":[{\"symbol\":\"",
                    );
                    buf.extend_from_slice(symbol.kraken.as_bytes());
                    buf.extend_from_slice(if buyer_is_maker {
                        b"\",\"side\":\"sell\",\"price\":"
                    } else {
                        b"\",\"side\":\"buy\",\"price\":"
                    });
                    write_decimal(buf, price);
                    buf.extend_from_slice(b",\"qty\":");
                    write_decimal(buf, qty);
                    buf.extend_from_slice(b",\"ord_type\":\"");
                    buf.extend_from_slice(ord_type);
                    buf.extend_from_slice(b"\",\"trade_id\":");
                    buf.extend_from_slice(n.format(trade_id).as_bytes());
                    buf.extend_from_slice(b",\"timestamp\":\"");
                    buf.extend_from_slice(timestamp.as_bytes());
                    buf.extend_from_slice(b"\"}]}");
                });
            }
        }
    }
}

/// `BTCUSDT` → `BTC/USDT`, as Kraken writes pairs.
fn kraken_pair(symbol: &str) -> String {
    for quote in ["USDT", "USDC", "USD", "EUR", "BTC"] {
        if let Some(base) = symbol.strip_suffix(quote)
            && !base.is_empty()
        {
            return format!("{base}/{quote}");
        }
    }
    symbol.to_string()
}

/// Writes `units` (of 1e-8) with eight decimals, as Binance does: `65000.12000000`.
fn write_fixed(buf: &mut Vec<u8>, units: u64) {
    let mut n = itoa::Buffer::new();
    buf.extend_from_slice(n.format(units / 100_000_000).as_bytes());
    buf.push(b'.');
    let frac = n.format(units % 100_000_000);
    buf.extend(std::iter::repeat_n(b'0', 8 - frac.len()));
    buf.extend_from_slice(frac.as_bytes());
}

/// Writes `units` (of 1e-8) as a JSON number without trailing zeros: `65000.12`.
fn write_decimal(buf: &mut Vec<u8>, units: u64) {
    let start = buf.len();
    write_fixed(buf, units);
    while buf.last() == Some(&b'0') {
        buf.pop();
    }
    if buf.last() == Some(&b'.') {
        buf.pop();
    }
    debug_assert!(buf.len() > start);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::spec::{GeneratorSpec, unspanned};

    fn spec(format: TradeFormat) -> GeneratorSpec {
        GeneratorSpec {
            count: Some(5),
            rate_per_sec: None,
            seed: 7,
            format,
            symbols: None,
            start_time_ms: Some(1_700_000_000_000),
            events_per_sec: None,
            batch_size: unspanned(1024),
        }
    }

    fn generate(format: TradeFormat) -> Batch {
        let mut g = Generator::new(&spec(format), 0);
        let mut b = Batch::with_capacity(TOPIC, 0, 8, 0);
        assert_eq!(g.fill(&mut b, 100), 5);
        assert_eq!(g.fill(&mut b, 100), 0);
        b
    }

    #[test]
    fn binance_trades_are_json_with_the_right_fields() {
        let b = generate(TradeFormat::Binance);
        for i in 0..5 {
            let v: serde_json::Value = serde_json::from_slice(b.value(i)).unwrap();
            assert_eq!(v["e"], "trade");
            assert_eq!(v["t"], FIRST_TRADE_ID + i as u64);
            assert_eq!(v["T"], 1_700_000_000_000_i64 + i as i64);
            assert_eq!(b.records[i].timestamp_ms, 1_700_000_000_000 + i as i64);
            assert_eq!(b.key(i).unwrap(), v["s"].as_str().unwrap().as_bytes());
            let price: f64 = v["p"].as_str().unwrap().parse().unwrap();
            assert!(price > 0.0);
            assert_eq!(v["p"].as_str().unwrap().split('.').nth(1).unwrap().len(), 8);
        }
    }

    #[test]
    fn kraken_trades_nest_one_trade() {
        let b = generate(TradeFormat::Kraken);
        let v: serde_json::Value = serde_json::from_slice(b.value(0)).unwrap();
        assert_eq!(v["channel"], "trade");
        let t = &v["data"][0];
        assert!(t["symbol"].as_str().unwrap().contains('/'));
        assert!(t["price"].as_f64().unwrap() > 0.0);
        assert_eq!(t["trade_id"], FIRST_TRADE_ID);
        assert_eq!(t["timestamp"], "2023-11-14T22:13:20.000000Z");
    }

    #[test]
    fn the_same_seed_gives_the_same_trades() {
        let (a, b) = (
            generate(TradeFormat::Binance),
            generate(TradeFormat::Binance),
        );
        assert_eq!(a.data, b.data);
        let mut other = spec(TradeFormat::Binance);
        other.seed = 8;
        let mut g = Generator::new(&other, 0);
        let mut c = Batch::with_capacity(TOPIC, 0, 8, 0);
        g.fill(&mut c, 5);
        assert_ne!(a.data, c.data);
    }

    #[test]
    fn fixed_point_formatting() {
        let mut buf = Vec::new();
        write_fixed(&mut buf, 6_500_012_000_000);
        assert_eq!(buf, b"65000.12000000");
        buf.clear();
        write_decimal(&mut buf, 6_500_012_000_000);
        assert_eq!(buf, b"65000.12");
        buf.clear();
        write_decimal(&mut buf, 15_000_000);
        assert_eq!(buf, b"0.15");
        buf.clear();
        write_decimal(&mut buf, 100_000_000);
        assert_eq!(buf, b"1");
    }
}
