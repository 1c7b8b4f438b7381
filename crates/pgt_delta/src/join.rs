//! A select-project-join block `B(R₁, …, Rₙ)`: filters, projections with any
//! immutable expressions, and inner joins of any arity and condition (equi,
//! non-equi, self-joins).
//!
//! Identity (telescoping rule). Selection and projection are linear and an inner
//! join is bilinear, so `B` is linear in each input separately. With
//! `Rᵢ_new = Rᵢ_old + ΔRᵢ`:
//!
//! ```text
//! B(new…new) − B(old…old)
//!   = Σᵢ [ B(new₁…newᵢ, oldᵢ₊₁…oldₙ) − B(new₁…newᵢ₋₁, oldᵢ…oldₙ) ]
//!   = Σᵢ B(new₁…newᵢ₋₁, ΔRᵢ, oldᵢ₊₁…oldₙ)          (linearity in argument i)
//! ```
//!
//! An input without changes has `ΔRᵢ = 0` (its term vanishes) and `oldᵢ = newᵢ`.
//! So a refresh that changed k inputs evaluates k terms. In each term the weight of
//! an output row is the product of the weights of the input rows it was built
//! from: `new` rows weigh 1, `Δ` rows ±1, `old` rows 1 or the negated window
//! weight (`scan`).
//!
//! Each term is the block's template with its placeholders bound by a `WITH`
//! clause; the template outputs each input's weight as `__pgt_w_<i>`, and the term
//! multiplies them.

use crate::plan::{Block, Changed};
use crate::scan::{self, Frontier};
use crate::sql::quoted;

/// How a placeholder is bound in one evaluation of a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// `new(R)`.
    New,
    /// `Δ(R)`.
    Delta,
    /// `old(R)`.
    Old,
}

/// The block's template with its placeholders bound as given, wrapped so that it
/// outputs the data columns and the product weight `__pgt_w`.
pub fn bind(block: &Block, bindings: &[Binding], frontier: Option<&Frontier>) -> String {
    let ctes = block
        .inputs
        .iter()
        .zip(bindings)
        .map(|(input, binding)| {
            let sql = match (binding, frontier) {
                (Binding::New, _) => scan::new_state_sql(&input.relation, input.only),
                (Binding::Delta, Some(f)) => scan::delta_sql(&input.relation, f),
                (Binding::Old, Some(f)) => scan::old_state_sql(&input.relation, input.only, f),
                (_, None) => scan::new_state_sql(&input.relation, input.only),
            };
            format!("{} AS ({sql})", input.placeholder)
        })
        .collect::<Vec<_>>()
        .join(", ");
    let weight = (1..=block.inputs.len()).map(|i| format!("t.__pgt_w_{i}")).collect::<Vec<_>>().join(" * ");
    let weight = if weight.is_empty() { "1::bigint".to_string() } else { weight };
    let cols = block.columns.iter().map(|c| format!("t.{}", pgt_core::ident::quote_ident(c))).collect::<Vec<_>>();
    let sep = if cols.is_empty() { "" } else { ", " };
    let with = if ctes.is_empty() { String::new() } else { format!("WITH {ctes} ") };
    format!("SELECT {}{sep}{weight} AS __pgt_w FROM ({with}{}) t", cols.join(", "), block.template)
}

/// The block over the new state of every input: its full current result, weight 1.
pub fn full_sql(block: &Block) -> String {
    bind(block, &vec![Binding::New; block.inputs.len()], None)
}

/// `ΔB` given the OIDs of the relations whose change windows are not empty, by
/// the telescoping rule. Returns `None` when no input changed.
pub fn delta_sql(block: &Block, frontier: &Frontier, changed: &Changed) -> Option<String> {
    let changed: Vec<bool> = block.inputs.iter().map(|i| changed.contains(&i.relation.relid)).collect();
    let changed_positions: Vec<usize> = (0..block.inputs.len()).filter(|i| changed[*i]).collect();
    if changed_positions.is_empty() {
        return None;
    }
    let terms: Vec<String> = changed_positions
        .iter()
        .enumerate()
        .map(|(k, &i)| {
            let bindings: Vec<Binding> = (0..block.inputs.len())
                .map(|j| {
                    if j == i {
                        Binding::Delta
                    } else if changed[j] && changed_positions[k + 1..].contains(&j) {
                        Binding::Old
                    } else {
                        Binding::New
                    }
                })
                .collect();
            bind(block, &bindings, Some(frontier))
        })
        .collect();
    let cols = quoted(&block.columns);
    let sep = if cols.is_empty() { "" } else { ", " };
    Some(format!(
        "SELECT {cols}{sep}__pgt_w FROM ({}) d",
        terms.into_iter().map(|t| format!("({t})")).collect::<Vec<_>>().join(" UNION ALL ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Input, Relation};

    fn block(n: usize) -> Block {
        Block {
            template: "SELECT a.x AS v, __pgt_w_1, __pgt_w_2 FROM p1 a JOIN p2 b ON a.id = b.id".into(),
            inputs: (1..=n)
                .map(|i| Input {
                    placeholder: format!("p{i}"),
                    relation: Relation {
                        relid: i as u32,
                        table_sql: format!("t{i}"),
                        buffer_sql: format!("b{i}"),
                        columns: vec![Some("id".into()), Some("x".into())],
                        key: vec!["id".into()],
                    },
                    only: false,
                })
                .collect(),
            columns: vec!["v".into()],
        }
    }

    fn f() -> Frontier {
        Frontier { snapshot: "1:1:".into(), xid: None, cid: None }
    }

    #[test]
    fn one_term_per_changed_input_earlier_new_later_old() {
        let b = block(2);
        let d = delta_sql(&b, &f(), &[1, 2].into()).unwrap();
        assert_eq!(d.matches(") UNION ALL (SELECT t.").count(), 1, "two terms");
        // Term 1: Δ₁ ⋈ old₂ ; term 2: new₁ ⋈ Δ₂.
        let first = d.find("p1 AS (SELECT r.\"id\", r.\"x\", 1::bigint AS __pgt_w FROM t1 r)").unwrap();
        let delta_first = d.find("p1 AS (SELECT b.\"id\", b.\"x\", (CASE").unwrap();
        assert!(delta_first < first, "term 1 binds Δ₁ before term 2 binds new₁");
        assert!(d.contains("p2 AS (SELECT r.\"id\", r.\"x\", 1::bigint AS __pgt_w FROM t2 r UNION ALL"), "old₂ in term 1");
    }

    #[test]
    fn unchanged_inputs_are_read_new_and_no_change_means_no_delta() {
        let b = block(2);
        let d = delta_sql(&b, &f(), &[2].into()).unwrap();
        assert!(!d.contains("UNION ALL (SELECT"), "one term");
        assert!(delta_sql(&b, &f(), &Changed::new()).is_none());
    }

    #[test]
    fn weights_multiply() {
        let s = full_sql(&block(2));
        assert!(s.contains("t.__pgt_w_1 * t.__pgt_w_2 AS __pgt_w"));
    }
}
