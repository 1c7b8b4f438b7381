//! The SQL API (schema `pgtrickle`, SPEC §2.1): thin `#[pg_extern]` wrappers that
//! turn SQL arguments into [`crate::lifecycle`] calls and `Err` results into
//! PostgreSQL errors. Nothing here decides anything. `#[pg_schema] mod pgtrickle`
//! places the functions in schema `pgtrickle` (created by the bootstrap SQL).

use pgrx::prelude::*;

#[pg_schema]
mod pgtrickle {
    use crate::error::OrRaise;
    use crate::lifecycle::{self, AlterArgs, CreateArgs, OnExisting};
    use pgrx::prelude::*;
    use pgrx::{Aggregate, AggregateName, AnyNumeric, Internal};

    /// Defines one of the three `create_*` functions: they share the parameters of
    /// SPEC §2.1 and differ only in what happens when the stream table exists.
    macro_rules! create_function {
        ($(#[$doc:meta])* $fn_name:ident, $on_existing:expr) => {
            $(#[$doc])*
            #[allow(clippy::too_many_arguments)]
            #[pg_extern]
            fn $fn_name(
                name: Option<&str>,
                query: Option<&str>,
                schedule: default!(Option<&str>, "'calculated'"),
                refresh_mode: default!(Option<&str>, "'AUTO'"),
                initialize: default!(Option<bool>, true),
                diamond_consistency: default!(Option<&str>, "NULL"),
                diamond_schedule_policy: default!(Option<&str>, "NULL"),
                cdc_mode: default!(Option<&str>, "NULL"),
                append_only: default!(Option<bool>, false),
                pooler_compatibility_mode: default!(Option<bool>, false),
            ) {
                let args = CreateArgs {
                    name,
                    query,
                    schedule,
                    refresh_mode,
                    initialize,
                    diamond_consistency,
                    diamond_schedule_policy,
                    cdc_mode,
                    append_only,
                    pooler_compatibility_mode,
                };
                lifecycle::create_stream_table(&args, $on_existing).or_raise()
            }
        };
    }

    create_function!(
        /// Creates a stream table `name` defined by `query`. See docs/SQL_REFERENCE.md.
        create_stream_table,
        OnExisting::Fail
    );
    create_function!(
        /// Like `create_stream_table`, but a NOTICE and no change when the stream
        /// table exists.
        create_stream_table_if_not_exists,
        OnExisting::Skip
    );
    create_function!(
        /// Creates the stream table, or brings an existing one in line with the
        /// arguments: nothing when identical, option changes in place, a rebuild when
        /// the query differs.
        create_or_replace_stream_table,
        OnExisting::Replace
    );

    /// Changes a stream table's options and/or its defining query; NULL arguments
    /// leave the setting unchanged.
    #[allow(clippy::too_many_arguments)]
    #[pg_extern]
    fn alter_stream_table(
        name: Option<&str>,
        query: default!(Option<&str>, "NULL"),
        schedule: default!(Option<&str>, "NULL"),
        refresh_mode: default!(Option<&str>, "NULL"),
        status: default!(Option<&str>, "NULL"),
        diamond_consistency: default!(Option<&str>, "NULL"),
        diamond_schedule_policy: default!(Option<&str>, "NULL"),
        cdc_mode: default!(Option<&str>, "NULL"),
        append_only: default!(Option<bool>, "NULL"),
        pooler_compatibility_mode: default!(Option<bool>, "NULL"),
    ) {
        let st = lifecycle::resolve_stream_table_arg(name).or_raise();
        let args = AlterArgs {
            query,
            schedule,
            refresh_mode,
            status,
            diamond_consistency,
            diamond_schedule_policy,
            cdc_mode,
            append_only,
            pooler_compatibility_mode,
        };
        lifecycle::alter_stream_table(st, &args).or_raise()
    }

    /// Drops a stream table: its storage table, catalog rows and unused change capture.
    #[pg_extern]
    fn drop_stream_table(name: Option<&str>) {
        let st = lifecycle::resolve_stream_table_arg(name).or_raise();
        lifecycle::drop_stream_table(st).or_raise()
    }

    /// Refreshes a stream table now, in the caller's transaction.
    #[pg_extern]
    fn refresh_stream_table(name: Option<&str>) {
        lifecycle::refresh_stream_table_named(name).or_raise()
    }

    /// How a stream table is maintained: modes, operator tree with strategies, SQL.
    #[pg_extern]
    fn explain_st(name: Option<&str>) -> String {
        let st = lifecycle::resolve_stream_table_arg(name).or_raise();
        lifecycle::explain_stream_table(&st).or_raise()
    }

    /// Why a stream table refreshes as it does: requested mode, effective mode,
    /// and the reason in one sentence.
    #[pg_extern]
    fn explain_refresh_mode(
        name: Option<&str>,
    ) -> TableIterator<'static, (name!(requested_mode, String), name!(effective_mode, String), name!(reason, String))> {
        let st = lifecycle::resolve_stream_table_arg(name).or_raise();
        let reason = lifecycle::refresh_mode_reason(&st).or_raise();
        TableIterator::once((st.refresh_mode.as_str().to_string(), st.effective_refresh_mode.as_str().to_string(), reason))
    }

    /// The background scheduler of this database: whether automatic refresh is
    /// available (pg_trickle preloaded) and enabled, the launcher's and this
    /// database's worker's process ids, when the worker last finished a
    /// scheduling cycle, how many due checks it ran and skipped (nothing
    /// committed since) since it started, whether the database is served
    /// (`state`: running, waiting for a background worker, starting, disabled,
    /// not available), since when it waits, how many databases wait, and how
    /// many refresh workers run for it.
    #[pg_extern]
    #[allow(clippy::type_complexity)] // the SQL result's columns, spelled out by name!
    fn scheduler_status() -> TableIterator<
        'static,
        (
            name!(available, bool),
            name!(enabled, bool),
            name!(launcher_pid, Option<i32>),
            name!(worker_pid, Option<i32>),
            name!(last_cycle, Option<TimestampWithTimeZone>),
            name!(checks, i64),
            name!(skipped_checks, i64),
            name!(state, String),
            name!(waiting_since, Option<TimestampWithTimeZone>),
            name!(waiting_databases, i32),
            name!(refresh_workers, i32),
        ),
    > {
        let status = crate::scheduler::status();
        // Unix milliseconds to PostgreSQL's microseconds since 2000-01-01.
        let timestamp = |ms: i64| TimestampWithTimeZone::try_from(ms * 1000 - 946_684_800_000_000).ok();
        TableIterator::once((
            status.available,
            crate::guc::ENABLED.get(),
            status.launcher_pid,
            status.worker_pid,
            status.last_cycle_ms.and_then(timestamp),
            i64::try_from(status.checks.0).unwrap_or(i64::MAX),
            i64::try_from(status.checks.1).unwrap_or(i64::MAX),
            status.state.as_str().to_string(),
            status.waiting_since_ms.and_then(timestamp),
            i32::try_from(status.waiting_databases).unwrap_or(i32::MAX),
            i32::try_from(status.refresh_workers).unwrap_or(i32::MAX),
        ))
    }

    /// The storage table of stream table `name` (resolved as every `name`
    /// argument is: unqualified means schema `public`). Errors name what is
    /// wrong (no such relation, not a stream table). Used by the monitoring
    /// functions.
    #[pg_extern(name = "_stream_table_oid", stable)]
    fn stream_table_oid(name: Option<&str>) -> pg_sys::Oid {
        lifecycle::resolve_stream_table_arg(name).or_raise().relid
    }

    /// The diamonds among the stream tables (a stream table reading two that
    /// share a source): one row per member, numbered by group, with whether it
    /// is where the branches meet and its `diamond_consistency`.
    #[pg_extern]
    #[allow(clippy::type_complexity)] // the SQL result's columns, spelled out by name!
    fn diamond_groups() -> TableIterator<
        'static,
        (name!(group_id, i32), name!(stream_table, pg_sys::Oid), name!(is_convergence, bool)),
    > {
        let rows = crate::scheduler::diamond_groups().or_raise();
        TableIterator::new(rows.into_iter().map(|(g, m, c)| (g, pg_sys::Oid::from(m), c)))
    }

    /// Internal: called by the `ddl_command_end` event trigger after GRANT and
    /// REVOKE (`crate::ddl::on_privileges_changed`). Not granted to PUBLIC.
    #[pg_extern(name = "_on_privileges_changed")]
    fn on_privileges_changed() {
        crate::ddl::on_privileges_changed().or_raise()
    }

    /// Internal: per stream table, what the metrics views need computed
    /// outside SQL (`crate::monitoring`): its effective refresh interval
    /// (seconds), the row images in its sources' change buffers it has not
    /// applied, and those buffers' size (bytes). Granted to `pg_monitor`.
    #[pg_extern(name = "_stream_table_load", stable)]
    #[allow(clippy::type_complexity)] // the SQL result's columns, spelled out by name!
    fn stream_table_load() -> TableIterator<
        'static,
        (
            name!(pgt_id, i64),
            name!(schedule_seconds, f64),
            name!(change_buffer_pending_rows, i64),
            name!(change_buffer_bytes, i64),
        ),
    > {
        let loads = crate::monitoring::stream_table_loads().or_raise();
        TableIterator::new(loads.into_iter().map(|(id, l)| (id, l.schedule_seconds, l.pending_rows, l.buffer_bytes)))
    }

    /// Internal: per captured source, the row images in its change buffer and
    /// the buffer's size (bytes). Granted to `pg_monitor`.
    #[pg_extern(name = "_change_buffer_sizes", stable)]
    #[allow(clippy::type_complexity)] // the SQL result's columns, spelled out by name!
    fn change_buffer_sizes() -> TableIterator<'static, (name!(source, pg_sys::Oid), name!(pending_rows, i64), name!(bytes, i64))> {
        let sizes = crate::monitoring::change_buffer_sizes().or_raise();
        TableIterator::new(sizes)
    }

    /// Internal: `pg_trickle.change_buffer_alert_kb` in bytes (0: no alert),
    /// for the monitoring views, which may be read before the library's
    /// settings exist in a session.
    #[pg_extern(name = "_change_buffer_alert_bytes", stable)]
    fn change_buffer_alert_bytes() -> i64 {
        i64::from(crate::guc::CHANGE_BUFFER_ALERT_KB.get().max(0)) * 1024
    }

    /// Internal: whether a refresh is writing a stream table in this session
    /// (`crate::activity`); the guard trigger of every stream table asks.
    #[pg_extern(name = "_stream_table_write_in_progress", stable, parallel_restricted)]
    fn stream_table_write_in_progress() -> bool {
        crate::activity::stream_table_write_in_progress()
    }

    /// Internal: called by the capture triggers; wakes this database's scheduler
    /// when the transaction commits. Not granted to PUBLIC.
    #[pg_extern(name = "_wake_scheduler")]
    fn wake_scheduler() {
        crate::scheduler::wake_at_commit()
    }

    /// Internal: the BEFORE STATEMENT trigger of IMMEDIATE maintenance
    /// (`crate::refresh::immediate`). Created by the bootstrap SQL as
    /// `pgtrickle._immediate_before()`, SECURITY DEFINER.
    #[pg_trigger(sql = false)]
    fn immediate_before<'a>(trigger: &'a PgTrigger<'a>) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, PgTriggerError> {
        crate::refresh::immediate::before_statement(trigger.relid()?).or_raise();
        Ok(None)
    }

    /// Internal: the AFTER STATEMENT triggers of IMMEDIATE maintenance
    /// (`crate::refresh::immediate`), with the statement's transition tables.
    /// Created by the bootstrap SQL as `pgtrickle._immediate_after()`,
    /// SECURITY DEFINER.
    #[pg_trigger(sql = false)]
    fn immediate_after<'a>(trigger: &'a PgTrigger<'a>) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, PgTriggerError> {
        let data = trigger.trigger_data();
        let store = |s: *mut pg_sys::Tuplestorestate| (!s.is_null()).then_some(s);
        let changes = crate::refresh::immediate::StatementChanges {
            relid: trigger.relid()?,
            // SAFETY: the relation the trigger fires on is open while it runs.
            tupdesc: unsafe { (*data.tg_relation).rd_att },
            old: store(data.tg_oldtable),
            new: store(data.tg_newtable),
            truncate: data.tg_event & pg_sys::TRIGGER_EVENT_OPMASK == pg_sys::TRIGGER_EVENT_TRUNCATE,
        };
        crate::refresh::immediate::after_statement(&changes).or_raise();
        Ok(None)
    }

    /// Internal: called by the `sql_drop` event trigger with the OIDs of dropped
    /// relations. Not granted to PUBLIC.
    #[pg_extern(name = "_on_relations_dropped")]
    fn on_relations_dropped(relids: Vec<pg_sys::Oid>) {
        lifecycle::on_relations_dropped(&relids).or_raise()
    }

    /// Internal: called by the `ddl_command_end` event trigger with the OIDs of
    /// relations an ALTER TABLE, ALTER VIEW, CREATE TABLE, CREATE VIEW or ALTER
    /// TYPE touched (`crate::ddl`); `in_ddl_command_end` when called from that
    /// event (the commands collected there are read); `command_tag` the
    /// command's tag. Not granted to PUBLIC.
    #[pg_extern(name = "_on_relations_changed")]
    fn on_relations_changed(relids: Vec<pg_sys::Oid>, in_ddl_command_end: bool, command_tag: &str) {
        crate::ddl::on_relations_changed(&relids, in_ddl_command_end, command_tag).or_raise()
    }

    /// After a logical restore (`pg_restore`, `psql -f dump.sql`): records the
    /// restored stream tables from the definitions their guard triggers carry,
    /// starts their capture and recomputes them once, upstream first; and
    /// recomputes stream tables whose rows a data-only restore loaded. One row
    /// per stream table concerned: its name, `restored` / `recomputed` / `not
    /// restored`, and what was done or why not (`crate::restore`).
    #[pg_extern]
    #[allow(clippy::type_complexity)] // the SQL result's columns, spelled out by name!
    fn finish_restore(
    ) -> TableIterator<'static, (name!(stream_table, String), name!(status, String), name!(detail, String))> {
        let outcomes = crate::restore::finish_restore().or_raise();
        TableIterator::new(outcomes.into_iter().map(|o| (o.stream_table, o.status.to_string(), o.detail)))
    }

    /// Internal, for `sql/pg_trickle--0.1.0--0.2.0.sql` only (which creates,
    /// calls and drops it): `crate::cdc::upgrade_capture_from_0_1_0`.
    #[pg_extern(sql = false)]
    fn upgrade_capture_from_0_1_0() {
        crate::cdc::upgrade_capture_from_0_1_0().or_raise()
    }

    /// Internal: the function every capture trigger calls, with its source's
    /// OID as argument (`crate::cdc::forward_to_capture_function`). Created by
    /// the bootstrap SQL as `pgtrickle._capture_changes()`.
    #[pg_trigger(sql = false)]
    fn capture_changes<'a>(trigger: &'a PgTrigger<'a>) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, PgTriggerError> {
        // SAFETY: the trigger data of this very call.
        unsafe { crate::cdc::forward_to_capture_function(trigger.trigger_data()) }.or_raise();
        Ok(None)
    }

    /// Adds to the exact sum in aggregate state `current` (made on the first
    /// row, in the aggregate's memory context, which `fcinfo` names).
    fn add_to_exact_sum(current: &mut Internal, fcinfo: pg_sys::FunctionCallInfo, add: impl FnOnce(&mut pgt_core::exact::ExactSum)) {
        let state = std::panic::AssertUnwindSafe((current, add));
        // SAFETY: called by an aggregate's transition function; the state
        // lives in the aggregate's memory context.
        unsafe {
            ExactSumOfValues::in_memory_context(fcinfo, move |_| {
                // (Moved whole: the closure captures the unwind-safe wrapper.)
                let state = state;
                let (current, add) = state.0;
                add(current.get_or_insert_default::<pgt_core::exact::ExactSum>());
            })
        };
    }

    /// The `numeric` of the exact sum in aggregate state `current` (its exact
    /// decimal read by `numeric_in`); NULL when no row came.
    fn finish_exact_sum(current: &Internal) -> Option<AnyNumeric> {
        // SAFETY: the state `add_to_exact_sum` built, if any row came.
        let sum = unsafe { current.get::<pgt_core::exact::ExactSum>() }?;
        match AnyNumeric::try_from(sum.to_decimal().as_str()) {
            Ok(n) => Some(n),
            Err(e) => crate::error::PgtError::internal(format!("an exact sum as numeric: {e}")).raise(),
        }
    }

    /// Internal: `pgtrickle._exact_sum(x float8, w bigint) → numeric`, the
    /// exact Σ w·x of the doubles' exact values (`pgt_core::exact`; NULL over
    /// no rows, NaN / ±Infinity as PostgreSQL's float sum has them). The
    /// running sums of the variance and regression families over floats
    /// (`pgt_delta::aggregate`); PostgreSQL's `float8::numeric` keeps 15
    /// digits. Pure, so executable by PUBLIC.
    #[derive(AggregateName)]
    #[aggregate_name = "_exact_sum"]
    pub struct ExactSumOfValues;

    #[pg_aggregate]
    impl Aggregate<ExactSumOfValues> for ExactSumOfValues {
        type State = Internal;
        type Args = (f64, i64);
        type Finalize = Option<AnyNumeric>;

        fn state(mut current: Self::State, (x, weight): Self::Args, fcinfo: pg_sys::FunctionCallInfo) -> Self::State {
            add_to_exact_sum(&mut current, fcinfo, |sum| sum.add(x, weight));
            current
        }

        fn finalize(current: Self::State, _: Self::OrderedSetArgs, _: pg_sys::FunctionCallInfo) -> Self::Finalize {
            finish_exact_sum(&current)
        }
    }

    /// Internal: `pgtrickle._exact_sum(x float8, y float8, w bigint) →
    /// numeric`, the exact Σ w·x·y (as the one-value form).
    #[derive(AggregateName)]
    #[aggregate_name = "_exact_sum"]
    pub struct ExactSumOfProducts;

    #[pg_aggregate]
    impl Aggregate<ExactSumOfProducts> for ExactSumOfProducts {
        type State = Internal;
        type Args = (f64, f64, i64);
        type Finalize = Option<AnyNumeric>;

        fn state(mut current: Self::State, (x, y, weight): Self::Args, fcinfo: pg_sys::FunctionCallInfo) -> Self::State {
            add_to_exact_sum(&mut current, fcinfo, |sum| sum.add_product(x, y, weight));
            current
        }

        fn finalize(current: Self::State, _: Self::OrderedSetArgs, _: pg_sys::FunctionCallInfo) -> Self::Finalize {
            finish_exact_sum(&current)
        }
    }

    /// Internal: called by the guard trigger of a stream table when a COPY
    /// loads rows into it (`crate::restore::contents_loaded`). Executable by
    /// PUBLIC: it checks that the caller may insert into the table.
    #[pg_extern(name = "_stream_table_contents_loaded")]
    fn stream_table_contents_loaded(relid: pg_sys::Oid) {
        crate::restore::contents_loaded(relid).or_raise()
    }

    /// Internal: called by the `ddl_command_end` event trigger after DDL that
    /// may rename or move a schema, function, type or operator a defining
    /// query names, or replace a function (`functions`: the functions the
    /// command reported) (`crate::ddl::on_objects_changed`). Not granted to
    /// PUBLIC.
    #[pg_extern(name = "_on_objects_changed")]
    fn on_objects_changed(command_tag: &str, functions: Vec<pg_sys::Oid>) {
        crate::ddl::on_objects_changed(command_tag, &functions).or_raise()
    }
}
