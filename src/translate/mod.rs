//! Translation of a defining query into the delta engine's operator tree
//! (`pgt_delta::Plan`), or the name of the construct that prevents it.
//!
//! The query is parsed and analysed by PostgreSQL; then, on copies of the analysed
//! tree ([`surgery`]):
//! - every base relation in FROM becomes a placeholder (a CTE reference named
//!   `__pgt_in_<k>`) with the relation's columns plus a weight column `__pgt_w`;
//! - the target list is replaced by what the operator needs — the visible columns
//!   and the inputs' key columns for a row block; group keys, aggregate arguments
//!   and FILTER conditions for an aggregate's input — plus each input's weight;
//! - for an aggregate, a second copy computes the visible columns (and HAVING)
//!   from one row of a placeholder `__pgt_agg` holding group keys and aggregate
//!   values, so any expression over aggregates is evaluated by PostgreSQL itself;
//! - `pg_get_querydef` deparses each copy, with `search_path` pinned so that names
//!   are schema-qualified.
//!
//! What is translated (SPEC §4, wave 1 so far): scans of tables, partitioned
//! tables and stream tables; WHERE; projections; inner joins of any arity and
//! condition; LEFT / RIGHT joins at a block's top level whose nullable side is a
//! keyed table; GROUP BY with COUNT(*), COUNT, SUM and AVG over integers and
//! numerics, MIN and MAX, FILTER and HAVING; scalar aggregates. Everything else is
//! reported by name ([`Unsupported`]), and AUTO falls back to FULL.

mod grouping;
mod distinct_on;
mod having;
mod lateral;
mod placeholder;
mod prefix;
mod recursive;
mod setop;
mod sublink;
mod surgery;
mod target_srf;
mod window;

use crate::error::PgtResult;
use crate::parse::walker;
use crate::spi::{col, query_map, query_one};
use pgrx::pg_sys;
use pgrx::PgList;
use pgt_core::ident::quote_ident;
use pgt_delta::{Aggregate, AggregateKind, AggregatePlan, Plan, Relation, Root, RowsBranch, RowsPlan};
use std::ffi::{CStr, CString};

/// A construct the DIFFERENTIAL engine does not handle (yet), named for messages:
/// "DIFFERENTIAL refresh does not support <name>".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported(pub String);

macro_rules! unsupported {
    ($($t:tt)*) => { return Ok(Err(Unsupported(format!($($t)*)))) };
}

/// Translates the (normalized) defining query `sql`.
///
/// # Errors
/// PostgreSQL's own errors if the query no longer analyses; internal errors if
/// deparsing fails.
pub fn translate(sql: &str) -> PgtResult<Result<Translation, Unsupported>> {
    let csql = CString::new(sql).map_err(|_| crate::error::PgtError::internal("defining query contains a NUL byte"))?;
    unsafe {
        let query = crate::parse::parse_single_select(&csql)?;
        translate_query(query)
    }
}

/// A translated defining query: its plan, and what the walk of its tree found
/// (for the stable-function WARNING, without parsing the query again).
pub struct Translation {
    /// The DIFFERENTIAL plan.
    pub plan: Plan,
    facts: walker::QueryFacts,
}

impl Translation {
    /// Names of the stable functions (and SQL value functions such as
    /// CURRENT_DATE) the query calls, if any: DIFFERENTIAL warns about them, as
    /// their results may change between refreshes without any source changing.
    pub fn stable_functions(&self) -> PgtResult<Option<String>> {
        let functions = functions_of_volatility(&self.facts, 's')?;
        let names: Vec<String> = self.facts.value_functions.iter().cloned().chain(functions).collect();
        Ok((!names.is_empty()).then(|| names.join(", ")))
    }
}

/// One base relation of the query with what the translation needs about it.
pub(crate) struct RelationInfo {
    pub(crate) relation: Relation,
    /// Per position: type OID, typmod, collation (dropped columns: int4).
    pub(crate) types: Vec<(pg_sys::Oid, i32, pg_sys::Oid)>,
    /// Attribute numbers of the key columns.
    pub(crate) key_attnums: Vec<i16>,
}

unsafe fn translate_query(parsed: *mut pg_sys::Query) -> PgtResult<Result<Translation, Unsupported>> {
    // Views become subqueries (the rewriter), CTEs referenced at their own level
    // are inlined as subqueries; both are then ordinary select-project-join inputs.
    let q = rewrite(parsed)?;
    if let Err(construct) = inline_ctes(q) {
        unsupported!("{construct}");
    }
    let facts = walker::collect(q);
    if let Some(volatile) = functions_of_volatility(&facts, 'v')? {
        unsupported!("volatile functions ({volatile})");
    }
    let (q, topk) = match split_topk(q)? {
        Ok(split) => split,
        Err(u) => return Ok(Err(u)),
    };
    let mut plan = match translate_tree(q)? {
        Ok(plan) => plan,
        Err(u) => return Ok(Err(u)),
    };
    if let Some(topk) = topk {
        if !matches!(plan.root, Root::Rows(_)) {
            // An aggregate (DISTINCT, UNION) root keeps its result in the
            // stream table; under a TopK it becomes a child with a state
            // table of its own, read by a block the window is taken from.
            let text = format!("SELECT * FROM ({}) {}", deparse(q), pgt_delta::names::SUBQUERY_ALIAS);
            let csql = CString::new(text).map_err(|_| crate::error::PgtError::internal("deparsed query contains a NUL byte"))?;
            let outer = crate::privilege::with_pinned_search_path(|| crate::parse::parse_single_select(&csql))?;
            plan = match translate_block(outer)? {
                Ok(plan) => plan,
                Err(u) => return Ok(Err(u)),
            };
        }
        let Root::Rows(rows) = &plan.root else { unsupported!("ORDER BY ... LIMIT over this query") };
        let mut keys = Vec::new();
        for (index, operator, nulls_first) in topk.keys {
            let Some(column) = rows.visible.get(index) else { unsupported!("ORDER BY ... LIMIT over this query") };
            keys.push(pgt_delta::topk::SortKey { column: column.clone(), operator, nulls_first });
        }
        plan.topk = Some(pgt_delta::topk::TopK { keys, limit: topk.limit, offset: topk.offset, with_ties: topk.with_ties });
    }
    plan.number_states();
    if plan.relations().is_empty() {
        // Nothing to capture: no change could ever reach a refresh, while the
        // result may still change (now(), pg_current_xact_id()).
        unsupported!("a query that reads no table (there is nothing to capture; every refresh recomputes it)");
    }
    Ok(Ok(Translation { plan, facts }))
}

/// `ORDER BY ... LIMIT n [OFFSET m]` of a defining query, before its keys
/// are named by the plan's visible columns.
struct TopKClause {
    /// Per key: index among the visible output columns, qualified ordering
    /// operator, NULLS FIRST.
    keys: Vec<(usize, String, bool)>,
    limit: i64,
    offset: i64,
    with_ties: bool,
}

/// Splits a top-level `ORDER BY ... LIMIT / OFFSET` off `q`: the query
/// without them (a copy) and the clause; `q` itself and `None` without a
/// LIMIT or OFFSET. Unsupported: LIMIT / OFFSET without ORDER BY, OFFSET
/// without LIMIT, values that are not constants, a LIMIT + OFFSET above
/// `pg_trickle.ivm_topk_max_limit`, ORDER BY an expression that is not an
/// output column.
unsafe fn split_topk(q: *mut pg_sys::Query) -> PgtResult<Result<(*mut pg_sys::Query, Option<TopKClause>), Unsupported>> {
    let query = &*q;
    if query.limitCount.is_null() && query.limitOffset.is_null() {
        return Ok(Ok((q, None)));
    }
    if query.sortClause.is_null() {
        unsupported!("LIMIT / OFFSET without ORDER BY (which rows it keeps is not defined)");
    }
    let (Some(limit), Some(offset)) = (int8_constant(query.limitCount), int8_constant(query.limitOffset)) else {
        unsupported!("a LIMIT / OFFSET that is not a constant");
    };
    let Some(limit) = limit else { unsupported!("OFFSET without LIMIT (the stream table would hold every row after the offset)") };
    let offset = offset.unwrap_or(0);
    if limit < 0 || offset < 0 {
        unsupported!("a negative LIMIT / OFFSET");
    }
    let max = i64::from(crate::guc::IVM_TOPK_MAX_LIMIT.get());
    if limit.saturating_add(offset) > max {
        unsupported!("LIMIT {limit}{} above pg_trickle.ivm_topk_max_limit ({max})", if offset > 0 { format!(" OFFSET {offset}") } else { String::new() });
    }
    let entries: Vec<*mut pg_sys::TargetEntry> = PgList::<pg_sys::TargetEntry>::from_pg(query.targetList).iter_ptr().collect();
    let mut keys = Vec::new();
    for clause in PgList::<pg_sys::SortGroupClause>::from_pg(query.sortClause).iter_ptr() {
        let Some(entry) = entries.iter().find(|te| (***te).ressortgroupref == (*clause).tleSortGroupRef) else {
            unsupported!("ORDER BY ... LIMIT over this query");
        };
        if (**entry).resjunk {
            unsupported!("ORDER BY ... LIMIT by an expression that is not a column of the SELECT list");
        }
        let index = entries.iter().take_while(|te| **te != *entry).filter(|te| !(***te).resjunk).count();
        let Some(operator) = qualified_operator((*clause).sortop)? else { unsupported!("ORDER BY ... LIMIT with this ordering operator") };
        keys.push((index, operator, (*clause).nulls_first));
    }
    let inner = pg_sys::copyObjectImpl(q as *const std::ffi::c_void) as *mut pg_sys::Query;
    if !query.hasDistinctOn {
        // (DISTINCT ON keeps it: it says which row of each group is kept.)
        (*inner).sortClause = std::ptr::null_mut();
    }
    (*inner).limitCount = std::ptr::null_mut();
    (*inner).limitOffset = std::ptr::null_mut();
    (*inner).limitOption = pg_sys::LimitOption::LIMIT_OPTION_COUNT;
    let with_ties = query.limitOption == pg_sys::LimitOption::LIMIT_OPTION_WITH_TIES;
    Ok(Ok((inner, Some(TopKClause { keys, limit, offset, with_ties }))))
}

/// A LIMIT or OFFSET expression `node` (bigint) as a constant: `Some(None)`
/// when absent or NULL, `Some(Some(n))` when it folds to a constant, `None`
/// when it does not (a parameter, a subquery, a volatile call).
pub(crate) unsafe fn int8_constant(node: *mut pg_sys::Node) -> Option<Option<i64>> {
    if node.is_null() {
        return Some(None);
    }
    let folded = pg_sys::eval_const_expressions(std::ptr::null_mut(), node);
    if !pgrx::is_a(folded, pg_sys::NodeTag::T_Const) {
        return None;
    }
    let c = folded as *mut pg_sys::Const;
    if (*c).constisnull {
        return Some(None);
    }
    if (*c).consttype != pg_sys::INT8OID {
        return None;
    }
    Some(Some((*c).constvalue.value() as i64))
}

/// The plan of rewritten query `q` (views expanded, CTEs inlined).
unsafe fn translate_tree(q: *mut pg_sys::Query) -> PgtResult<Result<Plan, Unsupported>> {
    if let Some(sub) = trivial_projection(q) {
        return translate_tree(sub);
    }
    translate_block(q)
}

/// [`translate_tree`] without reading `SELECT * FROM (<sub>) s` as `<sub>`.
unsafe fn translate_block(q: *mut pg_sys::Query) -> PgtResult<Result<Plan, Unsupported>> {
    let query = &*q;
    if !query.setOperations.is_null() {
        return translate_union(q);
    }
    if query.hasTargetSRFs && !query.hasAggs && !query.hasWindowFuncs && query.groupClause.is_null() {
        // A LATERAL ROWS FROM (...) item (target_srf.rs).
        return match target_srf::move_to_from(q)? {
            Ok(moved) => translate_tree(moved),
            Err(u) => Ok(Err(u)),
        };
    }
    if query.hasTargetSRFs {
        unsupported!("set-returning functions in the SELECT list of an aggregate or window query");
    }
    let distinct = !query.distinctClause.is_null();
    if distinct && query.hasDistinctOn {
        // A row number per DISTINCT ON group, filtered to the first (distinct_on.rs).
        return translate_tree(distinct_on::rewrite(q)?);
    }
    if query.hasWindowFuncs && !distinct {
        // The window level becomes a child (window.rs) read whole by a block.
        return translate_block(wrap_in_subquery(q)?);
    }
    if distinct && (query.hasAggs || query.hasWindowFuncs || !query.groupClause.is_null() || !query.havingQual.is_null()) {
        // DISTINCT over the aggregate's result: the aggregate becomes a child.
        let inner = pg_sys::copyObjectImpl(q as *const std::ffi::c_void) as *mut pg_sys::Query;
        (*inner).distinctClause = std::ptr::null_mut();
        (*inner).sortClause = std::ptr::null_mut();
        let text = format!("SELECT DISTINCT * FROM ({}) {}", deparse(inner), pgt_delta::names::SUBQUERY_ALIAS);
        let csql = CString::new(text).map_err(|_| crate::error::PgtError::internal("deparsed query contains a NUL byte"))?;
        let outer = crate::privilege::with_pinned_search_path(|| crate::parse::parse_single_select(&csql))?;
        return translate_tree(outer);
    }
    if !query.limitCount.is_null() || !query.limitOffset.is_null() {
        unsupported!("LIMIT / OFFSET");
    }
    if !query.groupingSets.is_null() {
        // One aggregate per grouping set, under UNION ALL (grouping.rs).
        return match grouping::expand_to_union(q)? {
            Ok(union) => translate_tree(union),
            Err(u) => Ok(Err(u)),
        };
    }
    if lateral::has_correlated_lateral(query) {
        // Scalar subqueries or decorrelated joins (lateral.rs).
        return match lateral::rewrite(q)? {
            Ok(rewritten) => translate_tree(rewritten),
            Err(u) => Ok(Err(u)),
        };
    }
    if let Some(kind) = unsupported_from_item(query) {
        unsupported!("{kind}");
    }
    if surgery::has_whole_row_reference(q) {
        unsupported!("whole-row references (table.* as a value)");
    }
    // DISTINCT is GROUP BY over every output column with no aggregate: the
    // group's hidden __pgt_count is the multiplicity of the row in the input.
    let is_aggregate = distinct || query.hasAggs || !query.groupClause.is_null() || !query.havingQual.is_null();
    if is_aggregate && query.hasSubLinks && (sublink::has_sublink(query.targetList as *mut pg_sys::Node) || sublink::has_sublink(query.havingQual)) {
        // The aggregate becomes a child; its SELECT list and HAVING a block over it.
        return match having::split(q)? {
            Ok(outer) => translate_tree(outer),
            Err(u) => Ok(Err(u)),
        };
    }
    // FULL JOINs split the block into variants (LEFT, and RIGHT without a
    // match), each a block of its own.
    let mut variants = Vec::new();
    if let Err(u) = full_join_variants(q, Vec::new(), &mut variants)? {
        return Ok(Err(u));
    }
    let mut prepared = Vec::new();
    for (variant, anti) in variants {
        match surgery::prepare(variant, &anti)? {
            Ok(p) => prepared.push(p),
            Err(u) => return Ok(Err(u)),
        }
    }
    if is_aggregate {
        translate_aggregate(q, prepared)
    } else {
        translate_rows(q, prepared)
    }
}

/// For `SELECT a, b, ... FROM (<sub>) s` that outputs exactly the subquery's
/// columns in order (`SELECT * FROM some_view`), a copy of the subquery with
/// the outer names: it is translated as the query itself, not read through a
/// child that would keep a second copy of its result.
unsafe fn trivial_projection(q: *mut pg_sys::Query) -> Option<*mut pg_sys::Query> {
    let query = &*q;
    if !query.setOperations.is_null()
        || query.hasAggs
        || query.hasWindowFuncs
        || query.hasTargetSRFs
        || query.hasSubLinks
        || !query.groupClause.is_null()
        || !query.havingQual.is_null()
        || !query.distinctClause.is_null()
        || !query.limitCount.is_null()
        || !query.limitOffset.is_null()
        || !query.groupingSets.is_null()
        || query.jointree.is_null()
        || !(*query.jointree).quals.is_null()
    {
        return None;
    }
    let rtable = PgList::<pg_sys::RangeTblEntry>::from_pg(query.rtable);
    let from = PgList::<pg_sys::Node>::from_pg((*query.jointree).fromlist);
    if rtable.len() != 1 || from.len() != 1 {
        return None;
    }
    let rte = rtable.get_ptr(0)?;
    if (*rte).rtekind != pg_sys::RTEKind::RTE_SUBQUERY || (*rte).lateral || (*rte).subquery.is_null() {
        return None;
    }
    let sub = (*rte).subquery;
    if recursive::is_recursive_union(&*sub) {
        // Read through its own operator, never as the query itself.
        return None;
    }
    let outer: Vec<*mut pg_sys::TargetEntry> = PgList::<pg_sys::TargetEntry>::from_pg(query.targetList).iter_ptr().filter(|te| !(**te).resjunk).collect();
    let inner: Vec<*mut pg_sys::TargetEntry> = PgList::<pg_sys::TargetEntry>::from_pg((*sub).targetList).iter_ptr().filter(|te| !(**te).resjunk).collect();
    if outer.len() != inner.len() {
        return None;
    }
    for (i, te) in outer.iter().enumerate() {
        let e = (**te).expr as *mut pg_sys::Node;
        if !pgrx::is_a(e, pg_sys::NodeTag::T_Var) {
            return None;
        }
        let v = e as *mut pg_sys::Var;
        if (*v).varno != 1 || (*v).varlevelsup != 0 || (*v).varattno as usize != i + 1 {
            return None;
        }
    }
    let copy = pg_sys::copyObjectImpl(sub as *const std::ffi::c_void) as *mut pg_sys::Query;
    let copied: Vec<*mut pg_sys::TargetEntry> = PgList::<pg_sys::TargetEntry>::from_pg((*copy).targetList).iter_ptr().filter(|te| !(**te).resjunk).collect();
    for (o, c) in outer.iter().zip(copied) {
        (*c).resname = (**o).resname;
    }
    Some(copy)
}

/// The query after PostgreSQL's rewriter: views expanded into subqueries.
unsafe fn rewrite(q: *mut pg_sys::Query) -> PgtResult<*mut pg_sys::Query> {
    let list = PgList::<pg_sys::Query>::from_pg(pg_sys::QueryRewrite(q));
    match (list.len(), list.get_ptr(0)) {
        (1, Some(rewritten)) => Ok(rewritten),
        _ => Err(crate::error::PgtError::internal("the rewriter did not return one query")),
    }
}

/// Replaces every reference to a non-recursive CTE by a subquery holding a copy of
/// the CTE's query, at every level of `q`; afterwards no CTE remains (a CTE
/// referenced nowhere does not change the result). Each level's CTEs are first
/// made self-contained, in definition order (a CTE may read earlier siblings), so a
/// copy placed at any depth needs no level adjustment: a CTE's query cannot refer
/// to outer columns, only to outer CTEs, and those are inlined by then.
unsafe fn inline_ctes(q: *mut pg_sys::Query) -> Result<(), String> {
    inline_ctes_at(q, &mut Vec::new())
}

unsafe fn inline_ctes_at(q: *mut pg_sys::Query, stack: &mut Vec<*mut pg_sys::List>) -> Result<(), String> {
    stack.push((*q).cteList);
    let ctes = PgList::<pg_sys::CommonTableExpr>::from_pg((*q).cteList);
    for cte in ctes.iter_ptr() {
        let inner = (*cte).ctequery as *mut pg_sys::Query;
        if !inner.is_null() && pgrx::is_a(inner as *mut pg_sys::Node, pg_sys::NodeTag::T_Query) {
            inline_ctes_at(inner, stack)?;
        }
    }
    let mut result = inline_references(q, stack);
    if result.is_ok() && (*q).hasSubLinks {
        // Subqueries in expressions are one level down, like those in FROM.
        let mut subselects: Vec<*mut pg_sys::Query> = Vec::new();
        pg_sys::query_tree_walker(
            q,
            Some(collect_subselects),
            &mut subselects as *mut Vec<*mut pg_sys::Query> as *mut std::ffi::c_void,
            pg_sys::QTW_IGNORE_RANGE_TABLE as i32,
        );
        for sub in subselects {
            result = inline_ctes_at(sub, stack);
            if result.is_err() {
                break;
            }
        }
    }
    stack.pop();
    (*q).cteList = std::ptr::null_mut();
    result
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn collect_subselects(node: *mut pg_sys::Node, ctx: *mut std::ffi::c_void) -> bool {
    if node.is_null() {
        return false;
    }
    if pgrx::is_a(node, pg_sys::NodeTag::T_SubLink) {
        let sub = (*(node as *mut pg_sys::SubLink)).subselect;
        if !sub.is_null() && pgrx::is_a(sub, pg_sys::NodeTag::T_Query) {
            (*(ctx as *mut Vec<*mut pg_sys::Query>)).push(sub as *mut pg_sys::Query);
        }
        return pg_sys::expression_tree_walker((*(node as *mut pg_sys::SubLink)).testexpr, Some(collect_subselects), ctx);
    }
    if pgrx::is_a(node, pg_sys::NodeTag::T_Query) {
        return false;
    }
    pg_sys::expression_tree_walker(node, Some(collect_subselects), ctx)
}

unsafe fn inline_references(q: *mut pg_sys::Query, stack: &mut Vec<*mut pg_sys::List>) -> Result<(), String> {
    let rtable = PgList::<pg_sys::RangeTblEntry>::from_pg((*q).rtable);
    for rte in rtable.iter_ptr() {
        match (*rte).rtekind {
            pg_sys::RTEKind::RTE_CTE => {
                if (*rte).self_reference {
                    // A recursive query's reference to itself: translate/recursive.rs.
                    continue;
                }
                let level = stack
                    .len()
                    .checked_sub(1 + (*rte).ctelevelsup as usize)
                    .ok_or_else(|| "a WITH query that cannot be found".to_string())?;
                let name = CStr::from_ptr((*rte).ctename);
                let cte = PgList::<pg_sys::CommonTableExpr>::from_pg(stack[level])
                    .iter_ptr()
                    .find(|c| CStr::from_ptr((**c).ctename) == name)
                    .ok_or_else(|| "a WITH query that cannot be found".to_string())?;
                (*rte).rtekind = pg_sys::RTEKind::RTE_SUBQUERY;
                (*rte).subquery = pg_sys::copyObjectImpl((*cte).ctequery as *const std::ffi::c_void) as *mut pg_sys::Query;
                (*rte).ctename = std::ptr::null_mut();
                (*rte).ctelevelsup = 0;
                // The CTE's column names (`WITH c (x, y) AS ...`) become the
                // subquery's column aliases, or deparsing would name its
                // columns after its target list.
                let eref = (*rte).eref;
                if !eref.is_null() {
                    let alias = if (*rte).alias.is_null() {
                        pg_sys::makeAlias((*eref).aliasname, std::ptr::null_mut())
                    } else {
                        pg_sys::copyObjectImpl((*rte).alias as *const std::ffi::c_void) as *mut pg_sys::Alias
                    };
                    (*alias).colnames = pg_sys::copyObjectImpl((*eref).colnames as *const std::ffi::c_void) as *mut pg_sys::List;
                    (*rte).alias = alias;
                }
                (*rte).security_barrier = false;
            }
            pg_sys::RTEKind::RTE_SUBQUERY => inline_ctes_at((*rte).subquery, stack)?,
            _ => {}
        }
    }
    Ok(())
}

/// Whether subquery `sub` in FROM is read as a child operator, with a state
/// table of its own ([`pgt_delta::node`]), rather than inlined into its
/// parent's block: anything but a select-project-join block of inner joins.
pub(crate) unsafe fn needs_child(sub: &pg_sys::Query) -> bool {
    sub.hasAggs
        || !sub.groupClause.is_null()
        || !sub.havingQual.is_null()
        || !sub.distinctClause.is_null()
        || !sub.setOperations.is_null()
        || !sub.limitCount.is_null()
        || !sub.limitOffset.is_null()
        || !sub.groupingSets.is_null()
        || sub.hasSubLinks
        || sub.hasWindowFuncs
        || sub.hasTargetSRFs
        || PgList::<pg_sys::RangeTblEntry>::from_pg(sub.rtable)
            .iter_ptr()
            .any(|rte| (*rte).rtekind == pg_sys::RTEKind::RTE_JOIN && (*rte).jointype != pg_sys::JoinType::JOIN_INNER)
}

/// A subquery translated as a child operator.
pub(crate) struct Child {
    /// The node (state table not yet numbered).
    pub(crate) node: pgt_delta::Node,
    /// Per visible column: type OID, typmod, collation.
    pub(crate) types: Vec<(pg_sys::Oid, i32, pg_sys::Oid)>,
}

/// Translates subquery `sub` (views expanded, CTEs inlined) as a child
/// operator whose visible columns are named `__pgt_c1`, ... by position.
/// `prefix`: the parent keeps only the rows whose (ranking) column is at
/// most a bound, which a window level may then keep alone.
pub(crate) unsafe fn translate_child(sub: *mut pg_sys::Query, prefix: Option<prefix::PrefixFilter>) -> PgtResult<Result<Child, Unsupported>> {
    let copy = pg_sys::copyObjectImpl(sub as *const std::ffi::c_void) as *mut pg_sys::Query;
    let mut i = 0;
    for te in PgList::<pg_sys::TargetEntry>::from_pg((*copy).targetList).iter_ptr().filter(|te| !(**te).resjunk) {
        i += 1;
        let name = CString::new(pgt_delta::names::child_column(i)).map_err(|_| crate::error::PgtError::internal("column name"))?;
        (*te).resname = pg_sys::pstrdup(name.as_ptr());
    }
    // A window level is a node of its own kind; anything else is translated
    // as a query and its root becomes the node.
    if recursive::is_recursive_union(&*copy) {
        let plan = match recursive::translate(copy)? {
            Ok(plan) => plan,
            Err(u) => return Ok(Err(u)),
        };
        let mut column_types = Vec::new();
        for e in visible_exprs(copy) {
            column_types.push(crate::objects::column_type(pg_sys::exprType(e), pg_sys::exprTypmod(e), pg_sys::exprCollation(e))?);
        }
        let types = visible_exprs(copy).iter().map(|e| (pg_sys::exprType(*e), pg_sys::exprTypmod(*e), pg_sys::exprCollation(*e))).collect();
        return Ok(Ok(Child { node: pgt_delta::Node::Recursive(pgt_delta::ChildRecursive { state: 0, plan, column_types }), types }));
    }
    let window = if (*copy).hasWindowFuncs && (*copy).distinctClause.is_null() {
        match window::translate(copy, prefix)? {
            Ok(window) => Some(window),
            Err(u) => return Ok(Err(u)),
        }
    } else {
        None
    };
    let plan = match window {
        Some(_) => None,
        None => match translate_tree(copy)? {
            Ok(plan) => Some(plan),
            Err(u) => return Ok(Err(u)),
        },
    };
    let exprs = visible_exprs(copy);
    let types: Vec<(pg_sys::Oid, i32, pg_sys::Oid)> =
        exprs.iter().map(|e| (pg_sys::exprType(*e), pg_sys::exprTypmod(*e), pg_sys::exprCollation(*e))).collect();
    let mut column_types = Vec::new();
    for (typ, typmod, coll) in &types {
        if pg_sys::get_typtype(*typ) as u8 == pg_sys::TYPTYPE_PSEUDO {
            unsupported!("a subquery column of type {} (it cannot be stored)", format_type(*typ, -1)?);
        }
        column_types.push(crate::objects::column_type(*typ, *typmod, *coll)?);
    }
    let node = match (window, plan.map(|p| p.root)) {
        (Some(plan), _) => pgt_delta::Node::Window(pgt_delta::ChildWindow { state: 0, plan, column_types }),
        (None, Some(Root::Aggregate(plan))) => pgt_delta::Node::Aggregate(pgt_delta::ChildAggregate { state: 0, plan, column_types }),
        (None, Some(Root::Rows(plan))) => pgt_delta::Node::Rows(pgt_delta::ChildRows { state: 0, plan, column_types }),
        (None, None) => return Err(crate::error::PgtError::internal("a child translated to nothing")),
    };
    Ok(Ok(Child { node, types }))
}

/// Whether a UNION branch must be read through a child operator: anything
/// but a select-project-join block (whose top level may have outer joins).
unsafe fn branch_needs_child(leaf: &pg_sys::Query) -> bool {
    PgList::<pg_sys::RangeTblEntry>::from_pg(leaf.rtable)
        .iter_ptr()
        .any(|rte| (*rte).rtekind == pg_sys::RTEKind::RTE_JOIN && (*rte).jointype == pg_sys::JoinType::JOIN_FULL)
        || leaf.hasAggs
        || !leaf.groupClause.is_null()
        || !leaf.havingQual.is_null()
        || !leaf.distinctClause.is_null()
        || !leaf.setOperations.is_null()
        || !leaf.limitCount.is_null()
        || !leaf.limitOffset.is_null()
        || !leaf.groupingSets.is_null()
        || leaf.hasSubLinks
        || leaf.hasWindowFuncs
        || leaf.hasTargetSRFs
}

/// `SELECT * FROM (<q>) __pgt_s`, parsed and analysed: a block reading `q` as a
/// child operator. `q` must be self-contained (no outer references); it is
/// deparsed with the search path pinned, so names resolve as they did.
unsafe fn wrap_in_subquery(q: *mut pg_sys::Query) -> PgtResult<*mut pg_sys::Query> {
    let text = format!("SELECT * FROM ({}) {}", deparse(q), pgt_delta::names::SUBQUERY_ALIAS);
    let csql = CString::new(text).map_err(|_| crate::error::PgtError::internal("deparsed query contains a NUL byte"))?;
    crate::privilege::with_pinned_search_path(|| crate::parse::parse_single_select(&csql))
}

/// The first FROM item the engine cannot handle, by name.
pub(crate) unsafe fn unsupported_from_item(query: &pg_sys::Query) -> Option<String> {
    let rtable = PgList::<pg_sys::RangeTblEntry>::from_pg(query.rtable);
    for rte in rtable.iter_ptr() {
        match (*rte).rtekind {
            pg_sys::RTEKind::RTE_RELATION => match (*rte).relkind as u8 {
                pg_sys::RELKIND_RELATION | pg_sys::RELKIND_PARTITIONED_TABLE => {}
                _ => return Some("this kind of relation".into()),
            },
            pg_sys::RTEKind::RTE_JOIN => {
                let name = match (*rte).jointype {
                    pg_sys::JoinType::JOIN_INNER => continue,
                    pg_sys::JoinType::JOIN_LEFT | pg_sys::JoinType::JOIN_RIGHT | pg_sys::JoinType::JOIN_FULL => continue,
                    _ => "this kind of join",
                };
                return Some(name.into());
            }
            pg_sys::RTEKind::RTE_SUBQUERY => {}
            // Checked where the block is prepared (surgery::prepare).
            pg_sys::RTEKind::RTE_FUNCTION | pg_sys::RTEKind::RTE_TABLEFUNC => {}
            pg_sys::RTEKind::RTE_VALUES => return Some("VALUES in FROM".into()),
            pg_sys::RTEKind::RTE_CTE => return Some("WITH (common table expressions)".into()),
            pg_sys::RTEKind::RTE_GROUP => {}
            _ => return Some("this kind of FROM item".into()),
        }
    }
    if surgery::has_natural_join(query.jointree as *mut pg_sys::Node) {
        return Some("NATURAL JOIN".into());
    }
    None
}

/// Names (`regprocedure`) of the functions the query calls, directly or as
/// operators, whose volatility class is `class` (`'v'` volatile, `'s'` stable),
/// if any.
fn functions_of_volatility(facts: &walker::QueryFacts, class: char) -> PgtResult<Option<String>> {
    query_one::<String>(
        "SELECT pg_catalog.string_agg(DISTINCT p.oid::pg_catalog.regprocedure::text, ', ') \
         FROM pg_catalog.pg_proc p \
         WHERE p.provolatile = $3 AND (p.oid = ANY ($1) OR p.oid IN \
               (SELECT o.oprcode::pg_catalog.oid FROM pg_catalog.pg_operator o WHERE o.oid = ANY ($2)))",
        &[facts.functions.clone().into(), facts.operators.clone().into(), class.to_string().into()],
    )
}

/// Columns, key and types of relation `relid`; the first field names a reason the
/// relation cannot be a differential input. (What the stream table's owner may
/// read of it is decided by `crate::cdc::differential_blocker`, not here: the
/// translation is about the query alone.)
pub(crate) fn relation_info(relid: pg_sys::Oid) -> PgtResult<(Option<String>, RelationInfo)> {
    let name = crate::parse::relation_name(relid)?;
    let attrs = query_map(
        "SELECT a.attnum::int, a.attname::text, a.attisdropped, a.attgenerated::text, \
                a.atttypid, a.atttypmod, a.attcollation \
         FROM pg_catalog.pg_attribute a WHERE a.attrelid = $1 AND a.attnum > 0 ORDER BY a.attnum",
        &[relid.into()],
        |row| {
            Ok((
                col::<i32>(row, 1)?,
                col::<String>(row, 2)?,
                col::<bool>(row, 3)?,
                col::<String>(row, 4)?,
                col::<pg_sys::Oid>(row, 5)?,
                col::<i32>(row, 6)?,
                col::<pg_sys::Oid>(row, 7)?,
            ))
        },
    )?;
    let mut reason = None;
    let mut columns = Vec::new();
    let mut types = Vec::new();
    for (_, attname, dropped, generated, typ, typmod, coll) in &attrs {
        if *dropped {
            columns.push(None);
            types.push((pg_sys::INT4OID, -1, pg_sys::InvalidOid));
        } else {
            if generated == "v" {
                reason = Some(format!("virtual generated columns ({name})"));
            }
            if attname == pgt_delta::names::WEIGHT {
                reason = Some(format!("a source column named {} ({name})", pgt_delta::names::WEIGHT));
            }
            columns.push(Some(attname.clone()));
            types.push((*typ, *typmod, *coll));
        }
    }
    let key_attnums = key_attnums(relid)?;
    let key = key_attnums
        .iter()
        .filter_map(|n| columns.get((*n - 1) as usize).cloned().flatten())
        .collect();
    let relation = Relation {
        relid: relid.to_u32(),
        table_sql: name.to_sql(),
        buffer_sql: crate::objects::buffer_name(relid).to_sql(),
        columns,
        key,
    };
    Ok((reason, RelationInfo { relation, types, key_attnums }))
}

pub(crate) use crate::objects::key_attnums;

/// Whether `hash_record_extended` can hash values of type `typ`: the type (or, for
/// a domain, its base type) has an extended hash support function, which for
/// arrays and composites means their elements and fields have one. Row
/// identities are such hashes (`pgt_delta::sql::record_hash`).
pub(crate) unsafe fn hashable(typ: pg_sys::Oid) -> bool {
    let base = pg_sys::getBaseType(typ);
    let entry = pg_sys::lookup_type_cache(base, pg_sys::TYPECACHE_HASH_EXTENDED_PROC as i32);
    !entry.is_null() && (*entry).hash_extended_proc != pg_sys::InvalidOid
}

/// The first of `exprs` whose type cannot be hashed into a row identity, as an
/// unsupported construct naming `what` and the type.
unsafe fn unhashable(exprs: &[*mut pg_sys::Node], what: &str) -> PgtResult<Option<Unsupported>> {
    match exprs.iter().map(|e| pg_sys::exprType(*e)).find(|t| !hashable(*t)) {
        Some(t) => Ok(Some(Unsupported(format!(
            "{what} of type {} (no hash operator class to derive a row identity)",
            format_type(t, -1)?
        )))),
        None => Ok(None),
    }
}

/// The non-junk target expressions of `q`, in order.
unsafe fn visible_exprs(q: *mut pg_sys::Query) -> Vec<*mut pg_sys::Node> {
    PgList::<pg_sys::TargetEntry>::from_pg((*q).targetList)
        .iter_ptr()
        .filter(|te| !(**te).resjunk)
        .map(|te| (*te).expr as *mut pg_sys::Node)
        .collect()
}

/// The identity columns of a row block whose visible outputs are `visible`: each
/// input's key columns, appended to `extra` as `__pgt_k<input>_<n>`; none when an
/// input is keyless (rows are then identified by content and multiplicity). The
/// hashed values' types must have hash operator classes.
unsafe fn identity_columns(
    prepared: &surgery::Prepared,
    visible: &[*mut pg_sys::Node],
    extra: &mut Vec<(String, *mut pg_sys::Node)>,
) -> PgtResult<Result<Vec<String>, Unsupported>> {
    if prepared.keyless || prepared.inputs.iter().filter(|i| i.presence.is_none()).any(|i| i.source.key().is_empty()) {
        return Ok(match unhashable(visible, "an output column")? {
            Some(u) => Err(u),
            None => Ok(Vec::new()),
        });
    }
    let keys: Vec<*mut pg_sys::Node> = prepared.keys.iter().flatten().copied().collect();
    if let Some(u) = unhashable(&keys, "a source key")? {
        return Ok(Err(u));
    }
    let mut identity = Vec::new();
    for (k, input_keys) in prepared.keys.iter().enumerate() {
        if prepared.inputs.get(k).is_some_and(|i| i.presence.is_some()) {
            continue;
        }
        for (j, key) in input_keys.iter().enumerate() {
            let name = pgt_delta::names::key_of(k + 1, j + 1);
            extra.push((name.clone(), unfolded_key(*key)));
            identity.push(name);
            if let Some(sign) = numeric_sign(*key) {
                let name = pgt_delta::names::key_sign_of(k + 1, j + 1);
                extra.push((name.clone(), sign));
                identity.push(name);
            }
        }
    }
    // The ordinality of each function in FROM, after every input's keys.
    for (n, key) in prepared.row_keys.iter().enumerate() {
        let name = pgt_delta::names::key_of(prepared.keys.len() + n + 1, 1);
        extra.push((name.clone(), pg_sys::copyObjectImpl(*key as *const _) as *mut pg_sys::Node));
        identity.push(name);
    }
    Ok(Ok(identity))
}

/// A key value as it enters a row identity hash. PostgreSQL's hashes of 64-bit
/// integer types (bigint, timestamp[tz], time) fold the value to 32 bits
/// first (so that equal int4 and int8 values hash alike); keys such as
/// snowflake ids, timestamps or an upstream stream table's `__pgt_row_id` would
/// then collide after some 10^5 rows. Their binary form (`int8send`, ...) is
/// exact and hashed whole; other types are hashed as they are.
unsafe fn unfolded_key(key: *mut pg_sys::Node) -> *mut pg_sys::Node {
    let Some((send, _)) = send_function(pg_sys::exprType(key)) else { return key };
    let args = pg_sys::lappend(std::ptr::null_mut(), key as *mut std::ffi::c_void);
    pg_sys::makeFuncExpr(
        pg_sys::Oid::from(send),
        pg_sys::BYTEAOID,
        args,
        pg_sys::InvalidOid,
        pg_sys::InvalidOid,
        pg_sys::CoercionForm::COERCE_EXPLICIT_CALL,
    ) as *mut pg_sys::Node
}

/// For a numeric key, `key < 0`: it enters the row identity beside the key.
/// PostgreSQL's numeric hash ignores the sign (`x` and `-x` hash alike); the
/// sign keeps them apart, while values the type calls equal (`1.0`, `1.00`)
/// still hash alike. `None` for other types.
unsafe fn numeric_sign(value: *mut pg_sys::Node) -> Option<*mut pg_sys::Node> {
    if pg_sys::getBaseType(pg_sys::exprType(value)) != pg_sys::NUMERICOID {
        return None;
    }
    let zero = pg_sys::makeConst(
        pg_sys::NUMERICOID,
        -1,
        pg_sys::InvalidOid,
        -1,
        pg_sys::Datum::from(pg_sys::int64_to_numeric(0)),
        false,
        false,
    );
    let copy = pg_sys::copyObjectImpl(value as *const std::ffi::c_void);
    let args = pg_sys::lappend(pg_sys::lappend(std::ptr::null_mut(), copy), zero as *mut std::ffi::c_void);
    Some(pg_sys::makeFuncExpr(
        pg_sys::Oid::from(pg_sys::F_NUMERIC_LT),
        pg_sys::BOOLOID,
        args,
        pg_sys::InvalidOid,
        pg_sys::InvalidOid,
        pg_sys::CoercionForm::COERCE_EXPLICIT_CALL,
    ) as *mut pg_sys::Node)
}

/// The pattern a numeric group key or keyless column goes through before it
/// is hashed into a row identity: the value and its sign, two fields (see
/// [`numeric_sign`]).
const SIGNED_NUMERIC_PATTERN: &str = "{}, {} < 0::pg_catalog.numeric";

/// The binary send function (OID and qualified name) of the 64-bit integer
/// types whose hash folds to 32 bits; `None` for every other type.
fn send_function(typ: pg_sys::Oid) -> Option<(u32, &'static str)> {
    match typ {
        pg_sys::INT8OID => Some((pg_sys::F_INT8SEND, "pg_catalog.int8send")),
        pg_sys::TIMESTAMPOID => Some((pg_sys::F_TIMESTAMP_SEND, "pg_catalog.timestamp_send")),
        pg_sys::TIMESTAMPTZOID => Some((pg_sys::F_TIMESTAMPTZ_SEND, "pg_catalog.timestamptz_send")),
        pg_sys::TIMEOID => Some((pg_sys::F_TIME_SEND, "pg_catalog.time_send")),
        _ => None,
    }
}

/// A block of rows: `SELECT <visible> FROM ... WHERE ...`.
unsafe fn translate_rows(q: *mut pg_sys::Query, prepared: Vec<surgery::Prepared>) -> PgtResult<Result<Plan, Unsupported>> {
    let visible_exprs = visible_exprs(q);
    let mut branches = Vec::new();
    for p in prepared {
        let mut extra: Vec<(String, *mut pg_sys::Node)> = Vec::new();
        let identity = match identity_columns(&p, &visible_exprs, &mut extra)? {
            Ok(identity) => identity,
            Err(u) => return Ok(Err(u)),
        };
        let block = surgery::finish(p, surgery::Targets::KeepVisible(extra))?;
        branches.push(RowsBranch { block, identity });
    }
    let visible = surgery::visible_names(q);
    let content_hash = group_hash(&visible_exprs);
    Ok(Ok(Plan::new(Root::Rows(RowsPlan { branches, visible, content_hash, multiplicity: None }))))
}

/// The variants of block `q` without FULL JOINs, appended to `out` with the
/// range-table indexes of their anti-joins: `A FULL JOIN B ON θ` is
/// `A LEFT JOIN B ON θ` plus the rows of `A RIGHT JOIN B ON θ` in which `A`
/// is NULL-extended (an anti-join: `B` rows without a match), so a block with
/// k FULL JOINs is the union of 2^k blocks with LEFT and RIGHT joins only
/// (SQL:2016 7.7 <joined table>). Each side must be a single FROM item, and
/// the FULL JOIN must not lie on the nullable side of another outer join
/// (whose NULL extension would pass the anti-join's test).
unsafe fn full_join_variants(
    q: *mut pg_sys::Query,
    anti: Vec<i32>,
    out: &mut Vec<(*mut pg_sys::Query, Vec<i32>)>,
) -> PgtResult<Result<(), Unsupported>> {
    let Some(full) = surgery::first_full_join(q) else {
        out.push((q, anti));
        return Ok(Ok(()));
    };
    if !pgrx::is_a((*full).larg, pg_sys::NodeTag::T_RangeTblRef) || !pgrx::is_a((*full).rarg, pg_sys::NodeTag::T_RangeTblRef) {
        unsupported!("FULL JOIN whose side is a join (write the join as a subquery)");
    }
    if surgery::on_nullable_side((*q).jointree as *mut pg_sys::Node, (*full).rtindex, false) {
        unsupported!("FULL JOIN on the nullable side of another outer join");
    }
    if (*full).isNatural {
        unsupported!("NATURAL JOIN");
    }
    let rtindex = (*full).rtindex;
    for (jointype, is_anti) in [(pg_sys::JoinType::JOIN_LEFT, false), (pg_sys::JoinType::JOIN_RIGHT, true)] {
        let copy = pg_sys::copyObjectImpl(q as *const std::ffi::c_void) as *mut pg_sys::Query;
        surgery::set_join_type(copy, rtindex, jointype);
        let mut anti = anti.clone();
        if is_anti {
            anti.push(rtindex);
        }
        if let Err(u) = full_join_variants(copy, anti, out)? {
            return Ok(Err(u));
        }
    }
    Ok(Ok(()))
}

/// `A UNION ALL B ...` (a union of row blocks) or `A UNION B ...` (DISTINCT over
/// their union). Each branch must be a select-project-join block.
unsafe fn translate_union(q: *mut pg_sys::Query) -> PgtResult<Result<Plan, Unsupported>> {
    let query = &*q;
    if query.hasSubLinks || query.hasWindowFuncs || query.hasTargetSRFs {
        unsupported!("subquery expressions or window functions over a UNION");
    }
    if !query.limitCount.is_null() || !query.limitOffset.is_null() {
        unsupported!("LIMIT / OFFSET");
    }
    if setop::needs_rewrite(q) {
        return translate_set_operations(q);
    }
    let top = query.setOperations as *mut pg_sys::SetOperationStmt;
    let distinct = !(*top).all;
    let mut leaves = Vec::new();
    if let Err(construct) = union_leaves(top as *mut pg_sys::Node, distinct, &mut leaves) {
        unsupported!("{construct}");
    }
    let rtable = PgList::<pg_sys::RangeTblEntry>::from_pg(query.rtable);
    let visible = surgery::visible_names(q);
    // Each branch keeps its own column types (the planner coerces them later);
    // the group keys of UNION must have the union's types so that a value hashes
    // the same whichever branch produced it.
    let column_types = oid_list((*top).colTypes);
    let column_typmods = int_list((*top).colTypmods);
    let mut branches = Vec::new();
    let mut blocks = Vec::new();
    for rtindex in leaves {
        let rte = rtable.get_ptr(rtindex - 1).ok_or_else(|| crate::error::PgtError::internal("UNION branch not found"))?;
        let mut leaf = (*rte).subquery;
        if branch_needs_child(&*leaf) {
            leaf = wrap_in_subquery(leaf)?;
        }
        if let Some(construct) = unsupported_from_item(&*leaf) {
            unsupported!("{construct} (in a UNION branch)");
        }
        let leaf_targets: Vec<*mut pg_sys::Node> = PgList::<pg_sys::TargetEntry>::from_pg((*leaf).targetList)
            .iter_ptr()
            .filter(|te| !(**te).resjunk)
            .map(|te| pg_sys::copyObjectImpl((*te).expr as *const _) as *mut pg_sys::Node)
            .collect();
        let prepared = match surgery::prepare(leaf, &[])? {
            Ok(p) => p,
            Err(u) => return Ok(Err(u)),
        };
        if distinct {
            let mut keys = Vec::new();
            for (i, e) in leaf_targets.iter().enumerate() {
                let (Some(typ), Some(typmod)) = (column_types.get(i), column_typmods.get(i)) else {
                    return Err(crate::error::PgtError::internal("UNION column types do not match its branches"));
                };
                let coerced = pg_sys::coerce_to_target_type(
                    std::ptr::null_mut(),
                    *e,
                    pg_sys::exprType(*e),
                    *typ,
                    *typmod,
                    pg_sys::CoercionContext::COERCION_IMPLICIT,
                    pg_sys::CoercionForm::COERCE_IMPLICIT_CAST,
                    -1,
                );
                if coerced.is_null() {
                    unsupported!("a UNION column whose branch type cannot be coerced to the union's type");
                }
                keys.push(coerced);
            }
            if let Some(u) = unhashable(&keys, "a UNION column")? {
                return Ok(Err(u));
            }
            let extra = keys.iter().enumerate().map(|(i, e)| (pgt_delta::names::group(i + 1), *e)).collect();
            blocks.push(surgery::finish(prepared, surgery::Targets::Replace(extra))?);
        } else {
            let mut extra: Vec<(String, *mut pg_sys::Node)> =
                visible.iter().cloned().zip(leaf_targets.iter().copied()).collect();
            let identity = match identity_columns(&prepared, &leaf_targets, &mut extra)? {
                Ok(identity) => identity,
                Err(u) => return Ok(Err(u)),
            };
            let block = surgery::finish(prepared, surgery::Targets::Replace(extra))?;
            branches.push(RowsBranch { block, identity });
        }
    }
    if !distinct {
        let content_hash = group_hash(&visible_exprs(q));
        return Ok(Ok(Plan::new(Root::Rows(RowsPlan { branches, visible, content_hash, multiplicity: None }))));
    }
    // UNION: DISTINCT over the union; the group keys are the output columns.
    aggregate_plan(q, &visible_exprs(q), blocks, &[], Vec::new(), visible)
}

/// A set-operation tree with INTERSECT or EXCEPT ([`setop`]): the rewritten
/// query's plan; for an ALL form at the root, rows repeated by the
/// multiplicity column the rewrite adds last.
unsafe fn translate_set_operations(q: *mut pg_sys::Query) -> PgtResult<Result<Plan, Unsupported>> {
    let (rewritten, multiplicity) = match setop::rewrite(q)? {
        Ok(r) => r,
        Err(u) => return Ok(Err(u)),
    };
    let mut plan = match translate_tree(rewritten)? {
        Ok(p) => p,
        Err(u) => return Ok(Err(u)),
    };
    if multiplicity {
        let Root::Rows(rows) = &mut plan.root else {
            return Err(crate::error::PgtError::internal("INTERSECT ALL / EXCEPT ALL did not translate to rows"));
        };
        let Some(m) = rows.visible.pop() else {
            return Err(crate::error::PgtError::internal("the multiplicity column is missing"));
        };
        rows.content_hash.truncate(rows.visible.len());
        for branch in rows.branches.iter_mut() {
            branch.identity.clear();
        }
        rows.multiplicity = Some(m);
    }
    Ok(Ok(plan))
}

/// The [`AggregatePlan`] over `inputs` of query `q` grouped by `groups`, with
/// `aggregates` (one per `aggrefs` entry): the output template, the group keys'
/// equality operators and hash functions, the pass-through columns.
unsafe fn aggregate_plan(
    q: *mut pg_sys::Query,
    groups: &[*mut pg_sys::Node],
    inputs: Vec<pgt_delta::Block>,
    aggrefs: &[*mut pg_sys::Aggref],
    aggregates: Vec<Aggregate>,
    visible: Vec<String>,
) -> PgtResult<Result<Plan, Unsupported>> {
    let passthrough = pgt_delta::aggregate::passthrough_columns(&aggregates);
    let passthrough_types = passthrough_types(&aggregates, aggrefs);
    let output = match surgery::output_template(q, groups, aggrefs, &passthrough, &passthrough_types)? {
        Ok(t) => t,
        Err(u) => return Ok(Err(u)),
    };
    let group_equality = match group_equality(groups)? {
        Ok(ops) => ops,
        Err(u) => return Ok(Err(u)),
    };
    Ok(Ok(Plan::new(Root::Aggregate(AggregatePlan {
        inputs,
        groups: (1..=groups.len()).map(pgt_delta::names::group).collect(),
        group_hash: group_hash(groups),
        group_equality,
        aggregates,
        output_template: output,
        visible,
        having: !(*q).havingQual.is_null(),
        passthrough,
    }))))
}

/// The range-table indexes of the branches of a UNION tree, left to right.
/// Under UNION (`distinct`) any mix of UNION and UNION ALL below collapses into
/// one DISTINCT; under UNION ALL every node must be UNION ALL.
unsafe fn union_leaves(node: *mut pg_sys::Node, distinct: bool, out: &mut Vec<usize>) -> Result<(), String> {
    if pgrx::is_a(node, pg_sys::NodeTag::T_RangeTblRef) {
        out.push((*(node as *mut pg_sys::RangeTblRef)).rtindex as usize);
        return Ok(());
    }
    let op = node as *mut pg_sys::SetOperationStmt;
    match (*op).op {
        pg_sys::SetOperation::SETOP_UNION => {}
        pg_sys::SetOperation::SETOP_INTERSECT => return Err("INTERSECT".into()),
        _ => return Err("EXCEPT".into()),
    }
    if !distinct && !(*op).all {
        return Err("UNION (without ALL) below UNION ALL".into());
    }
    union_leaves((*op).larg, distinct, out)?;
    union_leaves((*op).rarg, distinct, out)
}

/// `SELECT <outputs> FROM ... GROUP BY ... HAVING ...`.
unsafe fn translate_aggregate(q: *mut pg_sys::Query, prepared: Vec<surgery::Prepared>) -> PgtResult<Result<Plan, Unsupported>> {
    let query = &*q;
    // Group keys (for DISTINCT: the distinct columns).
    let groups = if query.distinctClause.is_null() {
        surgery::group_expressions(q)
    } else {
        surgery::distinct_expressions(q)
    };
    if let Some(u) = unhashable(&groups, "a group key")? {
        return Ok(Err(u));
    }
    // Aggregate calls, each once.
    let aggrefs = surgery::aggrefs(q);
    let mut aggregates = Vec::new();
    let mut extra: Vec<(String, *mut pg_sys::Node)> = Vec::new();
    for (i, g) in groups.iter().enumerate() {
        extra.push((pgt_delta::names::group(i + 1), pg_sys::copyObjectImpl(*g as *const _) as *mut pg_sys::Node));
    }
    for (k, aggref) in aggrefs.iter().enumerate() {
        let j = k + 1;
        let a = &**aggref;
        if a.agglevelsup != 0 || a.aggkind as u8 != b'n' {
            unsupported!("ordered-set or hypothetical-set aggregates");
        }
        if a.aggvariadic {
            unsupported!("VARIADIC aggregate calls");
        }
        let (nsp, proname) = function_name(a.aggfnoid)?;
        let display = format!("{proname}(...)");
        let args = PgList::<pg_sys::TargetEntry>::from_pg(a.args);
        let plain_args: Vec<*mut pg_sys::TargetEntry> = args.iter_ptr().filter(|te| !(**te).resjunk).collect();
        let arg_expr = plain_args.first().map(|te| (**te).expr as *mut pg_sys::Node);
        let arg_type = arg_expr.map(|e| pg_sys::exprType(e)).unwrap_or(pg_sys::InvalidOid);
        let exact_sum = [pg_sys::INT2OID, pg_sys::INT4OID, pg_sys::INT8OID, pg_sys::NUMERICOID].contains(&arg_type);
        let integer = [pg_sys::INT2OID, pg_sys::INT4OID, pg_sys::INT8OID].contains(&arg_type);
        let fixed_scale = arg_expr.map(|e| pg_sys::exprTypmod(e) >= 0).unwrap_or(false);
        let fixed_numeric = arg_type == pg_sys::NUMERICOID && fixed_scale;
        let float = [pg_sys::FLOAT4OID, pg_sys::FLOAT8OID].contains(&arg_type);
        let simple = nsp == "pg_catalog" && a.aggdistinct.is_null() && a.aggorder.is_null();
        let kind = match (simple, proname.as_str(), a.aggstar, plain_args.len()) {
            (true, "count", true, _) => AggregateKind::CountStar,
            (true, "count", false, 1) => AggregateKind::Count,
            (true, "sum", false, 1) if exact_sum => AggregateKind::Sum,
            // avg over numeric rounds to a scale that follows the largest scale
            // among the group's current rows, which a running sum cannot know
            // once that row leaves: rescanned — unless the argument has a fixed
            // scale (numeric(p,s)), like the integers' 0.
            (true, "avg", false, 1) if exact_sum && (arg_type != pg_sys::NUMERICOID || fixed_scale) => AggregateKind::Avg,
            (true, "min", false, 1) => AggregateKind::Min,
            (true, "max", false, 1) => AggregateKind::Max,
            (true, "bool_and" | "every", false, 1) => AggregateKind::BoolAnd,
            (true, "bool_or", false, 1) => AggregateKind::BoolOr,
            (true, "bit_and", false, 1) if integer => AggregateKind::BitAnd,
            (true, "bit_or", false, 1) if integer => AggregateKind::BitOr,
            // Integers and numeric(p,s) (see pgt_delta::aggregate): exact
            // sums, and a result scale that does not depend on which rows
            // are in the group; floats: exact sums of their exact values,
            // finished in float8.
            (true, "var_samp" | "variance", false, 1) if integer || fixed_numeric || float => AggregateKind::VarSamp,
            (true, "var_pop", false, 1) if integer || fixed_numeric || float => AggregateKind::VarPop,
            (true, "stddev_samp" | "stddev", false, 1) if integer || fixed_numeric || float => AggregateKind::StddevSamp,
            (true, "stddev_pop", false, 1) if integer || fixed_numeric || float => AggregateKind::StddevPop,
            // The regression family (float8, float8): exact Σx, Σx², Σy, Σy², Σxy.
            (true, "corr", false, 2) if float => AggregateKind::Corr,
            (true, "covar_pop", false, 2) if float => AggregateKind::CovarPop,
            (true, "covar_samp", false, 2) if float => AggregateKind::CovarSamp,
            (true, "regr_avgx", false, 2) if float => AggregateKind::RegrAvgX,
            (true, "regr_avgy", false, 2) if float => AggregateKind::RegrAvgY,
            (true, "regr_count", false, 2) if float => AggregateKind::RegrCount,
            (true, "regr_intercept", false, 2) if float => AggregateKind::RegrIntercept,
            (true, "regr_r2", false, 2) if float => AggregateKind::RegrR2,
            (true, "regr_slope", false, 2) if float => AggregateKind::RegrSlope,
            (true, "regr_sxx", false, 2) if float => AggregateKind::RegrSxx,
            (true, "regr_sxy", false, 2) if float => AggregateKind::RegrSxy,
            (true, "regr_syy", false, 2) if float => AggregateKind::RegrSyy,
            _ => AggregateKind::Rescan,
        };
        let filter_name = (!a.aggfilter.is_null()).then(|| pgt_delta::names::filter(j));
        if let Some(name) = &filter_name {
            extra.push((name.clone(), pg_sys::copyObjectImpl(a.aggfilter as *const _) as *mut pg_sys::Node));
        }
        let mut call = None;
        let mut arg2 = None;
        let arg_name = if kind == AggregateKind::Rescan {
            // Every argument and ORDER BY expression becomes an input column; the
            // call is rebuilt over them.
            let mut columns = Vec::new();
            for (n, te) in args.iter_ptr().enumerate() {
                let name = pgt_delta::names::rescan_arg(j, n + 1);
                extra.push((name.clone(), pg_sys::copyObjectImpl((*te).expr as *const _) as *mut pg_sys::Node));
                columns.push((name, te));
            }
            let mut order_by = Vec::new();
            for sgc in PgList::<pg_sys::SortGroupClause>::from_pg(a.aggorder).iter_ptr() {
                let Some((name, _)) = columns.iter().find(|(_, te)| (**te).ressortgroupref == (*sgc).tleSortGroupRef) else {
                    unsupported!("an ORDER BY inside {proname}(...) that cannot be resolved");
                };
                let operator = qualified_operator((*sgc).sortop)?.unwrap_or_default();
                let nulls = if (*sgc).nulls_first { "NULLS FIRST" } else { "NULLS LAST" };
                order_by.push((name.clone(), format!("USING {operator} {nulls}")));
            }
            call = Some(pgt_delta::AggregateCall {
                function: format!("{}.{}", quote_ident(&nsp), quote_ident(&proname)),
                args: columns.iter().filter(|(_, te)| !(**te).resjunk).map(|(n, _)| n.clone()).collect(),
                distinct: !a.aggdistinct.is_null(),
                order_by,
            });
            None
        } else {
            let name = (kind != AggregateKind::CountStar).then(|| pgt_delta::names::arg(j));
            if let (Some(name), Some(expr)) = (&name, arg_expr) {
                extra.push((name.clone(), pg_sys::copyObjectImpl(expr as *const _) as *mut pg_sys::Node));
            }
            if kind.is_regression() {
                if let Some(te) = plain_args.get(1) {
                    let second = pgt_delta::names::arg2(j);
                    extra.push((second.clone(), pg_sys::copyObjectImpl((**te).expr as *const _) as *mut pg_sys::Node));
                    arg2 = Some(second);
                }
            }
            name
        };
        aggregates.push(Aggregate {
            kind,
            arg: arg_name,
            filter: filter_name,
            arg2,
            arg_type: if arg_type == pg_sys::InvalidOid { "bigint".into() } else { format_type(arg_type, -1)? },
            result_type: format_type(a.aggtype, -1)?,
            display,
            call,
        });
    }
    let mut input = Vec::new();
    for p in prepared {
        let targets = extra.iter().map(|(n, e)| (n.clone(), pg_sys::copyObjectImpl(*e as *const _) as *mut pg_sys::Node)).collect();
        input.push(surgery::finish(p, surgery::Targets::Replace(targets))?);
    }
    aggregate_plan(q, &groups, input, &aggrefs, aggregates, surgery::visible_names(q))
}

/// The schema-qualified default equality operator of each group key's type (the
/// one GROUP BY, DISTINCT and UNION compare with), as `OPERATOR(schema.=)`.
unsafe fn group_equality(groups: &[*mut pg_sys::Node]) -> PgtResult<Result<Vec<String>, Unsupported>> {
    let mut operators = Vec::new();
    for g in groups {
        let typ = pg_sys::exprType(*g);
        let entry = pg_sys::lookup_type_cache(typ, pg_sys::TYPECACHE_EQ_OPR as i32);
        let eq = if entry.is_null() { pg_sys::InvalidOid } else { (*entry).eq_opr };
        match qualified_operator(eq)? {
            Some(op) => operators.push(op),
            None => unsupported!("a group key of type {} (no default equality operator)", format_type(typ, -1)?),
        }
    }
    Ok(Ok(operators))
}

/// Per expression (group key, or visible column of a keyless row), the function
/// (or pattern, see `pgt_delta::sql::hash_through`) its value goes through
/// before it is hashed into a row identity: the binary send function of the
/// 64-bit integer types, whose hash folds to 32 bits, and the sign beside a
/// numeric (see [`unfolded_key`]); empty for the others.
unsafe fn group_hash(groups: &[*mut pg_sys::Node]) -> Vec<String> {
    groups
        .iter()
        .map(|g| {
            let typ = pg_sys::exprType(*g);
            if pg_sys::getBaseType(typ) == pg_sys::NUMERICOID {
                return SIGNED_NUMERIC_PATTERN.to_string();
            }
            send_function(typ).map(|(_, name)| name.to_string()).unwrap_or_default()
        })
        .collect()
}

/// Operator `oid` as `OPERATOR(schema.name)`, which resolves to exactly it
/// whatever the search path; `None` for `InvalidOid` or an unknown operator.
pub(crate) fn qualified_operator(oid: pg_sys::Oid) -> PgtResult<Option<String>> {
    if oid == pg_sys::InvalidOid {
        return Ok(None);
    }
    query_one::<String>(
        "SELECT 'OPERATOR(' || pg_catalog.quote_ident(n.nspname) || '.' || o.oprname || ')' \
         FROM pg_catalog.pg_operator o JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace WHERE o.oid = $1",
        &[oid.into()],
    )
}

/// Types of the pass-through columns (row id, then state), aligned with
/// `pgt_delta::aggregate::passthrough_columns`.
unsafe fn passthrough_types(aggregates: &[Aggregate], aggrefs: &[*mut pg_sys::Aggref]) -> Vec<pg_sys::Oid> {
    let mut types = vec![pg_sys::INT8OID, pg_sys::INT8OID];
    for (agg, aggref) in aggregates.iter().zip(aggrefs) {
        types.push(pg_sys::INT8OID);
        match agg.kind {
            AggregateKind::Sum | AggregateKind::Rescan => types.push((**aggref).aggtype),
            AggregateKind::Avg => types.push(pg_sys::NUMERICOID),
            AggregateKind::BoolAnd | AggregateKind::BoolOr => types.push(pg_sys::INT8OID),
            AggregateKind::BitAnd | AggregateKind::BitOr => types.push(pg_sys::INT8ARRAYOID),
            AggregateKind::VarSamp | AggregateKind::VarPop | AggregateKind::StddevSamp | AggregateKind::StddevPop => {
                types.push(pg_sys::NUMERICOID);
                types.push(pg_sys::NUMERICOID);
            }
            AggregateKind::Min | AggregateKind::Max => {
                let args = PgList::<pg_sys::TargetEntry>::from_pg((**aggref).args);
                let t = args.get_ptr(0).map(|te| pg_sys::exprType((*te).expr as *mut pg_sys::Node));
                types.push(t.unwrap_or(pg_sys::INT8OID));
            }
            AggregateKind::CountStar | AggregateKind::Count => {}
            // The regression family: Σx, Σx², Σy, Σy², Σxy.
            _ => types.extend([pg_sys::NUMERICOID; 5]),
        }
    }
    types
}

fn function_name(oid: pg_sys::Oid) -> PgtResult<(String, String)> {
    let rows = query_map(
        "SELECT n.nspname::text, p.proname::text FROM pg_catalog.pg_proc p \
         JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace WHERE p.oid = $1",
        &[oid.into()],
        |row| Ok((col::<String>(row, 1)?, col::<String>(row, 2)?)),
    )?;
    Ok(rows.into_iter().next().unwrap_or_default())
}

use crate::objects::format_type;

/// The deparsed text of `query` with `search_path` pinned.
unsafe fn deparse(query: *mut pg_sys::Query) -> String {
    crate::privilege::with_pinned_search_path(|| {
        let text = pg_sys::pg_get_querydef(query, false);
        CStr::from_ptr(text).to_string_lossy().into_owned()
    })
}

/// The OIDs of PostgreSQL `OidList` `list` (NIL is empty).
unsafe fn oid_list(list: *mut pg_sys::List) -> Vec<pg_sys::Oid> {
    if list.is_null() {
        return Vec::new();
    }
    (0..(*list).length as usize).map(|i| (*(*list).elements.add(i)).oid_value).collect()
}

/// The integers of PostgreSQL `IntList` `list` (NIL is empty).
unsafe fn int_list(list: *mut pg_sys::List) -> Vec<i32> {
    if list.is_null() {
        return Vec::new();
    }
    (0..(*list).length as usize).map(|i| (*(*list).elements.add(i)).int_value).collect()
}
