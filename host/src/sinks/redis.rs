//! The `redis` sink: the latest value per key (such as `latest:BTCUSDT`), set exactly once per
//! checkpoint.
//!
//! A record's Redis key comes from a [`Template`] (`latest:{symbol}`: fields of its JSON value,
//! or `{key}`, its key); its value is the record's value bytes as they are, or another template.
//! A record with the header `weir-op: delete` deletes its key. A record a template cannot be
//! filled from (no such field, no key, a value that is not a JSON object) goes to the dead
//! letters.
//!
//! Exactly once, in the two steps of the checkpoint protocol:
//! - **pre-commit** stages the checkpoint's final value of each key in the hash
//!   `weir:staging:PIPELINE:SINK:CHECKPOINT` (field: the key; value: `s` and the bytes to set,
//!   or `d` to delete): durable as far as Redis is, and not under the keys. Writes wait in memory
//!   first, last write per key, and are staged whenever [`FLUSH_KEYS`] keys pile up and at the
//!   barrier; a later `HSET` of a field replaces the earlier, so the last write still wins.
//! - **commit**, once the manifest is stored, is one Lua script, which Redis runs atomically: if
//!   `weir:checkpoint:PIPELINE:SINK` holds this checkpoint or a later one it does nothing
//!   (recovery repeating a commit); otherwise it sets and deletes the staged keys, records the
//!   checkpoint and deletes the hash.
//!
//! On start, recovery repeats the newest manifest's commit and then deletes the sink's staging
//! hashes: none belongs to a stored manifest any more. The script touches keys it is not given
//! as `KEYS`, so the sink needs a standalone Redis (not a cluster).

use std::{collections::HashMap, time::Duration};

use redis::{Script, aio::ConnectionManager};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Rejected, SinkError};
use crate::{
    checkpoint::{Manifest, Pending},
    pipeline::spec::RedisSinkSpec,
    record::Batch,
};

/// Distinct keys kept in memory before they are staged.
pub const FLUSH_KEYS: usize = 10_000;

/// Fields per `HSET` when staging.
const STAGE_CHUNK: usize = 1_000;

/// Applies a staged checkpoint. `KEYS[1]` the progress key, `KEYS[2]` the staging hash;
/// `ARGV[1]` the checkpoint, `ARGV[2]` the expiry in ms (0: none). Returns the keys applied, or
/// -1 when the checkpoint (or a later one) is applied already.
const APPLY: &str = r"
local applied = tonumber(redis.call('GET', KEYS[1]) or '0')
local id = tonumber(ARGV[1])
if applied >= id then
  return -1
end
local ttl = tonumber(ARGV[2])
local staged = redis.call('HGETALL', KEYS[2])
for i = 1, #staged, 2 do
  local key, entry = staged[i], staged[i + 1]
  if string.sub(entry, 1, 1) == 'd' then
    redis.call('DEL', key)
  elseif ttl > 0 then
    redis.call('SET', key, string.sub(entry, 2), 'PX', ttl)
  else
    redis.call('SET', key, string.sub(entry, 2))
  end
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
return #staged / 2
";

/// A key or value template: text with `{FIELD}` (a top-level field of the record's JSON value)
/// and `{key}` (the record's key) in it; `{{` and `}}` stand for braces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    /// Text and placeholders, in order.
    parts: Vec<Part>,
}

/// A piece of a template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    /// Text as it is.
    Text(String),
    /// A field of the JSON value.
    Field(String),
    /// The record's key.
    Key,
}

impl Template {
    /// Parses a template; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some('{') | None => {
                                return Err(format!(
                                    "`{text}` opens a `{{` it does not close: write `{{FIELD}}`, or `{{{{` for a brace"
                                ));
                            }
                            Some(c) => name.push(c),
                        }
                    }
                    if name.trim().is_empty() {
                        return Err(format!(
                            "`{text}` has an empty `{{}}`: name a field, or `{{key}}` for the record's key"
                        ));
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut literal)));
                    }
                    parts.push(if name == "key" {
                        Part::Key
                    } else {
                        Part::Field(name)
                    });
                }
                '}' => {
                    return Err(format!(
                        "`{text}` has a `}}` that closes nothing: write `}}}}` for a brace"
                    ));
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        Ok(Template { parts })
    }

    /// Whether it names a field of the JSON value.
    pub fn reads_json(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Field(_)))
    }

    /// Fills the template for a record with key `key` and JSON value `value` (parsed when the
    /// template reads JSON); the error says why the record does not fill it.
    fn render(
        &self,
        key: Option<&[u8]>,
        value: Option<&serde_json::Map<String, Value>>,
    ) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.extend_from_slice(text.as_bytes()),
                Part::Key => out.extend_from_slice(key.ok_or("the record has no key")?),
                Part::Field(name) => match value.and_then(|v| v.get(name)) {
                    None | Some(Value::Null) => {
                        return Err(format!("field `{name}` is missing or null"));
                    }
                    Some(Value::String(s)) => out.extend_from_slice(s.as_bytes()),
                    Some(other) => out.extend_from_slice(other.to_string().as_bytes()),
                },
            }
        }
        Ok(out)
    }
}

/// Checks a server URL without connecting.
pub fn check_url(url: &str) -> Result<(), String> {
    let shown = super::redact(url);
    if url.starts_with("rediss://") {
        return Err(format!(
            "`{shown}`: this build of weir speaks to Redis without TLS (redis://)"
        ));
    }
    if !(url.starts_with("redis://") || url.starts_with("redis+unix://")) {
        return Err(format!(
            "`{shown}` is not a Redis URL: expected redis://[:PASSWORD@]HOST[:PORT][/DB]"
        ));
    }
    redis::Client::open(url)
        .map(|_| ())
        .map_err(|e| format!("invalid Redis URL `{shown}`: {e}"))
}

/// The hash a checkpoint's values wait in.
fn staging_key(pipeline: &str, sink: &str, checkpoint: u64) -> String {
    format!("weir:staging:{pipeline}:{sink}:{checkpoint}")
}

/// The key that holds the last checkpoint applied.
fn progress_key(pipeline: &str, sink: &str) -> String {
    format!("weir:checkpoint:{pipeline}:{sink}")
}

/// A checkpoint's pending commit, as the manifest holds it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RedisCommit {
    /// The hash its values are staged in.
    pub staging: String,
    /// Keys staged.
    pub keys: u64,
}

/// The sink.
pub struct RedisSink {
    /// The connection, shared with the committer (it reconnects after an error).
    conn: ConnectionManager,
    /// The key template as written, for the summary.
    key_template: String,
    /// Each record's key.
    key: Template,
    /// Each record's value; its value bytes as they are without one.
    value: Option<Template>,
    /// Whether a template reads the JSON value, so it is parsed.
    parse: bool,
    /// The pipeline's name, in the staging hash's name.
    pipeline: String,
    /// The sink's name, in the staging hash's name.
    sink: String,
    /// The checkpoint the writes belong to.
    epoch: u64,
    /// Writes not staged yet: key → value to set, or `None` to delete. The last one wins.
    pending: HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// Whether anything was staged for the current checkpoint.
    staged: bool,
    /// Keys staged so far (each key once per checkpoint, applied with it), for the summary.
    pub keys_written: u64,
}

/// Applies a Redis sink's checkpoints.
pub struct RedisCommitter {
    /// The connection, shared with the sink.
    conn: ConnectionManager,
    /// The sink's name, in the progress key's name.
    sink: String,
    /// Expiry of the keys set, in ms (0: none).
    ttl_ms: u64,
    /// The script, with its hash (sent as `EVALSHA`, loaded on first use).
    apply: Script,
}

/// Turns a Redis error into a sink error that says what was being done.
fn io(what: &str) -> impl Fn(redis::RedisError) -> SinkError + '_ {
    move |e| SinkError::Io(format!("redis: {what}: {e}"))
}

/// Connects and returns the sink and its committer.
pub async fn open(
    spec: &RedisSinkSpec,
    pipeline: &str,
    epoch: u64,
) -> Result<(RedisSink, RedisCommitter), SinkError> {
    let client = redis::Client::open(spec.url.value.as_str()).map_err(io("invalid URL"))?;
    // A commit script over a large checkpoint may run for a while; the client's default is
    // half a second.
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(10)))
        .set_response_timeout(Some(Duration::from_secs(120)));
    let conn = client
        .get_connection_manager_with_config(config)
        .await
        .map_err(io(&format!(
            "connecting to {}",
            super::redact(&spec.url.value)
        )))?;
    let key = Template::parse(&spec.key.value).map_err(SinkError::Io)?;
    let value = spec
        .value
        .as_ref()
        .map(|v| Template::parse(&v.value))
        .transpose()
        .map_err(SinkError::Io)?;
    let parse = key.reads_json() || value.as_ref().is_some_and(Template::reads_json);
    let sink = RedisSink {
        conn: conn.clone(),
        key_template: spec.key.value.clone(),
        key,
        value,
        parse,
        pipeline: pipeline.to_string(),
        sink: spec.sink.clone(),
        epoch,
        pending: HashMap::new(),
        staged: false,
        keys_written: 0,
    };
    let committer = RedisCommitter {
        conn,
        sink: spec.sink.clone(),
        ttl_ms: spec
            .ttl
            .as_ref()
            .map_or(0, |t| t.value.0.as_millis().max(1) as u64),
        apply: Script::new(APPLY),
    };
    Ok((sink, committer))
}

impl RedisSink {
    /// The key template, for the summary.
    pub fn key_template(&self) -> &str {
        &self.key_template
    }

    /// Reads a batch into pending writes; returns the records that fill no key.
    pub async fn write(&mut self, batch: &Batch) -> Result<Rejected, SinkError> {
        let mut rejected = Vec::new();
        for i in 0..batch.len() {
            match self.entry(batch, i) {
                Ok((key, value)) => {
                    self.pending.insert(key, value);
                }
                Err(reason) => rejected.push((i, reason)),
            }
        }
        if self.pending.len() >= FLUSH_KEYS {
            self.flush().await?;
        }
        Ok(rejected)
    }

    /// Record `i`'s key and what becomes of it.
    #[allow(clippy::type_complexity)]
    fn entry(&self, batch: &Batch, i: usize) -> Result<(Vec<u8>, Option<Vec<u8>>), String> {
        let json = if self.parse {
            Some(
                serde_json::from_slice::<serde_json::Map<String, Value>>(batch.value(i))
                    .map_err(|e| format!("the value is not a JSON object: {e}"))?,
            )
        } else {
            None
        };
        let key = self.key.render(batch.key(i), json.as_ref())?;
        if super::is_delete(batch, i) {
            return Ok((key, None));
        }
        let value = match &self.value {
            None => batch.value(i).to_vec(),
            Some(t) => t.render(batch.key(i), json.as_ref())?,
        };
        Ok((key, Some(value)))
    }

    /// Stages the pending writes in the current checkpoint's hash.
    async fn flush(&mut self) -> Result<(), SinkError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let hash = staging_key(&self.pipeline, &self.sink, self.epoch);
        let entries: Vec<(Vec<u8>, Vec<u8>)> = self
            .pending
            .drain()
            .map(|(key, value)| {
                let entry = match value {
                    Some(mut v) => {
                        v.insert(0, b's');
                        v
                    }
                    None => b"d".to_vec(),
                };
                (key, entry)
            })
            .collect();
        let mut pipe = redis::pipe();
        for chunk in entries.chunks(STAGE_CHUNK) {
            pipe.hset_multiple(&hash, chunk).ignore();
        }
        pipe.query_async::<()>(&mut self.conn)
            .await
            .map_err(io(&format!("staging into {hash}")))?;
        self.staged = true;
        Ok(())
    }

    /// Stages what is still pending; returns the checkpoint's pending commit (none when the
    /// checkpoint wrote nothing).
    pub async fn pre_commit(&mut self, id: u64) -> Result<Pending, SinkError> {
        self.flush().await?;
        let mut commit = None;
        if self.staged {
            let staging = staging_key(&self.pipeline, &self.sink, self.epoch);
            let keys: u64 = redis::cmd("HLEN")
                .arg(&staging)
                .query_async(&mut self.conn)
                .await
                .map_err(io(&format!("counting {staging}")))?;
            self.keys_written += keys;
            commit = Some(
                serde_json::to_value(RedisCommit { staging, keys })
                    .map_err(|e| SinkError::Internal(e.to_string()))?,
            );
        }
        self.staged = false;
        self.epoch = id + 1;
        Ok(Pending {
            commit,
            files: 0,
            bytes: 0,
        })
    }
}

impl RedisCommitter {
    /// Applies checkpoint `manifest.checkpoint`'s staged values, unless it (or a later one) is
    /// applied already; atomically, in one script.
    pub async fn commit(&mut self, manifest: &Manifest, pending: &Value) -> Result<(), SinkError> {
        let commit: RedisCommit = serde_json::from_value(pending.clone())
            .map_err(|e| SinkError::Internal(format!("a redis pending commit: {e}")))?;
        let id = manifest.checkpoint;
        let progress = progress_key(&manifest.pipeline, &self.sink);
        let applied: i64 = self
            .apply
            .key(&progress)
            .key(&commit.staging)
            .arg(id)
            .arg(self.ttl_ms)
            .invoke_async(&mut self.conn)
            .await
            .map_err(io(&format!("committing checkpoint {id}")))?;
        if applied < 0 {
            tracing::info!(key = %progress, checkpoint = id, "already committed");
        } else if applied == 0 && commit.keys > 0 {
            tracing::warn!(
                staging = %commit.staging,
                checkpoint = id,
                "the staged values are gone (did Redis restart without persistence?); the checkpoint is recorded without them"
            );
        }
        Ok(())
    }

    /// On recovery, after the newest manifest's commit was repeated: deletes the sink's staging
    /// hashes (none belongs to a stored manifest any more) and returns how many. Refuses to go
    /// on when Redis has applied a checkpoint after `committed`, the newest manifest: the
    /// checkpoint store was reset, and new checkpoints would be skipped as already applied.
    pub async fn clean(&mut self, pipeline: &str, committed: u64) -> Result<usize, SinkError> {
        let progress = progress_key(pipeline, &self.sink);
        let applied: Option<u64> = redis::cmd("GET")
            .arg(&progress)
            .query_async(&mut self.conn)
            .await
            .map_err(io(&format!("reading {progress}")))?;
        if let Some(applied) = applied
            && applied > committed
        {
            return Err(SinkError::Io(format!(
                "redis: {progress} says checkpoint {applied} is applied, but the newest manifest is checkpoint {committed}: the checkpoint store was reset or is another one, and its checkpoints would be skipped as already applied. To start over, run: DEL {progress}"
            )));
        }
        // Pipeline and sink names are letters, digits, `-` and `_`: nothing a pattern reads.
        let pattern = format!("weir:staging:{pipeline}:{}:*", self.sink);
        let mut cursor = 0u64;
        let mut removed = 0;
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut self.conn)
                .await
                .map_err(io("listing staging hashes"))?;
            if !keys.is_empty() {
                let deleted: usize = redis::cmd("DEL")
                    .arg(&keys)
                    .query_async(&mut self.conn)
                    .await
                    .map_err(io("deleting staging hashes"))?;
                removed += deleted;
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(json: &str) -> serde_json::Map<String, Value> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn templates_fill_fields_and_the_key() {
        let t = Template::parse("latest:{s}:{key}").unwrap();
        assert!(t.reads_json());
        let value = object(r#"{"s":"BTCUSDT","p":"64000.5","n":3,"ok":true}"#);
        assert_eq!(
            t.render(Some(b"k1"), Some(&value)).unwrap(),
            b"latest:BTCUSDT:k1"
        );
        assert_eq!(
            Template::parse("{n}/{ok}")
                .unwrap()
                .render(None, Some(&value))
                .unwrap(),
            b"3/true"
        );
        assert_eq!(
            Template::parse("{{literal}}")
                .unwrap()
                .render(None, None)
                .unwrap(),
            b"{literal}"
        );
        assert!(!Template::parse("by-key:{key}").unwrap().reads_json());
        assert_eq!(
            t.render(None, Some(&value)).unwrap_err(),
            "the record has no key"
        );
        assert_eq!(
            t.render(Some(b"k"), Some(&object("{}"))).unwrap_err(),
            "field `s` is missing or null"
        );
    }

    #[test]
    fn bad_templates_say_what_is_wrong() {
        for bad in ["latest:{symbol", "{}", "a}b", "{a{b}"] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
        assert!(check_url("redis://127.0.0.1:6379").is_ok());
        assert!(check_url("http://127.0.0.1:6379").is_err());
    }
}
