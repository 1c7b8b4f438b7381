//! Scan of a captured base relation `R`: what a template placeholder is bound to.
//!
//! Identity: `R_new = R_old + ΔR`, where `ΔR` is the multiset of row images in
//! `R`'s change buffer written by transactions the refresh snapshot sees committed
//! and the previous frontier had not consumed (`pgt_core::frontier`): an image
//! with action `I` has weight +1, `D` weight −1. Then
//!
//! - `new(R)` is the relation itself read in the refresh snapshot, each row weight 1;
//! - `Δ(R)` is the buffer window;
//! - `old(R) = new(R) − Δ(R)`: the table's rows with weight 1 plus the window's
//!   images with their weights negated. Rows an UPDATE or DELETE removed come back
//!   (+1) and rows it added go away (−1); the planner pushes join and filter
//!   conditions into both branches, so reading `old(R)` costs index lookups plus
//!   the (small) window.
//!
//! A window containing a TRUNCATE marker cannot be expressed as row images; the
//! refresh then recomputes in full ([`truncate_in_window_sql`]).
//!
//! Every binding exposes the relation's columns by position (a dropped column as a
//! NULL placeholder) followed by the weight `__pgt_w`.

use crate::plan::Relation;
use pgt_core::frontier::consumed_by_frontier_sql;
use pgt_core::ident::{quote_ident, quote_literal};

/// The frontier a refresh starts from, as stored in the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frontier {
    /// `pg_snapshot` text (`xmin:xmax:xip,...`).
    pub snapshot: String,
    /// The refreshing transaction's xid8 text, if it had one.
    pub xid: Option<String>,
    /// Its command id, if it had an xid.
    pub cid: Option<i64>,
}

impl Frontier {
    /// SQL predicate "buffer row `b` is not yet consumed by this frontier".
    pub fn pending_predicate(&self, row_alias: &str) -> String {
        let snapshot = format!("{}::pg_catalog.pg_snapshot", quote_literal(&self.snapshot));
        let xid = match &self.xid {
            Some(x) => format!("{}::pg_catalog.xid8", quote_literal(x)),
            None => "NULL::pg_catalog.xid8".to_string(),
        };
        let cid = match self.cid {
            Some(c) => format!("{c}::bigint"),
            None => "NULL::bigint".to_string(),
        };
        format!("NOT COALESCE({}, false)", consumed_by_frontier_sql(row_alias, &snapshot, &xid, &cid))
    }
}

/// Name of the placeholder column at position `i` (0-based): the column's name, or
/// `__pgt_dropped_<i+1>` for a dropped column.
pub fn placeholder_column(relation: &Relation, i: usize) -> String {
    match &relation.columns[i] {
        Some(name) => name.clone(),
        None => format!("__pgt_dropped_{}", i + 1),
    }
}

fn select_list(relation: &Relation, alias: &str) -> String {
    (0..relation.columns.len())
        .map(|i| match &relation.columns[i] {
            Some(name) => format!("{alias}.{}", quote_ident(name)),
            None => format!("NULL::integer AS {}", quote_ident(&placeholder_column(relation, i))),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn from_relation(relation: &Relation, only: bool) -> String {
    if only {
        format!("ONLY {}", relation.table_sql)
    } else {
        relation.table_sql.clone()
    }
}

/// `new(R)`: the relation in the refresh snapshot, weight 1. `only` reads the
/// relation without its partitions/children (`FROM ONLY`).
pub fn new_state_sql(relation: &Relation, only: bool) -> String {
    let cols = select_list(relation, "r");
    let sep = if cols.is_empty() { "" } else { ", " };
    format!("SELECT {cols}{sep}1::bigint AS __pgt_w FROM {} r", from_relation(relation, only))
}

/// `Δ(R)`: the change-buffer window after `frontier`, one row per image.
pub fn delta_sql(relation: &Relation, frontier: &Frontier) -> String {
    let cols = select_list(relation, "b");
    let sep = if cols.is_empty() { "" } else { ", " };
    format!(
        "SELECT {cols}{sep}(CASE b.__pgt_action WHEN 'I' THEN 1 ELSE -1 END)::bigint AS __pgt_w \
         FROM {} b WHERE b.__pgt_action <> 'T' AND {}",
        relation.buffer_sql,
        frontier.pending_predicate("b")
    )
}

/// `old(R) = new(R) − Δ(R)`.
pub fn old_state_sql(relation: &Relation, only: bool, frontier: &Frontier) -> String {
    let names: Vec<String> = (0..relation.columns.len()).map(|i| quote_ident(&placeholder_column(relation, i))).collect();
    let cols = names.iter().map(|n| format!("d.{n}")).collect::<Vec<_>>().join(", ");
    let sep = if cols.is_empty() { "" } else { ", " };
    format!(
        "{} UNION ALL SELECT {cols}{sep}-d.__pgt_w FROM ({}) d",
        new_state_sql(relation, only),
        delta_sql(relation, frontier)
    )
}

/// A query returning true when the window of `relation` holds a TRUNCATE marker.
pub fn truncate_in_window_sql(relation: &Relation, frontier: &Frontier) -> String {
    format!(
        "SELECT EXISTS (SELECT 1 FROM {} b WHERE b.__pgt_action = 'T' AND {})",
        relation.buffer_sql,
        frontier.pending_predicate("b")
    )
}

/// A query counting the row images in the window of `relation` (for the change
/// ratio that decides between DIFFERENTIAL and FULL).
pub fn window_size_sql(relation: &Relation, frontier: &Frontier) -> String {
    format!("SELECT count(*) FROM {} b WHERE {}", relation.buffer_sql, frontier.pending_predicate("b"))
}

/// One query describing the windows of all `relations`: one text value
/// `relid:rows:truncated` per relation with a non-empty window, joined by `;`
/// (NULL when every window is empty). `rows` estimates the changed rows as the
/// larger of the new and the old images (an UPDATE writes one of each).
pub fn windows_sql(relations: &[&Relation], frontier: &Frontier) -> String {
    let parts: Vec<String> = relations
        .iter()
        .map(|r| {
            format!(
                "SELECT {relid} AS relid, b.__pgt_action AS action FROM {buffer} b WHERE {pending}",
                relid = r.relid,
                buffer = r.buffer_sql,
                pending = frontier.pending_predicate("b")
            )
        })
        .collect();
    format!(
        "SELECT pg_catalog.string_agg(w.relid || ':' || w.images || ':' || w.truncated, ';') FROM ( \
           SELECT u.relid, greatest(count(*) FILTER (WHERE u.action = 'I'), count(*) FILTER (WHERE u.action = 'D')) AS images, \
                  bool_or(u.action = 'T') AS truncated FROM ({}) u GROUP BY u.relid) w",
        parts.join(" UNION ALL ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel() -> Relation {
        Relation {
            relid: 1,
            table_sql: "\"public\".\"t\"".into(),
            buffer_sql: "\"pgtrickle_changes\".\"changes_1\"".into(),
            columns: vec![Some("id".into()), None, Some("v".into())],
            key: vec!["id".into()],
        }
    }

    fn frontier() -> Frontier {
        Frontier { snapshot: "10:12:11".into(), xid: Some("10".into()), cid: Some(3) }
    }

    #[test]
    fn new_state_keeps_positions_with_dropped_placeholders() {
        assert_eq!(
            new_state_sql(&rel(), false),
            "SELECT r.\"id\", NULL::integer AS \"__pgt_dropped_2\", r.\"v\", 1::bigint AS __pgt_w FROM \"public\".\"t\" r"
        );
        assert!(new_state_sql(&rel(), true).contains("FROM ONLY \"public\".\"t\""));
    }

    #[test]
    fn delta_reads_the_window_with_signed_weights() {
        let d = delta_sql(&rel(), &frontier());
        assert!(d.contains("CASE b.__pgt_action WHEN 'I' THEN 1 ELSE -1 END"));
        assert!(d.contains("b.__pgt_action <> 'T'"));
        assert!(d.contains("'10:12:11'::pg_catalog.pg_snapshot"));
        assert!(d.contains("'10'::pg_catalog.xid8"));
        assert!(d.contains("NOT COALESCE("));
    }

    #[test]
    fn old_state_is_new_minus_delta() {
        let o = old_state_sql(&rel(), false, &frontier());
        assert!(o.starts_with(&new_state_sql(&rel(), false)));
        assert!(o.contains("UNION ALL SELECT d.\"id\", d.\"__pgt_dropped_2\", d.\"v\", -d.__pgt_w FROM ("));
    }

    #[test]
    fn frontier_without_own_xid_uses_typed_nulls() {
        let f = Frontier { snapshot: "5:5:".into(), xid: None, cid: None };
        let p = f.pending_predicate("b");
        assert!(p.contains("NULL::pg_catalog.xid8") && p.contains("NULL::bigint"));
    }
}
