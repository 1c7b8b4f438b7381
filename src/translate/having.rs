//! An aggregate query with subquery expressions in its SELECT list or HAVING
//! (`... GROUP BY g HAVING sum(x) > (SELECT avg(y) FROM t)`), split into what
//! the engine maintains: the aggregate without them, read as a child, and a
//! block over it that evaluates the SELECT list and HAVING (as WHERE) with the
//! subquery expressions ([`super::sublink`]):
//!
//! ```text
//! SELECT <targets'> FROM (SELECT <group keys>, <aggregates> FROM ... GROUP BY ...) s
//! WHERE <having'>
//! ```
//!
//! where `targets'` and `having'` read the aggregates and group keys from `s`
//! — the same values, so the same result (the HAVING of SQL filters groups
//! after aggregation, which is what a WHERE over the grouped rows does).

use super::placeholder::cstring;
use super::{deparse, Unsupported};
use crate::error::{PgtError, PgtResult};
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgList;
use pgt_delta::names;
use std::ffi::{c_void, CString};

struct Mapping {
    /// Group-key expressions, then aggregate calls (level 0 of the query).
    columns: Vec<*mut pg_sys::Node>,
    /// Per group key that is a plain column: its (varno, varattno).
    plain_keys: Vec<Option<(i32, i16)>>,
    depth: u32,
    failure: Option<String>,
}

/// The split form of aggregate query `q` (see the module doc).
pub(super) unsafe fn split(q: *mut pg_sys::Query) -> PgtResult<Result<*mut pg_sys::Query, Unsupported>> {
    if !(*q).groupingSets.is_null() {
        return Ok(Err(Unsupported("GROUPING SETS / CUBE / ROLLUP".into())));
    }
    let tlist = PgList::<pg_sys::TargetEntry>::from_pg((*q).targetList);
    let mut group_entries: Vec<*mut pg_sys::TargetEntry> = Vec::new();
    for sgc in PgList::<pg_sys::SortGroupClause>::from_pg((*q).groupClause).iter_ptr() {
        let te = tlist
            .iter_ptr()
            .find(|te| (**te).ressortgroupref == (*sgc).tleSortGroupRef)
            .ok_or_else(|| PgtError::internal("a GROUP BY clause without its target entry"))?;
        group_entries.push(te);
    }
    let aggrefs = super::surgery::aggrefs(q);
    for a in &aggrefs {
        if super::sublink::has_sublink(*a as *mut pg_sys::Node) {
            return Ok(Err(Unsupported("a subquery inside an aggregate's argument".into())));
        }
    }

    // The inner aggregate: group keys and aggregate calls, no HAVING.
    let inner = pg_sys::copyObjectImpl(q as *const c_void) as *mut pg_sys::Query;
    let mut inner_tlist: *mut pg_sys::List = std::ptr::null_mut();
    let mut columns: Vec<*mut pg_sys::Node> = Vec::new();
    let mut plain_keys = Vec::new();
    for te in &group_entries {
        let i = columns.len() + 1;
        let expr = (**te).expr as *mut pg_sys::Node;
        let copy = pg_sys::makeTargetEntry(
            pg_sys::copyObjectImpl(expr as *const c_void) as *mut pg_sys::Expr,
            i as i16,
            cstring(&format!("{}{i}", names::SUBQUERY_COLUMN)),
            false,
        );
        (*copy).ressortgroupref = (**te).ressortgroupref;
        inner_tlist = pg_sys::lappend(inner_tlist, copy as *mut c_void);
        columns.push(expr);
        plain_keys.push(if pgrx::is_a(expr, pg_sys::NodeTag::T_Var) && (*(expr as *mut pg_sys::Var)).varlevelsup == 0 {
            Some(((*(expr as *mut pg_sys::Var)).varno, (*(expr as *mut pg_sys::Var)).varattno))
        } else {
            None
        });
    }
    for a in &aggrefs {
        let i = columns.len() + 1;
        let te = pg_sys::makeTargetEntry(
            pg_sys::copyObjectImpl(*a as *const c_void) as *mut pg_sys::Expr,
            i as i16,
            cstring(&format!("{}{i}", names::SUBQUERY_COLUMN)),
            false,
        );
        inner_tlist = pg_sys::lappend(inner_tlist, te as *mut c_void);
        columns.push(*a as *mut pg_sys::Node);
    }
    (*inner).targetList = inner_tlist;
    (*inner).havingQual = std::ptr::null_mut();
    (*inner).sortClause = std::ptr::null_mut();
    (*inner).distinctClause = std::ptr::null_mut();
    let text = deparse(inner);
    let csql = CString::new(text).map_err(|_| PgtError::internal("deparsed query contains a NUL byte"))?;
    let inner_q = crate::privilege::with_pinned_search_path(|| crate::parse::parse_single_select(&csql))?;

    // The outer block over it.
    let mut m = Mapping { columns, plain_keys, depth: 0, failure: None };
    let ctx = &mut m as *mut Mapping as *mut c_void;
    let outer = pg_sys::copyObjectImpl(q as *const c_void) as *mut pg_sys::Query;
    let mut outer_tlist: *mut pg_sys::List = std::ptr::null_mut();
    for te in PgList::<pg_sys::TargetEntry>::from_pg((*outer).targetList).iter_ptr().filter(|te| !(**te).resjunk) {
        (*te).expr = map_level0((*te).expr as *mut pg_sys::Node, ctx) as *mut pg_sys::Expr;
        (*te).resno = PgList::<pg_sys::TargetEntry>::from_pg(outer_tlist).len() as i16 + 1;
        (*te).ressortgroupref = 0;
        outer_tlist = pg_sys::lappend(outer_tlist, te as *mut c_void);
    }
    let where_ = map_level0((*outer).havingQual, ctx);
    if let Some(f) = m.failure.take() {
        return Ok(Err(Unsupported(f)));
    }
    let colnames = (1..=m.columns.len()).fold(std::ptr::null_mut::<pg_sys::List>(), |l, i| {
        pg_sys::lappend(l, pg_sys::makeString(cstring(&format!("{}{i}", names::SUBQUERY_COLUMN))) as *mut c_void)
    });
    let rte = pg_sys::palloc0(std::mem::size_of::<pg_sys::RangeTblEntry>()) as *mut pg_sys::RangeTblEntry;
    (*rte).type_ = pg_sys::NodeTag::T_RangeTblEntry;
    (*rte).rtekind = pg_sys::RTEKind::RTE_SUBQUERY;
    (*rte).subquery = inner_q;
    (*rte).alias = pg_sys::makeAlias(cstring(names::SUBQUERY_ALIAS), pg_sys::copyObjectImpl(colnames as *const c_void) as *mut pg_sys::List);
    (*rte).eref = pg_sys::makeAlias(cstring(names::SUBQUERY_ALIAS), colnames);
    (*rte).inFromCl = true;
    let rtr = pg_sys::palloc0(std::mem::size_of::<pg_sys::RangeTblRef>()) as *mut pg_sys::RangeTblRef;
    (*rtr).type_ = pg_sys::NodeTag::T_RangeTblRef;
    (*rtr).rtindex = 1;
    (*outer).rtable = pg_sys::lappend(std::ptr::null_mut(), rte as *mut c_void);
    (*outer).rteperminfos = std::ptr::null_mut();
    (*outer).jointree = pg_sys::makeFromExpr(pg_sys::lappend(std::ptr::null_mut(), rtr as *mut c_void), where_);
    (*outer).targetList = outer_tlist;
    (*outer).groupClause = std::ptr::null_mut();
    (*outer).groupDistinct = false;
    (*outer).havingQual = std::ptr::null_mut();
    (*outer).hasAggs = false;
    (*outer).sortClause = std::ptr::null_mut();
    (*outer).distinctClause = std::ptr::null_mut();
    (*outer).hasSubLinks = true;
    Ok(Ok(outer))
}

/// Replaces, at the query's own level, aggregate calls and group keys by the
/// inner aggregate's columns; subqueries are fixed in place ([`fix_levels`]).
#[pg_guard]
unsafe extern "C-unwind" fn map_level0(node: *mut pg_sys::Node, ctx: *mut c_void) -> *mut pg_sys::Node {
    if node.is_null() {
        return node;
    }
    let m = &mut *(ctx as *mut Mapping);
    if let Some(i) = m.columns.iter().position(|c| pg_sys::equal(*c as *const c_void, node as *const c_void)) {
        let c = m.columns[i];
        return pg_sys::makeVar(1, (i + 1) as i16, pg_sys::exprType(c), pg_sys::exprTypmod(c), pg_sys::exprCollation(c), 0) as *mut pg_sys::Node;
    }
    if pgrx::is_a(node, pg_sys::NodeTag::T_Var) && (*(node as *mut pg_sys::Var)).varlevelsup == 0 {
        m.failure = Some("output columns that are neither grouped nor aggregated".into());
        return node;
    }
    if pgrx::is_a(node, pg_sys::NodeTag::T_SubLink) {
        let sl = node as *mut pg_sys::SubLink;
        (*sl).testexpr = map_level0((*sl).testexpr, ctx);
        let m = &mut *(ctx as *mut Mapping);
        m.depth = 1;
        pg_sys::query_tree_walker((*sl).subselect as *mut pg_sys::Query, Some(fix_levels), ctx, 0);
        let m = &mut *(ctx as *mut Mapping);
        m.depth = 0;
        return node;
    }
    pg_sys::expression_tree_mutator_impl(node, Some(map_level0), ctx)
}

/// Inside a subquery, `depth` levels down: references to the aggregate
/// query's group keys (plain columns) become the inner aggregate's columns,
/// in place.
#[pg_guard]
unsafe extern "C-unwind" fn fix_levels(node: *mut pg_sys::Node, ctx: *mut c_void) -> bool {
    if node.is_null() {
        return false;
    }
    let m = &mut *(ctx as *mut Mapping);
    if pgrx::is_a(node, pg_sys::NodeTag::T_Var) {
        let v = node as *mut pg_sys::Var;
        if (*v).varlevelsup == m.depth {
            match m.plain_keys.iter().position(|k| *k == Some(((*v).varno, (*v).varattno))) {
                Some(i) => {
                    (*v).varno = 1;
                    (*v).varattno = (i + 1) as i16;
                    (*v).varnosyn = 1;
                    (*v).varattnosyn = (i + 1) as i16;
                    (*v).varnullingrels = std::ptr::null_mut();
                }
                None => m.failure = Some("a subquery reading a column of an aggregate query that is not grouped".into()),
            }
        }
        return false;
    }
    if pgrx::is_a(node, pg_sys::NodeTag::T_Aggref) && (*(node as *mut pg_sys::Aggref)).agglevelsup == m.depth {
        m.failure = Some("an aggregate of the outer query inside a subquery".into());
    }
    if pgrx::is_a(node, pg_sys::NodeTag::T_Query) {
        m.depth += 1;
        let r = pg_sys::query_tree_walker(node as *mut pg_sys::Query, Some(fix_levels), ctx, 0);
        let m = &mut *(ctx as *mut Mapping);
        m.depth -= 1;
        return r;
    }
    pg_sys::expression_tree_walker(node, Some(fix_levels), ctx)
}
