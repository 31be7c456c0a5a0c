use serde_json::{Value, json};
use weir_sdk::{Context, Emitter, Record, Stage, host::timers};

use super::*;

/// A stage with its host stand-ins: feeds trades and watermarks, collects what it emits.
struct Harness {
    stage: Ohlc,
    bars: Vec<Value>,
    late: Vec<i64>,
}

impl Harness {
    fn new(config: Value) -> Harness {
        Harness {
            stage: Ohlc::init(&config.to_string()).unwrap(),
            bars: Vec::new(),
            late: Vec::new(),
        }
    }

    fn trade(&mut self, symbol: &str, price: &str, quantity: &str, time_ms: i64) {
        let value = json!({"s": symbol, "p": price, "q": quantity}).to_string();
        let mut out = Emitter::default();
        let record = Record {
            key: Some(symbol.as_bytes()),
            value: value.as_bytes(),
            timestamp_ms: time_ms,
            ..Record::default()
        };
        self.stage
            .process(&Context::default(), &record, &mut out)
            .unwrap();
        for e in &out.records {
            assert_eq!(e.output, 1, "process emits only late trades");
            self.late.push(e.timestamp_ms);
        }
    }

    fn watermark(&mut self, watermark_ms: i64) {
        let fired = timers::take(watermark_ms);
        let mut out = Emitter::default();
        self.stage.on_watermark(watermark_ms, &fired, &mut out);
        for i in 0..out.records.len() {
            self.bars
                .push(serde_json::from_slice(out.value(i)).unwrap());
        }
    }
}

const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
const MIN: i64 = 60_000;

#[test]
fn a_tumbling_bar_orders_by_event_time_and_closes_on_the_watermark() {
    let mut h = Harness::new(json!({"windows": ["1m"]}));
    h.trade("BTC", "101", "1", T0 + 30_000);
    h.trade("BTC", "100", "2", T0 + 10_000); // earlier: the open
    h.trade("BTC", "105", "1", T0 + 50_000); // latest: the close
    h.trade("BTC", "99", "1", T0 + 40_000);
    h.trade("BTC", "200", "1", T0 + MIN); // the next window
    h.watermark(T0 + MIN - 1);
    assert!(h.bars.is_empty(), "the window ends at T0 + 1m");
    h.watermark(T0 + MIN);
    assert_eq!(
        h.bars,
        vec![
            json!({"symbol": "BTC", "window": "1m", "window_start": T0, "window_end": T0 + MIN,
                     "open": 100.0, "high": 105.0, "low": 99.0, "close": 105.0, "volume": 5.0,
                     "trades": 4, "vwap": (101.0 + 200.0 + 105.0 + 99.0) / 5.0})
        ]
    );
    h.watermark(i64::MAX);
    assert_eq!(h.bars[1]["open"], 200.0);
    assert_eq!(h.bars.len(), 2);
}

#[test]
fn ties_keep_the_first_open_and_the_last_close() {
    let mut h = Harness::new(json!({}));
    h.trade("ETH", "1", "1", T0);
    h.trade("ETH", "2", "1", T0);
    h.trade("ETH", "3", "1", T0);
    h.watermark(T0 + MIN);
    assert_eq!(
        (h.bars[0]["open"].clone(), h.bars[0]["close"].clone()),
        (json!(1.0), json!(3.0))
    );
}

#[test]
fn every_window_kind_gets_its_bars() {
    let mut h =
        Harness::new(json!({"windows": ["1m", "5m"], "sliding": [{"size": "2m", "slide": "1m"}]}));
    h.trade("A", "10", "1", T0 + 90_000); // minute 1
    h.watermark(T0 + 10 * MIN);
    let mut got: Vec<(String, i64)> = h
        .bars
        .iter()
        .map(|b| {
            (
                b["window"].as_str().unwrap().to_string(),
                b["window_end"].as_i64().unwrap(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("1m".into(), T0 + 2 * MIN),
            ("2m/1m".into(), T0 + 2 * MIN),
            ("2m/1m".into(), T0 + 3 * MIN),
            ("5m".into(), T0 + 5 * MIN),
        ]
    );
}

#[test]
fn a_trade_for_a_closed_window_goes_to_late() {
    let mut h = Harness::new(json!({"windows": ["1m"]}));
    h.trade("A", "1", "1", T0 + 5_000);
    h.watermark(T0 + MIN);
    h.trade("A", "2", "1", T0 + 59_999); // its window closed
    h.trade("A", "3", "1", T0 + MIN); // the next one is open
    assert_eq!(h.late, vec![T0 + 59_999]);
    h.watermark(T0 + 2 * MIN);
    assert_eq!(h.bars.len(), 2);
    assert_eq!(h.bars[1]["trades"], 1);
}

#[test]
fn the_moving_average_covers_the_last_n_closes() {
    let mut h = Harness::new(json!({"windows": ["1m"], "moving_average": 2}));
    for (i, price) in ["10", "20", "40"].iter().enumerate() {
        h.trade("A", price, "1", T0 + i as i64 * MIN);
    }
    h.watermark(T0 + 3 * MIN);
    let ma: Vec<f64> = h
        .bars
        .iter()
        .map(|b| b["moving_average"].as_f64().unwrap())
        .collect();
    assert_eq!(ma, vec![10.0, 15.0, 30.0]);
}

#[test]
fn bars_equal_a_reference_over_shuffled_trades() {
    // Trades of three symbols over 20 minutes, delivered out of order within 5 s, with a
    // watermark 5 s behind the latest event time: the bars equal those computed from the trades
    // sorted by time.
    let mut seed: u64 = 42;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut trades: Vec<(i64, String, f64, f64)> = (0..5_000)
        .map(|i| {
            let symbol = ["A", "B", "C"][(next() % 3) as usize].to_string();
            // Quarters and halves: exact in binary and in short decimal text.
            let price = 100.0 + (next() % 1000) as f64 * 0.25;
            let quantity = (1 + next() % 50) as f64 * 0.5;
            (T0 + i * 240, symbol, price, quantity)
        })
        .collect();
    // Each trade arrives at its event time plus up to 5 s: no later than the bound.
    let mut arrival: Vec<(i64, (i64, String, f64, f64))> = trades
        .iter()
        .map(|t| (t.0 + (next() % 5_001) as i64, t.clone()))
        .collect();
    arrival.sort_by_key(|a| a.0);
    let arrival: Vec<_> = arrival.into_iter().map(|a| a.1).collect();
    assert!(
        arrival.windows(2).any(|w| w[0].0 > w[1].0),
        "some trades arrive out of order"
    );
    let mut h = Harness::new(json!({"windows": ["1m"]}));
    let mut max_seen = i64::MIN;
    // Batches of 50 trades (the bars they touch are kept in memory and written back at the
    // batch's end), then the watermark.
    for batch in arrival.chunks(50) {
        for (t, symbol, price, quantity) in batch {
            h.trade(symbol, &price.to_string(), &quantity.to_string(), *t);
            max_seen = max_seen.max(*t);
        }
        h.stage.end_batch();
        h.watermark(max_seen - 5_000);
    }
    h.watermark(i64::MAX);
    assert!(h.late.is_empty());

    trades.sort_by_key(|t| t.0);
    let mut reference: std::collections::BTreeMap<(String, i64), Vec<(f64, f64)>> =
        Default::default();
    for (t, symbol, price, quantity) in &trades {
        reference
            .entry((symbol.clone(), t.div_euclid(MIN) * MIN + MIN))
            .or_default()
            .push((*price, *quantity));
    }
    assert_eq!(h.bars.len(), reference.len());
    for bar in &h.bars {
        let key = (
            bar["symbol"].as_str().unwrap().to_string(),
            bar["window_end"].as_i64().unwrap(),
        );
        let r = &reference[&key];
        let volume: f64 = r.iter().map(|x| x.1).sum();
        let notional: f64 = r.iter().map(|x| x.0 * x.1).sum();
        assert_eq!(bar["open"].as_f64().unwrap(), r[0].0, "{key:?}");
        assert_eq!(bar["close"].as_f64().unwrap(), r[r.len() - 1].0, "{key:?}");
        assert_eq!(
            bar["high"].as_f64().unwrap(),
            r.iter().map(|x| x.0).fold(f64::MIN, f64::max)
        );
        assert_eq!(
            bar["low"].as_f64().unwrap(),
            r.iter().map(|x| x.0).fold(f64::MAX, f64::min)
        );
        assert_eq!(bar["trades"].as_u64().unwrap(), r.len() as u64);
        assert!((bar["volume"].as_f64().unwrap() - volume).abs() < 1e-9 * volume);
        assert!((bar["vwap"].as_f64().unwrap() - notional / volume).abs() < 1e-9 * notional);
    }
}

#[test]
fn what_is_not_a_trade_is_an_error() {
    let stage = Ohlc::init("{}").unwrap();
    let record = |value: &'static str| Record {
        value: value.as_bytes(),
        ..Record::default()
    };
    for (value, message) in [
        ("nope", "value is not JSON"),
        (r#"{"p":"1","q":"1"}"#, "the trade has no `s` field"),
        (r#"{"s":"A","p":"x","q":"1"}"#, "`p` is not a number"),
        (r#"{"s":"A","p":"1","q":"NaN"}"#, "`q` is not a number"),
        (r#"{"s":"A/B","p":"1","q":"1"}"#, "`s` is not a symbol"),
        (r#"{"s":"","p":"1","q":"1"}"#, "`s` is not a symbol"),
    ] {
        let err = stage.config.trade(&record(value)).unwrap_err();
        assert!(err.starts_with(message), "{value}: {err}");
    }
}

#[test]
fn bad_settings_are_refused_with_the_reason() {
    for (config, message) in [
        (json!({"windows": ["1x"]}), "`1x`: unknown unit `x`"),
        (json!({"windows": ["m"]}), "`m`: expected a whole number"),
        (json!({"windows": ["0s"]}), "`0s`: must be longer than zero"),
        (json!({"windows": []}), "no windows"),
        (
            json!({"sliding": [{"size": "5m", "slide": "2m"}]}),
            "sliding window 5m/2m: the size must be a multiple",
        ),
        (
            json!({"moving_average": 0}),
            "moving_average must be at least 1",
        ),
        (
            json!({"window": ["1m"]}),
            "bad ohlc config: unknown field `window`",
        ),
    ] {
        let err = Ohlc::init(&config.to_string()).unwrap_err();
        assert!(err.starts_with(message), "{config}: {err}");
    }
}

#[test]
fn a_bar_survives_its_encoding() {
    let t = Trade {
        symbol: "A".into(),
        price: 1.5,
        quantity: 2.0,
        time_ms: -3,
    };
    let bar = Bar::first(&t).with(&Trade {
        price: 0.25,
        time_ms: 9,
        ..t.clone()
    });
    assert_eq!(Bar::decode(&bar.encode()).unwrap(), bar);
    assert!(Bar::decode(&[0; 5]).unwrap_err().contains("5 bytes"));
}

#[test]
fn windows_cover_negative_times_too() {
    let w = Window {
        name: "1m".into(),
        size_ms: MIN,
        slide_ms: MIN,
    };
    assert_eq!(w.ends_covering(-1).collect::<Vec<_>>(), vec![0]);
    assert_eq!(w.ends_covering(0).collect::<Vec<_>>(), vec![MIN]);
    let s = Window {
        name: "3m/1m".into(),
        size_ms: 3 * MIN,
        slide_ms: MIN,
    };
    assert_eq!(
        s.ends_covering(MIN).collect::<Vec<_>>(),
        vec![4 * MIN, 3 * MIN, 2 * MIN]
    );
}
