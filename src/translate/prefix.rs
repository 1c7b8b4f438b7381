//! A parent's filter keeping a ranked prefix of a window subquery's rows
//! (`WHERE rn <= 10` over `SELECT ..., row_number() OVER (...) AS rn`), found
//! in the parent's WHERE (`surgery.rs`, where FROM items become inputs) and
//! handed to the window level's translation (`window.rs`), which keeps only
//! that prefix when its window functions allow (`pgt_delta::window`,
//! "Ranked prefix").

use pgrx::{pg_sys, PgList};

/// A parent's filter keeping a ranked prefix of the level's rows: visible
/// column `column` (0-based among the visible ones) at most `bound`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PrefixFilter {
    pub(crate) column: usize,
    pub(crate) bound: i64,
}

/// The ranked-prefix filter level `q` applies to its only FROM item,
/// subquery `varno`: a top-level conjunct of its WHERE comparing one of the
/// subquery's columns with an integer constant by `<=`, `<` or `=` (either
/// way round), as `rn <= 10`, `rn < 10`, `10 >= rn` or DISTINCT ON's `rn =
/// 1`. Whether the column is a ranking function is the window level's to
/// decide (`window::translate`); the filter itself stays in `q`.
pub(super) unsafe fn prefix_filter(q: *mut pg_sys::Query, varno: i32) -> Option<PrefixFilter> {
    let jt = (*q).jointree;
    let from = PgList::<pg_sys::Node>::from_pg((*jt).fromlist);
    let only = from.get_ptr(0)?;
    if from.len() != 1 || !pgrx::is_a(only, pg_sys::NodeTag::T_RangeTblRef) || (*(only as *mut pg_sys::RangeTblRef)).rtindex != varno {
        return None;
    }
    let quals = (*jt).quals;
    if quals.is_null() {
        return None;
    }
    let conjuncts: Vec<*mut pg_sys::Node> = if pgrx::is_a(quals, pg_sys::NodeTag::T_BoolExpr)
        && (*(quals as *mut pg_sys::BoolExpr)).boolop == pg_sys::BoolExprType::AND_EXPR
    {
        PgList::<pg_sys::Node>::from_pg((*(quals as *mut pg_sys::BoolExpr)).args).iter_ptr().collect()
    } else if pgrx::is_a(quals, pg_sys::NodeTag::T_List) {
        PgList::<pg_sys::Node>::from_pg(quals as *mut pg_sys::List).iter_ptr().collect()
    } else {
        vec![quals]
    };
    let visible: Vec<i16> = PgList::<pg_sys::TargetEntry>::from_pg((*(*pg_sys::rt_fetch(varno as pg_sys::Index, (*q).rtable)).subquery).targetList)
        .iter_ptr()
        .filter(|te| !(**te).resjunk)
        .map(|te| (*te).resno)
        .collect();
    conjuncts.into_iter().filter_map(|c| bound_of(c, varno, &visible)).min_by_key(|f| f.bound)
}

/// `column <= c`, `column < c`, `column = c` (or the same the other way
/// round) over an integer ranking column of subquery `varno` and a non-null
/// integer constant, as a prefix filter.
unsafe fn bound_of(node: *mut pg_sys::Node, varno: i32, visible: &[i16]) -> Option<PrefixFilter> {
    if !pgrx::is_a(node, pg_sys::NodeTag::T_OpExpr) {
        return None;
    }
    let op = node as *mut pg_sys::OpExpr;
    let args: Vec<*mut pg_sys::Node> = PgList::<pg_sys::Node>::from_pg((*op).args).iter_ptr().collect();
    let [left, right] = args[..] else { return None };
    let function = u32::from((*op).opfuncid);
    // (the column, the constant, whether the comparison is strict)
    let (var, constant, less_than) = if pgrx::is_a(left, pg_sys::NodeTag::T_Var) && pgrx::is_a(right, pg_sys::NodeTag::T_Const) {
        match function {
            pg_sys::F_INT8LE | pg_sys::F_INT84LE | pg_sys::F_INT82LE | pg_sys::F_INT8EQ | pg_sys::F_INT84EQ | pg_sys::F_INT82EQ => (left, right, false),
            pg_sys::F_INT8LT | pg_sys::F_INT84LT | pg_sys::F_INT82LT => (left, right, true),
            _ => return None,
        }
    } else if pgrx::is_a(right, pg_sys::NodeTag::T_Var) && pgrx::is_a(left, pg_sys::NodeTag::T_Const) {
        match function {
            pg_sys::F_INT8GE | pg_sys::F_INT48GE | pg_sys::F_INT28GE | pg_sys::F_INT8EQ | pg_sys::F_INT48EQ | pg_sys::F_INT28EQ => (right, left, false),
            pg_sys::F_INT8GT | pg_sys::F_INT48GT | pg_sys::F_INT28GT => (right, left, true),
            _ => return None,
        }
    } else {
        return None;
    };
    let var = var as *mut pg_sys::Var;
    let constant = constant as *mut pg_sys::Const;
    if (*var).varno != varno || (*var).varlevelsup != 0 || (*constant).constisnull {
        return None;
    }
    let column = visible.iter().position(|resno| *resno == (*var).varattno)?;
    let value = match (*constant).consttype {
        pg_sys::INT8OID => (*constant).constvalue.value() as i64,
        pg_sys::INT4OID => i64::from((*constant).constvalue.value() as i32),
        pg_sys::INT2OID => i64::from((*constant).constvalue.value() as i16),
        _ => return None,
    };
    let bound = if less_than { value.checked_sub(1)? } else { value };
    Some(PrefixFilter { column, bound })
}

