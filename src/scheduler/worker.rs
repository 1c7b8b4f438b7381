//! The scheduler worker of one database: refreshes the stream tables that are
//! due, upstream first, each in its own transaction, and survives any one of
//! them failing.
//!
//! A cycle (every `pg_trickle.scheduler_interval_ms`, or sooner when the next
//! stream table falls due):
//! 1. read the stream tables and the graph of which reads which;
//! 2. order them upstream first ([`pgt_core::dag::topological_order`]) and
//!    resolve `calculated` schedules ([`pgt_core::schedule::resolve_calculated`]);
//! 3. refresh each ACTIVE one whose schedule says it is due
//!    ([`pgt_core::schedule::Schedule::next_due`]), as its owner, recorded with
//!    `initiated_by = 'SCHEDULER'`. A refresh that finds no change writes
//!    nothing. A failure is rolled back, recorded in `pgt_refresh_history` with
//!    its error, and counted; after `pg_trickle.max_consecutive_errors` in a row
//!    the stream table is SUSPENDED (WARNING) until
//!    `alter_stream_table(..., status => 'ACTIVE')`.
//!
//! With `pg_trickle.auto_backoff`, a stream table whose refresh took longer than
//! its interval is due after twice the interval, and so on up to 16 times
//! ([`pgt_core::schedule::backoff_factor`]); a refresh that fits its interval
//! restores it. When a stream table was last checked is kept in memory: a stream table is
//! first checked one interval after the worker first sees it (after a restart of
//! the worker, one interval after the restart).

use super::registry;
use crate::catalog::InitiatedBy;
use crate::error::PgtResult;
use crate::guc;
use crate::spi::{col, exec, query_map, query_one};
use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgt_core::schedule::Schedule;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

/// The worker's main loop (started by the launcher with the database OID).
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn pg_trickle_scheduler_main(arg: pg_sys::Datum) {
    let dboid = arg.value() as u32;
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(pg_sys::Oid::from(dboid)), None);
    if !matches!(in_transaction(has_extension), Ok(true)) {
        registry::unregister_worker(dboid, super::launcher::NO_EXTENSION_RETRY);
        return;
    }
    if !registry::register_worker(dboid) {
        pgrx::log!("pg_trickle scheduler: no free registry slot for this database");
        return;
    }
    let mut scheduler = Scheduler { last_checked: BTreeMap::new(), backoff: BTreeMap::new() };
    loop {
        if registry::stop_requested(dboid) {
            break;
        }
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        let interval = Duration::from_millis(guc::SCHEDULER_INTERVAL_MS.get().max(1) as u64);
        let mut wait = interval;
        if guc::ENABLED.get() {
            match scheduler.cycle() {
                Cycle::ExtensionGone => {
                    registry::unregister_worker(dboid, super::launcher::NO_EXTENSION_RETRY);
                    return;
                }
                Cycle::NextDue(next) => {
                    let until = next.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO);
                    wait = until.clamp(Duration::from_millis(10), interval);
                }
            }
        }
        registry::cycle_done(dboid);
        if !BackgroundWorker::wait_latch(Some(wait)) {
            break;
        }
    }
    registry::unregister_worker(dboid, Duration::ZERO);
}

/// What a cycle found.
enum Cycle {
    /// pg_trickle was dropped from the database.
    ExtensionGone,
    /// The earliest time a stream table falls due.
    NextDue(SystemTime),
}

/// One stream table as the scheduler sees it.
struct Entry {
    pgt_id: i64,
    relid: u32,
    name: String,
    schedule: Schedule,
    active: bool,
}

struct Scheduler {
    last_checked: BTreeMap<i64, SystemTime>,
    /// `pg_trickle.auto_backoff` factors of stream tables running behind.
    backoff: BTreeMap<i64, u32>,
}

impl Scheduler {
    fn cycle(&mut self) -> Cycle {
        let read = in_transaction(|| {
            if !has_extension()? {
                return Ok(None);
            }
            Ok(Some((stream_tables()?, crate::catalog::stream_table_edges()?)))
        });
        let (entries, edge_pairs) = match read {
            Ok(Some(x)) => x,
            Ok(None) => return Cycle::ExtensionGone,
            Err(e) => {
                pgrx::log!("pg_trickle scheduler: could not read the catalog: {e}");
                return Cycle::NextDue(SystemTime::now() + Duration::from_secs(1));
            }
        };
        let now = SystemTime::now();
        let edges = pgt_core::dag::edges(edge_pairs);
        let nodes: BTreeSet<u32> = entries.iter().map(|e| e.relid).collect();
        // A cycle cannot be created (create/alter reject it); if the catalog
        // somehow holds one, refresh in catalog order rather than not at all.
        let order = pgt_core::dag::topological_order(&nodes, &edges).unwrap_or_else(|_| nodes.iter().copied().collect());
        let by_relid: BTreeMap<u32, &Entry> = entries.iter().map(|e| (e.relid, e)).collect();
        let default = Duration::from_secs(guc::DEFAULT_SCHEDULE_SECONDS.get().max(1) as u64);
        let intervals = pgt_core::schedule::resolve_calculated(&order, &edges, |r| by_relid.get(&r).and_then(|e| e.schedule.interval(now)), default);
        let mut next_due = now + Duration::from_secs(3600);
        let known: BTreeSet<i64> = entries.iter().map(|e| e.pgt_id).collect();
        self.last_checked.retain(|id, _| known.contains(id));
        self.backoff.retain(|id, _| known.contains(id));
        for relid in order {
            let Some(entry) = by_relid.get(&relid) else { continue };
            if !entry.active {
                continue;
            }
            let calculated = intervals.get(&relid).copied().unwrap_or(default);
            let last = *self.last_checked.entry(entry.pgt_id).or_insert(now);
            let factor = if guc::AUTO_BACKOFF.get() { self.backoff.get(&entry.pgt_id).copied().unwrap_or(1) } else { 1 };
            let due = entry.schedule.next_due_backed_off(Some(last), calculated, factor);
            if due > SystemTime::now() {
                next_due = next_due.min(due);
                continue;
            }
            let checked_at = SystemTime::now();
            refresh(entry);
            let took = checked_at.elapsed().unwrap_or_default();
            let interval = entry.schedule.next_due(Some(checked_at), calculated).duration_since(checked_at).unwrap_or_default();
            let factor = pgt_core::schedule::backoff_factor(factor, took, interval);
            if factor > 1 && matches!(entry.schedule, Schedule::Every(_) | Schedule::Calculated) {
                if self.backoff.get(&entry.pgt_id).copied().unwrap_or(1) < factor {
                    pgrx::log!(
                        "pg_trickle: refreshing {} took {} ms, longer than its interval: backing off to every {} ms",
                        entry.name,
                        took.as_millis(),
                        (interval * factor).as_millis()
                    );
                }
                self.backoff.insert(entry.pgt_id, factor);
            } else {
                self.backoff.remove(&entry.pgt_id);
            }
            self.last_checked.insert(entry.pgt_id, checked_at);
            next_due = next_due.min(entry.schedule.next_due_backed_off(Some(checked_at), calculated, self.backoff.get(&entry.pgt_id).copied().unwrap_or(1)));
        }
        Cycle::NextDue(next_due)
    }
}

/// Refreshes one stream table in its own transaction; on failure records it
/// and counts it.
fn refresh(entry: &Entry) {
    let pgt_id = entry.pgt_id;
    let started = SystemTime::now();
    let outcome = in_transaction(|| {
        crate::refresh::refresh_stream_table(pgt_id, InitiatedBy::Scheduler)?;
        exec(
            "UPDATE pgtrickle.pgt_stream_tables SET consecutive_errors = 0 WHERE pgt_id = $1 AND consecutive_errors <> 0",
            &[pgt_id.into()],
        )?;
        Ok(())
    });
    let Err(message) = outcome else { return };
    let start_time = started.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default();
    let recorded = in_transaction(|| {
        exec(
            "INSERT INTO pgtrickle.pgt_refresh_history (pgt_id, start_time, end_time, action, status, error_message, initiated_by) \
             SELECT st.pgt_id, pg_catalog.to_timestamp($2), pg_catalog.clock_timestamp(), st.effective_refresh_mode, 'FAILED', $3, 'SCHEDULER' \
             FROM pgtrickle.pgt_stream_tables st WHERE st.pgt_id = $1",
            &[pgt_id.into(), start_time.into(), message.clone().into()],
        )?;
        let errors = query_one::<i32>(
            "UPDATE pgtrickle.pgt_stream_tables SET consecutive_errors = consecutive_errors + 1, updated_at = pg_catalog.now() \
             WHERE pgt_id = $1 RETURNING consecutive_errors",
            &[pgt_id.into()],
        )?
        .unwrap_or(0);
        let limit = guc::MAX_CONSECUTIVE_ERRORS.get();
        if limit > 0 && errors >= limit {
            exec("UPDATE pgtrickle.pgt_stream_tables SET status = 'SUSPENDED' WHERE pgt_id = $1", &[pgt_id.into()])?;
            return Ok(Some(errors));
        }
        Ok(None)
    });
    match recorded {
        Ok(Some(errors)) => pgrx::warning!(
            "pg_trickle: stream table {} suspended after {errors} consecutive failed refreshes; last error: {message}; \
             resume it with pgtrickle.alter_stream_table('{}', status => 'ACTIVE')",
            entry.name,
            entry.name
        ),
        Ok(None) => pgrx::log!("pg_trickle: scheduled refresh of {} failed: {message}", entry.name),
        Err(e) => pgrx::log!("pg_trickle: could not record the failed refresh of {}: {e} (refresh error: {message})", entry.name),
    }
}

fn has_extension() -> PgtResult<bool> {
    Ok(query_one::<bool>("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pg_trickle')", &[])?.unwrap_or(false))
}

fn stream_tables() -> PgtResult<Vec<Entry>> {
    query_map(
        "SELECT st.pgt_id, st.pgt_relid, st.pgt_relid::pg_catalog.regclass::text, st.schedule, st.status = 'ACTIVE' \
         FROM pgtrickle.pgt_stream_tables st ORDER BY st.pgt_id",
        &[],
        |row| {
            let schedule_text = col::<String>(row, 4)?;
            Ok(Entry {
                pgt_id: col(row, 1)?,
                relid: col::<pg_sys::Oid>(row, 2)?.to_u32(),
                name: col(row, 3)?,
                // Stored schedules were validated; a floor of zero keeps one
                // accepted under an older, lower minimum.
                schedule: Schedule::parse(&schedule_text, Duration::ZERO).unwrap_or(Schedule::Calculated),
                active: col(row, 5)?,
            })
        },
    )
}

/// Runs `f` in a transaction of its own, committed when it succeeds and rolled
/// back when it fails (a PostgreSQL error or an `Err`); the error's message is
/// returned. The worker goes on either way.
fn in_transaction<T>(f: impl FnOnce() -> PgtResult<T> + std::panic::UnwindSafe + std::panic::RefUnwindSafe) -> Result<T, String> {
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    let result = PgTryBuilder::new(|| f().map_err(|e| e.to_string()))
        .catch_others(|caught| {
            Err(match caught {
                pg_sys::panic::CaughtError::PostgresError(r) | pg_sys::panic::CaughtError::ErrorReport(r) => r.message().to_string(),
                pg_sys::panic::CaughtError::RustPanic { ereport, .. } => ereport.message().to_string(),
            })
        })
        .execute();
    unsafe {
        match &result {
            Ok(_) => {
                pg_sys::PopActiveSnapshot();
                pg_sys::CommitTransactionCommand();
            }
            Err(_) => pg_sys::AbortCurrentTransaction(),
        }
    }
    result
}
