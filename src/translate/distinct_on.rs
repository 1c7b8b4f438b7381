//! `SELECT DISTINCT ON (k...) ... ORDER BY k..., o...`: the first row of
//! each group of equal `k` in the order of `o` (PostgreSQL docs, SELECT,
//! "DISTINCT Clause"), which is by definition
//!
//! ```text
//! SELECT <columns> FROM (SELECT <columns>, row_number() OVER (PARTITION BY k... ORDER BY k..., o...) AS rn
//!                        FROM ...) s
//! WHERE rn = 1
//! ```
//!
//! The rewrite adds that window to a copy of the analysed query (so the
//! DISTINCT ON expressions and the ORDER BY keep their exact operators and
//! NULLS order), deparses it, and parses the outer query again. The window
//! operator (`pgt_delta::window`) then maintains it by the groups a change
//! touches. Rows tied on every ORDER BY key are interchangeable, as in the
//! query itself: which of them is kept is PostgreSQL's choice.

use super::placeholder::{cstring, row_number_over};
use super::deparse;
use crate::error::{PgtError, PgtResult};
use pgrx::{pg_sys, PgList};
use pgt_core::ident::quote_ident;
use std::ffi::{c_void, CString};

use pgt_delta::names::ROW_NUMBER;

/// Rewrites DISTINCT ON query `q` as the filter on a row number (module doc),
/// parsed and analysed.
///
/// # Errors
/// PostgreSQL's, when the rewritten query does not parse.
pub(super) unsafe fn rewrite(q: *mut pg_sys::Query) -> PgtResult<*mut pg_sys::Query> {
    let inner = pg_sys::copyObjectImpl(q as *const c_void) as *mut pg_sys::Query;
    let existing = PgList::<pg_sys::WindowClause>::from_pg((*inner).windowClause).len();
    let winref = (existing + 1) as pg_sys::Index;

    let (clause, function) = row_number_over(winref, (*inner).distinctClause, (*inner).sortClause);
    (*inner).windowClause = pg_sys::lappend((*inner).windowClause, clause as *mut c_void);
    let visible = super::surgery::visible_names(q);
    let resno = (PgList::<pg_sys::TargetEntry>::from_pg((*inner).targetList).len() + 1) as i16;
    let entry = pg_sys::makeTargetEntry(function, resno, cstring(ROW_NUMBER), false);
    (*inner).targetList = pg_sys::lappend((*inner).targetList, entry as *mut c_void);
    (*inner).hasWindowFuncs = true;
    (*inner).distinctClause = std::ptr::null_mut();
    (*inner).hasDistinctOn = false;
    (*inner).sortClause = std::ptr::null_mut();

    let alias = pgt_delta::names::SUBQUERY_ALIAS;
    let inner_names: Vec<String> = (1..=visible.len()).map(|i| format!("{}{i}", pgt_delta::names::SUBQUERY_COLUMN)).collect();
    let select = visible
        .iter()
        .zip(&inner_names)
        .map(|(name, column)| format!("{alias}.{column} AS {}", quote_ident(name)))
        .collect::<Vec<_>>()
        .join(", ");
    let text = format!(
        "SELECT {select} FROM ({}) {alias} ({}, {ROW_NUMBER}) WHERE {alias}.{ROW_NUMBER} = 1",
        deparse(inner),
        inner_names.join(", ")
    );
    let csql = CString::new(text).map_err(|_| PgtError::internal("deparsed query contains a NUL byte"))?;
    crate::privilege::with_pinned_search_path(|| crate::parse::parse_single_select(&csql))
}
