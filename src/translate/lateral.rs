//! LATERAL subqueries in FROM, rewritten into subqueries the engine already
//! maintains. A LATERAL subquery `L(r)` is evaluated once per row `r` of the
//! FROM items before it (SQL:2016 7.6 <table reference>; PostgreSQL docs
//! §7.2.1.5). Two shapes are rewritten, on a copy of the analysed query that
//! is then deparsed and parsed again:
//!
//! - **A scalar aggregate** (aggregates, no GROUP BY or HAVING) yields
//!   exactly one row per `r`, so each reference to one of its columns is
//!   that column as a scalar subquery, `(SELECT <column> FROM ... WHERE
//!   <correlation>)`, and the LATERAL item leaves FROM. Scalar subqueries
//!   are maintained by the presence rule (`sublink.rs`), which also gives an
//!   outer row without matching rows the aggregate's value over none.
//! - **Correlated by equalities**: every reference of `L` to the items
//!   before it is a conjunct `inner = outer` of `L`'s WHERE. Then
//!   `L(r) = σ_{k = outer(r)} L'` where `L'` is `L` without those conjuncts,
//!   computed for every key: its SELECT list gains the inner sides as
//!   columns `__pgt_lk<i>`, a GROUP BY gains them as keys, and an `ORDER BY
//!   ... LIMIT n OFFSET m` becomes `row_number() OVER (PARTITION BY k ORDER
//!   BY ...)` kept between `m` and `m + n` (a window operator,
//!   `pgt_delta::window`). The conjuncts become the join condition — in the
//!   WHERE for an inner join, in the ON clause of a LEFT JOIN LATERAL — so a
//!   changed outer row changes exactly its own expansion, and a change of
//!   `L`'s sources reaches only the keys it touches.
//!
//! - **A projection** (`LATERAL (SELECT a + b AS s)`, no FROM): each
//!   reference is the expression itself, and the item leaves FROM.
//!
//! Other LATERAL subqueries (references outside equalities of the WHERE,
//! DISTINCT, set operations or windows inside) are reported by name.

use super::placeholder::{cstring, row_number_over, string_node};
use super::sublink::{equality_pair, list_of, lower_outer_references, Pair};
use super::{deparse, Unsupported};
use crate::error::{PgtError, PgtResult};
use pgrx::prelude::*;
use pgrx::{pg_sys, PgList};
use std::ffi::{c_void, CString};

macro_rules! unsupported {
    ($($t:tt)*) => { return Ok(Err(Unsupported(format!($($t)*)))) };
}

/// `bigint > bigint` and `bigint <= bigint` (pg_operator.dat).
const INT8_GREATER: u32 = 413;
const INT8_LESS_OR_EQUAL: u32 = 414;

use pgt_delta::names::{lateral_key as key_column, ROW_NUMBER};

/// Whether `q` has a LATERAL subquery in FROM that reads the items before it.
pub(super) unsafe fn has_correlated_lateral(q: &pg_sys::Query) -> bool {
    PgList::<pg_sys::RangeTblEntry>::from_pg(q.rtable).iter_ptr().any(|rte| {
        (*rte).rtekind == pg_sys::RTEKind::RTE_SUBQUERY
            && (*rte).lateral
            && !(*rte).subquery.is_null()
            && pg_sys::contain_vars_of_level((*rte).subquery as *mut pg_sys::Node, 1)
    })
}

/// Rewrites the correlated LATERAL subqueries of `q` (module doc) and returns
/// the rewritten query, parsed and analysed.
///
/// # Errors
/// PostgreSQL's, from deparsing or parsing the rewritten query.
pub(super) unsafe fn rewrite(q: *mut pg_sys::Query) -> PgtResult<Result<*mut pg_sys::Query, Unsupported>> {
    let copy = pg_sys::copyObjectImpl(q as *const c_void) as *mut pg_sys::Query;
    let entries: Vec<*mut pg_sys::RangeTblEntry> = PgList::<pg_sys::RangeTblEntry>::from_pg((*copy).rtable).iter_ptr().collect();
    for (index, rte) in entries.into_iter().enumerate() {
        let varno = (index + 1) as i32;
        if (*rte).rtekind != pg_sys::RTEKind::RTE_SUBQUERY || !(*rte).lateral || (*rte).subquery.is_null() {
            continue;
        }
        let sub = (*rte).subquery;
        if !pg_sys::contain_vars_of_level(sub as *mut pg_sys::Node, 1) {
            (*rte).lateral = false;
            continue;
        }
        let s = &*sub;
        if !s.setOperations.is_null() || !s.distinctClause.is_null() || s.hasWindowFuncs || s.hasTargetSRFs || !s.groupingSets.is_null() {
            unsupported!("a LATERAL subquery with set operations, DISTINCT, window functions or set-returning functions in its SELECT list");
        }
        let scalar = s.hasAggs && s.groupClause.is_null() && s.havingQual.is_null() && s.limitCount.is_null() && s.limitOffset.is_null();
        let projection = !s.hasAggs
            && !s.hasSubLinks
            && s.rtable.is_null()
            && (s.jointree.is_null() || ((*s.jointree).fromlist.is_null() && (*s.jointree).quals.is_null()))
            && s.groupClause.is_null()
            && s.havingQual.is_null()
            && s.limitCount.is_null()
            && s.limitOffset.is_null();
        let result = if scalar || projection { inline_scalar(copy, varno, sub, projection)? } else { decorrelate(copy, varno, rte)? };
        if let Err(u) = result {
            return Ok(Err(u));
        }
    }
    let text = deparse(copy);
    let csql = CString::new(text).map_err(|_| PgtError::internal("deparsed query contains a NUL byte"))?;
    Ok(Ok(crate::privilege::with_pinned_search_path(|| crate::parse::parse_single_select(&csql))?))
}

struct Inline {
    varno: i32,
    sub: *mut pg_sys::Query,
    /// The subquery reads nothing (`LATERAL (SELECT a + b AS s)`): a
    /// reference is its expression, not a scalar subquery.
    projection: bool,
}

#[pg_guard]
unsafe extern "C-unwind" fn to_scalar_sublinks(node: *mut pg_sys::Node, ctx: *mut c_void) -> *mut pg_sys::Node {
    if node.is_null() {
        return node;
    }
    let m = &*(ctx as *mut Inline);
    if pgrx::is_a(node, pg_sys::NodeTag::T_Var) {
        let v = node as *mut pg_sys::Var;
        if (*v).varno == m.varno && (*v).varlevelsup == 0 && (*v).varattno > 0 {
            let select = pg_sys::copyObjectImpl(m.sub as *const c_void) as *mut pg_sys::Query;
            let entry = PgList::<pg_sys::TargetEntry>::from_pg((*select).targetList)
                .iter_ptr()
                .find(|te| (**te).resno == (*v).varattno);
            if let (Some(te), true) = (entry, m.projection) {
                return lower_outer_references((*te).expr as *mut pg_sys::Node, &mut 0);
            }
            if let Some(te) = entry {
                (*te).resno = 1;
                (*te).resjunk = false;
                (*select).targetList = pg_sys::lappend(std::ptr::null_mut(), te as *mut c_void);
                let sl = pg_sys::palloc0(std::mem::size_of::<pg_sys::SubLink>()) as *mut pg_sys::SubLink;
                (*sl).xpr.type_ = pg_sys::NodeTag::T_SubLink;
                (*sl).subLinkType = pg_sys::SubLinkType::EXPR_SUBLINK;
                (*sl).subselect = select as *mut pg_sys::Node;
                (*sl).location = -1;
                return sl as *mut pg_sys::Node;
            }
        }
        return node;
    }
    pg_sys::expression_tree_mutator_impl(node, Some(to_scalar_sublinks), ctx)
}

/// The scalar-aggregate shape: references become scalar subqueries and the
/// item leaves FROM.
unsafe fn inline_scalar(q: *mut pg_sys::Query, varno: i32, sub: *mut pg_sys::Query, projection: bool) -> PgtResult<Result<(), Unsupported>> {
    let mut m = Inline { varno, sub, projection };
    let ctx = &mut m as *mut Inline as *mut c_void;
    if let Err(u) = remove_item(q, varno)? {
        return Ok(Err(u));
    }
    for te in PgList::<pg_sys::TargetEntry>::from_pg((*q).targetList).iter_ptr() {
        (*te).expr = to_scalar_sublinks((*te).expr as *mut pg_sys::Node, ctx) as *mut pg_sys::Expr;
    }
    (*q).havingQual = to_scalar_sublinks((*q).havingQual, ctx);
    mutate_jointree((*q).jointree as *mut pg_sys::Node, ctx);
    if !projection {
        (*q).hasSubLinks = true;
    }
    if references_item(q, varno) {
        unsupported!("a LATERAL aggregate subquery's column read outside the SELECT list, WHERE, ON and HAVING");
    }
    Ok(Ok(()))
}

unsafe fn mutate_jointree(node: *mut pg_sys::Node, ctx: *mut c_void) {
    if node.is_null() {
        return;
    }
    if pgrx::is_a(node, pg_sys::NodeTag::T_FromExpr) {
        let f = node as *mut pg_sys::FromExpr;
        for item in PgList::<pg_sys::Node>::from_pg((*f).fromlist).iter_ptr() {
            mutate_jointree(item, ctx);
        }
        (*f).quals = to_scalar_sublinks((*f).quals, ctx);
    } else if pgrx::is_a(node, pg_sys::NodeTag::T_JoinExpr) {
        let j = node as *mut pg_sys::JoinExpr;
        mutate_jointree((*j).larg, ctx);
        mutate_jointree((*j).rarg, ctx);
        (*j).quals = to_scalar_sublinks((*j).quals, ctx);
    }
}

struct Find {
    varno: i32,
    found: bool,
}

#[pg_guard]
unsafe extern "C-unwind" fn find_item_var(node: *mut pg_sys::Node, ctx: *mut c_void) -> bool {
    if node.is_null() {
        return false;
    }
    let f = &mut *(ctx as *mut Find);
    if pgrx::is_a(node, pg_sys::NodeTag::T_Var) {
        let v = node as *mut pg_sys::Var;
        if (*v).varno == f.varno && (*v).varlevelsup == 0 {
            f.found = true;
            return true;
        }
        return false;
    }
    if pgrx::is_a(node, pg_sys::NodeTag::T_Query) {
        return false;
    }
    pg_sys::expression_tree_walker(node, Some(find_item_var), ctx)
}

/// Whether level-0 expressions of `q` still read range-table entry `varno`.
unsafe fn references_item(q: *mut pg_sys::Query, varno: i32) -> bool {
    let mut f = Find { varno, found: false };
    pg_sys::query_tree_walker(q, Some(find_item_var), &mut f as *mut Find as *mut c_void, pg_sys::QTW_IGNORE_RANGE_TABLE as i32);
    f.found
}

/// Removes FROM item `varno` from the join tree: from the top FROM list, or
/// as the right side of an INNER or LEFT join with no condition (`CROSS JOIN
/// LATERAL`, `... JOIN LATERAL (...) ON true`), which becomes its left side.
unsafe fn remove_item(q: *mut pg_sys::Query, varno: i32) -> PgtResult<Result<(), Unsupported>> {
    let is_item = |n: *mut pg_sys::Node| pgrx::is_a(n, pg_sys::NodeTag::T_RangeTblRef) && (*(n as *mut pg_sys::RangeTblRef)).rtindex == varno;
    let from = (*q).jointree;
    let items: Vec<*mut pg_sys::Node> = PgList::<pg_sys::Node>::from_pg((*from).fromlist).iter_ptr().collect();
    if items.iter().any(|n| is_item(*n)) {
        let kept: Vec<*mut pg_sys::Node> = items.into_iter().filter(|n| !is_item(*n)).collect();
        (*from).fromlist = list_of(&kept);
        return Ok(Ok(()));
    }
    unsafe fn replace(q: *mut pg_sys::Query, slot: *mut *mut pg_sys::Node, varno: i32) -> bool {
        let node = *slot;
        if !pgrx::is_a(node, pg_sys::NodeTag::T_JoinExpr) {
            return false;
        }
        let j = node as *mut pg_sys::JoinExpr;
        let r = (*j).rarg;
        let trivial = (*j).quals.is_null()
            || (pgrx::is_a((*j).quals, pg_sys::NodeTag::T_Const)
                && !(*((*j).quals as *mut pg_sys::Const)).constisnull
                && (*((*j).quals as *mut pg_sys::Const)).constvalue.value() != 0);
        if pgrx::is_a(r, pg_sys::NodeTag::T_RangeTblRef)
            && (*(r as *mut pg_sys::RangeTblRef)).rtindex == varno
            && trivial
            && ((*j).jointype == pg_sys::JoinType::JOIN_INNER || (*j).jointype == pg_sys::JoinType::JOIN_LEFT)
            && (*j).usingClause.is_null()
        {
            *slot = (*j).larg;
            // The join's range-table entry stays (Vars are numbered by
            // position) but stands for nothing the deparser must resolve.
            if let Some(join) = PgList::<pg_sys::RangeTblEntry>::from_pg((*q).rtable).get_ptr(((*j).rtindex - 1) as usize) {
                (*join).rtekind = pg_sys::RTEKind::RTE_RESULT;
                (*join).joinaliasvars = std::ptr::null_mut();
                (*join).joinleftcols = std::ptr::null_mut();
                (*join).joinrightcols = std::ptr::null_mut();
                (*(*join).eref).colnames = std::ptr::null_mut();
            }
            return true;
        }
        replace(q, &mut (*j).larg, varno) || replace(q, &mut (*j).rarg, varno)
    }
    let list = (*from).fromlist;
    for i in 0..PgList::<pg_sys::Node>::from_pg(list).len() {
        let cell = (*list).elements.add(i);
        let slot = &mut (*cell).ptr_value as *mut *mut c_void as *mut *mut pg_sys::Node;
        if replace(q, slot, varno) {
            return Ok(Ok(()));
        }
    }
    unsupported!("a LATERAL aggregate subquery joined with a condition")
}

/// Finds the join condition slot for FROM item `varno`: the top WHERE when
/// it is in the FROM list or under inner joins only, else the ON clause of
/// the join whose right side it is.
unsafe fn condition_slot(q: *mut pg_sys::Query, varno: i32) -> Option<*mut *mut pg_sys::Node> {
    unsafe fn find(node: *mut pg_sys::Node, varno: i32) -> Option<*mut *mut pg_sys::Node> {
        if !pgrx::is_a(node, pg_sys::NodeTag::T_JoinExpr) {
            return None;
        }
        let j = node as *mut pg_sys::JoinExpr;
        let r = (*j).rarg;
        if pgrx::is_a(r, pg_sys::NodeTag::T_RangeTblRef) && (*(r as *mut pg_sys::RangeTblRef)).rtindex == varno {
            return ((*j).jointype == pg_sys::JoinType::JOIN_INNER || (*j).jointype == pg_sys::JoinType::JOIN_LEFT)
                .then_some(&mut (*j).quals as *mut *mut pg_sys::Node);
        }
        find((*j).larg, varno).or_else(|| find((*j).rarg, varno))
    }
    let from = (*q).jointree;
    for item in PgList::<pg_sys::Node>::from_pg((*from).fromlist).iter_ptr() {
        if pgrx::is_a(item, pg_sys::NodeTag::T_RangeTblRef) && (*(item as *mut pg_sys::RangeTblRef)).rtindex == varno {
            return Some(&mut (*from).quals as *mut *mut pg_sys::Node);
        }
        if let Some(slot) = find(item, varno) {
            return Some(slot);
        }
    }
    None
}

/// A SortGroupClause for target entry reference `sortgroupref` of type `typ`
/// (its default equality and ordering operators); `None` when the type has
/// no equality operator.
unsafe fn sort_group_clause(typ: pg_sys::Oid, sortgroupref: u32) -> Option<*mut pg_sys::SortGroupClause> {
    // Asking for no operator returns whichever exist, without an error.
    let (mut lt, mut eq, mut gt, mut hashable) = (pg_sys::InvalidOid, pg_sys::InvalidOid, pg_sys::InvalidOid, false);
    pg_sys::get_sort_group_operators(typ, false, false, false, &mut lt, &mut eq, &mut gt, &mut hashable);
    if eq == pg_sys::InvalidOid {
        return None;
    }
    let c = pg_sys::palloc0(std::mem::size_of::<pg_sys::SortGroupClause>()) as *mut pg_sys::SortGroupClause;
    (*c).type_ = pg_sys::NodeTag::T_SortGroupClause;
    (*c).tleSortGroupRef = sortgroupref;
    (*c).eqop = eq;
    (*c).sortop = lt;
    (*c).hashable = hashable;
    Some(c)
}

/// The equality-correlated shape (module doc).
unsafe fn decorrelate(q: *mut pg_sys::Query, varno: i32, rte: *mut pg_sys::RangeTblEntry) -> PgtResult<Result<(), Unsupported>> {
    let sub = (*rte).subquery;
    let conjuncts: Vec<*mut pg_sys::Node> =
        PgList::<pg_sys::Node>::from_pg(pg_sys::make_ands_implicit((*(*sub).jointree).quals as *mut pg_sys::Expr)).iter_ptr().collect();
    let mut pairs: Vec<Pair> = Vec::new();
    let mut kept = Vec::new();
    for c in conjuncts {
        match equality_pair(c) {
            Some(p) => pairs.push(p),
            None => kept.push(c),
        }
    }
    (*(*sub).jointree).quals = if kept.is_empty() { std::ptr::null_mut() } else { pg_sys::make_ands_explicit(list_of(&kept)) as *mut pg_sys::Node };
    if pairs.is_empty() || pg_sys::contain_vars_of_level(sub as *mut pg_sys::Node, 1) {
        unsupported!("a LATERAL subquery that refers to the FROM items before it other than by equalities in its WHERE");
    }
    let Some(slot) = condition_slot(q, varno) else { unsupported!("a LATERAL subquery in this position of FROM") };

    // The keys as output columns (and group keys, and the partition of a
    // LIMIT), after the visible columns and before the hidden entries, which
    // PostgreSQL keeps last.
    let all: Vec<*mut pg_sys::TargetEntry> = PgList::<pg_sys::TargetEntry>::from_pg((*sub).targetList).iter_ptr().collect();
    let hidden: Vec<*mut pg_sys::TargetEntry> = all.iter().copied().filter(|te| (**te).resjunk).collect();
    (*sub).targetList = list_of(&all.iter().copied().filter(|te| !(**te).resjunk).map(|te| te as *mut pg_sys::Node).collect::<Vec<_>>());
    let mut resno = PgList::<pg_sys::TargetEntry>::from_pg((*sub).targetList).len() as i16;
    let mut next_ref = all.iter().map(|te| (**te).ressortgroupref).max().unwrap_or(0);
    let mut keys: Vec<(i16, u32)> = Vec::new();
    let mut colnames = (*(*rte).eref).colnames;
    for (i, p) in pairs.iter().enumerate() {
        resno += 1;
        next_ref += 1;
        let name = key_column(i + 1);
        let te = pg_sys::makeTargetEntry(p.inner as *mut pg_sys::Expr, resno, cstring(&name), false);
        (*te).ressortgroupref = next_ref;
        (*sub).targetList = pg_sys::lappend((*sub).targetList, te as *mut c_void);
        colnames = pg_sys::lappend(colnames, string_node(&name));
        keys.push((resno, next_ref));
    }
    let key_clauses = |keys: &[(i16, u32)]| -> Option<*mut pg_sys::List> {
        let mut list: *mut pg_sys::List = std::ptr::null_mut();
        for ((_, r), p) in keys.iter().zip(&pairs) {
            list = pg_sys::lappend(list, sort_group_clause(pg_sys::exprType(p.inner), *r)? as *mut c_void);
        }
        Some(list)
    };
    if !(*sub).groupClause.is_null() {
        let Some(more) = key_clauses(&keys) else { unsupported!("a LATERAL correlation over a type without ordering") };
        (*sub).groupClause = pg_sys::list_concat((*sub).groupClause, more);
    }
    // ORDER BY ... LIMIT n OFFSET m: the row number per key.
    let mut bounds: Option<(i64, Option<i64>)> = None;
    let mut row_number_attno = 0;
    if !(*sub).limitCount.is_null() || !(*sub).limitOffset.is_null() {
        if (*sub).sortClause.is_null() {
            unsupported!("LIMIT / OFFSET without ORDER BY in a LATERAL subquery");
        }
        let (Some(limit), Some(offset)) = (super::int8_constant((*sub).limitCount), super::int8_constant((*sub).limitOffset)) else {
            unsupported!("a LIMIT / OFFSET that is not a constant in a LATERAL subquery");
        };
        if (*sub).limitOption == pg_sys::LimitOption::LIMIT_OPTION_WITH_TIES {
            unsupported!("FETCH ... WITH TIES in a LATERAL subquery");
        }
        bounds = Some((offset.unwrap_or(0), limit));
        let Some(partition) = key_clauses(&keys) else { unsupported!("a LATERAL correlation over a type without ordering") };
        let (clause, function) = row_number_over(1, partition, (*sub).sortClause);
        (*sub).windowClause = pg_sys::lappend(std::ptr::null_mut(), clause as *mut c_void);
        resno += 1;
        row_number_attno = resno;
        let te = pg_sys::makeTargetEntry(function, resno, cstring(ROW_NUMBER), false);
        (*sub).targetList = pg_sys::lappend((*sub).targetList, te as *mut c_void);
        colnames = pg_sys::lappend(colnames, string_node(ROW_NUMBER));
        (*sub).hasWindowFuncs = true;
        (*sub).sortClause = std::ptr::null_mut();
        (*sub).limitCount = std::ptr::null_mut();
        (*sub).limitOffset = std::ptr::null_mut();
        (*sub).limitOption = pg_sys::LimitOption::LIMIT_OPTION_COUNT;
    }
    for te in hidden {
        resno += 1;
        (*te).resno = resno;
        (*sub).targetList = pg_sys::lappend((*sub).targetList, te as *mut c_void);
    }
    (*(*rte).eref).colnames = colnames;
    (*rte).lateral = false;

    // The join condition: each pair over the key column, and the bounds.
    let mut conditions: Vec<*mut pg_sys::Node> = Vec::new();
    for (p, (attno, _)) in pairs.iter().zip(&keys) {
        let typ = pg_sys::exprType(p.inner);
        let column = pg_sys::makeVar(varno, *attno, typ, pg_sys::exprTypmod(p.inner), pg_sys::exprCollation(p.inner), 0) as *mut pg_sys::Node;
        let outer = lower_outer_references(p.outer, &mut 0);
        let (l, r) = if p.inner_on_left { (column, outer) } else { (outer, column) };
        let op = pg_sys::make_opclause(p.opno, pg_sys::BOOLOID, false, l as *mut pg_sys::Expr, r as *mut pg_sys::Expr, pg_sys::InvalidOid, pg_sys::exprCollation(p.inner));
        conditions.push(op as *mut pg_sys::Node);
    }
    if let Some((offset, limit)) = bounds {
        let rn = pg_sys::makeVar(varno, row_number_attno, pg_sys::INT8OID, -1, pg_sys::InvalidOid, 0) as *mut pg_sys::Node;
        let bound = |opno: u32, value: i64| -> *mut pg_sys::Node {
            let c = pg_sys::makeConst(pg_sys::INT8OID, -1, pg_sys::InvalidOid, 8, pg_sys::Datum::from(value), false, true);
            pg_sys::make_opclause(
                pg_sys::Oid::from(opno),
                pg_sys::BOOLOID,
                false,
                pg_sys::copyObjectImpl(rn as *const c_void) as *mut pg_sys::Expr,
                c as *mut pg_sys::Expr,
                pg_sys::InvalidOid,
                pg_sys::InvalidOid,
            ) as *mut pg_sys::Node
        };
        conditions.push(bound(INT8_GREATER, offset));
        if let Some(limit) = limit {
            conditions.push(bound(INT8_LESS_OR_EQUAL, offset.saturating_add(limit)));
        }
    }
    if !(*slot).is_null() {
        conditions.insert(0, *slot);
    }
    *slot = pg_sys::make_ands_explicit(list_of(&conditions)) as *mut pg_sys::Node;
    Ok(Ok(()))
}
