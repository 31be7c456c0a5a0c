//! User events (page views, clicks, cart additions, purchases of a pool of users, keyed by user)
//! and host metrics (gauges of a fleet of hosts that drift as random walks, keyed by host).

use super::{At, SplitMix64, put_int, write_decimal};
use crate::record::Batch;

/// Users in the pool.
const USERS: u64 = 10_000;
/// Products that pages and purchases refer to.
const PRODUCTS: u64 = 500;
/// Devices, drawn uniformly.
const DEVICES: &[&str] = &["web", "ios", "android"];
/// Event types with their weight out of 100: most traffic is browsing.
const EVENT_TYPES: &[(&str, u64)] = &[
    ("page_view", 60),
    ("click", 25),
    ("add_to_cart", 10),
    ("purchase", 5),
];

/// The user-event sequence. It keeps no state: every event is drawn on its own.
#[derive(Default)]
pub struct UserEvents;

impl UserEvents {
    /// Appends the event at `at`:
    /// `{"event_id":…,"user_id":"u000042","session_id":"u000042-…","type":"purchase","page":"/products/17","device":"ios","ts_ms":…,"amount_cents":1999}`
    /// (`amount_cents` only on purchases).
    pub fn push(&mut self, rng: &mut SplitMix64, at: &At, batch: &mut Batch) {
        let user = rng.below(USERS);
        let product = rng.below(PRODUCTS);
        let device = DEVICES[rng.below(DEVICES.len() as u64) as usize];
        let mut draw = rng.below(100);
        let kind = EVENT_TYPES
            .iter()
            .find(|(_, weight)| {
                let hit = draw < *weight;
                draw = draw.saturating_sub(*weight);
                hit
            })
            .map_or("page_view", |(kind, _)| kind);
        let amount = 199 + rng.below(50_000);
        let key = format!("u{user:06}");
        // A session is the user's half hour.
        let session = at.time_ms.div_euclid(1_800_000);
        batch.push_with(
            Some(key.as_bytes()),
            at.time_ms,
            at.offset as i64,
            &[],
            |buf| {
                buf.extend_from_slice(b"{\"event_id\":");
                put_int(buf, at.offset);
                buf.extend_from_slice(b",\"user_id\":\"");
                buf.extend_from_slice(key.as_bytes());
                buf.extend_from_slice(b"\",\"session_id\":\"");
                buf.extend_from_slice(key.as_bytes());
                buf.push(b'-');
                put_int(buf, session);
                buf.extend_from_slice(b"\",\"type\":\"");
                buf.extend_from_slice(kind.as_bytes());
                buf.extend_from_slice(b"\",\"page\":\"/products/");
                put_int(buf, product);
                buf.extend_from_slice(b"\",\"device\":\"");
                buf.extend_from_slice(device.as_bytes());
                buf.extend_from_slice(b"\",\"ts_ms\":");
                put_int(buf, at.time_ms);
                if kind == "purchase" {
                    buf.extend_from_slice(b",\"amount_cents\":");
                    put_int(buf, amount);
                }
                buf.push(b'}');
            },
        );
    }
}

/// Hosts in the fleet and the metrics each reports.
const HOSTS: usize = 20;
const METRICS: &[(&str, f64, f64)] = &[
    // name, starting value, largest value
    ("cpu_percent", 35.0, 100.0),
    ("mem_percent", 60.0, 100.0),
    ("disk_read_mbps", 40.0, 2000.0),
    ("requests_per_sec", 800.0, 50_000.0),
];
const REGIONS: &[&str] = &["eu-west-1", "us-east-1", "ap-southeast-2"];

/// The metric sequence: the current value of every (host, metric), in units of 1e-8.
pub struct Metrics {
    values: Vec<u64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            values: (0..HOSTS)
                .flat_map(|_| METRICS.iter().map(|(_, start, _)| (start * 1e8) as u64))
                .collect(),
        }
    }
}

impl Metrics {
    /// Appends the reading at `at`:
    /// `{"host":"web-07","metric":"cpu_percent","value":37.25,"ts_ms":…,"tags":{"region":"eu-west-1","service":"web"}}`.
    pub fn push(&mut self, rng: &mut SplitMix64, at: &At, batch: &mut Batch) {
        let host = rng.below(HOSTS as u64) as usize;
        let metric = rng.below(METRICS.len() as u64) as usize;
        let step = rng.next_f64() - 0.5; // ±2.5% per reading
        let (name, _, max) = METRICS[metric];
        let slot = &mut self.values[host * METRICS.len() + metric];
        let moved = (*slot as f64 * (1.0 + step * 0.05)).clamp(1e6, max * 1e8);
        // Two decimals are enough for a gauge.
        *slot = (moved as u64) / 1_000_000 * 1_000_000;
        let value = *slot;
        let service = if host.is_multiple_of(4) { "db" } else { "web" };
        let key = format!("{service}-{host:02}");
        batch.push_with(
            Some(key.as_bytes()),
            at.time_ms,
            at.offset as i64,
            &[],
            |buf| {
                buf.extend_from_slice(b"{\"host\":\"");
                buf.extend_from_slice(key.as_bytes());
                buf.extend_from_slice(b"\",\"metric\":\"");
                buf.extend_from_slice(name.as_bytes());
                buf.extend_from_slice(b"\",\"value\":");
                write_decimal(buf, value);
                buf.extend_from_slice(b",\"ts_ms\":");
                put_int(buf, at.time_ms);
                buf.extend_from_slice(b",\"tags\":{\"region\":\"");
                buf.extend_from_slice(REGIONS[host % REGIONS.len()].as_bytes());
                buf.extend_from_slice(b"\",\"service\":\"");
                buf.extend_from_slice(service.as_bytes());
                buf.extend_from_slice(b"\"}}");
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::pipeline::spec::GeneratorFormat;
    use crate::sources::generator::tests::generate;

    #[test]
    fn user_events_mix_types_and_only_purchases_have_amounts() {
        let b = generate(GeneratorFormat::UserEvents, 2000, 1);
        let mut purchases = 0;
        for i in 0..b.len() {
            let v: serde_json::Value = serde_json::from_slice(b.value(i)).unwrap();
            assert_eq!(b.key(i).unwrap(), v["user_id"].as_str().unwrap().as_bytes());
            let purchase = v["type"] == "purchase";
            assert_eq!(purchase, v.get("amount_cents").is_some());
            purchases += purchase as usize;
        }
        // 5% of 2000, give or take.
        assert!((50..=150).contains(&purchases), "{purchases}");
    }

    #[test]
    fn metrics_stay_in_range() {
        let b = generate(GeneratorFormat::Metrics, 5000, 3);
        for i in 0..b.len() {
            let v: serde_json::Value = serde_json::from_slice(b.value(i)).unwrap();
            let value = v["value"].as_f64().unwrap();
            assert!(value >= 0.01, "{v}");
            if v["metric"].as_str().unwrap().ends_with("percent") {
                assert!(value <= 100.0, "{v}");
            }
            assert_eq!(b.key(i).unwrap(), v["host"].as_str().unwrap().as_bytes());
        }
    }
}
