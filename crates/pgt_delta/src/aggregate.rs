//! Aggregation `γ_{G; f₁…fₘ}(I)` over an input block `I`, maintained per group.
//!
//! The stream table stores, besides the visible columns, the *state* of every
//! group: `__pgt_count` (rows in the group) and per aggregate `j`
//! `__pgt_aux_count_<j>` (rows that contribute: FILTER true and argument not
//! NULL), plus `__pgt_aux_sum_<j>` for SUM / AVG and `__pgt_aux_min_<j>` /
//! `__pgt_aux_max_<j>` for MIN / MAX. Visible columns are computed from the state
//! by the query's own output expressions (the output template), so `sum(x)/count(*)`,
//! `round(avg(x), 2)` or `upper(key)` need nothing special.
//!
//! Identities, per group `g`, with `ΔI|g` the delta rows of the group (weight `w`,
//! argument `a`, contributing when `c`):
//!
//! ```text
//! count'   = count   + Σ w
//! count'ⱼ  = countⱼ  + Σ_{c} w
//! sum'ⱼ    = sumⱼ    + Σ_{c} w·a            (NULL when count'ⱼ = 0)      SUM, AVG
//! avg'ⱼ    = sum'ⱼ / count'ⱼ
//! min'ⱼ    = LEAST(minⱼ, min_{c, w>0} a)   valid unless some deleted a ≤ min'ⱼ  MIN
//! max'ⱼ    = GREATEST(maxⱼ, max_{c, w>0} a) valid unless some deleted a ≥ max'ⱼ MAX
//! ```
//!
//! ```text
//! true'ⱼ   = trueⱼ   + Σ_{c, a} w             (kept in __pgt_aux_sum_j)   BOOL_AND, EVERY, BOOL_OR
//! bool_and = true'ⱼ = count'ⱼ,  bool_or = true'ⱼ > 0   (NULL when count'ⱼ = 0)
//! Σx'ⱼ     = Σxⱼ + Σ_{c} w·a,  Σx²'ⱼ = Σx²ⱼ + Σ_{c} w·a²  (numeric, exact)   VAR_*, STDDEV_* over integers, numeric(p,s)
//! var      = (N·Σx² − (Σx)²) / (N·(N−1))  (samp; N·N for pop; N = count'ⱼ;
//!            0 when the numerator is ≤ 0; NULL when N ≤ 1, resp. N = 0)
//! stddev   = √var, rounded to var's scale
//! ```
//!
//! The variance family is computed as PostgreSQL's `numeric_stddev_internal`
//! (src/backend/utils/adt/numeric.c) computes it from the same exact sums:
//! the products exact, the division by `numeric`'s own `/` (the same
//! `select_div_scale` and rounding), the square root to the quotient's scale,
//! correctly rounded (computed with 2·s + 40 more digits, then rounded: the
//! square root of a number of scale s lies at least 10^-(2s) / (8√v) from any
//! rounding boundary, so the double rounding cannot differ for any v below
//! 10^78). Integers and numerics of a fixed scale (`numeric(p,s)`: every
//! value has scale s, so Σx has scale s and Σx² scale 2·s, as PostgreSQL's
//! accumulation has them). An unconstrained numeric argument's result scale
//! follows the largest scale among the group's current rows, which the sums
//! cannot know once that row leaves, and floats are summed with a rounding
//! PostgreSQL's Youngs–Cramer accumulation does not share; both are
//! rescanned.
//!
//! COUNT / SUM / AVG are exact over integers and numerics (sums of integers and of
//! fixed-scale numerics are exact; floats would drift, so the translation does not
//! offer them). A numeric NaN or ±Infinity would stay in a running sum after
//! its row leaves (`NaN − NaN` and `∞ − ∞` are NaN), so a group whose delta
//! holds one is rescanned. When an extremum may have left, or the group's old state is not
//! stored (it failed HAVING, or a HAVING query meets a new group), the group is
//! **rescanned**: its state is recomputed from the input's new state restricted to
//! the group's key. A group whose count reaches 0, or whose HAVING turns false, is
//! deleted; a group whose HAVING turns true is inserted. A scalar aggregate (no
//! GROUP BY) has exactly one row, also over empty input, as in PostgreSQL.
//!
//! Groups are identified by `__pgt_row_id = hash(group key)` (0 for a scalar
//! aggregate). Equal keys hash equally; NULL keys form their own group as in
//! GROUP BY.

use crate::ctx::{Ctx, Returning};
use crate::names::{self, COUNT, ROW_ID};
use crate::tree::{Aggregate, AggregateKind, AggregatePlan, HiddenColumn};
use crate::sql::{qualified, quoted, row_id};
use crate::union;
use pgt_core::ident::quote_ident;

fn count_col(j: usize) -> String {
    names::aux_count(j)
}

fn value_state_col(agg: &Aggregate, j: usize) -> Option<String> {
    agg.value_state_column(j)
}

fn value_state_type(agg: &Aggregate) -> String {
    agg.value_state_type()
}

/// The hidden state columns of an aggregate plan, in storage order.
pub fn state_columns(plan: &AggregatePlan) -> Vec<HiddenColumn> {
    plan.state_columns()
}

/// Columns of the placeholder `__pgt_agg` passed through the output template after
/// the visible columns: the row identity, then the state columns.
pub fn passthrough_columns(aggregates: &[Aggregate]) -> Vec<String> {
    crate::tree::passthrough_columns(aggregates)
}

/// Condition "this input row (alias) contributes to aggregate `agg`" (for a
/// rescanned aggregate: passes its FILTER; the aggregate itself decides about
/// NULL arguments).
fn contributes(agg: &Aggregate, alias: &str) -> String {
    let mut parts = Vec::new();
    if let Some(f) = &agg.filter {
        parts.push(format!("{alias}.{} IS TRUE", quote_ident(f)));
    }
    if let (Some(a), false) = (&agg.arg, agg.kind == AggregateKind::Rescan) {
        parts.push(format!("{alias}.{} IS NOT NULL", quote_ident(a)));
    }
    if parts.is_empty() {
        "true".to_string()
    } else {
        parts.join(" AND ")
    }
}

fn arg(agg: &Aggregate, alias: &str) -> String {
    format!("{alias}.{}", quote_ident(agg.arg.as_deref().unwrap_or("__pgt_missing_arg")))
}

fn group_by(plan: &AggregatePlan, alias: &str) -> String {
    if plan.groups.is_empty() {
        String::new()
    } else {
        format!(" GROUP BY {}", qualified(alias, &plan.groups))
    }
}

/// The row identity of the group of input row `alias`: a hash of its group
/// keys, each through its [`AggregatePlan::group_hash`] function if any; 0 for
/// a scalar aggregate.
fn group_row_id(plan: &AggregatePlan, alias: &str) -> String {
    if plan.groups.is_empty() {
        return row_id(alias, &plan.groups);
    }
    crate::sql::hash_through(alias, &plan.groups, &plan.group_hash)
}

fn groups_select(plan: &AggregatePlan, alias: &str) -> String {
    plan.groups.iter().map(|g| format!("{alias}.{q} AS {q}, ", q = quote_ident(g))).collect()
}

/// State of every group computed from scratch over input rows `i` of weight 1.
fn full_state_select(plan: &AggregatePlan, from: &str) -> String {
    let mut cols = vec![format!("{} AS __pgt_row_id", group_row_id(plan, "i")), "count(*) AS __pgt_count".to_string()];
    for (k, agg) in plan.aggregates.iter().enumerate() {
        let j = k + 1;
        let c = contributes(agg, "i");
        cols.push(format!("count(*) FILTER (WHERE {c}) AS {}", count_col(j)));
        if let Some(state) = value_state_col(agg, j) {
            let call = match (agg.kind, &agg.call) {
                (AggregateKind::Rescan, Some(call)) => call.sql("i"),
                (AggregateKind::Sum | AggregateKind::Avg, _) => format!("sum({})", arg(agg, "i")),
                (AggregateKind::BoolAnd | AggregateKind::BoolOr, _) => format!("sum({})", truth(agg, "i")),
                (k, _) if k.is_bitwise() => {
                    let counts = per_bit(agg, |b| format!("coalesce(sum({}) FILTER (WHERE {c}), 0)", bit(agg, "i", b)));
                    cols.push(format!("(CASE WHEN count(*) FILTER (WHERE {c}) > 0 THEN {counts} END) AS {state}"));
                    continue;
                }
                (k, _) if k.is_variance() => format!("sum({}::numeric)", arg(agg, "i")),
                (AggregateKind::Min, _) => format!("min({})", arg(agg, "i")),
                _ => format!("max({})", arg(agg, "i")),
            };
            cols.push(format!("(({call} FILTER (WHERE {c})))::{t} AS {state}", t = value_state_type(agg)));
        }
        if let Some((state, t)) = agg.extra_state_column(j) {
            cols.push(format!("(sum({a}::numeric * {a}::numeric) FILTER (WHERE {c}))::{t} AS {state}", a = arg(agg, "i")));
        }
    }
    format!("SELECT {}{} FROM {from}{}", groups_select(plan, "i"), cols.join(", "), group_by(plan, "i"))
}

/// The bits of the argument type of a bitwise aggregate (`smallint`: 16,
/// `integer`: 32, `bigint`: 64).
fn bits(agg: &Aggregate) -> usize {
    match agg.arg_type.as_str() {
        "smallint" => 16,
        "integer" => 32,
        _ => 64,
    }
}

/// `ARRAY[<f(k)>, ...]` over the bit positions `k` = 0 .. bits − 1 of `agg`.
fn per_bit(agg: &Aggregate, f: impl Fn(usize) -> String) -> String {
    format!("ARRAY[{}]::bigint[]", (0..bits(agg)).map(f).collect::<Vec<_>>().join(", "))
}

/// `1` when bit `k` of the argument of `agg` in `alias` is set, else `0`
/// (an arithmetic shift: the sign bit is bit `bits − 1`).
fn bit(agg: &Aggregate, alias: &str, k: usize) -> String {
    format!("(({} >> {k}) & 1)::bigint", arg(agg, alias))
}

/// `bit_and` / `bit_or` from the contributing rows' count `count` and the
/// per-bit counts `counts` (a bigint[]): a bit is set in `bit_and` when
/// every contributing row has it, in `bit_or` when one does. Built in the
/// argument's own type, so that the sign bit lands where PostgreSQL puts it.
fn bitwise_value(agg: &Aggregate, count: &str, counts: &str) -> String {
    let t = &agg.arg_type;
    let test = if agg.kind == AggregateKind::BitAnd { format!("{counts}[k.k + 1] = {count}") } else { format!("{counts}[k.k + 1] > 0") };
    format!(
        "CASE WHEN {count} > 0 THEN (SELECT pg_catalog.bit_or(CASE WHEN {test} THEN (1::{t} << k.k) ELSE 0::{t} END) \
         FROM pg_catalog.generate_series(0, {}) AS k(k)) END",
        bits(agg) - 1
    )
}

/// Whether `agg` keeps a running sum of numeric values (SUM, AVG, the
/// variance family over `numeric`), which a NaN or an infinity would spoil.
fn summed_numeric(agg: &Aggregate) -> bool {
    (matches!(agg.kind, AggregateKind::Sum | AggregateKind::Avg) || agg.kind.is_variance())
        && (agg.arg_type == "numeric" || agg.arg_type.starts_with("numeric("))
}

/// `1` when the argument of `agg` in `alias` is true, else `0`.
fn truth(agg: &Aggregate, alias: &str) -> String {
    format!("CASE WHEN {} THEN 1 ELSE 0 END", arg(agg, alias))
}

/// The variance family's value from its count `n`, sum `sum` and sum of
/// squares `sumsq` (SQL expressions; see the module doc).
fn variance_sql(kind: AggregateKind, n: &str, sum: &str, sumsq: &str) -> String {
    let sample = matches!(kind, AggregateKind::VarSamp | AggregateKind::StddevSamp);
    let numerator = format!("({n}::numeric * {sumsq} - {sum} * {sum})");
    let denominator = if sample { format!("({n}::numeric * ({n} - 1)::numeric)") } else { format!("({n}::numeric * {n}::numeric)") };
    let quotient = format!("({numerator} / {denominator})");
    let value = if matches!(kind, AggregateKind::StddevSamp | AggregateKind::StddevPop) {
        format!(
            "(SELECT CASE WHEN v.q = 'NaN'::numeric THEN v.q \
                     ELSE pg_catalog.round(pg_catalog.sqrt(pg_catalog.round(v.q, 3 * pg_catalog.scale(v.q) + 40)), pg_catalog.scale(v.q)) END \
              FROM (SELECT {quotient} AS q) v)"
        )
    } else {
        quotient
    };
    let defined = if sample { format!("{n} > 1") } else { format!("{n} > 0") };
    format!("CASE WHEN NOT ({defined}) THEN NULL WHEN {numerator} <= 0 THEN 0::numeric ELSE {value} END")
}

/// The value of aggregate `j` from its state columns in `alias`.
fn value_from_state(agg: &Aggregate, j: usize, alias: &str) -> String {
    let count = format!("{alias}.{}", count_col(j));
    let expr = match agg.kind {
        AggregateKind::BoolAnd => {
            format!("CASE WHEN {count} > 0 THEN {alias}.{} = {count} END", value_state_col(agg, j).unwrap_or_default())
        }
        AggregateKind::BoolOr => {
            format!("CASE WHEN {count} > 0 THEN {alias}.{} > 0 END", value_state_col(agg, j).unwrap_or_default())
        }
        k @ (AggregateKind::VarSamp | AggregateKind::VarPop | AggregateKind::StddevSamp | AggregateKind::StddevPop) => variance_sql(
            k,
            &count,
            &format!("{alias}.{}", value_state_col(agg, j).unwrap_or_default()),
            &format!("{alias}.{}", agg.extra_state_column(j).map(|(n, _)| n).unwrap_or_default()),
        ),
        AggregateKind::BitAnd | AggregateKind::BitOr => bitwise_value(agg, &count, &format!("{alias}.{}", value_state_col(agg, j).unwrap_or_default())),
        AggregateKind::CountStar | AggregateKind::Count => count,
        AggregateKind::Rescan => format!("{alias}.{}", value_state_col(agg, j).unwrap_or_default()),
        AggregateKind::Sum | AggregateKind::Min | AggregateKind::Max => {
            format!("CASE WHEN {count} > 0 THEN {alias}.{} END", value_state_col(agg, j).unwrap_or_default())
        }
        AggregateKind::Avg => format!(
            "CASE WHEN {count} > 0 THEN {alias}.{}::numeric / {count}::numeric END",
            value_state_col(agg, j).unwrap_or_default()
        ),
    };
    format!("({expr})::{}", agg.result_type)
}

/// Evaluates the output template over the states in relation `states` (columns:
/// groups, `__pgt_row_id`, state columns): visible columns, `__pgt_having` if the
/// query has HAVING, then the pass-through columns.
fn output_sql(plan: &AggregatePlan, states: &str) -> String {
    let mut cols: Vec<String> = plan.groups.iter().map(|g| format!("s.{q} AS {q}", q = quote_ident(g))).collect();
    for (k, agg) in plan.aggregates.iter().enumerate() {
        cols.push(format!("{} AS {}", value_from_state(agg, k + 1, "s"), names::value(k + 1)));
    }
    for p in passthrough_columns(&plan.aggregates) {
        cols.push(format!("s.{q} AS {q}", q = quote_ident(&p)));
    }
    format!(
        "(WITH {} AS (SELECT {} FROM ({states}) s) {}) o",
        names::AGG_ROW,
        cols.join(", "),
        plan.output_template
    )
}

/// Whether an output row (alias `o`) belongs in the stream table.
fn keep(plan: &AggregatePlan) -> String {
    let mut parts = Vec::new();
    if !plan.groups.is_empty() {
        parts.push(format!("o.{COUNT} > 0"));
    }
    if plan.having {
        parts.push(format!("o.{} IS TRUE", names::HAVING));
    }
    if parts.is_empty() {
        "true".to_string()
    } else {
        parts.join(" AND ")
    }
}

fn stored_columns(plan: &AggregatePlan) -> Vec<String> {
    let mut cols = plan.visible.clone();
    cols.extend(passthrough_columns(&plan.aggregates));
    cols
}

/// What a FULL refresh inserts: visible columns, row id and state of every group
/// that belongs in the stream table.
pub fn full_sql(plan: &AggregatePlan, ctx: &Ctx) -> String {
    let states = full_state_select(plan, &format!("({}) i", union::full_sql(&plan.inputs, ctx)));
    format!("SELECT {} FROM {} WHERE {}", qualified("o", &stored_columns(plan)), output_sql(plan, &states), keep(plan))
}

/// The MERGE applying the input's delta to table `st` (quoted name: the stream
/// table, or a child's state table), or `None` when no input changed. Returns
/// what `returning` asks for.
///
/// The steps are MATERIALIZED CTEs, each computed once:
/// `__pgt_dg` (per affected group: the delta's contribution), `__pgt_aff` (with the
/// stored old state and whether the group must be rescanned), `__pgt_keys` (the
/// groups to rescan), `__pgt_rescanned` (their state recomputed from the input's
/// new state restricted to them), `__pgt_states` (every affected group's new
/// state), then the output template and the MERGE. An aggregate that never
/// rescans (no MIN/MAX, HAVING or rescanned call) has no `__pgt_keys` and
/// `__pgt_rescanned`.
pub fn merge_sql(plan: &AggregatePlan, st: &str, ctx: &Ctx, returning: Returning) -> Option<String> {
    let delta = union::delta_sql(&plan.inputs, ctx)?;
    let state_names: Vec<String> = passthrough_columns(&plan.aggregates).into_iter().skip(1).collect();

    // Per affected group: the delta's contribution.
    let mut dcols = vec![format!("{} AS __pgt_row_id", group_row_id(plan, "d")), "sum(d.__pgt_w) AS __pgt_dcount".to_string()];
    for (k, agg) in plan.aggregates.iter().enumerate() {
        let j = k + 1;
        let c = contributes(agg, "d");
        dcols.push(format!("coalesce(sum(d.__pgt_w) FILTER (WHERE {c}), 0) AS __pgt_dc{j}"));
        match agg.kind {
            AggregateKind::Sum | AggregateKind::Avg => {
                // bigint × bigint can overflow where PostgreSQL's sum(bigint),
                // computed in numeric, does not.
                let weight = if agg.arg_type == "bigint" { "d.__pgt_w::numeric" } else { "d.__pgt_w" };
                dcols.push(format!("sum({weight} * {a}) FILTER (WHERE {c}) AS __pgt_ds{j}", a = arg(agg, "d")))
            }
            AggregateKind::Min => {
                dcols.push(format!("min({a}) FILTER (WHERE {c} AND d.__pgt_w > 0) AS __pgt_dins{j}", a = arg(agg, "d")));
                dcols.push(format!("min({a}) FILTER (WHERE {c} AND d.__pgt_w < 0) AS __pgt_ddel{j}", a = arg(agg, "d")));
            }
            AggregateKind::Max => {
                dcols.push(format!("max({a}) FILTER (WHERE {c} AND d.__pgt_w > 0) AS __pgt_dins{j}", a = arg(agg, "d")));
                dcols.push(format!("max({a}) FILTER (WHERE {c} AND d.__pgt_w < 0) AS __pgt_ddel{j}", a = arg(agg, "d")));
            }
            AggregateKind::BoolAnd | AggregateKind::BoolOr => {
                dcols.push(format!("sum(d.__pgt_w * {}) FILTER (WHERE {c}) AS __pgt_ds{j}", truth(agg, "d")));
            }
            k if k.is_bitwise() => {
                let counts = per_bit(agg, |b| format!("coalesce(sum(d.__pgt_w * {}) FILTER (WHERE {c}), 0)", bit(agg, "d", b)));
                dcols.push(format!("{counts} AS __pgt_ds{j}"));
            }
            k if k.is_variance() => {
                let a = arg(agg, "d");
                dcols.push(format!("sum(d.__pgt_w::numeric * {a}::numeric) FILTER (WHERE {c}) AS __pgt_ds{j}"));
                dcols.push(format!("sum(d.__pgt_w::numeric * {a}::numeric * {a}::numeric) FILTER (WHERE {c}) AS __pgt_dq{j}"));
            }
            _ => {}
        }
    }
    // A numeric NaN or ±Infinity makes a running sum NaN or infinite for
    // good (`NaN − NaN` is NaN): a group whose delta holds one is rescanned.
    for (k, agg) in plan.aggregates.iter().enumerate() {
        if summed_numeric(agg) {
            dcols.push(format!(
                "coalesce(bool_or({a}::numeric IN ('NaN'::numeric, 'Infinity'::numeric, '-Infinity'::numeric)) FILTER (WHERE {c}), false) AS __pgt_dnf{j}",
                a = arg(agg, "d"),
                c = contributes(agg, "d"),
                j = k + 1
            ));
        }
    }
    let dg = format!("SELECT {}{} FROM ({delta}) d{}", groups_select(plan, "d"), dcols.join(", "), group_by(plan, "d"));

    // Which groups must be rescanned.
    let mut rescan = Vec::new();
    if plan.having {
        rescan.push("o.__pgt_row_id IS NULL".to_string());
    }
    if plan.aggregates.iter().any(|a| a.kind == AggregateKind::Rescan) {
        rescan.push("true".to_string());
    }
    for (k, agg) in plan.aggregates.iter().enumerate() {
        let j = k + 1;
        let cmp = match agg.kind {
            AggregateKind::Min => "<=",
            AggregateKind::Max => ">=",
            _ => continue,
        };
        // Compare with the merged candidate, not only the old extremum: a value
        // inserted and deleted in the same window is among both the inserted and
        // the deleted values, and must not survive as the extremum.
        let merge = if agg.kind == AggregateKind::Min { "LEAST" } else { "GREATEST" };
        rescan.push(format!(
            "(g.__pgt_ddel{j} IS NOT NULL AND g.__pgt_ddel{j} {cmp} {merge}(CASE WHEN o.{cnt} > 0 THEN o.{st} END, g.__pgt_dins{j}))",
            cnt = count_col(j),
            st = value_state_col(agg, j).unwrap_or_default()
        ));
    }
    for (k, agg) in plan.aggregates.iter().enumerate() {
        if summed_numeric(agg) {
            rescan.push(format!("g.__pgt_dnf{}", k + 1));
        }
    }
    // Only MIN/MAX, HAVING, rescanned aggregates and numeric sums ever rescan a group;
    // without them the rescan steps are left out (planning them is not free).
    let may_rescan = !rescan.is_empty();
    let rescan_cond = if rescan.is_empty() { "false".to_string() } else { format!("COALESCE({}, false)", rescan.join(" OR ")) };
    let old_state: String = state_names.iter().map(|n| format!(", o.{n} AS __pgt_old{}", &n[5..])).collect();
    // Each affected group's stored state is looked up by its row identity
    // (the table's identity index): work in proportion to the groups the delta
    // touches. As a plain join the planner prefers hashing the whole table
    // once the delta has some hundred groups (100,000 stored groups, 1,000
    // affected: a 26 ms hash build against 1,000 index probes of 2 ms); the
    // LIMIT keeps the lookup a parameterized subquery.
    let aff = format!(
        "SELECT g.*{old_state}, {rescan_cond} AS __pgt_rescan FROM __pgt_dg g \
         LEFT JOIN LATERAL (SELECT s.* FROM {st} s WHERE s.__pgt_row_id = g.__pgt_row_id LIMIT 1) o ON true"
    );
    let old = |name: &str| format!("a.__pgt_old{}", &name[5..]);

    // New state of groups updated algebraically.
    let mut ncols = vec![
        "a.__pgt_row_id".to_string(),
        format!("coalesce({}, 0) + a.__pgt_dcount AS {COUNT}", old(COUNT)),
    ];
    for (k, agg) in plan.aggregates.iter().enumerate() {
        let j = k + 1;
        let new_count = format!("(coalesce({}, 0) + a.__pgt_dc{j})", old(&count_col(j)));
        ncols.push(format!("{new_count} AS {}", count_col(j)));
        if let Some(state) = value_state_col(agg, j) {
            let value = match agg.kind {
                AggregateKind::Sum | AggregateKind::Avg | AggregateKind::BoolAnd | AggregateKind::BoolOr => {
                    format!("coalesce({}, 0) + coalesce(a.__pgt_ds{j}, 0)", old(&state))
                }
                k if k.is_variance() => format!("coalesce({}, 0) + coalesce(a.__pgt_ds{j}, 0)", old(&state)),
                k if k.is_bitwise() => per_bit(agg, |b| format!("coalesce(({})[{i}], 0) + coalesce(a.__pgt_ds{j}[{i}], 0)", old(&state), i = b + 1)),
                AggregateKind::Min => format!("LEAST({}, a.__pgt_dins{j})", old(&state)),
                AggregateKind::Max => format!("GREATEST({}, a.__pgt_dins{j})", old(&state)),
                // Never used: a plan with a rescanned aggregate rescans every group.
                _ => "NULL".to_string(),
            };
            ncols.push(format!(
                "(CASE WHEN {new_count} > 0 THEN {value} END)::{t} AS {state}",
                t = value_state_type(agg)
            ));
        }
        if let Some((state, t)) = agg.extra_state_column(j) {
            ncols.push(format!(
                "(CASE WHEN {new_count} > 0 THEN coalesce({}, 0) + coalesce(a.__pgt_dq{j}, 0) END)::{t} AS {state}",
                old(&state)
            ));
        }
    }
    let algebraic = format!("SELECT {}{} FROM __pgt_aff a WHERE NOT a.__pgt_rescan", groups_select(plan, "a"), ncols.join(", "));

    let state_cols: Vec<String> = {
        let mut v = plan.groups.clone();
        v.extend(passthrough_columns(&plan.aggregates));
        v
    };
    let q = quoted(&state_cols);
    let states = if may_rescan {
        rescanning_ctes(plan, ctx, &algebraic, &q)
    } else {
        format!("__pgt_states AS (SELECT {q} FROM ({algebraic}) x)")
    };
    let ctes = format!("WITH __pgt_dg AS MATERIALIZED ({dg}), __pgt_aff AS MATERIALIZED ({aff}), {states}");

    let stored = stored_columns(plan);
    let set = stored
        .iter()
        .filter(|c| c.as_str() != ROW_ID)
        .map(|c| format!("{q} = d.{q}", q = quote_ident(c)))
        .collect::<Vec<_>>()
        .join(", ");
    Some(format!(
        "MERGE INTO {st} t USING ({ctes} SELECT o.*, ({keep}) AS __pgt_keep FROM {out}) d \
         ON t.__pgt_row_id = d.__pgt_row_id \
         WHEN MATCHED AND NOT d.__pgt_keep THEN DELETE \
         WHEN MATCHED AND ROW({tstate}) IS DISTINCT FROM ROW({dstate}) THEN UPDATE SET {set} \
         WHEN NOT MATCHED AND d.__pgt_keep THEN INSERT ({cols}) VALUES ({dvals}) \
         {returning}",
        returning = returning.clause(),
        keep = keep(plan),
        out = output_sql(plan, "SELECT * FROM __pgt_states"),
        tstate = qualified("t", &state_names),
        dstate = qualified("d", &state_names),
        cols = quoted(&stored),
        dvals = qualified("d", &stored),
    ))
}

/// The steps of [`merge_sql`] after `__pgt_dg` and `__pgt_aff`, for an
/// aggregate whose groups may need a rescan: `__pgt_keys` (groups to rescan),
/// `__pgt_rescanned` (their state from the input's new state restricted to
/// them), and `__pgt_states` (algebraic, rescanned, and rescanned to nothing).
fn rescanning_ctes(plan: &AggregatePlan, ctx: &Ctx, algebraic: &str, q: &str) -> String {
    // Rescanned groups: state from the input's new state restricted to their keys.
    let block_new = union::full_sql(&plan.inputs, ctx);
    let restricted = if plan.groups.is_empty() {
        format!("(SELECT b.* FROM ({block_new}) b WHERE EXISTS (SELECT 1 FROM __pgt_keys)) i")
    } else {
        // Per key `b.g = k.g` with the key type's own operator; the NULL branch
        // also matches NULL to NULL.
        let (eq, nd): (Vec<String>, Vec<String>) = plan
            .groups
            .iter()
            .enumerate()
            .map(|(i, g)| {
                let (q, op) = (quote_ident(g), plan.group_equality.get(i).map(String::as_str).unwrap_or("="));
                let equal = format!("b.{q} {op} k.{q}");
                let both_null = format!("(b.{q} IS NULL AND k.{q} IS NULL)");
                (equal.clone(), format!("({equal} OR {both_null})"))
            })
            .unzip();
        let (eq, nd) = (eq.join(" AND "), nd.join(" AND "));
        let has_null = plan.groups.iter().map(|g| format!("k.{} IS NULL", quote_ident(g))).collect::<Vec<_>>().join(" OR ");
        format!(
            "(SELECT b.* FROM ({block_new}) b JOIN __pgt_keys k ON {eq} \
              UNION ALL \
              SELECT b.* FROM ({block_new}) b JOIN __pgt_keys k ON {nd} WHERE {has_null}) i"
        )
    };
    // A scalar aggregate yields a row even over no input: keep only rescanned keys.
    let rescanned = format!(
        "SELECT * FROM ({}) r WHERE r.__pgt_row_id IN (SELECT k.__pgt_row_id FROM __pgt_keys k)",
        full_state_select(plan, &restricted)
    );
    // Keys rescanned to nothing keep a row with count 0, so they are deleted.
    let zero_states = {
        let mut cols = vec!["k.__pgt_row_id".to_string(), "0::bigint AS __pgt_count".to_string()];
        for (k, agg) in plan.aggregates.iter().enumerate() {
            let j = k + 1;
            cols.push(format!("0::bigint AS {}", count_col(j)));
            if let Some(state) = value_state_col(agg, j) {
                cols.push(format!("NULL::{} AS {state}", value_state_type(agg)));
            }
            if let Some((state, t)) = agg.extra_state_column(j) {
                cols.push(format!("NULL::{t} AS {state}"));
            }
        }
        format!(
            "SELECT {}{} FROM __pgt_keys k WHERE NOT EXISTS (SELECT 1 FROM __pgt_rescanned r WHERE r.__pgt_row_id = k.__pgt_row_id)",
            groups_select(plan, "k"),
            cols.join(", ")
        )
    };
    let keys_cols: String = plan.groups.iter().map(|g| format!("a.{}, ", quote_ident(g))).collect();
    format!(
        "__pgt_keys AS MATERIALIZED (SELECT {keys_cols}a.__pgt_row_id FROM __pgt_aff a WHERE a.__pgt_rescan), \
              __pgt_rescanned AS MATERIALIZED ({rescanned}), \
              __pgt_states AS (SELECT {q} FROM ({algebraic}) x UNION ALL SELECT {q} FROM __pgt_rescanned \
                               UNION ALL SELECT {q} FROM ({zero_states}) z)"
    )
}

/// The aggregate's lines in `explain_st`: the aggregate, its calls with their
/// strategies, and its input blocks.
pub fn explain(plan: &AggregatePlan, indent: &str, ctx: &Ctx, out: &mut String) {
    if plan.aggregates.is_empty() {
        out.push_str(&format!("{indent}Distinct — multiplicity in __pgt_count; a row disappears when it reaches 0\n"));
    }
    out.push_str(&format!(
        "{indent}Aggregate — {}{}\n",
        if plan.groups.is_empty() { "scalar (one row)".to_string() } else { format!("GROUP BY {} key(s)", plan.groups.len()) },
        if plan.having { ", HAVING (groups crossing it are rescanned when absent)" } else { "" }
    ));
    for agg in &plan.aggregates {
        let filter = if agg.filter.is_some() { " FILTER" } else { "" };
        out.push_str(&format!("{indent}  {}{} — {}\n", agg.display, filter, agg.kind.strategy()));
    }
    if plan.inputs.len() > 1 {
        out.push_str(&format!("{indent}  Union — {} branches\n", plan.inputs.len()));
    }
    for input in &plan.inputs {
        crate::join::explain(input, &format!("{indent}  "), ctx, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctx::Tables;
    use crate::tree::{Block, Changed, Input, Relation, Source};
    use crate::source::{ChangeSource, Frontier};

    static TABLES: Tables = Tables { stream_table: String::new(), pgt_id: 1 };

    fn full(p: &AggregatePlan) -> String {
        full_sql(p, &Ctx::full(&TABLES, &crate::node::NodeRules))
    }

    fn merge(p: &AggregatePlan, changed: Changed) -> Option<String> {
        let source = ChangeSource::window(Frontier { snapshot: "1:1:".into(), xid: None, cid: None });
        let ctx = Ctx::delta(&TABLES, &source, &changed, &crate::node::NodeRules);
        merge_sql(p, "st", &ctx, Returning::Actions)
    }

    fn agg(kind: AggregateKind, j: usize) -> Aggregate {
        Aggregate {
            kind,
            arg: (kind != AggregateKind::CountStar).then(|| format!("__pgt_a{j}")),
            filter: None,
            arg_type: "integer".into(),
            result_type: match kind {
                AggregateKind::Sum | AggregateKind::CountStar | AggregateKind::Count => "bigint".into(),
                AggregateKind::Avg => "numeric".into(),
                _ => "integer".into(),
            },
            display: "f(x)".into(),
            call: None,
        }
    }

    fn plan(groups: usize, having: bool) -> AggregatePlan {
        let aggregates = vec![agg(AggregateKind::CountStar, 1), agg(AggregateKind::Sum, 2), agg(AggregateKind::Min, 3)];
        AggregatePlan {
            group_equality: Vec::new(),
            group_hash: Vec::new(),
            inputs: vec![Block {
                template: "SELECT ... FROM p1 x".into(),
                inputs: vec![Input {
                    placeholder: "p1".into(),
                    source: Source::Relation(Relation {
                        relid: 1,
                        table_sql: "t".into(),
                        buffer_sql: "b".into(),
                        columns: vec![Some("g".into()), Some("x".into())],
                        key: vec![],
                    }),
                    only: false,
                    nullable: None,
                    presence: None,
                }],
                columns: vec!["__pgt_g1".into(), "__pgt_a2".into(), "__pgt_a3".into()],
            }],
            groups: (1..=groups).map(|i| format!("__pgt_g{i}")).collect(),
            passthrough: passthrough_columns(&aggregates),
            aggregates,
            output_template: "SELECT __pgt_agg.__pgt_g1 AS g FROM __pgt_agg".into(),
            visible: vec!["g".into()],
            having,
        }
    }

    #[test]
    fn state_columns_per_kind() {
        let names: Vec<String> = state_columns(&plan(1, false)).into_iter().map(|c| c.name).collect();
        assert_eq!(
            names,
            vec!["__pgt_count", "__pgt_aux_count_1", "__pgt_aux_count_2", "__pgt_aux_sum_2", "__pgt_aux_count_3", "__pgt_aux_min_3"]
        );
    }

    #[test]
    fn counted_and_summed_aggregates_never_rescan() {
        let mut p = plan(1, false);
        p.aggregates = vec![agg(AggregateKind::BoolAnd, 1), agg(AggregateKind::BoolOr, 2), agg(AggregateKind::StddevSamp, 3)];
        let names: Vec<String> = state_columns(&p).into_iter().map(|c| c.name).collect();
        assert_eq!(
            names,
            vec![
                "__pgt_count",
                "__pgt_aux_count_1",
                "__pgt_aux_sum_1",
                "__pgt_aux_count_2",
                "__pgt_aux_sum_2",
                "__pgt_aux_count_3",
                "__pgt_aux_sum_3",
                "__pgt_aux_sumsq_3"
            ]
        );
        let m = merge(&p, Changed::from([1])).expect("a merge");
        assert!(!m.contains("__pgt_keys"), "no rescan step: {m}");
        assert!(m.contains("__pgt_dq3"), "the sum of squares follows: {m}");
        assert!(full(&p).contains("sum(CASE WHEN i.\"__pgt_a1\" THEN 1 ELSE 0 END)"), "{}", full(&p));
    }

    #[test]
    fn variance_as_postgresql_computes_it() {
        let v = variance_sql(AggregateKind::VarSamp, "n", "s", "q");
        assert_eq!(
            v,
            "CASE WHEN NOT (n > 1) THEN NULL WHEN (n::numeric * q - s * s) <= 0 THEN 0::numeric \
             ELSE ((n::numeric * q - s * s) / (n::numeric * (n - 1)::numeric)) END"
        );
        let pop = variance_sql(AggregateKind::StddevPop, "n", "s", "q");
        assert!(pop.starts_with("CASE WHEN NOT (n > 0)"), "{pop}");
        assert!(pop.contains("(n::numeric * n::numeric)") && pop.contains("pg_catalog.sqrt"), "{pop}");
    }

    #[test]
    fn full_sql_groups_or_not() {
        assert!(full(&plan(1, false)).contains("GROUP BY i.\"__pgt_g1\""));
        let scalar = full(&plan(0, false));
        assert!(!scalar.contains("GROUP BY"), "a scalar aggregate has one row, also over empty input");
        assert!(scalar.ends_with("WHERE true"));
        assert!(full(&plan(1, true)).ends_with("WHERE o.__pgt_count > 0 AND o.__pgt_having IS TRUE"));
    }

    #[test]
    fn merge_rescans_when_min_leaves_or_having_meets_new_group() {
        let m = merge(&plan(1, true), [1].into()).unwrap();
        assert!(m.contains("o.__pgt_row_id IS NULL"));
        assert!(m.contains(
            "g.__pgt_ddel3 IS NOT NULL AND g.__pgt_ddel3 <= LEAST(CASE WHEN o.__pgt_aux_count_3 > 0 THEN o.__pgt_aux_min_3 END, g.__pgt_dins3)"
        ), "rescan when a deleted value may be the merged minimum, transient inserts included");
        assert!(m.contains("LEAST(a.__pgt_old_aux_min_3, a.__pgt_dins3)"));
        assert!(m.contains("__pgt_dg AS MATERIALIZED"), "the delta is computed once");
        assert!(m.contains("IS DISTINCT FROM"), "unchanged groups are not rewritten");
    }

    #[test]
    fn rescans_match_keys_with_the_plans_equality_operator() {
        let mut p = plan(1, true);
        p.group_equality = vec!["OPERATOR(public.=)".into()];
        let m = merge(&p, [1].into()).unwrap();
        assert!(m.contains("ON b.\"__pgt_g1\" OPERATOR(public.=) k.\"__pgt_g1\" "));
        assert!(m.contains(
            "ON (b.\"__pgt_g1\" OPERATOR(public.=) k.\"__pgt_g1\" OR (b.\"__pgt_g1\" IS NULL AND k.\"__pgt_g1\" IS NULL))"
        ));
        // Plans stored before the field existed compare with `=`.
        let m = merge(&plan(1, true), [1].into()).unwrap();
        assert!(m.contains("ON b.\"__pgt_g1\" = k.\"__pgt_g1\" "));
    }
}
