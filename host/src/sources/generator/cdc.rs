//! Change events of a `users` table in a Debezium-like JSON envelope: inserts (`op: "c"`),
//! updates (`"u"`, with the row before and after) and deletes (`"d"`, with the row before),
//! keyed by `{"id":N}` so every change of a row lands on the same partition, in order.
//!
//! The generator keeps the live rows, so the stream is consistent: an update or delete always
//! names a row that exists, with the values it last had; replaying the stream in order gives the
//! table's current state.

use super::{At, SplitMix64, put_int};
use crate::record::Batch;

const FIRST_NAMES: &[&str] = &[
    "Ada", "Alan", "Grace", "Edsger", "Barbara", "Donald", "Frances", "John", "Margaret", "Ken",
    "Radia", "Leslie", "Shafi", "Niklaus", "Hedy", "Tim",
];
const LAST_NAMES: &[&str] = &[
    "Lovelace",
    "Turing",
    "Hopper",
    "Dijkstra",
    "Liskov",
    "Knuth",
    "Allen",
    "Backus",
    "Hamilton",
    "Thompson",
    "Perlman",
    "Lamport",
    "Goldwasser",
    "Wirth",
    "Lamarr",
    "Berners-Lee",
];
const TIERS: &[&str] = &["free", "silver", "gold", "platinum"];

/// One live row.
#[derive(Clone)]
struct Row {
    id: u64,
    first: &'static str,
    last: &'static str,
    tier: &'static str,
    balance_cents: i64,
    updated_at_ms: i64,
}

/// The table's live rows and the next id to insert.
#[derive(Default)]
pub struct Users {
    rows: Vec<Row>,
    next_id: u64,
}

/// Below this many live rows, every change is an insert.
const MIN_ROWS: usize = 16;

impl Users {
    /// Appends the change at `at`:
    /// `{"before":{…}|null,"after":{…}|null,"source":{"connector":"weir-gen","db":"shop","schema":"public","table":"users","lsn":…,"ts_ms":…},"op":"c|u|d","ts_ms":…}`.
    pub fn push(&mut self, rng: &mut SplitMix64, at: &At, batch: &mut Batch) {
        let draw = rng.below(100);
        let pick = rng.next_u64();
        let (op, before, after) = if self.rows.len() < MIN_ROWS || draw < 35 {
            self.next_id += 1;
            let row = Row {
                id: self.next_id,
                first: FIRST_NAMES[(pick % FIRST_NAMES.len() as u64) as usize],
                last: LAST_NAMES[(pick >> 8) as usize % LAST_NAMES.len()],
                tier: TIERS[0],
                balance_cents: 0,
                updated_at_ms: at.time_ms,
            };
            self.rows.push(row.clone());
            (b'c', None, Some(row))
        } else if draw < 85 {
            let len = self.rows.len() as u64;
            let row = &mut self.rows[(pick % len) as usize];
            let before = row.clone();
            row.balance_cents += (rng.below(20_000) as i64) - 5_000;
            if rng.below(4) == 0 {
                row.tier = TIERS[rng.below(TIERS.len() as u64) as usize];
            }
            row.updated_at_ms = at.time_ms;
            (b'u', Some(before), Some(row.clone()))
        } else {
            let before = self
                .rows
                .swap_remove((pick % self.rows.len() as u64) as usize);
            (b'd', Some(before), None)
        };
        let id = before.as_ref().or(after.as_ref()).map_or(0, |r| r.id);
        let mut key = b"{\"id\":".to_vec();
        put_int(&mut key, id);
        key.push(b'}');
        batch.push_with(Some(&key), at.time_ms, at.offset as i64, &[], |buf| {
            buf.extend_from_slice(b"{\"before\":");
            write_row(buf, before.as_ref());
            buf.extend_from_slice(b",\"after\":");
            write_row(buf, after.as_ref());
            buf.extend_from_slice(b",\"source\":{\"connector\":\"weir-gen\",\"db\":\"shop\",\"schema\":\"public\",\"table\":\"users\",\"lsn\":");
            put_int(buf, at.offset + 1);
            buf.extend_from_slice(b",\"ts_ms\":");
            put_int(buf, at.time_ms);
            buf.extend_from_slice(b"},\"op\":\"");
            buf.push(op);
            buf.extend_from_slice(b"\",\"ts_ms\":");
            put_int(buf, at.time_ms);
            buf.push(b'}');
        });
    }
}

fn write_row(buf: &mut Vec<u8>, row: Option<&Row>) {
    let Some(row) = row else {
        buf.extend_from_slice(b"null");
        return;
    };
    buf.extend_from_slice(b"{\"id\":");
    put_int(buf, row.id);
    buf.extend_from_slice(b",\"name\":\"");
    buf.extend_from_slice(row.first.as_bytes());
    buf.push(b' ');
    buf.extend_from_slice(row.last.as_bytes());
    buf.extend_from_slice(b"\",\"email\":\"");
    buf.extend(row.first.bytes().map(|b| b.to_ascii_lowercase()));
    buf.push(b'.');
    buf.extend(row.last.bytes().map(|b| b.to_ascii_lowercase()));
    put_int(buf, row.id);
    buf.extend_from_slice(b"@example.com\",\"tier\":\"");
    buf.extend_from_slice(row.tier.as_bytes());
    buf.extend_from_slice(b"\",\"balance_cents\":");
    put_int(buf, row.balance_cents);
    buf.extend_from_slice(b",\"updated_at_ms\":");
    put_int(buf, row.updated_at_ms);
    buf.push(b'}');
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::Value;

    use crate::pipeline::spec::GeneratorFormat;
    use crate::sources::generator::tests::generate;

    /// Replays the stream: every update and delete names a live row with its last values.
    #[test]
    fn changes_replay_into_a_consistent_table() {
        let b = generate(GeneratorFormat::Cdc, 5000, 11);
        let mut table: BTreeMap<u64, Value> = BTreeMap::new();
        let mut ops = BTreeMap::new();
        for i in 0..b.len() {
            let v: Value = serde_json::from_slice(b.value(i)).unwrap();
            let key: Value = serde_json::from_slice(b.key(i).unwrap()).unwrap();
            let op = v["op"].as_str().unwrap().to_string();
            *ops.entry(op.clone()).or_insert(0) += 1;
            let row = if op == "d" { &v["before"] } else { &v["after"] };
            let id = row["id"].as_u64().unwrap();
            assert_eq!(key["id"], id);
            match op.as_str() {
                "c" => {
                    assert!(v["before"].is_null());
                    assert!(table.insert(id, v["after"].clone()).is_none());
                }
                "u" => assert_eq!(
                    table.insert(id, v["after"].clone()),
                    Some(v["before"].clone())
                ),
                "d" => {
                    assert!(v["after"].is_null());
                    assert_eq!(table.remove(&id), Some(v["before"].clone()));
                }
                other => panic!("unknown op {other}"),
            }
        }
        assert!(
            ops["c"] > 1000 && ops["u"] > 1000 && ops["d"] > 300,
            "{ops:?}"
        );
    }
}
