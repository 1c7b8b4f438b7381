//! `WITH RECURSIVE r AS (<base> UNION [ALL] <step>)` referenced in FROM, as a
//! recursive operator (`pgt_delta::recursive`). The CTE's query arrives here
//! as a subquery (`inline_ctes` copies it into each reference): a UNION
//! whose right side reads the CTE itself (`self_reference`). The base is
//! translated as any query; the step's recursive reference becomes the
//! placeholder `__pgt_rec`, which the operator binds, and the rest of the
//! step a block over its sources.

use super::placeholder::{cstring, to_cte_reference};
use super::{surgery, translate_block, translate_tree, wrap_in_subquery, Unsupported};
use crate::error::PgtResult;
use pgrx::{pg_sys, PgList};
use pgt_delta::RecursivePlan;
use pgt_delta::Root;
use std::ffi::c_void;

macro_rules! unsupported {
    ($($t:tt)*) => { return Ok(Err(Unsupported(format!($($t)*)))) };
}

/// The self-referencing range-table entries at the top level of `q`.
unsafe fn self_references(q: &pg_sys::Query) -> Vec<*mut pg_sys::RangeTblEntry> {
    PgList::<pg_sys::RangeTblEntry>::from_pg(q.rtable)
        .iter_ptr()
        .filter(|rte| (**rte).rtekind == pg_sys::RTEKind::RTE_CTE && (**rte).self_reference)
        .collect()
}

/// The subqueries of set operation `q`'s two sides, when both are plain
/// range-table references.
unsafe fn sides(q: &pg_sys::Query) -> Option<(*mut pg_sys::SetOperationStmt, *mut pg_sys::Query, *mut pg_sys::Query)> {
    if q.setOperations.is_null() || !pgrx::is_a(q.setOperations, pg_sys::NodeTag::T_SetOperationStmt) {
        return None;
    }
    let op = q.setOperations as *mut pg_sys::SetOperationStmt;
    let rtable = PgList::<pg_sys::RangeTblEntry>::from_pg(q.rtable);
    let side = |n: *mut pg_sys::Node| -> Option<*mut pg_sys::Query> {
        if !pgrx::is_a(n, pg_sys::NodeTag::T_RangeTblRef) {
            return None;
        }
        let rte = rtable.get_ptr(((*(n as *mut pg_sys::RangeTblRef)).rtindex - 1) as usize)?;
        ((*rte).rtekind == pg_sys::RTEKind::RTE_SUBQUERY && !(*rte).subquery.is_null()).then_some((*rte).subquery)
    };
    Some((op, side((*op).larg)?, side((*op).rarg)?))
}

/// Whether `q` is the query of a recursive WITH query: a UNION [ALL] whose
/// right side reads the query itself.
pub(super) unsafe fn is_recursive_union(q: &pg_sys::Query) -> bool {
    if q.setOperations.is_null() || !pgrx::is_a(q.setOperations, pg_sys::NodeTag::T_SetOperationStmt) {
        return false;
    }
    let op = q.setOperations as *mut pg_sys::SetOperationStmt;
    let rarg = (*op).rarg;
    if !pgrx::is_a(rarg, pg_sys::NodeTag::T_RangeTblRef) {
        return false;
    }
    PgList::<pg_sys::RangeTblEntry>::from_pg(q.rtable)
        .get_ptr(((*(rarg as *mut pg_sys::RangeTblRef)).rtindex - 1) as usize)
        .is_some_and(|rte| !(*rte).subquery.is_null() && !self_references(&*(*rte).subquery).is_empty())
}

/// Renames the visible target entries of `q` to `__pgt_c1`, ...
unsafe fn name_columns(q: *mut pg_sys::Query) {
    let mut i = 0;
    for te in PgList::<pg_sys::TargetEntry>::from_pg((*q).targetList).iter_ptr().filter(|te| !(**te).resjunk) {
        i += 1;
        (*te).resname = cstring(&pgt_delta::names::child_column(i));
    }
}

/// Translates recursive union `q` (see [`is_recursive_union`]).
///
/// # Errors
/// PostgreSQL's, from deparsing and translating the base and the step.
pub(super) unsafe fn translate(q: *mut pg_sys::Query) -> PgtResult<Result<RecursivePlan, Unsupported>> {
    let Some((op, base, step)) = sides(&*q) else {
        unsupported!("WITH RECURSIVE with several non-recursive terms (write them as one subquery)");
    };
    if (*op).op != pg_sys::SetOperation::SETOP_UNION {
        unsupported!("WITH RECURSIVE other than UNION");
    }
    let all = (*op).all;
    let visible_exprs = super::visible_exprs(q);
    if let Some(u) = super::unhashable(&visible_exprs, "a recursive query's column")? {
        return Ok(Err(u));
    }
    // The base: any query.
    let base = pg_sys::copyObjectImpl(base as *const c_void) as *mut pg_sys::Query;
    name_columns(base);
    let mut plan = match translate_tree(base)? {
        Ok(plan) => plan,
        Err(u) => return Ok(Err(u)),
    };
    if !matches!(plan.root, Root::Rows(_)) {
        plan = match translate_block(wrap_in_subquery(base)?)? {
            Ok(plan) => plan,
            Err(u) => return Ok(Err(u)),
        };
    }
    let Root::Rows(base_plan) = plan.root else { unsupported!("WITH RECURSIVE over this non-recursive term") };

    // The step: a block over its sources and the placeholder.
    let step = pg_sys::copyObjectImpl(step as *const c_void) as *mut pg_sys::Query;
    name_columns(step);
    let selves = self_references(&*step);
    if selves.len() != 1 {
        unsupported!("WITH RECURSIVE whose recursive term reads the query other than once in its FROM");
    }
    let s = &*step;
    if s.hasAggs || !s.groupClause.is_null() || !s.distinctClause.is_null() || s.hasWindowFuncs || s.hasTargetSRFs || !s.setOperations.is_null() || !s.limitCount.is_null() {
        unsupported!("WITH RECURSIVE whose recursive term has aggregates, DISTINCT, windows, set-returning functions or LIMIT");
    }
    let mut columns: Vec<(String, (pg_sys::Oid, i32, pg_sys::Oid))> = visible_exprs
        .iter()
        .enumerate()
        .map(|(i, e)| (pgt_delta::names::child_column(i + 1), (pg_sys::exprType(*e), pg_sys::exprTypmod(*e), pg_sys::exprCollation(*e))))
        .collect();
    if all {
        // Counting: each recursive row's weight and depth pass through the step.
        let n = columns.len() as i16;
        let varno = PgList::<pg_sys::RangeTblEntry>::from_pg((*step).rtable).iter_ptr().position(|rte| rte == selves[0]).map_or(0, |i| i + 1) as i32;
        columns.push((pgt_delta::names::WEIGHT.to_string(), (pg_sys::INT8OID, -1, pg_sys::InvalidOid)));
        columns.push((pgt_delta::names::RECURSIVE_DEPTH.to_string(), (pg_sys::INT4OID, -1, pg_sys::InvalidOid)));
        let entries: Vec<*mut pg_sys::TargetEntry> = PgList::<pg_sys::TargetEntry>::from_pg((*step).targetList).iter_ptr().collect();
        let mut list: *mut pg_sys::List = std::ptr::null_mut();
        let mut resno = 0i16;
        for te in entries.iter().filter(|te| !(***te).resjunk) {
            resno += 1;
            list = pg_sys::lappend(list, *te as *mut c_void);
        }
        for (attno, name, typ) in [
            (n + 1, pgt_delta::names::RECURSIVE_ROW_WEIGHT, pg_sys::INT8OID),
            (n + 2, pgt_delta::names::RECURSIVE_ROW_DEPTH, pg_sys::INT4OID),
        ] {
            resno += 1;
            let var = pg_sys::makeVar(varno, attno, typ, -1, pg_sys::InvalidOid, 0);
            list = pg_sys::lappend(list, pg_sys::makeTargetEntry(var as *mut pg_sys::Expr, resno, cstring(name), false) as *mut c_void);
        }
        for te in entries.iter().filter(|te| (***te).resjunk) {
            resno += 1;
            (**te).resno = resno;
            list = pg_sys::lappend(list, *te as *mut c_void);
        }
        (*step).targetList = list;
    }
    to_cte_reference(selves[0], pgt_delta::names::RECURSIVE_SELF, columns);
    let prepared = match surgery::prepare(step, &[])? {
        Ok(p) => p,
        Err(u) => return Ok(Err(u)),
    };
    let step_block = surgery::finish(prepared, surgery::Targets::KeepVisible(Vec::new()))?;
    Ok(Ok(RecursivePlan {
        base: base_plan,
        step: step_block,
        visible: (1..=visible_exprs.len()).map(pgt_delta::names::child_column).collect(),
        content_hash: super::group_hash(&visible_exprs),
        all,
        max_depth: crate::guc::IVM_RECURSIVE_MAX_DEPTH.get(),
    }))
}
