//! The presence rule: a block `B(P₁…Pₙ; C)` that reads child `C` only inside
//! subquery expressions — `EXISTS`, `NOT EXISTS`, `IN`, `NOT IN`, `= ANY`,
//! `<> ALL`, `>= ALL`, scalar subqueries — in its WHERE, ON or SELECT list,
//! under any boolean structure (semi-joins, anti-joins and their
//! generalisations).
//!
//! Such a block is still linear in every `Pᵢ` (each row of the FROM inputs is
//! filtered and projected on its own, given `C`), so the telescoping terms of
//! `Pᵢ` ([`crate::join`]) apply with `C` bound to its old or new state as a
//! whole. It is not linear in `C`: whether a subquery finds a row is a question
//! of presence, not of weight. So `C`'s term is a **restricted recomputation**:
//!
//! ```text
//! T_C = B(P…|aff, C_new) − B(P…|aff, C_old)
//! ```
//!
//! where `P…|aff` are the FROM inputs (bound new or old as the telescoping
//! order says) restricted to the rows whose subquery result may differ between
//! `C_old` and `C_new`. Every other row `p` gives the same output rows in both
//! evaluations, which cancel; so any superset of the affected rows gives the
//! same `T_C`.
//!
//! Which rows. The translation decorrelates the subquery: a conjunct
//! `c.k = p.x` of its WHERE (an equality operator, `c.k` over `C` only,
//! `p.x` a column of FROM input `P`) becomes a column of `C`, and the
//! subquery reads `C` restricted to `k = p.x`. A row `p` whose `x` equals no
//! `k` of a changed row of `C` (old or new version, `ΔC`) sees the same rows
//! of `C` in both states, hence the same subquery result. So `P` is restricted
//! to `∃ d ∈ ΔC: p.x = d.k` (with the correlation's own operator, so the
//! restriction is never narrower than the subquery's match), which turns into
//! index lookups of `P` by `x`. An uncorrelated subquery restricts nothing: if
//! `C` changed, every row is re-evaluated (its result may change for all).
//! The nullable side of an outer join is never restricted (a restricted side
//! would NULL-extend rows that are matched in truth).
//!
//! The child itself is read restricted the same way ([`restricted_child`]):
//! a restricted row `p` only ever reads child rows whose correlation values
//! equal `p.x`, hence a changed row's.
//!
//! `C` is a child operator with a state table ([`crate::node`]): `C_old` is
//! the state table as the statement reads it, `C_new` that with its MERGE's
//! changes applied, `ΔC` the MERGE's RETURNING rows — each costing work
//! proportional to the changed rows of `C`. `C` is a DISTINCT (for EXISTS and
//! the quantified comparisons, whose result depends only on the set of
//! values), a GROUP BY with a count (scalar subqueries: more than one row is
//! PostgreSQL's error) or the subquery's aggregate grouped by its correlation
//! columns.
//!
//! `model::tests::presence_rule` checks the identity on random data.

use crate::ctx::{Binding, Ctx};
use crate::tree::{Node, Restriction};
use pgt_core::ident::quote_ident;

/// The name of the CTE holding the changed rows of the child in its term.
pub const AFFECTED: &str = "__pgt_aff";

/// `binding` (SQL of a FROM input's state or delta) restricted to the rows
/// matching some row of [`AFFECTED`] on every pair of `restriction`.
pub fn restricted(binding: &str, restriction: &Restriction) -> String {
    let on = restriction
        .pairs
        .iter()
        .map(|p| {
            let (x, a) = (format!("x.{}", quote_ident(&p.input_column)), format!("a.{}", quote_ident(&p.child_column)));
            if p.input_on_left { format!("{x} {} {a}", p.operator) } else { format!("{a} {} {x}", p.operator) }
        })
        .collect::<Vec<_>>()
        .join(" AND ");
    format!("SELECT x.* FROM ({binding}) x WHERE EXISTS (SELECT 1 FROM {AFFECTED} a WHERE {on})")
}

/// The child's old or new state (`binding`) restricted to the rows whose
/// correlation columns equal those of some row of [`AFFECTED`].
///
/// Valid when the FROM input of `restriction` is the only one restricted: its
/// remaining rows `p` read, in every subquery expression, only child rows
/// with `c.k = p.x` where `p.x = d.k` for a changed row `d` — so `c.k = d.k`
/// (equality operators are transitive), and the other child rows never
/// matter to the term. The child's state is then read through its state
/// table's index on the correlation columns, however large it is.
pub fn restricted_child(node: &Node, binding: Binding, restriction: &Restriction, ctx: &Ctx) -> String {
    let mut columns: Vec<String> = Vec::new();
    for p in &restriction.pairs {
        if !columns.contains(&p.child_column) {
            columns.push(p.child_column.clone());
        }
    }
    ctx.rules.restricted_state_sql(node, ctx, binding, &columns, AFFECTED)
}

/// Another child `sibling` of the block, read inside subquery expressions
/// correlated with the same FROM input alone (`restriction`), in the term of
/// a child whose changes restricted that input to `restricted_input` (SQL):
/// its state (`binding`) restricted to the rows whose correlation columns
/// equal those of some restricted input row. Those rows read nothing else of
/// it, as for [`restricted_child`].
///
/// When every input column it correlates on is one the changed child
/// correlates on too (`changed`, the restriction of the input by that
/// child's changes), the values are taken from [`AFFECTED`] directly — the
/// restricted rows have exactly those values — which the planner sizes
/// right; else from the restricted input rows.
pub fn restricted_sibling(
    sibling: &Node,
    binding: Binding,
    restriction: &Restriction,
    changed: &Restriction,
    restricted_input: &str,
    ctx: &Ctx,
) -> String {
    let mut columns: Vec<String> = Vec::new();
    let mut from_input: Vec<String> = Vec::new();
    let mut from_affected: Vec<Option<String>> = Vec::new();
    for p in &restriction.pairs {
        if !columns.contains(&p.child_column) {
            columns.push(p.child_column.clone());
            from_input.push(format!("x.{} AS {}", quote_ident(&p.input_column), quote_ident(&p.child_column)));
            from_affected.push(
                changed
                    .pairs
                    .iter()
                    .find(|c| c.input_column == p.input_column && c.operator == p.operator)
                    .map(|c| format!("a.{} AS {}", quote_ident(&c.child_column), quote_ident(&p.child_column))),
            );
        }
    }
    let values = match from_affected.into_iter().collect::<Option<Vec<String>>>() {
        Some(select) => format!("(SELECT {} FROM {AFFECTED} a)", select.join(", ")),
        None => format!("(SELECT {} FROM ({restricted_input}) x)", from_input.join(", ")),
    };
    ctx.rules.restricted_state_sql(sibling, ctx, binding, &columns, &values)
}

/// `WITH __pgt_aff AS (<child delta>) <new part> UNION ALL <old part>`: the
/// term of the child, given the block evaluated with the child new
/// (`new_part`) and old, negated (`old_part`), both over restricted inputs.
pub fn term(child_delta: &str, new_part: &str, old_part: &str) -> String {
    format!("WITH {AFFECTED} AS MATERIALIZED ({child_delta}) SELECT * FROM ({new_part}) n UNION ALL SELECT * FROM ({old_part}) o")
}

/// How the rule restricts the FROM inputs, for EXPLAIN; `inputs` names the
/// block's inputs by position.
pub fn describe(restrictions: &[Restriction], inputs: &[String]) -> String {
    if restrictions.is_empty() {
        return "uncorrelated: every row re-evaluated when it changes".to_string();
    }
    let parts: Vec<String> = restrictions
        .iter()
        .map(|r| {
            let cols: Vec<String> = r.pairs.iter().map(|p| p.input_column.clone()).collect();
            format!("{} by ({})", inputs.get(r.input).map(String::as_str).unwrap_or("?"), cols.join(", "))
        })
        .collect();
    format!("rows re-evaluated where the changes' correlation values match: {}", parts.join("; "))
}
