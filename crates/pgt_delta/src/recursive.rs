//! `WITH RECURSIVE r AS (<base> UNION <step over r>)`: the least fixed point
//! `R = lfp X. B ∪ S(X, T)` of a base `B` over the sources and a step `S`
//! that reads `r` once (a select-project-join block over `r` and the
//! sources `T`), with set semantics (PostgreSQL docs §7.8.2).
//!
//! The result is kept in a state table (one row per distinct row of `R`,
//! identified by its content hash, each column indexed). A refresh applies
//! the changes of `B`'s and `S`'s sources by **delete and rederive** for
//! what may be lost and **semi-naive evaluation** for what is gained
//! (Gupta, Mumick, Subrahmanian, "Maintaining Views Incrementally", SIGMOD
//! 1993), each a recursive query over the changed part only:
//!
//! 1. *lost*: rows of `R` that lose a derivation directly — rows of `B`
//!    that left, and rows `S` derived from `R` with a source row that left
//!    (any image of `ΔB` and `ΔS_T(R)` with a negative weight, even where a
//!    gain nets it out: the gain may come from a row about to be lost);
//! 2. *over-deleted* `D = lfp X. (lost ∩ R) ∪ (S(X, T_old) ∩ R)`: everything
//!    derived from a lost row, transitively (using every source row that
//!    existed before, a superset is harmless);
//! 3. *rederived* `Red = lfp X. (D ∩ (B_new ∪ S(R − D, T_new))) ∪ (S(X,
//!    T_new) ∩ D)`: the over-deleted rows still derivable from what remains;
//! 4. *gone* `= D − Red`, and `R' = R − gone`;
//! 5. *inserted* `I = lfp X. (seed − R') ∪ (S(X, T_new) − R')`, seeded by the
//!    rows `ΔB` and `ΔS_T(R')` gain (positive weight): semi-naive, each
//!    round joins only the rows the previous round added.
//!
//! The state table then loses `gone − I` and gains `I − R`; its MERGE
//! returns them as the node's delta (`crate::node`). Every recursive step
//! reads only rows of `D`, `Red` or `I` and looks the others up by index,
//! so a change costs the part of `R` it reaches. Set semantics make each
//! recursion terminate, also over cyclic data (a row is added once), as
//! PostgreSQL's own evaluation of UNION does.
//!
//! **UNION ALL** (multiset semantics) is maintained by *counting* instead:
//! with `S` linear in `r`, `R' − R = lfp X. seed ⊎ S(X, T_new)` where `seed =
//! ΔB ⊎ ΔS_T(R)` (the telescoping rule with `r` fixed at `R`): one recursive
//! query whose rows carry weights (a row's weight times its step's input
//! weights), consolidated per content and applied as keyless copies
//! (`crate::rows`). It terminates when the data has no cycle, as
//! PostgreSQL's own evaluation does; over a cycle both would recurse forever,
//! so every recursion counts its rounds and stops with an error past
//! [`RecursivePlan::max_depth`] (`pg_trickle.ivm_recursive_max_depth`).
//!
//! Membership tests compare content hashes (`__pgt_row_id`), which treat
//! NULLs as equal, as UNION does. The step's template reads the recursive
//! reference as the CTE `__pgt_rec` ([`names::RECURSIVE_SELF`]), bound by
//! the enclosing query: the recursive CTE itself, or a set (`R`, `R − D`)
//! wrapped around a non-recursive evaluation.

use crate::ctx::{Binding, Ctx, Returning};
use crate::names::{self, RECURSIVE_DEPTH, RECURSIVE_ROW_DEPTH, RECURSIVE_ROW_WEIGHT, RECURSIVE_SELF, ROW_ID, WEIGHT};
use crate::rows;
use crate::sql::{hash_through, qualified, quoted};
pub use crate::tree::RecursivePlan;
use pgt_core::ident::quote_ident;

/// The row identity of row `alias` (its content hash).
fn row_id(plan: &RecursivePlan, alias: &str) -> String {
    hash_through(alias, &plan.visible, &plan.content_hash)
}

/// `SELECT <cols> FROM (<sql>) <alias>`.
fn columns_of(plan: &RecursivePlan, sql: &str, alias: &str) -> String {
    format!("SELECT {} FROM ({sql}) {alias}", qualified(alias, &plan.visible))
}

/// The step with every input bound as `binding`, its weight kept: reads
/// `__pgt_rec` from the enclosing query.
fn step_sql(plan: &RecursivePlan, binding: Binding, ctx: &Ctx) -> String {
    crate::join::bind(&plan.step, &vec![binding; plan.step.inputs.len()], ctx)
}

/// `WITH __pgt_rec AS (<rec>) <sql>`.
fn with_rec(plan: &RecursivePlan, rec: &str, sql: &str) -> String {
    format!("WITH {RECURSIVE_SELF} ({}) AS NOT MATERIALIZED ({rec}) {sql}", quoted(&plan.visible))
}

/// Its full result (visible columns, `__pgt_row_id`): the recursive query
/// over the sources' new states.
pub fn full_sql(plan: &RecursivePlan, ctx: &Ctx) -> String {
    if plan.all {
        let base = format!("SELECT {}, 1::bigint, 0 FROM ({}) b", qualified("b", &plan.visible), rows::new_rows_sql(&plan.base, ctx));
        let step = counted_step(plan, ctx, false);
        let rows = format!(
            "WITH RECURSIVE {RECURSIVE_SELF} ({}) AS ({base} UNION ALL {step}) SELECT {} FROM {RECURSIVE_SELF}",
            counted_columns(plan),
            quoted(&plan.visible)
        );
        return rows::keyless_full_sql(&plan.visible, &plan.content_hash, &rows);
    }
    let base = columns_of(plan, &rows::new_rows_sql(&plan.base, ctx), "b");
    let step = columns_of(plan, &step_sql(plan, Binding::New, ctx), "s");
    format!(
        "SELECT {cols}, {id} AS {ROW_ID} FROM (WITH RECURSIVE {RECURSIVE_SELF} ({list}) AS ({base} UNION {step}) \
         SELECT * FROM {RECURSIVE_SELF}) r",
        cols = qualified("r", &plan.visible),
        id = row_id(plan, "r"),
        list = quoted(&plan.visible),
    )
}

/// A set of row identities a recursion's rows are tested against.
#[derive(Clone, Copy)]
enum Ids<'a> {
    /// The identities of SQL with `__pgt_row_id` (a small CTE).
    Of(&'a str),
    /// The rows of state table `st` (quoted), but those of CTE `except`:
    /// looked up per row by the table's identity index, never read whole.
    Stored { st: &'a str, except: Option<&'a str> },
}

/// Rows of `sql` (alias `s`, the visible columns) whose identity is (`true`)
/// or is not (`false`) in `ids`.
fn filtered(plan: &RecursivePlan, sql: &str, ids: Ids, member: bool) -> String {
    let id = row_id(plan, "s");
    let test = match ids {
        Ids::Of(set) => format!("{id} IN (SELECT m.{ROW_ID} FROM ({set}) m)"),
        // A correlated scalar subquery: one index probe per row (an IN or
        // EXISTS over the table is planned as a hash of all of it).
        Ids::Stored { st, except } => {
            let stored = format!("(SELECT true FROM {st} x WHERE x.{ROW_ID} = {id} LIMIT 1) IS NOT NULL");
            match except {
                Some(cte) => format!("({stored} AND {id} NOT IN (SELECT g.{ROW_ID} FROM {cte} g))"),
                None => stored,
            }
        }
    };
    format!("SELECT {} FROM ({sql}) s WHERE {}{test}", qualified("s", &plan.visible), if member { "" } else { "NOT " })
}

/// SQL true when query `rows` (visible columns) produces row `alias` (with
/// `__pgt_row_id`), asked per row: the first column's equality lets the
/// planner push the row's value into `rows` (an index lookup through the
/// step's join instead of the step over everything), the identity decides;
/// a NULL first column is matched in a second test.
fn produces(plan: &RecursivePlan, alias: &str, rows: &str) -> String {
    let first = quote_ident(&plan.visible[0]);
    let id = row_id(plan, "p");
    // Scalar subqueries rather than EXISTS: PostgreSQL turns EXISTS into a
    // semi-join, which over a recursive CTE's (large) row estimate computes
    // `rows` in full; a correlated scalar subquery is evaluated per row with
    // the row's values pushed into it.
    format!(
        "((SELECT true FROM ({rows}) p WHERE p.{first} = {alias}.{first} AND {id} = {alias}.{ROW_ID} LIMIT 1) IS NOT NULL \
          OR ({alias}.{first} IS NULL AND (SELECT true FROM ({rows}) p WHERE p.{first} IS NULL AND {id} = {alias}.{ROW_ID} LIMIT 1) IS NOT NULL))"
    )
}

/// The rows of change `changes` (visible columns and `__pgt_w`) that lose
/// a derivation (`false`: some image with a negative weight — not netted
/// against gains, which may come from rows about to go themselves) or gain
/// one on balance (`true`: a positive net weight; the telescoping terms of
/// a change net out derivations through rows that left).
fn signed(plan: &RecursivePlan, changes: &str, positive: bool) -> String {
    let any = plan.visible.iter().map(|c| format!("any_value(d.{q}) AS {q}", q = quote_ident(c))).collect::<Vec<_>>().join(", ");
    format!(
        "SELECT {any} FROM ({changes}) d GROUP BY ROW({})::text HAVING {}",
        qualified("d", &plan.visible),
        if positive { "sum(d.__pgt_w) > 0" } else { "min(d.__pgt_w) < 0" }
    )
}

/// `ΔB ⊎ ΔS_T(<rec>)`: the changes of the base and of the step with the
/// recursive reference fixed at `rec`, as visible columns and `__pgt_w`;
/// `None` when no source changed.
fn direct_changes(plan: &RecursivePlan, rec: &str, ctx: &Ctx) -> Option<String> {
    let base = rows::delta_rows_sql(&plan.base, ctx);
    let step = crate::join::delta_sql(&plan.step, ctx).map(|d| {
        let inner = format!("SELECT {}, d.__pgt_w FROM ({d}) d", qualified("d", &plan.visible));
        format!("SELECT * FROM ({}) x", with_rec(plan, rec, &inner))
    });
    let parts: Vec<String> = base.into_iter().chain(step).map(|p| format!("({p})")).collect();
    (!parts.is_empty()).then(|| parts.join(" UNION ALL "))
}

/// The column list of `__pgt_rec` under UNION ALL: the visible columns,
/// the row's weight and its depth.
fn counted_columns(plan: &RecursivePlan) -> String {
    format!("{}, {WEIGHT}, {RECURSIVE_DEPTH}", quoted(&plan.visible))
}

/// The recursive term under UNION ALL: the step over the sources' new
/// states from the rows of `__pgt_rec`, each row one round deeper (within
/// the bound, [`depth_guard`]) and weighted by its recursive row's weight
/// when `weighted` (else 1: a full recomputation's rows are copies), zero
/// weights dropped.
fn counted_step(plan: &RecursivePlan, ctx: &Ctx, weighted: bool) -> String {
    let weight = if weighted { format!("s.{RECURSIVE_ROW_WEIGHT} * s.{WEIGHT}") } else { "1::bigint".to_string() };
    format!(
        "SELECT {}, {weight}, s.{RECURSIVE_ROW_DEPTH} + 1 FROM ({}) s WHERE {weight} <> 0 AND {}",
        qualified("s", &plan.visible),
        step_sql(plan, Binding::New, ctx),
        depth_guard(plan)
    )
}

/// SQL true for a step row `s` within the depth bound; past it, the call
/// raises (`pgtrickle._recursion_too_deep`, 54001).
fn depth_guard(plan: &RecursivePlan) -> String {
    format!(
        "(CASE WHEN s.{RECURSIVE_ROW_DEPTH} < {max} THEN true ELSE pgtrickle._recursion_too_deep({max}) END)",
        max = plan.max_depth.max(1)
    )
}

/// UNION ALL by counting (module doc): the MERGE of the consolidated change
/// into the keyless copies of state table `st`.
fn counting_merge_sql(plan: &RecursivePlan, st: &str, ctx: &Ctx, returning: Returning) -> Option<String> {
    let stored = format!("SELECT {}, 1::bigint, 0 FROM {st} s", qualified("s", &plan.visible));
    let base = rows::delta_rows_sql(&plan.base, ctx);
    let step = crate::join::delta_sql(&plan.step, ctx).map(|d| {
        format!(
            "SELECT * FROM (WITH {RECURSIVE_SELF} ({}) AS NOT MATERIALIZED ({stored}) \
             SELECT {}, d.{RECURSIVE_ROW_WEIGHT} * d.{WEIGHT} AS {WEIGHT} FROM ({d}) d) x",
            counted_columns(plan),
            qualified("d", &plan.visible)
        )
    });
    let seed: Vec<String> = base.into_iter().chain(step).map(|p| format!("({p})")).collect();
    if seed.is_empty() {
        return None;
    }
    let step_new = counted_step(plan, ctx, true);
    let delta = format!(
        "WITH RECURSIVE {RECURSIVE_SELF} ({cols}) AS (SELECT {x}, x.{WEIGHT}, 0 FROM ({seed}) x WHERE x.{WEIGHT} <> 0 UNION ALL {step_new}) \
         SELECT {list}, {WEIGHT} FROM {RECURSIVE_SELF}",
        cols = counted_columns(plan),
        x = qualified("x", &plan.visible),
        seed = seed.join(" UNION ALL "),
        list = quoted(&plan.visible),
    );
    Some(rows::keyless_merge_sql(&plan.visible, &plan.content_hash, st, &delta, returning))
}

/// The MERGE applying the changes (module doc) to state table `st`
/// (quoted), or `None` when no source changed.
pub fn merge_sql(plan: &RecursivePlan, st: &str, ctx: &Ctx, returning: Returning) -> Option<String> {
    if plan.all {
        return counting_merge_sql(plan, st, ctx, returning);
    }
    let cols = quoted(&plan.visible);
    let state_rows = format!("SELECT {} FROM {st} s", qualified("s", &plan.visible));
    let old_changes = direct_changes(plan, &state_rows, ctx)?;
    let with_id = |cte: &str| format!("SELECT {}, {} AS {ROW_ID} FROM {cte} x", qualified("x", &plan.visible), row_id(plan, "x"));
    let rec = RECURSIVE_SELF;

    // 1-2. Lost rows, and everything derived from them before.
    let stored_ids = Ids::Stored { st, except: None };
    let lost = filtered(plan, &signed(plan, &old_changes, false), stored_ids, true);
    let old_step = format!("SELECT * FROM ({}) o WHERE o.__pgt_w > 0", step_sql(plan, Binding::Old, ctx));
    let over = format!(
        "WITH RECURSIVE {rec} ({cols}) AS ({lost} UNION {}) SELECT * FROM {rec}",
        filtered(plan, &columns_of(plan, &old_step, "o2"), stored_ids, true)
    );
    // 3. What remains derivable of them.
    // (NOT EXISTS, an anti-join the planner may put after the join from the
    // changes into the table's index; NOT IN is a filter on a scan of it.)
    let remaining = format!(
        "SELECT {} FROM {st} s WHERE NOT EXISTS (SELECT FROM __pgt_over o WHERE o.{ROW_ID} = s.{ROW_ID})",
        qualified("s", &plan.visible)
    );
    let new_step = columns_of(plan, &step_sql(plan, Binding::New, ctx), "n");
    let from_remaining = format!("SELECT * FROM ({}) y", with_rec(plan, &remaining, &new_step));
    let base_new = columns_of(plan, &rows::new_rows_sql(&plan.base, ctx), "b");
    let red_seed = format!(
        "SELECT {ocols} FROM __pgt_over o WHERE {} OR {}",
        produces(plan, "o", &base_new),
        produces(plan, "o", &from_remaining),
        ocols = qualified("o", &plan.visible),
    );
    let red = format!(
        "WITH RECURSIVE {rec} ({cols}) AS ({red_seed} UNION {}) SELECT * FROM {rec}",
        filtered(plan, &new_step, Ids::Of("SELECT * FROM __pgt_over"), true)
    );
    // 4-5. R' = R − gone; what it gains.
    let after = Ids::Stored { st, except: Some("__pgt_gone") };
    let after_rows = format!(
        "SELECT {} FROM {st} s WHERE NOT EXISTS (SELECT FROM __pgt_gone g WHERE g.{ROW_ID} = s.{ROW_ID})",
        qualified("s", &plan.visible)
    );
    let seed = match direct_changes(plan, &after_rows, ctx) {
        Some(changes) => filtered(plan, &signed(plan, &changes, true), after, false),
        None => format!("SELECT {} FROM {st} s WHERE false", qualified("s", &plan.visible)),
    };
    let ins = format!("WITH RECURSIVE {rec} ({cols}) AS ({seed} UNION {}) SELECT * FROM {rec}", filtered(plan, &new_step, after, false));
    let with = format!(
        "__pgt_over AS MATERIALIZED ({over_ids}), \
         __pgt_red AS MATERIALIZED ({red_ids}), \
         __pgt_gone AS MATERIALIZED (SELECT o.* FROM __pgt_over o WHERE o.{ROW_ID} NOT IN (SELECT r.{ROW_ID} FROM __pgt_red r)), \
         __pgt_ins AS MATERIALIZED ({ins_ids}), \
         __pgt_rdelta AS MATERIALIZED ( \
           SELECT {gcols}, g.{ROW_ID}, true AS __pgt_gone FROM __pgt_gone g WHERE g.{ROW_ID} NOT IN (SELECT i.{ROW_ID} FROM __pgt_ins i) \
           UNION ALL SELECT {icols}, i.{ROW_ID}, false FROM __pgt_ins i WHERE i.{ROW_ID} NOT IN (SELECT g.{ROW_ID} FROM __pgt_gone g))",
        over_ids = with_id(&format!("({over})")),
        red_ids = with_id(&format!("({red})")),
        ins_ids = with_id(&format!("({ins})")),
        gcols = qualified("g", &plan.visible),
        icols = qualified("i", &plan.visible),
    );
    Some(crate::sql::merge_by_identity(&with, "__pgt_rdelta", st, &plan.visible, &plan.visible, &returning.clause()))
}

/// Its lines in `explain_st`.
pub fn explain(plan: &RecursivePlan, indent: &str, ctx: &Ctx, out: &mut String) {
    if plan.all {
        out.push_str(&format!(
            "{indent}Recursive union all — counting: the change recursed through the step, rows weighted by their derivations \
             (at most {} rounds)\n",
            plan.max_depth
        ));
    } else {
        out.push_str(&format!(
            "{indent}Recursive union — delete and rederive for what may be lost, semi-naive insertion for what is gained; \
             the recursion reads only the rows a change reaches\n"
        ));
    }
    out.push_str(&format!("{indent}  base:\n"));
    rows::explain(&plan.base, &format!("{indent}    "), ctx, out);
    out.push_str(&format!("{indent}  step (reads {}):\n", names::RECURSIVE_SELF));
    crate::join::explain(&plan.step, &format!("{indent}    "), ctx, out);
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    type Edges = BTreeSet<(u8, u8)>;
    type Set = BTreeSet<u8>;

    /// One step: the nodes an edge leads to from `x`.
    fn step(x: &Set, e: &Edges) -> Set {
        e.iter().filter(|(a, _)| x.contains(a)).map(|(_, b)| *b).collect()
    }

    /// `lfp X. seed ∪ (step(X) ∩ within)` (or `− without`), by naive iteration.
    fn closure(seed: Set, e: &Edges, keep: &dyn Fn(u8) -> bool) -> Set {
        let mut x: Set = seed.into_iter().filter(|n| keep(*n)).collect();
        loop {
            let more: Set = step(&x, e).into_iter().filter(|n| keep(*n) && !x.contains(n)).collect();
            if more.is_empty() {
                return x;
            }
            x.extend(more);
        }
    }

    /// Reachability from the base over the edges: the recursive query.
    fn query(b: &Set, e: &Edges) -> Set {
        closure(b.clone(), e, &|_| true)
    }

    proptest! {
        /// Delete and rederive, then semi-naive insertion (module doc, steps
        /// 1-5), give the query over the new base and edges — cycles,
        /// deleted middle nodes and reparenting included.
        #[test]
        fn delete_rederive_then_insert_is_the_new_result(
            b_old in proptest::collection::btree_set(0u8..12, 0..4),
            b_new in proptest::collection::btree_set(0u8..12, 0..4),
            e_old in proptest::collection::btree_set((0u8..12, 0u8..12), 0..20),
            e_new in proptest::collection::btree_set((0u8..12, 0u8..12), 0..20),
        ) {
            let r = query(&b_old, &e_old);
            // 1. lost: base rows that left, and rows derived from R by edges that left.
            let removed: Edges = e_old.difference(&e_new).copied().collect();
            let mut lost: Set = b_old.difference(&b_new).copied().collect();
            lost.extend(step(&r, &removed));
            // 2. over-deleted, through the old edges, within R.
            let over = closure(lost.into_iter().filter(|n| r.contains(n)).collect(), &e_old, &|n| r.contains(&n));
            // 3. rederived from what remains, through the new edges, within D.
            let remaining: Set = r.difference(&over).copied().collect();
            let seed: Set = over.iter().copied().filter(|n| b_new.contains(n) || step(&remaining, &e_new).contains(n)).collect();
            let red = closure(seed, &e_new, &|n| over.contains(&n));
            // 4. gone, R'.
            let gone: Set = over.difference(&red).copied().collect();
            let after: Set = r.difference(&gone).copied().collect();
            // 5. inserted: seeded by what the base and the new edges add over R'.
            let added: Edges = e_new.difference(&e_old).copied().collect();
            let mut seed: Set = b_new.difference(&b_old).copied().collect();
            seed.extend(step(&after, &added));
            let ins = closure(seed, &e_new, &|n| !after.contains(&n));
            let maintained: Set = after.union(&ins).copied().collect();
            prop_assert_eq!(maintained, query(&b_new, &e_new));
        }
    }

    use crate::model::{add, minus, plus, ZSet};

    /// One step of UNION ALL paths: `(node, reach)` extended by an edge
    /// `reach → dst`, weights multiplied.
    fn extend(x: &ZSet<(u8, u8)>, e: &ZSet<(u8, u8)>) -> ZSet<(u8, u8)> {
        let mut out = ZSet::new();
        for ((n, r), w) in x {
            for ((a, b), v) in e {
                if a == r {
                    add(&mut out, (*n, *b), w * v);
                }
            }
        }
        out
    }

    /// `lfp X. seed ⊎ extend(X)` by rounds (terminates: edges go up).
    fn counted(seed: ZSet<(u8, u8)>, e: &ZSet<(u8, u8)>) -> ZSet<(u8, u8)> {
        let (mut total, mut round) = (seed.clone(), seed);
        while !round.is_empty() {
            round = extend(&round, e);
            total = plus(&total, &round);
        }
        total
    }

    fn edges(v: &[(u8, u8)]) -> ZSet<(u8, u8)> {
        let mut z = ZSet::new();
        for (a, d) in v {
            add(&mut z, (*a, a + 1 + d), 1);
        }
        z
    }

    proptest! {
        /// UNION ALL by counting: `R' − R = lfp X. (ΔB ⊎ ΔS_T(R)) ⊎ S(X,
        /// T_new)` over an acyclic graph, edges inserted and deleted.
        #[test]
        fn counting_is_the_change_of_union_all_recursion(
            old in proptest::collection::vec((0u8..8, 0u8..3), 0..14),
            new in proptest::collection::vec((0u8..8, 0u8..3), 0..14),
        ) {
            let (e_old, e_new) = (edges(&old), edges(&new));
            // Base: every edge; step: extend by an edge.
            let r_old = counted(e_old.clone(), &e_old);
            let r_new = counted(e_new.clone(), &e_new);
            let delta_base = minus(&e_new, &e_old);
            let seed = plus(&delta_base, &minus(&extend(&r_old, &e_new), &extend(&r_old, &e_old)));
            prop_assert_eq!(counted(seed, &e_new), minus(&r_new, &r_old));
        }
    }
}
