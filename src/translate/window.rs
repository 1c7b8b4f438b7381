//! A query level with window functions, as a window operator
//! (`pgt_delta::window`) over the rows of its FROM, WHERE, GROUP BY and
//! HAVING.
//!
//! The analysed level is split in two, as PostgreSQL's planner splits it
//! (the window input target of `make_window_input_target`):
//!
//! - the **input**: a copy of the level whose SELECT list is every
//!   expression the windows and the SELECT list read that is not computed
//!   by a window — columns, aggregates, `GROUPING()`, subquery expressions,
//!   and the PARTITION BY expressions common to every window, each whole —
//!   named `__pgt_wx1`, ...; without windows it is an ordinary query,
//!   translated as one (a block, an aggregate, a union, ...);
//! - the **output template**: the level's SELECT list and WINDOW clauses
//!   over the placeholder `__pgt_win` holding those columns, deparsed by
//!   PostgreSQL, so every window function, frame and expression keeps
//!   PostgreSQL's exact semantics.
//!
//! The partition key by which changes are localized is the PARTITION BY
//! expressions common to every window of the level.

use super::placeholder::{cstring, new_cte_reference};
use super::prefix::PrefixFilter;
use super::{deparse, translate_block, translate_tree, wrap_in_subquery, Unsupported};
use crate::error::PgtResult;
use pgrx::prelude::*;
use pgrx::{pg_sys, PgList};
use pgt_delta::WindowPlan;
use pgt_delta::Root;
use std::ffi::c_void;

macro_rules! unsupported {
    ($($t:tt)*) => { return Ok(Err(Unsupported(format!($($t)*)))) };
}

/// The expressions the output template reads from the input, collected
/// while they are replaced by Vars of the placeholder.
struct Units {
    exprs: Vec<*mut pg_sys::Node>,
    correlated: bool,
}

impl Units {
    /// The placeholder column (a Var of range-table entry 1) for `expr`,
    /// added as a new input column unless an equal one exists.
    unsafe fn var_for(&mut self, expr: *mut pg_sys::Node) -> *mut pg_sys::Node {
        let i = match self.exprs.iter().position(|e| pg_sys::equal(*e as *const c_void, expr as *const c_void)) {
            Some(i) => i,
            None => {
                self.exprs.push(pg_sys::copyObjectImpl(expr as *const c_void) as *mut pg_sys::Node);
                self.exprs.len() - 1
            }
        };
        pg_sys::makeVar(1, (i + 1) as i16, pg_sys::exprType(expr), pg_sys::exprTypmod(expr), pg_sys::exprCollation(expr), 0)
            as *mut pg_sys::Node
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn to_input_vars(node: *mut pg_sys::Node, ctx: *mut c_void) -> *mut pg_sys::Node {
    if node.is_null() {
        return node;
    }
    let units = &mut *(ctx as *mut Units);
    if units.exprs.iter().any(|e| pg_sys::equal(*e as *const c_void, node as *const c_void)) {
        return units.var_for(node);
    }
    if pgrx::is_a(node, pg_sys::NodeTag::T_Var) {
        if (*(node as *mut pg_sys::Var)).varlevelsup > 0 {
            units.correlated = true;
        }
        return units.var_for(node);
    }
    if pgrx::is_a(node, pg_sys::NodeTag::T_Aggref)
        || pgrx::is_a(node, pg_sys::NodeTag::T_GroupingFunc)
        || pgrx::is_a(node, pg_sys::NodeTag::T_SubLink)
    {
        return units.var_for(node);
    }
    pg_sys::expression_tree_mutator_impl(node, Some(to_input_vars), ctx)
}

/// The TLE expressions of `q`'s target list whose sort/group reference is
/// one of `clauses` (SortGroupClauses), with each clause's equality operator.
unsafe fn clause_targets(q: *mut pg_sys::Query, clauses: *mut pg_sys::List) -> Vec<(*mut pg_sys::Node, pg_sys::Oid)> {
    let entries: Vec<*mut pg_sys::TargetEntry> = PgList::<pg_sys::TargetEntry>::from_pg((*q).targetList).iter_ptr().collect();
    PgList::<pg_sys::SortGroupClause>::from_pg(clauses)
        .iter_ptr()
        .filter_map(|c| {
            entries.iter().find(|te| (***te).ressortgroupref == (*c).tleSortGroupRef).map(|te| ((**te).expr as *mut pg_sys::Node, (*c).eqop))
        })
        .collect()
}

/// The ranking function of `node` when it is a call of `row_number()`,
/// `rank()` or `dense_rank()`.
unsafe fn ranking_call(node: *mut pg_sys::Node) -> Option<*mut pg_sys::WindowFunc> {
    if node.is_null() || !pgrx::is_a(node, pg_sys::NodeTag::T_WindowFunc) {
        return None;
    }
    let f = node as *mut pg_sys::WindowFunc;
    matches!(u32::from((*f).winfnoid), pg_sys::F_ROW_NUMBER | pg_sys::F_RANK_ | pg_sys::F_DENSE_RANK_).then_some(f)
}

#[pg_guard]
unsafe extern "C-unwind" fn collect_window_calls(node: *mut pg_sys::Node, ctx: *mut c_void) -> bool {
    if node.is_null() {
        return false;
    }
    if pgrx::is_a(node, pg_sys::NodeTag::T_WindowFunc) {
        (*(ctx as *mut Vec<*mut pg_sys::Node>)).push(node);
        return false;
    }
    pg_sys::expression_tree_walker_impl(node, Some(collect_window_calls), ctx)
}

#[pg_guard]
unsafe extern "C-unwind" fn collect_vars(node: *mut pg_sys::Node, ctx: *mut c_void) -> bool {
    if node.is_null() {
        return false;
    }
    if pgrx::is_a(node, pg_sys::NodeTag::T_Var) {
        let attno = (*(node as *mut pg_sys::Var)).varattno as usize;
        let seen = &mut *(ctx as *mut Vec<usize>);
        if !seen.contains(&attno) {
            seen.push(attno);
        }
        return false;
    }
    pg_sys::expression_tree_walker_impl(node, Some(collect_vars), ctx)
}

/// The ranking call a ranked prefix can be kept for (module doc of
/// `pgt_delta::window`, "Ranked prefix"): the filtered visible column of
/// `template` is a `row_number()`, `rank()` or `dense_rank()` call, the
/// level has one window and calls no other window functions.
unsafe fn prefix_call(template: *mut pg_sys::Query, filter: PrefixFilter) -> Option<*mut pg_sys::WindowFunc> {
    if PgList::<pg_sys::WindowClause>::from_pg((*template).windowClause).len() != 1 {
        return None;
    }
    let entries: Vec<*mut pg_sys::TargetEntry> = PgList::<pg_sys::TargetEntry>::from_pg((*template).targetList).iter_ptr().collect();
    let mut calls: Vec<*mut pg_sys::Node> = Vec::new();
    for te in &entries {
        collect_window_calls((**te).expr as *mut pg_sys::Node, &mut calls as *mut _ as *mut c_void);
    }
    if calls.iter().any(|c| ranking_call(*c).is_none()) {
        return None;
    }
    let target = entries.iter().filter(|te| !(***te).resjunk).nth(filter.column)?;
    ranking_call((**target).expr as *mut pg_sys::Node)
}

/// The ranked prefix of `template` (its SELECT list already over the
/// placeholder, `units` its input columns) for `filter`: the input columns
/// its ORDER BY reads, appended to the template's output, and the probe.
unsafe fn ranked_prefix(
    template: *mut pg_sys::Query,
    call: *mut pg_sys::WindowFunc,
    filter: PrefixFilter,
    visible: &[String],
    units: &[*mut pg_sys::Node],
    partition_count: usize,
) -> PgtResult<Result<pgt_delta::RankedPrefix, Unsupported>> {
    let clause = PgList::<pg_sys::WindowClause>::from_pg((*template).windowClause).get_ptr(0).ok_or_else(|| crate::error::PgtError::internal("window clause"))?;
    let entries: Vec<*mut pg_sys::TargetEntry> = PgList::<pg_sys::TargetEntry>::from_pg((*template).targetList).iter_ptr().collect();
    // The input columns the ORDER BY reads.
    let mut read: Vec<usize> = Vec::new();
    for sort in PgList::<pg_sys::SortGroupClause>::from_pg((*clause).orderClause).iter_ptr() {
        if let Some(te) = entries.iter().find(|te| (***te).ressortgroupref == (*sort).tleSortGroupRef) {
            collect_vars((**te).expr as *mut pg_sys::Node, &mut read as *mut _ as *mut c_void);
        }
    }
    // (Every Var of the template is an input column, 1-based.)
    read.retain(|a| (1..=units.len()).contains(a));
    read.sort_unstable();
    let order_exprs: Vec<*mut pg_sys::Node> = read.iter().map(|a| units[a - 1]).collect();
    if let Some(u) = super::unhashable(&order_exprs, "an ORDER BY expression of a window")? {
        return Ok(Err(u));
    }
    let order_columns: Vec<String> = read.iter().map(|a| pgt_delta::names::window_input(*a)).collect();
    let mut order_types = Vec::new();
    for e in &order_exprs {
        order_types.push(crate::objects::column_type(pg_sys::exprType(*e), pg_sys::exprTypmod(*e), pg_sys::exprCollation(*e))?);
    }

    // The probe: the partition key, whether the row changed, and rank()
    // (dense_rank() for a dense_rank() prefix) over the same window; the
    // clause's sort entries stay, hidden.
    let probe = pg_sys::copyObjectImpl(template as *const c_void) as *mut pg_sys::Query;
    let var = |attno: usize, e: *mut pg_sys::Node| {
        pg_sys::makeVar(1, attno as i16, pg_sys::exprType(e), pg_sys::exprTypmod(e), pg_sys::exprCollation(e), 0) as *mut pg_sys::Expr
    };
    let mut tlist: *mut pg_sys::List = std::ptr::null_mut();
    let mut resno: i16 = 0;
    let mut push = |expr: *mut pg_sys::Expr, name: &str, junk: bool, sortref: pg_sys::Index, tlist: &mut *mut pg_sys::List| {
        resno += 1;
        let te = pg_sys::makeTargetEntry(expr, resno, cstring(name), junk);
        (*te).ressortgroupref = sortref;
        *tlist = pg_sys::lappend(*tlist, te as *mut c_void);
    };
    for (i, unit) in units.iter().enumerate().take(partition_count) {
        push(var(i + 1, *unit), &pgt_delta::names::window_input(i + 1), false, 0, &mut tlist);
    }
    let changed = pg_sys::makeVar(1, (units.len() + 1) as i16, pg_sys::BOOLOID, -1, pg_sys::InvalidOid, 0);
    push(changed as *mut pg_sys::Expr, pgt_delta::names::WINDOW_CHANGED, false, 0, &mut tlist);
    let rank = pg_sys::copyObjectImpl(call as *const c_void) as *mut pg_sys::WindowFunc;
    let probe_function = if u32::from((*call).winfnoid) == pg_sys::F_DENSE_RANK_ { pg_sys::F_DENSE_RANK_ } else { pg_sys::F_RANK_ };
    (*rank).winfnoid = pg_sys::Oid::from(probe_function);
    push(rank as *mut pg_sys::Expr, pgt_delta::names::WINDOW_PROBE_RANK, false, 0, &mut tlist);
    for te in &entries {
        if (**te).ressortgroupref != 0 {
            push((**te).expr, "", true, (**te).ressortgroupref, &mut tlist);
        }
    }
    (*probe).targetList = tlist;
    let mut columns: Vec<(String, (pg_sys::Oid, i32, pg_sys::Oid))> = units
        .iter()
        .enumerate()
        .map(|(i, e)| (pgt_delta::names::window_input(i + 1), (pg_sys::exprType(*e), pg_sys::exprTypmod(*e), pg_sys::exprCollation(*e))))
        .collect();
    columns.push((pgt_delta::names::WINDOW_CHANGED.to_string(), (pg_sys::BOOLOID, -1, pg_sys::InvalidOid)));
    let rte = new_cte_reference(pgt_delta::names::WINDOW_INPUT, columns);
    (*probe).rtable = pg_sys::lappend(std::ptr::null_mut(), rte as *mut c_void);
    let probe_template = deparse(probe);

    // The template outputs the order columns after the partition key.
    let mut tlist = (*template).targetList;
    let mut resno = PgList::<pg_sys::TargetEntry>::from_pg(tlist).len() as i16;
    for (a, e) in read.iter().zip(&order_exprs) {
        resno += 1;
        let te = pg_sys::makeTargetEntry(var(*a, *e), resno, cstring(&pgt_delta::names::window_input(*a)), false);
        tlist = pg_sys::lappend(tlist, te as *mut c_void);
    }
    (*template).targetList = tlist;
    Ok(Ok(pgt_delta::RankedPrefix {
        column: visible.get(filter.column).cloned().ok_or_else(|| crate::error::PgtError::internal("prefix column"))?,
        bound: filter.bound,
        order_columns,
        order_types,
        order_hash: super::group_hash(&order_exprs),
        probe_template,
    }))
}

/// Translates window level `q` (visible columns named as the caller wants
/// them stored, no DISTINCT, no LIMIT); with `filter`, the parent keeps only
/// a ranked prefix, which the operator then keeps alone when it can.
///
/// # Errors
/// PostgreSQL's, from deparsing and translating the input.
pub(super) unsafe fn translate(q: *mut pg_sys::Query, filter: Option<PrefixFilter>) -> PgtResult<Result<WindowPlan, Unsupported>> {
    let query = &*q;
    if query.hasTargetSRFs {
        unsupported!("set-returning functions in the SELECT list");
    }
    if !query.limitCount.is_null() || !query.limitOffset.is_null() {
        unsupported!("LIMIT / OFFSET in a subquery with window functions");
    }
    // The PARTITION BY expressions common to every window.
    let windows: Vec<*mut pg_sys::WindowClause> = PgList::<pg_sys::WindowClause>::from_pg(query.windowClause).iter_ptr().collect();
    let mut common: Vec<(*mut pg_sys::Node, pg_sys::Oid)> = match windows.first() {
        Some(w) => clause_targets(q, (**w).partitionClause),
        None => Vec::new(),
    };
    for w in windows.iter().skip(1) {
        let theirs = clause_targets(q, (**w).partitionClause);
        common.retain(|(e, _)| theirs.iter().any(|(t, _)| pg_sys::equal(*t as *const c_void, *e as *const c_void)));
    }

    // The output template's SELECT list over the placeholder's columns; the
    // partition key first among them.
    let template = pg_sys::copyObjectImpl(q as *const c_void) as *mut pg_sys::Query;
    let mut units = Units { exprs: Vec::new(), correlated: false };
    for (e, _) in &common {
        units.var_for(*e);
    }
    let ctx = &mut units as *mut Units as *mut c_void;
    for te in PgList::<pg_sys::TargetEntry>::from_pg((*template).targetList).iter_ptr() {
        (*te).expr = to_input_vars((*te).expr as *mut pg_sys::Node, ctx) as *mut pg_sys::Expr;
    }
    if units.correlated {
        unsupported!("window functions in a correlated subquery");
    }
    let exprs = units.exprs.clone();
    let mut resno = PgList::<pg_sys::TargetEntry>::from_pg((*template).targetList).len() as i16;
    let mut tlist = (*template).targetList;
    for (i, (e, _)) in common.iter().enumerate() {
        // The partition key is the first units, in order.
        resno += 1;
        let var = pg_sys::makeVar(1, (i + 1) as i16, pg_sys::exprType(*e), pg_sys::exprTypmod(*e), pg_sys::exprCollation(*e), 0);
        let te = pg_sys::makeTargetEntry(var as *mut pg_sys::Expr, resno, cstring(&pgt_delta::names::window_partition(i + 1)), false);
        tlist = pg_sys::lappend(tlist, te as *mut c_void);
    }
    (*template).targetList = tlist;
    let columns: Vec<(String, (pg_sys::Oid, i32, pg_sys::Oid))> = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| (pgt_delta::names::window_input(i + 1), (pg_sys::exprType(*e), pg_sys::exprTypmod(*e), pg_sys::exprCollation(*e))))
        .collect();
    let rte = new_cte_reference(pgt_delta::names::WINDOW_INPUT, columns);
    (*template).rtable = pg_sys::lappend(std::ptr::null_mut(), rte as *mut c_void);
    (*template).rteperminfos = std::ptr::null_mut();
    (*template).jointree = super::placeholder::from_first_item();
    (*template).groupClause = std::ptr::null_mut();
    (*template).groupingSets = std::ptr::null_mut();
    (*template).groupDistinct = false;
    (*template).havingQual = std::ptr::null_mut();
    (*template).hasAggs = false;
    (*template).hasSubLinks = false;
    (*template).hasGroupRTE = false;
    (*template).sortClause = std::ptr::null_mut();
    (*template).distinctClause = std::ptr::null_mut();
    (*template).rowMarks = std::ptr::null_mut();
    let visible = super::surgery::visible_names(q);
    let prefix = match filter.and_then(|f| prefix_call(template, f).map(|call| (f, call))) {
        Some((f, call)) => match ranked_prefix(template, call, f, &visible, &exprs, common.len())? {
            Ok(p) => Some(p),
            Err(u) => return Ok(Err(u)),
        },
        None => None,
    };
    let output_template = deparse(template);

    // The input: the level without its windows, reading every unit.
    let input = pg_sys::copyObjectImpl(q as *const c_void) as *mut pg_sys::Query;
    let mut input_list: *mut pg_sys::List = std::ptr::null_mut();
    let mut n: i16 = 0;
    for (i, e) in exprs.iter().enumerate() {
        n += 1;
        let te = pg_sys::makeTargetEntry(*e as *mut pg_sys::Expr, n, cstring(&pgt_delta::names::window_input(i + 1)), false);
        input_list = pg_sys::lappend(input_list, te as *mut c_void);
    }
    // GROUP BY's entries stay, hidden, for the clause to refer to.
    let grouped: Vec<u32> = PgList::<pg_sys::SortGroupClause>::from_pg(query.groupClause).iter_ptr().map(|c| (*c).tleSortGroupRef).collect();
    for te in PgList::<pg_sys::TargetEntry>::from_pg((*input).targetList).iter_ptr() {
        if (*te).ressortgroupref != 0 && (grouped.contains(&(*te).ressortgroupref) || !query.groupingSets.is_null()) {
            n += 1;
            (*te).resno = n;
            (*te).resjunk = true;
            input_list = pg_sys::lappend(input_list, te as *mut c_void);
        }
    }
    (*input).targetList = input_list;
    (*input).windowClause = std::ptr::null_mut();
    (*input).hasWindowFuncs = false;
    (*input).sortClause = std::ptr::null_mut();
    (*input).distinctClause = std::ptr::null_mut();
    (*input).hasDistinctOn = false;
    let mut plan = match translate_tree(input)? {
        Ok(plan) => plan,
        Err(u) => return Ok(Err(u)),
    };
    if !matches!(plan.root, Root::Rows(_)) {
        // An aggregate keeps its result in a state table the window reads.
        plan = match translate_block(wrap_in_subquery(input)?)? {
            Ok(plan) => plan,
            Err(u) => return Ok(Err(u)),
        };
    }
    let Root::Rows(input) = plan.root else { unsupported!("window functions over this query") };

    let visible_exprs = super::visible_exprs(q);
    let partition_exprs: Vec<*mut pg_sys::Node> = common.iter().map(|(e, _)| *e).collect();
    if let Some(u) = super::unhashable(&visible_exprs, "an output column")? {
        return Ok(Err(u));
    }
    if let Some(u) = super::unhashable(&partition_exprs, "a PARTITION BY expression")? {
        return Ok(Err(u));
    }
    let mut partition_equality = Vec::new();
    let mut partition_types = Vec::new();
    for (e, eqop) in &common {
        let Some(op) = super::qualified_operator(*eqop)? else { unsupported!("a PARTITION BY expression without an equality operator") };
        partition_equality.push(op);
        partition_types.push(crate::objects::column_type(pg_sys::exprType(*e), pg_sys::exprTypmod(*e), pg_sys::exprCollation(*e))?);
    }
    let windowed = visible_exprs
        .iter()
        .map(|e| {
            let mut calls: Vec<*mut pg_sys::Node> = Vec::new();
            collect_window_calls(*e, &mut calls as *mut _ as *mut c_void);
            !calls.is_empty()
        })
        .collect();
    Ok(Ok(WindowPlan {
        windowed,
        input,
        partition: (1..=common.len()).map(pgt_delta::names::window_input).collect(),
        partition_equality,
        partition_hash: super::group_hash(&partition_exprs),
        partition_types,
        output_template,
        visible,
        content_hash: super::group_hash(&visible_exprs),
        prefix,
    }))
}
