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

    /// Reads the trade in a record's value.
    pub fn trade(&self, record: &Record) -> Result<Trade, String> {
        let value: Value =
            serde_json::from_slice(record.value).map_err(|e| format!("value is not JSON: {e}"))?;
        let field = |name: &str| {
            value
                .get(name)
                .ok_or_else(|| format!("the trade has no `{name}` field"))
        };
        let number = |name: &str| -> Result<f64, String> {
            let v = field(name)?;
            let n = match v {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => s.parse::<f64>().ok(),
                _ => None,
            };
            n.filter(|n| n.is_finite())
                .ok_or_else(|| format!("`{name}` is not a number: {v}"))
        };
        let symbol = match field(&self.symbol_field)? {
            Value::String(s) if !s.is_empty() && !s.contains('/') => s.clone(),
            other => {
                return Err(format!(
                    "`{}` is not a symbol (a non-empty string without `/`): {other}",
                    self.symbol_field
                ));
            }
        };
        let time_ms = match &self.time_field {
            None => record.timestamp_ms,
            Some(name) => field(name)?
                .as_i64()
                .ok_or_else(|| format!("`{name}` is not a time in ms since the epoch"))?,
        };
        Ok(Trade {
            symbol,
            price: number(&self.price_field)?,
            quantity: number(&self.quantity_field)?,
            time_ms,
        })
    }
}
