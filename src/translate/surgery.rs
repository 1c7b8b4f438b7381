//! Operations on copies of PostgreSQL's analysed query tree for the translation
//! (see the parent module). Every function here works on a `copyObject` of the
//! query it is given and leaves the original untouched.

use super::placeholder::{cstring, string_node, to_child_placeholder};
use super::{deparse, RelationInfo, Unsupported};
use crate::error::{PgtError, PgtResult};
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgList;
use pgt_delta::{Block, Input, Source};
use std::ffi::{c_void, CStr, CString};

/// Names of the query's visible (non-junk) output columns.
pub unsafe fn visible_names(q: *mut pg_sys::Query) -> Vec<String> {
    PgList::<pg_sys::TargetEntry>::from_pg((*q).targetList)
        .iter_ptr()
        .filter(|te| !(**te).resjunk)
        .map(|te| CStr::from_ptr((*te).resname).to_string_lossy().into_owned())
        .collect()
}

/// The GROUP BY expressions, in clause order.
pub unsafe fn group_expressions(q: *mut pg_sys::Query) -> Vec<*mut pg_sys::Node> {
    clause_expressions(q, (*q).groupClause)
}

/// The DISTINCT expressions, in clause order.
pub unsafe fn distinct_expressions(q: *mut pg_sys::Query) -> Vec<*mut pg_sys::Node> {
    clause_expressions(q, (*q).distinctClause)
}

/// The target expressions a list of `SortGroupClause`s of `q` refers to, in order.
unsafe fn clause_expressions(q: *mut pg_sys::Query, clauses: *mut pg_sys::List) -> Vec<*mut pg_sys::Node> {
    let tlist = PgList::<pg_sys::TargetEntry>::from_pg((*q).targetList);
    PgList::<pg_sys::SortGroupClause>::from_pg(clauses)
        .iter_ptr()
        .filter_map(|sgc| {
            tlist
                .iter_ptr()
                .find(|te| (**te).ressortgroupref == (*sgc).tleSortGroupRef)
                .map(|te| (*te).expr as *mut pg_sys::Node)
        })
        .collect()
}

struct AggrefCollector {
    found: Vec<*mut pg_sys::Aggref>,
}

#[pg_guard]
unsafe extern "C-unwind" fn collect_aggrefs(node: *mut pg_sys::Node, ctx: *mut c_void) -> bool {
    if node.is_null() {
        return false;
    }
    let c = &mut *(ctx as *mut AggrefCollector);
    if pgrx::is_a(node, pg_sys::NodeTag::T_Query) {
        // A subquery's own aggregates are not this level's.
        return false;
    }
    if pgrx::is_a(node, pg_sys::NodeTag::T_Aggref) {
        if !c.found.iter().any(|a| pg_sys::equal(*a as *const c_void, node as *const c_void)) {
            c.found.push(node as *mut pg_sys::Aggref);
        }
        return false;
    }
    pg_sys::expression_tree_walker(node, Some(collect_aggrefs), ctx)
}

/// The distinct aggregate calls of the target list and HAVING, in order of
/// appearance.
pub unsafe fn aggrefs(q: *mut pg_sys::Query) -> Vec<*mut pg_sys::Aggref> {
    let mut c = AggrefCollector { found: Vec::new() };
    let ctx = &mut c as *mut AggrefCollector as *mut c_void;
    collect_aggrefs((*q).targetList as *mut pg_sys::Node, ctx);
    collect_aggrefs((*q).havingQual, ctx);
    c.found
}

#[pg_guard]
unsafe extern "C-unwind" fn find_whole_row(node: *mut pg_sys::Node, ctx: *mut c_void) -> bool {
    if node.is_null() {
        return false;
    }
    if pgrx::is_a(node, pg_sys::NodeTag::T_Var) && (*(node as *mut pg_sys::Var)).varattno == 0 {
        *(ctx as *mut bool) = true;
        return true;
    }
    if pgrx::is_a(node, pg_sys::NodeTag::T_Query) {
        return pg_sys::query_tree_walker(
            node as *mut pg_sys::Query,
            Some(find_whole_row),
            ctx,
            pg_sys::QTW_IGNORE_JOINALIASES as i32,
        );
    }
    if pgrx::is_a(node, pg_sys::NodeTag::T_RangeTblEntry) {
        return false;
    }
    pg_sys::expression_tree_walker(node, Some(find_whole_row), ctx)
}

/// Whether the query uses a whole-row reference (`t.*` or `t` as a value), which
/// would see the placeholder's weight column.
pub unsafe fn has_whole_row_reference(q: *mut pg_sys::Query) -> bool {
    let mut found = false;
    pg_sys::query_tree_walker(
        q,
        Some(find_whole_row),
        &mut found as *mut bool as *mut c_void,
        pg_sys::QTW_IGNORE_JOINALIASES as i32,
    );
    found
}

/// Whether the join tree under `node` has a NATURAL join (whose re-parse over the
/// placeholders would also join on the weight columns).
pub unsafe fn has_natural_join(node: *mut pg_sys::Node) -> bool {
    joins_in(node).iter().any(|j| (**j).isNatural)
}

/// What the input template outputs besides the inputs' weights.
pub enum Targets {
    /// The query's visible columns, then these named expressions.
    KeepVisible(Vec<(String, *mut pg_sys::Node)>),
    /// Only these named expressions.
    Replace(Vec<(String, *mut pg_sys::Node)>),
}

/// A copy of the query whose base relations, at every depth, have become
/// placeholders; with, per input, its weight and key columns as expressions valid
/// at the top level (subqueries pass them up through their target lists).
pub struct Prepared {
    copy: *mut pg_sys::Query,
    /// The inputs, in discovery order (depth first).
    pub inputs: Vec<Input>,
    weights: Vec<*mut pg_sys::Node>,
    /// Per input, its key columns at the top level.
    pub keys: Vec<Vec<*mut pg_sys::Node>>,
    /// The LEFT / RIGHT joins of the top level.
    outer_joins: Vec<OuterJoin>,
    /// Identity parts that belong to no input: the ordinality of each
    /// set-returning function in FROM ([`FromFunctions`]).
    pub row_keys: Vec<*mut pg_sys::Node>,
    /// A table function in FROM (JSON_TABLE, XMLTABLE) gives rows no
    /// identity: the block's rows are identified by content and multiplicity.
    pub keyless: bool,
}

/// What the set-returning functions and table functions in the top level's
/// FROM add to a block. A function in FROM reads only its arguments — columns
/// of the FROM items before it (LATERAL) or constants — so the block stays
/// linear in each input: a changed input row changes exactly its own
/// expansion, and the function needs no delta of its own. Its rows are told
/// apart by their ordinality (`WITH ORDINALITY` is added when not written);
/// a table function has none, and makes the block's rows keyless.
#[derive(Default)]
struct FromFunctions {
    row_keys: Vec<*mut pg_sys::Node>,
    keyless: bool,
}

/// One input surfaced at some query level.
struct Surfaced {
    index: usize,
    /// The range-table index at that level it comes from (a base relation, or
    /// the subquery that passed it up).
    rtindex: i32,
    weight: *mut pg_sys::Node,
    keys: Vec<*mut pg_sys::Node>,
}

/// A LEFT or RIGHT join of the block's top level (in the prepared copy).
struct OuterJoin {
    join: *mut pg_sys::JoinExpr,
    /// Its preserved side (a jointree node).
    preserved: *mut pg_sys::Node,
    /// The input that is its nullable side.
    nullable: usize,
    /// The keyed inputs of its preserved side that are not themselves the
    /// nullable side of a join (see `pgt_delta::NullableSide::restricted`).
    restricted: Vec<usize>,
}

/// Copies `q` and turns every base relation into a placeholder (see [`Prepared`]).
/// Subqueries in FROM must be select-project-join blocks.
/// `anti` lists the range-table indexes of LEFT / RIGHT joins whose nullable
/// side must be absent (FULL JOIN variants, see `full_join_variants`).
pub unsafe fn prepare(q: *mut pg_sys::Query, anti: &[i32]) -> PgtResult<Result<Prepared, Unsupported>> {
    let copy = pg_sys::copyObjectImpl(q as *const c_void) as *mut pg_sys::Query;
    let mut inputs = Vec::new();
    let force_child = match nullable_items_to_materialize(copy)? {
        Ok(f) => f,
        Err(u) => return Ok(Err(u)),
    };
    let mut functions = FromFunctions::default();
    let surfaced = match prepare_level(copy, &mut inputs, &force_child, Some(&mut functions))? {
        Ok(s) => s,
        Err(u) => return Ok(Err(u)),
    };
    if (!functions.row_keys.is_empty() || functions.keyless)
        && PgList::<pg_sys::RangeTblEntry>::from_pg((*copy).rtable).iter_ptr().any(|rte| {
            (*rte).rtekind == pg_sys::RTEKind::RTE_JOIN && (*rte).jointype != pg_sys::JoinType::JOIN_INNER
        })
    {
        return Ok(Err(Unsupported("functions in FROM together with outer joins".into())));
    }
    if (*copy).hasSubLinks {
        if let Err(u) = super::sublink::decorrelate(copy, &mut inputs)? {
            return Ok(Err(u));
        }
    }
    // References to joins' output columns become what they stand for (see
    // `finish`); done on the join tree before its nodes are recorded, as the
    // mutator returns a new tree.
    (*copy).jointree = pg_sys::flatten_join_alias_vars(std::ptr::null_mut(), copy, (*copy).jointree as *mut pg_sys::Node) as *mut pg_sys::FromExpr;
    let outer_joins = match outer_joins(copy, &surfaced, &inputs, anti)? {
        Ok(o) => o,
        Err(u) => return Ok(Err(u)),
    };
    let mut weights = vec![std::ptr::null_mut(); inputs.len()];
    let mut keys = vec![Vec::new(); inputs.len()];
    for s in surfaced {
        weights[s.index] = s.weight;
        keys[s.index] = s.keys;
    }
    Ok(Ok(Prepared { copy, inputs, weights, keys, outer_joins, row_keys: functions.row_keys, keyless: functions.keyless }))
}

/// Calls `visit` on every node of jointree `node` (FromExpr, JoinExpr,
/// RangeTblRef), depth first: a join before its two sides.
unsafe fn walk_jointree(node: *mut pg_sys::Node, visit: &mut dyn FnMut(*mut pg_sys::Node)) {
    if node.is_null() {
        return;
    }
    visit(node);
    if pgrx::is_a(node, pg_sys::NodeTag::T_FromExpr) {
        for item in PgList::<pg_sys::Node>::from_pg((*(node as *mut pg_sys::FromExpr)).fromlist).iter_ptr() {
            walk_jointree(item, visit);
        }
    } else if pgrx::is_a(node, pg_sys::NodeTag::T_JoinExpr) {
        let j = node as *mut pg_sys::JoinExpr;
        walk_jointree((*j).larg, visit);
        walk_jointree((*j).rarg, visit);
    }
}

/// The JoinExprs under jointree `node` (itself included), outermost first.
unsafe fn joins_in(node: *mut pg_sys::Node) -> Vec<*mut pg_sys::JoinExpr> {
    let mut out = Vec::new();
    walk_jointree(node, &mut |n| {
        if pgrx::is_a(n, pg_sys::NodeTag::T_JoinExpr) {
            out.push(n as *mut pg_sys::JoinExpr);
        }
    });
    out
}

/// The range-table indexes of the FROM items (not joins) under jointree `node`.
unsafe fn items_under(node: *mut pg_sys::Node) -> Vec<i32> {
    let mut out = Vec::new();
    walk_jointree(node, &mut |n| {
        if pgrx::is_a(n, pg_sys::NodeTag::T_RangeTblRef) {
            out.push((*(n as *mut pg_sys::RangeTblRef)).rtindex);
        }
    });
    out
}

/// The inputs read under jointree `node` (of the top level).
unsafe fn inputs_under(node: *mut pg_sys::Node, surfaced: &[Surfaced]) -> Vec<usize> {
    items_under(node)
        .into_iter()
        .flat_map(|rtindex| surfaced.iter().filter(move |s| s.rtindex == rtindex).map(|s| s.index))
        .collect()
}

/// `ROW(x.*, y.*, …)::text` over the FROM items under jointree node `preserved`
/// of `q`: the content of a preserved row of an outer join, as the identity
/// the outer-join rule groups by (`pgt_delta::join`). Text identifies a row
/// image exactly within one statement, whatever its column types.
unsafe fn preserved_content(q: *mut pg_sys::Query, preserved: *mut pg_sys::Node) -> PgtResult<*mut pg_sys::Node> {
    let items = items_under(preserved);
    let rtable = PgList::<pg_sys::RangeTblEntry>::from_pg((*q).rtable);
    let mut args: *mut pg_sys::List = std::ptr::null_mut();
    for rtindex in items {
        let rte = rtable.get_ptr((rtindex - 1) as usize).ok_or_else(|| PgtError::internal("FROM item not in the range table"))?;
        let var = pg_sys::makeWholeRowVar(rte, rtindex, 0, false);
        args = pg_sys::lappend(args, var as *mut c_void);
    }
    let row = pg_sys::palloc0(std::mem::size_of::<pg_sys::RowExpr>()) as *mut pg_sys::RowExpr;
    (*row).xpr.type_ = pg_sys::NodeTag::T_RowExpr;
    (*row).args = args;
    (*row).row_typeid = pg_sys::RECORDOID;
    (*row).row_format = pg_sys::CoercionForm::COERCE_EXPLICIT_CALL;
    (*row).location = -1;
    let text = pg_sys::palloc0(std::mem::size_of::<pg_sys::CoerceViaIO>()) as *mut pg_sys::CoerceViaIO;
    (*text).xpr.type_ = pg_sys::NodeTag::T_CoerceViaIO;
    (*text).arg = row as *mut pg_sys::Expr;
    (*text).resulttype = pg_sys::TEXTOID;
    (*text).resultcollid = pg_sys::DEFAULT_COLLATION_OID;
    (*text).coerceformat = pg_sys::CoercionForm::COERCE_EXPLICIT_CAST;
    (*text).location = -1;
    Ok(text as *mut pg_sys::Node)
}

/// The top level's outer joins, each with its nullable input. The nullable side
/// must be one base relation with a key (its old state is bound as a set, by
/// key), and its join condition gains `AND <its weight> <> 0`, so that a row
/// the old state lacks (weight 0, see `pgt_delta::scan::old_present_sql`) is
/// no match.
unsafe fn outer_joins(q: *mut pg_sys::Query, surfaced: &[Surfaced], inputs: &[Input], anti: &[i32]) -> PgtResult<Result<Vec<OuterJoin>, Unsupported>> {
    let joins: Vec<*mut pg_sys::JoinExpr> = joins_in((*q).jointree as *mut pg_sys::Node)
        .into_iter()
        .filter(|j| matches!((**j).jointype, pg_sys::JoinType::JOIN_LEFT | pg_sys::JoinType::JOIN_RIGHT))
        .collect();
    if joins.is_empty() {
        return Ok(Ok(Vec::new()));
    }
    let rtable = PgList::<pg_sys::RangeTblEntry>::from_pg((*q).rtable);
    let mut found = Vec::new();
    for j in joins {
        let (nullable_node, preserved_node) = match (*j).jointype {
            pg_sys::JoinType::JOIN_LEFT => ((*j).rarg, (*j).larg),
            _ => ((*j).larg, (*j).rarg),
        };
        let side = if (*j).jointype == pg_sys::JoinType::JOIN_LEFT { "LEFT JOIN" } else { "RIGHT JOIN" };
        let base = pgrx::is_a(nullable_node, pg_sys::NodeTag::T_RangeTblRef)
            && rtable
                .get_ptr(((*(nullable_node as *mut pg_sys::RangeTblRef)).rtindex - 1) as usize)
                .is_some_and(|rte| (*rte).rtekind == pg_sys::RTEKind::RTE_CTE);
        if !base {
            return Ok(Err(Unsupported(format!("{side} whose nullable side is a join (write the join as a subquery)"))));
        }
        let rtindex = (*(nullable_node as *mut pg_sys::RangeTblRef)).rtindex;
        let Some(r) = surfaced.iter().find(|s| s.rtindex == rtindex) else {
            return Err(PgtError::internal("the nullable side of an outer join is not an input"));
        };
        if inputs[r.index].source.key().is_empty() {
            return Err(PgtError::internal("the nullable side of an outer join has no key"));
        }
        let preserved = inputs_under(preserved_node, surfaced);
        let nonzero = pg_sys::make_opclause(
            int8_not_equal()?,
            pg_sys::BOOLOID,
            false,
            pg_sys::copyObjectImpl(r.weight as *const c_void) as *mut pg_sys::Expr,
            pg_sys::makeConst(pg_sys::INT8OID, -1, pg_sys::InvalidOid, 8, pg_sys::Datum::from(0i64), false, true) as *mut pg_sys::Expr,
            pg_sys::InvalidOid,
            pg_sys::InvalidOid,
        );
        (*j).quals = pg_sys::make_and_qual((*j).quals, nonzero as *mut pg_sys::Node);
        // A USING join is deparsed as `USING (...)`, without its quals: the
        // conditions added here would be lost. Its quals already hold the
        // USING equalities; it becomes an ON join (references to its merged
        // columns are flattened in `finish`).
        (*j).usingClause = std::ptr::null_mut();
        (*j).join_using_alias = std::ptr::null_mut();
        // `AND <first key column> IS NOT NULL` (always true): it makes the
        // condition strict in that column, so that the planner turns the
        // presence test `LEFT JOIN … WHERE <key> IS NULL` into an anti-join,
        // which stops at the first match.
        let Some(key) = r.keys.first() else {
            return Err(PgtError::internal("the nullable side of an outer join has no key column"));
        };
        let not_null = pg_sys::palloc0(std::mem::size_of::<pg_sys::NullTest>()) as *mut pg_sys::NullTest;
        (*not_null).xpr.type_ = pg_sys::NodeTag::T_NullTest;
        (*not_null).arg = pg_sys::copyObjectImpl(*key as *const c_void) as *mut pg_sys::Expr;
        (*not_null).nulltesttype = pg_sys::NullTestType::IS_NOT_NULL;
        (*not_null).argisrow = false;
        (*not_null).location = -1;
        (*j).quals = pg_sys::make_and_qual((*j).quals, not_null as *mut pg_sys::Node);
        if anti.contains(&(*j).rtindex) {
            // Only the preserved rows without a match: the nullable side's key
            // (never NULL in a real row) is NULL.
            let is_null = pg_sys::palloc0(std::mem::size_of::<pg_sys::NullTest>()) as *mut pg_sys::NullTest;
            (*is_null).xpr.type_ = pg_sys::NodeTag::T_NullTest;
            (*is_null).arg = pg_sys::copyObjectImpl(*key as *const c_void) as *mut pg_sys::Expr;
            (*is_null).nulltesttype = pg_sys::NullTestType::IS_NULL;
            (*is_null).location = -1;
            let jt = (*q).jointree;
            (*jt).quals = pg_sys::make_and_qual((*jt).quals, is_null as *mut pg_sys::Node);
        }
        found.push(OuterJoin { join: j, preserved: preserved_node, nullable: r.index, restricted: preserved });
    }
    let nullable: Vec<usize> = found.iter().map(|o| o.nullable).collect();
    for o in &mut found {
        o.restricted.retain(|q| !nullable.contains(q) && !inputs[*q].source.key().is_empty());
    }
    Ok(Ok(found))
}

/// `OPERATOR(pg_catalog.<>)` for `bigint`.
fn int8_not_equal() -> PgtResult<pg_sys::Oid> {
    crate::spi::query_one::<pg_sys::Oid>(
        "SELECT 'pg_catalog.<>(pg_catalog.int8, pg_catalog.int8)'::pg_catalog.regoperator::pg_catalog.oid",
        &[],
    )?
    .ok_or_else(|| PgtError::internal("operator <> for bigint not found"))
}

/// Turns the FROM items of query level `q` into placeholders (recursing into
/// inlined subqueries), appending the inputs to `inputs`. Subqueries that are
/// not plain select-project-join blocks, and those whose range-table index is
/// in `force_child` (nullable sides of outer joins), become child operators.
unsafe fn prepare_level(
    q: *mut pg_sys::Query,
    inputs: &mut Vec<Input>,
    force_child: &[i32],
    mut functions: Option<&mut FromFunctions>,
) -> PgtResult<Result<Vec<Surfaced>, Unsupported>> {
    let rtable = PgList::<pg_sys::RangeTblEntry>::from_pg((*q).rtable);
    let mut surfaced = Vec::new();
    for (i, rte) in rtable.iter_ptr().enumerate() {
        let varno = (i + 1) as i32;
        match (*rte).rtekind {
            pg_sys::RTEKind::RTE_RELATION => {
                if !(*rte).tablesample.is_null() {
                    return Ok(Err(Unsupported("TABLESAMPLE".into())));
                }
                if !(*rte).inh && (*rte).relkind as u8 == pg_sys::RELKIND_PARTITIONED_TABLE {
                    // Its change buffer holds every partition's changes.
                    return Ok(Err(Unsupported("FROM ONLY on a partitioned table".into())));
                }
                let (reason, info) = super::relation_info((*rte).relid)?;
                if let Some(reason) = reason {
                    return Ok(Err(Unsupported(reason)));
                }
                let index = inputs.len();
                let placeholder = pgt_delta::names::placeholder(index + 1);
                let only = !(*rte).inh;
                let weight = pg_sys::makeVar(varno, (info.relation.columns.len() + 1) as i16, pg_sys::INT8OID, -1, pg_sys::InvalidOid, 0);
                let keys = info
                    .key_attnums
                    .iter()
                    .map(|attnum| {
                        let (typ, typmod, coll) = info.types[(*attnum - 1) as usize];
                        pg_sys::makeVar(varno, *attnum, typ, typmod, coll, 0) as *mut pg_sys::Node
                    })
                    .collect();
                to_placeholder(rte, &placeholder, &info);
                inputs.push(Input { placeholder, source: Source::Relation(info.relation), only, nullable: None, presence: None });
                surfaced.push(Surfaced { index, rtindex: varno, weight: weight as *mut pg_sys::Node, keys });
            }
            pg_sys::RTEKind::RTE_SUBQUERY => {
                let sub = (*rte).subquery;
                // (A correlated one was rewritten before: translate/lateral.rs.)
                if (*rte).lateral && pg_sys::contain_vars_of_level(sub as *mut pg_sys::Node, 1) {
                    return Ok(Err(Unsupported("LATERAL subqueries".into())));
                }
                // A subquery with functions in FROM is a child: its own block
                // has them at its top level.
                if super::needs_child(&*sub) || force_child.contains(&varno) || has_from_functions(&*sub) {
                    let prefix = if (*sub).hasWindowFuncs { super::prefix::prefix_filter(q, varno) } else { None };
                    let child = match super::translate_child(sub, prefix)? {
                        Ok(c) => c,
                        Err(u) => return Ok(Err(u)),
                    };
                    let index = inputs.len();
                    let placeholder = pgt_delta::names::placeholder(index + 1);
                    let n = child.types.len();
                    to_child_placeholder(rte, &placeholder, &child.types);
                    let weight = pg_sys::makeVar(varno, (n + 2) as i16, pg_sys::INT8OID, -1, pg_sys::InvalidOid, 0);
                    let row_id = pg_sys::makeVar(varno, (n + 1) as i16, pg_sys::INT8OID, -1, pg_sys::InvalidOid, 0);
                    inputs.push(Input { placeholder, source: Source::Node(Box::new(child.node)), only: false, nullable: None, presence: None });
                    surfaced.push(Surfaced {
                        index,
                        rtindex: varno,
                        weight: weight as *mut pg_sys::Node,
                        keys: vec![row_id as *mut pg_sys::Node],
                    });
                    continue;
                }
                if let Some(construct) = super::unsupported_from_item(&*sub) {
                    return Ok(Err(Unsupported(construct)));
                }
                // A view whose columns were renamed, or a WITH query with a
                // column list (`WITH c(a, b) AS ...`), names its columns in eref
                // only; as an alias they are printed when deparsed.
                let eref = (*rte).eref;
                if (*rte).alias.is_null() || (*(*rte).alias).colnames.is_null() {
                    let colnames = pg_sys::copyObjectImpl((*eref).colnames as *const c_void) as *mut pg_sys::List;
                    (*rte).alias = pg_sys::makeAlias((*eref).aliasname, colnames);
                }
                let inner = match prepare_level(sub, inputs, &[], None)? {
                    Ok(s) => s,
                    Err(u) => return Ok(Err(u)),
                };
                // Pass each inner input's weight and keys up through the
                // subquery's target list. The new entries go after the visible
                // ones and before the junk ones (ORDER BY / GROUP BY expressions
                // not selected), which are renumbered: the range-table entry's
                // column names cover only the visible entries.
                let entries = PgList::<pg_sys::TargetEntry>::from_pg((*sub).targetList);
                let mut tlist: *mut pg_sys::List = std::ptr::null_mut();
                let mut junk = Vec::new();
                for te in entries.iter_ptr() {
                    if (*te).resjunk {
                        junk.push(te);
                    } else {
                        tlist = pg_sys::lappend(tlist, te as *mut c_void);
                    }
                }
                let mut next_resno = PgList::<pg_sys::TargetEntry>::from_pg(tlist).len() as i16;
                let mut lift = |expr: *mut pg_sys::Node, name: &str, tlist: &mut *mut pg_sys::List| -> *mut pg_sys::Node {
                    next_resno += 1;
                    let te = pg_sys::makeTargetEntry(expr as *mut pg_sys::Expr, next_resno, cstring(name), false);
                    *tlist = pg_sys::lappend(*tlist, te as *mut c_void);
                    (*eref).colnames = pg_sys::lappend((*eref).colnames, string_node(name));
                    pg_sys::makeVar(varno, next_resno, pg_sys::exprType(expr), pg_sys::exprTypmod(expr), pg_sys::exprCollation(expr), 0)
                        as *mut pg_sys::Node
                };
                for s in inner {
                    let weight = lift(s.weight, &pgt_delta::names::weight_of(s.index + 1), &mut tlist);
                    let keys = s
                        .keys
                        .iter()
                        .enumerate()
                        .map(|(j, k)| lift(*k, &pgt_delta::names::key_of(s.index + 1, j + 1), &mut tlist))
                        .collect();
                    surfaced.push(Surfaced { index: s.index, rtindex: varno, weight, keys });
                }
                for te in junk {
                    next_resno += 1;
                    (*te).resno = next_resno;
                    tlist = pg_sys::lappend(tlist, te as *mut c_void);
                }
                (*sub).targetList = tlist;
                (*sub).rteperminfos = std::ptr::null_mut();
                // A view expanded by the rewriter keeps its relid; it is a plain
                // subquery now.
                (*rte).relid = pg_sys::InvalidOid;
                (*rte).relkind = 0;
                (*rte).rellockmode = 0;
                (*rte).perminfoindex = 0;
            }
            pg_sys::RTEKind::RTE_FUNCTION | pg_sys::RTEKind::RTE_TABLEFUNC => {
                let Some(functions) = functions.as_deref_mut() else {
                    return Ok(Err(Unsupported("functions in FROM of a subquery".into())));
                };
                if let Some(reason) = function_item_problem(rte)? {
                    return Ok(Err(Unsupported(reason)));
                }
                if (*rte).rtekind == pg_sys::RTEKind::RTE_TABLEFUNC {
                    functions.keyless = true;
                    continue;
                }
                // Its rows' ordinality tells them apart.
                let eref = (*rte).eref;
                if !(*rte).funcordinality {
                    (*rte).funcordinality = true;
                    let name = string_node(&format!("__pgt_ord{varno}"));
                    (*eref).colnames = pg_sys::lappend((*eref).colnames, name);
                    let alias = (*rte).alias;
                    if !alias.is_null() && !(*alias).colnames.is_null() {
                        (*alias).colnames = pg_sys::lappend((*alias).colnames, string_node(&format!("__pgt_ord{varno}")));
                    }
                }
                let ordinality = PgList::<pg_sys::Node>::from_pg((*eref).colnames).len() as i16;
                functions
                    .row_keys
                    .push(pg_sys::makeVar(varno, ordinality, pg_sys::INT8OID, -1, pg_sys::InvalidOid, 0) as *mut pg_sys::Node);
            }
            // A recursive query's reference to itself, bound by its operator.
            pg_sys::RTEKind::RTE_CTE
                if !(*rte).ctename.is_null()
                    && std::ffi::CStr::from_ptr((*rte).ctename).to_bytes() == pgt_delta::names::RECURSIVE_SELF.as_bytes() => {}
            // RTE_RESULT: a FROM item moved into a subquery (`join_to_subquery`).
            pg_sys::RTEKind::RTE_JOIN | pg_sys::RTEKind::RTE_GROUP | pg_sys::RTEKind::RTE_RESULT => {}
            _ => return Ok(Err(Unsupported("this kind of FROM item".into()))),
        }
    }
    (*q).rteperminfos = std::ptr::null_mut();
    Ok(Ok(surfaced))
}

/// Whether query level `q` has a function or table function in FROM.
pub(crate) unsafe fn has_from_functions(q: &pg_sys::Query) -> bool {
    PgList::<pg_sys::RangeTblEntry>::from_pg(q.rtable)
        .iter_ptr()
        .any(|rte| matches!((*rte).rtekind, pg_sys::RTEKind::RTE_FUNCTION | pg_sys::RTEKind::RTE_TABLEFUNC))
}

/// Why function item `rte` cannot be in a DIFFERENTIAL block, if it cannot:
/// a volatile function (`random()`, `clock_timestamp()`, ...) in it or its
/// arguments would expand the same row differently at every refresh. Stable
/// ones draw the WARNING stable functions draw anywhere in a defining query
/// (`crate::definition::resolve_mode`).
unsafe fn function_item_problem(rte: *mut pg_sys::RangeTblEntry) -> PgtResult<Option<String>> {
    let node = if (*rte).rtekind == pg_sys::RTEKind::RTE_FUNCTION {
        (*rte).functions as *mut pg_sys::Node
    } else {
        (*rte).tablefunc as *mut pg_sys::Node
    };
    if pg_sys::contain_volatile_functions(node) {
        return Ok(Some("volatile functions in FROM (their rows could change without any write)".into()));
    }
    Ok(None)
}

/// The prepared copy's FROM/WHERE with the given targets and the inputs' weights,
/// deparsed into a [`Block`].
pub unsafe fn finish(prepared: Prepared, targets: Targets) -> PgtResult<Block> {
    let copy = prepared.copy;
    let mut tlist: *mut pg_sys::List = std::ptr::null_mut();
    let mut columns = Vec::new();
    let mut resno: i16 = 0;
    let mut push = |name: &str, expr: *mut pg_sys::Node, tlist: &mut *mut pg_sys::List| {
        resno += 1;
        let te = pg_sys::makeTargetEntry(expr as *mut pg_sys::Expr, resno, cstring(name), false);
        *tlist = pg_sys::lappend(*tlist, te as *mut c_void);
    };
    let extra = match targets {
        Targets::KeepVisible(extra) => {
            for te in PgList::<pg_sys::TargetEntry>::from_pg((*copy).targetList).iter_ptr().filter(|te| !(**te).resjunk) {
                let name = CStr::from_ptr((*te).resname).to_string_lossy().into_owned();
                push(&name, (*te).expr as *mut pg_sys::Node, &mut tlist);
                columns.push(name);
            }
            extra
        }
        Targets::Replace(extra) => extra,
    };
    for (name, expr) in extra {
        push(&name, expr, &mut tlist);
        columns.push(name);
    }
    for (k, weight) in prepared.weights.iter().enumerate() {
        if prepared.inputs.get(k).is_some_and(|i| i.presence.is_some()) {
            continue;
        }
        if weight.is_null() {
            return Err(PgtError::internal("an input's weight was not surfaced"));
        }
        push(&pgt_delta::names::weight_of(k + 1), *weight, &mut tlist);
    }
    (*copy).targetList = tlist;
    clear_aggregation(copy);
    // References to a join's output columns become the expressions they
    // stand for (`COALESCE(a.k, b.k)` for a merged USING column of a FULL
    // JOIN): a join whose USING clause was replaced by ON has no merged
    // column to name any more.
    // (The join tree was flattened in `prepare`, before the outer joins'
    // nodes were recorded.)
    (*copy).targetList = pg_sys::flatten_join_alias_vars(std::ptr::null_mut(), copy, (*copy).targetList as *mut pg_sys::Node) as *mut pg_sys::List;
    let tlist = (*copy).targetList;
    let template = deparse(copy);
    let mut inputs = prepared.inputs;
    for outer in &prepared.outer_joins {
        let j = outer.join;
        let content = preserved_content(copy, outer.preserved)?;
        let named = |name: &str, expr: *mut pg_sys::Node, resno: &mut i16| {
            *resno += 1;
            pg_sys::makeTargetEntry(expr as *mut pg_sys::Expr, *resno, cstring(name), false) as *mut c_void
        };
        // The template plus the preserved row's content.
        let mut resno = PgList::<pg_sys::TargetEntry>::from_pg(tlist).len() as i16;
        let with_content = pg_sys::lappend(pg_sys::list_copy(tlist), named(pgt_delta::names::PRESERVED_CONTENT, content, &mut resno));
        (*copy).targetList = with_content;
        let null_template = deparse(copy);
        (*copy).targetList = tlist;
        let jointype = (*j).jointype;
        (*j).jointype = pg_sys::JoinType::JOIN_INNER;
        let inner_template = deparse(copy);
        // The join alone, inner: the restricted inputs' keys, the preserved
        // row's content and the nullable side's weight.
        let jointree = (*copy).jointree;
        let mut targets: *mut pg_sys::List = std::ptr::null_mut();
        let mut resno: i16 = 0;
        for &q in &outer.restricted {
            for (n, key) in prepared.keys[q].iter().enumerate() {
                targets = pg_sys::lappend(targets, named(&pgt_delta::names::preserved_key(q + 1, n + 1), *key, &mut resno));
            }
        }
        targets = pg_sys::lappend(targets, named(pgt_delta::names::PRESERVED_CONTENT, content, &mut resno));
        let weight = pg_sys::copyObjectImpl(prepared.weights[outer.nullable] as *const c_void) as *mut pg_sys::Node;
        targets = pg_sys::lappend(targets, named(pgt_delta::names::NULLABLE_WEIGHT, weight, &mut resno));
        (*copy).targetList = targets;
        (*copy).jointree = pg_sys::makeFromExpr(pg_sys::lappend(std::ptr::null_mut(), j as *mut c_void), std::ptr::null_mut());
        // The deparser names the columns of every join in the range table from
        // the join's place in the jointree; joins above `j` are no longer in it,
        // so they are hidden as plain entries meanwhile.
        let inside: Vec<i32> = joins_in(j as *mut pg_sys::Node).iter().map(|inner| (**inner).rtindex).collect();
        let hidden: Vec<*mut pg_sys::RangeTblEntry> = PgList::<pg_sys::RangeTblEntry>::from_pg((*copy).rtable)
            .iter_ptr()
            .enumerate()
            .filter(|(i, rte)| (**rte).rtekind == pg_sys::RTEKind::RTE_JOIN && !inside.contains(&((*i + 1) as i32)))
            .map(|(_, rte)| rte)
            .collect();
        for rte in &hidden {
            (**rte).rtekind = pg_sys::RTEKind::RTE_RESULT;
        }
        let affected_template = deparse(copy);
        // The join alone as written: a preserved row without a match comes out
        // with a NULL key.
        (*j).jointype = jointype;
        let mut resno: i16 = 0;
        let mut targets: *mut pg_sys::List = std::ptr::null_mut();
        targets = pg_sys::lappend(targets, named(pgt_delta::names::PRESERVED_CONTENT, content, &mut resno));
        let key = prepared.keys[outer.nullable]
            .first()
            .copied()
            .ok_or_else(|| PgtError::internal("the nullable side of an outer join has no key column"))?;
        targets = pg_sys::lappend(targets, named(pgt_delta::names::NULLABLE_KEY, key, &mut resno));
        (*copy).targetList = targets;
        let presence_template = deparse(copy);
        for rte in &hidden {
            (**rte).rtekind = pg_sys::RTEKind::RTE_JOIN;
        }
        (*copy).jointree = jointree;
        (*copy).targetList = tlist;
        (*j).jointype = jointype;
        inputs[outer.nullable].nullable = Some(pgt_delta::NullableSide {
            inner_template,
            affected_template,
            presence_template,
            null_template,
            restricted: outer.restricted.clone(),
        });
    }
    Ok(Block { template, inputs, columns })
}

/// Turns base-relation entry `rte` into a reference to CTE `placeholder` whose
/// columns are the relation's (dropped ones renamed) plus `__pgt_w`.
unsafe fn to_placeholder(rte: *mut pg_sys::RangeTblEntry, placeholder: &str, info: &RelationInfo) {
    let columns = info.types.iter().enumerate().map(|(i, t)| (pgt_delta::scan::placeholder_column(&info.relation, i), *t));
    let weight = (pgt_delta::names::WEIGHT.to_string(), (pg_sys::INT8OID, -1, pg_sys::InvalidOid));
    unsafe { super::placeholder::to_cte_reference(rte, placeholder, columns.chain([weight])) };
}

/// Drops grouping, aggregation, ordering and the like from a copied query whose
/// target list was replaced.
unsafe fn clear_aggregation(q: *mut pg_sys::Query) {
    (*q).groupClause = std::ptr::null_mut();
    (*q).groupDistinct = false;
    (*q).havingQual = std::ptr::null_mut();
    (*q).hasAggs = false;
    (*q).sortClause = std::ptr::null_mut();
    (*q).distinctClause = std::ptr::null_mut();
    (*q).windowClause = std::ptr::null_mut();
    (*q).rowMarks = std::ptr::null_mut();
    (*q).setOperations = std::ptr::null_mut();
}

struct OutputMutator {
    groups: Vec<*mut pg_sys::Node>,
    aggrefs: Vec<*mut pg_sys::Aggref>,
}

#[pg_guard]
unsafe extern "C-unwind" fn to_agg_vars(node: *mut pg_sys::Node, ctx: *mut c_void) -> *mut pg_sys::Node {
    if node.is_null() {
        return node;
    }
    let m = &*(ctx as *mut OutputMutator);
    if pgrx::is_a(node, pg_sys::NodeTag::T_Aggref) {
        for (j, a) in m.aggrefs.iter().enumerate() {
            if pg_sys::equal(*a as *const c_void, node as *const c_void) {
                let attno = (m.groups.len() + j + 1) as i16;
                return pg_sys::makeVar(1, attno, (**a).aggtype, -1, (**a).aggcollid, 0) as *mut pg_sys::Node;
            }
        }
    }
    for (i, g) in m.groups.iter().enumerate() {
        if pg_sys::equal(*g as *const c_void, node as *const c_void) {
            return pg_sys::makeVar(
                1,
                (i + 1) as i16,
                pg_sys::exprType(*g),
                pg_sys::exprTypmod(*g),
                pg_sys::exprCollation(*g),
                0,
            ) as *mut pg_sys::Node;
        }
    }
    pg_sys::expression_tree_mutator_impl(node, Some(to_agg_vars), ctx)
}

#[pg_guard]
unsafe extern "C-unwind" fn find_foreign_var(node: *mut pg_sys::Node, ctx: *mut c_void) -> bool {
    if node.is_null() {
        return false;
    }
    if pgrx::is_a(node, pg_sys::NodeTag::T_Var) {
        let v = node as *mut pg_sys::Var;
        if (*v).varlevelsup == 0 && (*v).varno != 1 {
            *(ctx as *mut bool) = true;
            return true;
        }
    }
    pg_sys::expression_tree_walker(node, Some(find_foreign_var), ctx)
}

/// The output template of an aggregate query: its visible expressions (and HAVING
/// as `__pgt_having`) over one row of placeholder `__pgt_agg(__pgt_g…, __pgt_v…,
/// passthrough…)`, then the pass-through columns.
pub unsafe fn output_template(
    q: *mut pg_sys::Query,
    groups: &[*mut pg_sys::Node],
    aggrefs: &[*mut pg_sys::Aggref],
    passthrough: &[String],
    passthrough_types: &[pg_sys::Oid],
) -> PgtResult<Result<String, Unsupported>> {
    let copy = pg_sys::copyObjectImpl(q as *const c_void) as *mut pg_sys::Query;
    let mut m = OutputMutator { groups: groups.to_vec(), aggrefs: aggrefs.to_vec() };
    let ctx = &mut m as *mut OutputMutator as *mut c_void;

    let mut tlist: *mut pg_sys::List = std::ptr::null_mut();
    let mut resno: i16 = 0;
    let mut push = |name: &str, expr: *mut pg_sys::Node, tlist: &mut *mut pg_sys::List| {
        resno += 1;
        let te = pg_sys::makeTargetEntry(expr as *mut pg_sys::Expr, resno, cstring(name), false);
        *tlist = pg_sys::lappend(*tlist, te as *mut c_void);
    };
    let mut exprs = Vec::new();
    for te in PgList::<pg_sys::TargetEntry>::from_pg((*copy).targetList).iter_ptr().filter(|te| !(**te).resjunk) {
        let name = CStr::from_ptr((*te).resname).to_string_lossy().into_owned();
        let expr = to_agg_vars((*te).expr as *mut pg_sys::Node, ctx);
        exprs.push(expr);
        push(&name, expr, &mut tlist);
    }
    if !(*copy).havingQual.is_null() {
        let having = to_agg_vars((*copy).havingQual, ctx);
        exprs.push(having);
        push(pgt_delta::names::HAVING, having, &mut tlist);
    }
    for expr in &exprs {
        let mut foreign = false;
        find_foreign_var(*expr, &mut foreign as *mut bool as *mut c_void);
        if foreign {
            return Ok(Err(Unsupported("output columns that are neither grouped nor aggregated".into())));
        }
    }
    let first_passthrough = groups.len() + aggrefs.len() + 1;
    for (i, (name, typ)) in passthrough.iter().zip(passthrough_types).enumerate() {
        let var = pg_sys::makeVar(1, (first_passthrough + i) as i16, *typ, -1, pg_sys::InvalidOid, 0);
        push(name, var as *mut pg_sys::Node, &mut tlist);
    }

    // The single FROM item: __pgt_agg.
    let mut columns: Vec<(String, (pg_sys::Oid, i32, pg_sys::Oid))> = Vec::new();
    for (i, g) in groups.iter().enumerate() {
        columns.push((pgt_delta::names::group(i + 1), (pg_sys::exprType(*g), pg_sys::exprTypmod(*g), pg_sys::exprCollation(*g))));
    }
    for (j, a) in aggrefs.iter().enumerate() {
        columns.push((pgt_delta::names::value(j + 1), ((**a).aggtype, -1, (**a).aggcollid)));
    }
    for (name, typ) in passthrough.iter().zip(passthrough_types) {
        columns.push((name.clone(), (*typ, -1, pg_sys::InvalidOid)));
    }
    let rte = super::placeholder::new_cte_reference(pgt_delta::names::AGG_ROW, columns);
    (*copy).rtable = pg_sys::lappend(std::ptr::null_mut(), rte as *mut c_void);
    (*copy).rteperminfos = std::ptr::null_mut();
    (*copy).jointree = super::placeholder::from_first_item();
    (*copy).targetList = tlist;
    clear_aggregation(copy);
    (*copy).hasTargetSRFs = false;
    Ok(Ok(deparse(copy)))
}

/// The range-table indexes of the nullable sides of the top level's LEFT and
/// RIGHT joins that must be read as child operators: subqueries and views
/// (even plain ones: the outer-join rule needs the nullable side's old state
/// as a set, by key) and tables without a key, which are first turned into
/// `SELECT <every column> FROM [ONLY] table` subqueries (rows then keyed by
/// content and copy number).
unsafe fn nullable_items_to_materialize(q: *mut pg_sys::Query) -> PgtResult<Result<Vec<i32>, Unsupported>> {
    // A nullable side that is a join becomes a subquery first (then a child).
    let mut out = Vec::new();
    loop {
        let joined = joins_in((*q).jointree as *mut pg_sys::Node).into_iter().find_map(|j| {
            let side = match (*j).jointype {
                pg_sys::JoinType::JOIN_LEFT => &raw mut (*j).rarg,
                pg_sys::JoinType::JOIN_RIGHT => &raw mut (*j).larg,
                _ => return None,
            };
            pgrx::is_a(*side, pg_sys::NodeTag::T_JoinExpr).then_some(side)
        });
        let Some(side) = joined else { break };
        match join_to_subquery(q, side)? {
            Ok(rtindex) => out.push(rtindex),
            Err(u) => return Ok(Err(u)),
        }
    }
    let rtable = PgList::<pg_sys::RangeTblEntry>::from_pg((*q).rtable);
    for j in joins_in((*q).jointree as *mut pg_sys::Node) {
        let nullable = match (*j).jointype {
            pg_sys::JoinType::JOIN_LEFT => (*j).rarg,
            pg_sys::JoinType::JOIN_RIGHT => (*j).larg,
            _ => continue,
        };
        if !pgrx::is_a(nullable, pg_sys::NodeTag::T_RangeTblRef) {
            continue;
        }
        let rtindex = (*(nullable as *mut pg_sys::RangeTblRef)).rtindex;
        let Some(rte) = rtable.get_ptr((rtindex - 1) as usize) else { continue };
        match (*rte).rtekind {
            pg_sys::RTEKind::RTE_SUBQUERY if !out.contains(&rtindex) => out.push(rtindex),
            pg_sys::RTEKind::RTE_RELATION if super::key_attnums((*rte).relid)?.is_empty() => {
                if let Err(u) = relation_to_subquery(rte)? {
                    return Ok(Err(u));
                }
                out.push(rtindex);
            }
            _ => {}
        }
    }
    Ok(Ok(out))
}

/// Turns relation entry `rte` into a subquery reading every column of the
/// relation by position (a dropped column as a NULL placeholder, so that the
/// parent's column numbers stay valid).
unsafe fn relation_to_subquery(rte: *mut pg_sys::RangeTblEntry) -> PgtResult<Result<(), Unsupported>> {
    let (reason, info) = super::relation_info((*rte).relid)?;
    if let Some(reason) = reason {
        return Ok(Err(Unsupported(reason)));
    }
    if !(*rte).tablesample.is_null() {
        return Ok(Err(Unsupported("TABLESAMPLE".into())));
    }
    let columns: Vec<String> = (0..info.relation.columns.len())
        .map(|i| match &info.relation.columns[i] {
            Some(c) => format!("r.{}", pgt_core::ident::quote_ident(c)),
            None => format!("NULL::integer AS {}", pgt_core::ident::quote_ident(&pgt_delta::names::dropped(i + 1))),
        })
        .collect();
    let only = if (*rte).inh { "" } else { "ONLY " };
    let sql = format!("SELECT {} FROM {only}{} r", columns.join(", "), info.relation.table_sql);
    let csql = CString::new(sql).map_err(|_| PgtError::internal("relation name contains a NUL byte"))?;
    let sub = crate::parse::parse_single_select(&csql)?;
    (*rte).rtekind = pg_sys::RTEKind::RTE_SUBQUERY;
    (*rte).subquery = sub;
    (*rte).relid = pg_sys::InvalidOid;
    (*rte).relkind = 0;
    (*rte).rellockmode = 0;
    (*rte).perminfoindex = 0;
    (*rte).inh = false;
    Ok(Ok(()))
}


/// The outermost FULL JOIN of `q`'s join tree, if any.
pub unsafe fn first_full_join(q: *mut pg_sys::Query) -> Option<*mut pg_sys::JoinExpr> {
    joins_in((*q).jointree as *mut pg_sys::Node).into_iter().find(|j| (**j).jointype == pg_sys::JoinType::JOIN_FULL)
}

/// Whether the join with range-table index `rtindex` lies under the nullable
/// side of an outer join in jointree `node` (`nullable`: `node` itself does).
pub unsafe fn on_nullable_side(node: *mut pg_sys::Node, rtindex: i32, nullable: bool) -> bool {
    if node.is_null() {
        return false;
    }
    if pgrx::is_a(node, pg_sys::NodeTag::T_FromExpr) {
        return PgList::<pg_sys::Node>::from_pg((*(node as *mut pg_sys::FromExpr)).fromlist)
            .iter_ptr()
            .any(|item| on_nullable_side(item, rtindex, nullable));
    }
    if pgrx::is_a(node, pg_sys::NodeTag::T_JoinExpr) {
        let j = node as *mut pg_sys::JoinExpr;
        if (*j).rtindex == rtindex {
            return nullable;
        }
        let (left_nullable, right_nullable) = match (*j).jointype {
            pg_sys::JoinType::JOIN_LEFT => (false, true),
            pg_sys::JoinType::JOIN_RIGHT => (true, false),
            pg_sys::JoinType::JOIN_FULL => (true, true),
            _ => (false, false),
        };
        return on_nullable_side((*j).larg, rtindex, nullable || left_nullable)
            || on_nullable_side((*j).rarg, rtindex, nullable || right_nullable);
    }
    false
}

/// Sets the type of the join with range-table index `rtindex` (its JoinExpr
/// and its range-table entry).
pub unsafe fn set_join_type(q: *mut pg_sys::Query, rtindex: i32, jointype: pg_sys::JoinType::Type) {
    for j in joins_in((*q).jointree as *mut pg_sys::Node) {
        if (*j).rtindex == rtindex {
            (*j).jointype = jointype;
        }
    }
    if let Some(rte) = PgList::<pg_sys::RangeTblEntry>::from_pg((*q).rtable).get_ptr((rtindex - 1) as usize) {
        (*rte).jointype = jointype;
    }
}

/// Replaces the join `*side` of `q`'s join tree (the nullable side of an outer
/// join) by a subquery reading the same join — `SELECT <every column of the
/// FROM items under it> FROM <the join>`, deparsed and analysed again — and
/// points every reference to those FROM items' columns at the subquery's.
/// Returns the subquery's range-table index.
unsafe fn join_to_subquery(q: *mut pg_sys::Query, side: *mut *mut pg_sys::Node) -> PgtResult<Result<i32, Unsupported>> {
    let join = *side;
    // References through join output columns become references to the FROM
    // items themselves, so that only those need remapping.
    (*q).targetList = pg_sys::flatten_join_alias_vars(std::ptr::null_mut(), q, (*q).targetList as *mut pg_sys::Node) as *mut pg_sys::List;
    (*q).havingQual = pg_sys::flatten_join_alias_vars(std::ptr::null_mut(), q, (*q).havingQual);
    (*q).jointree = pg_sys::flatten_join_alias_vars(std::ptr::null_mut(), q, (*q).jointree as *mut pg_sys::Node) as *mut pg_sys::FromExpr;
    // `side` pointed into the old tree: find the join again by its index.
    let join_rtindex = (*(join as *mut pg_sys::JoinExpr)).rtindex;
    let Some(side) = find_join_slot((*q).jointree as *mut pg_sys::Node, join_rtindex) else {
        return Err(PgtError::internal("the nullable join is not in the join tree"));
    };
    let join = *side;
    let rtable = PgList::<pg_sys::RangeTblEntry>::from_pg((*q).rtable);
    // The subquery's columns: every column of every FROM item under the join.
    let mut columns: Vec<(i32, i16)> = Vec::new();
    let mut tlist: *mut pg_sys::List = std::ptr::null_mut();
    for rtindex in items_under(join) {
        let Some(rte) = rtable.get_ptr((rtindex - 1) as usize) else { continue };
        let (mut names, mut vars): (*mut pg_sys::List, *mut pg_sys::List) = (std::ptr::null_mut(), std::ptr::null_mut());
        pg_sys::expandRTE(rte, rtindex, 0, pg_sys::VarReturningType::VAR_RETURNING_DEFAULT, -1, false, &mut names, &mut vars);
        for var in PgList::<pg_sys::Var>::from_pg(vars).iter_ptr() {
            columns.push((rtindex, (*var).varattno));
            let resno = columns.len();
            let te = pg_sys::makeTargetEntry(var as *mut pg_sys::Expr, resno as i16, cstring(&format!("{}{resno}", pgt_delta::names::SUBQUERY_COLUMN)), false);
            tlist = pg_sys::lappend(tlist, te as *mut c_void);
        }
    }
    // Deparse `SELECT <columns> FROM <join>`: a copy of `q` reduced to it, the
    // joins outside it hidden from the deparser (it names a join's columns
    // from its place in the join tree).
    let reduced = pg_sys::copyObjectImpl(q as *const c_void) as *mut pg_sys::Query;
    let reduced_join = pg_sys::copyObjectImpl(join as *const c_void) as *mut pg_sys::Node;
    (*reduced).jointree = pg_sys::makeFromExpr(pg_sys::lappend(std::ptr::null_mut(), reduced_join as *mut c_void), std::ptr::null_mut());
    (*reduced).targetList = tlist;
    (*reduced).hasSubLinks = false;
    (*reduced).hasAggs = false;
    clear_aggregation(reduced);
    let inside: Vec<i32> = joins_in(reduced_join).iter().map(|j| (**j).rtindex).collect();
    for (i, rte) in PgList::<pg_sys::RangeTblEntry>::from_pg((*reduced).rtable).iter_ptr().enumerate() {
        if (*rte).rtekind == pg_sys::RTEKind::RTE_JOIN && !inside.contains(&((i + 1) as i32)) {
            (*rte).rtekind = pg_sys::RTEKind::RTE_RESULT;
        }
    }
    let text = deparse(reduced);
    let csql = CString::new(text).map_err(|_| PgtError::internal("deparsed join contains a NUL byte"))?;
    let sub = crate::privilege::with_pinned_search_path(|| crate::parse::parse_single_select(&csql))?;
    // The new FROM item, in place of the join.
    let colnames = (1..=columns.len()).fold(std::ptr::null_mut::<pg_sys::List>(), |l, i| {
        pg_sys::lappend(l, string_node(&format!("{}{i}", pgt_delta::names::SUBQUERY_COLUMN)))
    });
    let rte = pg_sys::palloc0(std::mem::size_of::<pg_sys::RangeTblEntry>()) as *mut pg_sys::RangeTblEntry;
    (*rte).type_ = pg_sys::NodeTag::T_RangeTblEntry;
    (*rte).rtekind = pg_sys::RTEKind::RTE_SUBQUERY;
    (*rte).subquery = sub;
    (*rte).alias = pg_sys::makeAlias(cstring(pgt_delta::names::SUBQUERY_ALIAS), pg_sys::copyObjectImpl(colnames as *const c_void) as *mut pg_sys::List);
    (*rte).eref = pg_sys::makeAlias(cstring(pgt_delta::names::SUBQUERY_ALIAS), colnames);
    (*rte).inFromCl = true;
    // In the slot of the first FROM item it replaces: a join's alias list may
    // only name entries before the join's own (AcquireRewriteLocks checks).
    let moved_items: Vec<i32> = items_under(join);
    let Some(&new_index) = moved_items.iter().min() else {
        return Err(PgtError::internal("the nullable join has no FROM item"));
    };
    let list = (*q).rtable;
    (*(*list).elements.add((new_index - 1) as usize)).ptr_value = rte as *mut c_void;
    let rtr = pg_sys::palloc0(std::mem::size_of::<pg_sys::RangeTblRef>()) as *mut pg_sys::RangeTblRef;
    (*rtr).type_ = pg_sys::NodeTag::T_RangeTblRef;
    (*rtr).rtindex = new_index;
    *side = rtr as *mut pg_sys::Node;
    // The outer join's range-table entry describes its inputs' columns: it
    // now joins the subquery.
    if let Some(outer) = joins_in((*q).jointree as *mut pg_sys::Node).into_iter().find(|j| (**j).larg == rtr as *mut pg_sys::Node || (**j).rarg == rtr as *mut pg_sys::Node) {
        describe_join(q, outer);
    }
    // The joins and FROM items that were inside are gone from the tree: hidden
    // (from the deparser, and from the inputs `prepare_level` makes).
    for (i, rte) in PgList::<pg_sys::RangeTblEntry>::from_pg((*q).rtable).iter_ptr().enumerate() {
        let index = (i + 1) as i32;
        if ((*rte).rtekind == pg_sys::RTEKind::RTE_JOIN && inside.contains(&index)) || (moved_items.contains(&index) && index != new_index) {
            (*rte).rtekind = pg_sys::RTEKind::RTE_RESULT;
            (*rte).subquery = std::ptr::null_mut();
        }
    }
    // Every reference to the moved FROM items' columns, at any depth. Join
    // output columns standing for them are no longer referenced (flattened
    // above): they become dropped columns, since a join's alias list may only
    // name FROM items listed before the join (AcquireRewriteLocks checks).
    let mut remap = Remap { columns: columns.clone(), target: new_index, depth: 0 };
    pg_sys::query_tree_walker(q, Some(remap_moved), (&raw mut remap).cast(), pg_sys::QTW_IGNORE_JOINALIASES as i32);
    for rte in PgList::<pg_sys::RangeTblEntry>::from_pg((*q).rtable).iter_ptr() {
        if (*rte).rtekind != pg_sys::RTEKind::RTE_JOIN || (*rte).joinaliasvars.is_null() {
            continue;
        }
        let list = (*rte).joinaliasvars;
        for i in 0..(*list).length as usize {
            let cell = (*list).elements.add(i);
            let item = (*cell).ptr_value as *mut pg_sys::Node;
            if !item.is_null() && reads_any(item, &columns) {
                (*cell).ptr_value = std::ptr::null_mut();
            }
        }
    }
    Ok(Ok(new_index))
}

/// Rebuilds the range-table entry of join `j` of `q` from its two inputs as
/// they are now: every column of the left input, then every column of the
/// right one, none merged (a USING clause becomes the ON condition it already
/// holds; references to its merged columns were flattened).
unsafe fn describe_join(q: *mut pg_sys::Query, j: *mut pg_sys::JoinExpr) {
    let rtable = PgList::<pg_sys::RangeTblEntry>::from_pg((*q).rtable);
    let Some(rte) = rtable.get_ptr(((*j).rtindex - 1) as usize) else { return };
    let side_columns = |node: *mut pg_sys::Node| -> (*mut pg_sys::List, *mut pg_sys::List) {
        let rtindex = if pgrx::is_a(node, pg_sys::NodeTag::T_RangeTblRef) {
            (*(node as *mut pg_sys::RangeTblRef)).rtindex
        } else if pgrx::is_a(node, pg_sys::NodeTag::T_JoinExpr) {
            (*(node as *mut pg_sys::JoinExpr)).rtindex
        } else {
            return (std::ptr::null_mut(), std::ptr::null_mut());
        };
        let Some(input) = rtable.get_ptr((rtindex - 1) as usize) else { return (std::ptr::null_mut(), std::ptr::null_mut()) };
        let (mut names, mut vars): (*mut pg_sys::List, *mut pg_sys::List) = (std::ptr::null_mut(), std::ptr::null_mut());
        pg_sys::expandRTE(input, rtindex, 0, pg_sys::VarReturningType::VAR_RETURNING_DEFAULT, -1, true, &mut names, &mut vars);
        (names, vars)
    };
    let (left_names, left_vars) = side_columns((*j).larg);
    let (right_names, right_vars) = side_columns((*j).rarg);
    let numbers = |list: *mut pg_sys::List| -> *mut pg_sys::List {
        let n = if list.is_null() { 0 } else { (*list).length };
        (1..=n).fold(std::ptr::null_mut(), |l, i| pg_sys::lappend_int(l, i))
    };
    (*rte).joinmergedcols = 0;
    (*rte).joinleftcols = numbers(left_vars);
    (*rte).joinrightcols = numbers(right_vars);
    (*rte).joinaliasvars = pg_sys::list_concat(pg_sys::list_copy(left_vars), right_vars);
    (*(*rte).eref).colnames = pg_sys::list_concat(pg_sys::list_copy(left_names), right_names);
    if !(*rte).alias.is_null() {
        (*(*rte).alias).colnames = std::ptr::null_mut();
    }
    (*rte).join_using_alias = std::ptr::null_mut();
    (*j).usingClause = std::ptr::null_mut();
    (*j).join_using_alias = std::ptr::null_mut();
}

/// Whether expression `node` reads one of `columns` (level 0).
unsafe fn reads_any(node: *mut pg_sys::Node, columns: &[(i32, i16)]) -> bool {
    let mut r = Remap { columns: columns.to_vec(), target: -1, depth: 0 };
    find_moved(node, (&raw mut r).cast())
}

#[pg_guard]
unsafe extern "C-unwind" fn find_moved(node: *mut pg_sys::Node, ctx: *mut c_void) -> bool {
    if node.is_null() {
        return false;
    }
    let m = &*(ctx as *mut Remap);
    if pgrx::is_a(node, pg_sys::NodeTag::T_Var) {
        let v = node as *mut pg_sys::Var;
        return (*v).varlevelsup == 0 && m.columns.contains(&((*v).varno, (*v).varattno));
    }
    pg_sys::expression_tree_walker(node, Some(find_moved), ctx)
}

/// The slot of `node`'s join tree holding the join with range-table index
/// `rtindex`.
unsafe fn find_join_slot(node: *mut pg_sys::Node, rtindex: i32) -> Option<*mut *mut pg_sys::Node> {
    let check = |slot: *mut *mut pg_sys::Node| -> Option<*mut *mut pg_sys::Node> {
        let n = *slot;
        if pgrx::is_a(n, pg_sys::NodeTag::T_JoinExpr) && (*(n as *mut pg_sys::JoinExpr)).rtindex == rtindex {
            return Some(slot);
        }
        find_join_slot(n, rtindex)
    };
    if pgrx::is_a(node, pg_sys::NodeTag::T_FromExpr) {
        let from = (*(node as *mut pg_sys::FromExpr)).fromlist;
        if from.is_null() {
            return None;
        }
        for i in 0..(*from).length as usize {
            let cell = (*from).elements.add(i);
            if let Some(slot) = check((&raw mut (*cell).ptr_value).cast()) {
                return Some(slot);
            }
        }
    } else if pgrx::is_a(node, pg_sys::NodeTag::T_JoinExpr) {
        let j = node as *mut pg_sys::JoinExpr;
        if let Some(slot) = check(&raw mut (*j).larg) {
            return Some(slot);
        }
        return check(&raw mut (*j).rarg);
    }
    None
}

/// Columns `(rtindex, attno)` moved into the subquery at range-table index
/// `target` (column k + 1 for `columns[k]`).
struct Remap {
    columns: Vec<(i32, i16)>,
    target: i32,
    depth: u32,
}

#[pg_guard]
unsafe extern "C-unwind" fn remap_moved(node: *mut pg_sys::Node, ctx: *mut c_void) -> bool {
    if node.is_null() {
        return false;
    }
    let m = &mut *(ctx as *mut Remap);
    if pgrx::is_a(node, pg_sys::NodeTag::T_Var) {
        let v = node as *mut pg_sys::Var;
        if (*v).varlevelsup == m.depth {
            if let Some(k) = m.columns.iter().position(|c| *c == ((*v).varno, (*v).varattno)) {
                (*v).varno = m.target;
                (*v).varattno = (k + 1) as i16;
                (*v).varnosyn = m.target as u32;
                (*v).varattnosyn = (k + 1) as i16;
                (*v).varnullingrels = std::ptr::null_mut();
            }
        }
        return false;
    }
    if pgrx::is_a(node, pg_sys::NodeTag::T_Query) {
        m.depth += 1;
        let r = pg_sys::query_tree_walker(node as *mut pg_sys::Query, Some(remap_moved), ctx, 0);
        let m = &mut *(ctx as *mut Remap);
        m.depth -= 1;
        return r;
    }
    pg_sys::expression_tree_walker(node, Some(remap_moved), ctx)
}
