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
//! Changes are read through a [`ChangeSource`] (today: the change buffer's
//! window behind the frontier). A run whose changes include a TRUNCATE cannot
//! be expressed as row images; the refresh then recomputes in full
//! ([`ChangeSource::truncated_sql`]).
//!
//! Every binding exposes the relation's columns by position (a dropped column as a
//! NULL placeholder) followed by the weight `__pgt_w`.

use crate::names::{self, ACTION, WEIGHT};
use crate::tree::Relation;
use crate::source::ChangeSource;
use pgt_core::ident::quote_ident;

/// Name of the placeholder column at position `i` (0-based): the column's name, or
/// `__pgt_dropped_<i+1>` for a dropped column.
pub fn placeholder_column(relation: &Relation, i: usize) -> String {
    match &relation.columns[i] {
        Some(name) => name.clone(),
        None => names::dropped(i + 1),
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

fn with_weight(cols: &str, weight: &str) -> String {
    let sep = if cols.is_empty() { "" } else { ", " };
    format!("{cols}{sep}{weight}::bigint AS {WEIGHT}")
}

/// `new(R)`: the relation in the refresh snapshot, weight 1. `only` reads the
/// relation without its partitions/children (`FROM ONLY`).
pub fn new_state_sql(relation: &Relation, only: bool) -> String {
    format!("SELECT {} FROM {} r", with_weight(&select_list(relation, "r"), "1"), from_relation(relation, only))
}

/// The empty relation with `R`'s columns: binding the nullable side of an outer
/// join to it NULL-extends every preserved row.
pub fn empty_sql(relation: &Relation, only: bool) -> String {
    format!("{} WHERE false", new_state_sql(relation, only))
}

/// `Δ(R)`: the changed row images, one row per image.
/// When the source knows how many images the window holds (`n`), the scan
/// carries a `LIMIT` a little above that (`n + n/8 + 16`, rounded up to a
/// power of two so that windows of the same order give the same statement
/// text, whose plan can be kept). The LIMIT never drops an image only because
/// `n` is counted in the snapshot the statement runs in, with the same
/// predicate: a count below the true one would lose changes. With it the
/// planner then sizes the delta right instead of guessing from the change
/// buffer's statistics (see [`ChangeSource::Window`]). The price: a
/// subquery with a LIMIT is not flattened, so the block's filters on this
/// input run after the scan instead of inside it; the refresh gives sizes to
/// plans with joins, aggregates or children only.
pub fn delta_sql(relation: &Relation, source: &ChangeSource) -> String {
    let limit = source.images(relation.relid).map(|n| format!(" LIMIT {}", (n + n / 8 + 16).next_power_of_two())).unwrap_or_default();
    format!(
        "SELECT {} FROM {} WHERE {}{limit}",
        with_weight(&select_list(relation, "b"), &source.weight("b")),
        source.changes_from(relation, "b"),
        source.image_predicate("b")
    )
}

/// `old(R) = new(R) − Δ(R)`.
///
/// The changes are read as every row of the buffer, each weighted by its
/// negated weight, or 0 when it is not one of this run's images: neither
/// branch of the UNION ALL has a WHERE clause, so PostgreSQL keeps it as one
/// append relation and can push a join condition into both branches (an index
/// scan of `R` per outer row) instead of scanning all of `R`. Rows of weight 0
/// contribute nothing; the block drops them ([`crate::join::delta_sql`]).
pub fn old_state_sql(relation: &Relation, only: bool, source: &ChangeSource) -> String {
    format!(
        "{} UNION ALL SELECT {} FROM {}",
        new_state_sql(relation, only),
        with_weight(&select_list(relation, "b"), &format!("(CASE WHEN {} THEN -{} ELSE 0 END)", source.image_predicate("b"), source.weight("b"))),
        source.changes_from(relation, "b"),
    )
}

/// The changed images with their weights and buffer positions (`__pgt_ctid`).
fn window_images_sql(relation: &Relation, source: &ChangeSource) -> String {
    format!(
        "SELECT {} AS __pgt_ctid, {}, {} AS {WEIGHT}, b.{ACTION} AS {ACTION} FROM {} WHERE {}",
        source.position("b"),
        select_list(relation, "b"),
        source.weight("b"),
        source.changes_from(relation, "b"),
        source.image_predicate("b")
    )
}

/// `ROW(i.<every column>)::text`: a row image's content, as the identity under
/// which images of one tuple version cancel (both are rendered by the same
/// statement, so equal images have equal text).
fn content_text(relation: &Relation, alias: &str) -> String {
    let cols = (0..relation.columns.len())
        .map(|i| format!("{alias}.{}", quote_ident(&placeholder_column(relation, i))))
        .collect::<Vec<_>>()
        .join(", ");
    format!("ROW({cols})::text")
}

fn key_list(relation: &Relation, alias: &str) -> String {
    relation.key.iter().map(|k| format!("{alias}.{}", quote_ident(k))).collect::<Vec<_>>().join(", ")
}

/// `Δc(R)`: the changes consolidated by content — each content whose net weight
/// (inserted minus removed images) is not zero, once, weighted by that net.
/// Images of one tuple version written and removed in the same run cancel.
pub fn consolidated_delta_sql(relation: &Relation, source: &ChangeSource) -> String {
    let names: Vec<String> = (0..relation.columns.len()).map(|i| quote_ident(&placeholder_column(relation, i))).collect();
    let outer = names.iter().map(|n| format!("c.{n}")).collect::<Vec<_>>().join(", ");
    let inner = names.iter().map(|n| format!("i.{n}")).collect::<Vec<_>>().join(", ");
    format!(
        "SELECT {outer}, c.__pgt_net::bigint AS {WEIGHT} FROM (SELECT {inner}, sum(i.{WEIGHT}) OVER w AS __pgt_net, \
         row_number() OVER w AS __pgt_rn FROM ({}) i WINDOW w AS (PARTITION BY {})) c WHERE c.__pgt_rn = 1 AND c.__pgt_net <> 0",
        window_images_sql(relation, source),
        content_text(relation, "i")
    )
}

/// The rows of `R_new` whose key the changes did not touch, weight 1; every
/// other row of `R` weight 0. For a keyed `R`, these are the rows of the old
/// state that are also in the new state (see [`old_present_sql`]).
pub fn kept_sql(relation: &Relation, only: bool, source: &ChangeSource) -> String {
    format!(
        "SELECT {}, (CASE WHEN ({}) IN (SELECT {keys} FROM ({}) i GROUP BY {}, {keys} HAVING sum(i.{WEIGHT}) <> 0) \
         THEN 0 ELSE 1 END)::bigint AS {WEIGHT} FROM {} r",
        select_list(relation, "r"),
        key_list(relation, "r"),
        window_images_sql(relation, source),
        content_text(relation, "i"),
        from_relation(relation, only),
        keys = key_list(relation, "i"),
    )
}

/// `old(R)` as a set, for the nullable side of an outer join, where a row's
/// presence matters and not only its weight: every row of the old state appears
/// once with weight 1, and other rows appear with weight 0 (the outer join's
/// condition requires a non-zero weight).
///
/// Derivation, for a keyed `R` (`key` not empty; the translation ensures it).
/// Let `net(x)` be the changes' net weight of content `x`. A key none of whose
/// contents has a non-zero net is unchanged, so its row in `R_new` is its old
/// row. A key with some non-zero content changed; its old row, if any, is the
/// content with net −1 (a key has at most one row in each state, so `net` is
/// −1, 0 or +1). Hence `old = kept ∪ {x : net(x) = −1}` ([`kept_sql`]), the
/// second part taken as one `D` image per such content (the one with the lowest
/// ctid).
///
/// Both parts are weights over whole scans — of `R`, and of the change buffer —
/// computed with uncorrelated (hashed) subqueries over the changes, never
/// filters: a UNION ALL of branches without WHERE stays one append relation, so
/// the planner can push the join condition into both scans.
pub fn old_present_sql(relation: &Relation, only: bool, source: &ChangeSource) -> String {
    format!(
        "{1} UNION ALL SELECT {2}, (CASE WHEN {0} IN (SELECT min(i.__pgt_ctid) FILTER (WHERE i.{ACTION} = 'D') FROM ({3}) i \
         GROUP BY {4} HAVING sum(i.{WEIGHT}) < 0) THEN 1 ELSE 0 END)::bigint AS {WEIGHT} FROM {5}",
        source.position("b"),
        kept_sql(relation, only, source),
        select_list(relation, "b"),
        window_images_sql(relation, source),
        content_text(relation, "i"),
        source.changes_from(relation, "b"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Frontier;

    fn rel() -> Relation {
        Relation {
            relid: 1,
            table_sql: "\"public\".\"t\"".into(),
            buffer_sql: "\"pgtrickle_changes\".\"changes_1\"".into(),
            columns: vec![Some("id".into()), None, Some("v".into())],
            key: vec!["id".into()],
        }
    }

    fn frontier() -> ChangeSource {
        ChangeSource::window(Frontier { snapshot: "10:12:11".into(), xid: Some("10".into()), cid: Some(3) })
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
        assert!(o.contains("UNION ALL SELECT b.\"id\", NULL::integer AS \"__pgt_dropped_2\", b.\"v\", (CASE WHEN b.__pgt_action <> 'T' AND NOT COALESCE("));
        assert!(o.contains("THEN -(CASE b.__pgt_action WHEN 'I' THEN 1 ELSE -1 END) ELSE 0 END)::bigint AS __pgt_w FROM \"pgtrickle_changes\".\"changes_1\" b"));
        assert!(!o.contains("WHERE"), "no branch filters, so join conditions reach both");
    }

    #[test]
    fn old_present_weights_changed_keys_zero_and_adds_removed_rows() {
        let o = old_present_sql(&rel(), false, &frontier());
        assert!(o.starts_with(&kept_sql(&rel(), false, &frontier())));
        let k = kept_sql(&rel(), false, &frontier());
        assert!(k.starts_with("SELECT r.\"id\", NULL::integer AS \"__pgt_dropped_2\", r.\"v\", (CASE WHEN (r.\"id\") IN (SELECT i.\"id\" FROM"));
        assert!(k.contains("GROUP BY ROW(i.\"id\", i.\"__pgt_dropped_2\", i.\"v\")::text, i.\"id\" HAVING sum(i.__pgt_w) <> 0"), "keys with a net change");
        assert!(o.contains("min(i.__pgt_ctid) FILTER (WHERE i.__pgt_action = 'D')"), "one image per removed content");
        assert!(o.contains("HAVING sum(i.__pgt_w) < 0) THEN 1 ELSE 0 END)::bigint AS __pgt_w FROM \"pgtrickle_changes\".\"changes_1\" b"));
        // Neither branch filters its scan, so join conditions reach both.
        for branch in o.split(" UNION ALL ") {
            assert!(branch.ends_with(" r") || branch.ends_with(" b"), "{branch}");
        }
    }

    #[test]
    fn consolidated_delta_keeps_contents_with_a_net_change() {
        let c = consolidated_delta_sql(&rel(), &frontier());
        assert!(c.starts_with("SELECT c.\"id\", c.\"__pgt_dropped_2\", c.\"v\", c.__pgt_net::bigint AS __pgt_w"));
        assert!(c.ends_with("WHERE c.__pgt_rn = 1 AND c.__pgt_net <> 0"));
    }

    #[test]
    fn sized_and_parameterized_windows_render_the_same_text_for_the_same_order_of_size() {
        let sized = |n: u64| {
            let mut images = std::collections::BTreeMap::new();
            images.insert(1, n);
            delta_sql(&rel(), &frontier().parameterized().with_images(images))
        };
        let d = sized(1700);
        assert!(d.ends_with(" LIMIT 2048"), "{d}");
        assert_eq!(d, sized(1800), "same power of two");
        assert_ne!(d, sized(1900), "1900 + 1900/8 + 16 > 2048");
        assert!(d.contains("$1::pg_catalog.pg_snapshot") && d.contains("$2::pg_catalog.xid8") && d.contains("$3::bigint"));
        assert!(!d.contains("10:12:11"), "no frontier literal");
        let other = ChangeSource::window(Frontier { snapshot: "99:99:".into(), xid: None, cid: None }).parameterized();
        assert_eq!(delta_sql(&rel(), &other), delta_sql(&rel(), &frontier().parameterized()), "any frontier, one text");
    }

    #[test]
    fn frontier_without_own_xid_uses_typed_nulls() {
        let f = Frontier { snapshot: "5:5:".into(), xid: None, cid: None };
        let p = f.pending_predicate("b");
        assert!(p.contains("NULL::pg_catalog.xid8") && p.contains("NULL::bigint"));
    }
}
