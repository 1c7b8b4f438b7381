//! Refreshing a stream table: bring its storage up to date with its defining query
//! and record what happened.
//!
//! [`refresh_stream_table`] reads as the sequence of steps it performs:
//! 1. lock the stream table's catalog row (`FOR UPDATE`): concurrent refreshes and
//!    alters of the same stream table serialize here, and the frontier read is the
//!    latest committed one;
//! 2. lock the storage table in EXCLUSIVE mode: readers go on reading the old
//!    contents, writers wait;
//! 3. run the executor for the effective refresh mode (only FULL exists yet, see
//!    [`full`]) in one registered snapshot, which also becomes the new frontier;
//! 4. record the frontier and a `pgt_refresh_history` row;
//! 5. trim the change buffers of the stream table's sources to what some consumer
//!    still needs.
//!
//! All of it happens in the caller's transaction: if any step fails, the storage
//! keeps its previous contents and nothing is recorded.

/// The FULL refresh executor.
pub mod full;

use crate::catalog::{self, Frontier, InitiatedBy, RefreshRecord};
use crate::cdc;
use crate::error::PgtResult;
use crate::parse::SourceKind;
use crate::spi::query_one;
use pgrx::pg_sys;

/// What a refresh did.
#[derive(Debug, Clone)]
pub struct RefreshOutcome {
    /// FULL / DIFFERENTIAL.
    pub action: &'static str,
    /// Rows written into the storage table.
    pub rows_inserted: i64,
    /// Rows removed from the storage table.
    pub rows_deleted: i64,
    /// The new frontier.
    pub frontier: Frontier,
}

/// Refreshes stream table `pgt_id` (see the module doc for the steps).
pub fn refresh_stream_table(pgt_id: i64, initiated_by: InitiatedBy) -> PgtResult<RefreshOutcome> {
    let st = catalog::lock_stream_table(pgt_id)?;
    unsafe { pg_sys::LockRelationOid(st.relid, pg_sys::ExclusiveLock as pg_sys::LOCKMODE) };
    let start_time = query_one::<String>("SELECT pg_catalog.clock_timestamp()::text", &[])?.unwrap_or_default();

    let result = full::refresh_full(&st)?;

    catalog::mark_refreshed(pgt_id, &result.frontier, &result.data_timestamp)?;
    let outcome = RefreshOutcome {
        action: "FULL",
        rows_inserted: result.rows_inserted as i64,
        rows_deleted: result.rows_deleted as i64,
        frontier: result.frontier,
    };
    catalog::insert_refresh_history(&RefreshRecord {
        pgt_id,
        start_time,
        action: outcome.action,
        rows_inserted: outcome.rows_inserted,
        rows_deleted: outcome.rows_deleted,
        status: "SUCCESS",
        error_message: None,
        initiated_by,
        frontier: Some(outcome.frontier.snapshot.clone()),
    })?;
    for dep in catalog::dependencies(pgt_id)? {
        if dep.kind != SourceKind::View.as_str() {
            cdc::trim_buffer(dep.source_relid)?;
        }
    }
    Ok(outcome)
}
