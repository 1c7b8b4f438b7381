//! Access to pg_trickle's catalog tables in schema `pgtrickle` (created by
//! `bootstrap.rs`): `pgt_stream_tables`, `pgt_dependencies`,
//! `pgt_change_tracking`, `pgt_refresh_history`.
//!
//! Everyone may read the catalog; writes happen only here, as the extension owner
//! ([`as_extension_owner`]), after the SQL-facing layer has checked that the caller
//! may do what it asked.

use crate::error::{PgtError, PgtResult};
use crate::parse::{SourceKind, SourceRelation};
use crate::privilege::as_extension_owner;
use crate::spi::{col, exec, kept, query_map, query_one};
use pgrx::pg_sys;
use pgt_core::ident::QualifiedName;
use pgt_core::options::{CdcMode, DiamondConsistency, DiamondSchedulePolicy, RefreshMode};

/// One row of `pgtrickle.pgt_stream_tables`, with the storage table's current name
/// and owner from `pg_class`.
#[derive(Debug, Clone)]
pub struct StreamTable {
    /// Surrogate key.
    pub pgt_id: i64,
    /// OID of the storage table.
    pub relid: pg_sys::Oid,
    /// Current schema-qualified name of the storage table.
    pub name: QualifiedName,
    /// Owner of the storage table; refreshes run the query as this role.
    pub owner: pg_sys::Oid,
    /// Normalized (schema-qualified) defining query.
    pub defining_query: String,
    /// The defining query as the user wrote it.
    pub original_query: String,
    /// Canonical schedule text.
    pub schedule: String,
    /// Requested refresh mode.
    pub refresh_mode: RefreshMode,
    /// The mode refreshes actually use.
    pub effective_refresh_mode: RefreshMode,
    /// ACTIVE or SUSPENDED.
    pub status: String,
    /// Whether the storage holds the query's result as of `frontier`.
    pub is_populated: bool,
    /// Diamond consistency option.
    pub diamond_consistency: DiamondConsistency,
    /// Diamond schedule policy option.
    pub diamond_schedule_policy: DiamondSchedulePolicy,
    /// Explicit CDC mode, or None to follow `pg_trickle.cdc_mode`.
    pub cdc_mode: Option<CdcMode>,
    /// append_only option.
    pub append_only: bool,
    /// pooler_compatibility_mode option.
    pub pooler_compatibility_mode: bool,
    /// The snapshot the contents reflect, as `pg_snapshot` text (`xmin:xmax:xip`).
    pub frontier: Option<String>,
    /// The refreshing transaction of the frontier (xid8 text), if it had an xid.
    pub frontier_xid: Option<String>,
    /// The command id of the frontier.
    pub frontier_cid: Option<i64>,
    /// The DIFFERENTIAL plan (JSON) when the effective mode is DIFFERENTIAL.
    pub delta_plan: Option<String>,
    /// DDL on a source concerned it: the next refresh re-derives it first
    /// (`crate::lifecycle::reinitialize`).
    pub needs_reinit: bool,
    /// Why an AUTO stream table whose query is differentiable refreshes FULL:
    /// what its owner may not do (`crate::cdc::differential_blocker`).
    pub differential_blocker: Option<String>,
    /// The last full recomputation of a DIFFERENTIAL plan took this long (ms).
    pub full_refresh_ms: Option<f64>,
    /// Differential refreshes have taken this long per changed row (ms, a
    /// moving average).
    pub differential_ms_per_change: Option<f64>,
    /// When the snapshot its contents reflect was taken (`data_timestamp`),
    /// seconds since the Unix epoch; `None` before its first refresh.
    pub data_timestamp_epoch: Option<f64>,
}

impl StreamTable {
    /// The tables its maintenance writes: the stream table and its
    /// intermediate state tables.
    pub fn tables(&self) -> pgt_delta::Tables {
        pgt_delta::Tables { stream_table: self.name.to_sql(), pgt_id: self.pgt_id }
    }
}

/// The catalog columns of a stream table, as [`stream_table_from_row`] reads
/// them (a macro, so that `concat!` makes each use a fixed statement).
macro_rules! select_stream_table {
    () => {
        "\
SELECT st.pgt_id, st.pgt_relid, n.nspname::text, c.relname::text, c.relowner, \
       st.defining_query, st.original_query, st.schedule, st.refresh_mode, \
       st.effective_refresh_mode, st.status, st.is_populated, st.diamond_consistency, \
       st.diamond_schedule_policy, st.cdc_mode, st.append_only, \
       st.pooler_compatibility_mode, st.frontier::text, st.frontier_xid::text, st.frontier_cid, \
       st.delta_plan, st.needs_reinit, st.differential_blocker, st.full_refresh_ms, st.differential_ms_per_change, \
       pg_catalog.date_part('epoch', st.data_timestamp) \
FROM pgtrickle.pgt_stream_tables st \
JOIN pg_catalog.pg_class c ON c.oid = st.pgt_relid \
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
    };
}

fn stream_table_from_row(row: &pgrx::spi::SpiHeapTupleData) -> PgtResult<StreamTable> {
    Ok(StreamTable {
        pgt_id: col(row, 1)?,
        relid: col(row, 2)?,
        name: QualifiedName::new(col::<String>(row, 3)?, col::<String>(row, 4)?),
        owner: col(row, 5)?,
        defining_query: col(row, 6)?,
        original_query: col(row, 7)?,
        schedule: col(row, 8)?,
        refresh_mode: RefreshMode::parse(&col::<String>(row, 9)?)?,
        effective_refresh_mode: RefreshMode::parse(&col::<String>(row, 10)?)?,
        status: col(row, 11)?,
        is_populated: col(row, 12)?,
        diamond_consistency: DiamondConsistency::parse(&col::<String>(row, 13)?)?,
        diamond_schedule_policy: DiamondSchedulePolicy::parse(&col::<String>(row, 14)?)?,
        cdc_mode: row.get::<String>(15)?.map(|m| CdcMode::parse(&m)).transpose()?,
        append_only: col(row, 16)?,
        pooler_compatibility_mode: col(row, 17)?,
        frontier: row.get::<String>(18)?,
        frontier_xid: row.get::<String>(19)?,
        frontier_cid: row.get::<i64>(20)?,
        delta_plan: row.get::<String>(21)?,
        needs_reinit: col(row, 22)?,
        differential_blocker: row.get::<String>(23)?,
        full_refresh_ms: row.get::<f64>(24)?,
        differential_ms_per_change: row.get::<f64>(25)?,
        data_timestamp_epoch: row.get::<f64>(26)?,
    })
}

/// The stream table stored in relation `relid`, if it is one. (Read as the
/// extension owner: PUBLIC may not read every column.)
pub fn stream_table_by_relid(relid: pg_sys::Oid) -> PgtResult<Option<StreamTable>> {
    let sql = kept(concat!(select_stream_table!(), " WHERE st.pgt_relid = $1"));
    as_extension_owner(|| Ok(query_map(sql, &[relid.into()], stream_table_from_row)?.into_iter().next()))
}

/// The `pgt_id` recorded for storage relation `relid`, whether or not the relation
/// still exists (the sql_drop event trigger asks after the drop).
pub fn pgt_id_by_relid(relid: pg_sys::Oid) -> PgtResult<Option<i64>> {
    query_one::<i64>(kept("SELECT pgt_id FROM pgtrickle.pgt_stream_tables WHERE pgt_relid = $1"), &[relid.into()])
}

/// True when relation `relid` is a stream table's storage.
pub fn is_stream_table(relid: pg_sys::Oid) -> PgtResult<bool> {
    Ok(query_one::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pgtrickle.pgt_stream_tables WHERE pgt_relid = $1)",
        &[relid.into()],
    )?
    .unwrap_or(false))
}

/// The definition of the stream table stored in `relid` as its guard trigger
/// carries it into dumps (`crate::storage::ensure_guard`, `crate::restore`):
/// a JSON object (jsonb text, so the same definition always gives the same
/// text) with `format` (1), `query` (the normalized defining query),
/// `original_query`, `schedule`, `refresh_mode`, `diamond_consistency`,
/// `diamond_schedule_policy`, `cdc_mode` (null: the default), `append_only`,
/// `pooler_compatibility_mode`. Not its status: a restored stream table is
/// active (a suspension is about the database it happened in). With it, the
/// stored query tree when the stream table is marked for reinitialization
/// (its stored text may name what a rename replaced). `None` when `relid` is
/// no stream table (a state table, or a storage table not yet recorded).
pub fn dump_definition(relid: pg_sys::Oid) -> PgtResult<Option<(String, Option<String>)>> {
    as_extension_owner(|| {
        Ok(query_map(
            kept(
                "SELECT pg_catalog.jsonb_build_object('format', 1, 'query', defining_query, 'original_query', original_query, \
                        'schedule', schedule, 'refresh_mode', refresh_mode, 'diamond_consistency', diamond_consistency, \
                        'diamond_schedule_policy', diamond_schedule_policy, 'cdc_mode', cdc_mode, 'append_only', append_only, \
                        'pooler_compatibility_mode', pooler_compatibility_mode)::text, \
                        CASE WHEN needs_reinit THEN query_tree END \
                 FROM pgtrickle.pgt_stream_tables WHERE pgt_relid = $1",
            ),
            &[relid.into()],
            |row| Ok((col::<String>(row, 1)?, row.get::<String>(2)?)),
        )?
        .into_iter()
        .next())
    })
}

/// First half of the advisory-lock key space for "maintenance of a stream table"
/// (`"pgu\0"`); the second half is its `pgt_id`.
const STREAM_TABLE_LOCK_CLASS: i64 = 0x7067_7500;

/// Takes the transaction-level advisory lock that serializes refreshes, alters and
/// drops of stream table `pgt_id`. It writes nothing (no xid, no WAL), so a refresh
/// that finds nothing to do stays a read-only transaction.
fn lock_maintenance(pgt_id: i64) -> PgtResult<()> {
    exec(kept("SELECT pg_catalog.pg_advisory_xact_lock($1)"), &[((STREAM_TABLE_LOCK_CLASS << 32) | pgt_id).into()])?;
    Ok(())
}

/// For a refresh: takes the maintenance lock of `pgt_id` and returns its row as
/// committed by whoever held the lock before (READ COMMITTED reads with a fresh
/// snapshot). In REPEATABLE READ and SERIALIZABLE the row is also locked `FOR
/// UPDATE`, so a refresh committed since the transaction's snapshot makes this one
/// fail with a serialization error rather than start from a stale frontier.
pub fn lock_stream_table_for_refresh(pgt_id: i64) -> PgtResult<StreamTable> {
    let snapshot_isolation = unsafe { pg_sys::XactIsoLevel } >= pg_sys::XACT_REPEATABLE_READ as i32;
    let sql = if snapshot_isolation {
        kept(concat!(select_stream_table!(), " WHERE st.pgt_id = $1 FOR UPDATE OF st"))
    } else {
        kept(concat!(select_stream_table!(), " WHERE st.pgt_id = $1"))
    };
    lock_maintenance(pgt_id)?;
    as_extension_owner(|| {
        query_map(sql, &[pgt_id.into()], stream_table_from_row)?.into_iter().next().ok_or_else(|| {
            PgtError::new(pgrx::PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE, "stream table does not exist any more")
                .detail("It was dropped by a concurrent transaction.")
        })
    })
}

/// Takes the maintenance lock of stream table `pgt_id`, locks its catalog row (`FOR
/// UPDATE`) and returns it as committed by whoever held the lock before. Refreshes,
/// alters and drops of one stream table serialize here.
pub fn lock_stream_table(pgt_id: i64) -> PgtResult<StreamTable> {
    let sql = kept(concat!(select_stream_table!(), " WHERE st.pgt_id = $1 FOR UPDATE OF st"));
    lock_maintenance(pgt_id)?;
    as_extension_owner(|| {
        query_map(sql, &[pgt_id.into()], stream_table_from_row)?
            .into_iter()
            .next()
            .ok_or_else(|| {
                PgtError::new(
                    pgrx::PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
                    "stream table does not exist any more",
                )
                .detail("It was dropped by a concurrent transaction.")
            })
    })
}

/// The options a stream table is created with, validated.
#[derive(Debug, Clone)]
pub struct NewStreamTable<'a> {
    /// OID of the storage table.
    pub relid: pg_sys::Oid,
    /// Normalized defining query.
    pub defining_query: &'a str,
    /// The query as the user wrote it.
    pub original_query: &'a str,
    /// Canonical schedule text.
    pub schedule: String,
    /// Requested refresh mode.
    pub refresh_mode: RefreshMode,
    /// Mode refreshes use.
    pub effective_refresh_mode: RefreshMode,
    /// Diamond consistency option.
    pub diamond_consistency: DiamondConsistency,
    /// Diamond schedule policy option.
    pub diamond_schedule_policy: DiamondSchedulePolicy,
    /// Explicit CDC mode, or None to follow `pg_trickle.cdc_mode`.
    pub cdc_mode: Option<CdcMode>,
    /// append_only option.
    pub append_only: bool,
    /// pooler_compatibility_mode option.
    pub pooler_compatibility_mode: bool,
    /// The DIFFERENTIAL plan (JSON), if the effective mode is DIFFERENTIAL.
    pub delta_plan: Option<String>,
    /// Why AUTO chose FULL for a differentiable query (the owner's rights).
    pub differential_blocker: Option<String>,
}

/// Inserts a stream table's catalog row; returns its `pgt_id`.
pub fn insert_stream_table(st: &NewStreamTable) -> PgtResult<i64> {
    as_extension_owner(|| {
        query_one::<i64>(
            "INSERT INTO pgtrickle.pgt_stream_tables \
               (pgt_relid, defining_query, original_query, schedule, refresh_mode, \
                effective_refresh_mode, diamond_consistency, diamond_schedule_policy, \
                cdc_mode, append_only, pooler_compatibility_mode, delta_plan, differential_blocker) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING pgt_id",
            &[
                st.relid.into(),
                st.defining_query.into(),
                st.original_query.into(),
                st.schedule.as_str().into(),
                st.refresh_mode.as_str().into(),
                st.effective_refresh_mode.as_str().into(),
                st.diamond_consistency.as_str().into(),
                st.diamond_schedule_policy.as_str().into(),
                st.cdc_mode.map(|m| m.as_str()).into(),
                st.append_only.into(),
                st.pooler_compatibility_mode.into(),
                st.delta_plan.as_deref().into(),
                st.differential_blocker.as_deref().into(),
            ],
        )?
        .ok_or_else(|| PgtError::internal("INSERT ... RETURNING pgt_id returned nothing"))
    })
}

/// Writes every option and the definition of an existing stream table back,
/// when any of them differs from what the catalog holds (`updated_at` moves only
/// then).
pub fn update_stream_table(st: &StreamTable) -> PgtResult<()> {
    as_extension_owner(|| {
        exec(
            "UPDATE pgtrickle.pgt_stream_tables SET \
               pgt_relid = $2, defining_query = $3, original_query = $4, schedule = $5, \
               refresh_mode = $6, effective_refresh_mode = $7, status = $8, \
               diamond_consistency = $9, diamond_schedule_policy = $10, cdc_mode = $11, \
               append_only = $12, pooler_compatibility_mode = $13, is_populated = $14, \
               frontier = $15::pg_catalog.pg_snapshot, \
               frontier_xid = CASE WHEN $15 IS NULL THEN NULL ELSE frontier_xid END, \
               frontier_cid = CASE WHEN $15 IS NULL THEN NULL ELSE frontier_cid END, \
               delta_plan = $16, differential_blocker = $17, needs_reinit = $18, updated_at = pg_catalog.now() \
             WHERE pgt_id = $1 \
               AND (pgt_relid, defining_query, original_query, schedule, refresh_mode, effective_refresh_mode, status, \
                    diamond_consistency, diamond_schedule_policy, cdc_mode, append_only, pooler_compatibility_mode, \
                    is_populated, frontier::text, delta_plan, differential_blocker, needs_reinit) \
                   IS DISTINCT FROM ($2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)",
            &[
                st.pgt_id.into(),
                st.relid.into(),
                st.defining_query.as_str().into(),
                st.original_query.as_str().into(),
                st.schedule.as_str().into(),
                st.refresh_mode.as_str().into(),
                st.effective_refresh_mode.as_str().into(),
                st.status.as_str().into(),
                st.diamond_consistency.as_str().into(),
                st.diamond_schedule_policy.as_str().into(),
                st.cdc_mode.map(|m| m.as_str()).into(),
                st.append_only.into(),
                st.pooler_compatibility_mode.into(),
                st.is_populated.into(),
                st.frontier.as_deref().into(),
                st.delta_plan.as_deref().into(),
                st.differential_blocker.as_deref().into(),
                st.needs_reinit.into(),
            ],
        )?;
        Ok(())
    })
}

/// Records a rebuilt DIFFERENTIAL plan (or none, with the effective mode, and
/// for an AUTO stream table that falls back to FULL because of its owner's
/// rights, why).
pub fn set_plan(pgt_id: i64, effective_mode: RefreshMode, plan: Option<&str>, blocker: Option<&str>) -> PgtResult<()> {
    as_extension_owner(|| {
        exec(
            "UPDATE pgtrickle.pgt_stream_tables SET delta_plan = $2, effective_refresh_mode = $3, \
               differential_blocker = $4 WHERE pgt_id = $1",
            &[pgt_id.into(), plan.into(), effective_mode.as_str().into(), blocker.into()],
        )?;
        Ok(())
    })
}

/// Sets the status of stream table `pgt_id` (ACTIVE or SUSPENDED); resuming
/// starts its count of failed refreshes afresh. A suspended stream table is not
/// refreshed by the scheduler, so it must not hold back the change buffers of
/// its sources: suspending clears its frontier, and its first refresh after
/// resuming recomputes it.
pub fn set_status(pgt_id: i64, status: &str) -> PgtResult<()> {
    as_extension_owner(|| {
        exec(
            "UPDATE pgtrickle.pgt_stream_tables SET status = $2, updated_at = pg_catalog.now(), \
               consecutive_errors = CASE WHEN $2 = 'ACTIVE' THEN 0 ELSE consecutive_errors END, \
               frontier = CASE WHEN $2 = 'SUSPENDED' THEN NULL ELSE frontier END, \
               frontier_xid = CASE WHEN $2 = 'SUSPENDED' THEN NULL ELSE frontier_xid END, \
               frontier_cid = CASE WHEN $2 = 'SUSPENDED' THEN NULL ELSE frontier_cid END \
             WHERE pgt_id = $1",
            &[pgt_id.into(), status.into()],
        )?;
        Ok(())
    })
}

/// Counts a failed scheduled refresh of `pgt_id`; returns the count of failures
/// in a row.
pub fn count_failure(pgt_id: i64) -> PgtResult<i32> {
    as_extension_owner(|| {
        Ok(query_one::<i32>(
            "UPDATE pgtrickle.pgt_stream_tables SET consecutive_errors = consecutive_errors + 1, updated_at = pg_catalog.now() \
             WHERE pgt_id = $1 RETURNING consecutive_errors",
            &[pgt_id.into()],
        )?
        .unwrap_or(0))
    })
}

/// Resets the count of failed refreshes of the stream tables `pgt_ids` that
/// have one (after a successful scheduled refresh).
pub fn reset_failures(pgt_ids: &[i64]) -> PgtResult<()> {
    as_extension_owner(|| {
        exec(
            "UPDATE pgtrickle.pgt_stream_tables SET consecutive_errors = 0 WHERE pgt_id = ANY ($1) AND consecutive_errors <> 0",
            &[pgt_ids.to_vec().into()],
        )?;
        Ok(())
    })
}

/// Marks every stream table reading `source_relid` for reinitialization at
/// its next refresh (its frontier cleared).
pub fn mark_readers_need_reinit(source_relid: pg_sys::Oid) -> PgtResult<()> {
    as_extension_owner(|| {
        exec(
            "UPDATE pgtrickle.pgt_stream_tables SET needs_reinit = true, frontier = NULL, frontier_xid = NULL, \
               frontier_cid = NULL WHERE pgt_id IN (SELECT pgt_id FROM pgtrickle.pgt_dependencies WHERE source_relid = $1)",
            &[source_relid.into()],
        )?;
        Ok(())
    })
}

/// Clears the frontier of every stream table reading `source_relid`: changes
/// to it may have gone uncaptured, so none of them can trust its pending
/// changes; each recomputes at its next refresh.
pub fn clear_frontiers_of_readers(source_relid: pg_sys::Oid) -> PgtResult<()> {
    as_extension_owner(|| {
        exec(
            "UPDATE pgtrickle.pgt_stream_tables SET frontier = NULL, frontier_xid = NULL, frontier_cid = NULL \
             WHERE pgt_id IN (SELECT pgt_id FROM pgtrickle.pgt_dependencies WHERE source_relid = $1)",
            &[source_relid.into()],
        )?;
        Ok(())
    })
}

/// Deletes a stream table's catalog row (dependencies and history go with it).
pub fn delete_stream_table(pgt_id: i64) -> PgtResult<()> {
    as_extension_owner(|| {
        exec("DELETE FROM pgtrickle.pgt_stream_tables WHERE pgt_id = $1", &[pgt_id.into()])?;
        Ok(())
    })
}

/// A recorded dependency of a stream table on a relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    /// The relation read.
    pub source_relid: pg_sys::Oid,
    /// `SourceKind::as_str` spelling (TABLE, VIEW, ...).
    pub kind: String,
}

/// Replaces the recorded sources of stream table `pgt_id` with `sources`, each with
/// the columns the stream table relies on — those the query reads, plus a table's
/// row-identity key, which DIFFERENTIAL plans read — and their signature
/// (`pgtrickle._source_signature`).
pub fn replace_dependencies(pgt_id: i64, sources: &[SourceRelation]) -> PgtResult<()> {
    as_extension_owner(|| {
        exec("DELETE FROM pgtrickle.pgt_dependencies WHERE pgt_id = $1", &[pgt_id.into()])?;
        for s in sources {
            let columns = match &s.columns_read {
                Some(read) if s.kind != SourceKind::View => {
                    let mut columns = read.clone();
                    columns.extend(crate::objects::key_attnums(s.relid)?);
                    columns.sort_unstable();
                    columns.dedup();
                    Some(columns)
                }
                other => other.clone(),
            };
            exec(
                "INSERT INTO pgtrickle.pgt_dependencies \
                   (pgt_id, source_relid, source_kind, is_direct, columns_read, source_signature) \
                 VALUES ($1, $2, $3, $4, $5, pgtrickle._source_signature($2, $5))",
                &[pgt_id.into(), s.relid.into(), s.kind.as_str().into(), s.direct.into(), columns.into()],
            )?;
        }
        Ok(())
    })
}

/// A stream table reading a relation, with what it relies on there
/// ([`replace_dependencies`]).
#[derive(Debug, Clone)]
pub struct Consumer {
    /// The stream table.
    pub pgt_id: i64,
    /// Its current name.
    pub name: QualifiedName,
    /// Its owner.
    pub owner: pg_sys::Oid,
    /// Columns it relies on (attribute numbers); `None`: the whole row.
    pub columns_read: Option<Vec<i16>>,
    /// The signature recorded with the dependency (None for dependencies
    /// recorded by builds that did not keep one).
    pub recorded_signature: Option<String>,
    /// The signature now.
    pub current_signature: Option<String>,
    /// Its DIFFERENTIAL plan, if any.
    pub delta_plan: Option<String>,
    /// Already marked for reinitialization by earlier DDL.
    pub needs_reinit: bool,
}

/// The stream tables reading relation `relid`, with the recorded and the current
/// signature of what each relies on.
pub fn consumers(relid: pg_sys::Oid) -> PgtResult<Vec<Consumer>> {
    query_map(
        "SELECT d.pgt_id, n.nspname::text, c.relname::text, d.columns_read, d.source_signature, \
                pgtrickle._source_signature(d.source_relid, d.columns_read), st.delta_plan, st.needs_reinit, c.relowner \
         FROM pgtrickle.pgt_dependencies d \
         JOIN pgtrickle.pgt_stream_tables st USING (pgt_id) \
         JOIN pg_catalog.pg_class c ON c.oid = st.pgt_relid \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE d.source_relid = $1 ORDER BY d.pgt_id",
        &[relid.into()],
        |row| {
            Ok(Consumer {
                pgt_id: col(row, 1)?,
                name: QualifiedName::new(col::<String>(row, 2)?, col::<String>(row, 3)?),
                columns_read: row.get::<Vec<i16>>(4)?,
                recorded_signature: row.get::<String>(5)?,
                current_signature: row.get::<String>(6)?,
                delta_plan: row.get::<String>(7)?,
                needs_reinit: col(row, 8)?,
                owner: col(row, 9)?,
            })
        },
    )
}

/// A stream table's stored definition: what DDL that renames or replaces
/// objects its query names is checked against (`crate::ddl::on_objects_changed`).
#[derive(Debug, Clone)]
pub struct StoredDefinition {
    /// The stream table.
    pub pgt_id: i64,
    /// Its current name.
    pub name: QualifiedName,
    /// Its owner.
    pub owner: pg_sys::Oid,
    /// The normalized query refreshes run.
    pub defining_query: String,
    /// The analysed query tree (`nodeToString`), if stored.
    pub query_tree: Option<String>,
    /// Already marked for reinitialization.
    pub needs_reinit: bool,
}

/// Every stream table's [`StoredDefinition`], by `pgt_id`.
pub fn stored_definitions() -> PgtResult<Vec<StoredDefinition>> {
    query_map(
        kept("SELECT st.pgt_id, n.nspname::text, c.relname::text, c.relowner, st.defining_query, st.query_tree, st.needs_reinit \
              FROM pgtrickle.pgt_stream_tables st \
              JOIN pg_catalog.pg_class c ON c.oid = st.pgt_relid \
              JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
              ORDER BY st.pgt_id"),
        &[],
        |row| {
            Ok(StoredDefinition {
                pgt_id: col(row, 1)?,
                name: QualifiedName::new(col::<String>(row, 2)?, col::<String>(row, 3)?),
                owner: col(row, 4)?,
                defining_query: col(row, 5)?,
                query_tree: row.get::<String>(6)?,
                needs_reinit: col(row, 7)?,
            })
        },
    )
}

/// Marks stream table `pgt_id` for reinitialization at its next refresh
/// (`needs_reinit`), clearing its frontier: it will not read the change buffers'
/// pending rows.
pub fn mark_needs_reinit(pgt_id: i64) -> PgtResult<()> {
    as_extension_owner(|| {
        exec(
            "UPDATE pgtrickle.pgt_stream_tables SET needs_reinit = true, frontier = NULL, frontier_xid = NULL, \
               frontier_cid = NULL WHERE pgt_id = $1",
            &[pgt_id.into()],
        )?;
        Ok(())
    })
}

/// Records the query tree of the (new) definition of `pgt_id`
/// (`AnalyzedQuery::tree`); the definition is current, so it no longer needs
/// reinitialization.
pub fn set_query_tree(pgt_id: i64, tree: &str) -> PgtResult<()> {
    as_extension_owner(|| {
        exec(
            "UPDATE pgtrickle.pgt_stream_tables SET query_tree = $2, needs_reinit = false WHERE pgt_id = $1",
            &[pgt_id.into(), tree.into()],
        )?;
        Ok(())
    })
}

/// The stored query tree of `pgt_id` (None for stream tables created by builds
/// that did not store one).
pub fn query_tree(pgt_id: i64) -> PgtResult<Option<String>> {
    query_one::<String>("SELECT query_tree FROM pgtrickle.pgt_stream_tables WHERE pgt_id = $1", &[pgt_id.into()])
}

/// Stores a patched DIFFERENTIAL plan of `pgt_id` (the mode is unchanged).
pub fn update_plan_text(pgt_id: i64, plan: &str) -> PgtResult<()> {
    as_extension_owner(|| {
        exec("UPDATE pgtrickle.pgt_stream_tables SET delta_plan = $2 WHERE pgt_id = $1", &[pgt_id.into(), plan.into()])?;
        Ok(())
    })
}

/// The recorded sources of stream table `pgt_id`.
pub fn dependencies(pgt_id: i64) -> PgtResult<Vec<Dependency>> {
    query_map(
        kept("SELECT source_relid, source_kind FROM pgtrickle.pgt_dependencies WHERE pgt_id = $1 ORDER BY source_relid"),
        &[pgt_id.into()],
        |row| Ok(Dependency { source_relid: col(row, 1)?, kind: col(row, 2)? }),
    )
}

/// Whether any DIFFERENTIAL stream table still reads `source_relid` through a
/// captured kind of dependency (so its change buffer is still needed; FULL
/// refreshes never read buffers).
pub fn source_has_consumers(source_relid: pg_sys::Oid) -> PgtResult<bool> {
    Ok(query_one::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pgtrickle.pgt_dependencies d JOIN pgtrickle.pgt_stream_tables st USING (pgt_id) \
                        WHERE d.source_relid = $1 AND d.source_kind <> $2 \
                          AND st.effective_refresh_mode = 'DIFFERENTIAL')",
        &[source_relid.into(), SourceKind::View.as_str().into()],
    )?
    .unwrap_or(false))
}

/// Owners (role names) of the DIFFERENTIAL stream tables reading `source_relid`
/// that are not superusers and may read all of the source now (SELECT on it,
/// row-level security not applying to them; as `check_enable_rls` decides):
/// the roles that need, and may have, its change buffer.
pub fn buffer_readers(source_relid: pg_sys::Oid) -> PgtResult<Vec<String>> {
    query_map(
        "SELECT DISTINCT r.rolname::text FROM pgtrickle.pgt_dependencies d \
         JOIN pgtrickle.pgt_stream_tables st USING (pgt_id) \
         JOIN pg_catalog.pg_class c ON c.oid = st.pgt_relid \
         JOIN pg_catalog.pg_roles r ON r.oid = c.relowner \
         JOIN pg_catalog.pg_class s ON s.oid = d.source_relid \
         WHERE d.source_relid = $1 AND st.effective_refresh_mode = 'DIFFERENTIAL' AND NOT r.rolsuper \
           AND pg_catalog.has_table_privilege(r.oid, s.oid, 'SELECT') \
           AND NOT (s.relrowsecurity AND NOT (r.rolbypassrls \
                    OR (pg_catalog.pg_has_role(r.oid, s.relowner, 'USAGE') AND NOT s.relforcerowsecurity))) \
         ORDER BY 1",
        &[source_relid.into()],
        |row| col(row, 1),
    )
}

/// Names of the stream tables that read stream table `relid` directly.
pub fn downstream_stream_tables(relid: pg_sys::Oid) -> PgtResult<Vec<String>> {
    query_map(
        "SELECT st.pgt_relid::pg_catalog.regclass::text FROM pgtrickle.pgt_dependencies d \
         JOIN pgtrickle.pgt_stream_tables st USING (pgt_id) \
         WHERE d.source_relid = $1 ORDER BY 1",
        &[relid.into()],
        |row| col(row, 1),
    )
}

/// The edges of the stream-table graph: `(upstream, downstream)` relation OIDs
/// for every stream table that reads another stream table (directly or through
/// a view).
pub fn stream_table_edges() -> PgtResult<Vec<(u32, u32)>> {
    Ok(source_edges()?.into_iter().filter(|(_, _, st)| *st).map(|(up, down, _)| (up, down)).collect())
}

/// Every `(source, stream table, source is a stream table)` dependency as
/// relation OIDs: tables, views and stream tables each stream table reads (for
/// diamond detection; the stream-table ones are [`stream_table_edges`]).
pub fn source_edges() -> PgtResult<Vec<(u32, u32, bool)>> {
    query_map(
        kept("SELECT d.source_relid, st.pgt_relid, d.source_kind = 'STREAM_TABLE' \
         FROM pgtrickle.pgt_dependencies d JOIN pgtrickle.pgt_stream_tables st USING (pgt_id)"),
        &[],
        |row| Ok((col::<pg_sys::Oid>(row, 1)?.to_u32(), col::<pg_sys::Oid>(row, 2)?.to_u32(), col::<bool>(row, 3)?)),
    )
}

/// The change-capture record of a source: its change buffer and capture function.
#[derive(Debug, Clone)]
pub struct ChangeTracking {
    /// The captured relation.
    pub source_relid: pg_sys::Oid,
    /// Its change buffer `pgtrickle_changes.changes_<source oid>`.
    pub buffer_relid: pg_sys::Oid,
    /// Its capture function `pgtrickle_changes.capture_<source oid>()`.
    pub capture_function: pg_sys::Oid,
    /// The source's columns (name and type) when capture was last built.
    pub column_signature: String,
    /// The source column (attribute number) each user column of the buffer holds,
    /// in the buffer's order; `None` for buffers of builds that did not record it.
    pub captured_attnums: Option<Vec<i16>>,
}

/// Every captured source of this database.
pub fn captured_sources() -> PgtResult<Vec<pg_sys::Oid>> {
    query_map("SELECT source_relid FROM pgtrickle.pgt_change_tracking ORDER BY 1", &[], |row| col(row, 1))
}

/// Captured sources no DIFFERENTIAL stream table reads any more: their
/// capture is left for the scheduler to remove when the role that stopped
/// needing it could not (see `cdc::release_capture_if_unused`).
pub fn unused_captured_sources() -> PgtResult<Vec<pg_sys::Oid>> {
    query_map(
        "SELECT ct.source_relid FROM pgtrickle.pgt_change_tracking ct \
         WHERE NOT EXISTS (SELECT 1 FROM pgtrickle.pgt_dependencies d JOIN pgtrickle.pgt_stream_tables st USING (pgt_id) \
                           WHERE d.source_relid = ct.source_relid AND d.source_kind <> 'VIEW' \
                             AND st.effective_refresh_mode = 'DIFFERENTIAL') \
         ORDER BY 1",
        &[],
        |row| col(row, 1),
    )
}

/// The change-capture record of `source_relid`, if it is captured.
pub fn change_tracking(source_relid: pg_sys::Oid) -> PgtResult<Option<ChangeTracking>> {
    Ok(query_map(
        kept("SELECT source_relid, buffer_relid, capture_function, column_signature, captured_attnums \
         FROM pgtrickle.pgt_change_tracking \
         WHERE source_relid = $1"),
        &[source_relid.into()],
        |row| {
            Ok(ChangeTracking {
                source_relid: col(row, 1)?,
                buffer_relid: col(row, 2)?,
                capture_function: col(row, 3)?,
                column_signature: col(row, 4)?,
                captured_attnums: row.get::<Vec<i16>>(5)?,
            })
        },
    )?
    .into_iter()
    .next())
}

/// The version of pg_trickle this library is (Cargo's package version), which
/// the catalog installed in the database must match.
pub const LIBRARY_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The pg_trickle version installed in the current database
/// (`pg_extension.extversion`), if it is installed.
pub fn installed_version() -> PgtResult<Option<String>> {
    query_one::<String>(kept("SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'pg_trickle'"), &[])
}

/// Errors (55000) when the database's pg_trickle catalog is of another
/// version than this library: after installing a new build, until `ALTER
/// EXTENSION pg_trickle UPDATE` brings the catalog to it, stream tables are
/// neither created, changed nor refreshed (change capture goes on).
pub fn require_current_catalog() -> PgtResult<()> {
    match installed_version()? {
        Some(v) if v != LIBRARY_VERSION => Err(PgtError::new(
            pgrx::PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("pg_trickle {v} is installed in this database, but the loaded library is pg_trickle {LIBRARY_VERSION}"),
        )
        .detail("Stream tables are not created, changed or refreshed until the installed version matches; changes to their sources are still captured.".to_string())
        .hint(format!("Run ALTER EXTENSION pg_trickle UPDATE TO '{LIBRARY_VERSION}' (docs/OPERATIONS.md)."))),
        _ => Ok(()),
    }
}

/// The state format of stream table `pgt_id` (`pgt_stream_tables.state_format`).
pub fn state_format(pgt_id: i64) -> PgtResult<i32> {
    Ok(query_one::<i32>(kept("SELECT state_format FROM pgtrickle.pgt_stream_tables WHERE pgt_id = $1"), &[pgt_id.into()])?.unwrap_or(0))
}

/// Records that stream table `pgt_id`'s stored state is of format `format`.
pub fn set_state_format(pgt_id: i64, format: i32) -> PgtResult<()> {
    as_extension_owner(|| {
        exec(
            kept("UPDATE pgtrickle.pgt_stream_tables SET state_format = $2 WHERE pgt_id = $1 AND state_format IS DISTINCT FROM $2"),
            &[pgt_id.into(), format.into()],
        )?;
        Ok(())
    })
}

/// Every captured source with its change buffer: `(source, buffer)`, in
/// source OID order.
pub fn all_change_tracking() -> PgtResult<Vec<(pg_sys::Oid, pg_sys::Oid)>> {
    query_map(
        kept("SELECT source_relid, buffer_relid FROM pgtrickle.pgt_change_tracking ORDER BY source_relid"),
        &[],
        |row| Ok((col(row, 1)?, col(row, 2)?)),
    )
}

/// Records that `source_relid` is now captured into `buffer_relid`.
pub fn insert_change_tracking(t: &ChangeTracking, source_name: &QualifiedName) -> PgtResult<()> {
    as_extension_owner(|| {
        exec(
            "INSERT INTO pgtrickle.pgt_change_tracking \
               (source_relid, source_name, buffer_relid, capture_function, column_signature, captured_attnums) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                t.source_relid.into(),
                source_name.to_string().into(),
                t.buffer_relid.into(),
                t.capture_function.into(),
                t.column_signature.as_str().into(),
                t.captured_attnums.clone().into(),
            ],
        )?;
        Ok(())
    })
}

/// Points the change-capture record of `source_relid` at its (possibly new)
/// buffer, the column signature capture was rebuilt for and the source columns
/// the buffer's columns hold, in order.
pub fn update_change_tracking_buffer(
    source_relid: pg_sys::Oid,
    buffer_relid: pg_sys::Oid,
    signature: &str,
    captured_attnums: &[i16],
) -> PgtResult<()> {
    as_extension_owner(|| {
        exec(
            "UPDATE pgtrickle.pgt_change_tracking SET buffer_relid = $2, column_signature = $3, captured_attnums = $4 \
             WHERE source_relid = $1",
            &[source_relid.into(), buffer_relid.into(), signature.into(), captured_attnums.to_vec().into()],
        )?;
        Ok(())
    })
}

/// Columns stream table `pgt_id` relies on that no longer exist: (source name,
/// recorded signature, attribute number).
pub fn dropped_columns_read(pgt_id: i64) -> PgtResult<Vec<(String, String, i16)>> {
    query_map(
        "SELECT coalesce(pg_catalog.split_part(d.source_signature, '|', 1), d.source_relid::pg_catalog.regclass::text), \
                coalesce(d.source_signature, ''), c.attnum \
         FROM pgtrickle.pgt_dependencies d, pg_catalog.unnest(d.columns_read) c(attnum) \
         WHERE d.pgt_id = $1 AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a \
               WHERE a.attrelid = d.source_relid AND a.attnum = c.attnum AND NOT a.attisdropped) \
         ORDER BY 1, 3",
        &[pgt_id.into()],
        |row| Ok((col(row, 1)?, col(row, 2)?, col(row, 3)?)),
    )
}

/// Clears the frontier of stream table `pgt_id`: its next refresh recomputes.
pub fn clear_frontier(pgt_id: i64) -> PgtResult<()> {
    as_extension_owner(|| {
        exec(
            "UPDATE pgtrickle.pgt_stream_tables SET frontier = NULL, frontier_xid = NULL, frontier_cid = NULL \
             WHERE pgt_id = $1",
            &[pgt_id.into()],
        )?;
        Ok(())
    })
}

/// Forgets the change-capture record of `source_relid`.
pub fn delete_change_tracking(source_relid: pg_sys::Oid) -> PgtResult<()> {
    as_extension_owner(|| {
        exec("DELETE FROM pgtrickle.pgt_change_tracking WHERE source_relid = $1", &[source_relid.into()])?;
        Ok(())
    })
}

/// Who started a refresh; stored in `pgt_refresh_history.initiated_by`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitiatedBy {
    /// `pgtrickle.refresh_stream_table()`.
    Manual,
    /// The initial population by `create_stream_table(..., initialize => true)` or a
    /// rebuild by `alter_stream_table(..., query => ...)`.
    Initial,
    /// The background scheduler.
    Scheduler,
}

impl InitiatedBy {
    /// The catalog spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            InitiatedBy::Manual => "MANUAL",
            InitiatedBy::Initial => "INITIAL",
            InitiatedBy::Scheduler => "SCHEDULER",
        }
    }
}

/// One finished refresh, for `pgt_refresh_history`.
#[derive(Debug, Clone)]
pub struct RefreshRecord {
    /// The stream table refreshed.
    pub pgt_id: i64,
    /// When the refresh started, in seconds since the Unix epoch.
    pub start_time: f64,
    /// FULL / DIFFERENTIAL / IMMEDIATE / SKIP.
    pub action: &'static str,
    /// Rows written into the storage table.
    pub rows_inserted: i64,
    /// Rows removed from the storage table.
    pub rows_deleted: i64,
    /// SUCCESS / FAILED / SKIPPED.
    pub status: &'static str,
    /// The error of a failed refresh.
    pub error_message: Option<String>,
    /// Who started it.
    pub initiated_by: InitiatedBy,
    /// The frontier snapshot (`pg_snapshot` text) the refresh reached.
    pub frontier: Option<String>,
}

/// Adds the refresh rows of a CTE `h` (`pgt_id`, `action`, `initiated_by`,
/// `status`, `rows_inserted`, `rows_deleted`, `seconds`) to the cumulative
/// counters (`pgt_refresh_stats`): one statement with the history insert.
macro_rules! count_refreshes_of_h {
    () => {
        "INSERT INTO pgtrickle.pgt_refresh_stats AS s \
           (pgt_id, action, initiated_by, status, refreshes, rows_inserted, rows_deleted, seconds) \
         SELECT h.pgt_id, h.action, h.initiated_by, h.status, 1, coalesce(h.rows_inserted, 0), coalesce(h.rows_deleted, 0), \
                greatest(h.seconds, 0) FROM h \
         ON CONFLICT (pgt_id, action, initiated_by, status) DO UPDATE \
         SET refreshes = s.refreshes + 1, rows_inserted = s.rows_inserted + EXCLUDED.rows_inserted, \
             rows_deleted = s.rows_deleted + EXCLUDED.rows_deleted, seconds = s.seconds + EXCLUDED.seconds"
    };
}

/// Appends a row to `pgt_refresh_history` (its end time is now).
pub fn insert_refresh_history(r: &RefreshRecord) -> PgtResult<()> {
    as_extension_owner(|| {
        // The history row and its counters, in one statement.
        exec(
            kept(concat!(
                "WITH h AS (INSERT INTO pgtrickle.pgt_refresh_history \
                   (pgt_id, start_time, end_time, action, rows_inserted, rows_deleted, status, \
                    error_message, initiated_by, frontier) \
                 VALUES ($1, pg_catalog.to_timestamp($2), pg_catalog.clock_timestamp(), $3, $4, $5, $6, $7, $8, \
                         $9::pg_catalog.pg_snapshot) \
                 RETURNING pgt_id, action, initiated_by, status, rows_inserted, rows_deleted, \
                           pg_catalog.date_part('epoch', end_time - start_time) AS seconds) ",
                count_refreshes_of_h!()
            )),
            &[
                r.pgt_id.into(),
                r.start_time.into(),
                r.action.into(),
                r.rows_inserted.into(),
                r.rows_deleted.into(),
                r.status.into(),
                r.error_message.as_deref().into(),
                r.initiated_by.as_str().into(),
                r.frontier.as_deref().into(),
            ],
        )?;
        maybe_prune_history(r.pgt_id)
    })
}

/// Adds one refresh to the cumulative counters of stream table `pgt_id`
/// (`pgt_refresh_stats`, which the metrics report and history pruning does
/// not touch): `action` FULL or DIFFERENTIAL, `initiated_by`, `status`
/// SUCCESS or FAILED, rows written, and the time since `start_time` (seconds
/// since the Unix epoch). Called with every history row, and for the
/// scheduled FULL refreshes that changed nothing (which leave no history
/// row; [`insert_refresh_history`] and [`insert_failed_refresh`] count theirs
/// in the same statement).
pub fn count_refresh(pgt_id: i64, action: &str, initiated_by: &str, status: &str, start_time: f64) -> PgtResult<()> {
    as_extension_owner(|| {
        exec(
            kept(concat!(
                "WITH h AS (SELECT $1::bigint AS pgt_id, $2::text AS action, $3::text AS initiated_by, $4::text AS status, \
                                   0::bigint AS rows_inserted, 0::bigint AS rows_deleted, \
                                   pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()) - $5 AS seconds) ",
                count_refreshes_of_h!()
            )),
            &[pgt_id.into(), action.into(), initiated_by.into(), status.into(), start_time.into()],
        )?;
        Ok(())
    })
}

/// Appends a failed scheduled refresh of `pgt_id` (started at `start_time`,
/// seconds since the Unix epoch) to `pgt_refresh_history`, with its error.
pub fn insert_failed_refresh(pgt_id: i64, start_time: f64, error_message: &str) -> PgtResult<()> {
    as_extension_owner(|| {
        // The history row and its counters, in one statement.
        exec(
            concat!(
                "WITH h AS (INSERT INTO pgtrickle.pgt_refresh_history \
                   (pgt_id, start_time, end_time, action, status, error_message, initiated_by) \
                 SELECT st.pgt_id, pg_catalog.to_timestamp($2), pg_catalog.clock_timestamp(), st.effective_refresh_mode, \
                        'FAILED', $3, 'SCHEDULER' \
                 FROM pgtrickle.pgt_stream_tables st WHERE st.pgt_id = $1 \
                 RETURNING pgt_id, action, initiated_by, status, rows_inserted, rows_deleted, \
                           pg_catalog.date_part('epoch', end_time - start_time) AS seconds) ",
                count_refreshes_of_h!()
            ),
            &[pgt_id.into(), start_time.into(), error_message.into()],
        )?;
        maybe_prune_history(pgt_id)
    })
}

/// One insert in this many prunes the stream table's history.
const PRUNE_EVERY: u32 = 32;

thread_local! {
    /// History rows this backend inserted, per stream table.
    static HISTORY_INSERTS: std::cell::RefCell<std::collections::BTreeMap<i64, u32>> =
        const { std::cell::RefCell::new(std::collections::BTreeMap::new()) };
}

/// At this backend's first history row for `pgt_id` and every [`PRUNE_EVERY`]th
/// after it, deletes the history rows of `pgt_id` older than
/// `pg_trickle.history_retention_s` and beyond its newest
/// `pg_trickle.history_max_rows`. Both use the indexes on (pgt_id, ...), so a
/// prune costs about the rows it deletes; the history of a stream table
/// refreshed by one backend (the scheduler) stays within its limits plus
/// [`PRUNE_EVERY`] rows.
fn maybe_prune_history(pgt_id: i64) -> PgtResult<()> {
    let n = HISTORY_INSERTS.with(|m| {
        let mut m = m.borrow_mut();
        let n = m.entry(pgt_id).or_insert(0);
        *n = n.wrapping_add(1);
        *n
    });
    if n % PRUNE_EVERY != 1 {
        return Ok(());
    }
    prune_history(pgt_id).map(|_| ())
}

/// Deletes the history rows of `pgt_id` that the retention settings no longer
/// keep (see [`maybe_prune_history`]); returns how many.
pub fn prune_history(pgt_id: i64) -> PgtResult<u64> {
    let retention = i64::from(crate::guc::HISTORY_RETENTION_S.get());
    let max_rows = i64::from(crate::guc::HISTORY_MAX_ROWS.get());
    as_extension_owner(|| {
        exec(
            kept("DELETE FROM pgtrickle.pgt_refresh_history h WHERE h.pgt_id = $1 \
               AND (($2 > 0 AND h.start_time < pg_catalog.now() - pg_catalog.make_interval(secs => $2)) \
                    OR ($3 > 0 AND h.refresh_id <= (SELECT k.refresh_id FROM pgtrickle.pgt_refresh_history k \
                                                     WHERE k.pgt_id = $1 ORDER BY k.refresh_id DESC OFFSET $3 LIMIT 1)))"),
            &[pgt_id.into(), (retention as f64).into(), max_rows.into()],
        )
    })
}

/// A frontier as stored (see `pgt_core::frontier`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frontier {
    /// `pg_snapshot` text, `xmin:xmax:xip,...`.
    pub snapshot: String,
    /// The refreshing transaction's own xid8 as text, if it had one.
    pub xid: Option<String>,
    /// The command id the refresh ran at.
    pub cid: i64,
}

/// Records what a refresh of `pgt_id` cost: a full recomputation of its
/// DIFFERENTIAL plan (`changes` None: `full_refresh_ms` := `ms`), or a
/// differential refresh applying `changes` changed rows (the moving average
/// `differential_ms_per_change` moves 30 % towards `ms / changes`).
pub fn record_refresh_cost(pgt_id: i64, ms: f64, changes: Option<f64>) -> PgtResult<()> {
    as_extension_owner(|| {
        match changes {
            None => exec(kept("UPDATE pgtrickle.pgt_stream_tables SET full_refresh_ms = $2 WHERE pgt_id = $1"), &[pgt_id.into(), ms.into()])?,
            Some(n) => exec(
                kept(
                    "UPDATE pgtrickle.pgt_stream_tables SET differential_ms_per_change = \
                     coalesce(0.7 * differential_ms_per_change + 0.3 * $2, $2) WHERE pgt_id = $1",
                ),
                &[pgt_id.into(), (ms / n.max(1.0)).into()],
            )?,
        };
        Ok(())
    })
}

/// Records a successful refresh on the stream table's row: new frontier, populated,
/// refresh time, error count reset.
pub fn mark_refreshed(pgt_id: i64, frontier: &Frontier, data_timestamp: &str) -> PgtResult<()> {
    as_extension_owner(|| {
        exec(
            kept("UPDATE pgtrickle.pgt_stream_tables SET frontier = $2::pg_catalog.pg_snapshot, \
               frontier_xid = $3::pg_catalog.xid8, frontier_cid = $4, \
               is_populated = true, data_timestamp = $5::timestamptz, \
               last_refresh_at = pg_catalog.clock_timestamp(), consecutive_errors = 0 \
             WHERE pgt_id = $1"),
            &[
                pgt_id.into(),
                frontier.snapshot.as_str().into(),
                frontier.xid.as_deref().into(),
                frontier.cid.into(),
                data_timestamp.into(),
            ],
        )?;
        Ok(())
    })
}

/// Records that stream table `pgt_id` was found current (a refresh with
/// nothing to apply) as of `data_timestamp`.
pub fn mark_current(pgt_id: i64, data_timestamp: &str) -> PgtResult<()> {
    as_extension_owner(|| {
        exec(
            kept("UPDATE pgtrickle.pgt_stream_tables SET data_timestamp = $2::timestamptz WHERE pgt_id = $1"),
            &[pgt_id.into(), data_timestamp.into()],
        )?;
        Ok(())
    })
}

/// The IMMEDIATE stream tables that relation `relid` (a source, a partition
/// of one, or a stream table's storage) feeds: `(pgt_id, source)` pairs, the
/// source being the relation their plans read (`relid`, or the partitioned
/// table it is a partition of), ordered by `pgt_id`.
pub fn immediate_targets(relid: pg_sys::Oid) -> PgtResult<Vec<(i64, pg_sys::Oid)>> {
    as_extension_owner(|| {
        query_map(
            kept(
                "SELECT d.pgt_id, d.source_relid FROM pgtrickle.pgt_dependencies d \
                 JOIN pgtrickle.pgt_stream_tables st ON st.pgt_id = d.pgt_id \
                 WHERE st.effective_refresh_mode = 'IMMEDIATE' AND d.source_kind <> 'VIEW' \
                   AND d.source_relid IN (SELECT a.relid FROM pg_catalog.pg_partition_ancestors($1) a UNION ALL SELECT $1) \
                 ORDER BY d.pgt_id, d.source_relid",
            ),
            &[relid.into()],
            |row| Ok((col(row, 1)?, col(row, 2)?)),
        )
    })
}

/// Whether any IMMEDIATE stream table reads `relid` (or the partitioned table
/// it is a partition of).
pub fn read_by_immediate(relid: pg_sys::Oid) -> PgtResult<bool> {
    Ok(!immediate_targets(relid)?.is_empty())
}

/// Takes the maintenance row lock of IMMEDIATE stream table `pgt_id`
/// (`pgt_immediate_sync`), recording the current transaction: waits for a
/// concurrent maintainer's commit; in REPEATABLE READ and SERIALIZABLE fails
/// with PostgreSQL's serialization error (40001) when one committed after the
/// transaction's snapshot. Returns false when the stream table has no row (no
/// longer IMMEDIATE).
pub fn lock_immediate(pgt_id: i64) -> PgtResult<bool> {
    as_extension_owner(|| {
        Ok(query_one::<bool>(
            kept("UPDATE pgtrickle.pgt_immediate_sync SET maintained_by = pg_catalog.pg_current_xact_id() WHERE pgt_id = $1 RETURNING true"),
            &[pgt_id.into()],
        )?
        .unwrap_or(false))
    })
}

/// Gives stream table `pgt_id` its maintenance row when `immediate`, removes
/// it otherwise.
pub fn set_immediate(pgt_id: i64, immediate: bool) -> PgtResult<()> {
    as_extension_owner(|| {
        if immediate {
            exec(kept("INSERT INTO pgtrickle.pgt_immediate_sync (pgt_id) VALUES ($1) ON CONFLICT DO NOTHING"), &[pgt_id.into()])?;
        } else {
            exec(kept("DELETE FROM pgtrickle.pgt_immediate_sync WHERE pgt_id = $1"), &[pgt_id.into()])?;
        }
        Ok(())
    })
}

/// Stream table `pgt_id` as committed (or written by this transaction), if it
/// exists.
pub fn stream_table_by_id(pgt_id: i64) -> PgtResult<Option<StreamTable>> {
    let sql = kept(concat!(select_stream_table!(), " WHERE st.pgt_id = $1"));
    as_extension_owner(|| Ok(query_map(sql, &[pgt_id.into()], stream_table_from_row)?.into_iter().next()))
}
