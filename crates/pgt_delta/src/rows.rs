//! Applying a select-project-join block (or a UNION ALL of them) to a stream table
//! keyed by row identity.
//!
//! Identity: the stream table holds `B(new)`, one row per output row, keyed by
//! `__pgt_row_id = hash(identity columns)` where the identity columns are the keys
//! of the joined input rows (an output row is identified by the input rows it was
//! built from), prefixed by the branch number under UNION ALL. Given `ΔB`:
//!
//! 1. consolidate: sum the weights of equal images (same row id and same record
//!    text); images whose weights cancel — an UPDATE that wrote the same values, a
//!    row inserted and deleted in one cycle — vanish and cause no write;
//! 2. per row id keep the surviving image with positive weight (the new version)
//!    if any, else the negative one (the row is gone);
//! 3. one MERGE: matched and gone → DELETE; matched with a new version → UPDATE;
//!    not matched with a new version → INSERT.

use crate::join;
use crate::plan::{Changed, RowsBranch, RowsPlan};
use crate::scan::Frontier;
use crate::sql::{qualified, quoted};
use pgt_core::ident::quote_ident;

/// The row identity of a branch's output row `alias`.
fn row_id(plan: &RowsPlan, index: usize, branch: &RowsBranch, alias: &str) -> String {
    let mut parts: Vec<String> = Vec::new();
    if plan.branches.len() > 1 {
        parts.push(format!("{}", index + 1));
    }
    parts.extend(branch.identity.iter().map(|c| format!("{alias}.{}", quote_ident(c))));
    format!("pg_catalog.hashtextextended(ROW({})::text, 0)", parts.join(", "))
}

/// `SELECT <visible>, __pgt_row_id` over the full result: what a FULL refresh inserts.
pub fn full_sql(plan: &RowsPlan) -> String {
    plan.branches
        .iter()
        .enumerate()
        .map(|(i, b)| {
            format!(
                "SELECT {}, {} AS __pgt_row_id FROM ({}) f",
                qualified("f", &plan.visible),
                row_id(plan, i, b, "f"),
                join::full_sql(&b.block)
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ")
}

/// The MERGE applying the changes to stream table `st` (quoted name), or `None`
/// when no input changed. It returns one row per action taken (`merge_action()`).
pub fn merge_sql(plan: &RowsPlan, st: &str, frontier: &Frontier, changed: &Changed) -> Option<String> {
    let v = &plan.visible;
    let deltas: Vec<String> = plan
        .branches
        .iter()
        .enumerate()
        .filter_map(|(i, b)| {
            join::delta_sql(&b.block, frontier, changed).map(|delta| {
                format!("SELECT {} AS __pgt_row_id, {}, d.__pgt_w FROM ({delta}) d", row_id(plan, i, b, "d"), qualified("d", v))
            })
        })
        .collect();
    if deltas.is_empty() {
        return None;
    }
    let any_values =
        v.iter().map(|c| format!("any_value(c.{q}) AS {q}", q = quote_ident(c))).collect::<Vec<_>>().join(", ");
    let source = format!(
        "SELECT DISTINCT ON (s.__pgt_row_id) s.* FROM ( \
           SELECT c.__pgt_row_id, {any_values}, sum(c.__pgt_w) AS __pgt_w FROM ({union}) c \
           GROUP BY c.__pgt_row_id, ROW({cvis})::text HAVING sum(c.__pgt_w) <> 0) s \
         ORDER BY s.__pgt_row_id, s.__pgt_w DESC",
        union = deltas.into_iter().map(|d| format!("({d})")).collect::<Vec<_>>().join(" UNION ALL "),
        cvis = qualified("c", v),
    );
    let set = v.iter().map(|c| format!("{q} = d.{q}", q = quote_ident(c))).collect::<Vec<_>>().join(", ");
    Some(format!(
        "MERGE INTO {st} t USING ({source}) d ON t.__pgt_row_id = d.__pgt_row_id \
         WHEN MATCHED AND d.__pgt_w < 0 THEN DELETE \
         WHEN MATCHED THEN UPDATE SET {set} \
         WHEN NOT MATCHED AND d.__pgt_w > 0 THEN INSERT ({cols}, __pgt_row_id) VALUES ({dvals}, d.__pgt_row_id) \
         RETURNING merge_action()",
        cols = quoted(v),
        dvals = qualified("d", v),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Block, Input, Relation};

    fn branch(relid: u32) -> RowsBranch {
        RowsBranch {
            block: Block {
                template: "SELECT o.amount AS amount, o.id AS __pgt_k1_1, __pgt_w_1 FROM p1 o".into(),
                inputs: vec![Input {
                    placeholder: "p1".into(),
                    relation: Relation {
                        relid,
                        table_sql: format!("\"public\".\"o{relid}\""),
                        buffer_sql: format!("\"pgtrickle_changes\".\"changes_{relid}\""),
                        columns: vec![Some("id".into()), Some("amount".into())],
                        key: vec!["id".into()],
                    },
                    only: false,
                }],
                columns: vec!["amount".into(), "__pgt_k1_1".into()],
            },
            identity: vec!["__pgt_k1_1".into()],
        }
    }

    fn plan(branches: u32) -> RowsPlan {
        RowsPlan { branches: (1..=branches).map(branch).collect(), visible: vec!["amount".into()] }
    }

    #[test]
    fn full_sql_hashes_identity_columns_and_branch_numbers() {
        let s = full_sql(&plan(1));
        assert!(s.starts_with("SELECT f.\"amount\", pg_catalog.hashtextextended(ROW(f.\"__pgt_k1_1\")::text, 0) AS __pgt_row_id"));
        let u = full_sql(&plan(2));
        assert!(u.contains("ROW(1, f.\"__pgt_k1_1\")") && u.contains("ROW(2, f.\"__pgt_k1_1\")") && u.contains(" UNION ALL "));
    }

    #[test]
    fn merge_consolidates_prefers_new_versions_and_skips_unchanged_branches() {
        let f = Frontier { snapshot: "1:1:".into(), xid: None, cid: None };
        let m = merge_sql(&plan(2), "\"public\".\"st\"", &f, &[2].into()).unwrap();
        assert!(m.contains("GROUP BY c.__pgt_row_id, ROW(c.\"amount\")::text HAVING sum(c.__pgt_w) <> 0"));
        assert!(m.contains("ORDER BY s.__pgt_row_id, s.__pgt_w DESC"));
        assert!(m.contains("WHEN MATCHED AND d.__pgt_w < 0 THEN DELETE"));
        assert!(m.contains("changes_2") && !m.contains("changes_1"), "only the changed branch");
        assert!(m.ends_with("RETURNING merge_action()"));
        assert!(merge_sql(&plan(2), "st", &f, &Changed::new()).is_none());
    }
}
