//! Parse analysis of a defining query with PostgreSQL's own parser.
//!
//! [`analyze_defining_query`] turns the user's text into an [`AnalyzedQuery`]:
//! - the query is parsed (`raw_parser`) and analysed (`parse_analyze_fixedparams`)
//!   exactly as PostgreSQL analyses a `CREATE MATERIALIZED VIEW` body, so names,
//!   types and errors are PostgreSQL's;
//! - it must be one plain `SELECT` (no `SELECT INTO`, data-modifying CTE, locking
//!   clause or parameter);
//! - its output columns must have unique, explicit names that do not start with the
//!   reserved prefix `__pgt_`;
//! - every relation it reads is found, through subqueries, CTEs, sublinks and views
//!   (views are followed down to their base tables) and classified
//!   ([`SourceKind`]); temporary tables, system catalogs, materialized views,
//!   foreign tables, sequences and inheritance parents are rejected;
//! - it is *normalized*: deparsed (`pg_get_querydef`) with `search_path` pinned to
//!   `pg_catalog, pg_temp`, so that every user object is schema-qualified and the
//!   text means the same thing whatever `search_path` a later refresh runs under.
//!
//! Parse analysis checks no privileges; [`crate::lifecycle`] runs the query as its
//! future owner before creating anything, which does.

pub(crate) mod walker;

use crate::error::{PgtError, PgtResult};
use pgrx::pg_sys;
use pgrx::{PgList, PgSqlErrorCode};
use pgt_core::ident::QualifiedName;
use std::ffi::{CStr, CString};

/// The prefix reserved for pg_trickle's hidden columns (`__pgt_row_id`, ...).
pub const RESERVED_PREFIX: &str = "__pgt_";

/// One output column of a defining query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputColumn {
    /// Column name as PostgreSQL reports it (`resname`).
    pub name: String,
    /// Type OID of the column's expression.
    pub type_oid: pg_sys::Oid,
    /// Type modifier (-1 when none).
    pub typmod: i32,
}

/// What kind of relation a source is; stored in `pgt_dependencies.source_kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKind {
    /// An ordinary table (including a leaf partition named directly).
    Table,
    /// A partitioned table; captured on the parent and every partition.
    PartitionedTable,
    /// A view; not captured itself, its base tables are sources too.
    View,
    /// Another stream table; captured like a table.
    StreamTable,
}

impl SourceKind {
    /// The catalog spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Table => "TABLE",
            SourceKind::PartitionedTable => "PARTITIONED_TABLE",
            SourceKind::View => "VIEW",
            SourceKind::StreamTable => "STREAM_TABLE",
        }
    }

    /// Whether changes to this kind of relation are captured by CDC triggers.
    pub fn is_captured(self) -> bool {
        !matches!(self, SourceKind::View)
    }
}

/// One relation a defining query reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRelation {
    /// `pg_class` OID.
    pub relid: pg_sys::Oid,
    /// Its name, for messages.
    pub name: QualifiedName,
    /// Its kind.
    pub kind: SourceKind,
    /// True when the query names it itself; false when only reached through a view.
    pub direct: bool,
    /// Attribute numbers of the columns the query (or a view it reads) uses,
    /// ascending; `None` when it reads the whole row. DDL on other columns does
    /// not concern the stream table (docs/SQL_REFERENCE.md, "Source DDL").
    pub columns_read: Option<Vec<i16>>,
}

/// A validated defining query.
#[derive(Debug, Clone)]
pub struct AnalyzedQuery {
    /// Output columns in order.
    pub columns: Vec<OutputColumn>,
    /// Every relation read, each once, in order of first appearance.
    pub sources: Vec<SourceRelation>,
    /// The query deparsed with every user object schema-qualified.
    pub normalized_sql: String,
    /// The analysed query tree (`nodeToString`), which names relations and columns
    /// by OID and number as a view's stored rule does: deparsed again after a
    /// source or column is renamed, it gives the query under the new names
    /// ([`deparse_stored_tree`]).
    pub tree: String,
    /// The query ends in ORDER BY without LIMIT or OFFSET: the stream table
    /// is a set, the order is not kept (a WARNING says so).
    pub order_by_without_limit: bool,
}

/// Parses, analyses, validates and normalizes `sql` (see the module doc).
///
/// `is_stream_table(relid)` tells which tables are stream tables.
///
/// # Errors
/// - 42601 (syntax_error): not exactly one SELECT statement; PostgreSQL's own
///   syntax errors propagate with their position.
/// - 42P01 and friends: PostgreSQL's analysis errors (unknown table, column, ...).
/// - 0A000 (feature_not_supported): SELECT INTO, data-modifying CTE, FOR UPDATE,
///   and unsupported kinds of source relation.
/// - 42701 (duplicate_column), 42602 (invalid_name), 42939 (reserved_name): output
///   column names.
pub fn analyze_defining_query(
    sql: &str,
    is_stream_table: impl Fn(pg_sys::Oid) -> PgtResult<bool>,
) -> PgtResult<AnalyzedQuery> {
    let csql = CString::new(sql).map_err(|_| {
        PgtError::new(PgSqlErrorCode::ERRCODE_SYNTAX_ERROR, "defining query contains a NUL byte")
    })?;
    unsafe {
        let query = parse_single_select(&csql)?;
        check_query_shape(query)?;
        let columns = output_columns(query)?;
        let facts = walker::collect(query);
        if facts.has_locking_clause {
            return Err(PgtError::new(
                PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                "FOR UPDATE/SHARE is not allowed in a defining query",
            ));
        }
        check_no_temporary_objects(&facts)?;
        let mut sources = classify_sources(&facts.relations, &is_stream_table)?;
        for source in &mut sources {
            source.columns_read = columns_read(&facts.columns_read, source.relid);
        }
        let normalized_sql = normalize(query)?;
        let tree_ptr = pg_sys::nodeToString(query as *const std::ffi::c_void);
        let tree = format!("{}{}", tree_version_prefix(), CStr::from_ptr(tree_ptr).to_string_lossy());
        // (Under DISTINCT ON the ORDER BY says which row of each group is kept.)
        let order_by_without_limit =
            !(*query).sortClause.is_null() && (*query).limitCount.is_null() && (*query).limitOffset.is_null() && !(*query).hasDistinctOn;
        Ok(AnalyzedQuery { columns, sources, normalized_sql, tree, order_by_without_limit })
    }
}

/// Raw-parses `csql`, insists on one SELECT, and analyses it.
pub(crate) unsafe fn parse_single_select(csql: &CStr) -> PgtResult<*mut pg_sys::Query> {
    let raw_list = pg_sys::raw_parser(csql.as_ptr(), pg_sys::RawParseMode::RAW_PARSE_DEFAULT);
    let stmts = PgList::<pg_sys::RawStmt>::from_pg(raw_list);
    if stmts.is_empty() {
        return Err(PgtError::new(PgSqlErrorCode::ERRCODE_SYNTAX_ERROR, "defining query is empty")
            .hint("Pass a SELECT statement."));
    }
    if stmts.len() > 1 {
        return Err(PgtError::new(
            PgSqlErrorCode::ERRCODE_SYNTAX_ERROR,
            "defining query must be a single SELECT statement",
        )
        .detail(format!("The text contains {} statements.", stmts.len())));
    }
    let raw = stmts.get_ptr(0).ok_or_else(|| PgtError::internal("raw parser returned an empty list cell"))?;
    let node = (*raw).stmt;
    if !pgrx::is_a(node, pg_sys::NodeTag::T_SelectStmt) {
        let tag = CStr::from_ptr(pg_sys::CreateCommandName(node)).to_string_lossy().into_owned();
        return Err(PgtError::new(
            PgSqlErrorCode::ERRCODE_SYNTAX_ERROR,
            "defining query must be a SELECT statement",
        )
        .detail(format!("The statement is {tag}.")));
    }
    let select = node as *mut pg_sys::SelectStmt;
    if !(*select).intoClause.is_null() {
        return Err(PgtError::new(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            "SELECT INTO is not allowed in a defining query",
        )
        .hint("Remove the INTO clause; the stream table is the target."));
    }
    let query = pg_sys::parse_analyze_fixedparams(raw, csql.as_ptr(), std::ptr::null(), 0, std::ptr::null_mut());
    Ok(query)
}

/// The union of the columns read of `relid` over all its occurrences; `None` if
/// any occurrence reads the whole row.
fn columns_read(found: &[(pg_sys::Oid, Option<Vec<i16>>)], relid: pg_sys::Oid) -> Option<Vec<i16>> {
    let mut union: Vec<i16> = Vec::new();
    for (_, columns) in found.iter().filter(|(r, _)| *r == relid) {
        union.extend(columns.as_ref()?);
    }
    union.sort_unstable();
    union.dedup();
    Some(union)
}

/// Stored query trees start with the PostgreSQL major version that wrote them:
/// the `nodeToString` format changes between major versions (`pg_upgrade`).
fn tree_version_prefix() -> String {
    format!("pg{}:", pg_sys::PG_VERSION_NUM / 10000)
}

/// Whether the stored query tree `tree` (as [`AnalyzedQuery::tree`]) calls
/// function `function`: directly, as an aggregate or window function, or
/// through an operator. Reads the fields of PostgreSQL's node text
/// (`outfuncs.c`) that hold function OIDs.
pub fn tree_calls_function(tree: &str, function: pg_sys::Oid) -> bool {
    let wanted = function.to_u32();
    [":funcid ", ":aggfnoid ", ":winfnoid ", ":opfuncid "].iter().any(|field| {
        tree.match_indices(field).any(|(at, _)| {
            let digits: String = tree[at + field.len()..].chars().take_while(|c| c.is_ascii_digit()).collect();
            digits.parse::<u32>().is_ok_and(|oid| oid == wanted)
        })
    })
}

/// Deparses a stored query tree ([`AnalyzedQuery::tree`]) under today's names,
/// normalized as [`analyze_defining_query`] does; `None` when it was written by
/// another major version of PostgreSQL.
///
/// # Errors
/// PostgreSQL's, if the tree names an object that no longer exists; callers
/// check first that the columns it reads are still there.
pub fn deparse_stored_tree(tree: &str) -> PgtResult<Option<String>> {
    let Some(tree) = tree.strip_prefix(&tree_version_prefix()) else {
        return Ok(None);
    };
    let ctree = CString::new(tree).map_err(|_| PgtError::internal("stored query tree contains a NUL byte"))?;
    unsafe {
        let node = pg_sys::stringToNode(ctree.as_ptr()) as *mut pg_sys::Node;
        if node.is_null() || !pgrx::is_a(node, pg_sys::NodeTag::T_Query) {
            return Err(PgtError::internal("stored query tree is not a query"));
        }
        normalize(node as *mut pg_sys::Query).map(Some)
    }
}

/// Rejects query shapes a defining query may not have.
unsafe fn check_query_shape(query: *mut pg_sys::Query) -> PgtResult<()> {
    if (*query).commandType != pg_sys::CmdType::CMD_SELECT || !(*query).utilityStmt.is_null() {
        return Err(PgtError::new(PgSqlErrorCode::ERRCODE_SYNTAX_ERROR, "defining query must be a SELECT statement"));
    }
    if (*query).hasModifyingCTE {
        return Err(PgtError::new(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            "data-modifying statements in WITH are not allowed in a defining query",
        ));
    }
    if !(*query).rowMarks.is_null() {
        return Err(PgtError::new(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            "FOR UPDATE/SHARE is not allowed in a defining query",
        ));
    }
    Ok(())
}

/// The query's visible output columns, with their names validated.
unsafe fn output_columns(query: *mut pg_sys::Query) -> PgtResult<Vec<OutputColumn>> {
    let tlist = PgList::<pg_sys::TargetEntry>::from_pg((*query).targetList);
    let mut columns: Vec<OutputColumn> = Vec::new();
    for (position, te) in tlist.iter_ptr().filter(|te| !(**te).resjunk).enumerate() {
        let name = if (*te).resname.is_null() {
            "?column?".to_string()
        } else {
            CStr::from_ptr((*te).resname).to_string_lossy().into_owned()
        };
        if name == "?column?" {
            return Err(PgtError::new(
                PgSqlErrorCode::ERRCODE_INVALID_NAME,
                format!("output column {} of the defining query has no name", position + 1),
            )
            .hint("Give the expression an alias: <expression> AS <name>."));
        }
        if name.starts_with(RESERVED_PREFIX) {
            return Err(PgtError::new(
                PgSqlErrorCode::ERRCODE_RESERVED_NAME,
                format!("output column name \"{name}\" is reserved"),
            )
            .detail(format!("Names starting with \"{RESERVED_PREFIX}\" are pg_trickle's hidden columns."))
            .hint("Rename the column with an alias."));
        }
        if columns.iter().any(|c| c.name == name) {
            return Err(PgtError::new(
                PgSqlErrorCode::ERRCODE_DUPLICATE_COLUMN,
                format!("column name \"{name}\" appears more than once in the defining query"),
            )
            .hint("Give each output column a distinct alias."));
        }
        let expr = (*te).expr as *mut pg_sys::Node;
        columns.push(OutputColumn { name, type_oid: pg_sys::exprType(expr), typmod: pg_sys::exprTypmod(expr) });
    }
    if columns.is_empty() {
        return Err(PgtError::new(
            PgSqlErrorCode::ERRCODE_INVALID_TABLE_DEFINITION,
            "defining query must return at least one column",
        ));
    }
    Ok(columns)
}

/// Rejects functions and operators that live in a temporary schema: the stored
/// query would name another session's objects once this session ends.
fn check_no_temporary_objects(facts: &walker::QueryFacts) -> PgtResult<()> {
    let temporary = crate::spi::query_one::<String>(
        "SELECT pg_catalog.string_agg(x.what, ', ') FROM ( \
           SELECT p.oid::pg_catalog.regprocedure::text AS what FROM pg_catalog.pg_proc p \
           JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
           WHERE p.oid = ANY ($1) AND n.nspname LIKE 'pg\\_temp\\_%' \
           UNION \
           SELECT o.oid::pg_catalog.regoperator::text FROM pg_catalog.pg_operator o \
           JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace \
           WHERE o.oid = ANY ($2) AND n.nspname LIKE 'pg\\_temp\\_%') x",
        &[facts.functions.clone().into(), facts.operators.clone().into()],
    )?;
    match temporary {
        Some(list) => Err(PgtError::new(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("a defining query cannot use temporary objects: {list}"),
        )
        .hint("Stream tables outlive sessions; create the function or operator in a permanent schema.")),
        None => Ok(()),
    }
}

/// Looks each relation up and decides whether it may be a source.
unsafe fn classify_sources(
    relations: &[walker::FoundRelation],
    is_stream_table: &impl Fn(pg_sys::Oid) -> PgtResult<bool>,
) -> PgtResult<Vec<SourceRelation>> {
    let mut out: Vec<SourceRelation> = Vec::new();
    for found in relations {
        if let Some(existing) = out.iter_mut().find(|s| s.relid == found.relid) {
            existing.direct |= found.direct;
            continue;
        }
        let relid = found.relid;
        let name = relation_name(relid)?;
        let relkind = pg_sys::get_rel_relkind(relid) as u8;
        let persistence = pg_sys::get_rel_persistence(relid) as u8;
        let unsupported = |what: &str, hint: &str| {
            PgtError::new(
                PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                format!("{what} {name} cannot be a source of a stream table"),
            )
            .hint(hint.to_string())
        };
        if persistence == pg_sys::RELPERSISTENCE_TEMP {
            return Err(unsupported(
                "temporary table",
                "Stream tables outlive sessions; read a permanent or unlogged table.",
            ));
        }
        if matches!(name.schema.as_str(), "pg_catalog" | "information_schema" | "pg_toast") {
            return Err(unsupported("system relation", "Changes to system catalogs cannot be captured."));
        }
        let kind = match relkind {
            pg_sys::RELKIND_RELATION | pg_sys::RELKIND_PARTITIONED_TABLE if is_partition(relid)? => {
                return Err(unsupported(
                    "partition",
                    "Read its partitioned table, with a WHERE clause on the partition key: statements aimed at \
                     the partitioned table do not fire a partition's own statement triggers.",
                ))
            }
            pg_sys::RELKIND_RELATION => {
                if has_inheritance_children(relid)? {
                    return Err(unsupported(
                        "inheritance parent",
                        "Read the child tables, or turn the hierarchy into a partitioned table.",
                    ));
                }
                if is_inheritance_child(relid)? {
                    return Err(unsupported(
                        "inheritance child",
                        "Statements aimed at the parent do not fire the child's statement triggers; \
                         turn the hierarchy into a partitioned table.",
                    ));
                }
                if is_stream_table(relid)? {
                    SourceKind::StreamTable
                } else {
                    SourceKind::Table
                }
            }
            pg_sys::RELKIND_PARTITIONED_TABLE => {
                if has_foreign_partition(relid)? {
                    return Err(unsupported(
                        "partitioned table with foreign partitions",
                        "Changes to foreign tables cannot be captured.",
                    ));
                }
                SourceKind::PartitionedTable
            }
            pg_sys::RELKIND_VIEW => SourceKind::View,
            pg_sys::RELKIND_MATVIEW => {
                return Err(unsupported(
                    "materialized view",
                    "Define a stream table with the materialized view's query instead.",
                ))
            }
            pg_sys::RELKIND_FOREIGN_TABLE => {
                return Err(unsupported("foreign table", "Changes to foreign tables cannot be captured yet."))
            }
            _ => return Err(unsupported("relation", "Read tables, partitioned tables, views or stream tables.")),
        };
        out.push(SourceRelation { relid, name, kind, direct: found.direct, columns_read: None });
    }
    Ok(out)
}

/// Whether `relid` is a partition (of any level).
fn is_partition(relid: pg_sys::Oid) -> PgtResult<bool> {
    Ok(crate::spi::query_one::<bool>("SELECT relispartition FROM pg_catalog.pg_class WHERE oid = $1", &[relid.into()])?
        .unwrap_or(false))
}

/// Whether plain table `relid` inherits from another table (and is no partition).
fn is_inheritance_child(relid: pg_sys::Oid) -> PgtResult<bool> {
    Ok(crate::spi::query_one::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_inherits WHERE inhrelid = $1)",
        &[relid.into()],
    )?
    .unwrap_or(false))
}

/// Whether partitioned table `relid` has a foreign table among its partitions.
fn has_foreign_partition(relid: pg_sys::Oid) -> PgtResult<bool> {
    Ok(crate::spi::query_one::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_partition_tree($1::pg_catalog.regclass) t \
                        JOIN pg_catalog.pg_class c ON c.oid = t.relid WHERE c.relkind = 'f')",
        &[relid.into()],
    )?
    .unwrap_or(false))
}

/// Whether plain table `relid` has inheritance children (pg_inherits).
fn has_inheritance_children(relid: pg_sys::Oid) -> PgtResult<bool> {
    Ok(crate::spi::query_one::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_inherits WHERE inhparent = $1)",
        &[relid.into()],
    )?
    .unwrap_or(false))
}

/// Schema-qualified name of a relation.
pub fn relation_name(relid: pg_sys::Oid) -> PgtResult<QualifiedName> {
    unsafe {
        let relname = pg_sys::get_rel_name(relid);
        if relname.is_null() {
            return Err(PgtError::new(
                PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
                format!("relation with OID {} does not exist", relid.to_u32()),
            ));
        }
        let nspname = pg_sys::get_namespace_name(pg_sys::get_rel_namespace(relid));
        if nspname.is_null() {
            return Err(PgtError::internal(format!("schema of relation {} not found", relid.to_u32())));
        }
        Ok(QualifiedName::new(
            CStr::from_ptr(nspname).to_string_lossy().into_owned(),
            CStr::from_ptr(relname).to_string_lossy().into_owned(),
        ))
    }
}

/// Deparses `query` with `search_path` pinned so every user object is qualified,
/// then checks that the text analyses again under that path.
unsafe fn normalize(query: *mut pg_sys::Query) -> PgtResult<String> {
    crate::privilege::with_pinned_search_path(|| {
        let text_ptr = pg_sys::pg_get_querydef(query, false);
        let text = CStr::from_ptr(text_ptr).to_string_lossy().into_owned();
        // Round trip: the stored text must mean the same thing under the pinned path.
        let ctext =
            CString::new(text.as_str()).map_err(|_| PgtError::internal("deparsed query contains a NUL byte"))?;
        let _ = parse_single_select(&ctext)?;
        Ok(text)
    })
}
