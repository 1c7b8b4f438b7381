//! Child operators: results a block reads as one of its inputs, like a base
//! relation, but computed by an operator of their own — an aggregate, DISTINCT
//! or UNION in a subquery, a view or a CTE (`SELECT ... FROM (SELECT g,
//! sum(x) ... GROUP BY g) s JOIN t ...`). This is what lets operators nest.
//!
//! A parent's delta rule needs a child's delta and, for the terms of its other
//! inputs, the child's old or new state restricted to the rows that join them.
//! Recomputing a child for that would cost a whole aggregation of its input
//! per refresh, and no index reaches into a GROUP BY subquery. So a child
//! aggregate **keeps its result in a state table** (DBSP's "integrate"),
//! `pgtrickle_state.pgt_<pgt_id>_<n>`: one row per group with the subquery's
//! output columns (`__pgt_c1`, ...), `__pgt_row_id` (the hash of the group key,
//! with a unique index) and the aggregate state, exactly what a stream table
//! with that query stores. It is maintained by the aggregate's own rule
//! ([`crate::aggregate`]) in the same statement as the stream table:
//!
//! - `Δchild`: the aggregate's MERGE into the state table runs as a
//!   data-modifying CTE at the top of the refresh's statement, `RETURNING` the
//!   old and new version of every row it deletes, inserts or updates
//!   (PostgreSQL 18's `RETURNING old.*, new.*`): the old versions with weight
//!   −1 and the new ones +1 are exactly the change of the child's result;
//! - `old(child)`: the state table as the statement reads it — all parts of
//!   one statement see one snapshot, so the CTE's writes are not visible;
//! - `new(child) = old − {rows whose id the MERGE changed} + {new versions}`.
//!
//! Each costs work proportional to the changed groups (the MERGE touches only
//! them; parents reach state rows through indexes). A full recomputation fills
//! state tables first, children before parents ([`crate::plan::Plan::full_steps`]).
//!
//! Identity: a child's rows are unique by `__pgt_row_id`, which is its key for
//! the parent (the parent's own row identity hashes it).

use crate::ctx::{Binding, ChildRules, Ctx, Mode, Returning};
use crate::names::{self, NEW_ROW_ID, OLD_ROW_ID, ROW_ID, WEIGHT};
use crate::sql::qualified;
use crate::tree::Node;
use crate::{aggregate, recursive, rows, window};
use pgt_core::ident::quote_ident;

/// The rules of every kind of child operator (see the module doc), given to
/// [`Ctx`] by the plan.
pub struct NodeRules;

impl ChildRules for NodeRules {
    /// In a full recomputation and for `Old`, the state table as the statement
    /// reads it; for `New`, that minus the rows its MERGE changed plus their new
    /// versions.
    fn state_sql(&self, node: &Node, ctx: &Ctx, binding: Binding) -> String {
        let read = read_state(node, ctx);
        if matches!(ctx.mode, Mode::Full) || binding != Binding::New || !ctx.node_changed(node) {
            return read;
        }
        let Some(changes) = hoist_delta(node, ctx) else { return read };
        format!(
            "{read} WHERE {} UNION ALL SELECT {}, 1::bigint FROM {changes} d WHERE d.{NEW_ROW_ID} IS NOT NULL",
            unchanged(&changes),
            returned(node, true)
        )
    }

    /// Like `state_sql`, each part filtered by `columns IN (SELECT columns
    /// FROM affected)` inside its own query level, so that the state table is
    /// reached through its index on `columns` (`Plan::state_lookups`); the
    /// rows the MERGE replaced are left out as in `state_sql` ([`unchanged`]).
    ///
    /// Known cost: a correlated subquery evaluated once per outer row reads
    /// the new versions (a CTE of the MERGE's RETURNING rows, without an
    /// index) once per row, so a term costs the product of its outer rows
    /// and the child's changed rows — negligible for small windows, dominant
    /// for windows of tens of thousands of changes (docs/BENCHMARK.md, TPC-H
    /// Q17 and Q20 at 1 %).
    fn restricted_state_sql(&self, node: &Node, ctx: &Ctx, binding: Binding, columns: &[String], affected: &str) -> String {
        let table = ctx.tables.state_table(node.state_number());
        let list = |alias: &str| columns.iter().map(|c| format!("{alias}.{}", quote_ident(c))).collect::<Vec<_>>().join(", ");
        let keys = format!("SELECT {} FROM {affected} a", list("a"));
        let read = format!(
            "SELECT {}, 1::bigint AS {WEIGHT} FROM {table} s WHERE ({}) IN ({keys})",
            qualified("s", &node.columns()),
            list("s")
        );
        if matches!(ctx.mode, Mode::Full) || binding != Binding::New || !ctx.node_changed(node) {
            return read;
        }
        let Some(changes) = hoist_delta(node, ctx) else { return read };
        let new_values: Vec<String> = columns
            .iter()
            .map(|c| {
                let i = node.visible().iter().position(|v| v == c).map_or(0, |i| i + 1);
                format!("d.{}", names::new_value(i))
            })
            .collect();
        format!(
            "{read} AND {} \
             UNION ALL SELECT {}, 1::bigint FROM {changes} d WHERE d.{NEW_ROW_ID} IS NOT NULL AND ({}) IN ({keys})",
            unchanged(&changes),
            returned(node, true),
            new_values.join(", ")
        )
    }

    /// The new versions of the rows its MERGE changed (+1) and their old
    /// versions (−1); a row rewritten with the same visible values (only its
    /// hidden state changed) is no change to the parent.
    fn delta_sql(&self, node: &Node, ctx: &Ctx) -> Option<String> {
        if !ctx.node_changed(node) {
            return None;
        }
        let changes = hoist_delta(node, ctx)?;
        let olds: Vec<String> = (1..=node.visible().len()).map(|i| format!("d.{}", names::old_value(i))).collect();
        let news: Vec<String> = (1..=node.visible().len()).map(|i| format!("d.{}", names::new_value(i))).collect();
        let changed = format!(
            "(d.{OLD_ROW_ID} IS DISTINCT FROM d.{NEW_ROW_ID} OR ROW({}) IS DISTINCT FROM ROW({}))",
            olds.join(", "),
            news.join(", ")
        );
        let changed = if olds.is_empty() { format!("d.{OLD_ROW_ID} IS DISTINCT FROM d.{NEW_ROW_ID}") } else { changed };
        Some(format!(
            "SELECT {}, 1::bigint AS {WEIGHT} FROM {changes} d WHERE d.{NEW_ROW_ID} IS NOT NULL AND {changed} \
             UNION ALL SELECT {}, -1::bigint FROM {changes} d WHERE d.{OLD_ROW_ID} IS NOT NULL AND {changed}",
            returned(node, true),
            returned(node, false)
        ))
    }

    /// The state table's rows whose row id its MERGE did not change, weight 1.
    fn kept_sql(&self, node: &Node, ctx: &Ctx) -> String {
        let read = read_state(node, ctx);
        match hoist_delta(node, ctx) {
            Some(changes) if ctx.node_changed(node) => format!("{read} WHERE {}", unchanged(&changes)),
            _ => read,
        }
    }

    fn empty_sql(&self, node: &Node, ctx: &Ctx) -> String {
        format!("{} WHERE false", read_state(node, ctx))
    }

    fn explain(&self, node: &Node, indent: &str, ctx: &Ctx, out: &mut String) {
        let table = ctx.tables.state_table(node.state_number());
        out.push_str(&format!("{indent}Child result kept in state table {table} (its MERGE's RETURNING rows are its delta)\n"));
        match node {
            Node::Aggregate(a) => aggregate::explain(&a.plan, &format!("{indent}  "), ctx, out),
            Node::Rows(r) => rows::explain(&r.plan, &format!("{indent}  "), ctx, out),
            Node::Window(w) => window::explain(&w.plan, &format!("{indent}  "), ctx, out),
            Node::Recursive(r) => recursive::explain(&r.plan, &format!("{indent}  "), ctx, out),
        }
    }
}

/// The condition on state table row `s` that its MERGE (CTE `changes`) did
/// not replace it: `s.__pgt_row_id NOT IN (<replaced identities>)`. A NOT IN
/// over an uncorrelated subquery stays a hashed subplan, a filter on the one
/// table (NOT EXISTS would become an anti-join), so a read of the state table
/// keeps its index paths: a parent looking up a few rows by a correlation or
/// join column reaches them by index, even through the UNION ALL with the
/// new versions.
fn unchanged(changes: &str) -> String {
    format!("s.{ROW_ID} NOT IN (SELECT d.{OLD_ROW_ID} FROM {changes} d WHERE d.{OLD_ROW_ID} IS NOT NULL)")
}

/// The state table as the statement reads it (its old state during a
/// refresh), aliased `s`, weight 1.
fn read_state(node: &Node, ctx: &Ctx) -> String {
    let table = ctx.tables.state_table(node.state_number());
    format!("SELECT {}, 1::bigint AS {WEIGHT} FROM {table} s", qualified("s", &node.columns()))
}

/// What its state table holds after a full recomputation.
pub fn full_state_sql(node: &Node, ctx: &Ctx) -> String {
    match node {
        Node::Aggregate(a) => aggregate::full_sql(&a.plan, ctx),
        Node::Rows(r) => rows::full_sql(&r.plan, ctx),
        Node::Window(w) => window::full_sql(&w.plan, ctx),
        Node::Recursive(r) => recursive::full_sql(&r.plan, ctx),
    }
}

/// `d.<new or old value i> AS <column i>, ...` over its MERGE's returned rows.
fn returned(node: &Node, new: bool) -> String {
    node.columns()
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let from = if c == ROW_ID {
                if new { NEW_ROW_ID.to_string() } else { OLD_ROW_ID.to_string() }
            } else if new {
                names::new_value(i + 1)
            } else {
                names::old_value(i + 1)
            };
            format!("d.{from} AS {}", quote_ident(c))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Hoists the MERGE bringing its state table up to date (once) and returns the
/// CTE's name; `None` when its input did not change.
fn hoist_delta(node: &Node, ctx: &Ctx) -> Option<String> {
    let n = node.state_number();
    let name = names::state_delta(n);
    if ctx.is_hoisted(&name) {
        return Some(name);
    }
    let table = ctx.tables.state_table(n);
    let returning = Returning::Changes(node.visible().to_vec());
    // Computed before hoisting: a child's MERGE hoists its own children's first.
    let merge = match node {
        Node::Aggregate(a) => aggregate::merge_sql(&a.plan, &table, ctx, returning),
        Node::Rows(r) => rows::merge_sql(&r.plan, &table, ctx, returning),
        Node::Window(w) => window::merge_sql(&w.plan, &table, ctx, returning),
        Node::Recursive(r) => recursive::merge_sql(&r.plan, &table, ctx, returning),
    }?;
    ctx.hoist(&name, || merge);
    Some(name)
}
