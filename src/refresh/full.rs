//! FULL refresh: recompute the defining query and replace the storage contents.
//!
//! Both statements run in the refresh's registered snapshot (see
//! [`crate::spi::StatementSnapshot`]), as the stream table's owner inside a
//! security-restricted operation:
//!
//! ```sql
//! DELETE FROM st;
//! INSERT INTO st (c1, ..., cn, __pgt_row_id) SELECT ... FROM (<defining query>) q;
//! ```
//!
//! DELETE + INSERT rather than TRUNCATE or a relfilenode swap: under MVCC,
//! concurrent readers keep seeing the old rows until the refreshing transaction
//! commits, and are never blocked (TRUNCATE would take an ACCESS EXCLUSIVE lock and
//! show an empty table to REPEATABLE READ readers).
//!
//! A stream table refreshed in FULL mode numbers its rows (`row_number()`): unique,
//! which is all FULL needs. One with a DIFFERENTIAL plan is recomputed by the
//! plan's own full query ([`refresh_full_with_plan`]), so row identities and the
//! hidden aggregate state are exactly what the differential engine maintains.

use super::Applied;
use crate::catalog::{Frontier, StreamTable};
use crate::error::{PgtError, PgtResult};
use crate::spi::StatementSnapshot;
use crate::storage::{self, ROW_ID_COLUMN};
use pgrx::pg_sys;
use pgt_core::ident::quote_ident;
use pgt_delta::Plan;

/// Recomputes `st` from its defining query, numbering rows. The caller holds the
/// locks and runs this as the owner.
pub fn refresh_full(st: &StreamTable, snapshot: &StatementSnapshot) -> PgtResult<Applied> {
    let columns: Vec<String> = storage::visible_columns(st.relid)?.into_iter().map(|c| quote_ident(&c.name)).collect();
    let column_list = columns.join(", ");
    let table = st.name.to_sql();
    let deleted = snapshot.exec(&format!("DELETE FROM {table}"))?;
    let inserted = snapshot.exec(&format!(
        "INSERT INTO {table} ({column_list}, {row_id}) \
         SELECT {column_list}, pg_catalog.row_number() OVER () FROM ({query}) __pgt_q",
        row_id = quote_ident(ROW_ID_COLUMN),
        query = st.defining_query,
    ))?;
    Ok(Applied { action: "FULL", inserted, deleted, unchanged: false })
}

/// Recomputes `st` with the full query of its DIFFERENTIAL plan.
pub fn refresh_full_with_plan(st: &StreamTable, plan: &Plan, snapshot: &StatementSnapshot) -> PgtResult<Applied> {
    let table = st.name.to_sql();
    let columns: Vec<String> = plan.stored_columns().iter().map(|c| quote_ident(c)).collect();
    let deleted = snapshot.exec(&format!("DELETE FROM {table}"))?;
    // In row-id order, so the unique index on __pgt_row_id grows at its end
    // instead of at a random place per row.
    let inserted = snapshot.exec(&format!(
        "INSERT INTO {table} ({}) SELECT * FROM ({}) f ORDER BY f.__pgt_row_id",
        columns.join(", "),
        plan.full_sql()
    ))?;
    Ok(Applied { action: "FULL", inserted, deleted, unchanged: false })
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
