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
//! Over floats (the variance family over `real` / `double precision`, and
//! the regression family `corr(y, x)`, `covar_*`, `regr_*`), the same
//! running sums are kept exactly — Σx, Σx², and Σy, Σy², Σxy — of the
//! doubles' exact binary values, by `pgtrickle._exact_sum` (Σ w·x and Σ
//! w·x·y in a superaccumulator, `pgt_core::exact`), and finished in float8
//! as PostgreSQL's `float8_var_*`, `float8_covar_*`, `float8_corr`,
//! `float8_regr_*` finish (src/backend/utils/adt/float.c):
//!
//! ```text
//! N·Sxx = N·Σx² − (Σx)²,  N·Syy = N·Σy² − (Σy)²,  N·Sxy = N·Σxy − Σx·Σy     (exact, then float8)
//! var_samp = N·Sxx / (N·(N−1)),  var_pop = N·Sxx / N²,  covar_pop = N·Sxy / N²,  covar_samp = N·Sxy / (N·(N−1))
//! corr = N·Sxy / (√(N·Sxx)·√(N·Syy)),  regr_slope = N·Sxy / N·Sxx,  regr_r2 = (N·Sxy / N·Sxx)·(N·Sxy / N·Syy)
//! regr_intercept = (Σy − Σx·regr_slope) / N,  regr_sxx = N·Sxx / N,  regr_avgx = Σx / N,  regr_count = N
//! ```
//!
//! with PostgreSQL's NULL rules (no rows; `corr`, `regr_slope`,
//! `regr_intercept`, `regr_r2` when Sxx = 0; `regr_r2` is 1 when Syy = 0)
//! and its NaN rules (Sxx is NaN once an x is NaN or infinite, Syy for y,
//! Sxy for either). Each value is the exact one rounded a few times at most;
//! PostgreSQL's own comes from a Youngs–Cramer float accumulation in row
//! order, so they agree to about 1e-15 on ordinary data, and the stream
//! table is the more accurate where PostgreSQL cancels digits.
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
//! cannot know once that row leaves: rescanned.
//!
//! COUNT / SUM / AVG are exact over integers and numerics (sums of integers and of
//! fixed-scale numerics are exact; floats would drift, so the translation does not
//! offer them). A NaN or ±Infinity (numeric, or a float of the variance and
//! regression families) would stay in a running sum after its row leaves
//! (`NaN − NaN` and `∞ − ∞` are NaN), so a group whose delta holds one is
//! rescanned. When an extremum may have left, or the group's old state is not
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
    if let Some(b) = &agg.arg2 {
        parts.push(format!("{alias}.{} IS NOT NULL", quote_ident(b)));
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

/// The second argument of a regression aggregate in `alias` (its `x`).
fn arg2(agg: &Aggregate, alias: &str) -> String {
    format!("{alias}.{}", quote_ident(agg.arg2.as_deref().unwrap_or("__pgt_missing_arg")))
}

/// The running sums of a moment aggregate (the variance and regression
/// families) over rows `alias`: per state column (the value column, then
/// [`Aggregate::extra_state_columns`] in order), the aggregate call summing
/// its term, each row weighted by `weight` (SQL; `None`: 1), without FILTER.
/// Integers and numerics are summed as `numeric`; floats exactly by
/// `pgtrickle._exact_sum(x, w)` / `pgtrickle._exact_sum(x, y, w)`
/// (`pgt_core::exact`: Σ w·x and Σ w·x·y of the doubles' exact values, as
/// `numeric`; PostgreSQL's own `float8::numeric` keeps 15 digits).
fn moment_sums(agg: &Aggregate, j: usize, alias: &str, weight: Option<&str>) -> Vec<(String, String)> {
    let one = |x: &str| {
        if agg.float_argument() {
            format!("pgtrickle._exact_sum(({x})::float8, {})", weight.unwrap_or("1"))
        } else {
            let w = weight.map(|w| format!("{w}::numeric * ")).unwrap_or_default();
            format!("sum({w}({x})::numeric)")
        }
    };
    let two = |x: &str, y: &str| {
        if agg.float_argument() {
            format!("pgtrickle._exact_sum(({x})::float8, ({y})::float8, {})", weight.unwrap_or("1"))
        } else {
            let w = weight.map(|w| format!("{w}::numeric * ")).unwrap_or_default();
            format!("sum({w}({x})::numeric * ({y})::numeric)")
        }
    };
    // In the order of the state columns: Σx, Σx², then Σy, Σy², Σxy.
    let terms = if agg.kind.is_variance() {
        let x = arg(agg, alias);
        vec![one(&x), two(&x, &x)]
    } else if agg.kind.is_regression() {
        let (y, x) = (arg(agg, alias), arg2(agg, alias));
        vec![one(&x), two(&x, &x), one(&y), two(&y, &y), two(&x, &y)]
    } else {
        Vec::new()
    };
    moment_states(agg, j).into_iter().zip(terms).collect()
}

/// The state columns of a moment aggregate, in order (its value column, then
/// [`Aggregate::extra_state_columns`]).
fn moment_states(agg: &Aggregate, j: usize) -> Vec<String> {
    agg.value_state_column(j).into_iter().chain(agg.extra_state_columns(j).into_iter().map(|(name, _)| name)).collect()
}

/// Whether `agg` keeps exact running sums (the variance and regression
/// families).
fn is_moment(agg: &Aggregate) -> bool {
    agg.kind.is_variance() || agg.kind.is_regression()
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
        if is_moment(agg) {
            for (state, call) in moment_sums(agg, j, "i", None) {
                cols.push(format!("({call} FILTER (WHERE {c}))::numeric AS {state}"));
            }
            continue;
        }
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
                (AggregateKind::Min, _) => format!("min({})", arg(agg, "i")),
                _ => format!("max({})", arg(agg, "i")),
            };
            cols.push(format!("(({call} FILTER (WHERE {c})))::{t} AS {state}", t = value_state_type(agg)));
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

/// For an aggregate keeping running sums of values that may be NaN or
/// ±Infinity (SUM, AVG and the variance family over `numeric`, the variance
/// and regression families over floats), which would spoil them for good:
/// the test "row `alias` holds one" (its group is then rescanned).
fn non_finite(agg: &Aggregate, alias: &str) -> Option<String> {
    // (`arg_type` is the type's name without its modifier.)
    let numeric = agg.arg_type == "numeric";
    if numeric && (matches!(agg.kind, AggregateKind::Sum | AggregateKind::Avg) || agg.kind.is_variance()) {
        return Some(format!("{}::numeric IN ('NaN'::numeric, 'Infinity'::numeric, '-Infinity'::numeric)", arg(agg, alias)));
    }
    if is_moment(agg) && agg.float_argument() {
        let test = |v: String| format!("{v}::float8 IN ('NaN'::float8, 'Infinity'::float8, '-Infinity'::float8)");
        let mut tests = vec![test(arg(agg, alias))];
        if agg.kind.is_regression() {
            tests.push(test(arg2(agg, alias)));
        }
        return Some(format!("({})", tests.join(" OR ")));
    }
    None
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

/// The variance family over floats from its count `n` and exact sums `sum`
/// and `sumsq` (module doc): `N·Σx² − (Σx)²`, exact, then in float8 over
/// `N·(N − 1)` (or `N²`), and its square root for `stddev` — each step
/// correctly rounded, as PostgreSQL's `float8_var_samp` divides its `Sxx`.
/// A NaN or an infinity among the values makes the result NaN, as in
/// PostgreSQL (the exact sums are then NaN or infinite).
fn float_variance_sql(kind: AggregateKind, n: &str, sum: &str, sumsq: &str) -> String {
    let sample = matches!(kind, AggregateKind::VarSamp | AggregateKind::StddevSamp);
    let scaled = format!("(({n})::numeric * {sumsq} - {sum} * {sum})::float8");
    let denominator = if sample { format!("(({n})::float8 * ({n} - 1)::float8)") } else { format!("(({n})::float8 * ({n})::float8)") };
    let var = format!("({scaled} / {denominator})");
    let value = if matches!(kind, AggregateKind::StddevSamp | AggregateKind::StddevPop) { format!("pg_catalog.sqrt({var})") } else { var };
    let defined = if sample { format!("{n} > 1") } else { format!("{n} > 0") };
    format!("CASE WHEN {defined} THEN {value} END")
}

/// The regression family's value from its count `n` (rows where both
/// arguments are non-NULL) and exact sums `[Σx, Σx², Σy, Σy², Σxy]`, as
/// PostgreSQL's `float8_regr_*` / `float8_corr` / `float8_covar_*` finish
/// (src/backend/utils/adt/float.c), with `N·Sxx = N·Σx² − (Σx)²`,
/// `N·Syy`, `N·Sxy = N·Σxy − Σx·Σy` computed exactly and rounded once to
/// float8: NULL without rows (`covar_samp`: without two), `corr`,
/// `regr_slope`, `regr_intercept` and `regr_r2` NULL when `Sxx` is 0 (`corr`
/// also when `Syy` is), `regr_r2` 1 when `Syy` is 0.
fn regression_sql(kind: AggregateKind, n: &str, sums: &[String]) -> String {
    let [sx, sxx, sy, syy, sxy] = sums else { return "NULL".to_string() };
    // As PostgreSQL's accumulation: Sxx is NaN once an x is NaN or infinite,
    // Syy likewise for y, Sxy for either (an exact sum of finite values is
    // finite, so Σx is finite exactly when every x is).
    let finite = |sum: &str| format!("{sum} NOT IN ('NaN'::numeric, 'Infinity'::numeric, '-Infinity'::numeric)");
    let or_nan = |when: String, value: String| format!("(CASE WHEN {when} THEN ({value})::float8 ELSE 'NaN'::float8 END)");
    let nsxx = or_nan(finite(sx), format!("({n})::numeric * {sxx} - {sx} * {sx}"));
    let nsyy = or_nan(finite(sy), format!("({n})::numeric * {syy} - {sy} * {sy}"));
    let nsxy = or_nan(format!("{} AND {}", finite(sx), finite(sy)), format!("({n})::numeric * {sxy} - {sx} * {sy}"));
    let nf = format!("({n})::float8");
    let none = format!("{n} < 1");
    match kind {
        AggregateKind::RegrCount => n.to_string(),
        AggregateKind::RegrAvgX => format!("CASE WHEN {none} THEN NULL ELSE {sx}::float8 / {nf} END"),
        AggregateKind::RegrAvgY => format!("CASE WHEN {none} THEN NULL ELSE {sy}::float8 / {nf} END"),
        AggregateKind::RegrSxx => format!("CASE WHEN {none} THEN NULL ELSE {nsxx} / {nf} END"),
        AggregateKind::RegrSyy => format!("CASE WHEN {none} THEN NULL ELSE {nsyy} / {nf} END"),
        AggregateKind::RegrSxy => format!("CASE WHEN {none} THEN NULL ELSE {nsxy} / {nf} END"),
        AggregateKind::CovarPop => format!("CASE WHEN {none} THEN NULL ELSE {nsxy} / ({nf} * {nf}) END"),
        AggregateKind::CovarSamp => format!("CASE WHEN {n} < 2 THEN NULL ELSE {nsxy} / ({nf} * ({n} - 1)::float8) END"),
        AggregateKind::Corr => format!(
            "CASE WHEN {none} OR {nsxx} = 0 OR {nsyy} = 0 THEN NULL ELSE {nsxy} / (pg_catalog.sqrt({nsxx}) * pg_catalog.sqrt({nsyy})) END"
        ),
        AggregateKind::RegrSlope => format!("CASE WHEN {none} OR {nsxx} = 0 THEN NULL ELSE {nsxy} / {nsxx} END"),
        AggregateKind::RegrIntercept => format!(
            "CASE WHEN {none} OR {nsxx} = 0 THEN NULL ELSE ({sy}::float8 - {sx}::float8 * ({nsxy} / {nsxx})) / {nf} END"
        ),
        AggregateKind::RegrR2 => format!(
            "CASE WHEN {none} OR {nsxx} = 0 THEN NULL WHEN {nsyy} = 0 THEN 1::float8 ELSE ({nsxy} / {nsxx}) * ({nsxy} / {nsyy}) END"
        ),
        _ => "NULL".to_string(),
    }
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
        k if k.is_variance() || k.is_regression() => {
            let sums: Vec<String> = moment_states(agg, j).into_iter().map(|state| format!("{alias}.{state}")).collect();
            match (k.is_regression(), agg.float_argument()) {
                (true, _) => regression_sql(k, &count, &sums),
                (false, true) => float_variance_sql(k, &count, &sums[0], &sums[1]),
                (false, false) => variance_sql(k, &count, &sums[0], &sums[1]),
            }
        }
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
        // (The variance and regression families, by the guard above.)
        _ => "NULL".to_string(),
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
            k if k.is_variance() || k.is_regression() => {
                for (n, (_, call)) in moment_sums(agg, j, "d", Some("d.__pgt_w")).into_iter().enumerate() {
                    dcols.push(format!("{call} FILTER (WHERE {c}) AS __pgt_ds{j}_{n}"));
                }
            }
            _ => {}
        }
    }
    // A numeric NaN or ±Infinity makes a running sum NaN or infinite for
    // good (`NaN − NaN` is NaN): a group whose delta holds one is rescanned.
    for (k, agg) in plan.aggregates.iter().enumerate() {
        if let Some(test) = non_finite(agg, "d") {
            dcols.push(format!("coalesce(bool_or({test}) FILTER (WHERE {c}), false) AS __pgt_dnf{j}", c = contributes(agg, "d"), j = k + 1));
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
        if non_finite(agg, "d").is_some() {
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
        if is_moment(agg) {
            for (n, state) in moment_states(agg, j).into_iter().enumerate() {
                ncols.push(format!(
                    "(CASE WHEN {new_count} > 0 THEN coalesce({}, 0) + coalesce(a.__pgt_ds{j}_{n}, 0) END)::numeric AS {state}",
                    old(&state)
                ));
            }
            continue;
        }
        if let Some(state) = value_state_col(agg, j) {
            let value = match agg.kind {
                AggregateKind::Sum | AggregateKind::Avg | AggregateKind::BoolAnd | AggregateKind::BoolOr => {
                    format!("coalesce({}, 0) + coalesce(a.__pgt_ds{j}, 0)", old(&state))
                }
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
            for (state, t) in agg.extra_state_columns(j) {
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
            arg2: None,
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
        assert!(m.contains("__pgt_ds3_1"), "the sum of squares follows: {m}");
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
    fn regression_from_exact_sums() {
        let mut corr = agg(AggregateKind::Corr, 1);
        corr.arg2 = Some("__pgt_b1".into());
        corr.arg_type = "double precision".into();
        corr.result_type = "double precision".into();
        let mut p = plan(1, false);
        p.aggregates = vec![corr];
        let names: Vec<String> = p.state_columns().into_iter().map(|c| c.name).collect();
        assert_eq!(
            names,
            ["__pgt_count", "__pgt_aux_count_1", "__pgt_aux_sum_1", "__pgt_aux_sumsq_1", "__pgt_aux_sumy_1", "__pgt_aux_sumsqy_1", "__pgt_aux_sumxy_1"]
        );
        let f = full(&p);
        assert!(f.contains("i.\"__pgt_a1\" IS NOT NULL AND i.\"__pgt_b1\" IS NOT NULL"), "{f}");
        assert!(f.contains("pgtrickle._exact_sum((i.\"__pgt_b1\")::float8, (i.\"__pgt_a1\")::float8, 1) FILTER"), "{f}");
        let m = merge(&p, Changed::from([1])).expect("a merge");
        assert!(m.contains("pgtrickle._exact_sum((d.\"__pgt_b1\")::float8, (d.\"__pgt_a1\")::float8, d.__pgt_w) FILTER") && m.contains("AS __pgt_ds1_4"), "{m}");
        assert!(m.contains("'NaN'::float8"), "{m}");
        let value = regression_sql(AggregateKind::RegrR2, "n", &["sx", "sxx", "sy", "syy", "sxy"].map(String::from));
        assert!(
            value.contains("WHEN (CASE WHEN sy NOT IN ('NaN'::numeric, 'Infinity'::numeric, '-Infinity'::numeric) THEN ((n)::numeric * syy - sy * sy)::float8 ELSE 'NaN'::float8 END) = 0 THEN 1::float8"),
            "{value}"
        );
    }

    /// The regression family's value from maintained sums (N, Σx, Σx², Σy,
    /// Σy², Σxy, exact integers here) equals a direct two-pass computation
    /// over the group's rows after any inserts and deletes.
    fn two_pass(rows: &[(i64, i64)]) -> (f64, f64, f64) {
        let n = rows.len() as f64;
        let (mx, my) = (rows.iter().map(|r| r.1 as f64).sum::<f64>() / n, rows.iter().map(|r| r.0 as f64).sum::<f64>() / n);
        let sxx: f64 = rows.iter().map(|r| (r.1 as f64 - mx).powi(2)).sum();
        let syy: f64 = rows.iter().map(|r| (r.0 as f64 - my).powi(2)).sum();
        let sxy: f64 = rows.iter().map(|r| (r.1 as f64 - mx) * (r.0 as f64 - my)).sum();
        (sxy / (sxx.sqrt() * syy.sqrt()), sxy / sxx, sxy / n)
    }

    proptest::proptest! {
        #[test]
        fn maintained_moment_sums_give_the_regression(
            rows in proptest::collection::vec((-50i64..50, -50i64..50), 3..20),
            deletes in proptest::collection::vec(0usize..20, 0..3),
            inserts in proptest::collection::vec((-50i64..50, -50i64..50), 0..4),
        ) {
            // (y, x) rows; sums maintained by signed updates.
            let sums = |rs: &[(i64, i64)]| rs.iter().fold([0i128; 6], |mut s, (y, x)| {
                let (y, x) = (i128::from(*y), i128::from(*x));
                s[0] += 1; s[1] += x; s[2] += x * x; s[3] += y; s[4] += y * y; s[5] += x * y; s
            });
            let mut maintained = sums(&rows);
            let mut current = rows.clone();
            for d in deletes {
                if d < current.len() {
                    let (y, x) = current.remove(d);
                    let gone = sums(&[(y, x)]);
                    for k in 0..6 { maintained[k] -= gone[k]; }
                }
            }
            for r in inserts {
                current.push(r);
                let added = sums(&[r]);
                for k in 0..6 { maintained[k] += added[k]; }
            }
            proptest::prop_assert_eq!(maintained, sums(&current));
            let [n, sx, sxx, sy, syy, sxy] = maintained;
            let (nsxx, nsyy, nsxy) = (n * sxx - sx * sx, n * syy - sy * sy, n * sxy - sx * sy);
            if nsxx > 0 && nsyy > 0 {
                let (corr, slope, covar) = two_pass(&current);
                let nf = n as f64;
                let ours = (nsxy as f64 / ((nsxx as f64).sqrt() * (nsyy as f64).sqrt()), nsxy as f64 / nsxx as f64, nsxy as f64 / (nf * nf));
                proptest::prop_assert!((ours.0 - corr).abs() <= 1e-9 && (ours.1 - slope).abs() <= 1e-9 * slope.abs().max(1.0) && (ours.2 - covar).abs() <= 1e-9 * covar.abs().max(1.0), "{ours:?} vs {:?}", (corr, slope, covar));
            }
        }
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
