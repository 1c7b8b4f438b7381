//! FULL refresh: recompute the defining query and make the storage contents equal
//! to it, writing only the rows that differ (`pgt_delta::replace`):
//!
//! ```sql
//! MERGE INTO st t USING (<result with row identities>) s ON t.__pgt_row_id = s.__pgt_row_id
//! WHEN MATCHED AND <the row changed> THEN UPDATE ...
//! WHEN NOT MATCHED BY TARGET THEN INSERT ...
//! WHEN NOT MATCHED BY SOURCE THEN DELETE
//! ```
//!
//! It runs in the refresh's registered snapshot (see
//! [`crate::spi::StatementSnapshot`]), as the stream table's owner inside a
//! security-restricted operation. Under MVCC, concurrent readers keep seeing the
//! old rows until the refreshing transaction commits, and are never blocked
//! (TRUNCATE would take an ACCESS EXCLUSIVE lock and show an empty table to
//! REPEATABLE READ readers). Writing only differences keeps a stream table that
//! reads this one differential: its change buffer receives what changed, not the
//! whole table deleted and inserted.
//!
//! A stream table refreshed in FULL mode identifies its rows by content (a hash
//! of the typed values where every column type has a hash operator class, else
//! the row's text) and copy number (`pgt_delta::replace::content_row_id`), so a
//! row that stays keeps its identity. One with a DIFFERENTIAL plan is recomputed by the plan's own full
//! query ([`refresh_full_with_plan`]), so row identities and the hidden aggregate
//! state are exactly what the differential engine maintains.

use super::Applied;
use crate::catalog::{Frontier, StreamTable};
use crate::error::{PgtError, PgtResult};
use crate::spi::StatementSnapshot;
use crate::storage::ROW_ID_COLUMN;
use pgrx::pg_sys;
use pgt_delta::Plan;

/// Recomputes `st` from its defining query. The caller holds the locks and runs
/// this as the owner.
pub fn refresh_full(st: &StreamTable, snapshot: &StatementSnapshot) -> PgtResult<Applied> {
    // The visible columns with their types, in one catalog read.
    let columns = crate::spi::query_map(
        "SELECT attname::text, atttypid FROM pg_catalog.pg_attribute WHERE attrelid = $1 AND attnum > 0 \
         AND NOT attisdropped AND attname::text NOT LIKE '\\_\\_pgt\\_%' ORDER BY attnum",
        &[st.relid.into()],
        |row| Ok((crate::spi::col::<String>(row, 1)?, crate::spi::col::<pg_sys::Oid>(row, 2)?)),
    )?;
    let typed = columns.iter().all(|(_, t)| unsafe { crate::translate::hashable(*t) });
    let visible: Vec<String> = columns.into_iter().map(|(name, _)| name).collect();
    let source = pgt_delta::replace::content_row_id(&st.defining_query, &visible, typed);
    let mut columns = visible;
    columns.push(ROW_ID_COLUMN.to_string());
    apply(st, &columns, &source, snapshot)
}

/// Recomputes `st` with the full query of its DIFFERENTIAL plan: first its
/// intermediate state tables, children before parents, then the stream table
/// (each step reads what the steps before it wrote).
pub fn refresh_full_with_plan(st: &StreamTable, plan: &Plan, snapshot: &StatementSnapshot) -> PgtResult<Applied> {
    let mut counts = (0, 0);
    for step in plan.full_steps(&st.tables()) {
        counts = replace(&step.table, &step.columns, &step.source, snapshot)?;
    }
    Ok(Applied { action: "FULL", inserted: counts.0, deleted: counts.1, unchanged: false })
}

/// Makes the contents of `st` equal to `source` (a query returning `columns`),
/// and counts the rows written as inserted (insert, update) and deleted
/// (delete, update).
fn apply(st: &StreamTable, columns: &[String], source: &str, snapshot: &StatementSnapshot) -> PgtResult<Applied> {
    let (inserted, deleted) = replace(&st.name.to_sql(), columns, source, snapshot)?;
    Ok(Applied { action: "FULL", inserted, deleted, unchanged: false })
}

/// Makes table `table` hold exactly the rows of `source`; returns the rows
/// written (inserted or updated, deleted or updated).
fn replace(table: &str, columns: &[String], source: &str, snapshot: &StatementSnapshot) -> PgtResult<(u64, u64)> {
    let merge = pgt_delta::replace::replace_sql(table, columns, source);
    super::merge_counts(&merge, snapshot)
}

/// The frontier of statements just run in `snapshot` — the snapshot itself, plus the
/// current transaction's xid (if it has one) and current command id, which cover the
/// transaction's own earlier writes (`pgt_core::frontier`) — and the clock time as
/// text.
pub fn frontier_now(snapshot: &StatementSnapshot) -> PgtResult<(Frontier, String)> {
    let text = snapshot
        .query_text(
            "SELECT pg_catalog.pg_current_snapshot()::text || '|' || \
                    coalesce(pg_catalog.pg_current_xact_id_if_assigned()::text, '') || '|' || \
                    pg_catalog.clock_timestamp()::text",
        )?
        .ok_or_else(|| PgtError::internal("pg_current_snapshot() returned nothing"))?;
    let mut parts = text.splitn(3, '|');
    let snapshot_text = parts.next().unwrap_or_default().to_string();
    let xid = parts.next().filter(|x| !x.is_empty()).map(str::to_string);
    let now = parts.next().unwrap_or_default().to_string();
    let cid = unsafe { pg_sys::GetCurrentCommandId(false) } as i64;
    Ok((Frontier { snapshot: snapshot_text, xid, cid }, now))
}
