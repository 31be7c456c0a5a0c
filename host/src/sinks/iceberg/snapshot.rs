//! Snapshots Weir builds itself, for the commits the iceberg crate has no action for: the row
//! deltas of `mode: upsert` (data files and position-delete files in one snapshot) and the tiered
//! merging of manifests. Weir writes the manifests, the manifest list and the next metadata file,
//! then points the SQL catalog's row at that file if the row still names the metadata the
//! snapshot was built on: a compare-and-swap, as the catalog itself commits. (The crate keeps
//! both its `TableCommit` builder and its transaction actions private, so the catalog's own
//! `update_table` cannot be handed such a snapshot; a REST catalog would need its commit endpoint
//! called directly.)

use std::{
    collections::{BTreeMap, HashMap},
    str::FromStr,
};

use iceberg::{
    io::FileIO,
    spec::{
        DataFile, MAIN_BRANCH, ManifestContentType, ManifestFile, ManifestList, ManifestListWriter,
        ManifestStatus, ManifestWriterBuilder, Operation, Snapshot, SnapshotReference,
        SnapshotRetention, SnapshotSummaryCollector, Summary, TableMetadata,
        deserialize_data_file_from_json,
    },
    table::Table,
};

use super::{IcebergCommit, IcebergCommitter, MERGE_AT, SinkError, iceberg_error};

/// Summary totals: (total, added, removed), as the spec names them.
const TOTALS: [(&str, &str, &str); 6] = [
    ("total-data-files", "added-data-files", "deleted-data-files"),
    (
        "total-delete-files",
        "added-delete-files",
        "removed-delete-files",
    ),
    ("total-records", "added-records", "deleted-records"),
    ("total-files-size", "added-files-size", "removed-files-size"),
    (
        "total-position-deletes",
        "added-position-deletes",
        "removed-position-deletes",
    ),
    (
        "total-equality-deletes",
        "added-equality-deletes",
        "removed-equality-deletes",
    ),
];

/// An id no snapshot of the table has, increasing (milliseconds, as the crate's are random).
fn next_snapshot_id(metadata: &TableMetadata) -> i64 {
    metadata
        .snapshots()
        .map(|s| s.snapshot_id())
        .max()
        .unwrap_or(0)
        .max(crate::plugin::now_ms())
        + 1
}

/// The manifests of a snapshot's manifest list.
async fn manifests(io: &FileIO, list: &str) -> Result<ManifestList, iceberg::Error> {
    let bytes = io.new_input(list)?.read().await?;
    ManifestList::parse_with_version(&bytes, iceberg::spec::FormatVersion::V2)
}

/// Adds the `total-*` properties: the previous snapshot's totals plus what this one added, less
/// what it removed. A total the previous snapshot did not know stays unknown.
fn add_totals(properties: &mut HashMap<String, String>, previous: Option<&Summary>) {
    let number = |props: &HashMap<String, String>, key: &str| {
        props
            .get(key)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    for (total, added, removed) in TOTALS {
        let before = match previous {
            None => 0,
            Some(summary) => match summary.additional_properties.get(total) {
                Some(v) => match v.parse::<u64>() {
                    Ok(n) => n,
                    Err(_) => continue,
                },
                None => continue,
            },
        };
        let after =
            (before + number(properties, added)).saturating_sub(number(properties, removed));
        properties.insert(total.to_string(), after.to_string());
    }
}

impl IcebergCommitter {
    /// Commits checkpoint data files and position-delete files as one snapshot of `table`
    /// (loaded just before, and checked not to hold the checkpoint yet), with `properties` in
    /// its summary: `overwrite` when it adds both, `delete` or `append` when only one kind. The
    /// delete files point only at rows of older snapshots. Returns the table after the commit;
    /// an error when another commit came first (the caller retries from a fresh load).
    pub(super) async fn commit_row_delta(
        &self,
        table: &Table,
        properties: HashMap<String, String>,
        commit: &IcebergCommit,
    ) -> Result<Table, SinkError> {
        let failed = |what: &'static str| {
            move |e: iceberg::Error| SinkError::Io(format!("committing row changes: {what}: {e}"))
        };
        let metadata = table.metadata();
        let partition_type = metadata.default_partition_type();
        let schema = metadata.current_schema();
        let spec = metadata.default_partition_spec();
        let parse = |files: &[String]| {
            files
                .iter()
                .map(|f| deserialize_data_file_from_json(f, commit.spec_id, partition_type, schema))
                .collect::<Result<Vec<DataFile>, _>>()
                .map_err(iceberg_error("reading the manifest's files"))
        };
        let (data, deletes) = (parse(&commit.files)?, parse(&commit.deletes)?);
        let operation = match (data.is_empty(), deletes.is_empty()) {
            (false, false) => Operation::Overwrite,
            (true, false) => Operation::Delete,
            _ => Operation::Append,
        };
        let io = table.file_io();
        let parent = metadata.current_snapshot();
        let snapshot_id = next_snapshot_id(metadata);
        let sequence = metadata.last_sequence_number() + 1;
        let location = metadata.location().trim_end_matches('/');
        let mut list = match parent {
            Some(parent) => manifests(io, parent.manifest_list())
                .await
                .map_err(failed("reading the manifest list"))?
                .entries()
                .to_vec(),
            None => Vec::new(),
        };
        let mut summary = SnapshotSummaryCollector::default();
        for (content, files) in [("data", data), ("deletes", deletes)] {
            if files.is_empty() {
                continue;
            }
            let path = format!("{location}/metadata/weir-{snapshot_id}-{content}.avro");
            let builder = ManifestWriterBuilder::new(
                io.new_output(&path).map_err(failed("the manifest"))?,
                Some(snapshot_id),
                schema.clone(),
                spec.as_ref().clone(),
            );
            let mut writer = match content {
                "data" => builder.build_v2_data(),
                _ => builder.build_v2_deletes(),
            };
            for file in files {
                summary.add_file(&file, schema.clone(), spec.clone());
                writer
                    .add_file(file, sequence)
                    .map_err(failed("writing the manifest"))?;
            }
            list.push(
                writer
                    .write_manifest_file()
                    .await
                    .map_err(failed("writing the manifest"))?,
            );
        }
        let list_path = format!("{location}/metadata/snap-{snapshot_id}-weir.avro");
        self.write_list(table, &list_path, snapshot_id, sequence, list)
            .await?;
        let mut properties = properties;
        properties.extend(summary.build());
        add_totals(&mut properties, parent.map(|p| p.summary()));
        let snapshot = Snapshot::builder()
            .with_snapshot_id(snapshot_id)
            .with_parent_snapshot_id(parent.map(|p| p.snapshot_id()))
            .with_sequence_number(sequence)
            .with_timestamp_ms(crate::plugin::now_ms().max(parent.map_or(0, |p| p.timestamp_ms())))
            .with_manifest_list(list_path)
            .with_schema_id(metadata.current_schema_id())
            .with_summary(Summary {
                operation,
                additional_properties: properties,
            })
            .build();
        self.publish(table, snapshot).await?.ok_or_else(|| {
            SinkError::Io(format!(
                "committing to {}: another commit came first",
                self.name
            ))
        })
    }

    /// Keeps the manifest list short by merging manifests in tiers, as a log-structured merge
    /// does: a manifest's tier is the base-[`MERGE_AT`] logarithm of its file count, and once one
    /// tier holds [`MERGE_AT`] manifests they are rewritten as one (which lands a tier higher) in a
    /// `replace` snapshot; the other manifests are carried over untouched. Each file is rewritten
    /// once per tier, so a commit's cost grows with the logarithm of the table's file count, not
    /// with the count. Data manifests and delete manifests are tiered apart and never merged
    /// into each other (a manifest holds one kind); merged entries keep their sequence numbers,
    /// which decide what a delete applies to. (SQL catalogs; a REST catalog keeps its
    /// manifests.) A conflict leaves the table as it was: the next commit tries again.
    pub(super) async fn merge_manifests(
        &self,
        table: Option<Table>,
    ) -> Result<Option<Table>, SinkError> {
        let (Some(table), Some(_)) = (table, &self.sql) else {
            return Ok(None);
        };
        let failed = |what: &'static str| {
            move |e: iceberg::Error| SinkError::Io(format!("merging manifests: {what}: {e}"))
        };
        let metadata = table.metadata();
        let Some(current) = metadata.current_snapshot() else {
            return Ok(Some(table));
        };
        let io = table.file_io();
        let list = manifests(io, current.manifest_list())
            .await
            .map_err(failed("reading the manifest list"))?;
        let tier = |m: &ManifestFile| {
            let files = m.added_files_count.unwrap_or(0) + m.existing_files_count.unwrap_or(0);
            (
                m.content == ManifestContentType::Deletes,
                files.max(1).ilog(MERGE_AT as u32),
            )
        };
        let mut by_tier: BTreeMap<(bool, u32), usize> = BTreeMap::new();
        for m in list.entries() {
            *by_tier.entry(tier(m)).or_default() += 1;
        }
        let Some(full) = by_tier
            .iter()
            .find(|(_, n)| **n >= MERGE_AT)
            .map(|(t, _)| *t)
        else {
            return Ok(Some(table));
        };
        let (merging, kept): (Vec<_>, Vec<_>) =
            list.entries().iter().partition(|m| tier(m) == full);
        let snapshot_id = next_snapshot_id(metadata);
        let sequence = metadata.last_sequence_number() + 1;
        let location = metadata.location().trim_end_matches('/');
        let manifest_path = format!("{location}/metadata/weir-merge-{snapshot_id}-m0.avro");
        let builder = ManifestWriterBuilder::new(
            io.new_output(&manifest_path)
                .map_err(failed("the manifest"))?,
            Some(snapshot_id),
            metadata.current_schema().clone(),
            metadata.default_partition_spec().as_ref().clone(),
        );
        let (deletes, _) = full;
        let mut writer = if deletes {
            builder.build_v2_deletes()
        } else {
            builder.build_v2_data()
        };
        for manifest in &merging {
            let entries = manifest
                .load_manifest(io)
                .await
                .map_err(failed("reading a manifest"))?;
            for entry in entries.entries() {
                if entry.status() == ManifestStatus::Deleted {
                    continue;
                }
                writer
                    .add_existing_file(
                        entry.data_file().clone(),
                        entry.snapshot_id().unwrap_or(current.snapshot_id()),
                        entry.sequence_number().unwrap_or(current.sequence_number()),
                        entry.file_sequence_number,
                    )
                    .map_err(failed("writing the manifest"))?;
            }
        }
        let merged = writer
            .write_manifest_file()
            .await
            .map_err(failed("writing the manifest"))?;
        let list_path = format!("{location}/metadata/snap-{snapshot_id}-weir-merge.avro");
        self.write_list(
            &table,
            &list_path,
            snapshot_id,
            sequence,
            kept.into_iter()
                .cloned()
                .chain(std::iter::once(merged))
                .collect(),
        )
        .await?;
        let mut properties: HashMap<String, String> = current
            .summary()
            .additional_properties
            .iter()
            .filter(|(k, _)| k.starts_with("total-"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        properties.insert("weir.maintenance".into(), "merge-manifests".into());
        let snapshot = Snapshot::builder()
            .with_snapshot_id(snapshot_id)
            .with_parent_snapshot_id(Some(current.snapshot_id()))
            .with_sequence_number(sequence)
            .with_timestamp_ms(crate::plugin::now_ms().max(current.timestamp_ms()))
            .with_manifest_list(list_path)
            .with_schema_id(metadata.current_schema_id())
            .with_summary(Summary {
                operation: Operation::Replace,
                additional_properties: properties,
            })
            .build();
        let Some(table) = self.publish(&table, snapshot).await? else {
            tracing::info!(table = %self.name, "manifest merge lost a race; the next commit retries");
            return Ok(None);
        };
        tracing::debug!(table = %self.name, tier = ?full, manifests = merging.len(), "merged manifests");
        Ok(Some(table))
    }

    /// Writes the manifest list of snapshot `snapshot_id` (whose parent is `table`'s current
    /// snapshot); manifests written for it get `sequence`.
    async fn write_list(
        &self,
        table: &Table,
        path: &str,
        snapshot_id: i64,
        sequence: i64,
        manifests: Vec<ManifestFile>,
    ) -> Result<(), SinkError> {
        let failed = |e: iceberg::Error| SinkError::Io(format!("writing the manifest list: {e}"));
        let io = table.file_io();
        let mut writer = ManifestListWriter::v2(
            io.new_output(path)
                .map_err(failed)?
                .writer()
                .await
                .map_err(failed)?,
            snapshot_id,
            table.metadata().current_snapshot_id(),
            sequence,
        );
        writer
            .add_manifests(manifests.into_iter())
            .map_err(failed)?;
        writer.close().await.map_err(failed)
    }

    /// Makes `snapshot` the current one of `table`'s main branch: writes the next metadata file
    /// and swaps the catalog row to it, if the row still names `table`'s metadata. Returns the
    /// table after the swap, or `None` if another commit came first (nothing changed).
    async fn publish(&self, table: &Table, snapshot: Snapshot) -> Result<Option<Table>, SinkError> {
        let failed = |what: &'static str| {
            move |e: iceberg::Error| SinkError::Io(format!("committing a snapshot: {what}: {e}"))
        };
        let sql = self.sql.as_ref().ok_or_else(|| {
            SinkError::Io(format!(
                "table {}: Weir commits this snapshot only through a `sql` catalog",
                self.name
            ))
        })?;
        let snapshot_id = snapshot.snapshot_id();
        let current_location = table
            .metadata_location()
            .ok_or_else(|| SinkError::Internal("a loaded table has no metadata location".into()))?
            .to_string();
        let mut builder = table
            .metadata()
            .clone()
            .into_builder(Some(current_location.clone()));
        for update in [
            iceberg::TableUpdate::AddSnapshot { snapshot },
            iceberg::TableUpdate::SetSnapshotRef {
                ref_name: MAIN_BRANCH.to_string(),
                reference: SnapshotReference::new(
                    snapshot_id,
                    SnapshotRetention::branch(None, None, None),
                ),
            },
        ] {
            builder = update.apply(builder).map_err(failed("the new snapshot"))?;
        }
        let new_metadata = builder
            .build()
            .map_err(failed("the new metadata"))?
            .metadata;
        let new_location = iceberg::MetadataLocation::from_str(&current_location)
            .map_err(failed("the metadata location"))?
            .with_next_version()
            .with_new_metadata(&new_metadata);
        new_metadata
            .write_to(table.file_io(), &new_location)
            .await
            .map_err(failed("writing the metadata"))?;
        let new_location = new_location.to_string();
        let query = if sql.dollar {
            "UPDATE iceberg_tables SET metadata_location = $1, previous_metadata_location = $2 \
             WHERE catalog_name = $3 AND table_namespace = $4 AND table_name = $5 AND metadata_location = $6"
        } else {
            "UPDATE iceberg_tables SET metadata_location = ?, previous_metadata_location = ? \
             WHERE catalog_name = ? AND table_namespace = ? AND table_name = ? AND metadata_location = ?"
        };
        let swapped = sqlx::query(query)
            .bind(new_location)
            .bind(current_location.clone())
            .bind(sql.catalog.clone())
            .bind(self.ident.namespace().join("."))
            .bind(self.ident.name().to_string())
            .bind(current_location)
            .execute(&sql.pool)
            .await
            .map_err(|e| SinkError::Io(format!("committing a snapshot: the catalog row: {e}")))?
            .rows_affected();
        if swapped == 0 {
            return Ok(None);
        }
        let table = self
            .catalog
            .load_table(&self.ident)
            .await
            .map_err(iceberg_error(format!("loading table {}", self.name)))?;
        Ok(Some(table))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_carry_over_and_add_up() {
        let previous = Summary {
            operation: Operation::Append,
            additional_properties: HashMap::from([
                ("total-data-files".to_string(), "3".to_string()),
                ("total-delete-files".to_string(), "1".to_string()),
                ("total-records".to_string(), "30".to_string()),
            ]),
        };
        let mut now = HashMap::from([
            ("added-data-files".to_string(), "1".to_string()),
            ("added-delete-files".to_string(), "2".to_string()),
            ("added-records".to_string(), "5".to_string()),
        ]);
        add_totals(&mut now, Some(&previous));
        assert_eq!(now["total-data-files"], "4");
        assert_eq!(now["total-delete-files"], "3");
        assert_eq!(now["total-records"], "35");
        // The previous snapshot did not know this total: it stays unknown.
        assert!(!now.contains_key("total-position-deletes"));
        let mut first = HashMap::from([("added-records".to_string(), "5".to_string())]);
        add_totals(&mut first, None);
        assert_eq!(first["total-records"], "5");
        assert_eq!(first["total-data-files"], "0");
    }
}
