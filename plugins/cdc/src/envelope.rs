//! Reading one change event: a Debezium-style envelope, `{"op", "before", "after", "source",
//! "ts_ms"}`, bare or wrapped as the `payload` of Kafka Connect's JSON converter.

use std::borrow::Cow;

use serde::{Deserialize, de};
use serde_json::{error::Category, value::RawValue};

/// What happened to the row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `c`: a row was inserted.
    Create,
    /// `u`: a row was updated.
    Update,
    /// `d`: a row was deleted.
    Delete,
    /// `r`: a row was read by a snapshot.
    Read,
}

impl Op {
    /// The letter the envelope uses.
    pub fn letter(self) -> &'static str {
        match self {
            Op::Create => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Read => "r",
        }
    }
}

/// One change, borrowing the record's bytes.
#[derive(Debug)]
pub struct Change<'a> {
    /// What happened.
    pub op: Op,
    /// The primary key as a JSON object of the key columns, in the configured order, with their
    /// values as they came: `{"id":7}`. Taken from `after`, or from `before` for a delete.
    pub key: String,
    /// For an update whose `before` row has another key: that key (the row moved).
    pub old_key: Option<String>,
    /// The row the current state takes: `after`, or `before` for a delete.
    pub row: &'a RawValue,
    /// The row before the change, as it came.
    pub before: Option<&'a RawValue>,
    /// The row after the change, as it came.
    pub after: Option<&'a RawValue>,
    /// Where the change was read.
    pub source: Source<'a>,
    /// When the change was captured, ms since the epoch (the envelope's `ts_ms`).
    pub ts_ms: Option<i64>,
}

/// The parts of the envelope's `source` block the audit trail keeps.
#[derive(Debug, Default, Deserialize)]
pub struct Source<'a> {
    /// Database name.
    #[serde(borrow, default)]
    pub db: Option<Cow<'a, str>>,
    /// Schema name.
    #[serde(borrow, default)]
    pub schema: Option<Cow<'a, str>>,
    /// Table name.
    #[serde(borrow, default)]
    pub table: Option<Cow<'a, str>>,
    /// Position in the database's log, as it came (a number for Postgres).
    #[serde(borrow, default)]
    pub lsn: Option<&'a RawValue>,
    /// When the change was made in the database, ms since the epoch.
    #[serde(default)]
    pub ts_ms: Option<i64>,
}

/// The envelope's members; the rest (`transaction`, Kafka Connect's `schema`) is skipped.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    op: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    before: Option<&'a RawValue>,
    #[serde(borrow, default)]
    after: Option<&'a RawValue>,
    #[serde(borrow, default)]
    source: Option<&'a RawValue>,
    #[serde(default)]
    ts_ms: Option<i64>,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
}

impl<'a> Change<'a> {
    /// Reads the change in a record's value; `key_columns` name the primary key.
    pub fn parse(value: &'a [u8], key_columns: &[String]) -> Result<Change<'a>, String> {
        if value.trim_ascii_start().first() != Some(&b'{') {
            return Err("value is not a JSON object".into());
        }
        let mut envelope: Envelope<'a> =
            serde_json::from_slice(value).map_err(|e| match e.classify() {
                Category::Data => format!("bad envelope: {e}"),
                Category::Io | Category::Syntax | Category::Eof => {
                    format!("value is not JSON: {e}")
                }
            })?;
        if envelope.op.is_none()
            && let Some(payload) = envelope.payload
        {
            if !payload.get().starts_with('{') {
                return Err("`payload` is not a JSON object".into());
            }
            envelope = serde_json::from_str(payload.get())
                .map_err(|e| format!("bad envelope: `payload`: {e}"))?;
        }
        let op = match envelope.op.as_deref() {
            None => return Err("the envelope has no `op`".into()),
            Some("c") => Op::Create,
            Some("u") => Op::Update,
            Some("d") => Op::Delete,
            Some("r") => Op::Read,
            Some(other) => return Err(format!("unknown op `{other}` (expected c, u, d or r)")),
        };
        let row = |raw: Option<&'a RawValue>, name: &str| match raw {
            Some(raw) if !raw.get().starts_with('{') => {
                Err(format!("`{name}` is not a JSON object or null"))
            }
            _ => Ok(raw),
        };
        let before = row(envelope.before, "before")?;
        let after = row(envelope.after, "after")?;
        let (row, key, old_key) = if op == Op::Delete {
            let before = before.ok_or("op `d` has no `before` row")?;
            (before, key_of(before, "before", key_columns)?, None)
        } else {
            let after = after.ok_or_else(|| format!("op `{}` has no `after` row", op.letter()))?;
            let key = key_of(after, "after", key_columns)?;
            // A row whose key changed: the old key's row is gone. (Debezium itself sends a
            // delete and a create instead; other producers may not.)
            let old_key = before
                .filter(|_| op == Op::Update)
                .and_then(|before| key_of(before, "before", key_columns).ok())
                .filter(|old| *old != key);
            (after, key, old_key)
        };
        let source = match envelope.source {
            None => Source::default(),
            Some(raw) => serde_json::from_str(raw.get())
                .map_err(|e| format!("`source` is not a JSON object of the expected types: {e}"))?,
        };
        Ok(Change {
            op,
            key,
            old_key,
            row,
            before,
            after,
            source,
            ts_ms: envelope.ts_ms,
        })
    }
}

/// The primary key of `row` as a JSON object: `{"id":7}`.
fn key_of(row: &RawValue, which: &str, columns: &[String]) -> Result<String, String> {
    let mut values: Vec<Option<&RawValue>> = vec![None; columns.len()];
    let mut de = serde_json::Deserializer::from_str(row.get());
    de::Deserializer::deserialize_map(
        &mut de,
        Columns {
            names: columns,
            values: &mut values,
        },
    )
    .map_err(|e| format!("the `{which}` row does not read: {e}"))?;
    let mut key = String::from("{");
    for (name, value) in columns.iter().zip(values) {
        let value = match value.map(RawValue::get) {
            None => return Err(format!("the `{which}` row has no key column `{name}`")),
            Some("null") => {
                return Err(format!("key column `{name}` is null in the `{which}` row"));
            }
            Some(value) => value,
        };
        if key.len() > 1 {
            key.push(',');
        }
        key.push_str(&serde_json::to_string(name).expect("a string always serialises"));
        key.push(':');
        key.push_str(value);
    }
    key.push('}');
    Ok(key)
}

/// Picks the key columns' values out of a row, in one pass.
struct Columns<'c, 'v, 'a> {
    names: &'c [String],
    values: &'v mut [Option<&'a RawValue>],
}

impl<'a> de::Visitor<'a> for Columns<'_, '_, 'a> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: de::MapAccess<'a>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(name) = map.next_key::<Cow<'a, str>>()? {
            match self.names.iter().position(|n| *n == name) {
                Some(i) => self.values[i] = Some(map.next_value()?),
                None => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}
