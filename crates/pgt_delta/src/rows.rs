//! Applying a select-project-join block to a stream table keyed by row identity.
//!
//! Identity: the stream table holds `B(new)`, one row per output row, keyed by
//! `__pgt_row_id = hash(identity columns)` where the identity columns are the keys
//! of the joined input rows (an output row is identified by the input rows it was
//! built from). Given `ΔB`:
//!
//! 1. consolidate: sum the weights of equal images (same row id and same record
//!    text); images whose weights cancel — an UPDATE that wrote the same values, a
//!    row inserted and deleted in one cycle — vanish and cause no write;
//! 2. per row id keep the surviving image with positive weight (the new version)
//!    if any, else the negative one (the row is gone);
//! 3. one MERGE: matched and gone → DELETE; matched with a new version → UPDATE;
//!    not matched with a new version → INSERT.

use crate::join;
use crate::plan::RowsPlan;
use crate::scan::Frontier;
use crate::sql::{qualified, quoted, row_id};
use pgt_core::ident::quote_ident;

/// `SELECT <visible>, __pgt_row_id` over the block's full result: what a FULL
/// refresh inserts.
pub fn full_sql(plan: &RowsPlan) -> String {
    format!(
        "SELECT {}, {} AS __pgt_row_id FROM ({}) f",
        qualified("f", &plan.visible),
        row_id("f", &plan.identity),
        join::full_sql(&plan.block)
    )
}

/// The MERGE applying the block's delta to stream table `st` (quoted name), or
/// `None` when no input changed. It returns one row per action taken
/// (`merge_action()`), so `SELECT count(*) FILTER (...)` over it counts them.
pub fn merge_sql(plan: &RowsPlan, st: &str, frontier: &Frontier, changed: &[bool]) -> Option<String> {
    let delta = join::delta_sql(&plan.block, frontier, changed)?;
    let v = &plan.visible;
    let any_values = v.iter().map(|c| format!("any_value(c.{q}) AS {q}", q = quote_ident(c))).collect::<Vec<_>>().join(", ");
    let source = format!(
        "SELECT DISTINCT ON (s.__pgt_row_id) s.* FROM ( \
           SELECT c.__pgt_row_id, {any_values}, sum(c.__pgt_w) AS __pgt_w FROM ( \
             SELECT {row_id} AS __pgt_row_id, {vis}, d.__pgt_w FROM ({delta}) d) c \
           GROUP BY c.__pgt_row_id, ROW({cvis})::text HAVING sum(c.__pgt_w) <> 0) s \
         ORDER BY s.__pgt_row_id, s.__pgt_w DESC",
        row_id = row_id("d", &plan.identity),
        vis = qualified("d", v),
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

    fn plan() -> RowsPlan {
        RowsPlan {
            block: Block {
                template: "SELECT o.amount AS amount, o.id AS __pgt_k1_1, __pgt_w_1 FROM p1 o".into(),
                inputs: vec![Input {
                    placeholder: "p1".into(),
                    relation: Relation {
                        relid: 7,
                        table_sql: "\"public\".\"o\"".into(),
                        buffer_sql: "\"pgtrickle_changes\".\"changes_7\"".into(),
                        columns: vec![Some("id".into()), Some("amount".into())],
                        key: vec!["id".into()],
                    },
                    only: false,
                }],
                columns: vec!["amount".into(), "__pgt_k1_1".into()],
            },
            visible: vec!["amount".into()],
            identity: vec!["__pgt_k1_1".into()],
        }
    }

    #[test]
    fn full_sql_hashes_identity_columns() {
        let s = full_sql(&plan());
        assert!(s.starts_with("SELECT f.\"amount\", pg_catalog.hashtextextended(ROW(f.\"__pgt_k1_1\")::text, 0) AS __pgt_row_id"));
    }

    #[test]
    fn merge_consolidates_and_prefers_new_versions() {
        let f = Frontier { snapshot: "1:1:".into(), xid: None, cid: None };
        let m = merge_sql(&plan(), "\"public\".\"st\"", &f, &[true]).unwrap();
        assert!(m.contains("GROUP BY c.__pgt_row_id, ROW(c.\"amount\")::text HAVING sum(c.__pgt_w) <> 0"));
        assert!(m.contains("ORDER BY s.__pgt_row_id, s.__pgt_w DESC"));
        assert!(m.contains("WHEN MATCHED AND d.__pgt_w < 0 THEN DELETE"));
        assert!(m.ends_with("RETURNING merge_action()"));
        assert!(merge_sql(&plan(), "st", &f, &[false]).is_none());
    }
}
