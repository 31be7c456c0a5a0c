//! Avro values of the Kafka source, decoded into JSON for the stages.
//!
//! Two encodings arrive on topics: a bare Avro datum written with a schema both sides know (the
//! `.avsc` file), and the Confluent wire format — a zero byte, the schema's 4-byte big-endian id
//! in a schema registry, then the datum. With a registry, the writer's schema is fetched by id
//! (once per id) and the `.avsc`, if given, is the reader's schema that values are resolved to
//! (Avro's schema evolution rules: added fields take their defaults, and so on).
//!
//! JSON follows the schema: records become objects with their fields in schema order, unions
//! their chosen branch's value, enums their symbol; `bytes` and `fixed` become strings whose
//! characters are the byte values (Avro's own JSON encoding), logical types their underlying
//! number (`timestamp-millis` as milliseconds, `date` as days).

use std::{collections::HashMap, path::Path, time::Duration};

use apache_avro::{Schema, types::Value};

use super::SourceError;
use crate::pipeline::spec::AvroSpec;

/// Why a value could not be decoded.
pub enum DecodeError {
    /// This record is bad (not Avro, unknown schema id): it goes to the dead letters.
    Record(String),
    /// The registry cannot be reached: nothing can be decoded now, the source stops.
    Registry(String),
}

/// Decodes values of one source.
pub struct AvroDecoder {
    /// The `.avsc` schema: the writer's without a registry, the reader's with one.
    schema: Option<Schema>,
    /// Values carry the Confluent header.
    confluent: bool,
    /// Registry base URL, without a trailing slash.
    registry: Option<String>,
    /// Writer schemas fetched from the registry, by id.
    writers: HashMap<u32, Schema>,
    /// Ids the registry said it does not know (asked once, not once per record).
    unknown: std::collections::HashSet<u32>,
    /// HTTP client for the registry.
    http: Option<reqwest::blocking::Client>,
}

/// Reads and parses an `.avsc` file; the message says what is wrong.
pub fn read_schema(path: &Path) -> Result<Schema, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read Avro schema {}: {e}", path.display()))?;
    Schema::parse_str(&text)
        .map_err(|e| format!("{} is not a valid Avro schema: {e}", path.display()))
}

impl AvroDecoder {
    /// A decoder for `spec`; a relative schema path starts from `dir`.
    pub fn open(spec: &AvroSpec, dir: &Path) -> Result<AvroDecoder, SourceError> {
        let schema = match &spec.schema {
            Some(path) => Some(read_schema(&dir.join(&path.value)).map_err(SourceError::Kafka)?),
            None => None,
        };
        let registry = spec
            .registry_url
            .as_ref()
            .map(|url| url.value.trim_end_matches('/').to_string());
        let http = match registry {
            Some(_) => Some(
                reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .map_err(|e| SourceError::Kafka(format!("schema registry client: {e}")))?,
            ),
            None => None,
        };
        Ok(AvroDecoder {
            schema,
            confluent: registry.is_some() || spec.confluent_wire_format,
            registry,
            writers: HashMap::new(),
            unknown: Default::default(),
            http,
        })
    }

    /// Decodes one value and appends it to `out` as JSON.
    pub fn decode(&mut self, value: &[u8], out: &mut Vec<u8>) -> Result<(), DecodeError> {
        let record = DecodeError::Record;
        let (id, mut datum) = if self.confluent {
            let [0, a, b, c, d, datum @ ..] = value else {
                return Err(record(
                    "not in the Confluent wire format (a zero byte and a 4-byte schema id first)"
                        .into(),
                ));
            };
            (Some(u32::from_be_bytes([*a, *b, *c, *d])), datum)
        } else {
            (None, value)
        };
        // With a registry the id names the writer schema, and the .avsc is the reader's;
        // without one the .avsc is the writer's, whatever the id.
        let (writer, reader) = match id.filter(|_| self.registry.is_some()) {
            Some(id) => {
                self.fetch(id)?;
                (self.writers.get(&id), self.schema.as_ref())
            }
            None => (self.schema.as_ref(), None),
        };
        let writer = writer.expect("a writer schema: from the registry or the .avsc (checked)");
        let decoded = apache_avro::from_avro_datum(writer, &mut datum, reader)
            .map_err(|e| record(format!("not Avro of the schema: {e}")))?;
        if !datum.is_empty() {
            return Err(record(format!(
                "{} bytes left after the Avro value",
                datum.len()
            )));
        }
        write_json(&decoded, out).map_err(record)
    }

    /// Fetches the writer schema with registry id `id` unless it is known already.
    fn fetch(&mut self, id: u32) -> Result<(), DecodeError> {
        let (Some(registry), Some(http)) = (&self.registry, &self.http) else {
            return Ok(());
        };
        if self.writers.contains_key(&id) {
            return Ok(());
        }
        let not_found = || DecodeError::Record(format!("schema id {id} is not in the registry"));
        if self.unknown.contains(&id) {
            return Err(not_found());
        }
        let url = format!("{registry}/schemas/ids/{id}");
        let response = http
            .get(&url)
            .send()
            .map_err(|e| DecodeError::Registry(format!("GET {url}: {e}")))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            self.unknown.insert(id);
            return Err(not_found());
        }
        if !status.is_success() {
            return Err(DecodeError::Registry(format!("GET {url}: {status}")));
        }
        #[derive(serde::Deserialize)]
        struct Found {
            schema: String,
        }
        let found: Found = response
            .json()
            .map_err(|e| DecodeError::Registry(format!("GET {url}: {e}")))?;
        let schema = Schema::parse_str(&found.schema).map_err(|e| {
            DecodeError::Record(format!("schema id {id} is not a valid Avro schema: {e}"))
        })?;
        tracing::info!(id, "fetched a writer schema from the registry");
        self.writers.insert(id, schema);
        Ok(())
    }
}

/// Writes `value` as JSON.
fn write_json(value: &Value, out: &mut Vec<u8>) -> Result<(), String> {
    let number = |out: &mut Vec<u8>, n: f64| match serde_json::Number::from_f64(n) {
        Some(n) => {
            out.extend_from_slice(n.to_string().as_bytes());
            Ok(())
        }
        None => Err(format!("{n} has no JSON form")),
    };
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Boolean(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Int(n) | Value::Date(n) | Value::TimeMillis(n) => put(out, *n),
        Value::Long(n)
        | Value::TimeMicros(n)
        | Value::TimestampMillis(n)
        | Value::TimestampMicros(n)
        | Value::TimestampNanos(n)
        | Value::LocalTimestampMillis(n)
        | Value::LocalTimestampMicros(n)
        | Value::LocalTimestampNanos(n) => put(out, *n),
        Value::Float(f) => number(out, f64::from(*f))?,
        Value::Double(f) => number(out, *f)?,
        Value::String(s) | Value::Enum(_, s) => write_str(s, out),
        Value::Bytes(b) | Value::Fixed(_, b) => write_bytes(b, out),
        Value::Decimal(d) => {
            let bytes: Vec<u8> = d.try_into().map_err(|e| format!("decimal: {e}"))?;
            write_bytes(&bytes, out);
        }
        Value::BigDecimal(d) => write_str(&d.to_string(), out),
        Value::Uuid(u) => write_str(&u.as_hyphenated().to_string(), out),
        Value::Duration(d) => write_bytes(&<[u8; 12]>::from(*d), out),
        Value::Union(_, inner) => write_json(inner, out)?,
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json(item, out)?;
            }
            out.push(b']');
        }
        Value::Map(entries) => {
            // A map has no order; sorting keeps the output the same from run to run.
            let mut entries: Vec<_> = entries.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            write_object(entries.into_iter(), out)?;
        }
        Value::Record(fields) => write_object(fields.iter().map(|(k, v)| (k, v)), out)?,
    }
    Ok(())
}

fn write_object<'a>(
    fields: impl Iterator<Item = (&'a String, &'a Value)>,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    out.push(b'{');
    for (i, (name, value)) in fields.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(name, out);
        out.push(b':');
        write_json(value, out)?;
    }
    out.push(b'}');
    Ok(())
}

fn put(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn write_str(s: &str, out: &mut Vec<u8>) {
    // serde_json's escaping, without building a Value.
    serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
}

/// Bytes as Avro's JSON encoding writes them: a string of the code points 0–255.
fn write_bytes(bytes: &[u8], out: &mut Vec<u8>) {
    let s: String = bytes.iter().map(|&b| char::from(b)).collect();
    write_str(&s, out);
}

#[cfg(test)]
mod tests {
    use apache_avro::{to_avro_datum, types::Record};

    use super::*;

    const TRADE: &str = r#"{"type":"record","name":"Trade","fields":[
        {"name":"s","type":"string"},
        {"name":"t","type":"long"},
        {"name":"p","type":"string"},
        {"name":"side","type":{"type":"enum","name":"Side","symbols":["BUY","SELL"]}},
        {"name":"venue","type":["null","string"],"default":null},
        {"name":"raw","type":"bytes"},
        {"name":"T","type":{"type":"long","logicalType":"timestamp-millis"}}]}"#;

    fn encoded() -> Vec<u8> {
        let schema = Schema::parse_str(TRADE).unwrap();
        let mut r = Record::new(&schema).unwrap();
        r.put("s", "BTCUSDT");
        r.put("t", 7i64);
        r.put("p", "65000.1");
        r.put("side", Value::Enum(1, "SELL".into()));
        r.put(
            "venue",
            Value::Union(1, Box::new(Value::String("x\"y".into()))),
        );
        r.put("raw", Value::Bytes(vec![0, 200]));
        r.put("T", Value::TimestampMillis(1_700_000_000_000));
        to_avro_datum(&schema, r).unwrap()
    }

    fn decoder(confluent: bool) -> AvroDecoder {
        AvroDecoder {
            schema: Some(Schema::parse_str(TRADE).unwrap()),
            confluent,
            registry: None,
            writers: HashMap::new(),
            unknown: Default::default(),
            http: None,
        }
    }

    fn decode(d: &mut AvroDecoder, value: &[u8]) -> Result<String, String> {
        let mut out = Vec::new();
        match d.decode(value, &mut out) {
            Ok(()) => Ok(String::from_utf8(out).unwrap()),
            Err(DecodeError::Record(e) | DecodeError::Registry(e)) => Err(e),
        }
    }

    #[test]
    fn a_record_becomes_json_in_schema_order() {
        let json = decode(&mut decoder(false), &encoded()).unwrap();
        assert_eq!(
            json,
            r#"{"s":"BTCUSDT","t":7,"p":"65000.1","side":"SELL","venue":"x\"y","raw":"\u0000È","T":1700000000000}"#
        );
    }

    #[test]
    fn the_confluent_header_is_required_when_configured() {
        let mut framed = vec![0, 0, 0, 0, 5];
        framed.extend(encoded());
        assert!(decode(&mut decoder(true), &framed).is_ok());
        let bare = decode(&mut decoder(true), &encoded()).unwrap_err();
        assert!(bare.contains("Confluent wire format"), "{bare}");
    }

    #[test]
    fn garbage_and_trailing_bytes_are_record_errors() {
        let mut d = decoder(false);
        assert!(decode(&mut d, b"{\"n\": 1}").is_err());
        let mut longer = encoded();
        longer.push(1);
        let e = decode(&mut d, &longer).unwrap_err();
        assert!(e.contains("1 bytes left"), "{e}");
    }
}
