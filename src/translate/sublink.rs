//! Subquery expressions (`EXISTS`, `NOT EXISTS`, `IN`, `NOT IN`, `= ANY`,
//! `<> ALL`, `>= ALL`, scalar subqueries) in a block's WHERE, ON and SELECT
//! list become **presence inputs**: each subquery's own rows are computed by a
//! child operator with a state table, and the subquery expression stays where
//! the user wrote it — evaluated by PostgreSQL itself, with its NULL rules —
//! but reads the child instead of the subquery's tables
//! (`pgt_delta::presence` has the delta rule).
//!
//! Decorrelation, per subquery `S` of the block:
//!
//! - the conjuncts of `S`'s WHERE without references to the block stay in the
//!   child; a conjunct `inner = outer` (an equality operator, one side over
//!   `S` alone, the other over the block alone) becomes a *correlation pair*:
//!   the inner side is a column of the child, and the subquery compares that
//!   column with the outer side; other conjuncts that reference the block
//!   stay in the subquery over the child columns they need;
//! - `EXISTS`, `IN`, `ANY`, `ALL`: the child is `SELECT DISTINCT` of the
//!   columns the subquery needs (their result depends only on the set of
//!   values);
//! - a scalar subquery: `SELECT <columns>, count(*) ... GROUP BY <columns>`,
//!   and the subquery raises PostgreSQL's "more than one row" error when a
//!   group counts more than one row (`pgtrickle._more_than_one_row`);
//! - a scalar aggregate subquery: the aggregate grouped by the correlation
//!   columns; an outer row without a group sees the aggregate's value over no
//!   rows (computed once, at translation), as PostgreSQL does;
//! - an uncorrelated subquery with GROUP BY, DISTINCT or set operations: its
//!   result as a child, as is.
//!
//! The FROM inputs whose columns a pair compares are restricted, in the child's
//! term, to the rows matching its changes (`pgt_delta::Restriction`).

use super::placeholder::cstring;
use super::{format_type, qualified_operator, translate_child, Unsupported};
use crate::error::{PgtError, PgtResult};
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgList;
use pgt_delta::names;
use pgt_delta::{CorrelationPair, Input, Presence, Restriction, Source};
use std::ffi::{c_void, CStr, CString};

/// Why a rewrite stopped.
enum Failure {
    Unsupported(Unsupported),
    Error(PgtError),
}

impl From<PgtError> for Failure {
    fn from(e: PgtError) -> Self {
        Failure::Error(e)
    }
}

fn unsupported<T>(what: impl Into<String>) -> Result<T, Failure> {
    Err(Failure::Unsupported(Unsupported(what.into())))
}

struct Rewriter<'a> {
    /// The block (its FROM items are placeholders already).
    block: *mut pg_sys::Query,
    inputs: &'a mut Vec<Input>,
    failure: Option<Failure>,
}

/// Replaces the subquery expressions of block `q` (WHERE, join conditions,
/// SELECT list) by subqueries over children, appending the children to
/// `inputs` as presence inputs. `q`'s FROM items must be placeholders already.
pub(super) unsafe fn decorrelate(q: *mut pg_sys::Query, inputs: &mut Vec<Input>) -> PgtResult<Result<(), Unsupported>> {
    let mut rw = Rewriter { block: q, inputs, failure: None };
    let ctx = &mut rw as *mut Rewriter as *mut c_void;
    for te in PgList::<pg_sys::TargetEntry>::from_pg((*q).targetList).iter_ptr() {
        (*te).expr = rewrite_sublinks((*te).expr as *mut pg_sys::Node, ctx) as *mut pg_sys::Expr;
    }
    rewrite_jointree((*q).jointree as *mut pg_sys::Node, ctx);
    match rw.failure {
        None => Ok(Ok(())),
        Some(Failure::Unsupported(u)) => Ok(Err(u)),
        Some(Failure::Error(e)) => Err(e),
    }
}

unsafe fn rewrite_jointree(node: *mut pg_sys::Node, ctx: *mut c_void) {
    if node.is_null() {
        return;
    }
    if pgrx::is_a(node, pg_sys::NodeTag::T_FromExpr) {
        let f = node as *mut pg_sys::FromExpr;
        for item in PgList::<pg_sys::Node>::from_pg((*f).fromlist).iter_ptr() {
            rewrite_jointree(item, ctx);
        }
        (*f).quals = rewrite_sublinks((*f).quals, ctx);
    } else if pgrx::is_a(node, pg_sys::NodeTag::T_JoinExpr) {
        let j = node as *mut pg_sys::JoinExpr;
        rewrite_jointree((*j).larg, ctx);
        rewrite_jointree((*j).rarg, ctx);
        (*j).quals = rewrite_sublinks((*j).quals, ctx);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn rewrite_sublinks(node: *mut pg_sys::Node, ctx: *mut c_void) -> *mut pg_sys::Node {
    if node.is_null() {
        return node;
    }
    let rw = &mut *(ctx as *mut Rewriter);
    if rw.failure.is_some() {
        return node;
    }
    if pgrx::is_a(node, pg_sys::NodeTag::T_SubLink) {
        let sl = node as *mut pg_sys::SubLink;
        (*sl).testexpr = rewrite_sublinks((*sl).testexpr, ctx);
        let rw = &mut *(ctx as *mut Rewriter);
        if rw.failure.is_some() {
            return node;
        }
        return match rewrite_one(rw, sl) {
            Ok(n) => n,
            Err(f) => {
                rw.failure = Some(f);
                node
            }
        };
    }
    if pgrx::is_a(node, pg_sys::NodeTag::T_Query) {
        return node;
    }
    pg_sys::expression_tree_mutator_impl(node, Some(rewrite_sublinks), ctx)
}

/// One equality of the correlation: `inner <op> outer` (or mirrored).
pub(super) struct Pair {
    pub(super) inner: *mut pg_sys::Node,
    pub(super) outer: *mut pg_sys::Node,
    pub(super) opno: pg_sys::Oid,
    pub(super) inner_on_left: bool,
}

/// What the child of a subquery is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// A select-project-join block (decorrelated).
    Plain,
    /// An aggregate without GROUP BY (decorrelated, grouped by the pairs).
    ScalarAggregate,
    /// Anything else, uncorrelated: taken as is.
    Opaque,
}

unsafe fn rewrite_one(rw: &mut Rewriter, sl: *mut pg_sys::SubLink) -> Result<*mut pg_sys::Node, Failure> {
    let kind = (*sl).subLinkType;
    let scalar = kind == pg_sys::SubLinkType::EXPR_SUBLINK;
    if !matches!(kind, pg_sys::SubLinkType::EXISTS_SUBLINK | pg_sys::SubLinkType::ANY_SUBLINK | pg_sys::SubLinkType::ALL_SUBLINK)
        && !scalar
    {
        return unsupported("ARRAY(subquery) and row comparisons with subqueries");
    }
    let s = pg_sys::copyObjectImpl((*sl).subselect as *const c_void) as *mut pg_sys::Query;
    let refs = references(s as *mut pg_sys::Node, 0);
    if refs.beyond {
        return unsupported("a subquery referring to a query more than one level out");
    }
    if refs.outer_aggregate {
        return unsupported("an aggregate of the outer query inside a subquery");
    }
    // Outer references only in the WHERE clause's conjuncts and the SELECT list.
    {
        let probe = pg_sys::copyObjectImpl(s as *const c_void) as *mut pg_sys::Query;
        if !(*probe).jointree.is_null() {
            (*(*probe).jointree).quals = std::ptr::null_mut();
        }
        (*probe).targetList = std::ptr::null_mut();
        if references(probe as *mut pg_sys::Node, 0).level1 {
            return unsupported("a correlated reference in a subquery's FROM, GROUP BY, HAVING or ORDER BY");
        }
    }
    let query = &*s;
    let complex = !query.groupClause.is_null()
        || !query.havingQual.is_null()
        || !query.distinctClause.is_null()
        || !query.setOperations.is_null()
        || !query.limitCount.is_null()
        || !query.limitOffset.is_null()
        || !query.groupingSets.is_null()
        || query.hasWindowFuncs
        || query.hasTargetSRFs;
    let shape = if complex || (query.hasAggs && !scalar && !refs.level1) {
        Shape::Opaque
    } else if query.hasAggs {
        Shape::ScalarAggregate
    } else {
        Shape::Plain
    };
    if shape == Shape::Opaque && refs.level1 {
        return unsupported("a correlated subquery with GROUP BY, HAVING, DISTINCT, LIMIT, window functions or set operations");
    }
    if shape == Shape::ScalarAggregate && refs.level1 && !scalar {
        return unsupported("EXISTS, IN, ANY or ALL over a correlated aggregate subquery");
    }
    let targets: Vec<*mut pg_sys::TargetEntry> =
        PgList::<pg_sys::TargetEntry>::from_pg(query.targetList).iter_ptr().filter(|te| !(**te).resjunk).collect();

    // Split the WHERE clause.
    let mut pairs: Vec<Pair> = Vec::new();
    let mut remaining: Vec<*mut pg_sys::Node> = Vec::new();
    let mut uncorrelated: Vec<*mut pg_sys::Node> = Vec::new();
    if shape != Shape::Opaque && !query.jointree.is_null() && !(*query.jointree).quals.is_null() {
        let conjuncts = PgList::<pg_sys::Node>::from_pg(pg_sys::make_ands_implicit((*query.jointree).quals as *mut pg_sys::Expr));
        for c in conjuncts.iter_ptr() {
            if !references(c, 0).level1 {
                uncorrelated.push(c);
            } else if let Some(pair) = equality_pair(c) {
                pairs.push(pair);
            } else {
                if has_sublink(c) {
                    return unsupported("a correlated condition containing a subquery inside a subquery");
                }
                remaining.push(c);
            }
        }
    }
    if shape == Shape::ScalarAggregate && !remaining.is_empty() {
        return unsupported("a correlated aggregate subquery whose correlation is not equalities in its WHERE clause");
    }

    // The child's columns (expressions over S's FROM), in order.
    let mut columns: Vec<*mut pg_sys::Node> = Vec::new();
    let add = |e: *mut pg_sys::Node, columns: &mut Vec<*mut pg_sys::Node>| -> usize {
        if let Some(i) = columns.iter().position(|c| pg_sys::equal(*c as *const c_void, e as *const c_void)) {
            return i;
        }
        columns.push(e);
        columns.len() - 1
    };
    let mut pair_columns = Vec::new();
    let mut aggrefs: Vec<*mut pg_sys::Aggref> = Vec::new();
    match shape {
        Shape::Opaque => {
            for te in &targets {
                columns.push((**te).expr as *mut pg_sys::Node);
            }
        }
        Shape::Plain | Shape::ScalarAggregate => {
            for p in &pairs {
                pair_columns.push(add(p.inner, &mut columns));
            }
            for c in &remaining {
                for v in inner_vars(*c) {
                    add(v, &mut columns);
                }
            }
            if kind != pg_sys::SubLinkType::EXISTS_SUBLINK {
                for te in &targets {
                    let e = (**te).expr as *mut pg_sys::Node;
                    if has_sublink(e) {
                        return unsupported("a subquery inside the SELECT list of a subquery");
                    }
                    if shape == Shape::ScalarAggregate {
                        for a in aggregates_of(e) {
                            if references(a as *mut pg_sys::Node, 0).level1 {
                                return unsupported("an aggregate over outer columns inside a subquery");
                            }
                            if (*a).aggkind as u8 != b'n' || (*a).aggvariadic {
                                return unsupported("ordered-set or VARIADIC aggregates in a subquery");
                            }
                            if !aggrefs.iter().any(|x| pg_sys::equal(*x as *const c_void, a as *const c_void)) {
                                aggrefs.push(a);
                            }
                            add(a as *mut pg_sys::Node, &mut columns);
                        }
                    } else if references(e, 0).level1 {
                        for v in inner_vars(e) {
                            add(v, &mut columns);
                        }
                    } else {
                        add(e, &mut columns);
                    }
                }
            }
        }
    }

    // The child's query, as SQL: S with the uncorrelated conjuncts and those
    // columns, wrapped as the shape needs.
    let child_sql = match shape {
        Shape::Opaque => {
            let text = super::deparse(s);
            let needed = if kind == pg_sys::SubLinkType::EXISTS_SUBLINK { 0 } else { targets.len() };
            wrapped(&text, kind, needed)
        }
        Shape::Plain | Shape::ScalarAggregate => {
            let s1 = pg_sys::copyObjectImpl(s as *const c_void) as *mut pg_sys::Query;
            if !(*s1).jointree.is_null() {
                (*(*s1).jointree).quals = if uncorrelated.is_empty() {
                    std::ptr::null_mut()
                } else {
                    pg_sys::make_ands_explicit(list_of(&uncorrelated)) as *mut pg_sys::Node
                };
            }
            let mut entries: Vec<*mut pg_sys::Node> = columns.clone();
            if entries.is_empty() {
                entries.push(pg_sys::makeBoolConst(true, false));
            }
            let mut tlist: *mut pg_sys::List = std::ptr::null_mut();
            for (i, e) in entries.iter().enumerate() {
                let name = cstring(&format!("{}{}", names::SUBQUERY_COLUMN, i + 1));
                let te = pg_sys::makeTargetEntry(pg_sys::copyObjectImpl(*e as *const c_void) as *mut pg_sys::Expr, (i + 1) as i16, name, false);
                tlist = pg_sys::lappend(tlist, te as *mut c_void);
            }
            (*s1).targetList = tlist;
            (*s1).sortClause = std::ptr::null_mut();
            if shape == Shape::ScalarAggregate {
                // GROUP BY the correlation columns.
                let mut groups: *mut pg_sys::List = std::ptr::null_mut();
                for (n, i) in pair_columns.iter().enumerate() {
                    let e = columns[*i];
                    let typ = pg_sys::exprType(e);
                    let entry = pg_sys::lookup_type_cache(typ, pg_sys::TYPECACHE_EQ_OPR as i32);
                    if entry.is_null() || (*entry).eq_opr == pg_sys::InvalidOid {
                        return unsupported(format!("a correlation column of type {} (no equality operator)", format_type(typ, -1)?));
                    }
                    let sgc = pg_sys::makeSortGroupClauseForSetOp(typ, false);
                    (*sgc).tleSortGroupRef = (n + 1) as u32;
                    if let Some(te) = PgList::<pg_sys::TargetEntry>::from_pg(tlist).get_ptr(*i) {
                        (*te).ressortgroupref = (n + 1) as u32;
                    }
                    groups = pg_sys::lappend(groups, sgc as *mut c_void);
                }
                (*s1).groupClause = groups;
                (*s1).hasAggs = !aggrefs.is_empty();
            }
            let text = super::deparse(s1);
            match shape {
                Shape::ScalarAggregate if scalar => text,
                _ => wrapped(&text, kind, entries.len()),
            }
        }
    };
    let csql = CString::new(child_sql).map_err(|_| PgtError::internal("deparsed subquery contains a NUL byte"))?;
    let parsed = crate::privilege::with_pinned_search_path(|| crate::parse::parse_single_select(&csql))?;
    let child = match translate_child(parsed, None)? {
        Ok(c) => c,
        Err(u) => return Err(Failure::Unsupported(Unsupported(format!("{} (in a subquery expression)", u.0)))),
    };

    // S rewritten to read the child.
    let placeholder = names::placeholder(rw.inputs.len() + 1);
    let rte = pg_sys::palloc0(std::mem::size_of::<pg_sys::RangeTblEntry>()) as *mut pg_sys::RangeTblEntry;
    (*rte).type_ = pg_sys::NodeTag::T_RangeTblEntry;
    (*rte).eref = pg_sys::makeAlias(cstring(names::SUBQUERY_ALIAS), std::ptr::null_mut());
    (*rte).inFromCl = true;
    super::placeholder::to_child_placeholder(rte, &placeholder, &child.types);
    let column_var = |i: usize| -> *mut pg_sys::Node {
        let (typ, typmod, coll) = child.types[i];
        pg_sys::makeVar(1, (i + 1) as i16, typ, typmod, coll, 0) as *mut pg_sys::Node
    };
    let remap = |e: *mut pg_sys::Node| -> *mut pg_sys::Node {
        let mut m = Remap { columns: columns.clone(), vars: (0..columns.len()).map(column_var).collect() };
        remap_columns(pg_sys::copyObjectImpl(e as *const c_void) as *mut pg_sys::Node, &mut m as *mut Remap as *mut c_void)
    };
    let mut quals: Vec<*mut pg_sys::Node> = Vec::new();
    for p in &pairs {
        let (left, right) = if p.inner_on_left { (remap(p.inner), p.outer) } else { (p.outer, remap(p.inner)) };
        let op = pg_sys::make_opclause(
            p.opno,
            pg_sys::BOOLOID,
            false,
            left as *mut pg_sys::Expr,
            right as *mut pg_sys::Expr,
            pg_sys::InvalidOid,
            pg_sys::exprCollation(p.inner),
        );
        (*(op as *mut pg_sys::OpExpr)).opfuncid = pg_sys::get_opcode(p.opno);
        quals.push(op as *mut pg_sys::Node);
    }
    for c in &remaining {
        quals.push(remap(*c));
    }
    let mut tlist: *mut pg_sys::List = std::ptr::null_mut();
    let push = |e: *mut pg_sys::Node, name: &CStr, tlist: &mut *mut pg_sys::List| {
        let resno = PgList::<pg_sys::TargetEntry>::from_pg(*tlist).len() as i16 + 1;
        let te = pg_sys::makeTargetEntry(e as *mut pg_sys::Expr, resno, pg_sys::pstrdup(name.as_ptr()), false);
        *tlist = pg_sys::lappend(*tlist, te as *mut c_void);
    };
    for (k, te) in targets.iter().enumerate() {
        let name = if (**te).resname.is_null() { c"?column?" } else { CStr::from_ptr((**te).resname) };
        let e = match (shape, kind) {
            (_, pg_sys::SubLinkType::EXISTS_SUBLINK) => {
                push(pg_sys::makeBoolConst(true, false), c"?column?", &mut tlist);
                break;
            }
            (Shape::Opaque, _) => column_var(k),
            _ => remap((**te).expr as *mut pg_sys::Node),
        };
        let e = if scalar && shape != Shape::ScalarAggregate {
            at_most_one_row(e, column_var(child.types.len() - 1))?
        } else {
            e
        };
        push(e, name, &mut tlist);
    }
    if tlist.is_null() {
        push(pg_sys::makeBoolConst(true, false), c"?column?", &mut tlist);
    }
    let rtr = pg_sys::palloc0(std::mem::size_of::<pg_sys::RangeTblRef>()) as *mut pg_sys::RangeTblRef;
    (*rtr).type_ = pg_sys::NodeTag::T_RangeTblRef;
    (*rtr).rtindex = 1;
    let qual = if quals.is_empty() { std::ptr::null_mut() } else { pg_sys::make_ands_explicit(list_of(&quals)) as *mut pg_sys::Node };
    let original_targets = pg_sys::copyObjectImpl((*s).targetList as *const c_void) as *mut pg_sys::List;
    reset_to_single_input(s, rte, rtr, qual, tlist);

    // The presence input, with the restrictions its pairs allow.
    let mut restrictions: Vec<Restriction> = Vec::new();
    for (p, column) in pairs.iter().zip(&pair_columns) {
        let Some((input, input_column)) = block_column(rw, p.outer) else { continue };
        let Some(operator) = qualified_operator(p.opno)? else { continue };
        let pair = CorrelationPair {
            input_column,
            operator,
            child_column: names::child_column(column + 1),
            input_on_left: !p.inner_on_left,
        };
        match restrictions.iter_mut().find(|r| r.input == input) {
            Some(r) => r.pairs.push(pair),
            None => restrictions.push(Restriction { input, pairs: vec![pair] }),
        }
    }
    rw.inputs.push(Input {
        placeholder,
        source: Source::Node(Box::new(child.node)),
        only: false,
        nullable: None,
        presence: Some(Presence { restrictions }),
    });
    (*rw.block).hasSubLinks = true;

    // A correlated scalar aggregate: an outer row without a group sees the
    // aggregate's value over no rows.
    if shape == Shape::ScalarAggregate && scalar && !pairs.is_empty() {
        let target = PgList::<pg_sys::TargetEntry>::from_pg(original_targets)
            .iter_ptr()
            .find(|te| !(**te).resjunk)
            .map(|te| (*te).expr as *mut pg_sys::Node)
            .ok_or_else(|| PgtError::internal("a scalar subquery without a column"))?;
        let empty = over_no_rows(target, &aggrefs)?;
        let exists_query = pg_sys::copyObjectImpl(s as *const c_void) as *mut pg_sys::Query;
        let mut one: *mut pg_sys::List = std::ptr::null_mut();
        push(pg_sys::makeBoolConst(true, false), c"?column?", &mut one);
        (*exists_query).targetList = one;
        let exists = pg_sys::palloc0(std::mem::size_of::<pg_sys::SubLink>()) as *mut pg_sys::SubLink;
        (*exists).xpr.type_ = pg_sys::NodeTag::T_SubLink;
        (*exists).subLinkType = pg_sys::SubLinkType::EXISTS_SUBLINK;
        (*exists).subselect = exists_query as *mut pg_sys::Node;
        (*exists).location = -1;
        (*sl).subselect = s as *mut pg_sys::Node;
        return Ok(case_when(exists as *mut pg_sys::Node, sl as *mut pg_sys::Node, empty));
    }
    (*sl).subselect = s as *mut pg_sys::Node;
    Ok(sl as *mut pg_sys::Node)
}

/// The child query around `text` (S with the child's columns): DISTINCT for
/// EXISTS / ANY / ALL, a count per distinct row for a scalar subquery.
fn wrapped(text: &str, kind: pg_sys::SubLinkType::Type, columns: usize) -> String {
    let alias = names::SUBQUERY_ALIAS;
    match kind {
        pg_sys::SubLinkType::EXISTS_SUBLINK if columns == 0 => format!("SELECT DISTINCT true AS {}1 FROM ({text}) {alias}", names::SUBQUERY_COLUMN),
        pg_sys::SubLinkType::EXPR_SUBLINK => {
            let positions = (1..=columns).map(|i| i.to_string()).collect::<Vec<_>>().join(", ");
            format!("SELECT {alias}.*, pg_catalog.count(*) AS {} FROM ({text}) {alias} GROUP BY {positions}", names::SUBQUERY_ROWS)
        }
        _ => format!("SELECT DISTINCT * FROM ({text}) {alias}"),
    }
}

/// Makes `s` read only `rte` with qualification `qual` and target list `tlist`.
unsafe fn reset_to_single_input(
    s: *mut pg_sys::Query,
    rte: *mut pg_sys::RangeTblEntry,
    rtr: *mut pg_sys::RangeTblRef,
    qual: *mut pg_sys::Node,
    tlist: *mut pg_sys::List,
) {
    (*s).rtable = pg_sys::lappend(std::ptr::null_mut(), rte as *mut c_void);
    (*s).rteperminfos = std::ptr::null_mut();
    (*s).jointree = pg_sys::makeFromExpr(pg_sys::lappend(std::ptr::null_mut(), rtr as *mut c_void), qual);
    (*s).targetList = tlist;
    (*s).cteList = std::ptr::null_mut();
    (*s).hasAggs = false;
    (*s).hasWindowFuncs = false;
    (*s).hasTargetSRFs = false;
    (*s).hasSubLinks = false;
    (*s).hasDistinctOn = false;
    (*s).hasRecursive = false;
    (*s).hasModifyingCTE = false;
    (*s).hasForUpdate = false;
    (*s).groupClause = std::ptr::null_mut();
    (*s).groupDistinct = false;
    (*s).groupingSets = std::ptr::null_mut();
    (*s).havingQual = std::ptr::null_mut();
    (*s).windowClause = std::ptr::null_mut();
    (*s).distinctClause = std::ptr::null_mut();
    (*s).sortClause = std::ptr::null_mut();
    (*s).limitOffset = std::ptr::null_mut();
    (*s).limitCount = std::ptr::null_mut();
    (*s).rowMarks = std::ptr::null_mut();
    (*s).setOperations = std::ptr::null_mut();
}

/// `CASE WHEN <rows> > 1 THEN pgtrickle._more_than_one_row(NULL::<type>) ELSE e END`.
unsafe fn at_most_one_row(e: *mut pg_sys::Node, rows: *mut pg_sys::Node) -> PgtResult<*mut pg_sys::Node> {
    let typ = pg_sys::exprType(e);
    let gt = crate::spi::query_one::<pg_sys::Oid>(
        "SELECT 'pg_catalog.>(pg_catalog.int8, pg_catalog.int8)'::pg_catalog.regoperator::pg_catalog.oid",
        &[],
    )?
    .ok_or_else(|| PgtError::internal("operator > for bigint not found"))?;
    let raise = crate::spi::query_one::<pg_sys::Oid>(
        "SELECT 'pgtrickle._more_than_one_row(anyelement)'::pg_catalog.regprocedure::pg_catalog.oid",
        &[],
    )?
    .ok_or_else(|| PgtError::internal("pgtrickle._more_than_one_row not found"))?;
    let one = pg_sys::makeConst(pg_sys::INT8OID, -1, pg_sys::InvalidOid, 8, pg_sys::Datum::from(1i64), false, true);
    let test = pg_sys::make_opclause(gt, pg_sys::BOOLOID, false, rows as *mut pg_sys::Expr, one as *mut pg_sys::Expr, pg_sys::InvalidOid, pg_sys::InvalidOid);
    (*(test as *mut pg_sys::OpExpr)).opfuncid = pg_sys::get_opcode(gt);
    let null = pg_sys::makeNullConst(typ, pg_sys::exprTypmod(e), pg_sys::exprCollation(e));
    let call = pg_sys::makeFuncExpr(
        raise,
        typ,
        pg_sys::lappend(std::ptr::null_mut(), null as *mut c_void),
        pg_sys::InvalidOid,
        pg_sys::exprCollation(e),
        pg_sys::CoercionForm::COERCE_EXPLICIT_CALL,
    );
    Ok(case_when(test as *mut pg_sys::Node, call as *mut pg_sys::Node, e))
}

/// `CASE WHEN test THEN then ELSE otherwise END`, typed as `then`.
unsafe fn case_when(test: *mut pg_sys::Node, then: *mut pg_sys::Node, otherwise: *mut pg_sys::Node) -> *mut pg_sys::Node {
    let when = pg_sys::palloc0(std::mem::size_of::<pg_sys::CaseWhen>()) as *mut pg_sys::CaseWhen;
    (*when).xpr.type_ = pg_sys::NodeTag::T_CaseWhen;
    (*when).expr = test as *mut pg_sys::Expr;
    (*when).result = then as *mut pg_sys::Expr;
    (*when).location = -1;
    let case = pg_sys::palloc0(std::mem::size_of::<pg_sys::CaseExpr>()) as *mut pg_sys::CaseExpr;
    (*case).xpr.type_ = pg_sys::NodeTag::T_CaseExpr;
    (*case).casetype = pg_sys::exprType(then);
    (*case).casecollid = pg_sys::exprCollation(then);
    (*case).args = pg_sys::lappend(std::ptr::null_mut(), when as *mut c_void);
    (*case).defresult = otherwise as *mut pg_sys::Expr;
    (*case).location = -1;
    case as *mut pg_sys::Node
}

/// Scalar subquery target `target` (at the subquery's level) evaluated over no
/// rows, as an expression of the block: each aggregate replaced by its value
/// over no input (computed now), outer references moved one level in.
unsafe fn over_no_rows(target: *mut pg_sys::Node, aggrefs: &[*mut pg_sys::Aggref]) -> PgtResult<*mut pg_sys::Node> {
    let mut values = Vec::new();
    for a in aggrefs {
        values.push(empty_aggregate_value(*a)?);
    }
    let mut m = Remap { columns: aggrefs.iter().map(|a| *a as *mut pg_sys::Node).collect(), vars: values };
    let replaced = remap_columns(pg_sys::copyObjectImpl(target as *const c_void) as *mut pg_sys::Node, &mut m as *mut Remap as *mut c_void);
    if !inner_vars(replaced).is_empty() {
        return Err(PgtError::internal("a scalar aggregate subquery's column reads its rows outside an aggregate"));
    }
    Ok(lower_outer_references(replaced, &mut 0))
}

/// The value aggregate `a` has over no rows, as a constant.
unsafe fn empty_aggregate_value(a: *mut pg_sys::Aggref) -> PgtResult<*mut pg_sys::Node> {
    let (nsp, name) = super::function_name((*a).aggfnoid)?;
    let args = if (*a).aggstar {
        "*".to_string()
    } else {
        let mut parts = Vec::new();
        for te in PgList::<pg_sys::TargetEntry>::from_pg((*a).args).iter_ptr().filter(|te| !(**te).resjunk) {
            let e = (*te).expr as *mut pg_sys::Node;
            parts.push(format!("NULL::{}", format_type(pg_sys::exprType(e), pg_sys::exprTypmod(e))?));
        }
        parts.join(", ")
    };
    let sql = format!(
        "SELECT ({}.{}({args}))::text WHERE false",
        pgt_core::ident::quote_ident(&nsp),
        pgt_core::ident::quote_ident(&name)
    );
    let text = crate::privilege::with_pinned_search_path(|| crate::spi::query_one::<String>(&sql, &[]))?;
    let typ = (*a).aggtype;
    Ok(match text {
        None => pg_sys::makeNullConst(typ, -1, (*a).aggcollid) as *mut pg_sys::Node,
        Some(text) => {
            let (mut input, mut ioparam) = (pg_sys::InvalidOid, pg_sys::InvalidOid);
            pg_sys::getTypeInputInfo(typ, &mut input, &mut ioparam);
            let c = CString::new(text).map_err(|_| PgtError::internal("aggregate value contains a NUL byte"))?;
            let datum = pg_sys::OidInputFunctionCall(input, c.as_ptr() as *mut _, ioparam, -1);
            let (mut len, mut byval) = (0i16, false);
            pg_sys::get_typlenbyval(typ, &mut len, &mut byval);
            pg_sys::makeConst(typ, -1, (*a).aggcollid, len as i32, datum, false, byval) as *mut pg_sys::Node
        }
    })
}

/// The FROM input of the block and its placeholder column that `outer` (an
/// outer reference, possibly relabelled) reads, if it is a plain column of a
/// restrictable input.
unsafe fn block_column(rw: &Rewriter, outer: *mut pg_sys::Node) -> Option<(usize, String)> {
    let mut e = outer;
    while pgrx::is_a(e, pg_sys::NodeTag::T_RelabelType) {
        e = (*(e as *mut pg_sys::RelabelType)).arg as *mut pg_sys::Node;
    }
    if !pgrx::is_a(e, pg_sys::NodeTag::T_Var) {
        return None;
    }
    let v = e as *mut pg_sys::Var;
    if (*v).varlevelsup != 1 || (*v).varattno <= 0 {
        return None;
    }
    let rte = PgList::<pg_sys::RangeTblEntry>::from_pg((*rw.block).rtable).get_ptr(((*v).varno - 1) as usize)?;
    if (*rte).rtekind != pg_sys::RTEKind::RTE_CTE || (*rte).ctename.is_null() {
        return None;
    }
    let placeholder = CStr::from_ptr((*rte).ctename).to_string_lossy().into_owned();
    let index = rw.inputs.iter().position(|i| i.placeholder == placeholder && i.presence.is_none())?;
    let names = PgList::<pg_sys::Node>::from_pg((*(*rte).eref).colnames);
    let name = names.get_ptr(((*v).varattno - 1) as usize)?;
    Some((index, CStr::from_ptr((*(name as *mut pg_sys::String)).sval).to_string_lossy().into_owned()))
}

/// `c` as a correlation pair, if it is `a <op> b` with an equality operator,
/// one side reading only the subquery's FROM and the other only the block.
pub(super) unsafe fn equality_pair(c: *mut pg_sys::Node) -> Option<Pair> {
    if !pgrx::is_a(c, pg_sys::NodeTag::T_OpExpr) {
        return None;
    }
    let op = c as *mut pg_sys::OpExpr;
    let args = PgList::<pg_sys::Node>::from_pg((*op).args);
    if args.len() != 2 || (*op).opretset {
        return None;
    }
    let (a, b) = (args.get_ptr(0)?, args.get_ptr(1)?);
    let side = |e: *mut pg_sys::Node| -> (bool, bool) {
        let r = references(e, 0);
        (r.level1, pg_sys::contain_vars_of_level(e, 0) || has_sublink(e))
    };
    let ((a_outer, a_inner), (b_outer, b_inner)) = (side(a), side(b));
    let equality = pg_sys::op_mergejoinable((*op).opno, pg_sys::exprType(a)) || pg_sys::op_hashjoinable((*op).opno, pg_sys::exprType(a));
    if !equality {
        return None;
    }
    if a_inner && !a_outer && b_outer && !b_inner {
        Some(Pair { inner: a, outer: b, opno: (*op).opno, inner_on_left: true })
    } else if b_inner && !b_outer && a_outer && !a_inner {
        Some(Pair { inner: b, outer: a, opno: (*op).opno, inner_on_left: false })
    } else {
        None
    }
}

/// What a subtree references outside itself, relative to the query level it
/// belongs to.
#[derive(Default)]
struct References {
    /// Columns of the query one level out (the block).
    level1: bool,
    /// Columns of queries further out.
    beyond: bool,
    /// Aggregates of an outer level.
    outer_aggregate: bool,
}

struct RefWalk {
    depth: u32,
    refs: References,
}

/// The outer references of `node`, an expression or query at the level of a
/// subquery (`depth` 0).
unsafe fn references(node: *mut pg_sys::Node, depth: u32) -> References {
    let mut w = RefWalk { depth, refs: References::default() };
    let ctx = &mut w as *mut RefWalk as *mut c_void;
    if !node.is_null() && pgrx::is_a(node, pg_sys::NodeTag::T_Query) {
        pg_sys::query_tree_walker(node as *mut pg_sys::Query, Some(walk_references), ctx, 0);
    } else {
        walk_references(node, ctx);
    }
    w.refs
}

#[pg_guard]
unsafe extern "C-unwind" fn walk_references(node: *mut pg_sys::Node, ctx: *mut c_void) -> bool {
    if node.is_null() {
        return false;
    }
    let w = &mut *(ctx as *mut RefWalk);
    let classify = |levels: u32, w: &mut RefWalk| {
        if levels == w.depth + 1 {
            w.refs.level1 = true;
        } else if levels > w.depth + 1 {
            w.refs.beyond = true;
        }
    };
    if pgrx::is_a(node, pg_sys::NodeTag::T_Var) {
        classify((*(node as *mut pg_sys::Var)).varlevelsup, w);
        return false;
    }
    if pgrx::is_a(node, pg_sys::NodeTag::T_Aggref) && (*(node as *mut pg_sys::Aggref)).agglevelsup > w.depth {
        w.refs.outer_aggregate = true;
    }
    if pgrx::is_a(node, pg_sys::NodeTag::T_GroupingFunc) && (*(node as *mut pg_sys::GroupingFunc)).agglevelsup > w.depth {
        w.refs.outer_aggregate = true;
    }
    if pgrx::is_a(node, pg_sys::NodeTag::T_PlaceHolderVar) {
        classify((*(node as *mut pg_sys::PlaceHolderVar)).phlevelsup, w);
    }
    if pgrx::is_a(node, pg_sys::NodeTag::T_Query) {
        w.depth += 1;
        let r = pg_sys::query_tree_walker(node as *mut pg_sys::Query, Some(walk_references), ctx, 0);
        let w = &mut *(ctx as *mut RefWalk);
        w.depth -= 1;
        return r;
    }
    pg_sys::expression_tree_walker(node, Some(walk_references), ctx)
}

#[pg_guard]
unsafe extern "C-unwind" fn find_sublink(node: *mut pg_sys::Node, ctx: *mut c_void) -> bool {
    if node.is_null() {
        return false;
    }
    if pgrx::is_a(node, pg_sys::NodeTag::T_SubLink) {
        *(ctx as *mut bool) = true;
        return true;
    }
    pg_sys::expression_tree_walker(node, Some(find_sublink), ctx)
}

/// Whether `node` contains a subquery expression (not looking into nested queries' own ones).
pub(super) unsafe fn has_sublink(node: *mut pg_sys::Node) -> bool {
    let mut found = false;
    find_sublink(node, &mut found as *mut bool as *mut c_void);
    found
}

#[pg_guard]
unsafe extern "C-unwind" fn collect_inner_vars(node: *mut pg_sys::Node, ctx: *mut c_void) -> bool {
    if node.is_null() {
        return false;
    }
    if pgrx::is_a(node, pg_sys::NodeTag::T_Var) {
        let out = &mut *(ctx as *mut Vec<*mut pg_sys::Node>);
        if (*(node as *mut pg_sys::Var)).varlevelsup == 0 && !out.iter().any(|v| pg_sys::equal(*v as *const c_void, node as *const c_void)) {
            out.push(node);
        }
        return false;
    }
    if pgrx::is_a(node, pg_sys::NodeTag::T_Query) {
        return false;
    }
    pg_sys::expression_tree_walker(node, Some(collect_inner_vars), ctx)
}

/// The distinct columns of the subquery's own level that `node` reads.
unsafe fn inner_vars(node: *mut pg_sys::Node) -> Vec<*mut pg_sys::Node> {
    let mut out: Vec<*mut pg_sys::Node> = Vec::new();
    collect_inner_vars(node, &mut out as *mut Vec<*mut pg_sys::Node> as *mut c_void);
    out
}

#[pg_guard]
unsafe extern "C-unwind" fn collect_aggregates(node: *mut pg_sys::Node, ctx: *mut c_void) -> bool {
    if node.is_null() {
        return false;
    }
    if pgrx::is_a(node, pg_sys::NodeTag::T_Aggref) && (*(node as *mut pg_sys::Aggref)).agglevelsup == 0 {
        (*(ctx as *mut Vec<*mut pg_sys::Aggref>)).push(node as *mut pg_sys::Aggref);
        return false;
    }
    if pgrx::is_a(node, pg_sys::NodeTag::T_Query) {
        return false;
    }
    pg_sys::expression_tree_walker(node, Some(collect_aggregates), ctx)
}

/// The aggregate calls of the subquery's own level in `node`.
unsafe fn aggregates_of(node: *mut pg_sys::Node) -> Vec<*mut pg_sys::Aggref> {
    let mut out: Vec<*mut pg_sys::Aggref> = Vec::new();
    collect_aggregates(node, &mut out as *mut Vec<*mut pg_sys::Aggref> as *mut c_void);
    out
}

/// Replacement of subexpressions equal to `columns[i]` by `vars[i]`.
struct Remap {
    columns: Vec<*mut pg_sys::Node>,
    vars: Vec<*mut pg_sys::Node>,
}

#[pg_guard]
unsafe extern "C-unwind" fn remap_columns(node: *mut pg_sys::Node, ctx: *mut c_void) -> *mut pg_sys::Node {
    if node.is_null() {
        return node;
    }
    let m = &*(ctx as *mut Remap);
    if let Some(i) = m.columns.iter().position(|c| pg_sys::equal(*c as *const c_void, node as *const c_void)) {
        return pg_sys::copyObjectImpl(m.vars[i] as *const c_void) as *mut pg_sys::Node;
    }
    if pgrx::is_a(node, pg_sys::NodeTag::T_Query) {
        return node;
    }
    pg_sys::expression_tree_mutator_impl(node, Some(remap_columns), ctx)
}

#[pg_guard]
unsafe extern "C-unwind" fn lower_levels(node: *mut pg_sys::Node, ctx: *mut c_void) -> *mut pg_sys::Node {
    if node.is_null() {
        return node;
    }
    if pgrx::is_a(node, pg_sys::NodeTag::T_Var) {
        let v = pg_sys::copyObjectImpl(node as *const c_void) as *mut pg_sys::Var;
        if (*v).varlevelsup > 0 {
            (*v).varlevelsup -= 1;
        }
        return v as *mut pg_sys::Node;
    }
    pg_sys::expression_tree_mutator_impl(node, Some(lower_levels), ctx)
}

/// `node` (an expression of a subquery without inner columns) as an expression
/// of the block: its outer references move one level in.
pub(super) unsafe fn lower_outer_references(node: *mut pg_sys::Node, ctx: &mut i32) -> *mut pg_sys::Node {
    lower_levels(node, ctx as *mut i32 as *mut c_void)
}

pub(super) unsafe fn list_of(nodes: &[*mut pg_sys::Node]) -> *mut pg_sys::List {
    let mut list: *mut pg_sys::List = std::ptr::null_mut();
    for n in nodes {
        list = pg_sys::lappend(list, *n as *mut c_void);
    }
    list
}
