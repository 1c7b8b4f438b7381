//! FULL refresh: recompute the defining query and replace the storage contents.
//!
//! Both statements run in one registered snapshot (see
//! [`crate::spi::StatementSnapshot`]), as the stream table's owner inside a
//! security-restricted operation ([`crate::privilege::as_owner_restricted`]):
//!
//! ```sql
//! DELETE FROM st;
//! INSERT INTO st (c1, ..., cn, __pgt_row_id)
//!   SELECT c1, ..., cn, row_number() OVER () FROM (<defining query>) q;
//! ```
//!
//! DELETE + INSERT rather than TRUNCATE or a relfilenode swap: under MVCC,
//! concurrent readers keep seeing the old rows until the refreshing transaction
//! commits, and are never blocked (TRUNCATE would take an ACCESS EXCLUSIVE lock and
//! show an empty table to REPEATABLE READ readers). The new frontier is
//! `pg_current_snapshot()` evaluated in the same snapshot plus the transaction's
//! own xid and command id ([`frontier_now`]), so it names exactly the changes the
//! new contents include.
//!
//! Row identities are positions in the result (`row_number()`); they are unique,
//! which is all FULL needs. (The DIFFERENTIAL engine will derive identities from
//! keys and must then make FULL use the same derivation.)

use crate::catalog::{Frontier, StreamTable};
use crate::error::{PgtError, PgtResult};
use crate::privilege::as_owner_restricted;
use crate::spi::StatementSnapshot;
use crate::storage::{self, ROW_ID_COLUMN};
use pgrx::pg_sys;
use pgt_core::ident::quote_ident;

/// Counts and frontier of one FULL refresh.
#[derive(Debug, Clone)]
pub struct FullRefreshResult {
    /// Rows the DELETE removed.
    pub rows_deleted: u64,
    /// Rows the INSERT wrote.
    pub rows_inserted: u64,
    /// The frontier the new contents reflect.
    pub frontier: Frontier,
    /// `clock_timestamp()` when the snapshot was taken, as text.
    pub data_timestamp: String,
}

/// Recomputes `st` from its defining query. The caller holds the locks.
pub fn refresh_full(st: &StreamTable) -> PgtResult<FullRefreshResult> {
    let columns: Vec<String> = storage::visible_columns(st.relid)?.into_iter().map(|c| quote_ident(&c.name)).collect();
    let column_list = columns.join(", ");
    let table = st.name.to_sql();
    let delete_sql = format!("DELETE FROM {table}");
    let insert_sql = format!(
        "INSERT INTO {table} ({column_list}, {row_id}) \
         SELECT {column_list}, pg_catalog.row_number() OVER () FROM ({query}) __pgt_q",
        row_id = quote_ident(ROW_ID_COLUMN),
        query = st.defining_query,
    );
    as_owner_restricted(st.owner, || {
        let snapshot = StatementSnapshot::take();
        let data_timestamp = snapshot
            .query_text("SELECT pg_catalog.clock_timestamp()::text")?
            .ok_or_else(|| PgtError::internal("clock_timestamp() returned nothing"))?;
        let rows_deleted = snapshot.exec(&delete_sql)?;
        let rows_inserted = snapshot.exec(&insert_sql)?;
        let frontier = frontier_now(&snapshot)?;
        Ok(FullRefreshResult { rows_deleted, rows_inserted, frontier, data_timestamp })
    })
}

/// The frontier of statements just run in `snapshot`: the snapshot itself, plus the
/// current transaction's xid (if it has one) and current command id, which cover the
/// transaction's own earlier writes (`pgt_core::frontier`).
pub fn frontier_now(snapshot: &StatementSnapshot) -> PgtResult<Frontier> {
    let text = snapshot
        .query_text("SELECT pg_catalog.pg_current_snapshot()::text")?
        .ok_or_else(|| PgtError::internal("pg_current_snapshot() returned nothing"))?;
    let xid = snapshot.query_text("SELECT pg_catalog.pg_current_xact_id_if_assigned()::text")?;
    let cid = unsafe { pg_sys::GetCurrentCommandId(false) } as i64;
    Ok(Frontier { snapshot: text, xid, cid })
}
