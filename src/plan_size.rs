//! Bounding the initial size of the hash tables a delta statement's plan
//! builds, to the order of size of the changes it applies.
//!
//! PostgreSQL's executor allocates, and zeroes, some hash tables at their
//! planned size before reading a row: a recursive query's duplicate test
//! (`RecursiveUnion`, built in `ExecInitRecursiveUnion`), a hashed set
//! operation (`ExecInitSetOp`), a `Memoize` cache, and a hashed subquery test
//! (`x IN (SELECT ...)`, built in `buildSubPlanHash` from the subquery's row
//! estimate). The planned size is the planner's estimate of
//! the rows, capped by `work_mem` × `hash_mem_multiplier` (PostgreSQL docs,
//! §19.4.1). A delta statement reads change buffers through unions and
//! recursive queries whose estimates have nothing to go on — a recursive
//! query's is ten times its first step's, a column of a `UNION ALL` has no
//! statistics — so for a one-row change the executor can zero tens of
//! megabytes per refresh (measured: 83 % of a one-row refresh of a recursive
//! closure at `work_mem` = 64 MB went to zeroing fresh pages).
//!
//! These tables grow by doubling as rows arrive (simplehash), so an initial
//! size below the rows that come costs a few rehashes, amortized, and never a
//! wrong result. [`bound_hash_tables`]
//! lowers the planned sizes of the nodes above to a bound the caller derives
//! from the changes; it leaves every plan choice as the planner made them, and
//! hash joins and hashed aggregates, which spill to disk and choose their
//! batches or partitions from the estimate, untouched.

use pgrx::pg_sys;
use pgrx::PgList;

/// Lowers, in place, the initial hash-table sizes of `stmt`'s plan tree and
/// of every subquery plan it holds (`PlannedStmt.subplans`: CTEs, InitPlans
/// and SubPlans) to at most `rows` entries: `RecursiveUnion.numGroups`, a
/// hashed `SetOp`'s `numGroups`, `Memoize.est_entries`, and the row
/// estimate of each subquery plan's top
/// node (what a hashed SubPlan sizes its table by). Idempotent; sizes already
/// below `rows` stay.
///
/// # Safety
/// `stmt` is a valid planned statement not being executed, such as one of a
/// cached plan's statements between executions.
pub unsafe fn bound_hash_tables(stmt: *mut pg_sys::PlannedStmt, rows: i64) {
    let rows = rows.max(1);
    unsafe {
        bound_node((*stmt).planTree, rows);
        for sub in PgList::<pg_sys::Plan>::from_pg((*stmt).subplans).iter_ptr() {
            if sub.is_null() {
                continue;
            }
            // The estimate a hashed SubPlan sizes its table by; a subquery
            // plan's top node has no parent that reads it.
            (*sub).plan_rows = (*sub).plan_rows.min(rows as f64);
            bound_node(sub, rows);
        }
    }
}

/// [`bound_hash_tables`] for the plan tree under `node` (NULL: nothing).
///
/// # Safety
/// `node` is NULL or a valid plan node.
unsafe fn bound_node(node: *mut pg_sys::Plan, rows: i64) {
    if node.is_null() {
        return;
    }
    let bound = rows as std::ffi::c_long;
    unsafe {
        match (*node).type_ {
            pg_sys::NodeTag::T_RecursiveUnion => {
                let n = node.cast::<pg_sys::RecursiveUnion>();
                (*n).numGroups = (*n).numGroups.min(bound);
            }
            pg_sys::NodeTag::T_SetOp => {
                let n = node.cast::<pg_sys::SetOp>();
                if (*n).strategy == pg_sys::SetOpStrategy::SETOP_HASHED {
                    (*n).numGroups = (*n).numGroups.min(bound);
                }
            }
            pg_sys::NodeTag::T_Memoize => {
                let n = node.cast::<pg_sys::Memoize>();
                (*n).est_entries = (*n).est_entries.min(u32::try_from(rows).unwrap_or(u32::MAX));
            }
            _ => {}
        }
        bound_node((*node).lefttree, rows);
        bound_node((*node).righttree, rows);
        let children = match (*node).type_ {
            pg_sys::NodeTag::T_Append => (*node.cast::<pg_sys::Append>()).appendplans,
            pg_sys::NodeTag::T_MergeAppend => (*node.cast::<pg_sys::MergeAppend>()).mergeplans,
            pg_sys::NodeTag::T_BitmapAnd => (*node.cast::<pg_sys::BitmapAnd>()).bitmapplans,
            pg_sys::NodeTag::T_BitmapOr => (*node.cast::<pg_sys::BitmapOr>()).bitmapplans,
            pg_sys::NodeTag::T_CustomScan => (*node.cast::<pg_sys::CustomScan>()).custom_plans,
            pg_sys::NodeTag::T_SubqueryScan => {
                bound_node((*node.cast::<pg_sys::SubqueryScan>()).subplan, rows);
                std::ptr::null_mut()
            }
            _ => std::ptr::null_mut(),
        };
        for child in PgList::<pg_sys::Plan>::from_pg(children).iter_ptr() {
            bound_node(child, rows);
        }
    }
}
