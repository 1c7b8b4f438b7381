//! Small builders the operations on query-tree copies share (`surgery`,
//! `sublink`, `having`): strings and String nodes allocated in the current
//! memory context, and the range-table entry that reads a child operator's
//! rows. It sits below all three, so none of them imports another for these.

use pgrx::pg_sys;
use std::ffi::{c_void, CString};

/// `s` copied into the current memory context (`pstrdup`), as PostgreSQL's
/// nodes hold their strings. Names come from the catalog or from
/// `pgt_delta::names` and contain no NUL byte.
pub(super) fn cstring(s: &str) -> *mut std::ffi::c_char {
    let c = CString::new(s).unwrap_or_default();
    unsafe { pg_sys::pstrdup(c.as_ptr()) }
}

/// A `String` node holding `s` (for column-name lists).
pub(super) fn string_node(s: &str) -> *mut c_void {
    unsafe { pg_sys::makeString(cstring(s)) as *mut c_void }
}

/// Turns subquery entry `rte` into a reference to CTE `placeholder` whose
/// columns are a child's visible columns (`__pgt_c1`, ... with `types`),
/// `__pgt_row_id` and `__pgt_w`.
pub(super) unsafe fn to_child_placeholder(rte: *mut pg_sys::RangeTblEntry, placeholder: &str, types: &[(pg_sys::Oid, i32, pg_sys::Oid)]) {
    let hidden = [(pgt_delta::names::ROW_ID.to_string(), (pg_sys::INT8OID, -1, pg_sys::InvalidOid)), (pgt_delta::names::WEIGHT.to_string(), (pg_sys::INT8OID, -1, pg_sys::InvalidOid))];
    let visible = types.iter().enumerate().map(|(i, t)| (pgt_delta::names::child_column(i + 1), *t));
    unsafe { to_cte_reference(rte, placeholder, visible.chain(hidden)) };
}

/// Turns range-table entry `rte` (a base relation or a subquery) into a
/// reference to CTE `placeholder` whose columns are `columns`: (name, (type,
/// typmod, collation)), in order.
pub(super) unsafe fn to_cte_reference(
    rte: *mut pg_sys::RangeTblEntry,
    placeholder: &str,
    columns: impl IntoIterator<Item = (String, (pg_sys::Oid, i32, pg_sys::Oid))>,
) {
    unsafe {
        let mut names: *mut pg_sys::List = std::ptr::null_mut();
        let mut coltypes: *mut pg_sys::List = std::ptr::null_mut();
        let mut coltypmods: *mut pg_sys::List = std::ptr::null_mut();
        let mut colcollations: *mut pg_sys::List = std::ptr::null_mut();
        for (name, (typ, typmod, coll)) in columns {
            names = pg_sys::lappend(names, string_node(&name));
            coltypes = pg_sys::lappend_oid(coltypes, typ);
            coltypmods = pg_sys::lappend_int(coltypmods, typmod);
            colcollations = pg_sys::lappend_oid(colcollations, coll);
        }
        (*(*rte).eref).colnames = names;
        if !(*rte).alias.is_null() {
            (*(*rte).alias).colnames = std::ptr::null_mut();
        }
        (*rte).rtekind = pg_sys::RTEKind::RTE_CTE;
        (*rte).ctename = cstring(placeholder);
        (*rte).ctelevelsup = 0;
        (*rte).self_reference = false;
        (*rte).coltypes = coltypes;
        (*rte).coltypmods = coltypmods;
        (*rte).colcollations = colcollations;
        (*rte).subquery = std::ptr::null_mut();
        (*rte).relid = pg_sys::InvalidOid;
        (*rte).relkind = 0;
        (*rte).rellockmode = 0;
        (*rte).perminfoindex = 0;
        (*rte).inh = false;
        (*rte).security_barrier = false;
        (*rte).tablesample = std::ptr::null_mut();
    }
}

/// A new range-table entry referring to CTE `placeholder` whose columns are
/// `columns`: (name, (type, typmod, collation)), in order. For a template
/// whose single FROM item is a placeholder (`__pgt_agg`, `__pgt_win`).
pub(super) unsafe fn new_cte_reference(
    placeholder: &str,
    columns: impl IntoIterator<Item = (String, (pg_sys::Oid, i32, pg_sys::Oid))>,
) -> *mut pg_sys::RangeTblEntry {
    unsafe {
        let rte = pg_sys::palloc0(std::mem::size_of::<pg_sys::RangeTblEntry>()) as *mut pg_sys::RangeTblEntry;
        (*rte).type_ = pg_sys::NodeTag::T_RangeTblEntry;
        (*rte).eref = pg_sys::makeAlias(cstring(placeholder), std::ptr::null_mut());
        (*rte).inFromCl = true;
        to_cte_reference(rte, placeholder, columns);
        rte
    }
}

/// `FROM <range-table entry 1>`: the join tree of a query reading one item.
pub(super) unsafe fn from_first_item() -> *mut pg_sys::FromExpr {
    unsafe {
        let rtr = pg_sys::palloc0(std::mem::size_of::<pg_sys::RangeTblRef>()) as *mut pg_sys::RangeTblRef;
        (*rtr).type_ = pg_sys::NodeTag::T_RangeTblRef;
        (*rtr).rtindex = 1;
        pg_sys::makeFromExpr(pg_sys::lappend(std::ptr::null_mut(), rtr as *mut c_void), std::ptr::null_mut())
    }
}

/// `row_number() OVER (PARTITION BY <partition> ORDER BY <order>)` as window
/// clause `winref` and the call reading it: the clause (append it to the
/// query's `windowClause`) and the `WindowFunc` (a bigint). `partition` and
/// `order` are SortGroupClause lists naming the query's target entries.
pub(super) unsafe fn row_number_over(
    winref: pg_sys::Index,
    partition: *mut pg_sys::List,
    order: *mut pg_sys::List,
) -> (*mut pg_sys::WindowClause, *mut pg_sys::Expr) {
    unsafe {
        let clause = pg_sys::palloc0(std::mem::size_of::<pg_sys::WindowClause>()) as *mut pg_sys::WindowClause;
        (*clause).type_ = pg_sys::NodeTag::T_WindowClause;
        (*clause).partitionClause = partition;
        (*clause).orderClause = order;
        (*clause).frameOptions = pg_sys::FRAMEOPTION_DEFAULTS as i32;
        (*clause).winref = winref;
        let function = pg_sys::palloc0(std::mem::size_of::<pg_sys::WindowFunc>()) as *mut pg_sys::WindowFunc;
        (*function).xpr.type_ = pg_sys::NodeTag::T_WindowFunc;
        (*function).winfnoid = pg_sys::Oid::from(pg_sys::F_ROW_NUMBER);
        (*function).wintype = pg_sys::INT8OID;
        (*function).winref = winref;
        (*function).location = -1;
        (clause, function as *mut pg_sys::Expr)
    }
}
