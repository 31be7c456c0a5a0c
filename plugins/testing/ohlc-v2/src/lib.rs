//! Test plugin: the next version of `ohlc`, for the hot-swap tests. It reads and writes the same
//! keyed state as `ohlc` (it *is* `ohlc`, wrapped), so the two can replace each other in a
//! running pipeline with windows open, and every bar it emits carries one more field, `range`
//! (`high - low`): a visible difference that shows which version closed a window.

use weir_ohlc::Ohlc;
use weir_sdk::{Context, Emitter, Record, Stage, Timer};

/// The stage: `ohlc`, with `range` on every bar.
pub struct OhlcV2(Ohlc);

/// The fields of a bar the new one is computed from.
#[derive(serde::Deserialize)]
struct HighLow {
    high: f64,
    low: f64,
}

impl Stage for OhlcV2 {
    fn init(config: &str) -> Result<Self, String> {
        Ohlc::init(config).map(OhlcV2)
    }

    fn outputs(&self) -> Vec<String> {
        self.0.outputs()
    }

    fn process(&mut self, cx: &Context, record: &Record, out: &mut Emitter) -> Result<(), String> {
        self.0.process(cx, record, out)
    }

    fn end_batch(&mut self) {
        self.0.end_batch();
    }

    fn on_watermark(&mut self, watermark_ms: i64, fired: &[Timer], out: &mut Emitter) {
        let mut bars = Emitter::default();
        self.0.on_watermark(watermark_ms, fired, &mut bars);
        for (i, bar) in bars.records.iter().enumerate() {
            let value = bars.value(i);
            let headers = bar.headers.slice(&bars.headers);
            out.emit_with(bar.output, bars.key(i), bar.timestamp_ms, headers, |buf| {
                with_range(value, buf)
            });
        }
    }
}

/// Writes bar `value` (a JSON object) with `"range"` added before its closing brace; a value
/// that is not a bar is written as it is.
fn with_range(value: &[u8], buf: &mut Vec<u8>) {
    match (
        serde_json::from_slice::<HighLow>(value),
        value.strip_suffix(b"}"),
    ) {
        (Ok(bar), Some(open)) => {
            buf.extend_from_slice(open);
            buf.extend_from_slice(format!(",\"range\":{}}}", bar.high - bar.low).as_bytes());
        }
        _ => buf.extend_from_slice(value),
    }
}

weir_sdk::export_stage!(OhlcV2);

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};
    use weir_sdk::host::timers;

    use super::*;

    const T0: i64 = 1_767_225_600_000;

    fn trade(stage: &mut impl Stage, symbol: &str, price: &str, time_ms: i64) {
        let value = json!({"s": symbol, "p": price, "q": "1"}).to_string();
        let record = Record {
            value: value.as_bytes(),
            timestamp_ms: time_ms,
            ..Record::default()
        };
        let mut out = Emitter::default();
        stage
            .process(&Context::default(), &record, &mut out)
            .unwrap();
        stage.end_batch();
    }

    fn close(stage: &mut impl Stage, watermark_ms: i64) -> Vec<Value> {
        let fired = timers::take(watermark_ms);
        let mut out = Emitter::default();
        stage.on_watermark(watermark_ms, &fired, &mut out);
        (0..out.records.len())
            .map(|i| serde_json::from_slice(out.value(i)).unwrap())
            .collect()
    }

    #[test]
    fn a_window_opened_by_v1_is_closed_by_v2_with_its_range() {
        let config = json!({"windows": ["1m"]}).to_string();
        let mut v1 = Ohlc::init(&config).unwrap();
        trade(&mut v1, "BTC", "100", T0 + 1_000);
        trade(&mut v1, "BTC", "104", T0 + 2_000);
        // The swap: the state stays in the host, the new version takes it from there.
        let mut v2 = OhlcV2::init(&config).unwrap();
        trade(&mut v2, "BTC", "97", T0 + 3_000);
        let bars = close(&mut v2, T0 + 60_000);
        assert_eq!(bars.len(), 1);
        assert_eq!(bars[0]["trades"], 3, "v1's trades are in v2's bar");
        assert_eq!(bars[0]["high"], 104.0);
        assert_eq!(bars[0]["low"], 97.0);
        assert_eq!(bars[0]["range"], 7.0);
    }

    #[test]
    fn what_is_not_a_bar_goes_through_unchanged() {
        let mut buf = Vec::new();
        with_range(b"[1,2]", &mut buf);
        assert_eq!(buf, b"[1,2]");
    }
}
