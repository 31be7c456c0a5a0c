//! `cdc`: turns change events in a Debezium-style JSON envelope into the current state of the
//! table, for upsert sinks, and an append-only audit trail.
//!
//! Each input value is an envelope `{"op", "before", "after", "source", "ts_ms"}` (also accepted
//! as the `payload` of Kafka Connect's JSON converter, beside its `schema`), such as the
//! generator's `cdc` format. The primary key is read from the row's key columns (config `key`,
//! `["id"]` by default).
//!
//! - The default output is the **current state**: for `c`, `u` and `r` the `after` row with
//!   header `weir-op: upsert`, for `d` the `before` row with `weir-op: delete`; the record key
//!   is the primary key as a JSON object (`{"id":7}`). An update whose `before` row has another
//!   key first deletes that key. Upsert sinks read the header.
//! - The named output `audit` gets every change as one flat JSON row: the op, the key and the
//!   rows as JSON text, where it was read (`source_*`) and when.
//!
//! The stage keeps no state. An empty value (Debezium's tombstone after a delete, there for log
//! compaction) is skipped; anything else that is not a well-formed change is a per-record error.

mod envelope;

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use weir_sdk::{Context, Emitter, Header, Record, Stage};

pub use envelope::{Change, Op, Source};

/// The header that tells upsert sinks what to do with a record.
pub const OP_HEADER: &str = "weir-op";

/// The stage.
#[derive(Debug)]
pub struct Cdc {
    /// The primary key's columns, in the order the key object lists them.
    key_columns: Vec<String>,
    /// `weir-op: upsert` and `weir-op: delete`, built once.
    upsert: Header,
    delete: Header,
}

/// The settings as written in the pipeline file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The primary key's columns.
    #[serde(default = "id")]
    key: Vec<String>,
}

fn id() -> Vec<String> {
    vec!["id".into()]
}

/// The default output: the current state.
const CURRENT: u32 = 0;
/// Output `audit`.
const AUDIT: u32 = 1;

impl Stage for Cdc {
    fn init(config: &str) -> Result<Self, String> {
        // serde would also read a struct from a JSON array.
        if !config.trim_start().starts_with('{') {
            return Err("bad cdc config: not a JSON object".into());
        }
        let config: Config =
            serde_json::from_str(config).map_err(|e| format!("bad cdc config: {e}"))?;
        if config.key.is_empty() {
            return Err("key: name at least one primary key column".into());
        }
        for (i, column) in config.key.iter().enumerate() {
            if column.is_empty() {
                return Err("key: a column name cannot be empty".into());
            }
            if config.key[..i].contains(column) {
                return Err(format!("key: column `{column}` is named twice"));
            }
        }
        let header = |value: &str| Header {
            name: OP_HEADER.into(),
            value: value.into(),
        };
        Ok(Cdc {
            key_columns: config.key,
            upsert: header("upsert"),
            delete: header("delete"),
        })
    }

    fn outputs(&self) -> Vec<String> {
        vec!["audit".into()]
    }

    fn process(&mut self, _cx: &Context, record: &Record, out: &mut Emitter) -> Result<(), String> {
        if record.value.is_empty() {
            return Ok(());
        }
        let change = Change::parse(record.value, &self.key_columns)?;
        let t = record.timestamp_ms;
        let mut current = |key: &str, row: &RawValue, op: &Header| {
            let headers = headers(record.headers, Some(op));
            out.emit(
                CURRENT,
                Some(key.as_bytes()),
                row.get().as_bytes(),
                t,
                &headers,
            );
        };
        if let (Some(old_key), Some(before)) = (&change.old_key, change.before) {
            current(old_key, before, &self.delete);
        }
        let op = match change.op {
            Op::Delete => &self.delete,
            Op::Create | Op::Update | Op::Read => &self.upsert,
        };
        current(&change.key, change.row, op);
        let headers = headers(record.headers, None);
        out.emit_with(AUDIT, Some(change.key.as_bytes()), t, &headers, |buf| {
            write_audit_row(&change, buf)
        });
        Ok(())
    }
}

weir_sdk::export_stage!(Cdc);

/// The record's headers without an incoming `weir-op` (the stage's outputs say what they are
/// themselves), with `op` added if given. Borrowed in the common cases.
fn headers<'h>(incoming: &'h [Header], op: Option<&'h Header>) -> Cow<'h, [Header]> {
    let stale = incoming.iter().any(|h| h.name == OP_HEADER);
    match op {
        None if !stale => Cow::Borrowed(incoming),
        Some(op) if incoming.is_empty() => Cow::Borrowed(std::slice::from_ref(op)),
        _ => incoming
            .iter()
            .filter(|h| h.name != OP_HEADER)
            .chain(op)
            .cloned()
            .collect(),
    }
}

/// Writes the flat JSON row that output `audit` gets for a change.
pub fn write_audit_row(change: &Change, buf: &mut Vec<u8>) {
    #[derive(Serialize)]
    struct Row<'a> {
        op: &'a str,
        key: &'a str,
        before: Option<&'a str>,
        after: Option<&'a str>,
        source_db: Option<&'a str>,
        source_schema: Option<&'a str>,
        source_table: Option<&'a str>,
        source_lsn: Option<&'a RawValue>,
        source_ts_ms: Option<i64>,
        ts_ms: Option<i64>,
    }
    let row = Row {
        op: change.op.letter(),
        key: &change.key,
        before: change.before.map(RawValue::get),
        after: change.after.map(RawValue::get),
        source_db: change.source.db.as_deref(),
        source_schema: change.source.schema.as_deref(),
        source_table: change.source.table.as_deref(),
        source_lsn: change.source.lsn,
        source_ts_ms: change.source.ts_ms,
        ts_ms: change.ts_ms,
    };
    serde_json::to_writer(buf, &row).expect("an audit row always serialises");
}

#[cfg(test)]
mod tests;
