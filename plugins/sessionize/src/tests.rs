use serde_json::{Value, json};
use weir_sdk::{Context, Emitter, Record, Stage, host::timers};

use super::*;

/// A stage with its host stand-ins: feeds events and watermarks, collects what it emits.
struct Harness {
    stage: Sessionize,
    sessions: Vec<Value>,
    late: Vec<Value>,
}

impl Harness {
    fn new(config: Value) -> Harness {
        Harness {
            stage: Sessionize::init(&config.to_string()).unwrap(),
            sessions: Vec::new(),
            late: Vec::new(),
        }
    }

    /// One batch of events; each event is `(user, type, time)`.
    fn batch(&mut self, events: &[(&str, &str, i64)]) {
        let values: Vec<String> = events
            .iter()
            .map(|(user, kind, t)| json!({"user_id": user, "type": kind, "ts_ms": t}).to_string())
            .collect();
        let mut out = Emitter::default();
        for (i, value) in values.iter().enumerate() {
            let record = Record {
                key: Some(events[i].0.as_bytes()),
                value: value.as_bytes(),
                timestamp_ms: events[i].2,
                ..Record::default()
            };
            self.stage
                .process(&Context::default(), &record, &mut out)
                .unwrap();
        }
        self.stage.end_batch();
        for (i, e) in out.records.iter().enumerate() {
            assert_eq!(e.output, 1, "process emits only late events");
            self.late
                .push(serde_json::from_slice(out.value(i)).unwrap());
        }
    }

    fn event(&mut self, user: &str, kind: &str, t: i64) {
        self.batch(&[(user, kind, t)]);
    }

    fn watermark(&mut self, watermark_ms: i64) {
        let fired = timers::take(watermark_ms);
        let mut out = Emitter::default();
        self.stage.on_watermark(watermark_ms, &fired, &mut out);
        for (i, e) in out.records.iter().enumerate() {
            assert_eq!(e.output, 0);
            let session: Value = serde_json::from_slice(out.value(i)).unwrap();
            assert_eq!(
                Some(session["key"].as_str().unwrap().as_bytes()),
                out.key(i)
            );
            assert_eq!(session["session_end"], e.timestamp_ms);
            self.sessions.push(session);
        }
    }

    /// `(key, start, end, count)` of every session emitted so far.
    fn spans(&self) -> Vec<(String, i64, i64, u64)> {
        self.sessions
            .iter()
            .map(|s| {
                (
                    s["key"].as_str().unwrap().to_string(),
                    s["session_start"].as_i64().unwrap(),
                    s["session_end"].as_i64().unwrap(),
                    s["count"].as_u64().unwrap(),
                )
            })
            .collect()
    }
}

const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
const MIN: i64 = 60_000;

#[test]
fn events_less_than_the_gap_apart_form_a_session_that_closes_on_the_watermark() {
    let mut h = Harness::new(json!({"gap": "10m"}));
    h.batch(&[
        ("u1", "page_view", T0),
        ("u1", "click", T0 + 9 * MIN),
        ("u2", "page_view", T0 + MIN),
    ]);
    h.event("u1", "purchase", T0 + 15 * MIN);
    h.watermark(T0 + 11 * MIN - 1);
    assert!(h.sessions.is_empty(), "u2's session closes at 11m");
    h.watermark(T0 + 11 * MIN);
    assert_eq!(h.spans(), vec![("u2".into(), T0 + MIN, T0 + MIN, 1)]);
    h.watermark(T0 + 25 * MIN - 1);
    assert_eq!(h.sessions.len(), 1, "u1's session closes at 25m");
    h.watermark(T0 + 25 * MIN);
    assert_eq!(
        h.sessions[1],
        json!({"key": "u1", "session_start": T0, "session_end": T0 + 15 * MIN,
               "duration_ms": 15 * MIN, "count": 3,
               "type_counts": {"click": 1, "page_view": 1, "purchase": 1}, "amount_sum": 0,
               "first_event": {"user_id": "u1", "type": "page_view", "ts_ms": T0},
               "last_event": {"user_id": "u1", "type": "purchase", "ts_ms": T0 + 15 * MIN}})
    );
    assert!(h.late.is_empty());
}

#[test]
fn events_exactly_the_gap_apart_are_two_sessions() {
    let mut h = Harness::new(json!({"gap": "10m"}));
    h.batch(&[("u", "a", T0), ("u", "b", T0 + 10 * MIN)]);
    h.watermark(i64::MAX);
    assert_eq!(
        h.spans(),
        vec![
            ("u".into(), T0, T0, 1),
            ("u".into(), T0 + 10 * MIN, T0 + 10 * MIN, 1)
        ]
    );
}

#[test]
fn an_event_that_bridges_two_sessions_merges_them() {
    let mut h = Harness::new(json!({"gap": "10m"}));
    h.batch(&[("u", "a", T0), ("u", "c", T0 + 18 * MIN)]);
    // Apart, the first session would close at 10m.
    h.watermark(T0 + 5 * MIN);
    // 9m is less than the gap from both: one session, closing at 28m.
    h.event("u", "b", T0 + 9 * MIN);
    h.watermark(T0 + 27 * MIN);
    assert!(h.sessions.is_empty(), "the first session's timer was moved");
    h.watermark(T0 + 28 * MIN);
    assert_eq!(h.spans(), vec![("u".into(), T0, T0 + 18 * MIN, 3)]);
    assert_eq!(
        h.sessions[0]["type_counts"],
        json!({"a": 1, "b": 1, "c": 1})
    );
    assert_eq!(h.sessions[0]["first_event"]["type"], "a");
    assert_eq!(h.sessions[0]["last_event"]["type"], "c");
}

#[test]
fn events_can_merge_three_sessions_in_one_batch() {
    let mut h = Harness::new(json!({"gap": "10m"}));
    h.batch(&[
        ("u", "a", T0),
        ("u", "c", T0 + 16 * MIN),
        ("u", "e", T0 + 32 * MIN),
        ("u", "b", T0 + 8 * MIN),  // bridges the first two
        ("u", "d", T0 + 24 * MIN), // bridges that one and the third
    ]);
    h.watermark(i64::MAX);
    assert_eq!(h.spans(), vec![("u".into(), T0, T0 + 32 * MIN, 5)]);
}

#[test]
fn ties_keep_the_first_event_and_the_last_one_to_arrive() {
    let mut h = Harness::new(json!({"gap": "1m"}));
    h.batch(&[("u", "a", T0), ("u", "b", T0), ("u", "c", T0)]);
    h.watermark(i64::MAX);
    let s = &h.sessions[0];
    assert_eq!(
        (&s["first_event"]["type"], &s["last_event"]["type"]),
        (&json!("a"), &json!("c"))
    );
    assert_eq!(s["duration_ms"], 0);
}

#[test]
fn events_whose_session_closed_go_to_late_and_open_ones_still_take_events() {
    let mut h = Harness::new(json!({"gap": "10m"}));
    h.batch(&[("u", "a", T0), ("v", "a", T0 + 15 * MIN)]);
    h.watermark(T0 + 20 * MIN); // u's session [0, 0] closed at 10m
    assert_eq!(h.spans(), vec![("u".into(), T0, T0, 1)]);
    h.batch(&[
        // Within the gap of u's emitted session: late.
        ("u", "late-1", T0 + 5 * MIN),
        // Behind the watermark, for a key with nothing open: late.
        ("w", "late-2", T0 + 19 * MIN),
        // Behind the watermark, but it joins v's open session (closing at 25m).
        ("v", "joins", T0 + 8 * MIN),
        // Behind the watermark, before v's session and more than the gap behind the watermark:
        // alone, its session would have closed already.
        ("v", "late-3", T0 - 5 * MIN),
        // At the watermark: on time.
        ("u", "on-time", T0 + 20 * MIN),
    ]);
    let late: Vec<&str> = h.late.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(late, vec!["late-1", "late-2", "late-3"]);
    h.watermark(i64::MAX);
    assert_eq!(
        h.spans(),
        vec![
            ("u".into(), T0, T0, 1),
            ("v".into(), T0 + 8 * MIN, T0 + 15 * MIN, 2),
            ("u".into(), T0 + 20 * MIN, T0 + 20 * MIN, 1),
        ]
    );
}

#[test]
fn an_event_may_not_join_a_session_already_emitted_even_through_an_open_one() {
    let mut h = Harness::new(json!({"gap": "10m"}));
    h.batch(&[("u", "a", T0), ("u", "c", T0 + 12 * MIN)]);
    h.watermark(T0 + 10 * MIN); // [0, 0] emitted; [12m, 12m] open until 22m
    // 5m is within the gap of both: joining the open one would leave the emitted one wrong.
    h.event("u", "b", T0 + 5 * MIN);
    assert_eq!(h.late.len(), 1);
    // 11m is past the emitted session's close: it joins the open one.
    h.event("u", "d", T0 + 11 * MIN);
    h.watermark(i64::MAX);
    assert_eq!(
        h.spans(),
        vec![
            ("u".into(), T0, T0, 1),
            ("u".into(), T0 + 11 * MIN, T0 + 12 * MIN, 2)
        ]
    );
}

#[test]
fn sessions_survive_a_new_instance() {
    // The host keeps state and timers across instances: a fresh instance (after a trap or a
    // restart) carries on with the sessions in flight.
    let mut h = Harness::new(json!({"gap": "10m"}));
    h.batch(&[("u", "a", T0), ("u", "b", T0 + 5 * MIN)]);
    h.watermark(T0 + 6 * MIN);
    h.stage = Sessionize::init(&json!({"gap": "10m"}).to_string()).unwrap();
    h.event("u", "c", T0 + 14 * MIN);
    // A key with nothing open takes no event behind the watermark, which survived too.
    h.event("w", "late", T0);
    assert_eq!(h.late.len(), 1);
    h.watermark(i64::MAX);
    assert_eq!(h.spans(), vec![("u".into(), T0, T0 + 14 * MIN, 3)]);
    assert_eq!(weir_sdk::host::state::scan_prefix(b"k/", None, 10), vec![]);
}

#[test]
fn amounts_are_summed_and_fields_can_be_switched_off() {
    let mut stage = Sessionize::init(
        &json!({"gap": "1m", "key_field": null, "time_field": null, "type_field": null,
                "amount_field": "cents"})
        .to_string(),
    )
    .unwrap();
    let mut out = Emitter::default();
    for (value, t) in [
        (r#"{"cents":150}"#, T0),
        (r#"{"cents":-50,"x":1}"#, T0 + 1),
        ("{}", T0 + 2),
    ] {
        let record = Record {
            key: Some(b"k"),
            value: value.as_bytes(),
            timestamp_ms: t,
            ..Record::default()
        };
        stage
            .process(&Context::default(), &record, &mut out)
            .unwrap();
    }
    stage.end_batch();
    stage.on_watermark(i64::MAX, &timers::take(i64::MAX), &mut out);
    let session: Value = serde_json::from_slice(out.value(0)).unwrap();
    assert_eq!(
        session,
        json!({"key": "k", "session_start": T0, "session_end": T0 + 2, "duration_ms": 2,
               "count": 3, "amount_sum": 100, "first_event": {"cents": 150},
               "last_event": {}})
    );
}

#[test]
fn keys_may_be_whole_numbers_and_events_keep_their_text() {
    let mut h = Harness::new(json!({"gap": "1m", "key_field": "uid"}));
    let value = br#"{ "uid" : 42, "type":"a", "ts_ms": 1767225600000 }"#;
    let mut out = Emitter::default();
    let record = Record {
        value,
        ..Record::default()
    };
    h.stage
        .process(&Context::default(), &record, &mut out)
        .unwrap();
    h.stage.end_batch();
    let fired = timers::take(i64::MAX);
    h.stage.on_watermark(i64::MAX, &fired, &mut out);
    assert_eq!(out.key(0), Some(&b"42"[..]));
    let text = std::str::from_utf8(out.value(0)).unwrap();
    assert!(
        text.contains(r#""first_event":{ "uid" : 42, "type":"a", "ts_ms": 1767225600000 }"#),
        "{text}"
    );
}

#[test]
fn sessions_equal_a_reference_over_shuffled_events() {
    // Events of five users over five hours with random pauses, delivered out of order within
    // 20 s, with a watermark 20 s behind the latest event time: the sessions equal those
    // computed from the events sorted by time.
    let mut seed: u64 = 7;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let gap = 5 * MIN;
    let users = ["u0", "u1", "u2", "u3", "u4"];
    let mut events: Vec<(i64, &str)> = Vec::new();
    for user in users {
        let mut t = T0 + (next() % 60_000) as i64;
        while t < T0 + 300 * MIN {
            events.push((t, user));
            // Mostly short pauses, sometimes one near or past the gap.
            t += match next() % 10 {
                0 => gap + (next() % 60_000) as i64 - 30_000,
                1 => gap * 3,
                _ => (next() % 90_000) as i64,
            };
        }
    }
    let mut arrival: Vec<(i64, (i64, &str))> = events
        .iter()
        .map(|e| (e.0 + (next() % 20_001) as i64, *e))
        .collect();
    arrival.sort_by_key(|a| a.0);
    let arrival: Vec<_> = arrival.into_iter().map(|a| a.1).collect();
    assert!(arrival.windows(2).any(|w| w[0].0 > w[1].0));

    let mut h = Harness::new(json!({"gap": "5m"}));
    let mut max_seen = i64::MIN;
    for batch in arrival.chunks(40) {
        let batch: Vec<(&str, &str, i64)> = batch.iter().map(|(t, u)| (*u, "e", *t)).collect();
        h.batch(&batch);
        max_seen = batch.iter().map(|e| e.2).fold(max_seen, i64::max);
        h.watermark(max_seen - 20_000);
    }
    h.watermark(i64::MAX);
    assert!(h.late.is_empty());

    events.sort();
    let mut reference: Vec<(String, i64, i64, u64)> = Vec::new();
    for user in users {
        let mut open: Option<(i64, i64, u64)> = None;
        for (t, _) in events.iter().filter(|e| e.1 == user) {
            open = match open {
                Some((s, e, n)) if t - e < gap => Some((s, *t, n + 1)),
                Some(done) => {
                    reference.push((user.into(), done.0, done.1, done.2));
                    Some((*t, *t, 1))
                }
                None => Some((*t, *t, 1)),
            };
        }
        let done = open.unwrap();
        reference.push((user.into(), done.0, done.1, done.2));
    }
    reference.sort();
    let mut got = h.spans();
    got.sort();
    assert!(reference.len() > 20, "{}", reference.len());
    assert_eq!(got, reference);
}

#[test]
fn what_is_not_an_event_is_an_error() {
    let stage = Sessionize::init("{}").unwrap();
    let record = |value: &'static str| Record {
        value: value.as_bytes(),
        ..Record::default()
    };
    for (value, message) in [
        ("nope", "value is not a JSON object"),
        ("[1]", "value is not a JSON object"),
        (r#"{"user_id":"u"} x"#, "value is not a JSON object"),
        (r#"{"ts_ms":1}"#, "the event has no `user_id` field"),
        (
            r#"{"user_id":null,"ts_ms":1}"#,
            "the event has no `user_id` field",
        ),
        (r#"{"user_id":"","ts_ms":1}"#, "`user_id` is empty"),
        (
            r#"{"user_id":1.5,"ts_ms":1}"#,
            "`user_id` is not a string or a whole number: 1.5",
        ),
        (r#"{"user_id":"u"}"#, "the event has no `ts_ms` field"),
        (
            r#"{"user_id":"u","ts_ms":"1"}"#,
            "`ts_ms` is not a time in ms since the epoch: \"1\"",
        ),
        (
            r#"{"user_id":"u","ts_ms":1,"type":7}"#,
            "`type` is not a string: 7",
        ),
        (
            r#"{"user_id":"u","ts_ms":1,"amount_cents":1.5}"#,
            "`amount_cents` is not a whole number: 1.5",
        ),
    ] {
        let err = stage.config.event(&record(value)).unwrap_err();
        assert!(err.starts_with(message), "{value}: {err}");
    }
    let stage = Sessionize::init(r#"{"key_field":null}"#).unwrap();
    let err = stage.config.event(&record(r#"{"ts_ms":1}"#)).unwrap_err();
    assert_eq!(err, "the record has no key");
    // An escaped member name is still the field, and an escaped key is unescaped.
    let event = Sessionize::init("{}")
        .unwrap()
        .config
        .event(&record(r#"{"user\u005fid":"\u0075","ts_ms":1}"#))
        .unwrap();
    assert_eq!(event.key, "u");
}

#[test]
fn bad_settings_are_refused_with_the_reason() {
    for (config, message) in [
        (json!({"gap": "30x"}), "gap `30x`: unknown unit `x`"),
        (json!({"gap": "m"}), "gap `m`: expected a whole number"),
        (json!({"gap": "30"}), "gap `30`: a duration needs a unit"),
        (json!({"gap": "0s"}), "gap `0s`: must be longer than zero"),
        (
            json!({"gap": "99999999999999999d"}),
            "gap `99999999999999999d`: too long",
        ),
        (json!({"key_field": ""}), "key_field cannot be empty"),
        (
            json!({"gap_secs": 30}),
            "bad sessionize config: unknown field `gap_secs`",
        ),
        (json!([]), "bad sessionize config: not a JSON object"),
    ] {
        let err = Sessionize::init(&config.to_string()).unwrap_err();
        assert!(err.starts_with(message), "{config}: {err}");
    }
    let config = Sessionize::init("{}").unwrap().config;
    assert_eq!(config.gap_ms, 30 * MIN);
    assert_eq!(config.key_field.as_deref(), Some("user_id"));
}
