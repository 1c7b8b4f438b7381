//! GROUPING SETS, CUBE and ROLLUP, as the UNION ALL of one aggregate per
//! grouping set.
//!
//! `SELECT a, b, sum(x), GROUPING(a, b) FROM t GROUP BY ROLLUP (a, b)` is, by
//! definition (PostgreSQL docs, "GROUPING SETS, CUBE, and ROLLUP"), the
//! union of the aggregate grouped by each set, the columns not in the set
//! NULL, `GROUPING()` the bit mask of the arguments not in the set:
//!
//! ```text
//! SELECT a, b, sum(x), 0 FROM t GROUP BY a, b
//! UNION ALL SELECT a, NULL, sum(x), 1 FROM t GROUP BY a
//! UNION ALL SELECT NULL, NULL, sum(x), 3 FROM t HAVING true
//! ```
//!
//! (the empty set is one group, also over no rows: `HAVING true` makes a
//! query without aggregates grouped). Each branch is an aggregate the engine
//! maintains, and UNION ALL numbers its branches in the row identity, so a
//! subtotal's NULL key never meets a group whose key is NULL. A change costs
//! each branch's affected groups; `pg_trickle.max_grouping_set_branches`
//! bounds the number of branches.
//!
//! The rewrite works on the analysed query: PostgreSQL 18 refers to grouped
//! expressions in the SELECT list and HAVING through Vars of the query's
//! group range-table entry (RTE_GROUP); a branch replaces those of
//! expressions outside its set by NULL constants of their type, and every
//! `GROUPING()` by its constant, then is deparsed. The union is parsed again.

use super::{deparse, Unsupported};
use crate::error::{PgtError, PgtResult};
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgList;
use std::ffi::{c_void, CString};

/// The grouping sets of `GROUP BY <items>` (`groupingSets`, a list of
/// GroupingSet nodes over sortgroupref numbers), expanded as PostgreSQL
/// expands them: the cross product of the items, ROLLUP its prefixes, CUBE
/// its subsets, GROUPING SETS the concatenation of its members'. With
/// `distinct` (GROUP BY DISTINCT) equal sets are kept once.
unsafe fn expand(grouping_sets: *mut pg_sys::List, distinct: bool) -> Vec<Vec<u32>> {
    let mut product: Vec<Vec<u32>> = vec![Vec::new()];
    for item in PgList::<pg_sys::Node>::from_pg(grouping_sets).iter_ptr() {
        let options = expand_one(item);
        let mut next = Vec::new();
        for a in &product {
            for b in &options {
                let mut set = a.clone();
                for r in b {
                    if !set.contains(r) {
                        set.push(*r);
                    }
                }
                next.push(set);
            }
        }
        product = next;
    }
    if distinct {
        let mut seen: Vec<Vec<u32>> = Vec::new();
        product.retain(|s| {
            let mut sorted = s.clone();
            sorted.sort_unstable();
            if seen.contains(&sorted) {
                false
            } else {
                seen.push(sorted);
                true
            }
        });
    }
    product
}

/// The sets one GROUP BY item stands for.
unsafe fn expand_one(node: *mut pg_sys::Node) -> Vec<Vec<u32>> {
    if !pgrx::is_a(node, pg_sys::NodeTag::T_GroupingSet) {
        return vec![Vec::new()];
    }
    let gs = &*(node as *mut pg_sys::GroupingSet);
    let members = || PgList::<pg_sys::Node>::from_pg(gs.content).iter_ptr().collect::<Vec<_>>();
    // A member of ROLLUP / CUBE is a SIMPLE set (one or several columns).
    let simple = |n: *mut pg_sys::Node| -> Vec<u32> { expand_one(n).into_iter().next().unwrap_or_default() };
    match gs.kind {
        pg_sys::GroupingSetKind::GROUPING_SET_EMPTY => vec![Vec::new()],
        pg_sys::GroupingSetKind::GROUPING_SET_SIMPLE => {
            vec![PgList::<std::ffi::c_int>::from_pg(gs.content).iter_int().map(|i| i as u32).collect()]
        }
        pg_sys::GroupingSetKind::GROUPING_SET_ROLLUP => {
            let parts: Vec<Vec<u32>> = members().into_iter().map(simple).collect();
            (0..=parts.len()).rev().map(|k| parts[..k].concat()).collect()
        }
        pg_sys::GroupingSetKind::GROUPING_SET_CUBE => {
            // PostgreSQL allows a CUBE of at most 12 elements, and at most
            // 4096 grouping sets in all (54011, 54001): listing them is cheap.
            let parts: Vec<Vec<u32>> = members().into_iter().map(simple).collect();
            let n = parts.len().min(12);
            (0..(1u32 << n))
                .rev()
                .map(|mask| (0..n).filter(|i| mask & (1 << (n - 1 - i)) != 0).flat_map(|i| parts[i].clone()).collect())
                .collect()
        }
        _ => members().into_iter().flat_map(|m| expand_one(m)).collect(),
    }
}

/// What a branch's mutator needs.
struct Branch {
    group_rtindex: i32,
    /// Columns of the group entry (attno) of expressions in this branch's set.
    kept: Vec<i16>,
    /// sortgroupref numbers of this branch's set.
    set: Vec<u32>,
}

#[pg_guard]
unsafe extern "C-unwind" fn rewrite_branch(node: *mut pg_sys::Node, ctx: *mut c_void) -> *mut pg_sys::Node {
    if node.is_null() {
        return node;
    }
    let b = &*(ctx as *mut Branch);
    if pgrx::is_a(node, pg_sys::NodeTag::T_Var) {
        let v = &*(node as *mut pg_sys::Var);
        if v.varlevelsup == 0 && v.varno == b.group_rtindex && !b.kept.contains(&v.varattno) {
            return pg_sys::makeNullConst(v.vartype, v.vartypmod, v.varcollid) as *mut pg_sys::Node;
        }
        return node;
    }
    if pgrx::is_a(node, pg_sys::NodeTag::T_GroupingFunc) {
        let g = &*(node as *mut pg_sys::GroupingFunc);
        if g.agglevelsup == 0 {
            let refs: Vec<u32> = PgList::<std::ffi::c_int>::from_pg(g.refs).iter_int().map(|i| i as u32).collect();
            let mut mask: i32 = 0;
            for r in &refs {
                mask = (mask << 1) | i32::from(!b.set.contains(r));
            }
            return pg_sys::makeConst(
                pg_sys::INT4OID,
                -1,
                pg_sys::InvalidOid,
                4,
                pg_sys::Datum::from(mask),
                false,
                true,
            ) as *mut pg_sys::Node;
        }
    }
    pg_sys::expression_tree_mutator_impl(node, Some(rewrite_branch), ctx)
}

/// `q` (with grouping sets) as the UNION ALL of one aggregate per grouping
/// set, parsed and analysed (see the module doc).
pub(crate) unsafe fn expand_to_union(q: *mut pg_sys::Query) -> PgtResult<Result<*mut pg_sys::Query, Unsupported>> {
    let query = &*q;
    let refuse = |what: &str| Ok(Err(Unsupported(format!("GROUPING SETS / CUBE / ROLLUP {what}"))));
    if query.hasWindowFuncs || query.hasTargetSRFs {
        return refuse("with window or set-returning functions");
    }
    if query.hasSubLinks {
        return refuse("with subquery expressions");
    }
    if !query.distinctClause.is_null() || !query.limitCount.is_null() || !query.limitOffset.is_null() {
        return refuse("with DISTINCT or LIMIT");
    }
    let Some(group_rtindex) = PgList::<pg_sys::RangeTblEntry>::from_pg(query.rtable)
        .iter_ptr()
        .position(|rte| (*rte).rtekind == pg_sys::RTEKind::RTE_GROUP)
        .map(|i| (i + 1) as i32)
    else {
        return refuse("of this form");
    };
    let sets = expand(query.groupingSets, query.groupDistinct);
    let max = crate::guc::MAX_GROUPING_SET_BRANCHES.get().max(1) as usize;
    if sets.len() > max {
        return refuse(&format!(
            "expanding to {} grouping sets, more than pg_trickle.max_grouping_set_branches ({max})",
            sets.len()
        ));
    }
    // Which column of the group entry stands for which sortgroupref.
    let mut columns: Vec<(u32, i16)> = Vec::new();
    for te in PgList::<pg_sys::TargetEntry>::from_pg(query.targetList).iter_ptr() {
        let expr = (*te).expr as *mut pg_sys::Node;
        if (*te).ressortgroupref != 0 && pgrx::is_a(expr, pg_sys::NodeTag::T_Var) {
            let v = &*(expr as *mut pg_sys::Var);
            if v.varno == group_rtindex && v.varlevelsup == 0 {
                columns.push(((*te).ressortgroupref, v.varattno));
            }
        }
    }
    let mut branches = Vec::new();
    for set in &sets {
        let copy = pg_sys::copyObjectImpl(q as *const c_void) as *mut pg_sys::Query;
        (*copy).groupingSets = std::ptr::null_mut();
        (*copy).groupDistinct = false;
        (*copy).sortClause = std::ptr::null_mut();
        let mut group_clause: *mut pg_sys::List = std::ptr::null_mut();
        for clause in PgList::<pg_sys::SortGroupClause>::from_pg(query.groupClause).iter_ptr() {
            if set.contains(&(*clause).tleSortGroupRef) {
                group_clause = pg_sys::lappend(group_clause, pg_sys::copyObjectImpl(clause as *const c_void));
            }
        }
        (*copy).groupClause = group_clause;
        let mut branch = Branch {
            group_rtindex,
            kept: columns.iter().filter(|(r, _)| set.contains(r)).map(|(_, a)| *a).collect(),
            set: set.clone(),
        };
        let ctx = &mut branch as *mut Branch as *mut c_void;
        (*copy).targetList = rewrite_branch((*copy).targetList as *mut pg_sys::Node, ctx) as *mut pg_sys::List;
        (*copy).havingQual = rewrite_branch((*copy).havingQual, ctx);
        if set.is_empty() && !query.hasAggs && (*copy).havingQual.is_null() {
            // The empty grouping set is one group even without an aggregate.
            (*copy).havingQual = pg_sys::makeBoolConst(true, false);
        }
        branches.push(format!("({})", deparse(copy)));
    }
    let text = branches.join(" UNION ALL ");
    let csql = CString::new(text).map_err(|_| PgtError::internal("deparsed query contains a NUL byte"))?;
    Ok(Ok(crate::privilege::with_pinned_search_path(|| crate::parse::parse_single_select(&csql))?))
}
