//! TopK: `ORDER BY <keys> LIMIT n [OFFSET m]` (and `FETCH FIRST n ROWS WITH
//! TIES`) over the rows of the tree's root. The stream table stores only the
//! window — positions `m+1 .. m+n` of the root's rows in sort order, with any
//! rows tied with the last one under `WITH TIES` — never the rows around it.
//!
//! **Identity.** Let `R` be the root's rows, `W(R)` the window and `b` the
//! last row of the stored window in sort order. If the window is full
//! (`|W| ≥ n`), every row of `R` sorting strictly after `b` lies beyond the
//! window, and the rows sorting at or before `b` are exactly the first
//! `m + |W|` rows. So for a change `ΔR` all of whose rows (inserted, weight
//! +1, and deleted, −1) sort strictly after `b`:
//!
//! ```text
//!   the first m + |W| rows of R + ΔR = the first m + |W| rows of R
//!   ⇒ W(R + ΔR) = W(R)
//! ```
//!
//! (the rows at or before `b` are untouched, and no new row comes before any
//! of them). Otherwise — a change at or before `b`, or a window that is not
//! full (then `R` has fewer than `m + n` rows and the window is all of `R`
//! after position `m`) — the window is recomputed by the bounded query
//! `<root> ORDER BY <keys> OFFSET m LIMIT n` over the sources' (and state
//! tables') new state, and only the rows that differ are written
//! ([`crate::replace`]).
//!
//! **Derivation of the refresh.** One statement computes `ΔR` with the
//! root's own delta rule (reading the change buffers; child operators' state
//! tables are brought up to date by their MERGEs in the same statement, as in
//! any refresh) and counts its rows that do not sort strictly after `b`
//! ([`probe_sql`]). When that count is zero and the window is full, nothing
//! is written: the change cost its delta and one comparison per changed row.
//! Else the refresh runs the window query ([`window_sql`]), which reads a
//! child's state table (an aggregate's result: one row per group) or the
//! sources through their indexes, and merges its `n` rows into the stream
//! table.
//!
//! **Order.** Each key is a visible output column compared with its ORDER BY
//! operator (the btree ordering operator PostgreSQL sorts by: `<` for ASC,
//! `>` for DESC, or the one `USING` names) and NULLS FIRST / LAST, exactly as
//! the query sorts. Rows equal on every key are tied; which of the tied rows
//! at the window's edge it holds is PostgreSQL's choice in the window query,
//! as for the defining query run by hand. A change to a row tied with `b`
//! sorts "at" `b` and recomputes the window.

use crate::sql::qualified;
use pgt_core::ident::quote_ident;

/// `ORDER BY ... LIMIT / OFFSET` of the defining query, over the root's
/// visible columns.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TopK {
    /// The sort keys, most significant first.
    pub keys: Vec<SortKey>,
    /// `LIMIT n` (a negative `n` writes no LIMIT: for the order alone).
    pub limit: i64,
    /// `OFFSET m` (0 when absent).
    pub offset: i64,
    /// `FETCH FIRST n ROWS WITH TIES`: rows tied with the n-th are kept too.
    pub with_ties: bool,
}

/// One key of the ORDER BY.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SortKey {
    /// The visible output column sorted by.
    pub column: String,
    /// The ordering operator, schema-qualified (`OPERATOR(pg_catalog.<)`):
    /// `a <op> b` when `a` sorts before `b` (both non-NULL).
    pub operator: String,
    /// NULLS FIRST (else NULLS LAST).
    pub nulls_first: bool,
}

impl TopK {
    /// `ORDER BY ... [OFFSET m] [LIMIT n | FETCH FIRST n ROWS WITH TIES]` over
    /// alias `alias`'s columns.
    pub fn clause(&self, alias: &str) -> String {
        let keys = self
            .keys
            .iter()
            .map(|k| {
                format!(
                    "{alias}.{} USING {} NULLS {}",
                    quote_ident(&k.column),
                    k.operator,
                    if k.nulls_first { "FIRST" } else { "LAST" }
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let offset = if self.offset > 0 { format!(" OFFSET {}", self.offset) } else { String::new() };
        let limit = match self.limit {
            n if n < 0 => String::new(),
            n if self.with_ties => format!(" FETCH FIRST {n} ROWS WITH TIES"),
            n => format!(" LIMIT {n}"),
        };
        format!("ORDER BY {keys}{offset}{limit}")
    }

    /// SQL (never NULL) true when row `d` sorts strictly after row `b` (both
    /// aliases with the key columns).
    fn after(&self, d: &str, b: &str) -> String {
        let mut out = String::from("false");
        for k in self.keys.iter().rev() {
            let (dk, bk) = (format!("{d}.{}", quote_ident(&k.column)), format!("{b}.{}", quote_ident(&k.column)));
            let op = &k.operator;
            let nulls_after = if k.nulls_first {
                format!("({dk} IS NOT NULL AND {bk} IS NULL)")
            } else {
                format!("({dk} IS NULL AND {bk} IS NOT NULL)")
            };
            let after = format!("({nulls_after} OR coalesce({bk} {op} {dk}, false))");
            let equal = format!(
                "(({dk} IS NULL) = ({bk} IS NULL) AND NOT coalesce({bk} {op} {dk}, false) AND NOT coalesce({dk} {op} {bk}, false))"
            );
            out = format!("({after} OR ({equal} AND {out}))");
        }
        out
    }

    /// The stored window is recomputed when the probe counted `affecting`
    /// changed rows at or before its last row, or it holds `stored` rows,
    /// fewer than the LIMIT (unless the changes were applied directly,
    /// [`TopK::applies_directly`]).
    pub fn needs_refill(&self, affecting: i64, stored: i64) -> bool {
        affecting > 0 || stored < self.limit
    }

    /// Whether a window holding `stored` rows holds every row of the root —
    /// no OFFSET, no ties kept, fewer rows than the LIMIT — so that the
    /// root's changes apply to it as they are, and only the rows beyond the
    /// LIMIT afterwards need removing ([`trim_sql`]).
    pub fn applies_directly(&self, stored: i64) -> bool {
        self.offset == 0 && !self.with_ties && stored < self.limit
    }

    /// SQL true when the stream table holds fewer rows than the LIMIT (the
    /// count in CTE [`STORED`]) and the window has no OFFSET or ties: the
    /// guard of the direct application ([`TopK::applies_directly`]).
    pub fn direct_guard(&self) -> String {
        if self.offset != 0 || self.with_ties {
            return "false".to_string();
        }
        format!("(SELECT s.n FROM {STORED} s) < {}", self.limit)
    }

    /// `ORDER BY <keys>` over alias `alias`, without LIMIT or OFFSET.
    fn order_clause(&self, alias: &str) -> String {
        TopK { limit: -1, offset: 0, with_ties: false, keys: self.keys.clone() }.clause(alias)
    }
}

/// The CTE counting the stream table's rows once per refresh statement
/// ([`stored_sql`]), read by the probe and the direct application's guard.
pub const STORED: &str = "__pgt_stored";

/// The CTE of the direct application's MERGE ([`TopK::applies_directly`]).
pub const DIRECT: &str = "__pgt_direct";

/// The body of CTE [`STORED`]: one row, `n`, the rows of stream table `st`
/// (quoted) as the statement reads it.
pub fn stored_sql(st: &str) -> String {
    format!("SELECT pg_catalog.count(*)::bigint AS n FROM {st}")
}

/// Counts the rows of stream table `st` (quoted) beyond the LIMIT in the
/// ORDER BY, deleting them, after changes were applied to a window that held
/// every row ([`TopK::applies_directly`]): what remains is the first `n`
/// rows of the new result. One row: the count.
pub fn trim_sql(topk: &TopK, st: &str) -> String {
    let order = topk.order_clause("t");
    format!(
        "WITH gone AS (DELETE FROM {st} x WHERE x.__pgt_row_id IN (SELECT t.__pgt_row_id FROM {st} t {order} OFFSET {}) RETURNING 1) \
         SELECT pg_catalog.count(*)::bigint FROM gone",
        topk.limit
    )
}

/// The window of the root's full result `full` (whose columns include the
/// key columns): `SELECT * FROM (<full>) q ORDER BY ... LIMIT ...`.
pub fn window_sql(topk: &TopK, full: &str) -> String {
    format!("SELECT q.* FROM ({full}) q {}", topk.clause("q"))
}

/// One row `(affecting bigint, stored bigint)`: how many rows of the root's
/// delta `delta` (its visible columns and `__pgt_w`) sort at or before the
/// last row of stream table `st` (quoted), and how many rows `st` stores
/// (CTE [`STORED`]) — or, when the window holds every row
/// ([`TopK::direct_guard`]), how many rows CTE [`DIRECT`] (the direct
/// application's MERGE) wrote in place of the first count, which is then
/// not computed.
pub fn probe_sql(topk: &TopK, st: &str, delta: &str) -> String {
    let keys: Vec<String> = topk.keys.iter().map(|k| k.column.clone()).collect();
    // The last stored row: the window is small (at most the LIMIT, plus ties).
    let last = format!(
        "SELECT {cols}, true AS __pgt_last FROM {st} t {order} OFFSET greatest((SELECT s.n FROM {STORED} s) - 1, 0) LIMIT 1",
        cols = qualified("t", &keys),
        order = topk.order_clause("t"),
    );
    format!(
        "SELECT CASE WHEN {guard} THEN (SELECT pg_catalog.count(*) FROM {DIRECT}) \
                ELSE (SELECT pg_catalog.count(*) FROM ({delta}) d LEFT JOIN ({last}) b ON true \
                      WHERE b.__pgt_last IS NULL OR NOT {after}) END::bigint AS affecting, \
                (SELECT s.n FROM {STORED} s) AS stored",
        guard = topk.direct_guard(),
        after = topk.after("d", "b"),
    )
}

impl TopK {
    /// The clause as a reader writes it: `ORDER BY a DESC, b LIMIT 10`
    /// (`USING op` only for an operator other than `<` / `>`, NULLS only
    /// where not the default).
    pub fn display(&self) -> String {
        let keys = self
            .keys
            .iter()
            .map(|k| {
                let (direction, default_nulls_first) = if k.operator.ends_with(".<)") {
                    (String::new(), false)
                } else if k.operator.ends_with(".>)") {
                    (" DESC".to_string(), true)
                } else {
                    (format!(" USING {}", k.operator), false)
                };
                let nulls = match (k.nulls_first, default_nulls_first) {
                    (true, false) => " NULLS FIRST",
                    (false, true) => " NULLS LAST",
                    _ => "",
                };
                format!("{}{direction}{nulls}", quote_ident(&k.column))
            })
            .collect::<Vec<_>>()
            .join(", ");
        let offset = if self.offset > 0 { format!(" OFFSET {}", self.offset) } else { String::new() };
        let limit = if self.with_ties { format!(" FETCH FIRST {} ROWS WITH TIES", self.limit) } else { format!(" LIMIT {}", self.limit) };
        format!("ORDER BY {keys}{limit}{offset}")
    }
}

/// The TopK's line in `explain_st`.
pub fn explain(topk: &TopK, indent: &str, out: &mut String) {
    out.push_str(&format!(
        "{indent}TopK {} — stores only the window; a change sorting after its last row costs one comparison, \
         one at or before it recomputes the window by the bounded query\n",
        topk.display()
    ));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{add, ZSet};
    use proptest::prelude::*;

    fn key(column: &str, operator: &str, nulls_first: bool) -> SortKey {
        SortKey { column: column.into(), operator: operator.into(), nulls_first }
    }

    #[test]
    fn clause_and_comparison() {
        let t = TopK {
            keys: vec![key("revenue", "OPERATOR(pg_catalog.>)", true), key("day", "OPERATOR(pg_catalog.<)", false)],
            limit: 10,
            offset: 5,
            with_ties: false,
        };
        assert_eq!(
            t.clause("q"),
            "ORDER BY q.\"revenue\" USING OPERATOR(pg_catalog.>) NULLS FIRST, q.\"day\" USING OPERATOR(pg_catalog.<) NULLS LAST OFFSET 5 LIMIT 10"
        );
        let after = t.after("d", "b");
        assert!(after.contains("coalesce(b.\"revenue\" OPERATOR(pg_catalog.>) d.\"revenue\", false)"), "{after}");
        assert!(after.contains("(d.\"day\" IS NULL AND b.\"day\" IS NOT NULL)"), "{after}");
        assert!(t.needs_refill(1, 10) && t.needs_refill(0, 9) && !t.needs_refill(0, 10));
        let ties = TopK { with_ties: true, ..t.clone() };
        assert!(ties.clause("q").ends_with("OFFSET 5 FETCH FIRST 10 ROWS WITH TIES"));
        assert_eq!(t.display(), "ORDER BY \"revenue\" DESC, \"day\" LIMIT 10 OFFSET 5");
        let odd = TopK { keys: vec![key("x", "OPERATOR(public.<<<)", true), key("y", "OPERATOR(pg_catalog.>)", false)], ..t.clone() };
        assert_eq!(odd.display(), "ORDER BY \"x\" USING OPERATOR(public.<<<) NULLS FIRST, \"y\" DESC NULLS LAST LIMIT 10 OFFSET 5");
    }

    /// The model: rows `(key, payload)` sorted by key (NULLs last), then
    /// payload as PostgreSQL might break the tie; the window is positions
    /// `offset+1 ..= offset+limit`.
    fn window(rows: &ZSet<(Option<i8>, i8)>, offset: usize, limit: usize) -> Vec<(Option<i8>, i8)> {
        let mut all: Vec<(Option<i8>, i8)> = rows.iter().flat_map(|(r, w)| std::iter::repeat_n(*r, (*w).max(0) as usize)).collect();
        all.sort_by_key(|(k, p)| (k.is_none(), *k, *p));
        all.into_iter().skip(offset).take(limit).collect()
    }

    fn sorts_after(d: &(Option<i8>, i8), b: &(Option<i8>, i8)) -> bool {
        match (d.0, b.0) {
            (None, None) => false,
            (None, Some(_)) => true,
            (Some(_), None) => false,
            (Some(x), Some(y)) => x > y,
        }
    }

    proptest! {
        /// A change whose every row sorts strictly after the last row of a
        /// full window leaves the window as it was; the probe's condition
        /// (`needs_refill`) is false exactly then.
        #[test]
        fn changes_after_a_full_window_leave_it_unchanged(
            rows in proptest::collection::vec((proptest::option::of(0i8..12), 0i8..4), 0..30),
            change in proptest::collection::vec(((proptest::option::of(0i8..12), 0i8..4), prop_oneof![Just(1i64), Just(-1i64)]), 0..6),
            offset in 0usize..4,
            limit in 1usize..8,
        ) {
            let mut old = ZSet::new();
            for r in rows { add(&mut old, r, 1); }
            let stored = window(&old, offset, limit);
            let mut new = old.clone();
            let mut applied = Vec::new();
            for (r, w) in change {
                // Deletions only of rows that exist (a Z-set of a table).
                if w < 0 && old.get(&r).copied().unwrap_or(0) <= 0 { continue; }
                add(&mut new, r, w);
                applied.push(r);
            }
            let topk = TopK { keys: vec![], limit: limit as i64, offset: offset as i64, with_ties: false };
            let affecting = match stored.last() {
                Some(b) => applied.iter().filter(|d| !sorts_after(d, b)).count() as i64,
                None => applied.len() as i64,
            };
            if !topk.needs_refill(affecting, stored.len() as i64) {
                let fresh = window(&new, offset, limit);
                // Equal keys in order; the rows are the same multiset.
                prop_assert_eq!(fresh, stored);
            }
        }
    }
}
