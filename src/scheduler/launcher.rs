//! The launcher: one background worker per cluster, started by the postmaster
//! when pg_trickle is in `shared_preload_libraries`. Every few seconds it lists
//! the databases and starts a scheduler worker ([`super::worker`]) for each one
//! that has none; a worker finding no pg_trickle in its database exits and is
//! not tried again there for a while ([`NO_EXTENSION_RETRY`]).

use super::registry;
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BackgroundWorkerStatus, BgWorkerStartTime, DynamicBackgroundWorker, SignalWakeFlags,
};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::collections::BTreeMap;
use std::ffi::CStr;
use std::time::Duration;

/// How often the launcher looks for databases without a worker.
const LAUNCHER_INTERVAL: Duration = Duration::from_secs(2);

/// How long a database without pg_trickle is left alone (the creation
/// of a stream table wakes the launcher sooner, see [`super::request_worker`]).
pub const NO_EXTENSION_RETRY: Duration = Duration::from_secs(30);

/// Registers the launcher with the postmaster (from `_PG_init`).
pub fn register() {
    BackgroundWorkerBuilder::new("pg_trickle launcher")
        .set_type("pg_trickle launcher")
        .set_library("pg_trickle")
        .set_function("pg_trickle_launcher_main")
        // Shared memory, and a connection (to no database: shared catalogs only).
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

/// The launcher's main loop.
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn pg_trickle_launcher_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    // No database: only the shared catalogs (pg_database) are read.
    BackgroundWorker::connect_worker_to_spi(None, None);
    registry::set_launcher(true);
    let mut workers: BTreeMap<u32, DynamicBackgroundWorker> = BTreeMap::new();
    loop {
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        let databases = unsafe { databases() };
        registry::forget_other_databases(&databases.iter().map(|(oid, _)| *oid).collect::<Vec<_>>());
        // Keep a handle until its worker has stopped (one that has not started
        // yet must not be started twice).
        workers.retain(|_, w| !matches!(w.pid(), Err(BackgroundWorkerStatus::Stopped | BackgroundWorkerStatus::PostmasterDied)));
        for (dboid, name) in &databases {
            if workers.contains_key(dboid) || !registry::may_start(*dboid) {
                continue;
            }
            match start_worker(*dboid, name) {
                Some(w) => {
                    workers.insert(*dboid, w);
                }
                None => {
                    // No free background worker slot: try again later.
                    registry::defer(*dboid, LAUNCHER_INTERVAL * 5);
                    pgrx::log!(
                        "pg_trickle launcher: could not start a scheduler for database \"{name}\" (max_worker_processes reached)"
                    );
                }
            }
        }
        if !BackgroundWorker::wait_latch(Some(LAUNCHER_INTERVAL)) {
            break;
        }
    }
    registry::set_launcher(false);
}

fn start_worker(dboid: u32, name: &str) -> Option<DynamicBackgroundWorker> {
    BackgroundWorkerBuilder::new(&format!("pg_trickle scheduler {name}"))
        .set_type("pg_trickle scheduler")
        .set_library("pg_trickle")
        .set_function("pg_trickle_scheduler_main")
        .set_argument(Some(pg_sys::Datum::from(dboid)))
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(None)
        .set_notify_pid(unsafe { pg_sys::MyProcPid })
        .load_dynamic()
        .ok()
}

/// The databases that accept connections and are not templates or being
/// dropped: `(oid, name)`, from a scan of `pg_database` (PostgreSQL's
/// autovacuum launcher reads it the same way).
unsafe fn databases() -> Vec<(u32, String)> {
    let mut out = Vec::new();
    pg_sys::SetCurrentStatementStartTimestamp();
    pg_sys::StartTransactionCommand();
    pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    let rel = pg_sys::table_open(pg_sys::DatabaseRelationId, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
    let scan = pg_sys::table_beginscan_catalog(rel, 0, std::ptr::null_mut());
    loop {
        let tuple = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
        if tuple.is_null() {
            break;
        }
        let header = (*tuple).t_data;
        let form = (header as *mut u8).add((*header).t_hoff as usize) as *mut pg_sys::FormData_pg_database;
        // datconnlimit -2 marks a database whose DROP was interrupted.
        if (*form).datallowconn && !(*form).datistemplate && (*form).datconnlimit != -2 {
            let name = CStr::from_ptr((*form).datname.data.as_ptr()).to_string_lossy().into_owned();
            out.push(((*form).oid.to_u32(), name));
        }
    }
    pg_sys::table_endscan(scan);
    pg_sys::table_close(rel, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
    pg_sys::PopActiveSnapshot();
    pg_sys::CommitTransactionCommand();
    out
}
