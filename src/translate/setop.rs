//! INTERSECT [ALL] and EXCEPT [ALL] (and UNION below UNION ALL), rewritten
//! into what the engine maintains: a count per distinct row and side.
//!
//! For `L op R` with columns `x₁…xₙ`, let `a(x)` and `b(x)` count the copies of
//! row `x` in `L` and `R` (SQL's set operations compare rows as GROUP BY does,
//! NULLs equal). Then (SQL standard, PostgreSQL docs §7.4):
//!
//! ```text
//! INTERSECT      x once    if a(x) > 0 and b(x) > 0
//! EXCEPT         x once    if a(x) > 0 and b(x) = 0
//! INTERSECT ALL  x min(a(x), b(x)) times
//! EXCEPT ALL     x max(a(x) − b(x), 0) times
//! ```
//!
//! So the operation is an aggregate over `L ⊎ R` tagged by side, grouped by
//! every column, with `count(*) FILTER (WHERE side = 1)` and `… = 2` — which
//! the aggregate operator maintains per changed group. INTERSECT and EXCEPT
//! keep the groups passing a HAVING; the ALL forms read that aggregate as a
//! child and repeat each row by its multiplicity (`pgt_delta::RowsPlan::multiplicity`).
//! The rewrite is SQL text built from PostgreSQL's deparse of each branch (with
//! the search path pinned), parsed and analysed again.

use super::{deparse, Unsupported};
use crate::error::{PgtError, PgtResult};
use pgrx::pg_sys;
use pgrx::PgList;
use pgt_core::ident::quote_ident;
use pgt_delta::names;
use std::ffi::CString;

/// Whether the set-operation tree of `q` needs the rewrite: it has an
/// INTERSECT or EXCEPT, or a UNION (without ALL) below a UNION ALL.
pub(super) unsafe fn needs_rewrite(q: *mut pg_sys::Query) -> bool {
    unsafe fn walk(node: *mut pg_sys::Node, under_all: bool) -> bool {
        if node.is_null() || !pgrx::is_a(node, pg_sys::NodeTag::T_SetOperationStmt) {
            return false;
        }
        let op = node as *mut pg_sys::SetOperationStmt;
        if (*op).op != pg_sys::SetOperation::SETOP_UNION || (under_all && !(*op).all) {
            return true;
        }
        walk((*op).larg, (*op).all) || walk((*op).rarg, (*op).all)
    }
    walk((*q).setOperations, false)
}

/// The rewritten query of set-operation query `q`, parsed and analysed, and
/// whether its last output column is the multiplicity of each row (an ALL
/// form at the root).
pub(super) unsafe fn rewrite(q: *mut pg_sys::Query) -> PgtResult<Result<(*mut pg_sys::Query, bool), Unsupported>> {
    let top = (*q).setOperations as *mut pg_sys::SetOperationStmt;
    let width = PgList::<pg_sys::Node>::from_pg((*top).colTypes).len();
    let rtable = PgList::<pg_sys::RangeTblEntry>::from_pg((*q).rtable);
    let names_out = super::surgery::visible_names(q);
    let cols = |alias: &str| (1..=width).map(|i| format!("{alias}.{}{i}", names::SUBQUERY_COLUMN)).collect::<Vec<_>>().join(", ");
    let x_list = (1..=width).map(|i| format!("{}{i}", names::SUBQUERY_COLUMN)).collect::<Vec<_>>().join(", ");
    let root_all = (*top).all && (*top).op != pg_sys::SetOperation::SETOP_UNION;
    let root_aggregate = !root_all && (*top).op != pg_sys::SetOperation::SETOP_UNION;
    let body = match text(top as *mut pg_sys::Node, &rtable, &x_list, &cols, true, false, Some(names_out.as_slice()).filter(|_| root_aggregate))? {
        Ok(t) => t,
        Err(u) => return Ok(Err(u)),
    };
    let outputs = names_out
        .iter()
        .enumerate()
        .map(|(i, n)| format!("t.{}{} AS {}", names::SUBQUERY_COLUMN, i + 1, quote_ident(n)))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = if root_all {
        format!("SELECT {outputs}, t.{m} FROM ({body}) AS t({x_list}, {m}) WHERE t.{m} > 0", m = names::MULTIPLICITY)
    } else if root_aggregate {
        // The aggregate itself is the root.
        body
    } else {
        format!("SELECT {outputs} FROM ({body}) AS t({x_list})")
    };
    let csql = CString::new(sql).map_err(|_| PgtError::internal("deparsed query contains a NUL byte"))?;
    let parsed = crate::privilege::with_pinned_search_path(|| crate::parse::parse_single_select(&csql))?;
    Ok(Ok((parsed, root_all)))
}

/// SQL of set-operation tree `node`, its columns named `x1…xn`.
unsafe fn text(
    node: *mut pg_sys::Node,
    rtable: &PgList<pg_sys::RangeTblEntry>,
    x_list: &str,
    cols: &dyn Fn(&str) -> String,
    root: bool,
    parent_all: bool,
    root_names: Option<&[String]>,
) -> PgtResult<Result<String, Unsupported>> {
    if pgrx::is_a(node, pg_sys::NodeTag::T_RangeTblRef) {
        let rtindex = (*(node as *mut pg_sys::RangeTblRef)).rtindex;
        let rte = rtable.get_ptr((rtindex - 1) as usize).ok_or_else(|| PgtError::internal("set operation branch not found"))?;
        let leaf = deparse((*rte).subquery);
        return Ok(Ok(format!("SELECT * FROM ({leaf}) AS {}({x_list})", names::SUBQUERY_ALIAS)));
    }
    let op = node as *mut pg_sys::SetOperationStmt;
    let left = match text((*op).larg, rtable, x_list, cols, false, (*op).all, None)? {
        Ok(t) => t,
        Err(u) => return Ok(Err(u)),
    };
    let right = match text((*op).rarg, rtable, x_list, cols, false, (*op).all, None)? {
        Ok(t) => t,
        Err(u) => return Ok(Err(u)),
    };
    let all = if (*op).all { " ALL" } else { "" };
    let name = match (*op).op {
        // UNION below UNION ALL is read as a subquery (a child).
        pg_sys::SetOperation::SETOP_UNION if !(*op).all && parent_all => {
            return Ok(Ok(format!("SELECT * FROM (({left}) UNION ({right})) AS {}({x_list})", names::SUBQUERY_ALIAS)))
        }
        pg_sys::SetOperation::SETOP_UNION => return Ok(Ok(format!("({left}) UNION{all} ({right})"))),
        pg_sys::SetOperation::SETOP_INTERSECT => "INTERSECT",
        _ => "EXCEPT",
    };
    if (*op).all && !root {
        return Ok(Err(Unsupported(format!("{name} ALL below another set operation"))));
    }
    let side = names::SET_SIDE;
    let (a, b) = (format!("count(*) FILTER (WHERE u.{side} = 1)"), format!("count(*) FILTER (WHERE u.{side} = 2)"));
    let tagged = format!(
        "SELECT {l}, 1 AS {side} FROM ({left}) AS l({x_list}) UNION ALL SELECT {r}, 2 FROM ({right}) AS r({x_list})",
        l = cols("l"),
        r = cols("r")
    );
    let group = cols("u");
    let select = match root_names {
        Some(out) => group.split(", ").zip(out).map(|(c, n)| format!("{c} AS {}", quote_ident(n))).collect::<Vec<_>>().join(", "),
        None => group.clone(),
    };
    Ok(Ok(match ((*op).op, (*op).all) {
        (pg_sys::SetOperation::SETOP_INTERSECT, false) => {
            format!("SELECT {select} FROM ({tagged}) u GROUP BY {group} HAVING {a} > 0 AND {b} > 0")
        }
        (_, false) => format!("SELECT {select} FROM ({tagged}) u GROUP BY {group} HAVING {a} > 0 AND {b} = 0"),
        (pg_sys::SetOperation::SETOP_INTERSECT, true) => {
            format!("SELECT {group}, least({a}, {b}) AS {m} FROM ({tagged}) u GROUP BY {group}", m = names::MULTIPLICITY)
        }
        (_, true) => format!("SELECT {group}, greatest({a} - {b}, 0) AS {m} FROM ({tagged}) u GROUP BY {group}", m = names::MULTIPLICITY),
    }))
}

