use std::collections::BTreeMap;

use serde_json::{Value, json};
use weir_sdk::{Context, Emitter, Header, Record, Stage};

use super::*;

/// One emitted record, read back.
#[derive(Debug, PartialEq)]
struct Out {
    output: u32,
    key: String,
    value: Value,
    headers: Vec<(String, String)>,
}

fn run(stage: &mut Cdc, value: &str, headers: &[Header]) -> Result<Vec<Out>, String> {
    let mut out = Emitter::default();
    let record = Record {
        key: Some(b"ignored"),
        value: value.as_bytes(),
        timestamp_ms: 1_767_225_600_000,
        headers,
        ..Record::default()
    };
    stage.process(&Context::default(), &record, &mut out)?;
    Ok((0..out.records.len())
        .map(|i| {
            let r = out.records[i];
            assert_eq!(r.timestamp_ms, 1_767_225_600_000);
            Out {
                output: r.output,
                key: String::from_utf8(out.key(i).unwrap().to_vec()).unwrap(),
                value: serde_json::from_slice(out.value(i)).unwrap(),
                headers: r
                    .headers
                    .slice(&out.headers)
                    .iter()
                    .map(|h| (h.name.clone(), String::from_utf8(h.value.clone()).unwrap()))
                    .collect(),
            }
        })
        .collect())
}

fn stage(config: Value) -> Cdc {
    Cdc::init(&config.to_string()).unwrap()
}

fn op(name: &str) -> Vec<(String, String)> {
    vec![("weir-op".into(), name.into())]
}

/// A change as the generator's `cdc` format writes it.
fn envelope(op: &str, before: Value, after: Value) -> String {
    json!({"before": before, "after": after,
           "source": {"connector": "weir-gen", "db": "shop", "schema": "public",
                      "table": "customers", "lsn": 8, "ts_ms": 1_767_225_600_000_i64},
           "op": op, "ts_ms": 1_767_225_600_005_i64})
    .to_string()
}

#[test]
fn inserts_updates_and_deletes_become_upserts_deletes_and_audit_rows() {
    let mut cdc = stage(json!({}));
    let v1 = json!({"id": 7, "name": "Ada Lovelace", "tier": "free", "balance_cents": 0});
    let v2 = json!({"id": 7, "name": "Ada Lovelace", "tier": "gold", "balance_cents": 500});

    let out = run(&mut cdc, &envelope("c", Value::Null, v1.clone()), &[]).unwrap();
    assert_eq!(
        out,
        vec![
            Out {
                output: 0,
                key: r#"{"id":7}"#.into(),
                value: v1.clone(),
                headers: op("upsert")
            },
            Out {
                output: 1,
                key: r#"{"id":7}"#.into(),
                value: json!({"op": "c", "key": r#"{"id":7}"#, "before": null,
                              "after": v1.to_string(), "source_db": "shop",
                              "source_schema": "public", "source_table": "customers",
                              "source_lsn": 8, "source_ts_ms": 1_767_225_600_000_i64,
                              "ts_ms": 1_767_225_600_005_i64}),
                headers: vec![],
            },
        ]
    );

    let out = run(&mut cdc, &envelope("u", v1.clone(), v2.clone()), &[]).unwrap();
    assert_eq!(out.len(), 2);
    assert_eq!(
        (out[0].value.clone(), out[0].headers.clone()),
        (v2.clone(), op("upsert"))
    );
    assert_eq!(out[1].value["op"], "u");
    assert_eq!(out[1].value["before"], v1.to_string());
    assert_eq!(out[1].value["after"], v2.to_string());

    let out = run(&mut cdc, &envelope("d", v2.clone(), Value::Null), &[]).unwrap();
    assert_eq!(
        (out[0].key.as_str(), &out[0].value, &out[0].headers),
        (r#"{"id":7}"#, &v2, &op("delete"))
    );
    assert_eq!(
        (&out[1].value["op"], &out[1].value["after"]),
        (&json!("d"), &Value::Null)
    );

    let out = run(&mut cdc, &envelope("r", Value::Null, v1.clone()), &[]).unwrap();
    assert_eq!(out[0].headers, op("upsert"));
    assert_eq!(out[1].value["op"], "r");
}

#[test]
fn rows_and_keys_keep_their_text() {
    let mut cdc = stage(json!({}));
    let value = r#"{"op":"c","after":{ "id" : 7 , "price": 1.50, "name": "caf\u00e9" }}"#;
    let mut out = Emitter::default();
    let record = Record {
        value: value.as_bytes(),
        ..Record::default()
    };
    cdc.process(&Context::default(), &record, &mut out).unwrap();
    assert_eq!(out.key(0), Some(&br#"{"id":7}"#[..]));
    assert_eq!(
        out.value(0),
        br#"{ "id" : 7 , "price": 1.50, "name": "caf\u00e9" }"#
    );
    // Without a `source`, its columns are null.
    let audit: Value = serde_json::from_slice(out.value(1)).unwrap();
    assert_eq!(
        audit,
        json!({"op": "c", "key": r#"{"id":7}"#, "before": null,
               "after": r#"{ "id" : 7 , "price": 1.50, "name": "caf\u00e9" }"#,
               "source_db": null, "source_schema": null, "source_table": null,
               "source_lsn": null, "source_ts_ms": null, "ts_ms": null})
    );
}

#[test]
fn a_composite_key_lists_its_columns_in_the_configured_order() {
    let mut cdc = stage(json!({"key": ["tenant", "id"]}));
    let row = json!({"id": 3, "name": "x", "tenant": "acme \"eu\""});
    let out = run(&mut cdc, &envelope("c", Value::Null, row), &[]).unwrap();
    assert_eq!(out[0].key, r#"{"tenant":"acme \"eu\"","id":3}"#);
    let key: Value = serde_json::from_str(&out[0].key).unwrap();
    assert_eq!(key, json!({"tenant": "acme \"eu\"", "id": 3}));
}

#[test]
fn an_envelope_wrapped_by_the_kafka_connect_json_converter_is_read() {
    let mut cdc = stage(json!({}));
    let inner: Value = serde_json::from_str(&envelope("c", Value::Null, json!({"id": 1}))).unwrap();
    let wrapped = json!({"schema": {"type": "struct", "fields": []}, "payload": inner});
    let out = run(&mut cdc, &wrapped.to_string(), &[]).unwrap();
    assert_eq!(
        (out[0].key.as_str(), &out[0].headers),
        (r#"{"id":1}"#, &op("upsert"))
    );
    assert_eq!(out[1].value["source_table"], "customers");
}

#[test]
fn an_update_that_changes_the_key_deletes_the_old_one_first() {
    let mut cdc = stage(json!({}));
    let before = json!({"id": 1, "name": "a"});
    let after = json!({"id": 2, "name": "a"});
    let out = run(&mut cdc, &envelope("u", before.clone(), after.clone()), &[]).unwrap();
    let current: Vec<(&str, &Value, &str)> = out
        .iter()
        .filter(|o| o.output == 0)
        .map(|o| (o.key.as_str(), &o.value, o.headers[0].1.as_str()))
        .collect();
    assert_eq!(
        current,
        vec![
            (r#"{"id":1}"#, &before, "delete"),
            (r#"{"id":2}"#, &after, "upsert")
        ]
    );
    // An update without its `before` row (Debezium's default for Postgres) is a plain upsert.
    let out = run(&mut cdc, &envelope("u", Value::Null, after.clone()), &[]).unwrap();
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].headers, op("upsert"));
}

#[test]
fn headers_pass_through_and_weir_op_is_replaced() {
    let mut cdc = stage(json!({}));
    let headers = [
        Header {
            name: "trace".into(),
            value: b"t1".to_vec(),
        },
        Header {
            name: "weir-op".into(),
            value: b"stale".to_vec(),
        },
    ];
    let out = run(
        &mut cdc,
        &envelope("c", Value::Null, json!({"id": 1})),
        &headers,
    )
    .unwrap();
    assert_eq!(
        out[0].headers,
        vec![
            ("trace".into(), "t1".into()),
            ("weir-op".into(), "upsert".into())
        ]
    );
    assert_eq!(out[1].headers, vec![("trace".into(), "t1".into())]);
    // Without an incoming `weir-op`, the headers are the input's, as they came.
    let out = run(
        &mut cdc,
        &envelope("c", Value::Null, json!({"id": 1})),
        &headers[..1],
    )
    .unwrap();
    assert_eq!(out[0].headers.len(), 2);
    assert_eq!(out[1].headers, vec![("trace".into(), "t1".into())]);
}

#[test]
fn a_tombstone_is_skipped() {
    let mut cdc = stage(json!({}));
    assert_eq!(run(&mut cdc, "", &[]).unwrap(), vec![]);
}

#[test]
fn the_current_state_output_replays_into_the_table() {
    // Random inserts, updates and deletes of a table: applying the default output's upserts and
    // deletes by key gives the table's final rows.
    let mut seed: u64 = 3;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut cdc = stage(json!({}));
    let mut table: BTreeMap<u64, Value> = BTreeMap::new();
    let mut replayed: BTreeMap<String, Value> = BTreeMap::new();
    let mut next_id = 0;
    let (mut audit_rows, mut changes) = (0, 0);
    for _ in 0..3_000 {
        let ids: Vec<u64> = table.keys().copied().collect();
        let change = match (ids.len(), next() % 10) {
            (0..=9, _) | (_, 0..=3) => {
                next_id += 1;
                let row = json!({"id": next_id, "balance": 0});
                table.insert(next_id, row.clone());
                envelope("c", Value::Null, row)
            }
            (n, 4..=8) => {
                let id = ids[(next() % n as u64) as usize];
                let before = table[&id].clone();
                let after = json!({"id": id, "balance": next() % 1000});
                table.insert(id, after.clone());
                envelope("u", before, after)
            }
            (n, _) => {
                let id = ids[(next() % n as u64) as usize];
                envelope("d", table.remove(&id).unwrap(), Value::Null)
            }
        };
        changes += 1;
        for o in run(&mut cdc, &change, &[]).unwrap() {
            match (o.output, o.headers.first().map(|h| h.1.as_str())) {
                (0, Some("upsert")) => {
                    replayed.insert(o.key, o.value);
                }
                (0, Some("delete")) => {
                    replayed.remove(&o.key).expect("a delete names a live row");
                }
                (1, _) => audit_rows += 1,
                other => panic!("unexpected output {other:?}"),
            }
        }
    }
    let expected: BTreeMap<String, Value> = table
        .into_iter()
        .map(|(id, row)| (format!(r#"{{"id":{id}}}"#), row))
        .collect();
    assert!(expected.len() > 100, "{}", expected.len());
    assert_eq!(replayed, expected);
    assert_eq!(audit_rows, changes);
}

#[test]
fn what_is_not_a_change_is_an_error() {
    let mut cdc = stage(json!({}));
    for (value, message) in [
        ("nope", "value is not a JSON object"),
        ("[]", "value is not a JSON object"),
        ("null", "value is not a JSON object"),
        (r#"{"op":"c""#, "value is not JSON"),
        (r#"{"op":"c"} x"#, "value is not JSON"),
        (r#"{"op":1}"#, "bad envelope: invalid type: integer `1`"),
        (
            r#"{"op":"c","after":{"id":1},"ts_ms":"x"}"#,
            "bad envelope: invalid type: string",
        ),
        (r#"{"after":{"id":1}}"#, "the envelope has no `op`"),
        (r#"{"payload":null}"#, "the envelope has no `op`"),
        (r#"{"payload":[1]}"#, "`payload` is not a JSON object"),
        (r#"{"op":"t"}"#, "unknown op `t` (expected c, u, d or r)"),
        (r#"{"op":"c"}"#, "op `c` has no `after` row"),
        (
            r#"{"op":"u","before":{"id":1},"after":null}"#,
            "op `u` has no `after` row",
        ),
        (
            r#"{"op":"d","after":{"id":1}}"#,
            "op `d` has no `before` row",
        ),
        (
            r#"{"op":"c","after":[1]}"#,
            "`after` is not a JSON object or null",
        ),
        (
            r#"{"op":"c","after":{"name":"x"}}"#,
            "the `after` row has no key column `id`",
        ),
        (
            r#"{"op":"d","before":{"id":null}}"#,
            "key column `id` is null in the `before` row",
        ),
        (
            r#"{"op":"c","after":{"id":1},"source":5}"#,
            "`source` is not a JSON object",
        ),
        (
            r#"{"op":"c","after":{"id":1},"source":{"ts_ms":"x"}}"#,
            "`source` is not a JSON object",
        ),
    ] {
        let err = run(&mut cdc, value, &[]).unwrap_err();
        assert!(err.starts_with(message), "{value}: {err}");
    }
}

#[test]
fn bad_settings_are_refused_with_the_reason() {
    for (config, message) in [
        (
            json!({"key": []}),
            "key: name at least one primary key column",
        ),
        (json!({"key": [""]}), "key: a column name cannot be empty"),
        (
            json!({"key": ["id", "id"]}),
            "key: column `id` is named twice",
        ),
        (json!({"key": "id"}), "bad cdc config: invalid type: string"),
        (
            json!({"keys": ["id"]}),
            "bad cdc config: unknown field `keys`",
        ),
    ] {
        let err = Cdc::init(&config.to_string()).unwrap_err();
        assert!(err.starts_with(message), "{config}: {err}");
    }
    assert_eq!(stage(json!({})).key_columns, vec!["id".to_string()]);
}
