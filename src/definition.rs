//! Deriving a stream table's definition from its defining query: how it will be
//! refreshed (the mode, the DIFFERENTIAL plan, what the owner's rights allow),
//! the checks a new definition must pass, recording its sources and capture —
//! and re-deriving it after DDL on a source (reinitialization). Used by the
//! lifecycle (create, alter) and by refreshes (which reinitialize), so it
//! depends on neither.

use crate::catalog::{self, StreamTable};
use crate::cdc;
use crate::error::{PgtError, PgtResult};
use crate::parse::{self, AnalyzedQuery, SourceKind};
use crate::privilege::as_owner_restricted;
use crate::spi::exec;
use crate::storage;
use crate::translate;
use pgrx::{pg_sys, PgSqlErrorCode};
use pgt_core::ident::{quote_ident, QualifiedName};
use pgt_core::options::RefreshMode;
use pgt_delta::Plan;

/// How a stream table will be refreshed: the effective mode, the DIFFERENTIAL
/// plan, and — for an AUTO stream table whose query is differentiable but
/// whose owner's rights rule DIFFERENTIAL out — why ([`cdc::differential_blocker`]).
pub(crate) struct ModeDecision {
    /// FULL or DIFFERENTIAL.
    pub effective: RefreshMode,
    /// The plan, when DIFFERENTIAL.
    pub plan: Option<Plan>,
    /// The owner's rights that keep an AUTO stream table FULL.
    pub blocker: Option<String>,
}

/// The mode refreshes will use for `requested` and the analysed query, with the
/// DIFFERENTIAL plan: AUTO is DIFFERENTIAL when the query translates and the
/// owner `owner` may maintain it so (it reads every source in full, no
/// row-level security applies to it, capture exists or it may start it), else
/// FULL with a WARNING naming the construct or the right; an explicit
/// DIFFERENTIAL or IMMEDIATE (the same plan, run on each statement's
/// transition tables) that cannot be is an error naming it: 0A000 for the
/// construct, 42501 for the right. Stable functions draw a WARNING.
pub(crate) fn resolve_mode(requested: RefreshMode, analyzed: &AnalyzedQuery, name: &QualifiedName, owner: pg_sys::Oid) -> PgtResult<ModeDecision> {
    let full = |blocker| ModeDecision { effective: RefreshMode::Full, plan: None, blocker };
    if requested == RefreshMode::Full {
        return Ok(full(None));
    }
    // IMMEDIATE runs the DIFFERENTIAL plan on each statement's transition
    // tables; it is refused, never downgraded, where DIFFERENTIAL would be.
    let (effective, reads, what) = if requested == RefreshMode::Immediate {
        (RefreshMode::Immediate, "IMMEDIATE maintenance reads each statement's transition tables", "IMMEDIATE maintenance")
    } else {
        (RefreshMode::Differential, "A DIFFERENTIAL refresh reads change buffers", "DIFFERENTIAL refresh")
    };
    match translate::translate(&analyzed.normalized_sql)? {
        Ok(translation) => {
            let captured: Vec<pg_sys::Oid> =
                analyzed.sources.iter().filter(|s| s.kind.is_captured()).map(|s| s.relid).collect();
            if let Some(blocker) = cdc::differential_blocker(owner, &captured)? {
                if requested == RefreshMode::Auto {
                    pgrx::warning!(
                        "stream table {name} will refresh in FULL mode: DIFFERENTIAL refresh is not possible with {blocker}; \
                         each refresh checks again"
                    );
                    return Ok(full(Some(blocker)));
                }
                return Err(PgtError::new(
                    PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                    format!("stream table {name} cannot be maintained {}: {blocker}", effective.as_str()),
                )
                .detail(format!("{reads}, which hold every row and column of their tables."))
                .hint("Use refresh_mode => 'AUTO' or 'FULL' (FULL runs the query under the owner's privileges and policies)."));
            }
            if let Some(stable) = translation.stable_functions()? {
                pgrx::warning!(
                    "stream table {name} calls stable functions ({stable}); {what} assumes their results \
                     do not change between {}",
                    if effective == RefreshMode::Immediate { "statements" } else { "refreshes" }
                );
            }
            Ok(ModeDecision { effective, plan: Some(translation.plan), blocker: None })
        }
        Err(translate::Unsupported(construct)) if requested == RefreshMode::Auto => {
            pgrx::warning!("stream table {name} will refresh in FULL mode: DIFFERENTIAL refresh does not support {construct}");
            Ok(full(None))
        }
        Err(translate::Unsupported(construct)) => Err(PgtError::new(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("{what} does not support {construct}"),
        )
        .detail(format!("Stream table {name} was asked to be maintained {}.", effective.as_str()))
        .hint("Use refresh_mode => 'AUTO' to fall back to FULL refresh for this query, or 'FULL'.")),
    }
}

/// Errors unless the transaction is READ COMMITTED. Creating, altering and dropping
/// stream tables start and stop change capture; a REPEATABLE READ or SERIALIZABLE
/// transaction's snapshot may predate the capture triggers, so changes committed
/// in between would be neither captured nor visible to the initial population.
pub(crate) fn require_read_committed(function: &str) -> PgtResult<()> {
    let level = unsafe { pg_sys::XactIsoLevel };
    if level >= pg_sys::XACT_REPEATABLE_READ as i32 {
        return Err(PgtError::new(
            PgSqlErrorCode::ERRCODE_ACTIVE_SQL_TRANSACTION,
            format!("pgtrickle.{function} cannot run in a REPEATABLE READ or SERIALIZABLE transaction"),
        )
        .hint("Run it in a READ COMMITTED transaction (the default isolation level)."));
    }
    Ok(())
}

/// Executes the query with `LIMIT 0` as `role`, which checks that `role` may read
/// everything it reads (privileges are checked at executor start, not at parse).
pub(crate) fn check_can_run(query: &AnalyzedQuery, role: pg_sys::Oid) -> PgtResult<()> {
    let probe = format!("SELECT * FROM ({}) __pgt_q LIMIT 0", query.normalized_sql);
    as_owner_restricted(role, || exec(&probe, &[]))?;
    Ok(())
}

/// Records the sources and query tree of a new definition of `st`: dependencies,
/// change capture of new sources, and release of capture no stream table needs
/// any more.
pub(crate) fn replace_sources(st: &StreamTable, analyzed: &AnalyzedQuery, old_dependencies: Vec<catalog::Dependency>) -> PgtResult<()> {
    catalog::replace_dependencies(st.pgt_id, &analyzed.sources)?;
    catalog::set_query_tree(st.pgt_id, &analyzed.tree)?;
    let immediate = st.effective_refresh_mode == RefreshMode::Immediate;
    catalog::set_immediate(st.pgt_id, immediate)?;
    if immediate {
        let mut captured: Vec<&parse::SourceRelation> = analyzed.sources.iter().filter(|s| s.kind.is_captured()).collect();
        captured.sort_by_key(|s| s.relid.to_u32());
        for source in captured {
            cdc::ensure_immediate_triggers(source.relid, st.owner)?;
        }
    }
    for source in analyzed.sources.iter().filter(|s| s.kind.is_captured()) {
        cdc::release_immediate_triggers_if_unused(source.relid)?;
    }
    if st.effective_refresh_mode == RefreshMode::Differential {
        let mut captured: Vec<&parse::SourceRelation> = analyzed.sources.iter().filter(|s| s.kind.is_captured()).collect();
        captured.sort_by_key(|s| s.relid.to_u32());
        for source in captured {
            cdc::ensure_capture(source.relid, st.owner)?;
            cdc::sync_buffer_grants(source.relid)?;
        }
    }
    for old in old_dependencies {
        cdc::release_capture_if_unused(old.source_relid)?;
        cdc::release_immediate_triggers_if_unused(old.source_relid)?;
        cdc::sync_buffer_grants(old.source_relid)?;
    }
    Ok(())
}

/// Re-derives stream table `st` after DDL on a source concerned it
/// ([`crate::ddl`]); called by the refresh that finds it marked `needs_reinit`,
/// which then recomputes it (its frontier was cleared). Steps:
/// - every column it relies on must still exist;
/// - the query is deparsed again from the stored query tree, which names
///   relations and columns by OID and number: renamed sources and columns are
///   followed, and the output column names stay;
/// - it is analysed again (a redefined view brings its new base tables) and its
///   DIFFERENTIAL plan rebuilt;
/// - storage columns whose type changed are retyped in place (grants and indexes
///   stay), unless other stream tables read this one;
/// - dependencies and change capture are recorded anew.
///
/// # Errors
/// - 42703 (undefined_column) when a column it reads was dropped;
/// - 42P17 when it would now read itself (a view redefined to read a stream
///   table downstream of it), 42501 when the owner may not read a new source;
/// - 25001 in a REPEATABLE READ or SERIALIZABLE transaction when it now reads a
///   table no stream table read before (capture starts in this transaction);
/// - 2BP01 (dependent_objects_still_exist) when its output types changed and
///   other stream tables read it;
/// - 0A000 when its output columns changed otherwise;
/// - PostgreSQL's analysis errors for the re-derived query.
///
/// In every case the stream table keeps its contents and the refresh fails
/// (recorded, and counted towards suspension when scheduled).
pub fn reinitialize(st: &StreamTable) -> PgtResult<()> {
    let name = &st.name;
    if let Some((source, signature, attnum)) = catalog::dropped_columns_read(st.pgt_id)?.into_iter().next() {
        let column = crate::ddl::column_name(&signature, attnum).unwrap_or_else(|| format!("number {attnum}"));
        return Err(PgtError::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
            format!("stream table {name} reads column {column} of {source}, which was dropped"),
        )
        .hint("Give the stream table a new defining query with alter_stream_table(name, query => ...), or drop it."));
    }
    let tree = catalog::query_tree(st.pgt_id)?;
    // Without a usable tree (written by another PostgreSQL major version), the
    // stored text is all there is: renames are not followed then.
    let text = match tree {
        Some(tree) => parse::deparse_stored_tree(&tree)?.unwrap_or_else(|| st.defining_query.clone()),
        None => st.defining_query.clone(),
    };
    let analyzed = parse::analyze_defining_query(&text, catalog::is_stream_table)?;
    // The checks create and alter make: a redefined view may now read a stream
    // table downstream of this one, or something the owner may not read.
    check_no_cycle(st, &analyzed)?;
    check_can_run(&analyzed, st.owner)?;
    let old_dependencies = catalog::dependencies(st.pgt_id)?;
    let decision = resolve_mode(st.refresh_mode, &analyzed, name, st.owner)?;
    let (effective, plan) = (decision.effective, decision.plan);
    if effective == RefreshMode::Differential {
        let mut starts_capture = false;
        for source in analyzed.sources.iter().filter(|s| s.kind.is_captured()) {
            starts_capture |= catalog::change_tracking(source.relid)?.is_none();
        }
        if starts_capture {
            // Capture of a source starts now; a snapshot taken before (REPEATABLE
            // READ) could miss changes committed in between.
            require_read_committed("refresh_stream_table (reinitializing a stream table that now captures a table)")?;
        }
    }
    let have = storage::visible_columns(st.relid)?;
    let want = storage::columns_for(&analyzed)?;
    if have != want {
        let same_names = have.len() == want.len() && have.iter().zip(&want).all(|(h, w)| h.name == w.name);
        if !same_names {
            return Err(PgtError::new(
                PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                format!("the output columns of stream table {name} changed after DDL on a source"),
            )
            .hint("Give the stream table a new defining query with alter_stream_table(name, query => ...)."));
        }
        refuse_if_read_downstream(st, "change the column types of", "Drop or alter the dependent stream tables first.")?;
        let _internal = crate::activity::InternalDdl::begin();
        for (h, w) in have.iter().zip(&want).filter(|(h, w)| h != w) {
            exec(
                &format!("ALTER TABLE {} ALTER COLUMN {} TYPE {} USING NULL", name.to_sql(), quote_ident(&h.name), w.sql_type),
                &[],
            )?;
        }
    }
    if let Some(plan) = &plan {
        storage::sync_hidden_columns(st.relid, name, plan)?;
    }
    storage::remove_source_dependencies(st.relid);
    storage::record_source_dependencies(st.relid, &analyzed.sources);
    let mut st = st.clone();
    st.defining_query = analyzed.normalized_sql.clone();
    st.effective_refresh_mode = effective;
    st.delta_plan = plan.as_ref().map(Plan::to_json);
    st.differential_blocker = decision.blocker;
    st.frontier = None;
    catalog::update_stream_table(&st)?;
    replace_sources(&st, &analyzed, old_dependencies)?;
    // The re-derived query text (renames followed) goes into dumps.
    storage::ensure_guard(st.relid)?;
    Ok(())
}

/// Fails with 2BP01 ("cannot `action` stream table X because other stream tables
/// depend on it", naming them) when other stream tables read `st`.
pub(crate) fn refuse_if_read_downstream(st: &StreamTable, action: &str, hint: &str) -> PgtResult<()> {
    let downstream = catalog::downstream_stream_tables(st.relid)?;
    if downstream.is_empty() {
        return Ok(());
    }
    Err(PgtError::new(
        PgSqlErrorCode::ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST,
        format!("cannot {action} stream table {} because other stream tables depend on it", st.name),
    )
    .detail(format!("Stream tables reading it: {}.", downstream.join(", ")))
    .hint(hint.to_string()))
}

/// Rejects a new query that reads the stream table itself or one downstream of it.
pub(crate) fn check_no_cycle(st: &StreamTable, query: &AnalyzedQuery) -> PgtResult<()> {
    let upstreams = query.sources.iter().filter(|s| s.kind == SourceKind::StreamTable).map(|s| s.relid.to_u32()).collect();
    let edges = pgt_core::dag::edges(catalog::stream_table_edges()?);
    let Some(cycle) = pgt_core::dag::cycle_if_reads(&edges, st.relid.to_u32(), &upstreams) else {
        return Ok(());
    };
    // Name the cycle starting from the stream table being changed.
    let mut path = cycle.0;
    if let Some(at) = path.iter().position(|r| *r == st.relid.to_u32()) {
        path.rotate_left(at);
    }
    path.push(st.relid.to_u32());
    let names = path
        .iter()
        .map(|r| parse::relation_name(pg_sys::Oid::from(*r)).map(|n| n.to_string()))
        .collect::<PgtResult<Vec<_>>>()?;
    Err(PgtError::new(
        PgSqlErrorCode::ERRCODE_INVALID_OBJECT_DEFINITION,
        format!("circular dependency: stream table {} would depend on itself", st.name),
    )
    .detail(format!("Cycle: {} (each reads the one before it).", names.join(" → ")))
    .hint("Stream tables must form a DAG; pg_trickle.allow_circular is off."))
}

