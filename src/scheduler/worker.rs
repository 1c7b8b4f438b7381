//! The scheduler worker of one database: refreshes the stream tables that are
//! due, upstream first, and survives any one of them failing.
//!
//! A cycle (every `pg_trickle.scheduler_interval_ms`, or sooner when the next
//! stream table falls due):
//! 1. read the stream tables and the graph of which reads which;
//! 2. order them upstream first ([`pgt_core::dag::topological_order`]) and
//!    resolve `calculated` schedules ([`pgt_core::schedule::resolve_calculated`]);
//! 3. refresh each ACTIVE one whose schedule says it is due
//!    ([`pgt_core::schedule::Schedule::next_due`]), as its owner, recorded with
//!    `initiated_by = 'SCHEDULER'`, in a transaction of its own. A refresh that
//!    finds no change writes nothing; a DIFFERENTIAL one is not even started
//!    while no transaction that captured a change has committed since its last
//!    check ([`Scheduler::unchanged_since`]). A failure is rolled back,
//!    recorded in `pgt_refresh_history` with its error, and counted; after
//!    `pg_trickle.max_consecutive_errors` in a row the stream table is
//!    SUSPENDED (WARNING) until `alter_stream_table(..., status => 'ACTIVE')`.
//!
//! **One slow stream table does not hold up the others.** Refreshes run in the
//! worker itself (a few milliseconds each, no process to start) for at most
//! `pg_trickle.max_inline_refresh_ms`. One that takes longer is cancelled
//! (rolled back) and run again in a *refresh worker* of its own
//! ([`pg_trickle_refresh_main`]), and so are its next refreshes until one of
//! them takes less than half that time; at most
//! `pg_trickle.max_concurrent_refreshes` run at once per database. Meanwhile
//! the stream tables reading it wait for it, and the others go on. With
//! `pg_trickle.refresh_timeout_ms`, any scheduled refresh that takes longer is
//! cancelled and recorded as failed.
//!
//! **Every database is served.** Background workers are a fixed pool
//! (`max_worker_processes`); when a database with pg_trickle waits for one,
//! the scheduler that has held its worker longest hands it over after
//! `pg_trickle.scheduler_turn_ms` (registry::should_yield), and no refresh
//! workers are started while any database waits.
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
use crate::spi::{col, exec, kept, query_map};
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BackgroundWorkerStatus, BgWorkerStartTime, DynamicBackgroundWorker, SignalWakeFlags,
};
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgt_core::schedule::Schedule;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The worker's main loop (started by the launcher with the database OID).
///
/// SIGTERM (shutdown, `pg_terminate_backend`, `DROP DATABASE ... WITH (FORCE)`)
/// uses PostgreSQL's own handler: a refresh in progress is aborted at its next
/// interrupt check and the process exits. However the process ends, a
/// `before_shmem_exit` callback frees its registry slot, so the launcher starts
/// a new worker.
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn pg_trickle_scheduler_main(arg: pg_sys::Datum) {
    let dboid = arg.value() as u32;
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP);
    unsafe { pg_sys::pqsignal_be(pg_sys::SIGTERM as i32, Some(on_sigterm)) };
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(pg_sys::Oid::from(dboid)), None);
    if !matches!(in_transaction(crate::catalog::installed_version), Ok(Some(_))) {
        registry::note_no_extension(dboid);
        registry::unregister_worker(dboid, super::launcher::NO_EXTENSION_RETRY);
        return;
    }
    let registration = registry::register_worker(dboid);
    if registration == registry::Registration::Refused {
        // No free slot, or a statement that needs the database alone (DROP
        // DATABASE, ...) is running: leave.
        return;
    }
    unsafe { pg_sys::before_shmem_exit(Some(on_exit), pg_sys::Datum::from(dboid)) };
    let mut scheduler = Scheduler {
        last_checked: BTreeMap::new(),
        last_real_check: BTreeMap::new(),
        backoff: BTreeMap::new(),
        dboid,
        checks: 0,
        skipped_checks: 0,
        version_mismatch_logged: false,
        slow: BTreeSet::new(),
        dispatched: BTreeMap::new(),
        last_cleanup: None,
        // After waiting for a worker, every stream table is checked at once;
        // otherwise one interval after it is first seen.
        first_sight: if registration == registry::Registration::AfterWaiting { UNIX_EPOCH } else { SystemTime::now() },
    };
    let mut woken = false;
    let mut yielded = false;
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
            match scheduler.cycle(woken, interval) {
                Cycle::ExtensionGone => {
                    registry::note_no_extension(dboid);
                    registry::unregister_worker(dboid, super::launcher::NO_EXTENSION_RETRY);
                    return;
                }
                Cycle::Stop => break,
                Cycle::NextDue(next) => {
                    let until = next.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO);
                    wait = until.clamp(Duration::from_millis(10), interval);
                }
            }
        }
        registry::cycle_done(dboid, scheduler.checks, scheduler.skipped_checks);
        let turn = Duration::from_millis(guc::SCHEDULER_TURN_MS.get().max(1) as u64);
        if registry::should_yield(dboid, turn) {
            // Another database waits for a background worker: hand this one over.
            yielded = true;
            break;
        }
        woken = wait_for_latch(wait);
    }
    registry::unregister_worker(dboid, Duration::ZERO);
    if yielded {
        registry::note_waiting(dboid);
        registry::wake_launcher();
    }
}

/// SIGTERM: what PostgreSQL's `die()` does — ask for process termination at the
/// next interrupt check (which aborts a refresh in progress) and wake the latch.
unsafe extern "C-unwind" fn on_sigterm(_signal: std::ffi::c_int) {
    if !pg_sys::proc_exit_inprogress {
        (&raw mut pg_sys::InterruptPending).write_volatile(1);
        (&raw mut pg_sys::ProcDiePending).write_volatile(1);
    }
    pg_sys::SetLatch(pg_sys::MyLatch);
}

/// Frees the registry slot of the exiting worker (any exit, FATAL included).
#[pg_guard]
unsafe extern "C-unwind" fn on_exit(_code: i32, arg: pg_sys::Datum) {
    registry::unregister_worker(arg.value() as u32, Duration::ZERO);
}

/// Sleeps until the latch is set or `timeout` passes; returns whether the latch
/// was set (a commit that changed a source, among other reasons). A query
/// cancel (`pg_cancel_backend`) while idle is ignored; SIGTERM ends the process
/// at the interrupt check; so does the postmaster's death.
fn wait_for_latch(timeout: Duration) -> bool {
    unsafe {
        let events = pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            timeout.as_millis().min(i64::MAX as u128) as std::ffi::c_long,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
        (&raw mut pg_sys::QueryCancelPending).write_volatile(0);
        pg_sys::check_for_interrupts!();
        events & pg_sys::WL_LATCH_SET as i32 != 0
    }
}

/// What a cycle found.
enum Cycle {
    /// pg_trickle was dropped from the database.
    ExtensionGone,
    /// The worker was asked to exit (SIGTERM or a stop request) mid-cycle.
    Stop,
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
    /// `diamond_consistency = 'atomic'`.
    atomic: bool,
    /// `diamond_schedule_policy = 'slowest'`.
    slowest: bool,
    /// A DIFFERENTIAL stream table whose frontier is set and that needs no
    /// reinitialization: a check of it can only apply captured changes, so it
    /// may be skipped while none were committed ([`Scheduler::unchanged_since`]).
    change_driven: bool,
    /// DDL on a source marked it for reinitialization.
    needs_reinit: bool,
}

struct Scheduler {
    dboid: u32,
    last_checked: BTreeMap<i64, SystemTime>,
    /// Per stream table, the change generation read just before its last real
    /// check, and when that check ran.
    last_real_check: BTreeMap<i64, (u64, SystemTime)>,
    /// `pg_trickle.auto_backoff` factors of stream tables running behind.
    backoff: BTreeMap<i64, u32>,
    /// Due checks run (refresh transactions; a diamond group counts once).
    checks: u64,
    /// Due checks skipped because nothing was committed since.
    skipped_checks: u64,
    /// The database's installed pg_trickle is not this library's version, and
    /// that was logged.
    version_mismatch_logged: bool,
    /// Stream tables whose refresh outlasted `pg_trickle.max_inline_refresh_ms`:
    /// they are refreshed in refresh workers.
    slow: BTreeSet<i64>,
    /// Refreshes handed to refresh workers by this worker, by the first
    /// `pgt_id` of the unit.
    dispatched: BTreeMap<i64, Dispatched>,
    /// When unused capture was last looked for.
    last_cleanup: Option<SystemTime>,
    /// What counts as the last check of a stream table this worker has not
    /// checked yet: its start, or long ago when it started after waiting.
    first_sight: SystemTime,
}

/// A refresh handed to a refresh worker.
struct Dispatched {
    /// The stream tables it refreshes.
    ids: Vec<i64>,
    /// The worker.
    worker: DynamicBackgroundWorker,
    /// When it was started.
    started: SystemTime,
    /// The interval of a duration or calculated schedule, for
    /// `pg_trickle.auto_backoff` once the refresh's duration is known.
    interval: Option<Duration>,
}

/// What became of a due refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ran {
    /// It succeeded here.
    Succeeded,
    /// It failed (recorded), or was skipped.
    Failed,
    /// It went to a refresh worker.
    Dispatched,
}

/// How often the worker looks for capture no DIFFERENTIAL stream table needs
/// any more, left behind by a role that could not remove it.
const CLEANUP_INTERVAL: Duration = Duration::from_secs(10);

/// Stream tables with a duration or calculated schedule due within this time of
/// a cycle are checked in that cycle (at most this early), so that stream tables
/// with equal intervals stay aligned and
/// share cycles, and each cycle's catalog read, instead of drifting apart by
/// microseconds into a cycle each. It equals the shortest wait between cycles.
const COALESCE: Duration = Duration::from_millis(10);

/// The longest a due, change-driven stream table goes without a real check: a
/// transaction committed by two-phase commit (`COMMIT PREPARED`) does not
/// advance the change generation, so its changes are applied within this time.
const MAX_SKIPPED_CHECKS: Duration = Duration::from_secs(60);

impl Scheduler {
    /// Whether the due check of `entry` can be skipped at `now`: it is
    /// change-driven, and no transaction that captured a change has committed
    /// in this database since its last real check (the generation read before
    /// that check is still `generation`), which ran less than
    /// [`MAX_SKIPPED_CHECKS`] ago. The generation is read before the refresh's
    /// snapshot, and a commit advances it only once visible, so a change is
    /// never missed: at worst a check finds nothing. This is what keeps an idle
    /// scheduler from querying anything for stream tables due every second.
    fn unchanged_since(&self, entry: &Entry, generation: u64, now: SystemTime) -> bool {
        entry.change_driven
            && self.last_real_check.get(&entry.pgt_id).is_some_and(|(seen, at)| {
                *seen == generation && now.duration_since(*at).unwrap_or_default() < MAX_SKIPPED_CHECKS
            })
    }

    /// Forgets the refresh workers of this worker that have finished; a stream
    /// table whose refresh there took less than half the inline limit is
    /// refreshed inline again. Returns the `pgt_id`s being refreshed in refresh
    /// workers (also those started by an earlier worker of this database).
    fn in_flight(&mut self) -> BTreeSet<i64> {
        let limit = Duration::from_millis(guc::MAX_INLINE_REFRESH_MS.get().max(1) as u64);
        let finished: Vec<i64> = self
            .dispatched
            .iter()
            .filter(|(_, d)| matches!(d.worker.pid(), Err(BackgroundWorkerStatus::Stopped | BackgroundWorkerStatus::PostmasterDied)))
            .map(|(first, _)| *first)
            .collect();
        for first in finished {
            let Some(done) = self.dispatched.remove(&first) else { continue };
            let took = done.started.elapsed().unwrap_or_default();
            for id in &done.ids {
                if took < limit / 2 {
                    self.slow.remove(id);
                }
                // Running behind its schedule backs off as inline refreshes do.
                if let (Some(interval), true) = (done.interval, guc::AUTO_BACKOFF.get()) {
                    let factor = self.backoff.get(id).copied().unwrap_or(1);
                    let factor = pgt_core::schedule::backoff_factor(factor, took, interval);
                    if factor > 1 {
                        self.backoff.insert(*id, factor);
                    } else {
                        self.backoff.remove(id);
                    }
                }
            }
        }
        let mut running: BTreeSet<i64> = self.dispatched.values().flat_map(|d| d.ids.iter().copied()).collect();
        running.extend(registry::refresh_jobs(self.dboid).iter().map(|j| j.pgt_id));
        running
    }

    /// Whether a refresh may go to a refresh worker now: refresh workers are
    /// allowed, one is free, and no database waits for a scheduler (its
    /// background workers go to schedulers first).
    fn may_dispatch(&self, in_flight: usize) -> bool {
        let max = guc::MAX_CONCURRENT_REFRESHES.get().max(0) as usize;
        max > 0 && in_flight < max.min(registry::MAX_REFRESH_WORKERS) && registry::waiting_databases() == 0
    }

    /// Refreshes the unit `members` (one stream table, or a diamond group in
    /// topological order): in a refresh worker when it is known to be slow,
    /// else here with the inline limit (and moved to a refresh worker when it
    /// outlasts it). `interval`: the unit's schedule interval when it may back
    /// off.
    fn run(&mut self, members: &[&Entry], interval: Option<Duration>, in_flight: &mut BTreeSet<i64>) -> Ran {
        let ids: Vec<i64> = members.iter().map(|e| e.pgt_id).collect();
        let slow = ids.iter().any(|id| self.slow.contains(id));
        let dispatchable = self.may_dispatch(self.dispatched.len().max(in_flight.len()));
        if slow && dispatchable && self.dispatch(members, interval) {
            in_flight.extend(ids);
            return Ran::Dispatched;
        }
        let inline_limit = dispatchable.then(|| Duration::from_millis(guc::MAX_INLINE_REFRESH_MS.get().max(1) as u64));
        match refresh_unit(members, inline_limit) {
            UnitOutcome::Done(true) => Ran::Succeeded,
            UnitOutcome::Done(false) => Ran::Failed,
            UnitOutcome::OutlastedInlineLimit => {
                pgrx::log!(
                    "pg_trickle: refreshing {} took longer than pg_trickle.max_inline_refresh_ms; it continues in a \
                     refresh worker",
                    members.iter().map(|e| e.name.as_str()).collect::<Vec<_>>().join(", ")
                );
                self.slow.extend(ids.iter().copied());
                if self.dispatch(members, interval) {
                    in_flight.extend(ids);
                    Ran::Dispatched
                } else if matches!(refresh_unit(members, None), UnitOutcome::Done(true)) {
                    // No worker could be started: it ran here after all.
                    Ran::Succeeded
                } else {
                    Ran::Failed
                }
            }
        }
    }

    /// Starts a refresh worker for `members`; false when none could be started
    /// (no free background worker, or too many members to name in its
    /// argument).
    fn dispatch(&mut self, members: &[&Entry], interval: Option<Duration>) -> bool {
        let ids: Vec<i64> = members.iter().map(|e| e.pgt_id).collect();
        let extra = ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",");
        // bgw_extra holds BGW_EXTRALEN (128) bytes.
        if extra.len() >= 127 || ids.is_empty() {
            return false;
        }
        let name = format!("pg_trickle refresh {}", members[0].name);
        let worker = BackgroundWorkerBuilder::new(&name.chars().take(90).collect::<String>())
            .set_type("pg_trickle refresh")
            .set_library("pg_trickle")
            .set_function("pg_trickle_refresh_main")
            .set_argument(Some(pg_sys::Datum::from(self.dboid)))
            .set_extra(&extra)
            .enable_spi_access()
            .set_start_time(BgWorkerStartTime::RecoveryFinished)
            .set_restart_time(None)
            .set_notify_pid(unsafe { pg_sys::MyProcPid })
            .load_dynamic();
        match worker {
            Ok(worker) => {
                self.dispatched.insert(ids[0], Dispatched { ids, worker, started: SystemTime::now(), interval });
                true
            }
            Err(_) => false,
        }
    }

    /// Releases capture that no DIFFERENTIAL stream table needs any more and
    /// that the role that stopped needing it could not remove
    /// (`cdc::release_capture_if_unused`), each in a short transaction.
    fn clean_up_capture(&mut self, now: SystemTime) {
        if self.last_cleanup.is_some_and(|at| now.duration_since(at).unwrap_or_default() < CLEANUP_INTERVAL) {
            return;
        }
        self.last_cleanup = Some(now);
        let unused = in_transaction(crate::cdc::unused_capture).unwrap_or_default();
        for source in unused {
            if let Err(e) = in_transaction(|| crate::cdc::release_capture_if_unused(source)) {
                pgrx::log!("pg_trickle: could not release unused capture of relation {}: {e}", source.to_u32());
            }
        }
        // Grants on change buffers after changes no event reports (a role's
        // memberships or BYPASSRLS); the buffers' policy covers the others.
        let stale = in_transaction(crate::cdc::stale_buffer_grants).unwrap_or_default();
        for source in stale {
            if let Err(e) = in_transaction(|| crate::cdc::sync_buffer_grants(source)) {
                pgrx::log!("pg_trickle: could not sync the grants on the change buffer of relation {}: {e}", source.to_u32());
            }
        }
    }

    /// One pass over the stream tables. `woken`: the latch was set since the
    /// last pass (a source changed, probably); stream tables whose interval is
    /// shorter than `poll` (`0s`) are refreshed only then, or once per `poll`.
    fn cycle(&mut self, woken: bool, poll: Duration) -> Cycle {
        let read = in_transaction(|| {
            let Some(installed) = crate::catalog::installed_version()? else {
                return Ok(None);
            };
            if installed != crate::catalog::LIBRARY_VERSION {
                return Ok(Some(Err(installed)));
            }
            Ok(Some(Ok((stream_tables()?, crate::catalog::source_edges()?))))
        });
        let (entries, all_edges) = match read {
            Ok(Some(Ok(x))) => {
                self.version_mismatch_logged = false;
                x
            }
            Ok(Some(Err(installed))) => {
                // A new build is loaded and ALTER EXTENSION ... UPDATE has not
                // run yet: refresh nothing (the catalog is not the one this
                // build knows), look again in a few seconds.
                if !self.version_mismatch_logged {
                    pgrx::log!(
                        "pg_trickle scheduler: this database has pg_trickle {installed} installed but the library is {}; \
                         stream tables are not refreshed until ALTER EXTENSION pg_trickle UPDATE",
                        crate::catalog::LIBRARY_VERSION
                    );
                    self.version_mismatch_logged = true;
                }
                return Cycle::NextDue(SystemTime::now() + Duration::from_secs(5));
            }
            Ok(None) => return Cycle::ExtensionGone,
            Err(e) => {
                pgrx::log!("pg_trickle scheduler: could not read the catalog: {e}");
                return Cycle::NextDue(SystemTime::now() + Duration::from_secs(1));
            }
        };
        let now = SystemTime::now();
        // Stream tables seen from now on are checked one interval from now.
        let first_sight = std::mem::replace(&mut self.first_sight, now);
        self.clean_up_capture(now);
        let mut in_flight = self.in_flight();
        let source_pairs = all_edges.iter().map(|(up, down, _)| (*up, *down));
        let (nodes, edges, order) = stream_table_dag(&entries, &all_edges);
        let by_relid: BTreeMap<u32, &Entry> = entries.iter().map(|e| (e.relid, e)).collect();
        let default = default_interval();
        let intervals = resolve_intervals(&order, &edges, &by_relid, now);
        let mut next_due = now + Duration::from_secs(3600);
        let known: BTreeSet<i64> = entries.iter().map(|e| e.pgt_id).collect();
        self.last_checked.retain(|id, _| known.contains(id));
        self.last_real_check.retain(|id, _| known.contains(id));
        self.backoff.retain(|id, _| known.contains(id));
        self.slow.retain(|id| known.contains(id));
        // Stream tables reading one that is being refreshed in a refresh
        // worker wait for it (its exit wakes this worker).
        let upstreams = pgt_core::dag::upstreams(&edges);
        let waits_for_upstream = |relid: u32, in_flight: &BTreeSet<i64>| {
            pgt_core::dag::ancestors_in(&upstreams, relid)
                .iter()
                .any(|up| by_relid.get(up).is_some_and(|e| in_flight.contains(&e.pgt_id)))
        };
        // Diamonds whose convergence stream table wants them atomic are
        // refreshed as one unit, in one REPEATABLE READ transaction.
        let groups = pgt_core::dag::diamond_groups(&pgt_core::dag::edges(source_pairs), &nodes, |r| {
            by_relid.get(&r).is_some_and(|e| e.atomic)
        });
        let mut done: BTreeSet<u32> = BTreeSet::new();
        for &relid in &order {
            if done.contains(&relid) {
                continue;
            }
            if registry::stop_requested(self.dboid) {
                return Cycle::Stop;
            }
            if let Some((members, sinks)) = groups.iter().find(|(m, _)| m.contains(&relid)) {
                done.extend(members.iter().copied());
                let group: Vec<&Entry> =
                    order.iter().filter(|r| members.contains(r)).filter_map(|r| by_relid.get(r).copied()).filter(|e| e.active).collect();
                if group.iter().any(|e| in_flight.contains(&e.pgt_id) || waits_for_upstream(e.relid, &in_flight)) {
                    continue;
                }
                let slowest = sinks.iter().any(|s| by_relid.get(s).is_some_and(|e| e.slowest));
                let dues: Vec<SystemTime> = group
                    .iter()
                    .map(|e| {
                        let calculated = intervals.get(&e.relid).copied().unwrap_or(default);
                        let last = *self.last_checked.entry(e.pgt_id).or_insert(first_sight.min(now));
                        let due = e.schedule.next_due(Some(last), calculated);
                        if due.duration_since(last).unwrap_or_default() < poll && !woken {
                            due.max(last.checked_add(poll).unwrap_or(due))
                        } else {
                            due
                        }
                    })
                    .collect();
                let group_due = if slowest { dues.iter().max() } else { dues.iter().min() }.copied();
                let Some(group_due) = group_due else { continue };
                if group_due > SystemTime::now() {
                    next_due = next_due.min(group_due);
                    continue;
                }
                let checked_at = SystemTime::now();
                self.checks += 1;
                if group.iter().any(|e| e.needs_reinit) {
                    // A reinitialization may start capturing a new table, which
                    // a REPEATABLE READ snapshot taken before could miss: this
                    // once, refresh the members one by one, upstream first.
                    for e in &group {
                        self.run(&[e], None, &mut in_flight);
                    }
                } else {
                    self.run(&group, None, &mut in_flight);
                }
                for e in &group {
                    self.last_checked.insert(e.pgt_id, checked_at);
                    let calculated = intervals.get(&e.relid).copied().unwrap_or(default);
                    let next = e.schedule.next_due(Some(checked_at), calculated);
                    next_due = next_due.min(next.max(checked_at.checked_add(Duration::from_millis(10)).unwrap_or(next)));
                }
                continue;
            }
            let Some(entry) = by_relid.get(&relid) else { continue };
            if !entry.active || in_flight.contains(&entry.pgt_id) || waits_for_upstream(relid, &in_flight) {
                continue;
            }
            let calculated = intervals.get(&relid).copied().unwrap_or(default);
            let last = *self.last_checked.entry(entry.pgt_id).or_insert(first_sight.min(now));
            let factor = if guc::AUTO_BACKOFF.get() { self.backoff.get(&entry.pgt_id).copied().unwrap_or(1) } else { 1 };
            let mut due = entry.schedule.next_due_backed_off(Some(last), calculated, factor);
            // Shorter than the poll interval (`0s`): right after a wake, else
            // once per poll interval.
            if due.duration_since(last).unwrap_or_default() < poll && !woken {
                due = due.max(last.checked_add(poll).unwrap_or(due));
            }
            // Cron instants are exact: coalescing would run one twice.
            let coalesce = if matches!(entry.schedule, Schedule::Cron(_)) { Duration::ZERO } else { COALESCE };
            if due > SystemTime::now() + coalesce {
                next_due = next_due.min(due);
                continue;
            }
            let checked_at = SystemTime::now();
            let generation = registry::change_generation(self.dboid);
            if self.unchanged_since(entry, generation, checked_at) {
                // Nothing committed since its last check could concern it.
                self.skipped_checks += 1;
                self.last_checked.insert(entry.pgt_id, checked_at);
                let next = entry.schedule.next_due_backed_off(Some(checked_at), calculated, factor);
                next_due = next_due.min(next.max(checked_at.checked_add(Duration::from_millis(10)).unwrap_or(next)));
                continue;
            }
            // Only a successful check vouches for the generation (a skipped busy
            // or failed one must be retried when due).
            self.checks += 1;
            let interval = entry.schedule.next_due(Some(checked_at), calculated).duration_since(checked_at).unwrap_or_default();
            let backs_off = matches!(entry.schedule, Schedule::Every(_) | Schedule::Calculated);
            let ran = self.run(&[entry], backs_off.then_some(interval), &mut in_flight);
            if ran == Ran::Succeeded {
                self.last_real_check.insert(entry.pgt_id, (generation, checked_at));
            } else {
                self.last_real_check.remove(&entry.pgt_id);
            }
            let took = checked_at.elapsed().unwrap_or_default();
            let factor = pgt_core::schedule::backoff_factor(factor, took, interval);
            if ran == Ran::Dispatched {
                // Its duration, and so its backoff, is known when it finishes.
                self.last_checked.insert(entry.pgt_id, checked_at);
                continue;
            }
            if factor > 1 && backs_off {
                if self.backoff.get(&entry.pgt_id).copied().unwrap_or(1) < factor {
                    pgrx::log!(
                        "pg_trickle: refreshing {} took {} ms, longer than its interval: backing off to every {} ms",
                        entry.name,
                        took.as_millis(),
                        interval.saturating_mul(factor).as_millis()
                    );
                }
                self.backoff.insert(entry.pgt_id, factor);
            } else {
                self.backoff.remove(&entry.pgt_id);
            }
            self.last_checked.insert(entry.pgt_id, checked_at);
            let next = entry.schedule.next_due_backed_off(Some(checked_at), calculated, self.backoff.get(&entry.pgt_id).copied().unwrap_or(1));
            next_due = next_due.min(next.max(checked_at.checked_add(Duration::from_millis(10)).unwrap_or(next)));
        }
        Cycle::NextDue(next_due)
    }
}

/// How a unit's refresh ended.
enum UnitOutcome {
    /// It finished (or failed and was recorded): whether it succeeded.
    Done(bool),
    /// It ran past the inline limit and was cancelled, unrecorded.
    OutlastedInlineLimit,
}

/// Refreshes `members` (one stream table, or a diamond group) in this process,
/// cancelled after `inline_limit` if given (then unrecorded, for the caller to
/// move it to a refresh worker) and after `pg_trickle.refresh_timeout_ms`
/// (recorded as failed).
fn refresh_unit(members: &[&Entry], inline_limit: Option<Duration>) -> UnitOutcome {
    let timeout = refresh_timeout();
    let limit = match (inline_limit, timeout) {
        (Some(i), Some(t)) => Some(i.min(t)),
        (i, t) => i.or(t),
    };
    let started = SystemTime::now();
    let outcome = {
        // Armed for the refresh only, not for recording its failure.
        let _timer = limit.map(super::timeout::StatementTimeout::arm);
        if members.len() == 1 { refresh_one(members[0]) } else { refresh_group(members) }
    };
    match outcome {
        Ok(()) => UnitOutcome::Done(true),
        Err((entry, failure)) => {
            let elapsed = started.elapsed().unwrap_or_default();
            let cancelled = failure.code == Some(PgSqlErrorCode::ERRCODE_QUERY_CANCELED);
            let timed_out = |l: Duration| cancelled && elapsed + Duration::from_millis(5) >= l;
            if inline_limit.is_some_and(|i| timed_out(i) && timeout.is_none_or(|t| i < t)) {
                return UnitOutcome::OutlastedInlineLimit;
            }
            let failure = match timeout {
                Some(t) if timed_out(t) => Failure {
                    message: format!(
                        "refresh cancelled after {} ms (pg_trickle.refresh_timeout_ms): {}",
                        elapsed.as_millis(),
                        failure.message
                    ),
                    ..failure
                },
                _ => failure,
            };
            if let Some(entry) = entry {
                record_failure(entry, started, failure);
            }
            UnitOutcome::Done(false)
        }
    }
}

/// `pg_trickle.refresh_timeout_ms`, if set.
fn refresh_timeout() -> Option<Duration> {
    let ms = guc::REFRESH_TIMEOUT_MS.get();
    (ms > 0).then(|| Duration::from_millis(ms as u64))
}

/// Refreshes one stream table in its own transaction. A failure is returned
/// with the entry to record it against.
fn refresh_one(entry: &Entry) -> Result<(), (Option<&Entry>, Failure)> {
    let pgt_id = entry.pgt_id;
    in_transaction(|| {
        // A stream table another session holds (a manual refresh left open,
        // an ALTER) is skipped this time rather than stalling the others.
        exec("SET LOCAL lock_timeout = '500ms'", &[])?;
        crate::refresh::refresh_stream_table(pgt_id, InitiatedBy::Scheduler)?;
        crate::catalog::reset_failures(&[pgt_id])?;
        Ok(())
    })
    .map_err(|f| (Some(entry), f))
}

/// Refreshes the members of a diamond group (upstream first) in one REPEATABLE
/// READ transaction: every member reads the sources in one snapshot, and
/// readers see all of them change at once. A failure rolls all of them back and
/// is returned with the member that failed; a serialization failure (the group
/// was changed concurrently) is only logged, and retried at the next check.
fn refresh_group<'a>(group: &[&'a Entry]) -> Result<(), (Option<&'a Entry>, Failure)> {
    let failed_at = std::sync::atomic::AtomicUsize::new(0);
    let ids: Vec<i64> = group.iter().map(|e| e.pgt_id).collect();
    let outcome = in_transaction_at(pg_sys::XACT_REPEATABLE_READ as i32, || {
        exec("SET LOCAL lock_timeout = '500ms'", &[])?;
        for (i, id) in ids.iter().enumerate() {
            failed_at.store(i, std::sync::atomic::Ordering::Relaxed);
            crate::refresh::refresh_stream_table(*id, InitiatedBy::Scheduler)?;
        }
        crate::catalog::reset_failures(&ids)?;
        Ok(())
    });
    let Err(failure) = outcome else { return Ok(()) };
    if failure.code == Some(PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE) {
        pgrx::log!("pg_trickle: a diamond group was changed concurrently; refreshing it later");
        return Err((None, failure));
    }
    Err((group.get(failed_at.load(std::sync::atomic::Ordering::Relaxed)).copied(), failure))
}

/// Records a failed scheduled refresh of `entry` and counts it; suspends the
/// stream table after `pg_trickle.max_consecutive_errors`. A stream table
/// another session holds is only logged (skipped until the next check).
fn record_failure(entry: &Entry, started: SystemTime, failure: Failure) {
    let pgt_id = entry.pgt_id;
    if failure.code == Some(PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE) {
        pgrx::log!("pg_trickle: {} is busy (locked by another session); refreshing it later", entry.name);
        return;
    }
    let message = failure.message;
    let start_time = started.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default();
    let recorded = in_transaction(|| {
        crate::catalog::insert_failed_refresh(pgt_id, start_time, &message)?;
        let errors = crate::catalog::count_failure(pgt_id)?;
        let limit = guc::MAX_CONSECUTIVE_ERRORS.get();
        if limit > 0 && errors >= limit {
            // Suspended, it lets go of its sources' change buffers.
            crate::catalog::set_status(pgt_id, "SUSPENDED")?;
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

/// A refresh worker: started by a database's scheduler with the database OID
/// as argument and the `pgt_id`s to refresh (one stream table, or a diamond
/// group in topological order) as its extra data. Refreshes them exactly as the
/// scheduler would (recorded with `initiated_by = 'SCHEDULER'`, failures
/// counted), under `pg_trickle.refresh_timeout_ms`, and exits. It is listed in
/// the registry while it runs, so the scheduler does not start the same
/// refresh twice and `DROP DATABASE` can stop it.
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn pg_trickle_refresh_main(arg: pg_sys::Datum) {
    let dboid = arg.value() as u32;
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP);
    unsafe { pg_sys::pqsignal_be(pg_sys::SIGTERM as i32, Some(on_sigterm)) };
    let ids: Vec<i64> = BackgroundWorker::get_extra().split(',').filter_map(|i| i.trim().parse().ok()).collect();
    let Some(first) = ids.first().copied() else { return };
    if registry::stop_requested(dboid) || !registry::register_refresh_job(dboid, first) {
        return;
    }
    unsafe { pg_sys::before_shmem_exit(Some(on_refresh_exit), pg_sys::Datum::from(dboid)) };
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(pg_sys::Oid::from(dboid)), None);
    let Ok(entries) = in_transaction(stream_tables) else { return };
    let members: Vec<&Entry> = ids.iter().filter_map(|id| entries.iter().find(|e| e.pgt_id == *id)).filter(|e| e.active).collect();
    if members.is_empty() {
        return;
    }
    let _ = refresh_unit(&members, None);
}

/// Forgets the exiting refresh worker in the registry (any exit).
#[pg_guard]
unsafe extern "C-unwind" fn on_refresh_exit(_code: i32, arg: pg_sys::Datum) {
    registry::unregister_refresh_job(arg.value() as u32);
}

/// Every stream table's effective interval at `now`, by storage OID: its own
/// ([`Schedule::interval`]) or, for `calculated`, as
/// [`pgt_core::schedule::resolve_calculated`] resolves it with
/// `pg_trickle.default_schedule_seconds`. `order` lists the storage OIDs
/// upstream first; `edges` are the stream-table-to-stream-table edges.
fn resolve_intervals(
    order: &[u32],
    edges: &pgt_core::dag::Edges<u32>,
    by_relid: &BTreeMap<u32, &Entry>,
    now: SystemTime,
) -> BTreeMap<u32, Duration> {
    pgt_core::schedule::resolve_calculated(order, edges, |r| by_relid.get(&r).and_then(|e| e.schedule.interval(now)), default_interval())
}

/// The DAG of the stream tables `entries` given the catalog's source edges
/// (`(source, stream table, source is a stream table)`): its nodes (storage
/// OIDs), its stream-table-to-stream-table edges, and a topological order,
/// upstream first. A cycle cannot be created (create and alter reject it); if
/// the catalog somehow holds one, the order is the catalog's rather than none.
fn stream_table_dag(entries: &[Entry], all_edges: &[(u32, u32, bool)]) -> (BTreeSet<u32>, pgt_core::dag::Edges<u32>, Vec<u32>) {
    let edges = pgt_core::dag::edges(all_edges.iter().filter(|(_, _, st)| *st).map(|(up, down, _)| (*up, *down)));
    let nodes: BTreeSet<u32> = entries.iter().map(|e| e.relid).collect();
    let order = pgt_core::dag::topological_order(&nodes, &edges).unwrap_or_else(|_| nodes.iter().copied().collect());
    (nodes, edges, order)
}

/// What a `calculated` schedule that nothing downstream constrains resolves
/// to: `pg_trickle.default_schedule_seconds`.
fn default_interval() -> Duration {
    Duration::from_secs(guc::DEFAULT_SCHEDULE_SECONDS.get().max(1) as u64)
}

/// The interval the scheduler refreshes each stream table at, as of now:
/// `(pgt_id, interval)` for every stream table of the database (IMMEDIATE
/// ones included: the scheduler skips them, but their schedule resolves as
/// any other). Without automatic backoff (see `pg_trickle.auto_backoff`),
/// which only the running scheduler knows.
pub fn effective_intervals() -> PgtResult<Vec<(i64, Duration)>> {
    let entries = stream_tables()?;
    let (_, edges, order) = stream_table_dag(&entries, &crate::catalog::source_edges()?);
    let by_relid: BTreeMap<u32, &Entry> = entries.iter().map(|e| (e.relid, e)).collect();
    let intervals = resolve_intervals(&order, &edges, &by_relid, SystemTime::now());
    Ok(entries.iter().filter_map(|e| intervals.get(&e.relid).map(|d| (e.pgt_id, *d))).collect())
}

fn stream_tables() -> PgtResult<Vec<Entry>> {
    query_map(
        kept("SELECT st.pgt_id, st.pgt_relid, st.pgt_relid::pg_catalog.regclass::text, st.schedule, st.status = 'ACTIVE' AND st.effective_refresh_mode <> 'IMMEDIATE', \
                st.diamond_consistency = 'atomic', st.diamond_schedule_policy = 'slowest', \
                st.effective_refresh_mode = 'DIFFERENTIAL' AND st.frontier IS NOT NULL AND st.is_populated \
                  AND NOT st.needs_reinit, st.needs_reinit \
         FROM pgtrickle.pgt_stream_tables st ORDER BY st.pgt_id"),
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
                atomic: col(row, 6)?,
                slowest: col(row, 7)?,
                change_driven: col(row, 8)?,
                needs_reinit: col(row, 9)?,
            })
        },
    )
}

/// Why a transaction of the worker failed.
struct Failure {
    /// SQLSTATE, when PostgreSQL raised the error.
    code: Option<PgSqlErrorCode>,
    message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Runs `f` in a transaction of its own, committed when it succeeds and rolled
/// back when it fails (a PostgreSQL error, in `f` or at commit, or an `Err`).
/// The worker goes on either way.
fn in_transaction<T>(f: impl FnOnce() -> PgtResult<T> + std::panic::UnwindSafe + std::panic::RefUnwindSafe) -> Result<T, Failure> {
    in_transaction_at(pg_sys::XACT_READ_COMMITTED as i32, f)
}

/// [`in_transaction`] at isolation level `isolation` (`XACT_*`).
fn in_transaction_at<T>(
    isolation: i32,
    f: impl FnOnce() -> PgtResult<T> + std::panic::UnwindSafe + std::panic::RefUnwindSafe,
) -> Result<T, Failure> {
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        let default = pg_sys::DefaultXactIsoLevel;
        pg_sys::DefaultXactIsoLevel = isolation;
        pg_sys::StartTransactionCommand();
        pg_sys::DefaultXactIsoLevel = default;
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    let result = PgTryBuilder::new(|| {
        let value = f().map_err(|e| Failure { code: None, message: e.to_string() })?;
        unsafe {
            pg_sys::PopActiveSnapshot();
            pg_sys::CommitTransactionCommand();
        }
        Ok(value)
    })
    .catch_others(|caught| {
        let report = crate::error::caught_report(&caught);
        Err(Failure { code: Some(report.sql_error_code()), message: report.message().to_string() })
    })
    .execute();
    if result.is_err() {
        unsafe { pg_sys::AbortCurrentTransaction() };
    }
    result
}
