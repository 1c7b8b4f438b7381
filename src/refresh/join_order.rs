//! The join order of a refresh's statements over joins of many inputs: a
//! greedy search in place of PostgreSQL's genetic optimizer.
//!
//! A delta term of an n-way join binds one input to its changes (a handful of
//! rows) and the others to whole tables. The plan that costs in proportion to
//! the change starts from the changed rows and reaches each further input
//! through its join condition (an index lookup per row). PostgreSQL finds it by
//! exhaustive search up to `geqo_threshold` (12) inputs; from there on it
//! switches to its genetic optimizer (`geqo`), which samples join orders at
//! random and, measured on a 30-way chain with one changed row, spent 820 ms
//! planning and running what takes 40 ms with the right order.
//!
//! While [`Greedy`] is held (a DIFFERENTIAL refresh of a block of more than
//! 8 inputs), joins of at least `geqo_threshold` inputs are
//! ordered by Greedy Operator Ordering (L. Fegaras, "A New Heuristic for
//! Optimizing Large Queries", DEXA 1998): repeatedly join the two relations
//! whose join the planner estimates smallest, among pairs connected by a join
//! clause or an ordering constraint (any legal pair when none is). Each step
//! builds the pair's join relation with PostgreSQL's own `make_join_rel`, so
//! join methods, parameterized index paths, outer-join legality and costs are
//! PostgreSQL's; only the order of the search is ours. Pairs are evaluated once
//! (a joined pair's relation does not change), so a chain or a star of n inputs
//! costs O(n²) pair evaluations rather than GEQO's pool of random orders or
//! the exhaustive search's O(2ⁿ). Everything else, and every statement outside
//! such a refresh, is planned by whatever the hook chain held before
//! (`join_search_hook`, PostgreSQL's `optimizer/path/allpaths.c`).

use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::Cell;

unsafe extern "C-unwind" {
    // optimizer/joininfo.h and optimizer/geqo.h (PostgreSQL 18); pgrx binds
    // neither. Called only through `pg_sys::ffi::pg_guard_ffi_boundary`.
    fn have_relevant_joinclause(root: *mut pg_sys::PlannerInfo, rel1: *mut pg_sys::RelOptInfo, rel2: *mut pg_sys::RelOptInfo) -> bool;
    fn geqo(root: *mut pg_sys::PlannerInfo, number_of_rels: i32, initial_rels: *mut pg_sys::List) -> *mut pg_sys::RelOptInfo;
}

thread_local! {
    /// The local transaction (`MyProc->vxid.lxid`) in which a [`Greedy`] is
    /// held, and how many are. Keyed by transaction so that a guard lost to an
    /// error never outlives it.
    static HELD: Cell<(u32, u32)> = const { Cell::new((0, 0)) };
}

/// The `join_search_hook` found at load time, called for everything not ours.
static mut PREVIOUS: pg_sys::join_search_hook_type = None;

/// Installs the hook (once per process, from `_PG_init`).
pub fn install() {
    // SAFETY: called once from _PG_init, before any planning in this process.
    unsafe {
        PREVIOUS = pg_sys::join_search_hook;
        pg_sys::join_search_hook = Some(join_search);
    }
}

/// While held, joins of at least `geqo_threshold` inputs planned in this
/// transaction are ordered greedily (see the module doc).
pub struct Greedy {
    _private: (),
}

impl Greedy {
    /// Starts greedy ordering for this transaction until dropped.
    pub fn begin() -> Greedy {
        let lxid = current_lxid();
        HELD.with(|h| {
            let (at, count) = h.get();
            h.set((lxid, if at == lxid { count + 1 } else { 1 }));
        });
        Greedy { _private: () }
    }
}

impl Drop for Greedy {
    fn drop(&mut self) {
        HELD.with(|h| {
            let (at, count) = h.get();
            h.set((at, count.saturating_sub(1)));
        });
    }
}

/// This backend's local transaction id.
fn current_lxid() -> u32 {
    // SAFETY: MyProc is set for every backend and background worker with
    // database access, the only ones that plan.
    unsafe { if pg_sys::MyProc.is_null() { 0 } else { (*pg_sys::MyProc).vxid.lxid } }
}

/// Whether a [`Greedy`] is held in this transaction.
fn held() -> bool {
    let (at, count) = HELD.with(Cell::get);
    count > 0 && at == current_lxid()
}

#[pg_guard]
unsafe extern "C-unwind" fn join_search(
    root: *mut pg_sys::PlannerInfo,
    levels_needed: i32,
    initial_rels: *mut pg_sys::List,
) -> *mut pg_sys::RelOptInfo {
    unsafe {
        let wide = pg_sys::enable_geqo && levels_needed >= pg_sys::geqo_threshold;
        if wide && held() {
            // As GEQO does: the join relations a search builds go only into
            // the list, so a search that finds no order can be undone.
            let (saved_length, saved_hash) = (pgrx::PgList::<pg_sys::RelOptInfo>::from_pg((*root).join_rel_list).len(), (*root).join_rel_hash);
            (*root).join_rel_hash = std::ptr::null_mut();
            let found = greedy(root, initial_rels);
            if found.is_none() {
                (*root).join_rel_list = pg_sys::list_truncate((*root).join_rel_list, saved_length as i32);
            }
            (*root).join_rel_hash = saved_hash;
            if let Some(rel) = found {
                return rel;
            }
        }
        match PREVIOUS {
            Some(previous) => previous(root, levels_needed, initial_rels),
            None if wide => pg_sys::ffi::pg_guard_ffi_boundary(|| geqo(root, levels_needed, initial_rels)),
            None => pg_sys::standard_join_search(root, levels_needed, initial_rels),
        }
    }
}

/// A pair's join relation and its score (estimated rows, then cheapest total cost).
type Joined = Option<(*mut pg_sys::RelOptInfo, f64, f64)>;

/// Greedy Operator Ordering over `initial_rels`; `None` when no legal pair
/// is left before one relation remains (then the standard search decides).
unsafe fn greedy(root: *mut pg_sys::PlannerInfo, initial_rels: *mut pg_sys::List) -> Option<*mut pg_sys::RelOptInfo> {
    unsafe {
        let mut rels: Vec<*mut pg_sys::RelOptInfo> = pgrx::PgList::<pg_sys::RelOptInfo>::from_pg(initial_rels).iter_ptr().collect();
        let mut evaluated: std::collections::HashMap<(usize, usize), Joined> = std::collections::HashMap::new();
        while rels.len() > 1 {
            let mut best: Option<(usize, usize, *mut pg_sys::RelOptInfo, f64, f64)> = None;
            for connected_only in [true, false] {
                for i in 0..rels.len() {
                    for j in (i + 1)..rels.len() {
                        let (a, b) = (rels[i], rels[j]);
                        if connected_only
                            && !(pg_sys::ffi::pg_guard_ffi_boundary(|| have_relevant_joinclause(root, a, b))
                                || pg_sys::have_join_order_restriction(root, a, b))
                        {
                            continue;
                        }
                        let joined = *evaluated.entry((a as usize, b as usize)).or_insert_with(|| join(root, a, b));
                        let Some((rel, rows, cost)) = joined else { continue };
                        if best.is_none_or(|(_, _, _, r, c)| (rows, cost) < (r, c)) {
                            best = Some((i, j, rel, rows, cost));
                        }
                    }
                }
                if best.is_some() {
                    break;
                }
            }
            let (i, j, rel, _, _) = best?;
            rels.remove(j);
            rels[i] = rel;
        }
        rels.pop()
    }
}

/// The join relation of `a` and `b` with its paths, as the standard search
/// completes each one; `None` when the pair may not be joined.
unsafe fn join(root: *mut pg_sys::PlannerInfo, a: *mut pg_sys::RelOptInfo, b: *mut pg_sys::RelOptInfo) -> Joined {
    unsafe {
        let rel = pg_sys::make_join_rel(root, a, b);
        if rel.is_null() {
            return None;
        }
        pg_sys::generate_partitionwise_join_paths(root, rel);
        if !pg_sys::bms_equal((*rel).relids, (*root).all_query_rels) {
            pg_sys::generate_useful_gather_paths(root, rel, false);
        }
        pg_sys::set_cheapest(rel);
        let path = (*rel).cheapest_total_path;
        if path.is_null() {
            return None;
        }
        Some((rel, (*rel).rows, (*path).total_cost))
    }
}
