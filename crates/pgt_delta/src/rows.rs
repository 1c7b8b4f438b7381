//! Applying a select-project-join block (or a UNION ALL of them) to a stream table
//! keyed by row identity.
//!
//! Identity: the stream table holds `B(new)`, one row per output row, keyed by
//! `__pgt_row_id = hash(identity columns)` where the identity columns are the keys
//! of the joined input rows (an output row is identified by the input rows it was
//! built from), prefixed by the branch number under UNION ALL. Given `ΔB`:
//!
//! 1. consolidate: sum the weights of equal images (same row id and same record
//!    text — exact, and consistent within the one refresh that computes it); images whose weights cancel — an UPDATE that wrote the same values, a
//!    row inserted and deleted in one cycle — vanish and cause no write;
//! 2. per row id keep the surviving image with positive weight (the new version)
//!    if any, else the negative one (the row is gone);
//! 3. one MERGE: matched and gone → DELETE; matched with a new version → UPDATE;
//!    not matched with a new version → INSERT.
//!
//! **Keyless rows.** When an input has no key, output rows have no identity of
//! their own; equal rows are interchangeable. The `j`-th copy of content `c` (the
//! hash of its values, `sql::record_hash`) is identified by `hash(branch, c, j)`, and the copies of `c` are
//! always numbered `1..k` without gaps: a FULL refresh numbers them so
//! (`row_number()` per content), and a refresh that changes `c`'s multiplicity by
//! `n` finds `k` by probing `hash(c, 1), hash(c, 2), ...` in the unique index
//! (`k` index lookups), then inserts copies `k+1..k+n` or deletes copies
//! `k+n+1..k`.

use crate::ctx::{Ctx, Returning};
use crate::join;
use crate::tree::{RowsBranch, RowsPlan};
use crate::sql::{qualified, quoted, record_hash};
use pgt_core::ident::quote_ident;

/// The row identity of copy `copy` (SQL, a bigint: the hash depends on the type,
/// so every caller passes bigints) of content `content` (SQL: the content hash)
/// in a keyless branch.
fn keyless_row_id(plan: &RowsPlan, index: usize, content: &str, copy: &str) -> String {
    let branch = if plan.branches.len() > 1 { format!("{}, ", index + 1) } else { String::new() };
    record_hash(&format!("{branch}{}, {copy}", crate::sql::unfolded(content)))
}

/// The content of a keyless output row `alias`: the hash of its visible values
/// (each through its [`RowsPlan::content_hash`] function, if any). Rows equal
/// under their types' equality have one content (see [`record_hash`]).
fn keyless_content(plan: &RowsPlan, alias: &str) -> String {
    crate::sql::hash_through(alias, &plan.visible, &plan.content_hash)
}

/// The row identity of a branch's output row `alias` (keyed branches).
fn row_id(plan: &RowsPlan, index: usize, branch: &RowsBranch, alias: &str) -> String {
    let mut parts: Vec<String> = Vec::new();
    if plan.branches.len() > 1 {
        parts.push(format!("{}", index + 1));
    }
    parts.extend(branch.identity.iter().map(|c| format!("{alias}.{}", quote_ident(c))));
    record_hash(&parts.join(", "))
}

/// A branch's rows as SQL (`block` its full or delta result), each repeated
/// by the plan's multiplicity column, if it has one.
fn expanded(plan: &RowsPlan, block: &str) -> String {
    match &plan.multiplicity {
        Some(m) => format!("SELECT e.* FROM ({block}) e, pg_catalog.generate_series(1, e.{}) AS __pgt_copy", quote_ident(m)),
        None => block.to_string(),
    }
}

/// A branch's delta with each row's weight multiplied by its multiplicity, if
/// the plan has one (a row standing for k copies changes by k copies).
fn weighted(plan: &RowsPlan, delta: String) -> String {
    match &plan.multiplicity {
        Some(m) => format!(
            "SELECT {}, w.__pgt_w * w.{} AS __pgt_w FROM ({delta}) w",
            qualified("w", &plan.visible),
            quote_ident(m)
        ),
        None => delta,
    }
}

/// `SELECT <visible>, __pgt_row_id` over the full result: what a FULL refresh inserts.
pub fn full_sql(plan: &RowsPlan, ctx: &Ctx) -> String {
    plan.branches
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if b.keyless() {
                let content = keyless_content(plan, "f");
                format!(
                    "SELECT {vis}, {id} AS __pgt_row_id FROM ({block}) f",
                    vis = qualified("f", &plan.visible),
                    id = keyless_row_id(plan, i, &content, &format!("pg_catalog.row_number() OVER (PARTITION BY {content})")),
                    block = expanded(plan, &join::full_sql(&b.block, ctx))
                )
            } else {
                format!(
                    "SELECT {}, {} AS __pgt_row_id FROM ({}) f",
                    qualified("f", &plan.visible),
                    row_id(plan, i, b, "f"),
                    join::full_sql(&b.block, ctx)
                )
            }
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ")
}

/// The full result's visible columns, one row per copy (each block row
/// repeated by the plan's multiplicity, if it has one), without identities:
/// for an operator that reads these rows as its input ([`crate::window`]).
/// In a delta context, over the inputs' new states.
pub fn new_rows_sql(plan: &RowsPlan, ctx: &Ctx) -> String {
    plan.branches
        .iter()
        .map(|b| format!("SELECT {} FROM ({}) f", qualified("f", &plan.visible), expanded(plan, &join::full_sql(&b.block, ctx))))
        .collect::<Vec<_>>()
        .join(" UNION ALL ")
}

/// The root's delta as rows of its visible columns and `__pgt_w` (every
/// branch's, each row repeated by its multiplicity as a weight), unconsolidated;
/// `None` when no input changed. For a TopK over the root ([`crate::topk`]).
pub fn delta_rows_sql(plan: &RowsPlan, ctx: &Ctx) -> Option<String> {
    let deltas: Vec<String> = plan
        .branches
        .iter()
        .filter_map(|b| {
            let delta = weighted(plan, join::delta_sql(&b.block, ctx)?);
            Some(format!("SELECT {}, d.__pgt_w FROM ({delta}) d", qualified("d", &plan.visible)))
        })
        .collect();
    (!deltas.is_empty()).then(|| deltas.into_iter().map(|d| format!("({d})")).collect::<Vec<_>>().join(" UNION ALL "))
}

/// The MERGE applying the changes to table `st` (quoted name: the stream
/// table, or a child's state table), or `None` when no input changed. Returns
/// what `returning` asks for.
pub fn merge_sql(plan: &RowsPlan, st: &str, ctx: &Ctx, returning: Returning) -> Option<String> {
    guarded_merge_sql(plan, st, ctx, returning, None)
}

/// [`merge_sql`] whose changes apply only where SQL condition `guard`
/// (evaluated in the statement's snapshot, over nothing of the changes)
/// holds: for a TopK whose window holds every row ([`crate::topk`]).
pub fn guarded_merge_sql(plan: &RowsPlan, st: &str, ctx: &Ctx, returning: Returning, guard: Option<&str>) -> Option<String> {
    let v = &plan.visible;
    let mut keyless_sources = Vec::new();
    let deltas: Vec<String> = plan
        .branches
        .iter()
        .enumerate()
        .filter_map(|(i, b)| {
            let delta = weighted(plan, join::delta_sql(&b.block, ctx)?);
            if b.keyless() {
                keyless_sources.push(keyless_source(plan, i, st, &delta));
                return None;
            }
            Some(format!("SELECT {} AS __pgt_row_id, {}, d.__pgt_w FROM ({delta}) d", row_id(plan, i, b, "d"), qualified("d", v)))
        })
        .collect();
    if deltas.is_empty() && keyless_sources.is_empty() {
        return None;
    }
    let keyed_source = (!deltas.is_empty()).then(|| keyed_source(v, deltas));
    let source = keyed_source
        .into_iter()
        .chain(keyless_sources)
        .map(|s| format!("({s})"))
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    let source = match guard {
        Some(g) => format!("SELECT * FROM ({source}) g WHERE {g}"),
        None => source,
    };
    let set = v.iter().map(|c| format!("{q} = d.{q}", q = quote_ident(c))).collect::<Vec<_>>().join(", ");
    Some(format!(
        "MERGE INTO {st} t USING ({source}) d ON t.__pgt_row_id = d.__pgt_row_id \
         WHEN MATCHED AND d.__pgt_w < 0 THEN DELETE \
         WHEN MATCHED THEN UPDATE SET {set} \
         WHEN NOT MATCHED AND d.__pgt_w > 0 THEN INSERT ({cols}, __pgt_row_id) VALUES ({dvals}, d.__pgt_row_id) \
         {returning}",
        returning = returning.clause(),
        cols = quoted(v),
        dvals = qualified("d", v),
    ))
}

/// MERGE source rows of a keyless branch: one row per copy to insert (weight +1)
/// or delete (weight −1), see the module doc.
fn keyless_source(plan: &RowsPlan, index: usize, st: &str, delta: &str) -> String {
    let v = &plan.visible;
    let any_values = v.iter().map(|c| format!("any_value(d.{q}) AS {q}", q = quote_ident(c))).collect::<Vec<_>>().join(", ");
    let probe_id = keyless_row_id(plan, index, "p.__pgt_content", "p.__pgt_copy + 1");
    let id = keyless_row_id(plan, index, "c.__pgt_content", "s.__pgt_copy_no");
    format!(
        "WITH RECURSIVE __pgt_c AS MATERIALIZED ( \
           SELECT {content} AS __pgt_content, {any_values}, sum(d.__pgt_w)::bigint AS __pgt_n FROM ({delta}) d \
           GROUP BY 1 HAVING sum(d.__pgt_w) <> 0), \
         __pgt_probe AS ( \
           SELECT c.__pgt_content, 0::bigint AS __pgt_copy FROM __pgt_c c \
           UNION ALL \
           SELECT p.__pgt_content, p.__pgt_copy + 1 FROM __pgt_probe p \
           WHERE EXISTS (SELECT 1 FROM {st} t WHERE t.__pgt_row_id = {probe_id})), \
         __pgt_k AS (SELECT __pgt_content, max(__pgt_copy) AS __pgt_k FROM __pgt_probe GROUP BY __pgt_content) \
         SELECT {id} AS __pgt_row_id, {cvis}, CASE WHEN c.__pgt_n > 0 THEN 1 ELSE -1 END::bigint AS __pgt_w \
         FROM __pgt_c c JOIN __pgt_k k USING (__pgt_content), \
              LATERAL pg_catalog.generate_series( \
                  CASE WHEN c.__pgt_n > 0 THEN k.__pgt_k + 1 ELSE greatest(k.__pgt_k + c.__pgt_n + 1, 1) END, \
                  CASE WHEN c.__pgt_n > 0 THEN k.__pgt_k + c.__pgt_n ELSE k.__pgt_k END) AS s(__pgt_copy_no)",
        content = keyless_content(plan, "d"),
        cvis = qualified("c", v),
    )
}

/// Rows `rows` (columns `visible`, one row per copy) as keyless rows of
/// one branch: each with its row identity `hash(content, copy number)`
/// (the module doc's numbering), as a full recomputation writes them.
pub fn keyless_full_sql(visible: &[String], content_hash: &[String], rows: &str) -> String {
    let plan = RowsPlan { branches: Vec::new(), visible: visible.to_vec(), content_hash: content_hash.to_vec(), multiplicity: None };
    let content = keyless_content(&plan, "f");
    format!(
        "SELECT {vis}, {id} AS __pgt_row_id FROM ({rows}) f",
        vis = qualified("f", visible),
        id = keyless_row_id(&plan, 0, &content, &format!("pg_catalog.row_number() OVER (PARTITION BY {content})")),
    )
}

/// The MERGE applying change `delta` (columns `visible` and `__pgt_w`) to
/// table `st` holding keyless rows numbered as [`keyless_full_sql`]
/// numbers them: copies inserted or deleted per content (module doc).
pub fn keyless_merge_sql(visible: &[String], content_hash: &[String], st: &str, delta: &str, returning: Returning) -> String {
    let plan = RowsPlan { branches: Vec::new(), visible: visible.to_vec(), content_hash: content_hash.to_vec(), multiplicity: None };
    let source = keyless_source(&plan, 0, st, delta);
    format!(
        "MERGE INTO {st} t USING ({source}) d ON t.__pgt_row_id = d.__pgt_row_id \
         WHEN MATCHED AND d.__pgt_w < 0 THEN DELETE \
         WHEN NOT MATCHED AND d.__pgt_w > 0 THEN INSERT ({cols}, __pgt_row_id) VALUES ({dvals}, d.__pgt_row_id) \
         {returning}",
        returning = returning.clause(),
        cols = quoted(visible),
        dvals = qualified("d", visible),
    )
}

/// MERGE source rows of the keyed branches: consolidated images, per row id the
/// new version if any.
fn keyed_source(v: &[String], deltas: Vec<String>) -> String {
    let any_values =
        v.iter().map(|c| format!("any_value(c.{q}) AS {q}", q = quote_ident(c))).collect::<Vec<_>>().join(", ");
    format!(
        "SELECT DISTINCT ON (s.__pgt_row_id) s.* FROM ( \
           SELECT c.__pgt_row_id, {any_values}, sum(c.__pgt_w) AS __pgt_w FROM ({union}) c \
           GROUP BY c.__pgt_row_id, ROW({cvis})::text HAVING sum(c.__pgt_w) <> 0) s \
         ORDER BY s.__pgt_row_id, s.__pgt_w DESC",
        union = deltas.into_iter().map(|d| format!("({d})")).collect::<Vec<_>>().join(" UNION ALL "),
        cvis = qualified("c", v),
    )
}

/// The rows' lines in `explain_st`: the union (if several branches), how
/// each branch's rows are identified, and its block.
pub fn explain(plan: &RowsPlan, indent: &str, ctx: &Ctx, out: &mut String) {
    if plan.branches.len() > 1 {
        out.push_str(&format!("{indent}Union all — {} branches, delta = union of the branches' deltas\n", plan.branches.len()));
    }
    for (i, b) in plan.branches.iter().enumerate() {
        let prefix = if plan.branches.len() > 1 { format!("branch {}, ", i + 1) } else { String::new() };
        if b.keyless() {
            let copies = if plan.multiplicity.is_some() { "; each row repeated by its multiplicity" } else { "" };
            out.push_str(&format!("{indent}Rows — keyless: MERGE by hash({prefix}content, copy number){copies}\n"));
        } else {
            out.push_str(&format!("{indent}Rows — MERGE by row identity hash({prefix}{})\n", b.identity.join(", ")));
        }
        crate::join::explain(&b.block, &format!("{indent}  "), ctx, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctx::Tables;
    use crate::tree::{Block, Changed, Input, Relation, Source};
    use crate::source::{ChangeSource, Frontier};

    static TABLES: Tables = Tables { stream_table: String::new(), pgt_id: 1 };

    fn branch(relid: u32) -> RowsBranch {
        RowsBranch {
            block: Block {
                template: "SELECT o.amount AS amount, o.id AS __pgt_k1_1, __pgt_w_1 FROM p1 o".into(),
                inputs: vec![Input {
                    placeholder: "p1".into(),
                    source: Source::Relation(Relation {
                        relid,
                        table_sql: format!("\"public\".\"o{relid}\""),
                        buffer_sql: format!("\"pgtrickle_changes\".\"changes_{relid}\""),
                        columns: vec![Some("id".into()), Some("amount".into())],
                        key: vec!["id".into()],
                    }),
                    only: false,
                    nullable: None,
                    presence: None,
                }],
                columns: vec!["amount".into(), "__pgt_k1_1".into()],
            },
            identity: vec!["__pgt_k1_1".into()],
        }
    }

    fn plan(branches: u32) -> RowsPlan {
        RowsPlan { branches: (1..=branches).map(branch).collect(), visible: vec!["amount".into()], content_hash: Vec::new(), multiplicity: None }
    }

    #[test]
    fn full_sql_hashes_identity_columns_and_branch_numbers() {
        let s = full_sql(&plan(1), &Ctx::full(&TABLES, &crate::node::NodeRules));
        assert!(s.starts_with("SELECT f.\"amount\", pg_catalog.hash_record_extended(ROW(f.\"__pgt_k1_1\"), 0) AS __pgt_row_id"));
        let u = full_sql(&plan(2), &Ctx::full(&TABLES, &crate::node::NodeRules));
        assert!(u.contains("ROW(1, f.\"__pgt_k1_1\")") && u.contains("ROW(2, f.\"__pgt_k1_1\")") && u.contains(" UNION ALL "));
    }

    #[test]
    fn merge_consolidates_prefers_new_versions_and_skips_unchanged_branches() {
        let source = ChangeSource::window(Frontier { snapshot: "1:1:".into(), xid: None, cid: None });
        let changed: Changed = [2].into();
        let m = merge_sql(&plan(2), "\"public\".\"st\"", &Ctx::delta(&TABLES, &source, &changed, &crate::node::NodeRules), Returning::Actions).unwrap();
        assert!(m.contains("GROUP BY c.__pgt_row_id, ROW(c.\"amount\")::text HAVING sum(c.__pgt_w) <> 0"));
        assert!(m.contains("ORDER BY s.__pgt_row_id, s.__pgt_w DESC"));
        assert!(m.contains("WHEN MATCHED AND d.__pgt_w < 0 THEN DELETE"));
        assert!(m.contains("changes_2") && !m.contains("changes_1"), "only the changed branch");
        assert!(m.ends_with("RETURNING merge_action()"));
        let none = Changed::new();
        assert!(merge_sql(&plan(2), "st", &Ctx::delta(&TABLES, &source, &none, &crate::node::NodeRules), Returning::Actions).is_none());
    }
}
