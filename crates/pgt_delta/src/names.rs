//! Every hidden name pg_trickle's generated SQL relies on across modules and
//! crates — columns of stream tables, change buffers, state tables and
//! templates, and the placeholders templates read — defined once. The
//! extension's translation, storage and capture code import them from here;
//! no other module spells them.
//!
//! Names local to one statement of one module (the CTEs of an aggregate's
//! MERGE, say) stay with that module.

/// The prefix reserved for pg_trickle's hidden names; user columns may not
/// start with it.
pub const PREFIX: &str = "__pgt_";

/// Row identity of a stream table or state table: a 64-bit hash, unique.
pub const ROW_ID: &str = "__pgt_row_id";

/// The weight (signed multiplicity) of a row of a state, binding or delta.
pub const WEIGHT: &str = "__pgt_w";

/// The writing transaction of a change-buffer row (`xid8`).
pub const TXID: &str = "__pgt_txid";

/// The action of a change-buffer row: `I` a new image, `D` an old one, `T` a
/// TRUNCATE marker.
pub const ACTION: &str = "__pgt_action";

/// Rows in an aggregate's group (its multiplicity, for DISTINCT).
pub const COUNT: &str = "__pgt_count";

/// The placeholder (CTE name) of input `i` (1-based) of a template.
pub fn placeholder(i: usize) -> String {
    format!("__pgt_in_{i}")
}

/// The column standing for dropped column `attnum` in a relation's bindings.
pub fn dropped(attnum: usize) -> String {
    format!("__pgt_dropped_{attnum}")
}

/// The weight of the row read from input `i` (1-based), in a block's output.
pub fn weight_of(i: usize) -> String {
    format!("__pgt_w_{i}")
}

/// Key column `j` (1-based) of input `i`, in a block's output (the row's
/// identity is built from these).
pub fn key_of(i: usize, j: usize) -> String {
    format!("__pgt_k{i}_{j}")
}

/// The sign (`< 0`) of numeric key column `j` of input `i`, beside it in a
/// block's output (numeric hashes ignore the sign).
pub fn key_sign_of(i: usize, j: usize) -> String {
    format!("__pgt_k{i}_{j}s")
}

/// Group key `i` (1-based) of an aggregate: in its input block's output, in
/// the output template's `__pgt_agg` row, and in a state table.
pub fn group(i: usize) -> String {
    format!("__pgt_g{i}")
}

/// The argument of aggregate `j` (1-based) in its input block's output.
pub fn arg(j: usize) -> String {
    format!("__pgt_a{j}")
}

/// The second argument of two-argument aggregate `j` (`corr(y, x)`'s `x`,
/// the regression family's independent variable) in its input block's output.
pub fn arg2(j: usize) -> String {
    format!("__pgt_b{j}")
}

/// Argument (or ORDER BY expression) `n` of rescanned aggregate `j`.
pub fn rescan_arg(j: usize, n: usize) -> String {
    format!("__pgt_a{j}_{n}")
}

/// The FILTER condition of aggregate `j` in its input block's output.
pub fn filter(j: usize) -> String {
    format!("__pgt_f{j}")
}

/// The value of aggregate `j` in the output template's `__pgt_agg` row.
pub fn value(j: usize) -> String {
    format!("__pgt_v{j}")
}

/// The one row an aggregate's output template reads.
pub const AGG_ROW: &str = "__pgt_agg";

/// The output template's HAVING result.
pub const HAVING: &str = "__pgt_having";

/// Rows of aggregate `j` that contribute (FILTER true, argument not NULL).
pub fn aux_count(j: usize) -> String {
    format!("__pgt_aux_count_{j}")
}

/// Running sum of aggregate `j` (SUM, AVG).
pub fn aux_sum(j: usize) -> String {
    format!("__pgt_aux_sum_{j}")
}

/// Running sum of the squares of aggregate `j`'s argument (the variance
/// family).
pub fn aux_sumsq(j: usize) -> String {
    format!("__pgt_aux_sumsq_{j}")
}

/// The regression family's running sums of aggregate `j` beyond Σx and Σx²
/// (`corr(y, x)`, `covar_*`, `regr_*`): Σy, Σy², Σxy.
pub fn aux_sum_y(j: usize) -> String {
    format!("__pgt_aux_sumy_{j}")
}

/// Running Σy² of regression aggregate `j`.
pub fn aux_sumsq_y(j: usize) -> String {
    format!("__pgt_aux_sumsqy_{j}")
}

/// Running Σxy of regression aggregate `j`.
pub fn aux_sum_xy(j: usize) -> String {
    format!("__pgt_aux_sumxy_{j}")
}

/// Current minimum of aggregate `j`.
pub fn aux_min(j: usize) -> String {
    format!("__pgt_aux_min_{j}")
}

/// Current maximum of aggregate `j`.
pub fn aux_max(j: usize) -> String {
    format!("__pgt_aux_max_{j}")
}

/// Rescanned value of aggregate `j`.
pub fn aux_val(j: usize) -> String {
    format!("__pgt_aux_val_{j}")
}

/// The content of a preserved row of an outer join (text), in the outer-join
/// rule's templates.
pub const PRESERVED_CONTENT: &str = "__pgt_pc";

/// The nullable side's weight, in an outer join's affected template.
pub const NULLABLE_WEIGHT: &str = "__pgt_pw";

/// The nullable side's first key column, NULL for a preserved row without a
/// match, in an outer join's presence template.
pub const NULLABLE_KEY: &str = "__pgt_pk";

/// Key column `n` of restricted preserved input `i`, in an outer join's
/// affected template.
pub fn preserved_key(i: usize, n: usize) -> String {
    format!("__pgt_p{i}_{n}")
}

/// Column `i` (1-based) of a child node's output as its parent reads it (a
/// state table's data columns).
pub fn child_column(i: usize) -> String {
    format!("__pgt_c{i}")
}

/// The CTE holding the changes a refresh applies to intermediate state table
/// `n` (its MERGE's RETURNING rows).
pub fn state_delta(n: usize) -> String {
    format!("__pgt_sd{n}")
}

/// Whether `name` is reserved for pg_trickle.
pub fn is_reserved(name: &str) -> bool {
    name.starts_with(PREFIX)
}

/// The schema of intermediate state tables.
pub const STATE_SCHEMA: &str = "pgtrickle_state";

/// Intermediate state table `n` of stream table `pgt_id` (in [`STATE_SCHEMA`]).
pub fn state_table(pgt_id: i64, n: usize) -> String {
    format!("pgt_{pgt_id}_{n}")
}

/// Columns of the rows a child's state-table MERGE returns: the old and the
/// new row id, and column `i`'s old and new value.
pub const OLD_ROW_ID: &str = "__pgt_old_id";
/// See [`OLD_ROW_ID`].
pub const NEW_ROW_ID: &str = "__pgt_new_id";
/// See [`OLD_ROW_ID`].
pub fn old_value(i: usize) -> String {
    format!("__pgt_o{i}")
}
/// See [`OLD_ROW_ID`].
pub fn new_value(i: usize) -> String {
    format!("__pgt_n{i}")
}

/// The alias of a subquery the translation wraps (`SELECT DISTINCT * FROM
/// (...) __pgt_s`), and of a child read inside a subquery expression.
pub const SUBQUERY_ALIAS: &str = "__pgt_s";

/// Prefix of the columns of a subquery expression's child query
/// (`__pgt_x1`, ...), before they become `__pgt_c<i>`.
pub const SUBQUERY_COLUMN: &str = "__pgt_x";

/// The row count of a scalar subquery's child (more than 1 is an error).
pub const SUBQUERY_ROWS: &str = "__pgt_n";

/// How many copies of a row a block's output row stands for (INTERSECT ALL,
/// EXCEPT ALL), in its output.
pub const MULTIPLICITY: &str = "__pgt_mult";

/// Which side of INTERSECT / EXCEPT a row comes from (1 or 2).
pub const SET_SIDE: &str = "__pgt_side";

/// The placeholder (CTE name) a window operator's output template reads its
/// input rows from ([`crate::window`]).
pub const WINDOW_INPUT: &str = "__pgt_win";

/// Column `i` (1-based) of a window operator's input rows: in its input's
/// output and in the placeholder [`WINDOW_INPUT`].
pub fn window_input(i: usize) -> String {
    format!("__pgt_wx{i}")
}

/// Partition key column `i` (1-based) of a window operator: in its output
/// template's output and in its state table, hidden from parents.
pub fn window_partition(i: usize) -> String {
    format!("__pgt_wp{i}")
}

/// In a window operator's probe of a ranked prefix ([`crate::window`]):
/// whether a row of the placeholder [`WINDOW_INPUT`] is a changed input row
/// (true) or a stored one (false).
pub const WINDOW_CHANGED: &str = "__pgt_wchanged";

/// In a window operator's probe of a ranked prefix: the rank of a row among
/// the stored and changed rows of its partition, in the window's order.
pub const WINDOW_PROBE_RANK: &str = "__pgt_wrank";

/// The CTE name a recursive WITH query's step reads its recursive
/// reference as ([`crate::recursive`]).
pub const RECURSIVE_SELF: &str = "__pgt_rec";

/// Under `WITH RECURSIVE ... UNION ALL`, the depth column of the recursive
/// reference `__pgt_rec` (beside its weight, [`WEIGHT`]).
pub const RECURSIVE_DEPTH: &str = "__pgt_depth";

/// The recursive row's weight as the step outputs it (UNION ALL).
pub const RECURSIVE_ROW_WEIGHT: &str = "__pgt_rw";

/// The recursive row's depth as the step outputs it (UNION ALL).
pub const RECURSIVE_ROW_DEPTH: &str = "__pgt_rd";

/// The `row_number()` the translation adds for DISTINCT ON and for a LIMIT
/// inside a LATERAL subquery, between the two query levels it splits.
pub const ROW_NUMBER: &str = "__pgt_rn";

/// Correlation column `i` (1-based) a decorrelated LATERAL subquery outputs.
pub fn lateral_key(i: usize) -> String {
    format!("__pgt_lk{i}")
}

/// The alias of the `ROWS FROM (...)` item set-returning functions of a
/// SELECT list move to; its columns are `__pgt_srf1`, ...
pub const TARGET_FUNCTIONS: &str = "__pgt_srf";
