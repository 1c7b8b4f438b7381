//! FULL refresh: recompute the defining query and make the storage contents equal
//! to it, in one of two ways.
//!
//! **Wholesale** ([`super::swap`]), for a stream table in FULL mode that no
//! other stream table reads (nothing follows its rows), without publications
//! or user triggers, not polled by a `'0s'` schedule (whose checks mostly find
//! nothing new), while `pg_trickle.full_refresh_swap` is on: the result
//! goes into a new heap that is swapped in, as `REFRESH MATERIALIZED VIEW`
//! does — about its speed. Readers wait for the swap at the end of the
//! refresh's transaction and never see a partial table.
//!
//! **Differences** (`pgt_delta::replace`), otherwise:
//!
//! ```sql
//! MERGE INTO st t USING (<result with row identities>) s ON t.__pgt_row_id = s.__pgt_row_id
//! WHEN MATCHED AND <the row changed> THEN UPDATE ...
//! WHEN NOT MATCHED BY TARGET THEN INSERT ...
//! WHEN NOT MATCHED BY SOURCE THEN DELETE
//! ```
//!
//! Under MVCC, concurrent readers keep seeing the old rows until the
//! refreshing transaction commits, and are never blocked. Writing only
//! differences keeps a stream table that reads this one differential: its
//! change buffer receives what changed, not the whole table deleted and
//! inserted. A DIFFERENTIAL stream table recomputed in full (first refresh,
//! fallbacks) always takes this way.
//!
//! Both run in the refresh's registered snapshot (see
//! [`crate::spi::StatementSnapshot`]), as the stream table's owner inside a
//! security-restricted operation.
//!
//! A stream table refreshed in FULL mode identifies its rows by content (a hash
//! of the typed values where every column type has a hash operator class, else
//! the row's text) and copy number (`pgt_delta::replace::content_row_id`), so a
//! row that stays keeps its identity — both ways compute the same identities.
//! One with a DIFFERENTIAL plan is recomputed by the plan's own full query
//! ([`refresh_full_with_plan`]), so row identities and the hidden aggregate
//! state are exactly what the differential engine maintains.

use super::{swap, Applied};
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
    // A stream table DIFFERENTIAL readers capture keeps its identity index:
    // their plans use it as its key.
    let captured = crate::catalog::change_tracking(st.relid)?.is_some();
    crate::storage::sync_row_id_index(st.relid, captured)?;
    // A '0s' schedule checks the table continuously, expecting most checks to
    // find nothing new: those write only differences (nothing, then).
    let polled = matches!(pgt_core::schedule::Schedule::parse(&st.schedule, std::time::Duration::ZERO), Ok(pgt_core::schedule::Schedule::Every(d)) if d.is_zero());
    if !polled && swap::swappable(st.relid)? {
        // The copies of equal rows are numbered as they are stored; typed
        // contents are hashed there too.
        let (source, identities) = if typed {
            (pgt_delta::replace::unidentified_rows(&st.defining_query, &visible), swap::Identities::HashContent(ROW_ID_COLUMN))
        } else {
            (pgt_delta::replace::first_copy_row_id(&st.defining_query, &visible, typed), swap::Identities::NumberCopies(ROW_ID_COLUMN))
        };
        if let Some((inserted, deleted)) = swap_in(st.relid, &source, &visible, identities, snapshot)? {
            return Ok(Applied { action: "FULL", inserted, deleted, unchanged: false });
        }
    }
    let source = pgt_delta::replace::content_row_id(&st.defining_query, &visible, typed);
    let mut columns = visible;
    columns.push(ROW_ID_COLUMN.to_string());
    apply(st, &columns, &source, snapshot)
}

/// Replaces `relid`'s contents by the rows of `source` (its columns: `visible`
/// and the row identity) with [`swap::swap_in`], reading the table's columns
/// in their storage order; `None` when the table stores any other column (a
/// hidden one left by a former DIFFERENTIAL mode) or the types do not fit:
/// the caller then writes the rows through the MERGE.
fn swap_in(relid: pg_sys::Oid, source: &str, visible: &[String], identities: swap::Identities, snapshot: &StatementSnapshot) -> PgtResult<Option<(u64, u64)>> {
    let stored = crate::spi::query_map(
        "SELECT attname::text FROM pg_catalog.pg_attribute WHERE attrelid = $1 AND attnum > 0 \
         AND NOT attisdropped ORDER BY attnum",
        &[relid.into()],
        |row| crate::spi::col::<String>(row, 1),
    )?;
    if stored.iter().any(|c| c != ROW_ID_COLUMN && !visible.contains(c)) {
        return Ok(None);
    }
    let ordered = format!(
        "SELECT {} FROM ({source}) s",
        stored.iter().map(|c| format!("s.{}", pgt_core::ident::quote_ident(c))).collect::<Vec<_>>().join(", ")
    );
    swap::swap_in(relid, &ordered, identities, snapshot)
}

/// Recomputes `st` with the full query of its DIFFERENTIAL plan: first its
/// intermediate state tables, children before parents, then the stream table
/// (each step reads what the steps before it wrote).
pub fn refresh_full_with_plan(st: &StreamTable, plan: &Plan, snapshot: &StatementSnapshot) -> PgtResult<Applied> {
    let mut counts = (0, 0);
    // (Recomputations are where a stream table changes mode: its identity
    // index follows the mode here, not at every refresh.)
    crate::storage::sync_row_id_index(st.relid, true)?;
    // A DIFFERENTIAL stream table recomputed in full (its first refresh, a
    // fallback) keeps its readers unblocked: only the rows that differ are
    // written, in place.
    for step in plan.full_steps(&st.tables()) {
        counts = replace(&step.table, &step.columns, &step.source, snapshot)?;
    }
    Ok(Applied { action: "FULL", inserted: counts.0, deleted: counts.1, unchanged: false })
}

/// Recomputes the window of TopK stream table `st` (`pgt_delta::topk`) with
/// the last of its plan's full steps — the bounded window query over the
/// sources and the state tables as they are now (a refresh's probe brought
/// them up to date) — writing only the rows that differ.
pub fn refill_window(st: &StreamTable, plan: &Plan, snapshot: &StatementSnapshot) -> PgtResult<(u64, u64)> {
    let step = plan
        .full_steps(&st.tables())
        .pop()
        .ok_or_else(|| PgtError::internal(format!("the plan of stream table {} has no full query", st.name)))?;
    replace(&step.table, &step.columns, &step.source, snapshot)
}

/// Deletes the rows of TopK stream table `st` past its LIMIT
/// (`pgt_delta::topk::trim_sql`); returns how many.
pub fn trim_window(st: &StreamTable, topk: &pgt_delta::topk::TopK, snapshot: &StatementSnapshot) -> PgtResult<u64> {
    let _writing = crate::activity::StreamTableWrite::begin();
    let counts = snapshot.query_map(&pgt_delta::topk::trim_sql(topk, &st.name.to_sql()), |row| row.col::<i64>(1))?;
    let trimmed = counts.first().copied().ok_or_else(|| PgtError::internal("trimming a TopK window returned no row"))?;
    Ok(trimmed.max(0) as u64)
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
