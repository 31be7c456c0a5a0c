//! The `generator` source, and the data behind `weir gen`: synthetic records that look like what
//! the example pipelines read, deterministic for a given seed and start time.
//!
//! Record `i` has offset `i` and event time `start + i * 1000 / events_per_sec`. What it holds
//! depends on the format: crypto trades shaped like Binance or Kraken messages ([`trades`]),
//! user events and host metrics ([`events`]), or change events of a `users` table in a
//! Debezium-like envelope ([`cdc`]). Values are written with integer formatting straight into
//! the batch, so generating is cheap next to what the stages do.

pub mod cdc;
pub mod events;
pub mod trades;

use crate::{
    pipeline::spec::{DisorderSpec, GeneratorFormat, GeneratorSpec},
    record::Batch,
};

/// The topic name generated records carry.
pub const TOPIC: &str = "generator";

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

    /// A uniform integer in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// What is generated, with the state each kind of data keeps between records.
enum Shape {
    /// Trades of a set of symbols.
    Trades(trades::Trades),
    /// Clicks, views and purchases of a pool of users.
    UserEvents(events::UserEvents),
    /// Gauges of a fleet of hosts.
    Metrics(events::Metrics),
    /// Inserts, updates and deletes of a `users` table.
    Cdc(cdc::Users),
}

/// Where the next record is, handed to each shape's writer.
pub struct At {
    /// Offset of the record (its sequence number from 0).
    pub offset: u64,
    /// Event time, in milliseconds since the Unix epoch.
    pub time_ms: i64,
}

/// The generator's state.
pub struct Generator {
    rng: SplitMix64,
    shape: Shape,
    start_ms: i64,
    events_per_sec: u64,
    /// Offset of the next record.
    next: u64,
    /// Records to generate in all, if bounded.
    count: Option<u64>,
    /// Event times out of order, and late records.
    disorder: DisorderSpec,
    /// The random sequence of the disorder, apart from the records' own.
    disorder_rng: SplitMix64,
}

impl Generator {
    /// A generator for the given settings; `now_ms` is used when no start time is set.
    pub fn new(spec: &GeneratorSpec, now_ms: i64) -> Generator {
        let symbols = spec.symbols.as_ref().map(|s| s.value.as_slice());
        let shape = match spec.format {
            GeneratorFormat::Binance => Shape::Trades(trades::Trades::new(symbols, false)),
            GeneratorFormat::Kraken => Shape::Trades(trades::Trades::new(symbols, true)),
            GeneratorFormat::UserEvents => Shape::UserEvents(events::UserEvents),
            GeneratorFormat::Metrics => Shape::Metrics(events::Metrics::default()),
            GeneratorFormat::Cdc => Shape::Cdc(cdc::Users::default()),
        };
        Generator {
            rng: SplitMix64::new(spec.seed),
            shape,
            start_ms: spec.start_time_ms.unwrap_or(now_ms),
            events_per_sec: spec
                .events_per_sec
                .as_ref()
                .or(spec.rate_per_sec.as_ref())
                .map_or(1000, |r| r.value.max(1)),
            next: 0,
            count: spec.count,
            disorder: spec.disorder.unwrap_or_default(),
            disorder_rng: SplitMix64::new(spec.seed ^ 0x6469_736f_7264_6572),
        }
    }

    /// Event time of record `offset`: its place in time, moved back by the disorder.
    fn event_time(&mut self, offset: u64) -> i64 {
        let on_time = self.start_ms + (offset as i128 * 1000 / self.events_per_sec as i128) as i64;
        let d = self.disorder;
        let mut back = 0;
        if d.max_ms > 0 {
            back += self.disorder_rng.below(d.max_ms) as i64;
        }
        if d.late_every > 0
            && offset % d.late_every == d.late_every - 1
            && on_time - self.start_ms > d.late_by_ms as i64
        {
            back += d.late_by_ms as i64;
        }
        on_time - back
    }

    /// Records generated so far: the offset of the next one.
    pub fn produced(&self) -> u64 {
        self.next
    }

    /// Generates and drops the next `n` records, so the sequence goes on where a previous run
    /// stopped (the records depend on all before them).
    pub fn skip(&mut self, n: u64) {
        let mut scratch = Batch::with_capacity(TOPIC, 0, 4096, 4096 * 200);
        let mut left = n;
        while left > 0 {
            let chunk = left.min(4096) as usize;
            scratch.clear();
            if self.fill(&mut scratch, chunk) == 0 {
                break;
            }
            left -= chunk as u64;
        }
    }

    /// How many records are left, if the source is bounded.
    pub fn remaining(&self) -> Option<u64> {
        self.count.map(|c| c.saturating_sub(self.next))
    }

    /// Appends up to `max` records to `batch`; returns how many.
    pub fn fill(&mut self, batch: &mut Batch, max: usize) -> usize {
        let n = self
            .remaining()
            .map_or(max, |left| left.min(max as u64) as usize);
        for _ in 0..n {
            let offset = self.next;
            self.next += 1;
            let at = At {
                offset,
                time_ms: self.event_time(offset),
            };
            let rng = &mut self.rng;
            match &mut self.shape {
                Shape::Trades(t) => t.push(rng, &at, batch),
                Shape::UserEvents(u) => u.push(rng, &at, batch),
                Shape::Metrics(m) => m.push(rng, &at, batch),
                Shape::Cdc(c) => c.push(rng, &at, batch),
            }
        }
        n
    }
}

/// Writes `units` (of 1e-8) with eight decimals, as Binance does: `65000.12000000`.
pub fn write_fixed(buf: &mut Vec<u8>, units: u64) {
    let mut n = itoa::Buffer::new();
    buf.extend_from_slice(n.format(units / 100_000_000).as_bytes());
    buf.push(b'.');
    let frac = n.format(units % 100_000_000);
    buf.extend(std::iter::repeat_n(b'0', 8 - frac.len()));
    buf.extend_from_slice(frac.as_bytes());
}

/// Writes `units` (of 1e-8) as a JSON number without trailing zeros: `65000.12`.
pub fn write_decimal(buf: &mut Vec<u8>, units: u64) {
    write_fixed(buf, units);
    while buf.last() == Some(&b'0') {
        buf.pop();
    }
    if buf.last() == Some(&b'.') {
        buf.pop();
    }
}

/// Appends the decimal digits of `n` to `buf`.
pub(crate) fn put_int(buf: &mut Vec<u8>, n: impl itoa::Integer) {
    buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::pipeline::spec::unspanned;

    /// `count` records of `format` from `seed`, starting at 2023-11-14T22:13:20Z, one per ms.
    pub(crate) fn generate(format: GeneratorFormat, count: u64, seed: u64) -> Batch {
        let spec = GeneratorSpec {
            count: Some(count),
            rate_per_sec: None,
            seed,
            format,
            symbols: None,
            start_time_ms: Some(1_700_000_000_000),
            events_per_sec: None,
            batch_size: unspanned(1024),
            disorder: None,
        };
        let mut g = Generator::new(&spec, 0);
        let mut b = Batch::with_capacity(TOPIC, 0, 8, 0);
        assert_eq!(g.fill(&mut b, count as usize + 10), count as usize);
        assert_eq!(g.fill(&mut b, 100), 0);
        b
    }

    #[test]
    fn every_format_is_json_deterministic_and_seeded() {
        for format in [
            GeneratorFormat::Binance,
            GeneratorFormat::Kraken,
            GeneratorFormat::UserEvents,
            GeneratorFormat::Metrics,
            GeneratorFormat::Cdc,
        ] {
            let (a, b) = (generate(format, 500, 7), generate(format, 500, 7));
            assert_eq!(a.data, b.data, "{format:?}");
            assert_ne!(a.data, generate(format, 500, 8).data, "{format:?}");
            for i in 0..a.len() {
                serde_json::from_slice::<serde_json::Value>(a.value(i))
                    .unwrap_or_else(|e| panic!("{format:?} record {i}: {e}"));
                assert!(a.key(i).is_some_and(|k| !k.is_empty()));
                assert_eq!(a.records[i].offset, i as i64);
                assert_eq!(a.records[i].timestamp_ms, 1_700_000_000_000 + i as i64);
            }
        }
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
