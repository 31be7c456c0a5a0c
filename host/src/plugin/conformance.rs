//! `weir plugin test`: runs a plugin against golden vectors and reports every difference.
//!
//! A folder of cases, one JSON file each, run in file-name order. Every case starts a fresh
//! instance (empty state, no timers), calls `init` with the case's config, then plays its steps:
//! a batch to `process` or a watermark to advance, each followed by what the plugin must have
//! produced. The same vectors run against the same plugin written in any language, so a
//! plugin's behaviour is pinned by data, not by its source. The format is described in
//! `docs/plugins.md`.

use std::{
    collections::{BTreeMap, HashSet},
    fmt::{self, Write as _},
    fs,
    path::{Path, PathBuf},
};

use serde::{Deserialize, de};

use super::{
    Limits, Plugin, StageRunner,
    bindings::{Batch, Header, InputRecord, OutputBatch, Span},
};

/// One case file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// What the case checks, for a person reading the report.
    #[serde(default)]
    pub description: String,
    /// The stage's `config:`, as a JSON value (default `{}`).
    #[serde(default = "empty_object")]
    pub config: serde_json::Value,
    /// `init` must fail with a message starting with this; the case then has no steps.
    #[serde(default)]
    pub init_error: Option<String>,
    /// Named outputs `init` must declare, in order (default: none).
    #[serde(default)]
    pub outputs: Vec<String>,
    /// What to feed the stage, in order.
    #[serde(default)]
    pub steps: Vec<Step>,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

/// One call into the stage and what it must return: exactly one of `process` or `watermark`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// A batch for `process`.
    #[serde(default)]
    pub process: Option<BatchSpec>,
    /// An event time for `on-watermark`; the host hands over the timers due by then.
    #[serde(default)]
    pub watermark: Option<i64>,
    /// What the call must produce.
    #[serde(default)]
    pub expect: Expect,
}

/// A batch, with defaults for what a case does not care about.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchSpec {
    /// Source stream (default `test`).
    #[serde(default = "default_topic")]
    pub topic: String,
    /// Source partition (default 0).
    #[serde(default)]
    pub partition: i32,
    /// Processing time the host reports (default 0).
    #[serde(default)]
    pub processing_time_ms: i64,
    /// The records.
    pub records: Vec<RecordSpec>,
}

fn default_topic() -> String {
    "test".into()
}

/// An input record.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordSpec {
    /// Key (default: none).
    #[serde(default)]
    pub key: Option<Bytes>,
    /// Value.
    pub value: Bytes,
    /// Event time (default 0).
    #[serde(default)]
    pub timestamp_ms: i64,
    /// Offset (default: the record's index in the batch).
    #[serde(default)]
    pub offset: Option<i64>,
    /// Headers (default: none).
    #[serde(default)]
    pub headers: Vec<HeaderSpec>,
}

/// A record header.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HeaderSpec {
    /// Name.
    pub name: String,
    /// Value.
    pub value: Bytes,
}

/// Bytes written as UTF-8 text (`"abc"`) or, for anything else, as `{"hex": "00ff"}`.
#[derive(Clone, PartialEq, Eq)]
pub struct Bytes(pub Vec<u8>);

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match std::str::from_utf8(&self.0) {
            Ok(text) => write!(f, "{text:?}"),
            Err(_) => write!(f, "hex {}", hex::encode(&self.0)),
        }
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Text(String),
            Hex { hex: String },
        }
        match Form::deserialize(d).map_err(|_| {
            de::Error::custom("expected bytes: a string (UTF-8 text) or {\"hex\": \"…\"}")
        })? {
            Form::Text(text) => Ok(Bytes(text.into_bytes())),
            Form::Hex { hex } => hex::decode(&hex)
                .map(Bytes)
                .map_err(|e| de::Error::custom(format!("bad hex `{hex}`: {e}"))),
        }
    }
}

/// What one call must produce. Every output record is compared in order and in full.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The output records, in order (default: none).
    #[serde(default)]
    pub records: Vec<ExpectedRecord>,
    /// Per-record errors, by input index (default: none).
    #[serde(default)]
    pub errors: Vec<ExpectedError>,
    /// The stage's whole keyed state after the call, `[key, value]` in key order, if the case
    /// checks it.
    #[serde(default)]
    pub state: Option<Vec<(Bytes, Bytes)>>,
    /// The registered timers after the call, `[time_ms, key]` in time order, if checked.
    #[serde(default)]
    pub timers: Option<Vec<(i64, Bytes)>>,
}

/// An output record. Exactly one of `value` (byte for byte) or `json` (the value parsed as
/// JSON must equal this; member order and spacing are free, a key twice is not).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedRecord {
    /// `default` or one of the stage's named outputs (default `default`).
    #[serde(default = "default_output")]
    pub output: String,
    /// Index of the input record it derives from, or null (required).
    pub derived_from: Option<u32>,
    /// Key (default: none).
    #[serde(default)]
    pub key: Option<Bytes>,
    /// The exact value.
    #[serde(default)]
    pub value: Option<Bytes>,
    /// The value as JSON.
    #[serde(default)]
    pub json: Option<serde_json::Value>,
    /// Event time (required).
    pub timestamp_ms: i64,
    /// Headers (default: none).
    #[serde(default)]
    pub headers: Vec<HeaderSpec>,
}

fn default_output() -> String {
    "default".into()
}

/// A per-record error: the index of the failing input and how its message starts (the rest is
/// free, so that each language may word the detail its own way).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedError {
    /// Index of the input record.
    pub index: u32,
    /// The start of the message.
    pub message: String,
}

/// A case file that could not be read or makes no sense, with where.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct CaseError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong, with line and column when the JSON parser knows them.
    pub message: String,
}

/// Reads every `*.json` case in `dir`, in file-name order.
pub fn load_cases(dir: &Path) -> Result<Vec<(String, Case)>, CaseError> {
    let error = |path: &Path, message: String| CaseError {
        path: path.into(),
        message,
    };
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| error(dir, format!("cannot read the cases folder: {e}")))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(error(dir, "no case files (*.json) here".into()));
    }
    files
        .into_iter()
        .map(|path| {
            let text = fs::read_to_string(&path).map_err(|e| error(&path, e.to_string()))?;
            let case: Case =
                serde_json::from_str(&text).map_err(|e| error(&path, e.to_string()))?;
            check(&case).map_err(|m| error(&path, m))?;
            let name = path.file_stem().unwrap_or_default().to_string_lossy();
            Ok((name.into_owned(), case))
        })
        .collect()
}

/// What serde cannot say about a case: steps with one call each, records with one expectation.
fn check(case: &Case) -> Result<(), String> {
    if case.init_error.is_some() && !case.steps.is_empty() {
        return Err("a case with `init_error` has no steps".into());
    }
    for (i, step) in case.steps.iter().enumerate() {
        let n = i + 1;
        if step.process.is_some() == step.watermark.is_some() {
            return Err(format!(
                "step {n}: give exactly one of `process` or `watermark`"
            ));
        }
        for (j, r) in step.expect.records.iter().enumerate() {
            if r.value.is_some() == r.json.is_some() {
                return Err(format!(
                    "step {n}, expected record {j}: give exactly one of `value` or `json`"
                ));
            }
        }
    }
    Ok(())
}

/// How one case went.
#[derive(Debug)]
pub struct Outcome {
    /// The case's file name without `.json`.
    pub name: String,
    /// The case's description.
    pub description: String,
    /// Every difference found; empty when the case passed.
    pub differences: Vec<String>,
}

/// Runs every case against `plugin` with `limits`, one fresh stage per case.
pub fn run(plugin: &Plugin, limits: &Limits, cases: Vec<(String, Case)>) -> Vec<Outcome> {
    cases
        .into_iter()
        .map(|(name, case)| Outcome {
            differences: run_case(plugin, limits, &case),
            description: case.description,
            name,
        })
        .collect()
}

fn run_case(plugin: &Plugin, limits: &Limits, case: &Case) -> Vec<String> {
    let mut diffs = Vec::new();
    let runner = StageRunner::start(
        "test",
        plugin.clone(),
        case.config.to_string(),
        limits.clone(),
    );
    let mut runner = match (runner, &case.init_error) {
        (Err(e), Some(expected)) => {
            let message = match e {
                super::PluginError::Init { message, .. } => message,
                other => other.to_string(),
            };
            if !message.starts_with(expected.as_str()) {
                diffs.push(format!(
                    "init: expected an error starting {expected:?}, got {message:?}"
                ));
            }
            return diffs;
        }
        (Err(e), None) => return vec![format!("init failed: {e}")],
        (Ok(_), Some(expected)) => {
            return vec![format!(
                "init: expected an error starting {expected:?}, but init succeeded"
            )];
        }
        (Ok(runner), None) => runner,
    };
    if runner.outputs() != case.outputs {
        diffs.push(format!(
            "init: declared outputs {:?}, expected {:?}",
            runner.outputs(),
            case.outputs
        ));
    }
    for (i, step) in case.steps.iter().enumerate() {
        let (what, produced) = match (&step.process, step.watermark) {
            (Some(batch), _) => {
                let n = batch.records.len();
                let what = format!("step {} (process, {n} record{})", i + 1, plural(n));
                (
                    what,
                    runner.process(&batch.to_wit()).map_err(|e| e.to_string()),
                )
            }
            (None, Some(watermark)) => (
                format!("step {} (watermark {watermark})", i + 1),
                runner.on_watermark(watermark),
            ),
            (None, None) => unreachable!("checked when the case was loaded"),
        };
        let out = match produced {
            Ok(out) => out,
            Err(e) => {
                diffs.push(format!("{what}: the call failed: {e}"));
                break;
            }
        };
        let mut found = Vec::new();
        compare_output(&out, &step.expect, runner.outputs(), &mut found);
        if let Some(expected) = &step.expect.state {
            let actual: BTreeMap<Vec<u8>, Vec<u8>> = runner.keyed_state().into_iter().collect();
            let expected: BTreeMap<Vec<u8>, Vec<u8>> = expected
                .iter()
                .map(|(k, v)| (k.0.clone(), v.0.clone()))
                .collect();
            if actual != expected {
                found.push(format!(
                    "state: expected {}, got {}",
                    show_map(&expected),
                    show_map(&actual)
                ));
            }
        }
        if let Some(expected) = &step.expect.timers {
            let actual: Vec<(i64, Bytes)> = runner
                .timers()
                .map(|(t, k)| (t, Bytes(k.to_vec())))
                .collect();
            if &actual != expected {
                found.push(format!("timers: expected {expected:?}, got {actual:?}"));
            }
        }
        diffs.extend(found.into_iter().map(|d| format!("{what}: {d}")));
    }
    diffs
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn show_map(map: &BTreeMap<Vec<u8>, Vec<u8>>) -> String {
    let entries: Vec<String> = map
        .iter()
        .map(|(k, v)| format!("{:?}: {:?}", Bytes(k.clone()), Bytes(v.clone())))
        .collect();
    format!("{{{}}}", entries.join(", "))
}

impl BatchSpec {
    fn to_wit(&self) -> Batch {
        let mut data = Vec::new();
        let mut headers = Vec::new();
        let mut push = |bytes: &[u8]| {
            let start = data.len() as u32;
            data.extend_from_slice(bytes);
            Span {
                start,
                len: bytes.len() as u32,
            }
        };
        let records = self
            .records
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let key = r.key.as_ref().map(|k| push(&k.0));
                let value = push(&r.value.0);
                let first = headers.len() as u32;
                headers.extend(r.headers.iter().map(|h| Header {
                    name: h.name.clone(),
                    value: h.value.0.clone(),
                }));
                InputRecord {
                    key,
                    value,
                    timestamp_ms: r.timestamp_ms,
                    offset: r.offset.unwrap_or(i as i64),
                    headers: Span {
                        start: first,
                        len: r.headers.len() as u32,
                    },
                }
            })
            .collect();
        Batch {
            topic: self.topic.clone(),
            partition: self.partition,
            processing_time_ms: self.processing_time_ms,
            records,
            data,
            headers,
        }
    }
}

/// Compares what a call returned with what the case expects, record by record.
fn compare_output(out: &OutputBatch, expect: &Expect, outputs: &[String], diffs: &mut Vec<String>) {
    let slice = |span: Span, what: &str, i: usize, diffs: &mut Vec<String>| {
        let range = span.start as usize..span.start as usize + span.len as usize;
        match out.data.get(range) {
            Some(bytes) => Some(bytes.to_vec()),
            None => {
                diffs.push(format!(
                    "record {i}: its {what} span {}+{} is outside the batch's {} data bytes",
                    span.start,
                    span.len,
                    out.data.len()
                ));
                None
            }
        }
    };
    if out.records.len() != expect.records.len() {
        diffs.push(format!(
            "expected {} output record{}, got {}",
            expect.records.len(),
            plural(expect.records.len()),
            out.records.len()
        ));
    }
    for (i, (actual, wanted)) in out.records.iter().zip(&expect.records).enumerate() {
        let output = match actual.output {
            0 => Some("default"),
            n => outputs.get(n as usize - 1).map(String::as_str),
        };
        if output != Some(wanted.output.as_str()) {
            diffs.push(format!(
                "record {i}: went to output {}, expected `{}`",
                output.map_or_else(
                    || format!("#{} (undeclared)", actual.output),
                    |o| format!("`{o}`")
                ),
                wanted.output
            ));
        }
        if actual.derived_from != wanted.derived_from {
            diffs.push(format!(
                "record {i}: derived from {:?}, expected {:?}",
                actual.derived_from, wanted.derived_from
            ));
        }
        if actual.timestamp_ms != wanted.timestamp_ms {
            diffs.push(format!(
                "record {i}: timestamp {}, expected {}",
                actual.timestamp_ms, wanted.timestamp_ms
            ));
        }
        let key = match actual.key {
            Some(span) => slice(span, "key", i, diffs).map(Some),
            None => Some(None),
        };
        if let Some(key) = key
            && key.as_deref() != wanted.key.as_ref().map(|k| &k.0[..])
        {
            diffs.push(format!(
                "record {i}: key {:?}, expected {:?}",
                key.map(Bytes),
                wanted.key
            ));
        }
        if let Some(value) = slice(actual.value, "value", i, diffs) {
            compare_value(i, &value, wanted, diffs);
        }
        let range = actual.headers.start as usize
            ..actual.headers.start as usize + actual.headers.len as usize;
        match out.headers.get(range) {
            Some(headers) => {
                let headers: Vec<HeaderSpec> = headers
                    .iter()
                    .map(|h| HeaderSpec {
                        name: h.name.clone(),
                        value: Bytes(h.value.clone()),
                    })
                    .collect();
                if headers != wanted.headers {
                    diffs.push(format!(
                        "record {i}: headers {headers:?}, expected {:?}",
                        wanted.headers
                    ));
                }
            }
            None => diffs.push(format!(
                "record {i}: its headers span is outside the batch's {} headers",
                out.headers.len()
            )),
        }
    }
    for extra in out.records.iter().skip(expect.records.len()) {
        let value = out
            .data
            .get(extra.value.start as usize..(extra.value.start + extra.value.len) as usize)
            .map(|v| Bytes(v.to_vec()));
        diffs.push(format!("unexpected output record {value:?}"));
    }
    compare_errors(out, expect, diffs);
}

fn compare_value(i: usize, value: &[u8], wanted: &ExpectedRecord, diffs: &mut Vec<String>) {
    if let Some(exact) = &wanted.value {
        if value != exact.0.as_slice() {
            diffs.push(format!(
                "record {i}: value differs\n           expected {exact:?}\n           got      {:?}",
                Bytes(value.to_vec())
            ));
        }
        return;
    }
    let Some(json) = &wanted.json else {
        return;
    };
    match parse_strict(value) {
        Ok(actual) if &actual == json => {}
        Ok(actual) => diffs.push(format!(
            "record {i}: JSON value differs\n           expected {json}\n           got      {actual}"
        )),
        Err(e) => diffs.push(format!(
            "record {i}: value is not the JSON expected ({e}): {:?}",
            Bytes(value.to_vec())
        )),
    }
}

fn compare_errors(out: &OutputBatch, expect: &Expect, diffs: &mut Vec<String>) {
    let mut actual: Vec<(u32, &str)> = out
        .errors
        .iter()
        .map(|e| (e.index, e.message.as_str()))
        .collect();
    actual.sort_by_key(|(index, _)| *index);
    let mut wanted: Vec<&ExpectedError> = expect.errors.iter().collect();
    wanted.sort_by_key(|e| e.index);
    let mut a = actual.iter().peekable();
    let mut w = wanted.iter().peekable();
    loop {
        match (a.peek(), w.peek()) {
            (None, None) => break,
            (Some((index, message)), Some(e)) if *index == e.index => {
                if !message.starts_with(e.message.as_str()) {
                    diffs.push(format!(
                        "error for record {index}: {message:?} does not start with {:?}",
                        e.message
                    ));
                }
                a.next();
                w.next();
            }
            (Some((index, message)), next) if next.is_none_or(|e| *index < e.index) => {
                diffs.push(format!("unexpected error for record {index}: {message:?}"));
                a.next();
            }
            (_, Some(e)) => {
                diffs.push(format!(
                    "expected an error for record {} starting {:?}, got none",
                    e.index, e.message
                ));
                w.next();
            }
            (Some(_), None) => {
                unreachable!("the guard above takes every error when none is expected")
            }
        }
    }
}

/// Parses one JSON value, refusing an object that has a key twice (serde_json would keep the
/// last one silently, and a plugin that writes a key twice is wrong whatever a reader does).
pub fn parse_strict(bytes: &[u8]) -> Result<serde_json::Value, String> {
    struct Strict(serde_json::Value);

    impl<'de> Deserialize<'de> for Strict {
        fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(StrictVisitor)
        }
    }

    struct StrictVisitor;

    impl<'de> de::Visitor<'de> for StrictVisitor {
        type Value = Strict;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_bool<E>(self, v: bool) -> Result<Strict, E> {
            Ok(Strict(v.into()))
        }
        fn visit_i64<E>(self, v: i64) -> Result<Strict, E> {
            Ok(Strict(v.into()))
        }
        fn visit_u64<E>(self, v: u64) -> Result<Strict, E> {
            Ok(Strict(v.into()))
        }
        fn visit_f64<E>(self, v: f64) -> Result<Strict, E> {
            Ok(Strict(v.into()))
        }
        fn visit_str<E>(self, v: &str) -> Result<Strict, E> {
            Ok(Strict(v.into()))
        }
        fn visit_string<E>(self, v: String) -> Result<Strict, E> {
            Ok(Strict(v.into()))
        }
        fn visit_unit<E>(self) -> Result<Strict, E> {
            Ok(Strict(serde_json::Value::Null))
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
            let mut items = Vec::new();
            while let Some(Strict(item)) = seq.next_element()? {
                items.push(item);
            }
            Ok(Strict(items.into()))
        }
        fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
            let mut object = serde_json::Map::new();
            let mut seen = HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                let Strict(value) = map.next_value()?;
                if !seen.insert(key.clone()) {
                    return Err(de::Error::custom(format!("key `{key}` appears twice")));
                }
                object.insert(key, value);
            }
            Ok(Strict(object.into()))
        }
    }

    serde_json::from_slice::<Strict>(bytes)
        .map(|s| s.0)
        .map_err(|e| e.to_string())
}

/// The report `weir plugin test` prints: one line per case, the differences under failures,
/// and a summary line.
pub fn report(outcomes: &[Outcome]) -> String {
    let mut text = String::new();
    for o in outcomes {
        let status = if o.differences.is_empty() {
            "ok  "
        } else {
            "FAIL"
        };
        let _ = writeln!(text, "  {status} {}  {}", o.name, o.description);
        for d in &o.differences {
            let _ = writeln!(text, "         {d}");
        }
    }
    let failed = outcomes
        .iter()
        .filter(|o| !o.differences.is_empty())
        .count();
    let _ = writeln!(
        text,
        "{} case{}: {} passed, {failed} failed",
        outcomes.len(),
        plural(outcomes.len()),
        outcomes.len() - failed
    );
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_parsing_refuses_a_key_twice_at_any_depth() {
        assert!(parse_strict(br#"{"a":1,"b":{"c":1}}"#).is_ok());
        let err = parse_strict(br#"{"a":1,"b":{"c":1,"c":2}}"#).unwrap_err();
        assert!(err.contains("key `c` appears twice"), "{err}");
        assert!(parse_strict(b"{\"a\":1} x").is_err());
    }

    #[test]
    fn big_integers_and_decimals_compare_by_value() {
        let exact = parse_strict(b"{\"n\":12345678901234567890,\"d\":1.10}").unwrap();
        assert_eq!(
            exact,
            parse_strict(b"{\"d\":1.1,\"n\":12345678901234567890}").unwrap()
        );
        assert_ne!(
            exact,
            parse_strict(b"{\"d\":1.1,\"n\":12345678901234567000}").unwrap()
        );
    }

    #[test]
    fn bytes_read_as_text_or_hex() {
        let b: Bytes = serde_json::from_str(r#"{"hex":"00ff"}"#).unwrap();
        assert_eq!(b.0, vec![0, 0xff]);
        let b: Bytes = serde_json::from_str(r#""é""#).unwrap();
        assert_eq!(b.0, "é".as_bytes());
        assert!(serde_json::from_str::<Bytes>(r#"{"hex":"0"}"#).is_err());
        assert!(serde_json::from_str::<Bytes>("3").is_err());
    }

    #[test]
    fn case_files_that_make_no_sense_are_refused_with_the_reason() {
        let case: Case =
            serde_json::from_str(r#"{"steps":[{"process":{"records":[]},"watermark":5}]}"#)
                .unwrap();
        assert_eq!(
            check(&case).unwrap_err(),
            "step 1: give exactly one of `process` or `watermark`"
        );
        let err = serde_json::from_str::<Case>(r#"{"stepz":[]}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `stepz`"), "{err}");
        assert!(err.to_string().contains("line 1 column"), "{err}");
    }

    fn batch(records: &[(u32, &str)], errors: &[(u32, &str)]) -> OutputBatch {
        use super::super::bindings::{OutputRecord, RecordError};
        let mut data = Vec::new();
        let records = records
            .iter()
            .map(|(from, value)| {
                let start = data.len() as u32;
                data.extend_from_slice(value.as_bytes());
                OutputRecord {
                    output: 0,
                    derived_from: Some(*from),
                    key: None,
                    value: Span {
                        start,
                        len: value.len() as u32,
                    },
                    timestamp_ms: 7,
                    headers: Span { start: 0, len: 0 },
                }
            })
            .collect();
        OutputBatch {
            records,
            data,
            headers: Vec::new(),
            errors: errors
                .iter()
                .map(|(index, message)| RecordError {
                    index: *index,
                    message: message.to_string(),
                })
                .collect(),
        }
    }

    fn expect(json: &str) -> Expect {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn every_kind_of_difference_is_reported() {
        let out = batch(
            &[(0, r#"{"a":1}"#), (2, "x")],
            &[(1, "value is not JSON: eof")],
        );
        let mut diffs = Vec::new();
        compare_output(
            &out,
            &expect(
                r#"{"records":[{"derived_from":0,"json":{"a":1},"timestamp_ms":7},
                              {"derived_from":2,"value":"x","timestamp_ms":7}],
                    "errors":[{"index":1,"message":"value is not JSON"}]}"#,
            ),
            &[],
            &mut diffs,
        );
        assert_eq!(diffs, Vec::<String>::new());

        let mut diffs = Vec::new();
        compare_output(
            &out,
            &expect(
                r#"{"records":[{"derived_from":1,"json":{"a":2},"timestamp_ms":8,"key":"k"}],
                    "errors":[{"index":1,"message":"value is not a JSON object"},
                              {"index":3,"message":"x"}]}"#,
            ),
            &[],
            &mut diffs,
        );
        let all = diffs.join("\n");
        for part in [
            "expected 1 output record, got 2",
            "record 0: derived from Some(0), expected Some(1)",
            "record 0: timestamp 7, expected 8",
            "record 0: key None, expected Some(\"k\")",
            "record 0: JSON value differs",
            "unexpected output record Some(\"x\")",
            "does not start with \"value is not a JSON object\"",
            "expected an error for record 3",
        ] {
            assert!(all.contains(part), "missing `{part}` in:\n{all}");
        }
    }
}
