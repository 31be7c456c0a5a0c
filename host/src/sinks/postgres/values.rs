//! Typed values into the JSON that stages them: `jsonb_populate_record` reads each back into
//! its column's Postgres type. Values Postgres cannot hold are refused here, before anything is
//! staged, so that a commit never fails on a record.

use arrow_array::{
    Array,
    cast::AsArray,
    types::{
        Date32Type, Float32Type, Float64Type, Int32Type, Int64Type, TimestampMicrosecondType,
        TimestampMillisecondType,
    },
};
use arrow_schema::{DataType, TimeUnit};
use chrono::{DateTime, Datelike, Utc};
use serde_json::Value;

/// One value of an Arrow column as JSON that `jsonb_populate_record` reads back into the
/// column's Postgres type; or why Postgres could not hold it.
pub(super) fn cell(array: &dyn Array, row: usize) -> Result<Value, String> {
    if array.is_null(row) {
        return Ok(Value::Null);
    }
    Ok(match array.data_type() {
        DataType::Utf8 => {
            let text = array.as_string::<i32>().value(row);
            if text.contains('\0') {
                return Err("text with a NUL character, which Postgres cannot store".into());
            }
            Value::from(text)
        }
        DataType::Int32 => Value::from(array.as_primitive::<Int32Type>().value(row)),
        DataType::Int64 => Value::from(array.as_primitive::<Int64Type>().value(row)),
        // Through the float's own shortest text, so 0.1 stays 0.1 in a `real` column.
        DataType::Float32 => {
            let v = array.as_primitive::<Float32Type>().value(row);
            float(v.to_string().parse().unwrap_or(f64::NAN), v.is_finite())
        }
        DataType::Float64 => {
            let v = array.as_primitive::<Float64Type>().value(row);
            float(v, v.is_finite())
        }
        DataType::Boolean => Value::from(array.as_boolean().value(row)),
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            let ms = array.as_primitive::<TimestampMillisecondType>().value(row);
            timestamp(DateTime::from_timestamp_millis(ms))?
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            let us = array.as_primitive::<TimestampMicrosecondType>().value(row);
            timestamp(DateTime::from_timestamp_micros(us))?
        }
        DataType::Date32 => {
            let days = array.as_primitive::<Date32Type>().value(row);
            let date = DateTime::from_timestamp(i64::from(days) * 86_400, 0)
                .filter(|t| (1..=9999).contains(&t.year()))
                .ok_or("date outside the years 1 to 9999")?;
            Value::from(date.format("%Y-%m-%d").to_string())
        }
        DataType::Binary => {
            let bytes = array.as_binary::<i32>().value(row);
            Value::from(format!("\\x{}", hex::encode(bytes)))
        }
        other => return Err(format!("no Postgres type for Arrow type {other}")),
    })
}

/// A float as JSON; the values JSON has no number for as Postgres spells them.
fn float(v: f64, finite: bool) -> Value {
    match serde_json::Number::from_f64(v) {
        Some(n) if finite => Value::Number(n),
        _ if v.is_nan() => Value::from("NaN"),
        _ if v > 0.0 => Value::from("Infinity"),
        _ => Value::from("-Infinity"),
    }
}

/// A timestamp as RFC 3339 in UTC, to the microsecond.
fn timestamp(t: Option<DateTime<Utc>>) -> Result<Value, String> {
    let t = t
        .filter(|t| (1..=9999).contains(&t.year()))
        .ok_or("timestamp outside the years 1 to 9999")?;
    Ok(Value::from(t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{
        ArrayRef, BinaryArray, Date32Array, Float32Array, Float64Array, StringArray,
        TimestampMillisecondArray,
    };

    use super::*;

    fn first(array: ArrayRef) -> Result<Value, String> {
        cell(array.as_ref(), 0)
    }

    #[test]
    fn cells_are_written_as_postgres_reads_them() {
        assert_eq!(
            first(Arc::new(Float32Array::from(vec![0.1f32]))),
            Ok(Value::from(0.1))
        );
        assert_eq!(
            first(Arc::new(Float64Array::from(vec![f64::NEG_INFINITY]))),
            Ok(Value::from("-Infinity"))
        );
        assert_eq!(
            first(Arc::new(Float64Array::from(vec![f64::NAN]))),
            Ok(Value::from("NaN"))
        );
        assert_eq!(
            first(Arc::new(
                TimestampMillisecondArray::from(vec![1_700_000_000_123]).with_timezone("+00:00")
            )),
            Ok(Value::from("2023-11-14T22:13:20.123000Z"))
        );
        assert_eq!(
            first(Arc::new(Date32Array::from(vec![19_675]))),
            Ok(Value::from("2023-11-14"))
        );
        assert_eq!(
            first(Arc::new(BinaryArray::from_vec(vec![&[0x00, 0xff][..]]))),
            Ok(Value::from("\\x00ff"))
        );
        assert!(first(Arc::new(StringArray::from(vec!["a\0b"]))).is_err());
        // Postgres has no year 0 and before; years past 9999 do not print as ISO.
        assert!(
            first(Arc::new(TimestampMillisecondArray::from(vec![
                -70_000_000_000_000
            ])))
            .is_err()
        );
    }
}
