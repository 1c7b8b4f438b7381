//! Creating, altering and dropping stream tables: the logic behind the SQL API.
//!
//! Everything runs in the caller's transaction, so a failure at any step leaves no
//! trace: no half-made storage table, trigger, change buffer or catalog row.
//! Objects the caller will own (the storage table) are created as the caller;
//! pg_trickle's own objects (catalog rows, change buffers, capture triggers) as the
//! extension owner ([`crate::privilege`]).

use crate::catalog::{self, InitiatedBy, NewStreamTable, StreamTable};
use crate::cdc;
use crate::error::{PgtError, PgtResult};
use crate::guc;
use crate::parse::{self, AnalyzedQuery};
use crate::privilege::{current_user, current_user_owns};
use crate::definition::{check_can_run, check_no_cycle, refuse_if_read_downstream, replace_sources, require_read_committed, resolve_mode};
use crate::refresh;
use crate::spi::{exec, query_one};
use crate::storage;
use crate::translate;
use pgt_delta::Plan;
use pgrx::{pg_sys, PgSqlErrorCode};
use pgt_core::ident::{quote_ident, QualifiedName};
use pgt_core::options::{CdcMode, DiamondConsistency, DiamondSchedulePolicy, RefreshMode, StreamTableStatus};
use pgt_core::schedule::{Schedule, ScheduleError};
use std::time::Duration;

/// Schema of an unqualified stream-table name.
pub const DEFAULT_SCHEMA: &str = "public";

/// Splits a possibly schema-qualified name the way PostgreSQL reads identifiers
/// (`parse_ident`): unquoted parts fold to lower case, quoted parts are kept.
///
/// # Errors
/// 22023 for text that is not an identifier; 42602 for more than two parts.
pub fn parse_name(text: &str) -> PgtResult<QualifiedName> {
    // stringToQualifiedNameList reads identifiers exactly as the parser does:
    // quotes, case folding, and truncation to NAMEDATALEN - 1 bytes, so a long
    // name finds the table CREATE TABLE made.
    let ctext = std::ffi::CString::new(text)
        .map_err(|_| PgtError::new(PgSqlErrorCode::ERRCODE_INVALID_NAME, "name contains a NUL byte"))?;
    let parts: Vec<String> = unsafe {
        let list = pg_sys::stringToQualifiedNameList(ctext.as_ptr(), std::ptr::null_mut());
        pgrx::PgList::<pg_sys::String>::from_pg(list)
            .iter_ptr()
            .map(|s| std::ffi::CStr::from_ptr((*s).sval).to_string_lossy().into_owned())
            .collect()
    };
    match parts.as_slice() {
        [name] => Ok(QualifiedName::new(DEFAULT_SCHEMA, name.clone())),
        [schema, name] => Ok(QualifiedName::new(schema.clone(), name.clone())),
        _ => Err(PgtError::new(
            PgSqlErrorCode::ERRCODE_INVALID_NAME,
            format!("improper stream table name \"{text}\": too many dotted names"),
        )
        .hint("Use name or schema.name.")),
    }
}

/// OID of relation `name`, if it exists (syscache lookups, no SQL).
fn relation_oid(name: &QualifiedName) -> PgtResult<Option<pg_sys::Oid>> {
    let cstr = |s: &str| {
        std::ffi::CString::new(s).map_err(|_| PgtError::new(PgSqlErrorCode::ERRCODE_INVALID_NAME, "name contains a NUL byte"))
    };
    let (schema, relname) = (cstr(&name.schema)?, cstr(&name.name)?);
    unsafe {
        let nsp = pg_sys::get_namespace_oid(schema.as_ptr(), true);
        if nsp == pg_sys::InvalidOid {
            return Ok(None);
        }
        let relid = pg_sys::get_relname_relid(relname.as_ptr(), nsp);
        Ok((relid != pg_sys::InvalidOid).then_some(relid))
    }
}

/// The stream table called `text`.
///
/// # Errors
/// 42P01 when no relation has that name; 42809 when it is not a stream table.
pub fn resolve_stream_table(text: &str) -> PgtResult<StreamTable> {
    let name = parse_name(text)?;
    let relid = relation_oid(&name)?.ok_or_else(|| {
        PgtError::new(PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE, format!("stream table {name} does not exist"))
    })?;
    catalog::stream_table_by_relid(relid)?.ok_or_else(|| {
        PgtError::new(PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE, format!("{name} is not a stream table"))
            .hint("Stream tables are listed in pgtrickle.pgt_stream_tables.")
    })
}

/// [`resolve_stream_table`] for a SQL argument that may be NULL (22004).
pub fn resolve_stream_table_arg(text: Option<&str>) -> PgtResult<StreamTable> {
    catalog::require_current_catalog()?;
    resolve_stream_table(text.ok_or_else(|| null_error("name"))?)
}

/// Errors unless the current role owns `st` (or is a superuser).
fn check_owner(st: &StreamTable) -> PgtResult<()> {
    if current_user_owns(st.relid) {
        Ok(())
    } else {
        Err(PgtError::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("must be owner of stream table {}", st.name),
        ))
    }
}

fn null_error(parameter: &str) -> PgtError {
    PgtError::new(PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, format!("{parameter} must not be NULL"))
}

/// Parses and validates a schedule against `pg_trickle.min_schedule_seconds`.
pub fn validate_schedule(text: &str) -> PgtResult<Schedule> {
    let floor = Duration::from_secs(guc::MIN_SCHEDULE_SECONDS.get().max(0) as u64);
    Schedule::parse(text, floor).map_err(|e| {
        let err = PgtError::new(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, e.to_string());
        match e {
            ScheduleError::Empty => err.hint("Use a duration such as '30s' or '5m', a cron expression, or 'calculated'."),
            ScheduleError::Unparsable { duration_error, cron_error, .. } => err
                .detail(format!("As a duration: {duration_error}. As a cron expression: {cron_error}."))
                .hint("Use a duration such as '30s', '5m' or '1h30m', a cron expression such as '*/5 * * * *' or '@hourly', or 'calculated'."),
            ScheduleError::BelowFloor { .. } => {
                err.hint("Use a longer schedule, or lower pg_trickle.min_schedule_seconds.")
            }
            ScheduleError::TooLong { .. } => err.hint("Use a cron expression for rarer refreshes, e.g. '0 0 1 1 *' (yearly)."),
        }
    })
}

/// Validates a requested refresh mode.
fn validate_refresh_mode(text: &str) -> PgtResult<RefreshMode> {
    Ok(RefreshMode::parse(text)?)
}

/// Validates an explicit CDC mode (None follows `pg_trickle.cdc_mode`, which is
/// checked too).
fn validate_cdc_mode(text: Option<&str>, name: &QualifiedName) -> PgtResult<Option<CdcMode>> {
    let explicit = text.map(CdcMode::parse).transpose()?;
    let effective = match explicit {
        Some(m) => m,
        None => CdcMode::parse(&guc::cdc_mode()).map_err(|e| {
            PgtError::new(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, format!("invalid value \"{}\" for pg_trickle.cdc_mode", e.value))
                .hint("Set pg_trickle.cdc_mode to auto or trigger.")
        })?,
    };
    if effective == CdcMode::Wal {
        return Err(PgtError::new(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("cdc_mode 'wal' is not available yet for stream table {name}"),
        )
        .hint("Use cdc_mode 'auto' or 'trigger' (statement-level triggers)."));
    }
    Ok(explicit)
}

/// Arguments of `create_stream_table` as the SQL function received them.
#[derive(Debug, Clone)]
pub struct CreateArgs<'a> {
    /// The `name` argument.
    pub name: Option<&'a str>,
    /// The `query` argument.
    pub query: Option<&'a str>,
    /// The `schedule` argument.
    pub schedule: Option<&'a str>,
    /// The `refresh_mode` argument.
    pub refresh_mode: Option<&'a str>,
    /// The `initialize` argument.
    pub initialize: Option<bool>,
    /// The `diamond_consistency` argument.
    pub diamond_consistency: Option<&'a str>,
    /// The `diamond_schedule_policy` argument.
    pub diamond_schedule_policy: Option<&'a str>,
    /// The `cdc_mode` argument.
    pub cdc_mode: Option<&'a str>,
    /// The `append_only` argument.
    pub append_only: Option<bool>,
    /// The `pooler_compatibility_mode` argument.
    pub pooler_compatibility_mode: Option<bool>,
}

/// What to do when the stream table exists already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnExisting {
    /// Error 42P07.
    Fail,
    /// NOTICE and do nothing.
    Skip,
    /// Bring the existing stream table in line with the arguments.
    Replace,
}

/// `create_stream_table` and its two variants.
pub fn create_stream_table(args: &CreateArgs, on_existing: OnExisting) -> PgtResult<()> {
    catalog::require_current_catalog()?;
    require_read_committed(match on_existing {
        OnExisting::Fail => "create_stream_table",
        OnExisting::Skip => "create_stream_table_if_not_exists",
        OnExisting::Replace => "create_or_replace_stream_table",
    })?;
    let name_text = args.name.ok_or_else(|| null_error("name"))?;
    let query = args.query.ok_or_else(|| null_error("query"))?;
    let name = parse_name(name_text)?;

    // Options first: a bad option value must not cost a parse.
    let schedule = validate_schedule(args.schedule.ok_or_else(|| null_error("schedule"))?)?;
    let refresh_mode_text = args.refresh_mode.ok_or_else(|| null_error("refresh_mode"))?;
    let initialize = args.initialize.ok_or_else(|| null_error("initialize"))?;
    let diamond_consistency =
        args.diamond_consistency.map(DiamondConsistency::parse).transpose()?.unwrap_or(DiamondConsistency::Atomic);
    let diamond_schedule_policy = args
        .diamond_schedule_policy
        .map(DiamondSchedulePolicy::parse)
        .transpose()?
        .unwrap_or(DiamondSchedulePolicy::Fastest);
    let append_only = args.append_only.ok_or_else(|| null_error("append_only"))?;
    let pooler_compatibility_mode =
        args.pooler_compatibility_mode.ok_or_else(|| null_error("pooler_compatibility_mode"))?;
    let cdc_mode = validate_cdc_mode(args.cdc_mode, &name)?;

    let schema_oid = unsafe {
        let cschema = std::ffi::CString::new(name.schema.as_str())
            .map_err(|_| PgtError::new(PgSqlErrorCode::ERRCODE_INVALID_NAME, "schema name contains a NUL byte"))?;
        pg_sys::get_namespace_oid(cschema.as_ptr(), true)
    };
    if schema_oid == pg_sys::InvalidOid {
        return Err(PgtError::new(
            PgSqlErrorCode::ERRCODE_INVALID_SCHEMA_NAME,
            format!("schema \"{}\" does not exist", name.schema),
        )
        .hint(format!("Create it first with CREATE SCHEMA {}.", quote_ident(&name.schema))));
    }
    if let Some(existing_relid) = relation_oid(&name)? {
        let existing = catalog::stream_table_by_relid(existing_relid)?;
        match (on_existing, existing) {
            (OnExisting::Skip, Some(_)) => {
                pgrx::notice!("stream table {name} already exists, skipping");
                return Ok(());
            }
            (OnExisting::Replace, Some(st)) => {
                let alter = AlterArgs {
                    query: Some(query),
                    schedule: args.schedule,
                    refresh_mode: Some(refresh_mode_text),
                    status: None,
                    diamond_consistency: Some(diamond_consistency.as_str()),
                    diamond_schedule_policy: Some(diamond_schedule_policy.as_str()),
                    cdc_mode: args.cdc_mode,
                    append_only: Some(append_only),
                    pooler_compatibility_mode: Some(pooler_compatibility_mode),
                };
                return alter_stream_table(st, &alter);
            }
            (_, Some(_)) => {
                return Err(PgtError::new(
                    PgSqlErrorCode::ERRCODE_DUPLICATE_TABLE,
                    format!("stream table {name} already exists"),
                )
                .hint("Use pgtrickle.alter_stream_table() to change it, or pgtrickle.create_or_replace_stream_table()."))
            }
            (_, None) => {
                let restored = query_one::<bool>(
                    "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger WHERE tgrelid = $1 AND tgname = $2)",
                    &[existing_relid.into(), storage::GUARD_TRIGGER.into()],
                )?
                .unwrap_or(false);
                return Err(PgtError::new(
                    PgSqlErrorCode::ERRCODE_DUPLICATE_TABLE,
                    format!("relation {name} already exists"),
                )
                .hint(if restored {
                    "It is a stream table restored from a dump: SELECT * FROM pgtrickle.finish_restore() makes it one again."
                } else {
                    "Choose another name for the stream table."
                }))
            }
        }
    }
    let refresh_mode = validate_refresh_mode(refresh_mode_text)?;

    let analyzed = parse::analyze_defining_query(query, catalog::is_stream_table)?;
    // The creator must be able to run the query, as for CREATE MATERIALIZED VIEW.
    check_can_run(&analyzed, current_user())?;
    warn_order_by_without_limit(&analyzed, &name);
    let decision = resolve_mode(refresh_mode, &analyzed, &name, current_user())?;
    let (effective_refresh_mode, plan) = (decision.effective, decision.plan);

    let relid = storage::create_storage(&name, &analyzed, plan.as_ref())?;
    let pgt_id = catalog::insert_stream_table(&NewStreamTable {
        relid,
        defining_query: &analyzed.normalized_sql,
        original_query: query,
        schedule: schedule.canonical(),
        refresh_mode,
        effective_refresh_mode,
        diamond_consistency,
        diamond_schedule_policy,
        cdc_mode,
        append_only,
        pooler_compatibility_mode,
        delta_plan: plan.as_ref().map(Plan::to_json),
        differential_blocker: decision.blocker,
    })?;
    catalog::replace_dependencies(pgt_id, &analyzed.sources)?;
    catalog::set_query_tree(pgt_id, &analyzed.tree)?;
    // Now that the catalog has it, the guard carries the definition into dumps.
    storage::ensure_guard(relid)?;
    if effective_refresh_mode == RefreshMode::Immediate {
        // Triggers on every source, in OID order (no deadlock with another
        // creator); each waits for the source's writers in progress, and
        // every later statement is maintained.
        catalog::set_immediate(pgt_id, true)?;
        let mut sources: Vec<&parse::SourceRelation> = analyzed.sources.iter().filter(|s| s.kind.is_captured()).collect();
        sources.sort_by_key(|s| s.relid.to_u32());
        for source in sources {
            cdc::ensure_immediate_triggers(source.relid, current_user())?;
        }
    }
    if effective_refresh_mode == RefreshMode::Differential {
        // Only DIFFERENTIAL refreshes read change buffers.
        // In OID order, as every taker of capture locks does (no deadlock).
        let mut captured: Vec<&parse::SourceRelation> = analyzed.sources.iter().filter(|s| s.kind.is_captured()).collect();
        captured.sort_by_key(|s| s.relid.to_u32());
        for source in captured {
            cdc::ensure_capture(source.relid, current_user())?;
            cdc::sync_buffer_grants(source.relid)?;
        }
    }
    if initialize {
        refresh::refresh_stream_table(pgt_id, InitiatedBy::Initial)?;
    }
    if let Some((_, _, _)) = crate::scheduler::diamond_groups()?.into_iter().find(|(_, m, sink)| *sink && *m == relid.to_u32()) {
        pgrx::notice!(
            "stream table {name} closes a diamond: two of the relations it reads share a source; with diamond_consistency \
             '{}' the scheduler refreshes {}",
            diamond_consistency.as_str(),
            if diamond_consistency == DiamondConsistency::Atomic {
                "the diamond's stream tables together, in one transaction"
            } else {
                "each of them on its own"
            }
        );
    }
    if crate::scheduler::available() {
        crate::scheduler::request_worker();
        let status = crate::scheduler::status();
        if status.state != crate::scheduler::State::Running && status.waiting_databases > 0 {
            pgrx::warning!(
                "no background worker is free for the scheduler of this database: {} database(s) wait for one of the \
                 max_worker_processes; stream table {name} is refreshed when this database's turn comes \
                 (schedulers hand their worker over every pg_trickle.scheduler_turn_ms); raise max_worker_processes to \
                 give every database its own",
                status.waiting_databases
            );
        }
        if schedule == Schedule::Calculated {
            // Nothing reads a new stream table yet, so nothing tightens it.
            pgrx::notice!(
                "stream table {name} has a calculated schedule and no stream table reads it: it is refreshed every \
                 {} s (pg_trickle.default_schedule_seconds) until one with a schedule of its own does",
                crate::guc::DEFAULT_SCHEDULE_SECONDS.get()
            );
        }
    } else {
        pgrx::warning!(
            "automatic refresh is off: pg_trickle is not in shared_preload_libraries, so stream table {name} \
             is refreshed only by pgtrickle.refresh_stream_table(); add pg_trickle to shared_preload_libraries \
             and restart the server to enable the scheduler"
        );
    }
    Ok(())
}

/// WARNING for a defining query ending in ORDER BY without LIMIT / OFFSET:
/// a stream table, like any table, returns rows in no particular order.
fn warn_order_by_without_limit(analyzed: &parse::AnalyzedQuery, name: &impl std::fmt::Display) {
    if analyzed.order_by_without_limit {
        pgrx::warning!(
            "the ORDER BY of stream table {name}'s defining query has no effect: a stream table is a set of rows and \
             keeps no order; sort when reading it (SELECT ... FROM {name} ORDER BY ...), or add LIMIT to keep only \
             the first rows (TopK)"
        );
    }
}

/// Arguments of `alter_stream_table`; None leaves a setting unchanged.
#[derive(Debug, Clone, Default)]
pub struct AlterArgs<'a> {
    /// The `query` argument.
    pub query: Option<&'a str>,
    /// The `schedule` argument.
    pub schedule: Option<&'a str>,
    /// The `refresh_mode` argument.
    pub refresh_mode: Option<&'a str>,
    /// The `status` argument.
    pub status: Option<&'a str>,
    /// The `diamond_consistency` argument.
    pub diamond_consistency: Option<&'a str>,
    /// The `diamond_schedule_policy` argument.
    pub diamond_schedule_policy: Option<&'a str>,
    /// The `cdc_mode` argument.
    pub cdc_mode: Option<&'a str>,
    /// The `append_only` argument.
    pub append_only: Option<bool>,
    /// The `pooler_compatibility_mode` argument.
    pub pooler_compatibility_mode: Option<bool>,
}

/// `alter_stream_table`: changes the options given, and with a new query rebuilds
/// the stream table (see docs/SQL_REFERENCE.md).
pub fn alter_stream_table(st: StreamTable, args: &AlterArgs) -> PgtResult<()> {
    let pgt_id = st.pgt_id;
    alter_definition(st, args)?;
    // The definition its guard trigger carries into dumps follows.
    if let Some(st) = catalog::stream_table_by_id(pgt_id)? {
        storage::ensure_guard(st.relid)?;
    }
    Ok(())
}

fn alter_definition(st: StreamTable, args: &AlterArgs) -> PgtResult<()> {
    check_owner(&st)?;
    if args.query.is_some() {
        require_read_committed("alter_stream_table")?;
    }
    let mut st = catalog::lock_stream_table(st.pgt_id)?;
    lock_immediate_sources(&st)?;
    let name = st.name.clone();
    if let Some(s) = args.schedule {
        st.schedule = validate_schedule(s)?.canonical();
    }
    let mut mode_changed = false;
    if let Some(m) = args.refresh_mode {
        let requested = validate_refresh_mode(m)?;
        mode_changed = requested != st.refresh_mode;
        st.refresh_mode = requested;
    }
    if let Some(s) = args.status {
        let status = StreamTableStatus::parse(s)?.as_str().to_string();
        if status != st.status {
            // Resuming starts the count of failed refreshes afresh; suspending
            // lets go of the change buffers (the frontier is cleared).
            catalog::set_status(st.pgt_id, &status)?;
            if status == StreamTableStatus::Suspended.as_str() {
                st.frontier = None;
            }
        }
        st.status = status;
    }
    if let Some(d) = args.diamond_consistency {
        st.diamond_consistency = DiamondConsistency::parse(d)?;
    }
    if let Some(p) = args.diamond_schedule_policy {
        st.diamond_schedule_policy = DiamondSchedulePolicy::parse(p)?;
    }
    if args.cdc_mode.is_some() {
        st.cdc_mode = validate_cdc_mode(args.cdc_mode, &name)?;
    }
    if let Some(a) = args.append_only {
        st.append_only = a;
    }
    if let Some(p) = args.pooler_compatibility_mode {
        st.pooler_compatibility_mode = p;
    }

    let new_query = match args.query {
        Some(q) => Some((q.to_string(), parse::analyze_defining_query(q, catalog::is_stream_table)?)),
        None => None,
    };
    let query_changed = new_query.as_ref().is_some_and(|(_, a)| a.normalized_sql != st.defining_query);
    if !query_changed && !mode_changed {
        if let Some(q) = args.query {
            st.original_query = q.to_string();
        }
        return catalog::update_stream_table(&st);
    }
    let (query_text, analyzed) = match new_query {
        Some(q) if query_changed => q,
        _ => (st.original_query.clone(), parse::analyze_defining_query(&st.defining_query, catalog::is_stream_table)?),
    };
    warn_order_by_without_limit(&analyzed, &name);
    let decision = resolve_mode(st.refresh_mode, &analyzed, &name, st.owner)?;
    let (effective, plan) = (decision.effective, decision.plan);
    st.differential_blocker = decision.blocker;
    let plan_json = plan.as_ref().map(Plan::to_json);
    if !query_changed && effective == st.effective_refresh_mode && plan_json == st.delta_plan {
        // AUTO <-> DIFFERENTIAL resolving to the same plan: nothing to rebuild.
        return catalog::update_stream_table(&st);
    }

    // A new defining query, or a new way of maintaining it: rebuild.
    require_read_committed("alter_stream_table")?;
    check_no_cycle(&st, &analyzed)?;
    // Its refreshes will run the query as its owner.
    check_can_run(&analyzed, st.owner)?;
    let old_dependencies = catalog::dependencies(st.pgt_id)?;
    let same_shape = storage::visible_columns(st.relid)? == storage::columns_for(&analyzed)?
        && storage::hidden_columns(st.relid)? == storage::plan_hidden_columns(plan.as_ref());
    if same_shape {
        storage::remove_source_dependencies(st.relid);
        storage::record_source_dependencies(st.relid, &analyzed.sources);
    } else {
        refuse_if_read_downstream(
            &st,
            "change the columns of",
            "Drop or alter the dependent stream tables first, or keep the output columns unchanged.",
        )?;
        st.relid = rebuild_storage(&st, &analyzed, plan.as_ref())?;
    }
    if plan.is_none() {
        storage::drop_state_tables(st.pgt_id)?;
    }
    st.defining_query = analyzed.normalized_sql.clone();
    st.original_query = query_text;
    st.effective_refresh_mode = effective;
    st.delta_plan = plan_json;
    st.is_populated = false;
    st.frontier = None;
    catalog::update_stream_table(&st)?;
    replace_sources(&st, &analyzed, old_dependencies)?;
    refresh::refresh_stream_table(st.pgt_id, InitiatedBy::Initial)?;
    Ok(())
}

/// Replaces the storage table of `st` by one shaped for `query`: the old table is
/// renamed aside, the new one created under the name, the old one dropped. Returns
/// the new OID. Grants, indexes and policies on the old table are not carried over.
fn rebuild_storage(st: &StreamTable, query: &AnalyzedQuery, plan: Option<&Plan>) -> PgtResult<pg_sys::Oid> {
    let _internal = crate::activity::InternalDdl::begin();
    let aside = format!("__pgt_old_{}", st.relid.to_u32());
    exec(&format!("ALTER TABLE {} RENAME TO {}", st.name.to_sql(), quote_ident(&aside)), &[])?;
    let relid = storage::create_storage(&st.name, query, plan)?;
    // Point the catalog at the new table before dropping the old one, so the
    // sql_drop event trigger does not take the drop for the stream table's.
    let mut moved = st.clone();
    moved.relid = relid;
    catalog::update_stream_table(&moved)?;
    exec(&format!("DROP TABLE {}", QualifiedName::new(st.name.schema.clone(), aside).to_sql()), &[])?;
    Ok(relid)
}

/// `drop_stream_table`: removes the storage table, the catalog rows, and change
/// capture no other stream table needs.
pub fn drop_stream_table(st: StreamTable) -> PgtResult<()> {
    check_owner(&st)?;
    require_read_committed("drop_stream_table")?;
    refuse_if_read_downstream(&st, "drop", "Drop the dependent stream tables first.")?;
    let st = catalog::lock_stream_table(st.pgt_id)?;
    lock_immediate_sources(&st)?;
    forget_stream_table(st.pgt_id, st.relid)?;
    exec(&format!("DROP TABLE {}", st.name.to_sql()), &[])?;
    Ok(())
}

/// Removes a stream table's catalog rows and the change capture no other stream
/// table needs. The storage table is left to the caller (dropped already when
/// called from the sql_drop event trigger).
pub fn forget_stream_table(pgt_id: i64, relid: pg_sys::Oid) -> PgtResult<()> {
    let dependencies = catalog::dependencies(pgt_id)?;
    catalog::delete_stream_table(pgt_id)?;
    storage::drop_state_tables(pgt_id)?;
    for dep in dependencies {
        cdc::release_capture_if_unused(dep.source_relid)?;
        cdc::release_immediate_triggers_if_unused(dep.source_relid)?;
        cdc::sync_buffer_grants(dep.source_relid)?;
    }
    cdc::release_capture_if_unused(relid)?;
    cdc::release_immediate_triggers_if_unused(relid)?;
    Ok(())
}

/// For an IMMEDIATE stream table about to be altered or dropped: locks its
/// sources against writes (SHARE ROW EXCLUSIVE, in OID order), then its
/// maintenance row — the order writers take them in (a statement locks its
/// table, then its BEFORE trigger the row, then its AFTER trigger writes the
/// stream table), so that neither waits for the other in a cycle.
fn lock_immediate_sources(st: &StreamTable) -> PgtResult<()> {
    if st.effective_refresh_mode != RefreshMode::Immediate {
        return Ok(());
    }
    for dep in catalog::dependencies(st.pgt_id)? {
        if dep.kind != parse::SourceKind::View.as_str() && unsafe { !pg_sys::get_rel_name(dep.source_relid).is_null() } {
            unsafe { pg_sys::LockRelationOid(dep.source_relid, pg_sys::ShareRowExclusiveLock as pg_sys::LOCKMODE) };
        }
    }
    catalog::lock_immediate(st.pgt_id)?;
    Ok(())
}

/// Called by the `sql_drop` event trigger with the OIDs of dropped relations:
/// forgets stream tables whose storage was dropped (DROP TABLE, DROP ... CASCADE,
/// DROP SCHEMA ... CASCADE, DROP OWNED) and change capture of dropped sources.
pub fn on_relations_dropped(relids: &[pg_sys::Oid]) -> PgtResult<()> {
    for relid in relids {
        if let Some(pgt_id) = catalog::pgt_id_by_relid(*relid)? {
            forget_stream_table(pgt_id, *relid)?;
        }
    }
    for relid in relids {
        cdc::release_capture_if_unused(*relid)?;
    }
    Ok(())
}

/// `explain_st`: how the stream table is maintained — its modes, the operator
/// tree with each operator's strategy, and the SQL a refresh runs.
pub fn explain_stream_table(st: &StreamTable) -> PgtResult<String> {
    let mut out = format!(
        "stream table {}\nrefresh mode: {} (effective: {})\n",
        st.name, st.refresh_mode, st.effective_refresh_mode
    );
    match st.delta_plan.as_deref().map(Plan::from_json) {
        Some(Ok(plan)) => {
            let frontier = pgt_delta::source::Frontier {
                snapshot: st.frontier.clone().unwrap_or_else(|| "0:0:".into()),
                xid: st.frontier_xid.clone(),
                cid: st.frontier_cid,
            };
            out.push_str(&plan.explain(&st.tables(), &frontier));
            if st.effective_refresh_mode == RefreshMode::Immediate {
                out.push_str("maintained in the writing transaction by statement-level triggers:\n");
                for trigger in cdc::immediate_triggers_of(st.pgt_id)? {
                    out.push_str(&format!("  {trigger}\n"));
                }
            }
        }
        Some(Err(e)) => out.push_str(&format!("stored plan unreadable: {e}\n")),
        None => {
            let why = refresh_mode_reason(st)?;
            out.push_str(&format!("every refresh recomputes the query: {why}\nfull SQL:\n  {}\n", st.defining_query));
        }
    }
    Ok(out)
}

/// Why `st` refreshes in its effective mode, in one sentence: FULL requested, the
/// construct that keeps it from DIFFERENTIAL, or that it is differentiable; and
/// whether DDL on a source marked it for reinitialization.
pub fn refresh_mode_reason(st: &StreamTable) -> PgtResult<String> {
    let mut why = if st.effective_refresh_mode == RefreshMode::Immediate {
        "IMMEDIATE was requested: every statement that changes a source applies its delta before it returns, in its \
         transaction (explain_st shows the operator tree and the triggers); a TRUNCATE of a source or DDL on one \
         recomputes it in that transaction"
            .to_string()
    } else if st.delta_plan.is_some() {
        "the defining query is maintained differentially: a refresh applies the captured changes (explain_st shows \
         the operator tree); it recomputes in full only after a TRUNCATE of a source, when the changes exceed \
         pg_trickle.differential_max_change_ratio, or after DDL on a source"
            .to_string()
    } else if st.refresh_mode == RefreshMode::Full {
        "FULL was requested".to_string()
    } else if let Some(blocker) = &st.differential_blocker {
        format!(
            "DIFFERENTIAL refresh is not possible with {blocker}; every refresh checks again and switches to DIFFERENTIAL \
             once it is"
        )
    } else if st.needs_reinit {
        // The stored text may name what DDL renamed: do not analyse it now.
        return Ok("DDL on a source concerned it, so its next refresh reinitializes it and decides its mode again".into());
    } else {
        match translate::translate(&st.defining_query)? {
            Ok(_) => "the query would be differentiable now; alter_stream_table(name, refresh_mode => 'AUTO') rebuilds it"
                .to_string(),
            Err(translate::Unsupported(construct)) => format!("DIFFERENTIAL refresh does not support {construct}"),
        }
    };
    if st.needs_reinit {
        why.push_str("; DDL on a source (or a change of rights) concerned it, so its next refresh reinitializes it");
    }
    Ok(why)
}

/// `refresh_stream_table`: a manual refresh, recorded with initiated_by MANUAL.
/// Resolves the name without reading the catalog; the refresh reads (and locks)
/// the stream table's row once.
pub fn refresh_stream_table_named(text: Option<&str>) -> PgtResult<()> {
    catalog::require_current_catalog()?;
    let name = parse_name(text.ok_or_else(|| null_error("name"))?)?;
    let relid = relation_oid(&name)?.ok_or_else(|| {
        PgtError::new(PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE, format!("stream table {name} does not exist"))
    })?;
    let Some(pgt_id) = catalog::pgt_id_by_relid(relid)? else {
        return Err(PgtError::new(PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE, format!("{name} is not a stream table"))
            .hint("Stream tables are listed in pgtrickle.pgt_stream_tables."));
    };
    if !current_user_owns(relid) {
        return Err(PgtError::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("must be owner of stream table {name}"),
        ));
    }
    refresh::refresh_stream_table(pgt_id, InitiatedBy::Manual)?;
    Ok(())
}
