//! The target table and the sink's bookkeeping tables: names, types, the statements the sink
//! runs, and creating or checking the tables when the sink opens.

use std::str::FromStr;

use sqlx::{PgPool, postgres::PgConnectOptions};

use super::io;
use crate::{
    pipeline::spec::{ColumnSpec, ColumnType},
    sinks::SinkError,
};

/// The staging table's name.
const STAGING_TABLE: &str = "weir_staging";

/// The progress table's name.
const PROGRESS_TABLE: &str = "weir_sink_checkpoints";

/// Serialises the creation of tables by sinks that start together (`CREATE TABLE IF NOT EXISTS`
/// is not safe against a concurrent one): an arbitrary advisory lock id, `WEIRPG` in ASCII.
const DDL_LOCK: i64 = 0x5745_4952_5047_0001;

/// Longest identifier Postgres keeps (longer ones are cut silently).
const MAX_IDENTIFIER: usize = 63;

/// `"name"`, quoted for SQL.
pub(super) fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'`, quoted for SQL (for messages users paste into `psql`).
pub(super) fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Splits a `table` setting into its schema (if given) and name; checks each part.
pub fn parse_table(text: &str) -> Result<(Option<&str>, &str), String> {
    let parts: Vec<&str> = text.split('.').collect();
    let check = |part: &str| {
        if part.is_empty() || part.len() > MAX_IDENTIFIER || part.contains('\0') {
            Err(format!(
                "`{text}` is not a table: expected NAME or SCHEMA.NAME, each 1 to {MAX_IDENTIFIER} bytes"
            ))
        } else {
            Ok(())
        }
    };
    match parts[..] {
        [name] => check(name).map(|()| (None, name)),
        [schema, name] => {
            check(schema)?;
            check(name)?;
            Ok((Some(schema), name))
        }
        _ => Err(format!(
            "`{text}` is not a table: expected NAME or SCHEMA.NAME (names with dots are not supported)"
        )),
    }
}

/// Checks a connection URL without connecting.
pub fn check_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(format!(
            "`{}` is not a Postgres URL: expected postgres://USER@HOST:PORT/DATABASE",
            crate::sinks::redact(url)
        ));
    }
    PgConnectOptions::from_str(url)
        .map(|_| ())
        .map_err(|e| format!("invalid Postgres URL: {e}"))
}

/// The Postgres type Weir creates for a column type, as `format_type` spells it.
pub fn sql_type(kind: ColumnType) -> &'static str {
    match kind {
        ColumnType::String => "text",
        ColumnType::Int32 => "integer",
        ColumnType::Int64 => "bigint",
        ColumnType::Float32 => "real",
        ColumnType::Float64 => "double precision",
        ColumnType::Boolean => "boolean",
        ColumnType::TimestampMs | ColumnType::TimestampUs => "timestamp with time zone",
        ColumnType::Date => "date",
        ColumnType::Binary => "bytea",
    }
}

/// Whether an existing column of Postgres type `found` holds every value of type `kind` (a
/// `varchar` with a length does not: a longer text would make the commit fail).
fn fits(kind: ColumnType, found: &str) -> bool {
    found == sql_type(kind) || (kind == ColumnType::String && found == "character varying")
}

/// The target table and the statements the sink and its committer run, built once.
pub(super) struct Target {
    /// `schema.name`, for messages.
    pub(super) name: String,
    /// The target, quoted.
    pub(super) table: String,
    /// `weir_staging` beside it, quoted.
    pub(super) staging: String,
    /// `weir_sink_checkpoints` beside it, quoted.
    pub(super) progress: String,
    /// Stages writes: pipeline, sink, checkpoint, then arrays of sequence numbers, delete flags
    /// and JSON rows.
    pub(super) stage: String,
    /// Applies a staged checkpoint (pipeline, sink, checkpoint); returns rows deleted and
    /// upserted.
    pub(super) apply: String,
}

impl Target {
    pub(super) fn new(schema: &str, name: &str, columns: &[ColumnSpec], key: &[String]) -> Target {
        let table = format!("{}.{}", ident(schema), ident(name));
        let staging = format!("{}.{}", ident(schema), ident(STAGING_TABLE));
        let progress = format!("{}.{}", ident(schema), ident(PROGRESS_TABLE));
        let stage = format!(
            "INSERT INTO {staging} (pipeline, sink, checkpoint, seq, deleted, data) \
             SELECT $1, $2, $3, u.seq, u.deleted, u.data::jsonb \
             FROM unnest($4::bigint[], $5::boolean[], $6::text[]) AS u(seq, deleted, data)"
        );
        let keys: Vec<String> = key.iter().map(|k| format!("r.{}", ident(k))).collect();
        let keys = keys.join(", ");
        let matches: Vec<String> = key
            .iter()
            .map(|k| format!("t.{0} = (l.r).{0}", ident(k)))
            .collect();
        let names: Vec<String> = columns.iter().map(|c| ident(&c.name.value)).collect();
        let values: Vec<String> = names.iter().map(|n| format!("(l.r).{n}")).collect();
        let updates: Vec<String> = columns
            .iter()
            .filter(|c| !key.contains(&c.name.value))
            .map(|c| format!("{0} = EXCLUDED.{0}", ident(&c.name.value)))
            .collect();
        let on_conflict = if updates.is_empty() {
            "DO NOTHING".to_string()
        } else {
            format!("DO UPDATE SET {}", updates.join(", "))
        };
        let key_list: Vec<String> = key.iter().map(|k| ident(k)).collect();
        let apply = format!(
            "WITH latest AS ( \
                 SELECT DISTINCT ON ({keys}) s.deleted, r \
                 FROM {staging} s, jsonb_populate_record(NULL::{table}, s.data) r \
                 WHERE s.pipeline = $1 AND s.sink = $2 AND s.checkpoint = $3 \
                 ORDER BY {keys}, s.seq DESC \
             ), removed AS ( \
                 DELETE FROM {table} t USING latest l WHERE l.deleted AND {matches} RETURNING 1 \
             ), upserted AS ( \
                 INSERT INTO {table} ({names}) SELECT {values} FROM latest l WHERE NOT l.deleted \
                 ON CONFLICT ({key_list}) {on_conflict} RETURNING 1 \
             ) \
             SELECT (SELECT count(*) FROM removed), (SELECT count(*) FROM upserted)",
            matches = matches.join(" AND "),
            names = names.join(", "),
            values = values.join(", "),
            key_list = key_list.join(", "),
        );
        Target {
            name: format!("{schema}.{name}"),
            table,
            staging,
            progress,
            stage,
            apply,
        }
    }
}

/// Creates what is missing — the bookkeeping tables, the target table — or checks the target
/// table against the schema, under a lock so that sinks starting together do not race.
pub(super) async fn prepare(
    pool: &PgPool,
    schema: Option<&str>,
    name: &str,
    columns: &[ColumnSpec],
    key: &[String],
) -> Result<Target, SinkError> {
    let mut tx = pool.begin().await.map_err(io("starting a transaction"))?;
    let schema = match schema {
        Some(s) => s.to_string(),
        None => sqlx::query_scalar::<_, Option<String>>("SELECT current_schema()")
            .fetch_one(&mut *tx)
            .await
            .map_err(io("reading the current schema"))?
            .ok_or_else(|| {
                SinkError::Io(format!(
                    "postgres: no schema to create `{name}` in: the search_path names none that exists; write the table as SCHEMA.NAME"
                ))
            })?,
    };
    let target = Target::new(&schema, name, columns, key);
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(DDL_LOCK)
        .execute(&mut *tx)
        .await
        .map_err(io("locking"))?;
    let bookkeeping = [
        format!(
            "CREATE TABLE IF NOT EXISTS {} ( \
                 pipeline text NOT NULL, sink text NOT NULL, checkpoint bigint NOT NULL, \
                 seq bigint NOT NULL, deleted boolean NOT NULL, data jsonb NOT NULL, \
                 PRIMARY KEY (pipeline, sink, checkpoint, seq))",
            target.staging
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {} ( \
                 pipeline text NOT NULL, sink text NOT NULL, checkpoint bigint NOT NULL, \
                 target text NOT NULL, committed_at timestamptz NOT NULL DEFAULT now(), \
                 PRIMARY KEY (pipeline, sink))",
            target.progress
        ),
    ];
    for ddl in &bookkeeping {
        sqlx::query(ddl)
            .execute(&mut *tx)
            .await
            .map_err(io("creating the bookkeeping tables"))?;
    }
    let kind: Option<String> =
        sqlx::query_scalar("SELECT relkind::text FROM pg_class WHERE oid = to_regclass($1)")
            .bind(&target.table)
            .fetch_optional(&mut *tx)
            .await
            .map_err(io("looking for the table"))?;
    match kind.as_deref() {
        None => {
            let mut defs: Vec<String> = columns
                .iter()
                .map(|c| {
                    let not_null = if c.nullable { "" } else { " NOT NULL" };
                    format!("{} {}{not_null}", ident(&c.name.value), sql_type(c.kind))
                })
                .collect();
            let key_list: Vec<String> = key.iter().map(|k| ident(k)).collect();
            defs.push(format!("PRIMARY KEY ({})", key_list.join(", ")));
            let ddl = format!("CREATE TABLE {} ({})", target.table, defs.join(", "));
            sqlx::query(&ddl)
                .execute(&mut *tx)
                .await
                .map_err(io(&format!("creating table {}", target.name)))?;
            tracing::info!(table = %target.name, "created the table");
        }
        Some("r" | "p") => check_table(&mut tx, &target, columns, key).await?,
        Some(_) => {
            return Err(SinkError::Io(format!(
                "postgres: {} exists but is not a table (a view or another relation)",
                target.name
            )));
        }
    }
    tx.commit().await.map_err(io("committing the tables"))?;
    Ok(target)
}

/// Refuses a table that lacks a column of the schema, has one of another type, has no unique
/// key on exactly `key`, or has a column the sink cannot fill.
async fn check_table(
    tx: &mut sqlx::PgConnection,
    target: &Target,
    columns: &[ColumnSpec],
    key: &[String],
) -> Result<(), SinkError> {
    let found: Vec<(String, String, bool, bool)> = sqlx::query_as(
        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull, \
                a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '' \
         FROM pg_attribute a \
         WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped \
         ORDER BY a.attnum",
    )
    .bind(&target.table)
    .fetch_all(&mut *tx)
    .await
    .map_err(io("reading the table's columns"))?;
    let mut problems = Vec::new();
    // A value the table refuses would make the commit fail again at every recovery, so every
    // value the sink can stage must fit.
    for column in columns {
        let name = &column.name.value;
        match found.iter().find(|(n, ..)| n == name) {
            None => problems.push(format!("it has no column `{name}`")),
            Some((_, ty, ..)) if !fits(column.kind, ty) => problems.push(format!(
                "column `{name}` is `{ty}`, and the schema's type needs `{}`{}",
                sql_type(column.kind),
                if column.kind == ColumnType::String {
                    " (or `character varying` without a length)"
                } else {
                    ""
                }
            )),
            Some((_, _, true, _)) if column.nullable && !key.contains(name) => {
                problems.push(format!(
                    "column `{name}` is NOT NULL, and the schema lets a record lack it: give it `nullable: false`, so that such records go to the dead letters"
                ))
            }
            Some(_) => {}
        }
    }
    for (name, _, not_null, has_default) in &found {
        if *not_null && !*has_default && !columns.iter().any(|c| &c.name.value == name) {
            problems.push(format!(
                "column `{name}` is NOT NULL without a default and not in the schema, so no row could be inserted"
            ));
        }
    }
    let unique: Vec<Vec<String>> = sqlx::query_scalar(
        "SELECT ARRAY(SELECT a.attname::text FROM unnest(i.indkey::int2[]) k(n) \
                      JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n) \
         FROM pg_index i \
         WHERE i.indrelid = to_regclass($1) AND i.indisunique \
           AND i.indpred IS NULL AND i.indexprs IS NULL",
    )
    .bind(&target.table)
    .fetch_all(&mut *tx)
    .await
    .map_err(io("reading the table's keys"))?;
    let mut wanted = key.to_vec();
    wanted.sort();
    let keyed = unique.into_iter().any(|mut cols| {
        cols.sort();
        cols == wanted
    });
    if !keyed {
        problems.push(format!(
            "it has no primary key or unique index on exactly ({}), which upserts need",
            key.join(", ")
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(SinkError::Io(format!(
            "postgres: table {} does not fit the sink: {}",
            target.name,
            problems.join("; ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_name_or_schema_and_name() {
        assert_eq!(parse_table("trades"), Ok((None, "trades")));
        assert_eq!(parse_table("md.trades"), Ok((Some("md"), "trades")));
        for bad in ["", "a.b.c", ".t", "s.", &"x".repeat(64)] {
            assert!(parse_table(bad).is_err(), "{bad}");
        }
        assert!(check_url("postgres://postgres@127.0.0.1:5432/test").is_ok());
        assert!(check_url("mysql://localhost/db").is_err());
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(literal("it's"), "'it''s'");
        assert!(fits(ColumnType::String, "character varying"));
        assert!(!fits(ColumnType::String, "character varying(20)"));
        assert!(!fits(
            ColumnType::TimestampMs,
            "timestamp without time zone"
        ));
    }
}
