//! Walks an analysed query with `query_tree_walker` / `expression_tree_walker`
//! (PostgreSQL's `nodes/nodeFuncs.c`) — the query, its subqueries and CTEs, the
//! sublinks in any expression, and, following `get_view_query`, the views it
//! reads — and collects what validation needs: every relation read, the columns
//! read of each (from the permission infos parse analysis fills in, as
//! `ExecCheckPermissions` uses them), the functions and operators called, and
//! whether any (sub)query has a locking clause.

use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::c_void;

/// A relation found in a query tree.
#[derive(Debug, Clone, Copy)]
pub struct FoundRelation {
    /// `pg_class` OID.
    pub relid: pg_sys::Oid,
    /// False when reached only inside a view's definition.
    pub direct: bool,
}

/// What a walk found.
#[derive(Debug, Default)]
pub struct QueryFacts {
    /// Relations read, in order of appearance (with repeats).
    pub relations: Vec<FoundRelation>,
    /// OIDs of functions called (including aggregates and window functions).
    pub functions: Vec<pg_sys::Oid>,
    /// OIDs of operators used.
    pub operators: Vec<pg_sys::Oid>,
    /// SQL value functions used (`CURRENT_DATE`, `CURRENT_USER`, ...): stable,
    /// like the functions they stand for.
    pub value_functions: Vec<String>,
    /// Whether some (sub)query outside views has FOR UPDATE / FOR SHARE.
    pub has_locking_clause: bool,
    /// Columns read per relation, from every (sub)query's `RTEPermissionInfo`
    /// `selectedCols` (with repeats): attribute numbers > 0, or `None` when the
    /// whole row is read (`t.*` as a value, a whole-row Var).
    pub columns_read: Vec<(pg_sys::Oid, Option<Vec<i16>>)>,
}

struct WalkState {
    facts: QueryFacts,
    /// How many views deep the walk currently is.
    view_depth: u32,
    /// Views being expanded, to stop on (impossible, but cheap to guard) cycles.
    view_stack: Vec<pg_sys::Oid>,
}

/// Walks `query` (see the module doc).
///
/// # Safety
/// `query` must point to a valid analysed `Query`.
pub unsafe fn collect(query: *mut pg_sys::Query) -> QueryFacts {
    let mut state = WalkState { facts: QueryFacts::default(), view_depth: 0, view_stack: Vec::new() };
    walk(query as *mut pg_sys::Node, &mut state as *mut WalkState as *mut c_void);
    state.facts
}

/// The user columns in a `selectedCols` set (members are attribute numbers offset
/// by `FirstLowInvalidHeapAttributeNumber`); `None` if it holds the whole row
/// (attribute 0). System columns are left out.
unsafe fn selected_columns(set: *const pg_sys::Bitmapset) -> Option<Vec<i16>> {
    let mut columns = Vec::new();
    let mut member = pg_sys::bms_next_member(set, -1);
    while member >= 0 {
        let attnum = member + pg_sys::FirstLowInvalidHeapAttributeNumber;
        if attnum == 0 {
            return None;
        }
        if attnum > 0 {
            columns.push(attnum as i16);
        }
        member = pg_sys::bms_next_member(set, member);
    }
    Some(columns)
}

#[pg_guard]
unsafe extern "C-unwind" fn walk(node: *mut pg_sys::Node, context: *mut c_void) -> bool {
    if node.is_null() {
        return false;
    }
    let state = &mut *(context as *mut WalkState);
    if pgrx::is_a(node, pg_sys::NodeTag::T_Query) {
        if state.view_depth == 0 && !(*(node as *mut pg_sys::Query)).rowMarks.is_null() {
            state.facts.has_locking_clause = true;
        }
        let perminfos = pgrx::PgList::<pg_sys::RTEPermissionInfo>::from_pg((*(node as *mut pg_sys::Query)).rteperminfos);
        for info in perminfos.iter_ptr() {
            state.facts.columns_read.push(((*info).relid, selected_columns((*info).selectedCols)));
        }
        return pg_sys::query_tree_walker(
            node as *mut pg_sys::Query,
            Some(walk),
            context,
            pg_sys::QTW_EXAMINE_RTES_BEFORE as i32,
        );
    }
    if pgrx::is_a(node, pg_sys::NodeTag::T_RangeTblEntry) {
        let rte = node as *mut pg_sys::RangeTblEntry;
        if (*rte).rtekind == pg_sys::RTEKind::RTE_RELATION {
            let relid = (*rte).relid;
            state.facts.relations.push(FoundRelation { relid, direct: state.view_depth == 0 });
            if pg_sys::get_rel_relkind(relid) as u8 == pg_sys::RELKIND_VIEW && !state.view_stack.contains(&relid) {
                let rel = pg_sys::relation_open(relid, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
                let view_query = pg_sys::get_view_query(rel);
                state.view_depth += 1;
                state.view_stack.push(relid);
                walk(view_query as *mut pg_sys::Node, context);
                state.view_stack.pop();
                state.view_depth -= 1;
                // Keep the lock until end of transaction, as parse analysis does.
                pg_sys::relation_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
            }
        }
        // Returning false lets range_table_walker descend into subqueries,
        // function expressions and VALUES lists of this entry.
        return false;
    }
    match (*node).type_ {
        pg_sys::NodeTag::T_FuncExpr => state.facts.functions.push((*(node as *mut pg_sys::FuncExpr)).funcid),
        pg_sys::NodeTag::T_Aggref => state.facts.functions.push((*(node as *mut pg_sys::Aggref)).aggfnoid),
        pg_sys::NodeTag::T_WindowFunc => state.facts.functions.push((*(node as *mut pg_sys::WindowFunc)).winfnoid),
        pg_sys::NodeTag::T_OpExpr | pg_sys::NodeTag::T_DistinctExpr | pg_sys::NodeTag::T_NullIfExpr => {
            state.facts.operators.push((*(node as *mut pg_sys::OpExpr)).opno)
        }
        pg_sys::NodeTag::T_ScalarArrayOpExpr => {
            state.facts.operators.push((*(node as *mut pg_sys::ScalarArrayOpExpr)).opno)
        }
        pg_sys::NodeTag::T_SQLValueFunction => {
            use pg_sys::SQLValueFunctionOp::*;
            let name = match (*(node as *mut pg_sys::SQLValueFunction)).op {
                SVFOP_CURRENT_DATE => "CURRENT_DATE",
                SVFOP_CURRENT_TIME | SVFOP_CURRENT_TIME_N => "CURRENT_TIME",
                SVFOP_CURRENT_TIMESTAMP | SVFOP_CURRENT_TIMESTAMP_N => "CURRENT_TIMESTAMP",
                SVFOP_LOCALTIME | SVFOP_LOCALTIME_N => "LOCALTIME",
                SVFOP_LOCALTIMESTAMP | SVFOP_LOCALTIMESTAMP_N => "LOCALTIMESTAMP",
                SVFOP_CURRENT_ROLE | SVFOP_CURRENT_USER | SVFOP_USER => "CURRENT_USER",
                SVFOP_SESSION_USER => "SESSION_USER",
                SVFOP_CURRENT_CATALOG => "CURRENT_CATALOG",
                _ => "CURRENT_SCHEMA",
            };
            if !state.facts.value_functions.iter().any(|n| n == name) {
                state.facts.value_functions.push(name.to_string());
            }
        }
        // A cast through text calls the types' output and input functions
        // (timestamptz::text depends on TimeZone and DateStyle).
        pg_sys::NodeTag::T_CoerceViaIO => {
            let coerce = node as *mut pg_sys::CoerceViaIO;
            let (mut output, mut is_varlena) = (pg_sys::InvalidOid, false);
            pg_sys::getTypeOutputInfo(pg_sys::exprType((*coerce).arg as *mut pg_sys::Node), &mut output, &mut is_varlena);
            let (mut input, mut io_param) = (pg_sys::InvalidOid, pg_sys::InvalidOid);
            pg_sys::getTypeInputInfo((*coerce).resulttype, &mut input, &mut io_param);
            state.facts.functions.push(output);
            state.facts.functions.push(input);
        }
        _ => {}
    }
    pg_sys::expression_tree_walker(node, Some(walk), context)
}
