//! The launcher: one background worker per cluster, started by the postmaster
//! when pg_trickle is in `shared_preload_libraries`. Every few seconds (and
//! whenever a worker exits) it lists the databases and starts a scheduler
//! worker ([`super::worker`]) for each one that has none; a worker finding no
//! pg_trickle in its database exits and is not tried again there for a while
//! ([`NO_EXTENSION_RETRY`]).
//!
//! Background workers are a fixed pool (`max_worker_processes`). When none is
//! free, a database with pg_trickle *waits*; schedulers that have held their
//! worker for `pg_trickle.scheduler_turn_ms` hand it over, longest-running
//! first, and waiting databases are started longest-waiting first — so every
//! database is served, in turns, however many there are.

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
    let mut warned_full = false;
    loop {
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        let databases = unsafe { databases() };
        registry::forget_other_databases(&databases.iter().map(|(oid, _)| *oid).collect::<Vec<_>>());
        // Keep a handle until its worker has stopped (one that has not started
        // yet must not be started twice).
        workers.retain(|_, w| !matches!(w.pid(), Err(BackgroundWorkerStatus::Stopped | BackgroundWorkerStatus::PostmasterDied)));
        // Databases that have waited longest for a worker go first; when no
        // background worker slot is free, a database with pg_trickle waits,
        // and the running schedulers hand theirs over in turn
        // (registry::should_yield).
        let names: BTreeMap<u32, &String> = databases.iter().map(|(oid, name)| (*oid, name)).collect();
        let candidates: Vec<u32> =
            names.keys().copied().filter(|d| !workers.contains_key(d) && registry::may_start(*d)).collect();
        let mut full = false;
        for dboid in registry::start_order(&candidates) {
            let Some(name) = names.get(&dboid) else { continue };
            if !full {
                if let Some(w) = start_worker(dboid, name) {
                    workers.insert(dboid, w);
                    continue;
                }
                full = true;
            }
            registry::note_waiting(dboid);
        }
        if full && !warned_full {
            pgrx::log!(
                "pg_trickle launcher: no background worker slot is free (max_worker_processes); databases wait for \
                 their scheduler in turn"
            );
        }
        warned_full = full;
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
