//! `enrich`: adds where a record came from and when it was ingested to a JSON object.
//!
//! Each value must be a JSON object; the stage adds `kafka_topic`, `kafka_partition`,
//! `kafka_offset`, `kafka_timestamp` (the record's event time, ms since the epoch) and
//! `ingestion_timestamp` (the batch's processing time, ms since the epoch). Anything that is not
//! a JSON object is a per-record error and goes to the dead-letter output.
//!
//! The common case, an object that has none of those fields yet, is handled without building a
//! tree: one validating pass over the value (see [`scan`]; no allocation), then the fields are
//! written before its closing brace. An object that already has one of the fields keeps its
//! other members' text as it was, and gets the fields written after them, so the output never
//! holds a key twice and every number and string keeps its exact text.

mod scan;

use weir_sdk::{Context, Emitter, Record, Stage};

/// The fields the stage adds, in the order it writes them.
pub const FIELDS: [&str; 5] = [
    "kafka_topic",
    "kafka_partition",
    "kafka_offset",
    "kafka_timestamp",
    "ingestion_timestamp",
];

/// The stage. It keeps the JSON form of the last topic seen, since every record of a batch
/// shares it.
#[derive(Debug, Default)]
pub struct Enrich {
    topic: String,
    topic_json: Vec<u8>,
}

impl Stage for Enrich {
    fn init(config: &str) -> Result<Self, String> {
        let settings: serde_json::Map<String, serde_json::Value> = serde_json::from_str(config)
            .map_err(|e| format!("config is not a JSON object: {e}"))?;
        if let Some(name) = settings.keys().next() {
            return Err(format!("enrich takes no settings, found `{name}`"));
        }
        Ok(Enrich::default())
    }

    fn process(&mut self, cx: &Context, record: &Record, out: &mut Emitter) -> Result<(), String> {
        if self.topic != cx.topic || self.topic_json.is_empty() {
            self.topic = cx.topic.to_owned();
            self.topic_json = serde_json::to_vec(cx.topic).expect("a string always serialises");
        }
        let shape = scan::scan_object(record.value, &FIELDS)
            .map_err(|e| format!("value is not a JSON object: {e}"))?;
        if shape.has_reserved_key {
            let kept = scan::members_without(record.value, &FIELDS)
                .expect("the value was scanned already");
            out.emit_with(0, record.key, record.timestamp_ms, record.headers, |buf| {
                buf.push(b'{');
                for member in &kept {
                    buf.extend_from_slice(&record.value[member.clone()]);
                    buf.push(b',');
                }
                self.write_fields(cx, record, buf);
            });
            return Ok(());
        }
        let body = trim_end(record.value);
        let inside = &body[..body.len() - 1];
        out.emit_with(0, record.key, record.timestamp_ms, record.headers, |buf| {
            buf.extend_from_slice(inside);
            buf.extend_from_slice(if shape.is_empty { b"" } else { b"," });
            self.write_fields(cx, record, buf);
        });
        Ok(())
    }
}

impl Enrich {
    /// Writes the five fields and the closing brace.
    fn write_fields(&self, cx: &Context, record: &Record, buf: &mut Vec<u8>) {
        let mut n = itoa::Buffer::new();
        buf.extend_from_slice(b"\"kafka_topic\":");
        buf.extend_from_slice(&self.topic_json);
        buf.extend_from_slice(b",\"kafka_partition\":");
        buf.extend_from_slice(n.format(cx.partition).as_bytes());
        buf.extend_from_slice(b",\"kafka_offset\":");
        buf.extend_from_slice(n.format(record.offset).as_bytes());
        buf.extend_from_slice(b",\"kafka_timestamp\":");
        buf.extend_from_slice(n.format(record.timestamp_ms).as_bytes());
        buf.extend_from_slice(b",\"ingestion_timestamp\":");
        buf.extend_from_slice(n.format(cx.processing_time_ms).as_bytes());
        buf.push(b'}');
    }
}

weir_sdk::export_stage!(Enrich);

fn trim_end(value: &[u8]) -> &[u8] {
    let end = value
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .map_or(0, |i| i + 1);
    &value[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn run(value: &[u8]) -> Result<Value, String> {
        let mut stage = Enrich::init("{}").unwrap();
        let cx = Context {
            topic: "trades",
            partition: 3,
            processing_time_ms: 1_700_000_000_500,
        };
        let record = Record {
            key: Some(b"k"),
            value,
            timestamp_ms: 1_700_000_000_000,
            offset: 42,
            headers: &[],
        };
        let mut out = Emitter::default();
        stage.process(&cx, &record, &mut out)?;
        assert_eq!(out.records.len(), 1);
        assert_eq!(out.key(0), Some(&b"k"[..]));
        Ok(serde_json::from_slice(out.value(0)).expect("output is JSON"))
    }

    #[test]
    fn adds_the_metadata_fields() {
        let out = run(br#"{"s":"BTCUSDT","p":"1.5"}"#).unwrap();
        assert_eq!(
            out,
            json!({"s":"BTCUSDT","p":"1.5","kafka_topic":"trades","kafka_partition":3,"kafka_offset":42,
                   "kafka_timestamp":1_700_000_000_000_i64,"ingestion_timestamp":1_700_000_000_500_i64})
        );
    }

    #[test]
    fn handles_empty_objects_and_trailing_whitespace() {
        let out = run(b" {} \n").unwrap();
        assert_eq!(out["kafka_offset"], 42);
        assert_eq!(out.as_object().unwrap().len(), 5);
    }

    #[test]
    fn replaces_fields_that_are_already_there() {
        let out = run(br#"{"kafka_offset":"old","a":{"kafka_topic":1}}"#).unwrap();
        assert_eq!(out["kafka_offset"], 42);
        assert_eq!(out["a"], json!({"kafka_topic":1}));
        assert_eq!(out.as_object().unwrap().len(), 6);
    }

    #[test]
    fn keeps_the_exact_text_of_what_it_does_not_replace() {
        let mut stage = Enrich::init("{}").unwrap();
        let mut out = Emitter::default();
        let value = br#" {"kafka_topic" : 1, "n": 123456789012345678901234567890, "d":1.10 ,"s":"\ud83d\ude00"} "#;
        let record = Record {
            value,
            offset: 7,
            ..Record::default()
        };
        let cx = Context {
            topic: "t",
            ..Context::default()
        };
        stage.process(&cx, &record, &mut out).unwrap();
        assert_eq!(
            std::str::from_utf8(out.value(0)).unwrap(),
            r#"{"n": 123456789012345678901234567890,"d":1.10,"s":"\ud83d\ude00","kafka_topic":"t","kafka_partition":0,"kafka_offset":7,"kafka_timestamp":0,"ingestion_timestamp":0}"#
        );
    }

    #[test]
    fn escapes_the_topic() {
        let mut stage = Enrich::init("{}").unwrap();
        let cx = Context {
            topic: "a\"b",
            ..Context::default()
        };
        let mut out = Emitter::default();
        stage
            .process(
                &cx,
                &Record {
                    value: b"{}",
                    ..Record::default()
                },
                &mut out,
            )
            .unwrap();
        let v: Value = serde_json::from_slice(out.value(0)).unwrap();
        assert_eq!(v["kafka_topic"], "a\"b");
    }

    #[test]
    fn rejects_what_is_not_a_json_object() {
        for bad in [
            &b"not json"[..],
            b"[1,2]",
            b"42",
            b"{\"a\":1",
            b"{} {}",
            b"",
        ] {
            let err = run(bad).unwrap_err();
            assert!(err.starts_with("value is not a JSON object"), "{err}");
        }
    }

    #[test]
    fn rejects_settings() {
        assert_eq!(
            Enrich::init(r#"{"x":1}"#).unwrap_err(),
            "enrich takes no settings, found `x`"
        );
    }
}
