//! Configuration parameters (`pg_trickle.*`), registered when the library loads.
//! Each one is documented in docs/CONFIGURATION.md.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;

/// `pg_trickle.enabled`: master switch for automatic (scheduled) refresh.
pub static ENABLED: GucSetting<bool> = GucSetting::<bool>::new(true);

/// `pg_trickle.min_schedule_seconds`: the shortest duration schedule accepted, in
/// seconds.
pub static MIN_SCHEDULE_SECONDS: GucSetting<i32> = GucSetting::<i32>::new(1);

/// `pg_trickle.default_schedule_seconds`: the interval, in seconds, a `calculated`
/// schedule resolves to when no downstream stream table imposes one.
pub static DEFAULT_SCHEDULE_SECONDS: GucSetting<i32> = GucSetting::<i32>::new(60);

/// `pg_trickle.cdc_mode`: default change-capture mode for stream tables created
/// without an explicit `cdc_mode` ('auto', 'trigger' or 'wal').
pub static CDC_MODE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"auto"));

/// `pg_trickle.differential_max_change_ratio`: when the changes to apply exceed
/// this fraction of the sources' rows, a DIFFERENTIAL refresh recomputes in full
/// instead (recomputing is then cheaper).
pub static DIFFERENTIAL_MAX_CHANGE_RATIO: GucSetting<f64> = GucSetting::<f64>::new(0.15);

/// `pg_trickle.ivm_topk_max_limit`: the largest `LIMIT` (plus OFFSET) of a
/// defining query maintained as a TopK (storing only its window); above it,
/// AUTO refreshes in FULL mode (WARNING) and DIFFERENTIAL is refused.
pub static IVM_TOPK_MAX_LIMIT: GucSetting<i32> = GucSetting::<i32>::new(1000);

/// `pg_trickle.max_grouping_set_branches`: the most grouping sets a GROUPING
/// SETS / CUBE / ROLLUP defining query may expand to and be maintained
/// differentially (one aggregate per grouping set); above it, AUTO refreshes
/// in FULL mode (WARNING) and DIFFERENTIAL is refused.
pub static MAX_GROUPING_SET_BRANCHES: GucSetting<i32> = GucSetting::<i32>::new(64);

/// `pg_trickle.ivm_recursive_max_depth`: the most rounds a `WITH RECURSIVE
/// ... UNION ALL` defining query's recursion may take, in a refresh or a
/// recomputation, before it stops with an error (data with a cycle would
/// otherwise recurse forever).
pub static IVM_RECURSIVE_MAX_DEPTH: GucSetting<i32> = GucSetting::<i32>::new(1000);

/// `pg_trickle.scheduler_interval_ms`: the longest a scheduler worker sleeps
/// between two looks at its stream tables, in milliseconds.
pub static SCHEDULER_INTERVAL_MS: GucSetting<i32> = GucSetting::<i32>::new(1000);

/// `pg_trickle.max_consecutive_errors`: scheduled refreshes of one stream table
/// that may fail in a row before it is suspended (0: never suspend).
pub static MAX_CONSECUTIVE_ERRORS: GucSetting<i32> = GucSetting::<i32>::new(3);

/// `pg_trickle.auto_backoff`: a stream table whose refreshes take longer than its
/// interval is refreshed less often (the interval doubles, up to 16 times) until
/// a refresh fits in its interval again.
pub static AUTO_BACKOFF: GucSetting<bool> = GucSetting::<bool>::new(true);

/// `pg_trickle.block_source_ddl`: DDL on a source that changes something a
/// stream table relies on (a column it reads renamed, retyped, dropped or
/// rewritten; the source renamed; its key changed; a view it reads redefined)
/// fails with an error naming the stream tables. Off: the DDL goes through and
/// those stream tables reinitialize at their next refresh. DDL on columns no
/// stream table reads is never blocked.
pub static BLOCK_SOURCE_DDL: GucSetting<bool> = GucSetting::<bool>::new(true);

/// `pg_trickle.max_concurrent_refreshes`: refresh workers a database's scheduler
/// may run at once for refreshes that outgrow `pg_trickle.max_inline_refresh_ms`
/// (0: every refresh runs in the scheduler itself).
pub static MAX_CONCURRENT_REFRESHES: GucSetting<i32> = GucSetting::<i32>::new(2);

/// `pg_trickle.max_inline_refresh_ms`: how long a scheduled refresh may run in
/// the database's scheduler itself, holding up the stream tables after it, in
/// milliseconds. A refresh that takes longer is cancelled and run again in a
/// refresh worker of its own (while one is free), and so are its later
/// refreshes while they stay slow.
pub static MAX_INLINE_REFRESH_MS: GucSetting<i32> = GucSetting::<i32>::new(1000);

/// `pg_trickle.refresh_timeout_ms`: the longest any scheduled refresh may run,
/// in milliseconds (0: no limit). A refresh that takes longer is cancelled and
/// recorded as failed.
pub static REFRESH_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(0);

/// `pg_trickle.scheduler_turn_ms`: when more databases have stream tables than
/// background workers are free, how long a database's scheduler keeps its
/// worker before handing it to a waiting database, in milliseconds.
pub static SCHEDULER_TURN_MS: GucSetting<i32> = GucSetting::<i32>::new(5000);

/// `pg_trickle.change_buffer_alert_kb`: a change buffer larger than this (in kB)
/// draws a WARNING naming the stream tables that hold it back, and shows in
/// `quick_health` and `change_buffer_stats()` (0: never).
pub static CHANGE_BUFFER_ALERT_KB: GucSetting<i32> = GucSetting::<i32>::new(256 * 1024);

/// `pg_trickle.history_retention_s`: refresh history rows older than this are
/// deleted, in seconds (0: kept whatever their age).
pub static HISTORY_RETENTION_S: GucSetting<i32> = GucSetting::<i32>::new(7 * 86_400);

/// `pg_trickle.history_max_rows`: refresh history rows kept per stream table,
/// the newest (0: no limit).
pub static HISTORY_MAX_ROWS: GucSetting<i32> = GucSetting::<i32>::new(10_000);

/// A DIFFERENTIAL refresh of a stream table joining many inputs recomputes in
/// full when the planner estimates its delta statement above this multiple of
/// a full recomputation's cost (0: never).
pub static MAX_DELTA_COST_RATIO: GucSetting<f64> = GucSetting::<f64>::new(4.0);

/// `pg_trickle.delta_temp_file_limit`: the temporary files a DIFFERENTIAL
/// refresh's delta statement may write, in kB; above it the refresh recomputes
/// in full instead. -1: the total size of the stream table's sources (at least
/// 64 MB); 0: no limit of pg_trickle's (PostgreSQL's `temp_file_limit` still
/// applies).
pub static DELTA_TEMP_FILE_LIMIT_KB: GucSetting<i32> = GucSetting::<i32>::new(-1);

/// Whether a FULL refresh of a table nothing follows row by row replaces its
/// contents wholesale, like `REFRESH MATERIALIZED VIEW` (`crate::refresh`'s
/// swap), rather than writing only the rows that differ.
pub static FULL_REFRESH_SWAP: GucSetting<bool> = GucSetting::<bool>::new(true);

/// `pg_trickle.delta_hash_entries_per_change`: the hash tables a delta
/// statement's plan sizes from the planner's estimates start with at most this
/// many entries per changed row (at least 1,024) and grow as rows come
/// (`crate::plan_size`); 0: as the planner sized them.
pub static DELTA_HASH_ENTRIES_PER_CHANGE: GucSetting<i32> = GucSetting::<i32>::new(16);

/// Registers every `pg_trickle.*` parameter. Called once from `_PG_init`.
pub fn register() {
    GucRegistry::define_bool_guc(
        c"pg_trickle.full_refresh_swap",
        c"A FULL refresh replaces a stream table's contents wholesale, like REFRESH MATERIALIZED VIEW.",
        c"Only for stream tables no other stream table reads, without publications or user triggers. Off: write only the rows that differ (less WAL, readers never wait, MVCC-safe; slower).",
        &FULL_REFRESH_SWAP,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_float_guc(
        c"pg_trickle.max_delta_cost_ratio",
        c"Multiple of a full recomputation's estimated cost above which a DIFFERENTIAL refresh recomputes in full.",
        c"Checked for stream tables with a join of at least 4 inputs, from the planner's estimates of both statements (0: never).",
        &MAX_DELTA_COST_RATIO,
        0.0,
        1.0e6,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_trickle.delta_hash_entries_per_change",
        c"Initial hash-table entries per changed row in a refresh's delta statement (0: the planner's estimates).",
        c"PostgreSQL allocates and zeroes recursive unions', hashed set operations' and hashed subqueries' tables at the planner's estimate, which for delta statements can be far above the rows a change reaches; the tables start at this many entries per changed row (at least 1,024) and grow as needed.",
        &DELTA_HASH_ENTRIES_PER_CHANGE,
        0,
        1 << 20,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_trickle.ivm_topk_max_limit",
        c"Largest LIMIT + OFFSET of an ORDER BY ... LIMIT defining query maintained differentially (TopK).",
        c"Above it, AUTO refreshes the stream table in FULL mode and DIFFERENTIAL is refused; checked when the query is analysed (create, alter).",
        &IVM_TOPK_MAX_LIMIT,
        0,
        i32::MAX,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_trickle.ivm_recursive_max_depth",
        c"Most rounds the recursion of a WITH RECURSIVE ... UNION ALL stream table may take before it stops with an error.",
        c"UNION ALL recursion over data with a cycle never ends, in PostgreSQL's own evaluation as in a refresh; this bounds it. Read when the query is analysed (create, alter).",
        &IVM_RECURSIVE_MAX_DEPTH,
        1,
        i32::MAX,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_trickle.max_grouping_set_branches",
        c"Most grouping sets a GROUPING SETS / CUBE / ROLLUP defining query may expand to and be maintained differentially.",
        c"Each grouping set is maintained as an aggregate of its own; above it, AUTO refreshes the stream table in FULL mode and DIFFERENTIAL is refused. Checked when the query is analysed (create, alter).",
        &MAX_GROUPING_SET_BRANCHES,
        1,
        4096,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_trickle.delta_temp_file_limit",
        c"Temporary file space a DIFFERENTIAL refresh's delta may use before the refresh recomputes in full instead.",
        c"-1: the total size of the stream table's sources (at least 64 MB); 0: no limit of pg_trickle's (temp_file_limit still applies).",
        &DELTA_TEMP_FILE_LIMIT_KB,
        -1,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_KB,
    );
    GucRegistry::define_float_guc(
        c"pg_trickle.differential_max_change_ratio",
        c"Fraction of the sources' rows above which a DIFFERENTIAL refresh recomputes in full.",
        c"Compares the captured changes to apply with the sources' estimated row counts (pg_class.reltuples).",
        &DIFFERENTIAL_MAX_CHANGE_RATIO,
        0.0,
        1000.0,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"pg_trickle.enabled",
        c"Enables automatic refresh of stream tables by the background scheduler.",
        c"When off, stream tables are refreshed only by pgtrickle.refresh_stream_table().",
        &ENABLED,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_trickle.min_schedule_seconds",
        c"Shortest duration schedule accepted for a stream table, in seconds.",
        c"create_stream_table and alter_stream_table reject shorter durations.",
        &MIN_SCHEDULE_SECONDS,
        0,
        86_400,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"pg_trickle.default_schedule_seconds",
        c"Interval a 'calculated' schedule resolves to when no downstream stream table sets one, in seconds.",
        c"",
        &DEFAULT_SCHEDULE_SECONDS,
        1,
        86_400 * 7,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"pg_trickle.scheduler_interval_ms",
        c"Longest pause of a scheduler worker between two looks at its stream tables, in milliseconds.",
        c"A worker also wakes when the next stream table falls due.",
        &SCHEDULER_INTERVAL_MS,
        10,
        600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"pg_trickle.max_consecutive_errors",
        c"Failed scheduled refreshes in a row after which a stream table is suspended (0: never).",
        c"Resume a suspended stream table with pgtrickle.alter_stream_table(name, status => 'ACTIVE').",
        &MAX_CONSECUTIVE_ERRORS,
        0,
        1_000_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"pg_trickle.auto_backoff",
        c"Refreshes a stream table less often while its refreshes take longer than its schedule's interval.",
        c"The interval doubles after each refresh longer than it, up to 16 times, and is restored by a refresh that fits.",
        &AUTO_BACKOFF,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"pg_trickle.block_source_ddl",
        c"Blocks DDL on a source that changes what a stream table reads.",
        c"When off, such DDL goes through and the stream tables concerned reinitialize at their next refresh.",
        &BLOCK_SOURCE_DDL,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_trickle.max_concurrent_refreshes",
        c"Refresh workers a database's scheduler may run at once for refreshes slower than pg_trickle.max_inline_refresh_ms.",
        c"0: every scheduled refresh runs in the scheduler itself, one after another.",
        &MAX_CONCURRENT_REFRESHES,
        0,
        32,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_trickle.max_inline_refresh_ms",
        c"How long a scheduled refresh may run in the scheduler itself before it moves to a refresh worker, in milliseconds.",
        c"Bounds how long one slow stream table holds up the others of its database.",
        &MAX_INLINE_REFRESH_MS,
        10,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"pg_trickle.refresh_timeout_ms",
        c"Longest a scheduled refresh may run, in milliseconds (0: no limit).",
        c"A refresh that takes longer is cancelled and recorded as failed.",
        &REFRESH_TIMEOUT_MS,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"pg_trickle.scheduler_turn_ms",
        c"With more databases than free background workers, how long a scheduler keeps its worker before yielding it, in milliseconds.",
        c"Databases waiting for a scheduler are served in turn.",
        &SCHEDULER_TURN_MS,
        100,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"pg_trickle.change_buffer_alert_kb",
        c"Size of a change buffer above which pg_trickle warns, in kB (0: never).",
        c"The WARNING names the stream tables whose pending changes hold the buffer back.",
        &CHANGE_BUFFER_ALERT_KB,
        0,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_KB,
    );
    GucRegistry::define_int_guc(
        c"pg_trickle.history_retention_s",
        c"Age after which refresh history rows are deleted, in seconds (0: never).",
        c"",
        &HISTORY_RETENTION_S,
        0,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"pg_trickle.history_max_rows",
        c"Refresh history rows kept per stream table (0: no limit).",
        c"",
        &HISTORY_MAX_ROWS,
        0,
        i32::MAX,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"pg_trickle.cdc_mode",
        c"Default change-capture mode for new stream tables: auto, trigger or wal.",
        c"'auto' uses statement-level triggers; 'wal' is not available yet.",
        &CDC_MODE,
        GucContext::Suset,
        GucFlags::default(),
    );
}

/// The value of `pg_trickle.cdc_mode` as text ('auto' when unset).
pub fn cdc_mode() -> String {
    CDC_MODE
        .get()
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_else(|| "auto".to_string())
}
