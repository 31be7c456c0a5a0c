//! The stage's settings and how a record becomes a trade.

use std::borrow::Cow;

use serde::Deserialize;
use weir_sdk::Record;

use crate::{Trade, json};

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

impl Config {
    /// Reads the stage's `config:` JSON.
    pub fn parse(text: &str) -> Result<Config, String> {
        let raw: Raw = serde_json::from_str(text).map_err(|e| format!("bad ohlc config: {e}"))?;
        let mut windows = Vec::new();
        for name in raw.windows.unwrap_or_else(|| vec!["1m".into()]) {
            let size_ms = weir_sdk::duration_ms(&name)?;
            windows.push(Window {
                name,
                size_ms,
                slide_ms: size_ms,
            });
        }
        for s in raw.sliding {
            let (size_ms, slide_ms) = (
                weir_sdk::duration_ms(&s.size)?,
                weir_sdk::duration_ms(&s.slide)?,
            );
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

    /// Reads the trade in a record's value: one pass over the JSON ([`crate::json`]),
    /// converting only the fields it needs and borrowing the symbol from the record.
    pub fn trade<'r>(&self, record: &Record<'r>) -> Result<Trade<'r>, String> {
        let [symbol, price, quantity, time] = json::fields(
            record.value,
            [
                Some(self.symbol_field.as_str()),
                Some(self.price_field.as_str()),
                Some(self.quantity_field.as_str()),
                self.time_field.as_deref(),
            ],
        )
        .map_err(|e| format!("value is not JSON: {e}"))?;
        let missing = |name: &str| format!("the trade has no `{name}` field");
        let symbol = match symbol {
            Some(raw) => match raw.text() {
                Some(s) if !s.is_empty() && !s.contains('/') => match s {
                    Cow::Borrowed(_) => match raw {
                        // Borrow from the record itself, not from `raw`.
                        json::Raw::Str(bytes, false) => {
                            Cow::Borrowed(std::str::from_utf8(bytes).expect("text() checked it"))
                        }
                        _ => unreachable!("only an unescaped string borrows"),
                    },
                    Cow::Owned(s) => Cow::Owned(s),
                },
                _ => Err(format!(
                    "`{}` is not a symbol (a non-empty string without `/`): {}",
                    self.symbol_field,
                    raw.describe()
                ))?,
            },
            None => return Err(missing(&self.symbol_field)),
        };
        let number = |v: Option<json::Raw>, name: &str| {
            let n = match v {
                Some(json::Raw::Num(n)) => parse::<f64>(n),
                Some(raw @ json::Raw::Str(..)) => raw.text().and_then(|t| t.parse().ok()),
                Some(_) => None,
                None => return Err(missing(name)),
            };
            match n {
                Some(n) if f64::is_finite(n) => Ok(n),
                _ => Err(format!(
                    "`{name}` is not a number: {}",
                    v.expect("present").describe()
                )),
            }
        };
        let time_ms = match &self.time_field {
            None => record.timestamp_ms,
            Some(name) => match time {
                Some(json::Raw::Num(n)) => parse::<i64>(n)
                    .ok_or_else(|| format!("`{name}` is not a time in ms since the epoch"))?,
                Some(_) => Err(format!("`{name}` is not a time in ms since the epoch"))?,
                None => return Err(missing(name)),
            },
        };
        Ok(Trade {
            symbol,
            price: number(price, &self.price_field)?,
            quantity: number(quantity, &self.quantity_field)?,
            time_ms,
        })
    }
}

/// A number as written in JSON (ASCII, so always UTF-8), read as `T`.
fn parse<T: std::str::FromStr>(n: &[u8]) -> Option<T> {
    std::str::from_utf8(n).ok()?.parse().ok()
}
