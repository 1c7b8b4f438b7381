//! A select-project-join block `B(R₁, …, Rₙ)`: filters, projections with any
//! immutable expressions, inner joins of any arity and condition (equi,
//! non-equi, self-joins), and LEFT / RIGHT outer joins.
//!
//! Identity (telescoping rule). Selection and projection are linear and an inner
//! join is bilinear, so `B` is linear in each input separately. With
//! `Rᵢ_new = Rᵢ_old + ΔRᵢ`, and the inputs numbered in any order:
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
//!
//! Outer joins. A LEFT JOIN `J = P ⟕_θ R` (a RIGHT JOIN is the mirror image) is
//! `(P ⋈_θ R) + (P ▷_θ R) × NULL`: the inner join plus each preserved row with no
//! match, NULL-extended. The block stays linear in every input of `P` (each
//! preserved row produces its output independently), but not in `R`: whether a
//! row has a match is a question of presence, not of weight. The translation
//! restricts `R` to one base relation with a key.
//!
//! The term of `R`, `T_R = B(…, R_new, …) − B(…, R_old, …)`, is split by whether
//! `R`'s row is real:
//!
//! - rows with a real `R` row: `B_inner(…, ΔR, …)`, where `B_inner` is the
//!   template with `J` made inner, linear in `R`;
//! - NULL-extended rows: a preserved row `p` is NULL-extended in the new state
//!   iff `cnt_new(p) = 0` (its θ-matches in `R_new`) and in the old state iff
//!   `cnt_old(p) = 0`. So `T_R` gains `s(p) · B_null(p)` with
//!   `s(p) = [cnt_new(p) = 0] − [cnt_old(p) = 0]`, and `B_null(p)` the block's
//!   rows for `p` with `R` bound to the empty relation. Only rows whose match
//!   set changed — that match a content of `R` whose net weight in the window
//!   is not zero — can have `s(p) ≠ 0`.
//!
//! Both tests are existence tests on `J` alone (not the whole block, whose WHERE
//! may reject a matched pair while keeping the NULL-extended row it replaces):
//! `p` has no match in `R_new` (an anti-join, which stops at the first match),
//! and no match in `R_old`. For a keyed `R`, `R_old` is the rows of `R_new`
//! whose key the window did not change plus the window's contents of net weight
//! −1 ([`scan::old_present_sql`]); so `p` has none iff the anti-join against
//! the kept rows finds none and `p` pairs with no net −1 content. The rows `p`
//! to test are those pairing with a content of non-zero net weight
//! (`__pgt_matched`); `R_old` itself is never read. Rows are identified by
//! their content (text), so duplicates and signed (Z-set) preserved inputs need
//! no care: `s(p)` depends on the content only, and each copy carries its own
//! weight. The preserved inputs are restricted to the keys in `__pgt_matched`,
//! which turns the tests into index lookups.
//!
//! Order. Preserved inputs come first and nullable ones last. A preserved
//! input's term `B(…, ΔPᵢ, …, R_old)` would read `R_old`; it is rewritten as
//! `B(…, ΔPᵢ, …, R_new) − T_R(…, ΔPᵢ, …)`, with `T_R` computed as above with the
//! preserved side bound to `ΔPᵢ` (for several changed nullable inputs
//! `R₁…Rₙ`, `B(X, R_old…) = B(X, R_new…) − Σₖ T_{Rₖ}(X; R<ₖ old, R>ₖ new)`).
//! A nullable input is read in its old state only when two of them changed
//! ([`scan::old_present_sql`]).
//!
//! `model::tests::outer_join_rule` checks this decomposition on random data.

pub use crate::ctx::Binding;
use crate::ctx::{Ctx, Mode};
use crate::names::{self, WEIGHT};
use crate::tree::{Block, Input, Source};
use crate::presence;
use crate::scan;
use crate::sql::quoted;
use pgt_core::ident::quote_ident;

/// Whether `input` has changes in this run.
pub fn input_changed(input: &Input, ctx: &Ctx) -> bool {
    match &input.source {
        Source::Relation(r) => ctx.changed(r.relid),
        Source::Node(n) => ctx.node_changed(n),
    }
}

/// The SQL a placeholder for `input` is bound to.
fn input_sql(input: &Input, binding: Binding, ctx: &Ctx) -> String {
    match (&input.source, ctx.mode) {
        (Source::Node(node), _) => match binding {
            Binding::Delta => ctx
                .rules
                .delta_sql(node, ctx)
                .unwrap_or_else(|| format!("SELECT * FROM ({}) s WHERE false", ctx.rules.state_sql(node, ctx, Binding::Old))),
            _ => ctx.rules.state_sql(node, ctx, binding),
        },
        (Source::Relation(r), Mode::Delta { source, .. }) => match binding {
            Binding::Delta => scan::delta_sql(r, source),
            Binding::Old if input.nullable.is_some() => scan::old_present_sql(r, input.only, source),
            Binding::Old => scan::old_state_sql(r, input.only, source),
            Binding::New => scan::new_state_sql(r, input.only),
        },
        (Source::Relation(r), Mode::Full) => scan::new_state_sql(r, input.only),
    }
}

/// `WITH <placeholder> AS (<sql>), …` for the given bindings (empty for none).
fn with_clause(block: &Block, bound: &[String]) -> String {
    let ctes = block
        .inputs
        .iter()
        .zip(bound)
        // NOT MATERIALIZED: an input read several times (inside subquery
        // expressions: a hashed IN test and a correlated lookup) is inlined
        // at each reference, so the correlation reaches its indexes rather
        // than scanning a materialized copy once per outer row. (An input
        // read once is inlined by PostgreSQL anyway.)
        .map(|(input, sql)| format!("{} AS NOT MATERIALIZED ({sql})", input.placeholder))
        .collect::<Vec<_>>()
        .join(", ");
    if ctes.is_empty() {
        String::new()
    } else {
        format!("WITH {ctes} ")
    }
}

/// `template` evaluated with its placeholders bound to `bound`, as the block's
/// data columns and the product weight `__pgt_w` (negated if `negate`). A
/// NULL-extended input's weight counts as 1.
fn evaluate(block: &Block, template: &str, bound: &[String], negate: bool) -> String {
    evaluate_with(block, template, bound, &[], negate)
}

/// [`evaluate`] passing `extra` template output columns through after the data
/// columns.
fn evaluate_with(block: &Block, template: &str, bound: &[String], extra: &[&str], negate: bool) -> String {
    let factors: Vec<String> = block
        .inputs
        .iter()
        .enumerate()
        .filter(|(_, input)| input.presence.is_none())
        .map(|(i, input)| match input.nullable {
            Some(_) => format!("COALESCE(t.{}, 1)", names::weight_of(i + 1)),
            None => format!("t.{}", names::weight_of(i + 1)),
        })
        .collect();
    let mut weight = if factors.is_empty() { "1::bigint".to_string() } else { factors.join(" * ") };
    if negate {
        weight = format!("-({weight})");
    }
    let cols: Vec<String> = block
        .columns
        .iter()
        .map(|c| format!("t.{}", quote_ident(c)))
        .chain(extra.iter().map(|c| format!("t.{c}")))
        .collect();
    let sep = if cols.is_empty() { "" } else { ", " };
    format!("SELECT {}{sep}{weight} AS {WEIGHT} FROM ({}{template}) t", cols.join(", "), with_clause(block, bound))
}

/// The block's template with its placeholders bound as given, wrapped so that it
/// outputs the data columns and the product weight `__pgt_w`.
pub fn bind(block: &Block, bindings: &[Binding], ctx: &Ctx) -> String {
    let bound: Vec<String> = block.inputs.iter().zip(bindings).map(|(i, b)| input_sql(i, *b, ctx)).collect();
    evaluate(block, &block.template, &bound, false)
}

/// Most inputs whose old state one term expands ([`bind_terms`]): `2^k`
/// statements' worth of subterms.
const MAX_EXPANDED_OLD: usize = 3;

/// [`bind`] for a term of the delta, with the old state of changed base
/// relations expanded by linearity: `B(…, R_old, …) = B(…, R_new, …) −
/// B(…, ΔR, …)` (the block is linear in each input that is not the nullable
/// side of an outer join or read inside subquery expressions). `R_old` as
/// one binding is the table plus the window's images with negated weights, a
/// union whose buffer branch has no index: looking up rows of `R_old` by a
/// key from another input's small delta would scan the buffer once per
/// looked-up row, so the planner scans all of `R` instead. Expanded, the
/// first subterm looks `R` up by its indexes and the second joins two small
/// windows. Up to [`MAX_EXPANDED_OLD`] inputs per term are expanded (`2^k`
/// subterms, signed `(−1)^{#Δ}`); an unchanged input's old state is its new
/// state.
fn bind_terms(block: &Block, bindings: &[Binding], ctx: &Ctx) -> Vec<String> {
    let mut bindings = bindings.to_vec();
    let mut expand = Vec::new();
    for (i, input) in block.inputs.iter().enumerate() {
        let Source::Relation(r) = &input.source else { continue };
        if bindings[i] != Binding::Old || input.nullable.is_some() || input.presence.is_some() {
            continue;
        }
        if !ctx.changed(r.relid) {
            bindings[i] = Binding::New;
        } else if expand.len() < MAX_EXPANDED_OLD {
            expand.push(i);
        }
    }
    let mut terms = Vec::new();
    for mask in 0..(1usize << expand.len()) {
        let mut these = bindings.clone();
        for (bit, &i) in expand.iter().enumerate() {
            these[i] = if mask & (1 << bit) == 0 { Binding::New } else { Binding::Delta };
        }
        let bound: Vec<String> = block.inputs.iter().zip(&these).map(|(i, b)| input_sql(i, *b, ctx)).collect();
        terms.push(evaluate(block, &block.template, &bound, mask.count_ones() % 2 == 1));
    }
    terms
}

/// The block over the new state of every input: its full current result.
pub fn full_sql(block: &Block, ctx: &Ctx) -> String {
    bind(block, &vec![Binding::New; block.inputs.len()], ctx)
}

/// `T_R` for the nullable input at `position` (see the module doc), negated if
/// `negate`, with every input bound as in `bindings` (`Delta` at `position`).
fn nullable_term(block: &Block, position: usize, bindings: &[Binding], ctx: &Ctx, negate: bool) -> Vec<String> {
    let input = &block.inputs[position];
    let mut bound: Vec<String> = block.inputs.iter().zip(bindings).map(|(i, b)| input_sql(i, *b, ctx)).collect();
    let (Some(side), Some(source)) = (&input.nullable, ctx.source()) else {
        return vec![evaluate(block, &block.template, &bound, negate)];
    };
    let inner = evaluate(block, &side.inner_template, &bound, negate);
    // Pairs of preserved rows and contents of R whose net weight changed
    // (weight −1: a row of the old state that is gone). A child's changes are
    // consolidated already (one old and one new version per changed row id).
    bound[position] = match &input.source {
        Source::Relation(relation) => scan::consolidated_delta_sql(relation, source),
        Source::Node(_) => input_sql(input, Binding::Delta, ctx),
    };
    let matched = format!("{}{}", with_clause(block, &bound), side.affected_template);
    let mut restricted = bound;
    for &q in &side.restricted {
        let Some(preserved) = block.inputs.get(q) else { continue };
        let key = preserved.source.key();
        let keys = key.iter().map(|k| format!("x.{}", quote_ident(k))).collect::<Vec<_>>().join(", ");
        let affected_keys = (1..=key.len()).map(|j| format!("m.{}", names::preserved_key(q + 1, j))).collect::<Vec<_>>().join(", ");
        restricted[q] = format!("SELECT x.* FROM ({}) x WHERE ({keys}) IN (SELECT {affected_keys} FROM __pgt_matched m)", restricted[q]);
    }
    // Preserved rows without a match in R_new, and without one among the rows
    // of R_old that are still there (the rows that left are in __pgt_matched).
    let unmatched = |r_sql: String, restricted: &mut Vec<String>| {
        restricted[position] = r_sql;
        format!(
            "SELECT p.{pc} FROM ({}{}) p WHERE p.{pk} IS NULL",
            with_clause(block, restricted),
            side.presence_template,
            pc = names::PRESERVED_CONTENT,
            pk = names::NULLABLE_KEY,
        )
    };
    let unmatched_now = unmatched(input_sql(input, Binding::New, ctx), &mut restricted);
    let kept = match &input.source {
        Source::Relation(relation) => scan::kept_sql(relation, input.only, source),
        Source::Node(node) => ctx.rules.kept_sql(node, ctx),
    };
    let unmatched_kept = unmatched(kept, &mut restricted);
    let signs = format!(
        "SELECT a.__pgt_pc, (CASE WHEN a.__pgt_pc IN ({unmatched_now}) THEN 1 ELSE 0 END) \
         - (CASE WHEN a.__pgt_pc IN ({unmatched_kept}) AND a.__pgt_pc NOT IN (SELECT m.__pgt_pc FROM __pgt_matched m WHERE m.__pgt_pw < 0) \
         THEN 1 ELSE 0 END) AS __pgt_s FROM (SELECT DISTINCT m.__pgt_pc FROM __pgt_matched m) a"
    );
    restricted[position] = match &input.source {
        Source::Relation(relation) => scan::empty_sql(relation, input.only),
        Source::Node(node) => ctx.rules.empty_sql(node, ctx),
    };
    let null_extended = evaluate_signed(block, &side.null_template, &restricted, &signs, negate);
    vec![inner, format!("WITH __pgt_matched AS ({matched}) {null_extended}")]
}

/// The rows of `template` (which outputs the preserved row's content as
/// `__pgt_pc`) whose preserved row has a non-zero sign in `signs`, weighted by
/// it (negated if `negate`).
fn evaluate_signed(block: &Block, template: &str, bound: &[String], signs: &str, negate: bool) -> String {
    let rows = evaluate_with(block, template, bound, &[names::PRESERVED_CONTENT], negate);
    let cols = block.columns.iter().map(|c| format!("t.{}", quote_ident(c))).collect::<Vec<_>>();
    let sep = if cols.is_empty() { "" } else { ", " };
    format!(
        "SELECT {}{sep}t.{WEIGHT} * s.__pgt_s AS {WEIGHT} FROM ({rows}) t JOIN ({signs}) s ON s.__pgt_pc = t.__pgt_pc WHERE s.__pgt_s <> 0",
        cols.join(", ")
    )
}

/// The term of the child at `position`, read only inside subquery
/// expressions (`Delta` in `bindings`): the block with the child new minus the
/// block with the child old, over FROM inputs restricted to the rows its
/// changes can affect ([`presence`]).
fn presence_term(block: &Block, position: usize, bindings: &[Binding], ctx: &Ctx) -> String {
    let input = &block.inputs[position];
    let restrictions = input.presence.as_ref().map(|p| p.restrictions.as_slice()).unwrap_or_default();
    let bind = |child: Binding| -> Vec<String> {
        let mut bound: Vec<String> = block
            .inputs
            .iter()
            .zip(bindings)
            .enumerate()
            .map(|(i, (inp, b))| input_sql(inp, if i == position { child } else { *b }, ctx))
            .collect();
        for r in restrictions {
            let restrictable = block.inputs.get(r.input).is_some_and(|i| i.nullable.is_none() && i.presence.is_none());
            if restrictable {
                bound[r.input] = presence::restricted(&bound[r.input], r);
            }
        }
        if let ([r], Source::Node(node)) = (restrictions, &input.source) {
            if block.inputs.get(r.input).is_some_and(|i| i.nullable.is_none() && i.presence.is_none()) {
                bound[position] = presence::restricted_child(node, child, r, ctx);
                // Other children read inside subquery expressions through the
                // same input alone: the restricted rows read only their rows
                // matching those rows' correlation values.
                for (j, other) in block.inputs.iter().enumerate() {
                    let (Some(p), Source::Node(sibling)) = (&other.presence, &other.source) else { continue };
                    if let [rj] = p.restrictions.as_slice() {
                        if j != position && rj.input == r.input {
                            bound[j] = presence::restricted_sibling(sibling, bindings[j], rj, r, &bound[r.input], ctx);
                        }
                    }
                }
            }
        }
        bound
    };
    let delta = input_sql(input, Binding::Delta, ctx);
    let new_part = evaluate(block, &block.template, &bind(Binding::New), false);
    let old_part = evaluate(block, &block.template, &bind(Binding::Old), true);
    presence::term(&delta, &new_part, &old_part)
}

/// The term of a preserved input (`Delta` in `bindings`): `B` with the changed nullable
/// inputs read new, minus their terms over the same bindings (module doc).
fn preserved_term(block: &Block, bindings: &[Binding], nullable_changed: &[usize], ctx: &Ctx) -> Vec<String> {
    let mut now = bindings.to_vec();
    for &r in nullable_changed {
        now[r] = Binding::New;
    }
    let mut terms = bind_terms(block, &now, ctx);
    for (k, &r) in nullable_changed.iter().enumerate() {
        let mut correction = now.clone();
        for &earlier in &nullable_changed[..k] {
            correction[earlier] = Binding::Old;
        }
        correction[r] = Binding::Delta;
        terms.extend(nullable_term(block, r, &correction, ctx, true));
    }
    terms
}

/// `ΔB` by the telescoping rule (and the outer-join rule for nullable inputs),
/// over the inputs with changes in `ctx`. Returns `None` when no input changed.
///
/// Order: base relations before child nodes (a child is then read in its old
/// state — its state table as is — by the terms before its own), preserved
/// inputs before nullable ones.
pub fn delta_sql(block: &Block, ctx: &Ctx) -> Option<String> {
    let changed: Vec<bool> = block.inputs.iter().map(|i| input_changed(i, ctx)).collect();
    let mut order: Vec<usize> = (0..block.inputs.len()).filter(|i| changed[*i]).collect();
    if order.is_empty() {
        return None;
    }
    order.sort_by_key(|i| {
        let input = &block.inputs[*i];
        (input.presence.is_some(), input.nullable.is_some(), matches!(input.source, Source::Node(_)))
    });
    let nullable_changed: Vec<usize> = order.iter().copied().filter(|i| block.inputs[*i].nullable.is_some()).collect();
    let terms: Vec<String> = order
        .iter()
        .enumerate()
        .flat_map(|(k, &i)| {
            let bindings: Vec<Binding> = (0..block.inputs.len())
                .map(|j| {
                    if j == i {
                        Binding::Delta
                    } else if order[k + 1..].contains(&j) {
                        Binding::Old
                    } else {
                        Binding::New
                    }
                })
                .collect();
            if block.inputs[i].presence.is_some() {
                vec![presence_term(block, i, &bindings, ctx)]
            } else if block.inputs[i].nullable.is_some() {
                nullable_term(block, i, &bindings, ctx, false)
            } else {
                preserved_term(block, &bindings, &nullable_changed, ctx)
            }
        })
        .collect();
    let cols = quoted(&block.columns);
    let sep = if cols.is_empty() { "" } else { ", " };
    Some(format!(
        "SELECT {cols}{sep}{WEIGHT} FROM ({}) d WHERE d.{WEIGHT} <> 0",
        terms.into_iter().map(|t| format!("({t})")).collect::<Vec<_>>().join(" UNION ALL ")
    ))
}

/// The block's lines in `explain_st`: the block, then each input (a scan, or a
/// child operator with its own lines).
pub fn explain(block: &Block, indent: &str, ctx: &Ctx, out: &mut String) {
    let outer = block.inputs.iter().any(|i| i.nullable.is_some());
    out.push_str(&format!(
        "{indent}Join block ({} input{}; {}joins, filters, projections) — telescoping delta rule\n",
        block.inputs.len(),
        if block.inputs.len() == 1 { "" } else { "s" },
        if outer { "inner and outer " } else { "inner " }
    ));
    let names: Vec<String> = block
        .inputs
        .iter()
        .map(|i| match &i.source {
            Source::Relation(r) => r.table_sql.clone(),
            Source::Node(n) => format!("state {}", n.state_number()),
        })
        .collect();
    for input in &block.inputs {
        if let Some(p) = &input.presence {
            out.push_str(&format!(
                "{indent}  Read inside subquery expressions — presence rule, {}\n",
                presence::describe(&p.restrictions, &names)
            ));
        }
        let side = match &input.nullable {
            Some(_) => " — nullable side of an outer join: inner part + NULL-extended rows of the preserved rows its changes match",
            None => "",
        };
        match &input.source {
            Source::Relation(relation) => {
                let key = if relation.key.is_empty() { "no key".to_string() } else { format!("key ({})", relation.key.join(", ")) };
                out.push_str(&format!(
                    "{indent}  Scan {}{} [{}] — change buffer {}{side}\n",
                    if input.only { "ONLY " } else { "" },
                    relation.table_sql,
                    key,
                    relation.buffer_sql
                ));
            }
            Source::Node(node) => ctx.rules.explain(node, &format!("{indent}  "), ctx, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{Changed, Input, Relation};
    use crate::ctx::Tables;
    use crate::source::{ChangeSource, Frontier};

    fn block(n: usize) -> Block {
        Block {
            template: "SELECT a.x AS v, __pgt_w_1, __pgt_w_2 FROM p1 a JOIN p2 b ON a.id = b.id".into(),
            inputs: (1..=n)
                .map(|i| Input {
                    placeholder: format!("p{i}"),
                    source: Source::Relation(Relation {
                        relid: i as u32,
                        table_sql: format!("t{i}"),
                        buffer_sql: format!("b{i}"),
                        columns: vec![Some("id".into()), Some("x".into())],
                        key: vec!["id".into()],
                    }),
                    only: false,
                    nullable: None,
                    presence: None,
                })
                .collect(),
            columns: vec!["v".into()],
        }
    }

    fn f() -> ChangeSource {
        ChangeSource::window(Frontier { snapshot: "1:1:".into(), xid: None, cid: None })
    }

    static TABLES: Tables = Tables { stream_table: String::new(), pgt_id: 1 };

    fn delta(block: &Block, changed: Changed) -> Option<String> {
        let source = f();
        let ctx = Ctx::delta(&TABLES, &source, &changed, &crate::node::NodeRules);
        delta_sql(block, &ctx)
    }

    #[test]
    fn one_term_per_changed_input_earlier_new_later_old() {
        let b = block(2);
        let d = delta(&b, [1, 2].into()).unwrap();
        // Term 1: Δ₁ ⋈ old₂, expanded as Δ₁ ⋈ new₂ − Δ₁ ⋈ Δ₂; term 2: new₁ ⋈ Δ₂.
        assert_eq!(d.matches(") UNION ALL (SELECT t.").count(), 2, "three subterms");
        let first = d.find("p1 AS NOT MATERIALIZED (SELECT r.\"id\", r.\"x\", 1::bigint AS __pgt_w FROM t1 r)").unwrap();
        let delta_first = d.find("p1 AS NOT MATERIALIZED (SELECT b.\"id\", b.\"x\", (CASE").unwrap();
        assert!(delta_first < first, "term 1 binds Δ₁ before term 2 binds new₁");
        assert!(!d.contains("FROM t2 r UNION ALL"), "old₂ is never read as a union");
        assert_eq!(d.matches("-(t.__pgt_w_1 * t.__pgt_w_2)").count(), 1, "Δ₁ ⋈ Δ₂ negated");
    }

    #[test]
    fn unchanged_inputs_are_read_new_and_no_change_means_no_delta() {
        let b = block(2);
        let d = delta(&b, [2].into()).unwrap();
        assert!(!d.contains("UNION ALL (SELECT"), "one term");
        assert!(delta(&b, Changed::new()).is_none());
    }

    fn outer_block() -> Block {
        let mut b = block(2);
        b.template = "SELECT a.x AS v, __pgt_w_1, __pgt_w_2 FROM p1 a LEFT JOIN p2 b ON a.id = b.id AND b.__pgt_w <> 0".into();
        b.inputs[1].nullable = Some(crate::tree::NullableSide {
            inner_template: "SELECT a.x AS v, __pgt_w_1, __pgt_w_2 FROM p1 a JOIN p2 b ON a.id = b.id AND b.__pgt_w <> 0".into(),
            affected_template: "SELECT a.id AS __pgt_p1_1, ROW(a.*)::text AS __pgt_pc, b.__pgt_w AS __pgt_pw FROM p1 a JOIN p2 b ON a.id = b.id AND b.__pgt_w <> 0".into(),
            presence_template: "SELECT ROW(a.*)::text AS __pgt_pc, b.id AS __pgt_pk FROM p1 a LEFT JOIN p2 b ON a.id = b.id AND b.__pgt_w <> 0".into(),
            null_template: "SELECT a.x AS v, __pgt_w_1, __pgt_w_2, ROW(a.*)::text AS __pgt_pc FROM p1 a LEFT JOIN p2 b ON a.id = b.id AND b.__pgt_w <> 0".into(),
            restricted: vec![0],
        });
        b
    }

    #[test]
    fn nullable_input_term_is_inner_part_plus_signed_null_extensions() {
        let d = delta(&outer_block(), [2].into()).unwrap();
        assert!(d.contains("FROM p1 a JOIN p2 b ON a.id = b.id AND b.__pgt_w <> 0) t"), "inner part");
        assert!(d.contains("WITH __pgt_matched AS (WITH p1 AS NOT MATERIALIZED"), "pairs with changed contents");
        assert!(d.contains("PARTITION BY ROW(i.\"id\", i.\"x\")::text"), "R consolidated by content");
        assert!(d.contains("p.__pgt_pk IS NULL"), "anti-joins");
        assert!(d.contains("NOT IN (SELECT m.__pgt_pc FROM __pgt_matched m WHERE m.__pgt_pw < 0)"), "rows that left count as old matches");
        assert!(d.contains("t.__pgt_w * s.__pgt_s AS __pgt_w"), "NULL extensions weighted by their sign");
        assert!(d.contains("p2 AS NOT MATERIALIZED (SELECT r.\"id\", r.\"x\", 1::bigint AS __pgt_w FROM t2 r WHERE false)"), "R bound empty");
        assert!(d.contains("WHERE (x.\"id\") IN (SELECT m.__pgt_p1_1 FROM __pgt_matched m)"), "preserved input restricted");
        assert!(!d.contains("min(i.__pgt_ctid)"), "R_old is never read");
    }

    #[test]
    fn preserved_term_reads_nullable_inputs_new_and_subtracts_their_terms() {
        let d = delta(&outer_block(), [1, 2].into()).unwrap();
        // Preserved term: B(Δ₁, new₂) − T₂(Δ₁), then T₂(new₁).
        assert!(!d.contains("min(i.__pgt_ctid)"), "R_old is never read with one nullable input");
        assert_eq!(d.matches("WITH __pgt_matched AS").count(), 2, "T₂ twice: correction and own term");
        assert!(d.contains("-(t.__pgt_w_1 * COALESCE(t.__pgt_w_2, 1))"), "the correction is subtracted");
        assert!(d.ends_with(") d WHERE d.__pgt_w <> 0"));
    }

    #[test]
    fn weights_multiply() {
        let s = full_sql(&block(2), &Ctx::full(&TABLES, &crate::node::NodeRules));
        assert!(s.contains("t.__pgt_w_1 * t.__pgt_w_2 AS __pgt_w"));
    }
}
