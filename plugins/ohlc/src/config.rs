//! The stage's settings and how a record becomes a trade.

use serde::Deserialize;
use serde_json::Value;
use weir_sdk::Record;

use crate::Trade;

/// One kind of window: tumbling when `slide_ms == size_ms`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    /// The name bars carry: `1m` for a tumbling window, `5m/1m` for a sliding one.
    pub name: String,
    /// Length.
    pub size_ms: i64,
    /// Distance between two windows' starts.
    pub slide_ms: i64,
}

impl Window {
    /// The ends of the windows that hold event time `t`, latest first: windows start at
    /// multiples of the slide and hold `[start, start + size)`.
    pub fn ends_covering(&self, t: i64) -> impl Iterator<Item = i64> + use<> {
        let last_start = t.div_euclid(self.slide_ms) * self.slide_ms;
        let (size, slide) = (self.size_ms, self.slide_ms);
        (0..size / slide)
            .map(move |i| last_start - i * slide + size)
            .filter(move |end| end - size <= t && t < *end)
    }
}

/// Parsed settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Every window kind, tumbling ones first.
    pub windows: Vec<Window>,
    /// Bars carry the mean of their kind's last N closes.
    pub moving_average: Option<usize>,
    symbol_field: String,
    price_field: String,
    quantity_field: String,
    time_field: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    windows: Option<Vec<String>>,
    #[serde(default)]
    sliding: Vec<Sliding>,
    moving_average: Option<usize>,
    #[serde(default = "symbol")]
    symbol_field: String,
    #[serde(default = "price")]
    price_field: String,
    #[serde(default = "quantity")]
    quantity_field: String,
    time_field: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Sliding {
    size: String,
    slide: String,
}

fn symbol() -> String {
    "s".into()
}
fn price() -> String {
    "p".into()
}
fn quantity() -> String {
    "q".into()
}

/// `500ms`, `30s`, `1m`, `5m`, `1h`, `1d` → milliseconds.
pub fn duration_ms(text: &str) -> Result<i64, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{text}`: a duration needs a unit (ms, s, m, h or d)"))?;
    let (number, unit) = text.split_at(split);
    let number: i64 = number
        .parse()
        .map_err(|_| format!("`{text}`: expected a whole number and a unit, such as `5m`"))?;
    let scale = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "`{text}`: unknown unit `{unit}` (ms, s, m, h or d)"
            ));
        }
    };
    if number == 0 {
        return Err(format!("`{text}`: a window cannot be empty"));
    }
    Ok(number * scale)
}

impl Config {
    /// Reads the stage's `config:` JSON.
    pub fn parse(text: &str) -> Result<Config, String> {
        let raw: Raw = serde_json::from_str(text).map_err(|e| format!("bad ohlc config: {e}"))?;
        let mut windows = Vec::new();
        for name in raw.windows.unwrap_or_else(|| vec!["1m".into()]) {
            let size_ms = duration_ms(&name)?;
            windows.push(Window {
                name,
                size_ms,
                slide_ms: size_ms,
            });
        }
        for s in raw.sliding {
            let (size_ms, slide_ms) = (duration_ms(&s.size)?, duration_ms(&s.slide)?);
            if size_ms % slide_ms != 0 {
                return Err(format!(
                    "sliding window {}/{}: the size must be a multiple of the slide",
                    s.size, s.slide
                ));
            }
            windows.push(Window {
                name: format!("{}/{}", s.size, s.slide),
                size_ms,
                slide_ms,
            });
        }
        if windows.is_empty() {
            return Err("no windows: give `windows` or `sliding`".into());
        }
        if raw.moving_average == Some(0) {
            return Err("moving_average must be at least 1".into());
        }
        Ok(Config {
            windows,
            moving_average: raw.moving_average,
            symbol_field: raw.symbol_field,
            price_field: raw.price_field,
            quantity_field: raw.quantity_field,
            time_field: raw.time_field,
        })
    }

    /// Reads the trade in a record's value: one pass over the JSON, converting only the fields
    /// it needs (a trade is parsed for every record, so no tree is built).
    pub fn trade(&self, record: &Record) -> Result<Trade, String> {
        use serde::de::DeserializeSeed;
        let mut de = serde_json::Deserializer::from_slice(record.value);
        let fields = Fields::default();
        let fields = FieldsSeed {
            config: self,
            fields,
        }
        .deserialize(&mut de)
        .and_then(|f| de.end().map(|()| f))
        .map_err(|e| format!("value is not JSON: {e}"))?;
        let missing = |name: &str| format!("the trade has no `{name}` field");
        let symbol = match fields.symbol {
            Some(Ok(s)) if !s.is_empty() && !s.contains('/') => s,
            Some(Ok(s)) => Err(format!(
                "`{}` is not a symbol (a non-empty string without `/`): {s:?}",
                self.symbol_field
            ))?,
            Some(Err(other)) => Err(format!(
                "`{}` is not a symbol (a non-empty string without `/`): {other}",
                self.symbol_field
            ))?,
            None => return Err(missing(&self.symbol_field)),
        };
        let number = |v: Option<Result<f64, String>>, name: &str| match v {
            Some(Ok(n)) if n.is_finite() => Ok(n),
            Some(Ok(n)) => Err(format!("`{name}` is not a number: {n}")),
            Some(Err(v)) => Err(format!("`{name}` is not a number: {v}")),
            None => Err(missing(name)),
        };
        let time_ms = match &self.time_field {
            None => record.timestamp_ms,
            Some(name) => match fields.time {
                Some(Ok(t)) => t,
                Some(Err(_)) => Err(format!("`{name}` is not a time in ms since the epoch"))?,
                None => return Err(missing(name)),
            },
        };
        Ok(Trade {
            symbol,
            price: number(fields.price, &self.price_field)?,
            quantity: number(fields.quantity, &self.quantity_field)?,
            time_ms,
        })
    }
}

/// The fields a trade needs, each `Err` with the value's text when it has the wrong type.
#[derive(Default)]
struct Fields {
    symbol: Option<Result<String, String>>,
    price: Option<Result<f64, String>>,
    quantity: Option<Result<f64, String>>,
    time: Option<Result<i64, String>>,
}

struct FieldsSeed<'c> {
    config: &'c Config,
    fields: Fields,
}

impl<'de> serde::de::DeserializeSeed<'de> for FieldsSeed<'_> {
    type Value = Fields;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Fields, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for FieldsSeed<'_> {
    type Value = Fields;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(mut self, mut map: A) -> Result<Fields, A::Error> {
        let c = self.config;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let key = key.as_ref();
            if key == c.symbol_field {
                self.fields.symbol = Some(match map.next_value::<Value>()? {
                    Value::String(s) => Ok(s),
                    other => Err(other.to_string()),
                });
            } else if key == c.price_field || key == c.quantity_field {
                let n = match map.next_value::<Value>()? {
                    Value::Number(n) => n.as_f64().ok_or_else(|| n.to_string()),
                    Value::String(s) => s.parse::<f64>().map_err(|_| format!("{s:?}")),
                    other => Err(other.to_string()),
                };
                if key == c.price_field {
                    self.fields.price = Some(n);
                } else {
                    self.fields.quantity = Some(n);
                }
            } else if c.time_field.as_deref() == Some(key) {
                self.fields.time = Some(match map.next_value::<Value>()? {
                    Value::Number(n) => n.as_i64().ok_or_else(|| n.to_string()),
                    other => Err(other.to_string()),
                });
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(self.fields)
    }
}
