//! The frontier: which captured changes a stream table's contents already include.
//!
//! A refresh reads sources and change buffers in one MVCC snapshot `S`. Its
//! frontier is recorded as three values:
//! - `snapshot`: `S` as a `pg_snapshot` (`pg_current_snapshot()` in `S`);
//! - `xid`: the refreshing transaction's own top-level `xid8`, if it has one;
//! - `cid`: the command id the refresh ran at.
//!
//! A change-buffer row written by transaction `T` (its `__pgt_txid`) at command id
//! `c` (the buffer row's `cmin` system column) is **consumed** by that frontier iff
//!
//! ```text
//! CASE WHEN T = xid THEN c < cid
//!      ELSE pg_visible_in_snapshot(T, snapshot) END
//! ```
//!
//! The ELSE branch is the usual MVCC rule: `S` shows exactly the transactions it
//! deems committed, whatever order they committed in (a sequence number or LSN
//! taken inside the trigger would not be commit order). The WHEN branch covers the
//! refreshing transaction's own writes, which the snapshot cannot describe: its own
//! xid is never in the snapshot's in-progress list, so `pg_visible_in_snapshot`
//! calls it visible when it is below `xmax` and invisible otherwise, while in truth
//! the refresh saw exactly the writes with an earlier command id. Writes the same
//! transaction makes *after* the refresh are not consumed. A refresh applies
//! exactly the rows that are visible to it and not consumed by the previous
//! frontier — never lost, never twice. See docs/ARCHITECTURE.md, "Frontier".

/// SQL for "the buffer row `row` is consumed by the frontier given as the SQL
/// expressions `snapshot` (`pg_snapshot`), `xid` (`xid8`, may be NULL) and `cid`
/// (`bigint`, may be NULL)". `row` is the buffer's table alias.
///
/// A NULL `xid` selects the snapshot branch; a NULL `snapshot` makes the result
/// NULL (wrap in `COALESCE(..., false)` where a strict boolean is needed).
pub fn consumed_by_frontier_sql(row: &str, snapshot: &str, xid: &str, cid: &str) -> String {
    format!(
        "(CASE WHEN {row}.__pgt_txid = {xid} THEN {row}.cmin::text::bigint < {cid} \
         ELSE pg_catalog.pg_visible_in_snapshot({row}.__pgt_txid, {snapshot}) END)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predicate_names_both_terms() {
        let p = consumed_by_frontier_sql("b", "st.frontier", "st.frontier_xid", "st.frontier_cid");
        assert_eq!(
            p,
            "(CASE WHEN b.__pgt_txid = st.frontier_xid THEN b.cmin::text::bigint < st.frontier_cid \
             ELSE pg_catalog.pg_visible_in_snapshot(b.__pgt_txid, st.frontier) END)"
        );
    }
}
