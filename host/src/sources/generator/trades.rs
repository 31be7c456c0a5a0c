//! Crypto trades shaped like Binance `trade` stream messages or Kraken v2 `trade` channel
//! messages. Trade `i` has trade id `1_000_000 + i`, a symbol drawn from the list, and a price
//! that follows a random walk per symbol (kept in units of 1e-8).

use super::{At, SplitMix64, put_int, write_decimal, write_fixed};
use crate::record::Batch;

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

struct Symbol {
    binance: String,
    kraken: String,
    /// Current price in units of 1e-8.
    price: u64,
}

/// The trade sequence's state.
pub struct Trades {
    symbols: Vec<Symbol>,
    /// Kraken's message shape instead of Binance's.
    kraken: bool,
}

impl Trades {
    /// Trades of `symbols` (Binance spelling; a default set of six when `None`).
    pub fn new(symbols: Option<&[String]>, kraken: bool) -> Trades {
        let names: Vec<(String, f64)> = match symbols {
            Some(symbols) => symbols
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
        Trades { symbols, kraken }
    }

    /// Appends the trade at `at`, keyed by its symbol.
    pub fn push(&mut self, rng: &mut SplitMix64, at: &At, batch: &mut Batch) {
        let symbol_index = rng.below(self.symbols.len() as u64) as usize;
        let step = rng.next_f64() - 0.5; // a move of at most ±0.05%
        let qty_draw = rng.next_f64();
        let flags = rng.next_u64();
        let symbol = &mut self.symbols[symbol_index];
        let moved = symbol.price as f64 * (1.0 + step * 0.001);
        symbol.price = (moved as u64).max(1);
        let price = symbol.price;
        // Quantities spread over three orders of magnitude, rounded to 1e-5.
        let qty = ((10f64.powf(qty_draw * 3.0 - 3.0) * 1e5).round() as u64).max(1) * 1000;
        let trade_time = at.time_ms;
        let buyer_is_maker = flags & 1 == 1;
        let trade_id = FIRST_TRADE_ID + at.offset;
        let key = symbol.binance.as_bytes();
        let offset = at.offset as i64;
        if !self.kraken {
            let event_time = trade_time + (flags >> 1 & 7) as i64;
            batch.push_with(Some(key), trade_time, offset, &[], |buf| {
                buf.extend_from_slice(b"{\"e\":\"trade\",\"E\":");
                put_int(buf, event_time);
                buf.extend_from_slice(b",\"s\":\"");
                buf.extend_from_slice(symbol.binance.as_bytes());
                buf.extend_from_slice(b"\",\"t\":");
                put_int(buf, trade_id);
                buf.extend_from_slice(b",\"p\":\"");
                write_fixed(buf, price);
                buf.extend_from_slice(b"\",\"q\":\"");
                write_fixed(buf, qty);
                buf.extend_from_slice(b"\",\"T\":");
                put_int(buf, trade_time);
                buf.extend_from_slice(if buyer_is_maker {
                    b",\"m\":true,\"M\":true}"
                } else {
                    b",\"m\":false,\"M\":true}"
                });
            });
            return;
        }
        let timestamp = chrono::DateTime::from_timestamp_millis(trade_time)
            .unwrap_or_default()
            .format("%Y-%m-%dT%H:%M:%S%.6fZ")
            .to_string();
        let ord_type: &[u8] = if flags >> 4 & 3 == 0 {
            b"limit"
        } else {
            b"market"
        };
        batch.push_with(Some(key), trade_time, offset, &[], |buf| {
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
            put_int(buf, trade_id);
            buf.extend_from_slice(b",\"timestamp\":\"");
            buf.extend_from_slice(timestamp.as_bytes());
            buf.extend_from_slice(b"\"}]}");
        });
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::spec::GeneratorFormat;
    use crate::sources::generator::tests::generate;

    #[test]
    fn binance_trades_have_the_right_fields() {
        let b = generate(GeneratorFormat::Binance, 5, 7);
        for i in 0..5 {
            let v: serde_json::Value = serde_json::from_slice(b.value(i)).unwrap();
            assert_eq!(v["e"], "trade");
            assert_eq!(v["t"], FIRST_TRADE_ID + i as u64);
            assert_eq!(v["T"], 1_700_000_000_000_i64 + i as i64);
            assert_eq!(b.key(i).unwrap(), v["s"].as_str().unwrap().as_bytes());
            let price: f64 = v["p"].as_str().unwrap().parse().unwrap();
            assert!(price > 0.0);
            assert_eq!(v["p"].as_str().unwrap().split('.').nth(1).unwrap().len(), 8);
        }
    }

    #[test]
    fn kraken_trades_nest_one_trade() {
        let b = generate(GeneratorFormat::Kraken, 5, 7);
        let v: serde_json::Value = serde_json::from_slice(b.value(0)).unwrap();
        assert_eq!(v["channel"], "trade");
        let t = &v["data"][0];
        assert!(t["symbol"].as_str().unwrap().contains('/'));
        assert!(t["price"].as_f64().unwrap() > 0.0);
        assert_eq!(t["trade_id"], FIRST_TRADE_ID);
        assert_eq!(t["timestamp"], "2023-11-14T22:13:20.000000Z");
    }
}
