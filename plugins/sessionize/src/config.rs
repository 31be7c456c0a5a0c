//! The stage's settings and how a record becomes an event.

use std::borrow::Cow;

use serde::{Deserialize, de};
use serde_json::value::RawValue;
use weir_sdk::Record;

/// Parsed settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// A session ends after this long without an event of its key.
    pub gap_ms: i64,
    /// The field holding the session key; `None`: the record key.
    pub key_field: Option<String>,
    /// The field holding the event time in ms since the epoch; `None`: the record timestamp.
    pub time_field: Option<String>,
    /// The field whose values are counted per session; `None`: no counts.
    pub type_field: Option<String>,
    /// The field whose whole numbers are summed per session; `None`: no sum.
    pub amount_field: Option<String>,
}

/// The settings as written in the pipeline file. A field setting given as `null` turns the
/// field off (or, for the key and time, falls back to the record's own).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    /// How long without an event of its key ends a session: `30m`, `90s`, `2h`…
    #[serde(default = "gap")]
    gap: String,
    /// The field holding the session key (a string or a whole number); `null`: the record key.
    #[serde(default = "user_id")]
    key_field: Option<String>,
    /// The field holding the event time in whole ms since the epoch; `null`: the record
    /// timestamp.
    #[serde(default = "ts_ms")]
    time_field: Option<String>,
    /// The field whose values are counted per session; `null`: no counts.
    #[serde(default = "type_")]
    type_field: Option<String>,
    /// The field whose whole numbers are summed per session; `null`: no sum.
    #[serde(default = "amount_cents")]
    amount_field: Option<String>,
}

fn gap() -> String {
    "30m".into()
}
fn user_id() -> Option<String> {
    Some("user_id".into())
}
fn ts_ms() -> Option<String> {
    Some("ts_ms".into())
}
fn type_() -> Option<String> {
    Some("type".into())
}
fn amount_cents() -> Option<String> {
    Some("amount_cents".into())
}

impl Config {
    /// Reads the stage's `config:` JSON.
    pub fn parse(text: &str) -> Result<Config, String> {
        // serde would also read a struct from a JSON array.
        if !text.trim_start().starts_with('{') {
            return Err("bad sessionize config: not a JSON object".into());
        }
        let raw: Raw =
            serde_json::from_str(text).map_err(|e| format!("bad sessionize config: {e}"))?;
        for (name, field) in [
            ("key_field", &raw.key_field),
            ("time_field", &raw.time_field),
            ("type_field", &raw.type_field),
            ("amount_field", &raw.amount_field),
        ] {
            if field.as_deref() == Some("") {
                return Err(format!("{name} cannot be empty (null turns it off)"));
            }
        }
        Ok(Config {
            gap_ms: weir_sdk::duration_ms(&raw.gap).map_err(|e| format!("gap {e}"))?,
            key_field: raw.key_field,
            time_field: raw.time_field,
            type_field: raw.type_field,
            amount_field: raw.amount_field,
        })
    }

    /// Reads the event in a record: one pass to check the value is a JSON object and keep its
    /// text, one over its members converting only the four the stage needs.
    pub fn event<'a>(&self, record: &Record<'a>) -> Result<Event<'a>, String> {
        let not_an_object = |e: &dyn std::fmt::Display| format!("value is not a JSON object: {e}");
        let text = std::str::from_utf8(record.value).map_err(|e| not_an_object(&e))?;
        let raw: &'a RawValue = serde_json::from_str(text).map_err(|e| not_an_object(&e))?;
        let mut de = serde_json::Deserializer::from_str(raw.get());
        let fields = de::Deserializer::deserialize_map(
            &mut de,
            FieldsVisitor {
                config: self,
                fields: Fields::default(),
            },
        )
        .map_err(|e| not_an_object(&e))?;

        let key = match &self.key_field {
            None => {
                let key = record.key.ok_or("the record has no key")?;
                let key = std::str::from_utf8(key).map_err(|_| "the record key is not UTF-8")?;
                if key.is_empty() {
                    return Err("the record key is empty".into());
                }
                Cow::Borrowed(key)
            }
            Some(name) => match fields.key.map(|raw| raw.get()) {
                None | Some("null") => return Err(format!("the event has no `{name}` field")),
                Some(text) if text.starts_with('"') => {
                    let key: Cow<'a, str> = serde_json::from_str::<Text>(text)
                        .map_err(|e| format!("`{name}` is not a string: {e}"))?
                        .0;
                    if key.is_empty() {
                        return Err(format!("`{name}` is empty"));
                    }
                    key
                }
                Some(text) if text.parse::<i64>().is_ok() => Cow::Borrowed(text),
                Some(text) => {
                    return Err(format!(
                        "`{name}` is not a string or a whole number: {text}"
                    ));
                }
            },
        };
        let time_ms = match &self.time_field {
            None => record.timestamp_ms,
            Some(name) => match fields.time.map(|raw| raw.get()) {
                None | Some("null") => return Err(format!("the event has no `{name}` field")),
                Some(text) => text
                    .parse::<i64>()
                    .map_err(|_| format!("`{name}` is not a time in ms since the epoch: {text}"))?,
            },
        };
        let kind = match (&self.type_field, fields.kind.map(|raw| raw.get())) {
            (None, _) | (_, None | Some("null")) => None,
            (Some(name), Some(text)) => Some(
                serde_json::from_str::<Text>(text)
                    .map_err(|_| format!("`{name}` is not a string: {text}"))?
                    .0,
            ),
        };
        let amount = match (&self.amount_field, fields.amount.map(|raw| raw.get())) {
            (None, _) | (_, None | Some("null")) => 0,
            (Some(name), Some(text)) => text
                .parse::<i64>()
                .map_err(|_| format!("`{name}` is not a whole number: {text}"))?,
        };
        Ok(Event {
            key,
            time_ms,
            kind,
            amount,
            raw,
        })
    }
}

/// One event, read from a record; it borrows the record's bytes.
#[derive(Clone, Debug)]
pub struct Event<'a> {
    /// The session key.
    pub key: Cow<'a, str>,
    /// Event time, ms since the epoch.
    pub time_ms: i64,
    /// The value of the type field, if the event has one.
    pub kind: Option<Cow<'a, str>>,
    /// The value of the amount field, 0 if the event has none.
    pub amount: i64,
    /// The whole event, as it came.
    pub raw: &'a RawValue,
}

/// The members the stage reads, as their JSON text.
#[derive(Default)]
struct Fields<'a> {
    key: Option<&'a RawValue>,
    time: Option<&'a RawValue>,
    kind: Option<&'a RawValue>,
    amount: Option<&'a RawValue>,
}

struct FieldsVisitor<'c, 'a> {
    config: &'c Config,
    fields: Fields<'a>,
}

impl<'a> de::Visitor<'a> for FieldsVisitor<'_, 'a> {
    type Value = Fields<'a>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: de::MapAccess<'a>>(mut self, mut map: A) -> Result<Fields<'a>, A::Error> {
        let c = self.config;
        let is = |field: &Option<String>, name: &str| field.as_deref() == Some(name);
        while let Some(Text(name)) = map.next_key::<Text>()? {
            let slots = [
                (is(&c.key_field, &name), &mut self.fields.key),
                (is(&c.time_field, &name), &mut self.fields.time),
                (is(&c.type_field, &name), &mut self.fields.kind),
                (is(&c.amount_field, &name), &mut self.fields.amount),
            ];
            if slots.iter().any(|(wanted, _)| *wanted) {
                let value: &'a RawValue = map.next_value()?;
                for (wanted, slot) in slots {
                    if wanted {
                        *slot = Some(value);
                    }
                }
            } else {
                map.next_value::<de::IgnoredAny>()?;
            }
        }
        Ok(self.fields)
    }
}

/// A JSON string, borrowed from the input unless it holds escapes.
struct Text<'a>(Cow<'a, str>);

impl<'a> Deserialize<'a> for Text<'a> {
    fn deserialize<D: de::Deserializer<'a>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'a> de::Visitor<'a> for Visitor {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'a str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(Visitor)
    }
}
