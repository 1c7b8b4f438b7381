//! Window functions: `SELECT ..., f(...) OVER (PARTITION BY p ORDER BY o
//! <frame>) FROM <input>`, any number of windows and window functions
//! (ranking, offset, aggregates over frames), maintained by recomputing the
//! partitions a change touches.
//!
//! **Identity.** A window function's value for a row depends only on the rows
//! of its partition (SQL:2016 7.11 <window clause>; PostgreSQL docs §3.5 and
//! §4.2.8): with `R|p` the input rows whose partition key is `p` and `W` the
//! window query, `W(R) = ⊎ₚ W(R|p)`. Let `P` be the partition keys of the
//! rows of the input's change `ΔR` (inserted and deleted images both, so a
//! row moving from `p₁` to `p₂` touches both) and `R' = R + ΔR`. For every
//! `p ∉ P`, `R'|p = R|p`, hence
//!
//! ```text
//!   W(R') = W(R) − W(R|P) + W(R'|P)      ΔW = W(R'|P) − W(R|P)
//! ```
//!
//! `W(R|P)` is what the operator's table stores for those partitions (it
//! keeps each output row's partition key in hidden columns `__pgt_wp<i>`,
//! indexed) and `W(R'|P)` is the window query over the input's new state
//! restricted to `P` (reached through the input's indexes on the partition
//! columns, when it has them). With several windows, `P` is taken over the
//! PARTITION BY expressions common to all of them: partitions of that
//! coarser key are unions of every window's partitions, so the identity
//! holds for each window at once. Windows with no common PARTITION BY
//! expression (or none at all) make the whole input one partition: any change
//! recomputes every row, which `explain_st` says.
//!
//! The project the seeds describe compared a stateful incremental
//! `row_number()` with recomputing the affected partitions and measured the
//! recomputation cheaper in every case; this module recomputes.
//!
//! **Row identity.** Output rows are identified by the input's part of their
//! content: the hash of the row's visible values that are not window
//! functions' (nor expressions over them), its partition key and a ranked
//! prefix's order columns (each through its hash function,
//! [`crate::sql::hash_through`]), and its copy number among rows of its
//! partition equal in those (1..k, numbered again by every recomputation).
//! A row keeps its identity while its input values stay, so only rows whose
//! values changed are written, and a row whose rank moved is updated in
//! place (a parent that does not read the rank sees no change): `ΔW` is the
//! full outer join of the stored and the recomputed rows of `P` by
//! identity, minus the pairs that are equal (as text, so that `1.0`
//! becoming `1.00` is written).
//!
//! **Nesting.** The operator is a child ([`crate::node`]): its table is a
//! state table, and the MERGE applying `ΔW` returns the old and new versions
//! of the rows it wrote, which is its delta for the parent (a filter on `rn
//! <= 10`, an aggregate over ranks, a join). A window at the top of a
//! defining query is such a child under a block that reads it whole.
//!
//! **Ranked prefix.** When the parent keeps only the rows whose ranking
//! column is at most `N` (`WHERE rn <= N` over `row_number()`, `rank()` or
//! `dense_rank()`, the level's only window functions, over its only
//! window; DISTINCT ON is `row_number() = 1`), the operator computes and
//! stores only that prefix `σW`, and a partition is recomputed only when a
//! change reaches its prefix. These functions give a row a value that
//! depends only on the rows of its partition sorting before it or tied with
//! it (`rank() = 1 + #{strictly before}`, `dense_rank() = 1 + #{distinct
//! keys strictly before}`, `row_number()` a position among ties), so the
//! prefix is the rows sorting at or before its last row `b`, and
//!
//! ```text
//!   a changed row x (inserted or deleted image) with x ≻ b cannot change σW(R|p)
//! ```
//!
//! unless the prefix holds the whole partition (fewer than `N` rows, or for
//! `dense_rank()` fewer than `N` distinct keys). The probe ranks each
//! changed row among the stored prefix and the other changed rows of its
//! partition, with `rank()` (for a `dense_rank()` prefix, `dense_rank()`)
//! over the window's own PARTITION BY and ORDER BY: a changed row ranks at
//! most `N` whenever it sorts at or before `b` (at most `N − 1` stored rows
//! sort strictly before `b`, since `b`'s own value is at most `N`) or the
//! prefix is the whole partition. `P` is then the partitions with such a
//! row, a subset of the touched ones; the identity above holds with `σW` for
//! `W`, since every partition outside `P` keeps its prefix. The ORDER BY's
//! input columns are stored beside the prefix's rows for the probe (and are
//! part of their content).

use crate::ctx::{Ctx, Returning};
use crate::names::{ROW_ID, WINDOW_CHANGED, WINDOW_INPUT, WINDOW_PROBE_RANK};
use crate::rows;
use crate::sql::{hash_through, merge_by_identity, qualified, record_hash, unfolded};
pub use crate::tree::{RankedPrefix, WindowPlan};
use pgt_core::ident::quote_ident;

/// The window level over input rows `input_rows` (SQL with the input's
/// visible columns): its stored columns, each row identified by content and
/// copy number (module doc); with a ranked prefix, only the prefix.
fn evaluate(plan: &WindowPlan, input_rows: &str) -> String {
    let parts = plan.partition_columns();
    let order = plan.order_columns();
    // The input's values in the row (not the window functions').
    let identified: Vec<usize> = (0..plan.visible.len()).filter(|i| !plan.windowed.get(*i).copied().unwrap_or(false)).collect();
    let hashed: Vec<String> = identified.iter().map(|i| plan.visible[*i].clone()).chain(parts.iter().cloned()).chain(order.iter().cloned()).collect();
    let functions: Vec<String> = identified
        .iter()
        .map(|i| plan.content_hash.get(*i).cloned().unwrap_or_default())
        .chain(plan.partition_hash.iter().cloned())
        .chain(plan.prefix.iter().flat_map(|p| p.order_hash.iter().cloned()))
        .collect();
    let content = hash_through("o", &hashed, &functions);
    // Copies are numbered in the order of their window values, so that a
    // recomputation numbers them alike.
    let windowed: Vec<usize> = (0..plan.visible.len()).filter(|i| !identified.contains(i)).collect();
    let numbering = if windowed.is_empty() {
        String::new()
    } else {
        let columns: Vec<String> = windowed.iter().map(|i| plan.visible[*i].clone()).collect();
        let functions: Vec<String> = windowed.iter().map(|i| plan.content_hash.get(*i).cloned().unwrap_or_default()).collect();
        format!(" ORDER BY {}", hash_through("o", &columns, &functions))
    };
    let id = record_hash(&format!("{}, pg_catalog.row_number() OVER (PARTITION BY {content}{numbering})", unfolded(&content)));
    let hidden: Vec<String> = parts.iter().chain(order).cloned().collect();
    let sep = if hidden.is_empty() { "" } else { ", " };
    let prefix = match &plan.prefix {
        Some(p) => format!(" WHERE o.{} <= {}", quote_ident(&p.column), p.bound),
        None => String::new(),
    };
    format!(
        "SELECT {vis}, {id} AS {ROW_ID}{sep}{hidden} FROM (WITH {WINDOW_INPUT} AS NOT MATERIALIZED ({input_rows}) {template}) o{prefix}",
        vis = qualified("o", &plan.visible),
        hidden = qualified("o", &hidden),
        template = plan.output_template,
    )
}

/// Its full result (the stored columns, [`WindowPlan::stored_columns`]): in
/// a delta context, over the input's new state.
pub fn full_sql(plan: &WindowPlan, ctx: &Ctx) -> String {
    evaluate(plan, &rows::new_rows_sql(&plan.input, ctx))
}

/// SQL matching row `a`'s columns `left` with row `k`'s columns `right`
/// pairwise by the partition key's equality operators; with `nulls`, NULL
/// matches NULL (for the rows of keys with a NULL part).
fn partition_match(plan: &WindowPlan, a: &str, left: &[String], k: &str, right: &[String], nulls: bool) -> String {
    left.iter()
        .zip(right)
        .enumerate()
        .map(|(i, (l, r))| {
            let op = plan.partition_equality.get(i).map(String::as_str).unwrap_or("=");
            let (l, r) = (format!("{a}.{}", quote_ident(l)), format!("{k}.{}", quote_ident(r)));
            if nulls {
                format!("({l} {op} {r} OR ({l} IS NULL AND {r} IS NULL))")
            } else {
                format!("{l} {op} {r}")
            }
        })
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// The rows of `rows` (alias `b`, with columns `columns` holding the
/// partition key) whose partition is in CTE `keys` (columns named as the
/// input's partition columns), plus, in a second branch that runs only when
/// `keys` has a key with a NULL part, those matching it NULL for NULL.
///
/// A one-column key is looked up by [`crate::sql::any_of`] (a join to a few
/// dozen keys was planned as a hash of the whole input); a key of several
/// columns is an equality join (indexable too).
fn restricted(plan: &WindowPlan, rows: &str, columns: &[String], keys: &str) -> String {
    if plan.partition.is_empty() {
        return format!("SELECT b.* FROM ({rows}) b WHERE EXISTS (SELECT 1 FROM {keys})");
    }
    let has_null = plan.partition.iter().map(|c| format!("k.{} IS NULL", quote_ident(c))).collect::<Vec<_>>().join(" OR ");
    let nulls = format!(
        "SELECT b.* FROM ({rows}) b JOIN {keys} k ON {nd} WHERE {has_null}",
        nd = partition_match(plan, "b", columns, "k", &plan.partition, true),
    );
    // (The partition columns come first among `columns`.)
    if let ([column], [key]) = (&columns[..plan.partition.len().min(columns.len())], plan.partition.as_slice()) {
        let op = plan.partition_equality.first().map(String::as_str).unwrap_or("=");
        return format!(
            "SELECT b.* FROM ({rows}) b WHERE {lookup} UNION ALL {nulls}",
            lookup = crate::sql::any_of(
                &format!("b.{}", quote_ident(column)),
                op,
                &format!("SELECT k.{k} FROM {keys} k WHERE k.{k} IS NOT NULL", k = quote_ident(key))
            ),
        );
    }
    format!(
        "SELECT b.* FROM ({rows}) b JOIN {keys} k ON {eq} UNION ALL {nulls}",
        eq = partition_match(plan, "b", columns, "k", &plan.partition, false),
    )
}

/// The partition keys of the rows of CTE `rows` (columns named as the
/// input's), or without PARTITION BY one row when there is any.
fn partitions_of(plan: &WindowPlan, rows: &str) -> String {
    if plan.partition.is_empty() {
        format!("SELECT true AS __pgt_any FROM {rows} d LIMIT 1")
    } else {
        format!("SELECT DISTINCT {} FROM {rows} d", qualified("d", &plan.partition))
    }
}

/// The partitions whose ranked prefix a change reaches (module doc, "Ranked
/// prefix"): the changed rows of CTE `__pgt_wd` ranked among the stored
/// prefix rows of their partitions (CTE `__pgt_wt` holds the touched
/// partitions) by the probe.
fn reached_partitions(plan: &WindowPlan, prefix: &RankedPrefix, st: &str) -> String {
    let parts = plan.partition_columns();
    // The probe reads the partition key and the order columns.
    let mut read: Vec<(String, String)> = Vec::new();
    for (input, stored) in plan.partition.iter().zip(&parts) {
        if !prefix.order_columns.contains(input) {
            read.push((input.clone(), stored.clone()));
        }
    }
    read.extend(prefix.order_columns.iter().map(|c| (c.clone(), c.clone())));
    let changed = read.iter().map(|(c, _)| format!("d.{}", quote_ident(c))).collect::<Vec<_>>().join(", ");
    let stored = read.iter().map(|(c, s)| format!("s.{} AS {}", quote_ident(s), quote_ident(c))).collect::<Vec<_>>().join(", ");
    let prefix_rows = restricted(plan, &format!("SELECT * FROM {st}"), &parts, "__pgt_wt");
    let ranked = format!(
        "SELECT r.* FROM (WITH {WINDOW_INPUT} AS NOT MATERIALIZED ( \
           SELECT {changed}, true AS {WINDOW_CHANGED} FROM __pgt_wd d \
           UNION ALL SELECT {stored}, false FROM ({prefix_rows}) s) {template}) r \
         WHERE r.{WINDOW_CHANGED} AND r.{WINDOW_PROBE_RANK} <= {bound}",
        template = prefix.probe_template,
        bound = prefix.bound,
    );
    partitions_of(plan, &format!("({ranked})"))
}

/// The MERGE applying `ΔW` (module doc) to table `st` (quoted), or `None`
/// when its input did not change. Returns what `returning` asks for.
pub fn merge_sql(plan: &WindowPlan, st: &str, ctx: &Ctx, returning: Returning) -> Option<String> {
    let delta = rows::delta_rows_sql(&plan.input, ctx)?;
    // The touched partitions; with a ranked prefix, those whose prefix a
    // change reaches.
    let keys = match &plan.prefix {
        None => partitions_of(plan, "__pgt_wd"),
        Some(prefix) => reached_partitions(plan, prefix, st),
    };
    let probe = if plan.prefix.is_some() { format!("__pgt_wt AS MATERIALIZED ({}), ", partitions_of(plan, "__pgt_wd")) } else { String::new() };
    let new_rows = evaluate(plan, &restricted(plan, &rows::new_rows_sql(&plan.input, ctx), &plan.input.visible, "__pgt_wk"));
    let stored = plan.stored_columns();
    let parts = plan.partition_columns();
    let old_rows = restricted(plan, &format!("SELECT {} FROM {st} s", qualified("s", &stored)), &parts, "__pgt_wk");
    let v = &plan.visible;
    let written: Vec<String> = v.iter().chain(&parts).chain(plan.order_columns()).cloned().collect();
    let with = format!(
        "__pgt_wd AS MATERIALIZED ({delta}), {probe}__pgt_wk AS MATERIALIZED ({keys}), \
         __pgt_wnew AS MATERIALIZED ({new_rows}), __pgt_wold AS MATERIALIZED ({old_rows}), \
         __pgt_wdelta AS MATERIALIZED ( \
           SELECT coalesce(n.{ROW_ID}, o.{ROW_ID}) AS {ROW_ID}, {nvals}, n.{ROW_ID} IS NULL AS __pgt_gone \
           FROM __pgt_wold o FULL JOIN __pgt_wnew n ON o.{ROW_ID} = n.{ROW_ID} \
           WHERE o.{ROW_ID} IS NULL OR n.{ROW_ID} IS NULL OR ROW({ovis})::text IS DISTINCT FROM ROW({nvis})::text)",
        nvals = qualified("n", &written),
        ovis = qualified("o", v),
        nvis = qualified("n", v),
    );
    Some(merge_by_identity(&with, "__pgt_wdelta", st, &written, v, &returning.clause()))
}

/// The window's lines in `explain_st`: its strategy and partition key, then
/// its input.
pub fn explain(plan: &WindowPlan, indent: &str, ctx: &Ctx, out: &mut String) {
    if plan.partition.is_empty() {
        out.push_str(&format!(
            "{indent}Window — no PARTITION BY common to every window: any change recomputes every row \
             (only the rows whose values change are written)\n"
        ));
    } else {
        out.push_str(&format!(
            "{indent}Window — recompute of each partition a change touches, by ({}); only the rows whose values change are written\n",
            plan.partition.join(", ")
        ));
    }
    if let Some(p) = &plan.prefix {
        out.push_str(&format!(
            "{indent}  ranked prefix: keeps the rows ranked at most {} in each partition (its parent's filter); \
             a partition is recomputed only when a change ranks within them\n",
            p.bound
        ));
    }
    rows::explain(&plan.input, &format!("{indent}  "), ctx, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctx::Tables;
    use crate::model::{add, minus, plus, ZSet};
    use crate::source::{ChangeSource, Frontier};
    use crate::tree::{Block, Changed, Input, Relation, RowsBranch, RowsPlan, Source};
    use proptest::prelude::*;

    /// The model of a window level: rows `(partition, order value)`; each
    /// output row is the input row with its `rank()` and `row_number()`
    /// (ties broken by the order value alone: equal rows are
    /// interchangeable) and the partition's `sum()` over the frame up to the
    /// row (RANGE: peers included).
    type Out = (i8, i8, i64, i64, i64);

    fn window(rows: &ZSet<(i8, i8)>) -> ZSet<Out> {
        let mut out = ZSet::new();
        let mut partitions: std::collections::BTreeMap<i8, Vec<i8>> = Default::default();
        for ((p, v), w) in rows {
            for _ in 0..(*w).max(0) {
                partitions.entry(*p).or_default().push(*v);
            }
        }
        for (p, mut values) in partitions {
            values.sort();
            for (i, v) in values.iter().enumerate() {
                let rank = values.iter().filter(|x| *x < v).count() as i64 + 1;
                let running: i64 = values.iter().filter(|x| *x <= v).map(|x| i64::from(*x)).sum();
                add(&mut out, (p, *v, rank, i as i64 + 1, running), 1);
            }
        }
        out
    }

    /// The input before, the change, and the input after: `rows` (weight 1
    /// each) changed by `change`, deletes of absent rows left out.
    #[allow(clippy::type_complexity)]
    fn states(rows: Vec<(i8, i8)>, change: Vec<((i8, i8), i64)>) -> (ZSet<(i8, i8)>, ZSet<(i8, i8)>, ZSet<(i8, i8)>) {
        let mut old = ZSet::new();
        for r in rows {
            add(&mut old, r, 1);
        }
        let mut delta = ZSet::new();
        let mut new = old.clone();
        for (r, w) in change {
            if w < 0 && new.get(&r).copied().unwrap_or(0) <= 0 {
                continue;
            }
            add(&mut new, r, w);
            add(&mut delta, r, w);
        }
        (old, delta, new)
    }

    fn restrict<R: Ord + Clone>(z: &ZSet<R>, keep: impl Fn(&R) -> bool) -> ZSet<R> {
        z.iter().filter(|(r, _)| keep(r)).map(|(r, w)| (r.clone(), *w)).collect()
    }

    proptest! {
        /// `W(R + ΔR) = W(R) − W(R|P) + W((R + ΔR)|P)` with `P` the
        /// partitions of ΔR's rows: inserts, deletes, rows moving between
        /// partitions, partitions emptied and created.
        #[test]
        fn recomputing_the_touched_partitions_is_the_change(
            rows in proptest::collection::vec((0i8..4, 0i8..6), 0..24),
            change in proptest::collection::vec(((0i8..5, 0i8..6), prop_oneof![Just(1i64), Just(-1i64)]), 0..6),
        ) {
            let (old, delta, new) = states(rows, change);
            let touched: std::collections::BTreeSet<i8> = delta.keys().map(|(p, _)| *p).collect();
            let stored_of_touched = restrict(&window(&old), |o| touched.contains(&o.0));
            let recomputed = window(&restrict(&new, |r| touched.contains(&r.0)));
            let maintained = plus(&minus(&window(&old), &stored_of_touched), &recomputed);
            prop_assert_eq!(maintained, window(&new));
        }
    }

    /// Which ranking function a model prefix filters on.
    #[derive(Debug, Clone, Copy)]
    enum Ranking {
        RowNumber,
        Rank,
        DenseRank,
    }

    /// The values of partition `values` (sorted) with ranking at most `n`.
    fn prefix_of(values: &[i8], ranking: Ranking, n: usize) -> Vec<i8> {
        values
            .iter()
            .enumerate()
            .filter(|(i, v)| {
                let r = match ranking {
                    Ranking::RowNumber => i + 1,
                    Ranking::Rank => values.iter().filter(|x| x < v).count() + 1,
                    Ranking::DenseRank => values.iter().filter(|x| *x < *v).collect::<std::collections::BTreeSet<_>>().len() + 1,
                };
                r <= n
            })
            .map(|(_, v)| *v)
            .collect()
    }

    /// `σW`: the rows `(partition, value)` of each partition's ranked prefix.
    fn prefix(rows: &ZSet<(i8, i8)>, ranking: Ranking, n: usize) -> ZSet<(i8, i8)> {
        let mut partitions: std::collections::BTreeMap<i8, Vec<i8>> = Default::default();
        for ((p, v), w) in rows {
            for _ in 0..(*w).max(0) {
                partitions.entry(*p).or_default().push(*v);
            }
        }
        let mut out = ZSet::new();
        for (p, mut values) in partitions {
            values.sort();
            for v in prefix_of(&values, ranking, n) {
                add(&mut out, (p, v), 1);
            }
        }
        out
    }

    /// The probe: the partitions where a changed row ranks at most `n`
    /// (by `rank()`, or `dense_rank()` for a dense prefix) among the
    /// stored prefix and the changed rows of its partition.
    fn reached(stored: &ZSet<(i8, i8)>, delta: &ZSet<(i8, i8)>, ranking: Ranking, n: usize) -> std::collections::BTreeSet<i8> {
        let mut reached = std::collections::BTreeSet::new();
        for (p, x) in delta.keys() {
            let mut union: Vec<i8> = Vec::new();
            for ((q, v), w) in stored.iter().chain(delta.iter()) {
                if q == p {
                    union.extend(std::iter::repeat_n(*v, w.unsigned_abs() as usize));
                }
            }
            let before: Vec<i8> = union.iter().copied().filter(|v| v < x).collect();
            let r = match ranking {
                Ranking::DenseRank => before.iter().collect::<std::collections::BTreeSet<_>>().len() + 1,
                _ => before.len() + 1,
            };
            if r <= n {
                reached.insert(*p);
            }
        }
        reached
    }

    proptest! {
        /// Ranked prefix: recomputing only the partitions the probe finds
        /// keeps `σW` exact, for `row_number()`, `rank()` and
        /// `dense_rank()` prefixes, ties and short partitions included.
        #[test]
        fn recomputing_the_reached_prefixes_is_the_change(
            rows in proptest::collection::vec((0i8..3, 0i8..6), 0..24),
            change in proptest::collection::vec(((0i8..4, 0i8..6), prop_oneof![Just(1i64), Just(-1i64)]), 0..6),
            n in 1usize..4,
            which in 0u8..3,
        ) {
            let ranking = [Ranking::RowNumber, Ranking::Rank, Ranking::DenseRank][which as usize];
            let (old, delta, new) = states(rows, change);
            let stored = prefix(&old, ranking, n);
            let p = reached(&stored, &delta, ranking, n);
            let recomputed = prefix(&restrict(&new, |r| p.contains(&r.0)), ranking, n);
            let maintained = plus(&minus(&stored, &restrict(&stored, |r| p.contains(&r.0))), &recomputed);
            prop_assert_eq!(maintained, prefix(&new, ranking, n));
        }
    }

    fn plan(partition: bool) -> WindowPlan {
        let block = Block {
            template: "SELECT o.g AS __pgt_wx1, o.v AS __pgt_wx2, o.id AS __pgt_k1_1, __pgt_w_1 FROM p1 o".into(),
            inputs: vec![Input {
                placeholder: "p1".into(),
                source: Source::Relation(Relation {
                    relid: 7,
                    table_sql: "\"public\".\"t\"".into(),
                    buffer_sql: "\"pgtrickle_changes\".\"changes_7\"".into(),
                    columns: vec![Some("id".into()), Some("g".into()), Some("v".into())],
                    key: vec!["id".into()],
                }),
                only: false,
                nullable: None,
                presence: None,
            }],
            columns: vec!["__pgt_wx1".into(), "__pgt_wx2".into(), "__pgt_k1_1".into()],
        };
        WindowPlan {
            input: RowsPlan {
                branches: vec![RowsBranch { block, identity: vec!["__pgt_k1_1".into()] }],
                visible: vec!["__pgt_wx1".into(), "__pgt_wx2".into()],
                content_hash: vec![],
                multiplicity: None,
            },
            partition: if partition { vec!["__pgt_wx1".into()] } else { vec![] },
            partition_equality: if partition { vec!["OPERATOR(pg_catalog.=)".into()] } else { vec![] },
            partition_hash: if partition { vec![String::new()] } else { vec![] },
            partition_types: if partition { vec!["integer".into()] } else { vec![] },
            output_template: format!(
                "SELECT __pgt_wx1 AS __pgt_c1, rank() OVER (PARTITION BY __pgt_wx1 ORDER BY __pgt_wx2) AS __pgt_c2{} FROM {WINDOW_INPUT}",
                if partition { ", __pgt_wx1 AS __pgt_wp1" } else { "" }
            ),
            visible: vec!["__pgt_c1".into(), "__pgt_c2".into()],
            content_hash: vec![String::new(), "pg_catalog.int8send".into()],
            windowed: vec![false, true],
            prefix: None,
        }
    }

    static TABLES: Tables = Tables { stream_table: String::new(), pgt_id: 3 };

    #[test]
    fn stored_rows_carry_identity_and_partition() {
        let p = plan(true);
        assert_eq!(p.stored_columns(), ["__pgt_c1", "__pgt_c2", "__pgt_row_id", "__pgt_wp1"]);
        let full = full_sql(&p, &Ctx::full(&TABLES, &crate::node::NodeRules));
        // The rank is not part of the identity; copies are numbered by it.
        assert!(
            full.contains(
                "row_number() OVER (PARTITION BY pg_catalog.hash_record_extended(ROW(o.\"__pgt_c1\", o.\"__pgt_wp1\"), 0) \
                 ORDER BY pg_catalog.hash_record_extended(ROW(pg_catalog.int8send(o.\"__pgt_c2\")), 0))"
            ),
            "{full}"
        );
        assert!(full.contains("WITH __pgt_win AS NOT MATERIALIZED (SELECT f.\"__pgt_wx1\", f.\"__pgt_wx2\" FROM"), "{full}");
    }

    #[test]
    fn merge_recomputes_touched_partitions_only() {
        let source = ChangeSource::window(Frontier { snapshot: "1:1:".into(), xid: None, cid: None });
        let changed: Changed = [7].into();
        let ctx = Ctx::delta(&TABLES, &source, &changed, &crate::node::NodeRules);
        let m = merge_sql(&plan(true), "st", &ctx, Returning::Actions).unwrap();
        assert!(m.contains("__pgt_wk AS MATERIALIZED (SELECT DISTINCT d.\"__pgt_wx1\" FROM"), "{m}");
        assert!(m.contains("b.\"__pgt_wx1\" OPERATOR(pg_catalog.=) ANY (ARRAY(SELECT k.\"__pgt_wx1\" FROM __pgt_wk k WHERE"), "{m}");
        assert!(m.contains("b.\"__pgt_wp1\" OPERATOR(pg_catalog.=) ANY (ARRAY(SELECT k.\"__pgt_wx1\" FROM __pgt_wk k WHERE"), "{m}");
        assert!(m.contains("WHEN NOT MATCHED AND NOT d.__pgt_gone THEN INSERT (\"__pgt_c1\", \"__pgt_c2\", \"__pgt_wp1\", __pgt_row_id)"), "{m}");
        let whole = merge_sql(&plan(false), "st", &ctx, Returning::Actions).unwrap();
        assert!(whole.contains("WHERE EXISTS (SELECT 1 FROM __pgt_wk)") && whole.contains("LIMIT 1"), "{whole}");
        let none = Changed::new();
        assert!(merge_sql(&plan(true), "st", &Ctx::delta(&TABLES, &source, &none, &crate::node::NodeRules), Returning::Actions).is_none());
    }
}
