//! Automatic refresh: a launcher background worker, and one scheduler worker per
//! database that has pg_trickle ([`launcher`], [`worker`]), coordinated through
//! a small shared-memory registry ([`registry`]).
//!
//! All of it exists only when pg_trickle is in `shared_preload_libraries`
//! ([`available`]); without it, stream tables are refreshed by
//! `pgtrickle.refresh_stream_table()` only, and `create_stream_table` says so.
//!
//! A scheduler worker keeps a connection to its database, which would make
//! `DROP DATABASE` (and `ALTER DATABASE ... RENAME`/`SET TABLESPACE`, `CREATE
//! DATABASE ... TEMPLATE`) fail with "being accessed by other users". A
//! `ProcessUtility` hook ([`vacate_database`]) stops the worker first and keeps
//! the launcher from restarting it while the statement runs.

pub mod launcher;
pub mod registry;
mod timeout;
pub mod worker;

use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::CStr;
use std::time::Duration;

pub use registry::available;

/// Sets up automatic refresh when the library is being preloaded: shared
/// memory, the launcher, the utility hook. Called from `_PG_init`.
pub fn init_at_load() {
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        return;
    }
    use registry::REGISTRY;
    pgrx::pg_shmem_init!(REGISTRY);
    registry::set_available();
    launcher::register();
    unsafe {
        PREVIOUS_PROCESS_UTILITY = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
    }
}

static mut PREVIOUS_PROCESS_UTILITY: pg_sys::ProcessUtility_hook_type = None;

#[pg_guard]
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn process_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query_string: *const std::ffi::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    if let Some(name) = database_needed_alone((*pstmt).utilityStmt) {
        vacate_database(&name);
    }
    match PREVIOUS_PROCESS_UTILITY {
        Some(previous) => previous(pstmt, query_string, read_only_tree, context, params, query_env, dest, qc),
        None => pg_sys::standard_ProcessUtility(pstmt, query_string, read_only_tree, context, params, query_env, dest, qc),
    }
}

/// The database a utility statement needs without other connections, if any:
/// DROP DATABASE, ALTER DATABASE ... RENAME TO / SET TABLESPACE, CREATE
/// DATABASE ... TEMPLATE.
unsafe fn database_needed_alone(stmt: *mut pg_sys::Node) -> Option<String> {
    if stmt.is_null() {
        return None;
    }
    let text = |p: *const std::ffi::c_char| (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned());
    let option = |options: *mut pg_sys::List, wanted: &str| -> Option<*mut pg_sys::DefElem> {
        pgrx::PgList::<pg_sys::DefElem>::from_pg(options)
            .iter_ptr()
            .find(|d| !(**d).defname.is_null() && CStr::from_ptr((**d).defname).to_bytes() == wanted.as_bytes())
    };
    if pgrx::is_a(stmt, pg_sys::NodeTag::T_DropdbStmt) {
        return text((*(stmt as *mut pg_sys::DropdbStmt)).dbname);
    }
    if pgrx::is_a(stmt, pg_sys::NodeTag::T_RenameStmt) {
        let r = stmt as *mut pg_sys::RenameStmt;
        return ((*r).renameType == pg_sys::ObjectType::OBJECT_DATABASE).then(|| text((*r).subname)).flatten();
    }
    if pgrx::is_a(stmt, pg_sys::NodeTag::T_AlterDatabaseStmt) {
        let a = stmt as *mut pg_sys::AlterDatabaseStmt;
        return option((*a).options, "tablespace").and_then(|_| text((*a).dbname));
    }
    if pgrx::is_a(stmt, pg_sys::NodeTag::T_CreatedbStmt) {
        let c = stmt as *mut pg_sys::CreatedbStmt;
        // `TEMPLATE DEFAULT` has no argument.
        return option((*c).options, "template").filter(|d| !(**d).arg.is_null()).and_then(|d| text(pg_sys::defGetString(d)));
    }
    None
}

/// Stops the scheduler worker of database `name`, if one runs, and keeps the
/// launcher from starting another for a while (PostgreSQL itself waits up to 5
/// seconds for other connections to leave). Only for the database's owner (or a
/// superuser): the statement will fail for anyone else, and must not stop the
/// scheduler on the way.
fn vacate_database(name: &str) {
    let Ok(cname) = std::ffi::CString::new(name) else { return };
    let dboid = unsafe { pg_sys::get_database_oid(cname.as_ptr(), true) };
    if dboid == pg_sys::InvalidOid {
        return;
    }
    if !unsafe { pg_sys::object_ownercheck(pg_sys::DatabaseRelationId, dboid, pg_sys::GetUserId()) } {
        return;
    }
    registry::stop_worker(dboid.to_u32(), Duration::from_secs(15), Duration::from_secs(5));
}

/// Asks the launcher to start this database's scheduler when the current
/// transaction commits (a new stream table should not wait for the launcher's
/// next probe of a database that had no pg_trickle; before the commit, the
/// worker would not see the stream table).
pub fn request_worker() {
    set_at_commit(&raw mut WORKER_REQUESTED);
}

/// Wakes this database's scheduler when the current transaction commits: called
/// by the capture triggers, so that a stream table with a `0s` schedule is
/// refreshed right after a change to its sources commits. Cheap: one flag per
/// transaction; the wake itself is one latch.
pub fn wake_at_commit() {
    set_at_commit(&raw mut WAKE_REQUESTED);
}

/// Raises `flag` for [`at_transaction_end`] (registered once per backend), when
/// automatic refresh is available.
fn set_at_commit(flag: *mut bool) {
    if !available() {
        return;
    }
    unsafe {
        if !CALLBACK_REGISTERED {
            pg_sys::RegisterXactCallback(Some(at_transaction_end), std::ptr::null_mut());
            CALLBACK_REGISTERED = true;
        }
        *flag = true;
    }
}

static mut CALLBACK_REGISTERED: bool = false;
static mut WORKER_REQUESTED: bool = false;
static mut WAKE_REQUESTED: bool = false;

#[pg_guard]
unsafe extern "C-unwind" fn at_transaction_end(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    match event {
        pg_sys::XactEvent::XACT_EVENT_COMMIT | pg_sys::XactEvent::XACT_EVENT_PARALLEL_COMMIT => {
            let dboid = pg_sys::MyDatabaseId.to_u32();
            if WORKER_REQUESTED {
                registry::note_extension(dboid);
                registry::clear_retry(dboid);
                registry::wake_launcher();
            }
            if WAKE_REQUESTED {
                registry::note_change(dboid);
            } else if WORKER_REQUESTED {
                registry::wake(dboid);
            }
            WORKER_REQUESTED = false;
            WAKE_REQUESTED = false;
        }
        pg_sys::XactEvent::XACT_EVENT_ABORT
        | pg_sys::XactEvent::XACT_EVENT_PARALLEL_ABORT
        // A prepared transaction commits later, elsewhere: its changes are seen
        // at the next poll.
        | pg_sys::XactEvent::XACT_EVENT_PREPARE => {
            WORKER_REQUESTED = false;
            WAKE_REQUESTED = false;
        }
        _ => {}
    }
}

/// Whether this database is served by a scheduler, as
/// `pgtrickle.scheduler_status().state` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// pg_trickle is not in `shared_preload_libraries`: no scheduler at all.
    Unavailable,
    /// `pg_trickle.enabled` is off.
    Disabled,
    /// A scheduler worker runs for this database.
    Running,
    /// No background worker slot is free; the database waits its turn.
    Waiting,
    /// No scheduler runs yet (a new database is picked up within seconds).
    Starting,
}

impl State {
    /// The spelling users see.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Unavailable => "not available",
            State::Disabled => "disabled",
            State::Running => "running",
            State::Waiting => "waiting for a background worker",
            State::Starting => "starting",
        }
    }
}

/// What `pgtrickle.scheduler_status()` shows.
pub struct Status {
    /// Whether this database is served.
    pub state: State,
    /// Since when (Unix ms) it has waited for a background worker.
    pub waiting_since_ms: Option<i64>,
    /// Refresh workers running for it.
    pub refresh_workers: usize,
    /// Databases waiting for a scheduler worker, this one included.
    pub waiting_databases: usize,
    /// pg_trickle was preloaded: the launcher and workers can run.
    pub available: bool,
    /// The launcher's process id, if it runs.
    pub launcher_pid: Option<i32>,
    /// This database's worker's process id, if one runs.
    pub worker_pid: Option<i32>,
    /// When that worker last finished a cycle (Unix ms).
    pub last_cycle_ms: Option<i64>,
    /// Due checks that worker ran, and skipped, since it started.
    pub checks: (u64, u64),
}

/// The scheduler's state for the current database.
pub fn status() -> Status {
    if !available() {
        return Status {
            state: State::Unavailable,
            waiting_since_ms: None,
            refresh_workers: 0,
            waiting_databases: 0,
            available: false,
            launcher_pid: None,
            worker_pid: None,
            last_cycle_ms: None,
            checks: (0, 0),
        };
    }
    let dboid = unsafe { pg_sys::MyDatabaseId.to_u32() };
    let (launcher, slot) = registry::snapshot(dboid);
    let running = slot.is_some_and(|s| s.pid != 0);
    let waiting_since_ms = slot.map(|s| s.waiting_since_ms).filter(|w| *w != 0 && !running);
    let state = if !crate::guc::ENABLED.get() {
        State::Disabled
    } else if running {
        State::Running
    } else if waiting_since_ms.is_some() {
        State::Waiting
    } else {
        State::Starting
    };
    Status {
        state,
        waiting_since_ms,
        refresh_workers: registry::refresh_jobs(dboid).len(),
        waiting_databases: registry::waiting_databases(),
        available: true,
        launcher_pid: (launcher != 0).then_some(launcher),
        worker_pid: slot.filter(|s| s.pid != 0).map(|s| s.pid),
        last_cycle_ms: slot.filter(|s| s.last_cycle_ms != 0).map(|s| s.last_cycle_ms),
        checks: slot.filter(|s| s.pid != 0).map(|s| (s.checks, s.skipped_checks)).unwrap_or((0, 0)),
    }
}

/// The diamonds among the stream tables of this database
/// (`pgt_core::dag::diamond_groups`, every convergence node counted whatever
/// its `diamond_consistency`): `(group number, member, is a convergence node)`.
pub fn diamond_groups() -> crate::error::PgtResult<Vec<(i32, u32, bool)>> {
    let all = crate::catalog::source_edges()?;
    let members: std::collections::BTreeSet<u32> = all.iter().map(|(_, st, _)| *st).collect();
    let edges = pgt_core::dag::edges(all.into_iter().map(|(up, down, _)| (up, down)));
    let groups = pgt_core::dag::diamond_groups(&edges, &members, |_| true);
    Ok(groups
        .iter()
        .enumerate()
        .flat_map(|(i, (group, sinks))| group.iter().map(move |m| ((i + 1) as i32, *m, sinks.contains(m))))
        .collect())
}
