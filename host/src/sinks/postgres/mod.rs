//! The `postgres` sink: rows upserted into a table by its key columns, exactly once per
//! checkpoint.
//!
//! Records are read into typed rows by the schema (the same [`RowEncoder`] as the `parquet`
//! sink); a record that does not fit, or lacks a key column, goes to the dead letters. A record
//! with the header `weir-op: delete` deletes the row its key columns name (read from its value);
//! any other record upserts: every column of the schema is set.
//!
//! Exactly once, in the two steps of the checkpoint protocol:
//! - **pre-commit** stages the checkpoint's writes in the table `weir_staging`, one row per
//!   write keyed by pipeline, sink, checkpoint and sequence number, the row as JSON: durable,
//!   and not in the target table. Writes wait in memory first, last write per key, and are
//!   staged whenever [`FLUSH_ROWS`] keys pile up and at the barrier.
//! - **commit**, once the manifest is stored, is one transaction: it locks the sink's row in
//!   `weir_sink_checkpoints`, and does nothing if that row holds this checkpoint or a later one
//!   (recovery repeating a commit). Otherwise it applies the last staged write of each key (by
//!   sequence number; `ON CONFLICT` cannot touch a row twice in one statement), deletes and
//!   upserts alike, records the checkpoint and deletes the staged rows.
//!
//! On start, recovery repeats the newest manifest's commit and then deletes every staged row of
//! the sink: none belongs to a stored manifest any more. The bookkeeping tables live in the
//! target table's schema and are created with it.
//!
//! `table` names the tables, builds the statements and creates or checks the tables;
//! `values` turns typed values into the JSON that is staged.

mod table;
mod values;

use std::{collections::HashMap, str::FromStr, sync::Arc, time::Duration};

use arrow_array::{Array, RecordBatch};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use table::{Target, literal, prepare};
pub use table::{check_url, parse_table, sql_type};

use super::{Rejected, SinkError, rows::RowEncoder};
use crate::{
    checkpoint::{Manifest, Pending},
    pipeline::spec::{ColumnSpec, PostgresSinkSpec},
    record::Routed,
};

/// Distinct keys kept in memory before they are staged.
pub const FLUSH_ROWS: usize = 10_000;

/// Rows per `INSERT` into the staging table.
const STAGE_CHUNK: usize = 5_000;

/// A checkpoint's pending commit, as the manifest holds it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PostgresCommit {
    /// The checkpoint number the rows were staged under (the checkpoint's own).
    pub staged_as: u64,
    /// Rows staged (the last write of each key per flush).
    pub rows: u64,
}

/// A write waiting to be staged.
struct Staged {
    /// Its place in the order of writes.
    seq: i64,
    /// A delete (the row holds the key columns only).
    deleted: bool,
    /// The row as a JSON object, column name to value.
    row: String,
}

/// The sink.
pub struct PostgresSink {
    /// Connections, shared with the committer.
    pool: PgPool,
    /// The table and the statements.
    target: Arc<Target>,
    /// Records to rows of every column (upserts).
    rows: RowEncoder,
    /// Records to rows of the key columns (deletes).
    keys: RowEncoder,
    /// Index of each key column among the schema's columns.
    key_columns: Vec<usize>,
    /// Names of the key columns.
    key_names: Vec<String>,
    /// The pipeline's name, which tags staged rows.
    pipeline: String,
    /// The sink's name, which tags staged rows.
    sink: String,
    /// The checkpoint the writes belong to.
    epoch: u64,
    /// Writes not staged yet, by key (as JSON text): the last one wins.
    pending: HashMap<String, Staged>,
    /// Number of the next write.
    next_seq: i64,
    /// Rows staged for the current checkpoint.
    staged: u64,
    /// Rows staged so far (each is applied with its checkpoint), for the summary.
    pub rows_written: u64,
}

/// Applies a Postgres sink's checkpoints.
pub struct PostgresCommitter {
    /// Connections, shared with the sink.
    pool: PgPool,
    /// The table and the statements.
    target: Arc<Target>,
    /// The sink's name, which tags staged rows and the progress row.
    sink: String,
}

/// Turns a database error into a sink error that says what was being done.
pub(super) fn io(what: &str) -> impl Fn(sqlx::Error) -> SinkError + '_ {
    move |e| SinkError::Io(format!("postgres: {what}: {e}"))
}

/// Connects, creates the bookkeeping tables and the target table if missing (or checks the one
/// there), and returns the sink and its committer.
pub async fn open(
    spec: &PostgresSinkSpec,
    pipeline: &str,
    epoch: u64,
) -> Result<(PostgresSink, PostgresCommitter), SinkError> {
    let url = match &spec.url {
        Some(url) => url.value.clone(),
        None => std::env::var("DATABASE_URL").map_err(|_| {
            SinkError::Io("postgres: the sink has no `url` and DATABASE_URL is not set".to_string())
        })?,
    };
    let options = PgConnectOptions::from_str(&url)
        .map_err(|e| SinkError::Io(format!("postgres: invalid URL: {e}")))?;
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(options)
        .await
        .map_err(io("connecting"))?;
    let (schema, name) = parse_table(&spec.table.value).map_err(SinkError::Io)?;
    let key: Vec<String> = spec.key.value.iter().map(|k| k.value.clone()).collect();
    let columns = &spec.schema.value;
    let target = prepare(&pool, schema, name, columns, &key).await?;
    let target = Arc::new(target);

    // Key columns may be missing from a record (it is then refused with a clear reason), so
    // both encoders read them as nullable.
    let nullable_keys: Vec<ColumnSpec> = columns
        .iter()
        .map(|c| {
            let mut c = c.clone();
            if key.contains(&c.name.value) {
                c.nullable = true;
            }
            c
        })
        .collect();
    let key_specs: Vec<ColumnSpec> = key
        .iter()
        .filter_map(|k| nullable_keys.iter().find(|c| &c.name.value == k).cloned())
        .collect();
    let key_columns = key
        .iter()
        .filter_map(|k| columns.iter().position(|c| &c.name.value == k))
        .collect();
    let sink = PostgresSink {
        pool: pool.clone(),
        target: target.clone(),
        rows: RowEncoder::new(&nullable_keys),
        keys: RowEncoder::new(&key_specs),
        key_columns,
        key_names: key.clone(),
        pipeline: pipeline.to_string(),
        sink: spec.sink.clone(),
        epoch,
        pending: HashMap::new(),
        next_seq: 0,
        staged: 0,
        rows_written: 0,
    };
    let committer = PostgresCommitter {
        pool,
        target,
        sink: spec.sink.clone(),
    };
    Ok((sink, committer))
}

impl PostgresSink {
    /// The table as `schema.name`, for the summary.
    pub fn table_name(&self) -> &str {
        &self.target.name
    }

    /// Reads a batch into pending writes; returns the records that do not fit.
    pub async fn write(&mut self, routed: Routed<'_>) -> Result<Rejected, SinkError> {
        let batch = routed.batch;
        let mut rejected = Vec::new();
        let (deletes, upserts): (Vec<usize>, Vec<usize>) =
            (0..batch.len()).partition(|&i| super::is_delete(batch, i));
        let mut writes = Vec::with_capacity(batch.len());
        for (indices, deleted) in [(upserts, false), (deletes, true)] {
            let encoder = if deleted { &self.keys } else { &self.rows };
            let before = rejected.len();
            let Some(rows) = encoder.decode(routed, &indices, &mut rejected)? else {
                continue;
            };
            let refused: std::collections::HashSet<usize> =
                rejected[before..].iter().map(|(i, _)| *i).collect();
            let good = indices.into_iter().filter(|i| !refused.contains(i));
            let key_columns: Vec<usize> = if deleted {
                (0..self.key_names.len()).collect()
            } else {
                self.key_columns.clone()
            };
            for (row, index) in good.enumerate() {
                match self.row_json(&rows, row, &key_columns) {
                    Ok((key, json)) => writes.push((index, key, deleted, json)),
                    Err(reason) => rejected.push((index, reason)),
                }
            }
        }
        // In the order of the batch, so the last write of a key is the last record; dead
        // letters too.
        writes.sort_unstable_by_key(|w| w.0);
        rejected.sort_unstable_by_key(|r| r.0);
        for (_, key, deleted, row) in writes {
            let seq = self.next_seq;
            self.next_seq += 1;
            self.pending.insert(key, Staged { seq, deleted, row });
        }
        if self.pending.len() >= FLUSH_ROWS {
            self.flush().await?;
        }
        Ok(rejected)
    }

    /// Row `row` as a JSON object, and its key as text; or why it cannot be written.
    fn row_json(
        &self,
        rows: &RecordBatch,
        row: usize,
        key_columns: &[usize],
    ) -> Result<(String, String), String> {
        let schema = rows.schema();
        let mut key = Vec::with_capacity(key_columns.len());
        for (n, &c) in key_columns.iter().enumerate() {
            let array = rows.column(c);
            if array.is_null(row) {
                return Err(format!(
                    "key column `{}` is missing or null",
                    self.key_names[n]
                ));
            }
            key.push(
                values::cell(array.as_ref(), row)
                    .map_err(|e| format!("key column `{}`: {e}", self.key_names[n]))?,
            );
        }
        let mut object = serde_json::Map::with_capacity(rows.num_columns());
        for (field, array) in schema.fields().iter().zip(rows.columns()) {
            let value = values::cell(array.as_ref(), row)
                .map_err(|e| format!("column `{}`: {e}", field.name()))?;
            object.insert(field.name().clone(), value);
        }
        Ok((
            Value::Array(key).to_string(),
            Value::Object(object).to_string(),
        ))
    }

    /// Stages the pending writes under the current checkpoint.
    async fn flush(&mut self) -> Result<(), SinkError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut writes: Vec<Staged> = self.pending.drain().map(|(_, w)| w).collect();
        writes.sort_unstable_by_key(|w| w.seq);
        for chunk in writes.chunks(STAGE_CHUNK) {
            let seqs: Vec<i64> = chunk.iter().map(|w| w.seq).collect();
            let deleted: Vec<bool> = chunk.iter().map(|w| w.deleted).collect();
            let rows: Vec<&str> = chunk.iter().map(|w| w.row.as_str()).collect();
            sqlx::query(&self.target.stage)
                .bind(&self.pipeline)
                .bind(&self.sink)
                .bind(self.epoch as i64)
                .bind(seqs)
                .bind(deleted)
                .bind(rows)
                .execute(&self.pool)
                .await
                .map_err(io("staging rows"))?;
        }
        self.staged += writes.len() as u64;
        Ok(())
    }

    /// Stages what is still pending; returns the checkpoint's pending commit (none when the
    /// checkpoint wrote nothing).
    pub async fn pre_commit(&mut self, id: u64) -> Result<Pending, SinkError> {
        self.flush().await?;
        let commit = (self.staged > 0).then_some(PostgresCommit {
            staged_as: self.epoch,
            rows: self.staged,
        });
        self.rows_written += self.staged;
        self.staged = 0;
        self.epoch = id + 1;
        Ok(Pending {
            commit: commit
                .map(|c| serde_json::to_value(c).map_err(|e| SinkError::Internal(e.to_string())))
                .transpose()?,
            files: 0,
            bytes: 0,
        })
    }
}

impl PostgresCommitter {
    /// Applies checkpoint `manifest.checkpoint`'s staged rows, unless the table has it (or a
    /// later one) already; in one transaction with its progress row.
    pub async fn commit(&mut self, manifest: &Manifest, pending: &Value) -> Result<(), SinkError> {
        let commit: PostgresCommit = serde_json::from_value(pending.clone())
            .map_err(|e| SinkError::Internal(format!("a postgres pending commit: {e}")))?;
        let (pipeline, id) = (manifest.pipeline.as_str(), manifest.checkpoint as i64);
        let target = &self.target;
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(io("starting a transaction"))?;
        // The row must exist for FOR UPDATE to lock it: a concurrent commit then waits here.
        sqlx::query(&format!(
            "INSERT INTO {} (pipeline, sink, checkpoint, target) VALUES ($1, $2, 0, $3) \
             ON CONFLICT (pipeline, sink) DO NOTHING",
            target.progress
        ))
        .bind(pipeline)
        .bind(&self.sink)
        .bind(&target.name)
        .execute(&mut *tx)
        .await
        .map_err(io("recording progress"))?;
        let applied: i64 = sqlx::query_scalar(&format!(
            "SELECT checkpoint FROM {} WHERE pipeline = $1 AND sink = $2 FOR UPDATE",
            target.progress
        ))
        .bind(pipeline)
        .bind(&self.sink)
        .fetch_one(&mut *tx)
        .await
        .map_err(io("reading progress"))?;
        if applied >= id {
            tx.rollback().await.map_err(io("ending a transaction"))?;
            tracing::info!(table = %target.name, checkpoint = id, applied, "already committed");
            return Ok(());
        }
        let (deleted, upserted): (i64, i64) = sqlx::query_as(&target.apply)
            .bind(pipeline)
            .bind(&self.sink)
            .bind(commit.staged_as as i64)
            .fetch_one(&mut *tx)
            .await
            .map_err(io(&format!("applying checkpoint {id} to {}", target.name)))?;
        sqlx::query(&format!(
            "UPDATE {} SET checkpoint = $3, target = $4, committed_at = now() \
             WHERE pipeline = $1 AND sink = $2",
            target.progress
        ))
        .bind(pipeline)
        .bind(&self.sink)
        .bind(id)
        .bind(&target.name)
        .execute(&mut *tx)
        .await
        .map_err(io("recording progress"))?;
        sqlx::query(&format!(
            "DELETE FROM {} WHERE pipeline = $1 AND sink = $2 AND checkpoint = $3",
            target.staging
        ))
        .bind(pipeline)
        .bind(&self.sink)
        .bind(commit.staged_as as i64)
        .execute(&mut *tx)
        .await
        .map_err(io("deleting staged rows"))?;
        tx.commit()
            .await
            .map_err(io(&format!("committing checkpoint {id}")))?;
        tracing::debug!(table = %target.name, checkpoint = id, upserted, deleted, "committed");
        Ok(())
    }

    /// On recovery, after the newest manifest's commit was repeated: deletes the sink's staged
    /// rows (none belongs to a stored manifest any more) and returns how many. Refuses to go on
    /// when the table has applied a checkpoint after `committed`, the newest manifest: the
    /// checkpoint store was reset, and new checkpoints would be taken for ones already applied.
    pub async fn clean(&mut self, pipeline: &str, committed: u64) -> Result<usize, SinkError> {
        let target = &self.target;
        let applied: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT checkpoint FROM {} WHERE pipeline = $1 AND sink = $2",
            target.progress
        ))
        .bind(pipeline)
        .bind(&self.sink)
        .fetch_optional(&self.pool)
        .await
        .map_err(io("reading progress"))?;
        if let Some(applied) = applied
            && applied > committed as i64
        {
            return Err(SinkError::Io(format!(
                "postgres: {} has applied checkpoint {applied} of pipeline `{pipeline}`, but the newest manifest is checkpoint {committed}: the checkpoint store was reset or is another one, and its checkpoints would be skipped as already applied. To start over, run: DELETE FROM {} WHERE pipeline = {} AND sink = {}",
                target.name,
                target.progress,
                literal(pipeline),
                literal(&self.sink)
            )));
        }
        let removed = sqlx::query(&format!(
            "DELETE FROM {} WHERE pipeline = $1 AND sink = $2",
            target.staging
        ))
        .bind(pipeline)
        .bind(&self.sink)
        .execute(&self.pool)
        .await
        .map_err(io("deleting staged rows"))?
        .rows_affected();
        Ok(removed as usize)
    }
}
