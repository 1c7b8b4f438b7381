//! Set-returning functions in the SELECT list, moved into FROM.
//!
//! Since PostgreSQL 10 the set-returning functions of a SELECT list run in
//! lockstep: each input row yields as many rows as the longest of them
//! returns, the shorter ones padded with NULLs, and none when they all
//! return none (PostgreSQL docs §9.25 and §7.2.1.4, "ROWS FROM"). That is
//! exactly `FROM ..., LATERAL ROWS FROM (f1(...), f2(...))`, so
//!
//! ```text
//! SELECT id, unnest(tags) AS tag, generate_series(1, n) + 1 AS k FROM t
//!   = SELECT id, s.c1 AS tag, s.c2 + 1 AS k FROM t, LATERAL ROWS FROM (unnest(tags), generate_series(1, n)) s (c1, c2)
//! ```
//!
//! and the functions in FROM are maintained as any (`surgery.rs`): a
//! changed row changes exactly its own expansion. Refused: functions over
//! aggregates or windows (they run after grouping), nested set-returning
//! calls (each level is one more lockstep), and functions returning a
//! composite value (a FROM item would expand its fields).

use super::placeholder::{cstring, string_node};
use super::{deparse, Unsupported};
use crate::error::{PgtError, PgtResult};
use pgrx::prelude::*;
use pgrx::{pg_sys, PgList};
use std::ffi::{c_void, CString};

macro_rules! unsupported {
    ($($t:tt)*) => { return Ok(Err(Unsupported(format!($($t)*)))) };
}

use pgt_delta::names::TARGET_FUNCTIONS as ALIAS;

struct Moved {
    rtindex: i32,
    functions: Vec<*mut pg_sys::Node>,
    nested: bool,
}

#[pg_guard]
unsafe extern "C-unwind" fn move_functions(node: *mut pg_sys::Node, ctx: *mut c_void) -> *mut pg_sys::Node {
    if node.is_null() {
        return node;
    }
    let m = &mut *(ctx as *mut Moved);
    let returns_set = (pgrx::is_a(node, pg_sys::NodeTag::T_FuncExpr) && (*(node as *mut pg_sys::FuncExpr)).funcretset)
        || (pgrx::is_a(node, pg_sys::NodeTag::T_OpExpr) && (*(node as *mut pg_sys::OpExpr)).opretset);
    if returns_set {
        // Its arguments must not return sets themselves.
        let args = if pgrx::is_a(node, pg_sys::NodeTag::T_FuncExpr) {
            (*(node as *mut pg_sys::FuncExpr)).args
        } else {
            (*(node as *mut pg_sys::OpExpr)).args
        };
        if pg_sys::expression_returns_set(args as *mut pg_sys::Node) {
            m.nested = true;
            return node;
        }
        let i = match m.functions.iter().position(|f| pg_sys::equal(*f as *const c_void, node as *const c_void)) {
            Some(i) => i,
            None => {
                m.functions.push(node);
                m.functions.len() - 1
            }
        };
        return pg_sys::makeVar(m.rtindex, (i + 1) as i16, pg_sys::exprType(node), pg_sys::exprTypmod(node), pg_sys::exprCollation(node), 0)
            as *mut pg_sys::Node;
    }
    pg_sys::expression_tree_mutator_impl(node, Some(move_functions), ctx)
}

/// `q` with the set-returning functions of its SELECT list moved into FROM
/// (module doc), parsed and analysed again.
///
/// # Errors
/// PostgreSQL's, from deparsing or parsing the rewritten query.
pub(super) unsafe fn move_to_from(q: *mut pg_sys::Query) -> PgtResult<Result<*mut pg_sys::Query, Unsupported>> {
    let query = &*q;
    if query.hasAggs || !query.groupClause.is_null() || !query.groupingSets.is_null() || !query.havingQual.is_null() || query.hasWindowFuncs {
        unsupported!("set-returning functions in the SELECT list of an aggregate or window query");
    }
    let copy = pg_sys::copyObjectImpl(q as *const c_void) as *mut pg_sys::Query;
    let rtindex = PgList::<pg_sys::RangeTblEntry>::from_pg((*copy).rtable).len() as i32 + 1;
    let mut m = Moved { rtindex, functions: Vec::new(), nested: false };
    let ctx = &mut m as *mut Moved as *mut c_void;
    for te in PgList::<pg_sys::TargetEntry>::from_pg((*copy).targetList).iter_ptr() {
        (*te).expr = move_functions((*te).expr as *mut pg_sys::Node, ctx) as *mut pg_sys::Expr;
    }
    if m.nested {
        unsupported!("nested set-returning functions in the SELECT list");
    }
    let mut functions: *mut pg_sys::List = std::ptr::null_mut();
    let mut names: *mut pg_sys::List = std::ptr::null_mut();
    for (i, f) in m.functions.iter().enumerate() {
        let typ = pg_sys::exprType(*f);
        if typ == pg_sys::RECORDOID || pg_sys::get_typtype(typ) as u8 == pg_sys::TYPTYPE_COMPOSITE {
            unsupported!("a set-returning function returning a composite value in the SELECT list");
        }
        let rtf = pg_sys::palloc0(std::mem::size_of::<pg_sys::RangeTblFunction>()) as *mut pg_sys::RangeTblFunction;
        (*rtf).type_ = pg_sys::NodeTag::T_RangeTblFunction;
        (*rtf).funcexpr = *f;
        (*rtf).funccolcount = 1;
        functions = pg_sys::lappend(functions, rtf as *mut c_void);
        names = pg_sys::lappend(names, string_node(&format!("{ALIAS}{}", i + 1)));
    }
    let rte = pg_sys::palloc0(std::mem::size_of::<pg_sys::RangeTblEntry>()) as *mut pg_sys::RangeTblEntry;
    (*rte).type_ = pg_sys::NodeTag::T_RangeTblEntry;
    (*rte).rtekind = pg_sys::RTEKind::RTE_FUNCTION;
    (*rte).functions = functions;
    (*rte).lateral = true;
    (*rte).inFromCl = true;
    (*rte).alias = pg_sys::makeAlias(cstring(ALIAS), names);
    (*rte).eref = pg_sys::makeAlias(cstring(ALIAS), pg_sys::list_copy(names));
    (*copy).rtable = pg_sys::lappend((*copy).rtable, rte as *mut c_void);
    let rtr = pg_sys::palloc0(std::mem::size_of::<pg_sys::RangeTblRef>()) as *mut pg_sys::RangeTblRef;
    (*rtr).type_ = pg_sys::NodeTag::T_RangeTblRef;
    (*rtr).rtindex = rtindex;
    (*(*copy).jointree).fromlist = pg_sys::lappend((*(*copy).jointree).fromlist, rtr as *mut c_void);
    (*copy).hasTargetSRFs = false;
    let text = deparse(copy);
    let csql = CString::new(text).map_err(|_| PgtError::internal("deparsed query contains a NUL byte"))?;
    Ok(Ok(crate::privilege::with_pinned_search_path(|| crate::parse::parse_single_select(&csql))?))
}
