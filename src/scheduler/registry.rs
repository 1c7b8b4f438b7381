//! The scheduler's shared memory: which database has a scheduler worker, its
//! latch (to wake it), and when the launcher may start one again.
//!
//! One fixed-size array of slots under one LWLock, sized by
//! [`MAX_DATABASES`]. It exists only when the library was loaded through
//! `shared_preload_libraries` ([`available`]).

use pgrx::{pg_sys, PGRXSharedMemory, PgLwLock};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How many databases can have a scheduler worker at once.
pub const MAX_DATABASES: usize = 256;

/// How many refresh workers one database's scheduler can run at once (the
/// bound of `pg_trickle.max_concurrent_refreshes`).
pub const MAX_REFRESH_WORKERS: usize = 32;

/// A refresh worker: its process id and the (first) stream table it refreshes.
#[derive(Copy, Clone, Default, Debug)]
pub struct RefreshJob {
    /// Process id, 0 for a free entry.
    pub pid: i32,
    /// `pgt_id` of the stream table (the first of a diamond group).
    pub pgt_id: i64,
}

/// What the launcher knows about a database.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum Known {
    /// Not probed yet (after a restart, or a new database).
    #[default]
    Unknown,
    /// Yes.
    Yes,
    /// No (its worker found no pg_trickle; probed again later).
    No,
}

/// One database's scheduler.
#[derive(Copy, Clone, Debug)]
pub struct Slot {
    /// The database (0: free slot).
    pub dboid: u32,
    /// The worker's process id, 0 when none runs.
    pub pid: i32,
    /// The worker's latch (an address in shared memory), 0 when none runs.
    pub latch: usize,
    /// The launcher does not start a worker before this time (Unix ms): set
    /// when the database has no pg_trickle, and while a statement that needs
    /// the database to itself (DROP DATABASE, ...) runs.
    pub retry_after_ms: i64,
    /// The worker has been asked to exit.
    pub stop_requested: bool,
    /// Incremented at the commit of every transaction of this database that
    /// captured a change ([`note_change`]): a DIFFERENTIAL stream table checked
    /// at generation `g` has nothing new to apply while the generation is `g`.
    pub change_generation: u64,
    /// When the worker last finished a scheduling cycle (Unix ms).
    pub last_cycle_ms: i64,
    /// Due checks the worker ran (a refresh transaction each), since it started.
    pub checks: u64,
    /// Due checks it skipped because nothing was committed since (see
    /// `worker::Scheduler::unchanged_since`), since it started.
    pub skipped_checks: u64,
    /// Whether the database has pg_trickle: learned by its worker (or the
    /// creation of a stream table there); unknown until then. A database that
    /// may have it waits when no worker can be started for it.
    pub has_extension: Known,
    /// Since when (Unix ms) the database has waited for a background worker
    /// slot for its scheduler; 0 when it is not waiting.
    pub waiting_since_ms: i64,
    /// When (Unix ms) the running worker registered: the start of its turn.
    pub started_ms: i64,
    /// The database's refresh workers.
    pub refresh_jobs: [RefreshJob; MAX_REFRESH_WORKERS],
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            dboid: 0,
            pid: 0,
            latch: 0,
            retry_after_ms: 0,
            stop_requested: false,
            change_generation: 0,
            last_cycle_ms: 0,
            checks: 0,
            skipped_checks: 0,
            has_extension: Known::Unknown,
            waiting_since_ms: 0,
            started_ms: 0,
            refresh_jobs: [RefreshJob::default(); MAX_REFRESH_WORKERS],
        }
    }
}

/// Every slot, plus the launcher's process id.
#[derive(Copy, Clone, Debug)]
pub struct Registry {
    /// The launcher's process id, 0 when it is not running.
    pub launcher_pid: i32,
    /// The launcher's latch (an address in shared memory), 0 when it is not running.
    pub launcher_latch: usize,
    /// Per-database slots.
    pub slots: [Slot; MAX_DATABASES],
}

impl Default for Registry {
    fn default() -> Self {
        Registry { launcher_pid: 0, launcher_latch: 0, slots: [Slot::default(); MAX_DATABASES] }
    }
}

// Plain data (no pointers into process memory; the latch address is in shared
// memory, mapped at the same address in every backend).
unsafe impl PGRXSharedMemory for Registry {}

/// The registry. Initialized by `pg_shmem_init!` in `_PG_init` when preloading.
pub static REGISTRY: PgLwLock<Registry> = unsafe { PgLwLock::new(c"pg_trickle_scheduler") };

static AVAILABLE: AtomicBool = AtomicBool::new(false);

/// Marks the registry as initialized (called from `_PG_init` when preloading;
/// forked backends inherit the flag).
pub fn set_available() {
    AVAILABLE.store(true, Ordering::SeqCst);
}

/// Whether automatic refresh can run: the library was preloaded, so the
/// registry and the launcher exist.
pub fn available() -> bool {
    AVAILABLE.load(Ordering::SeqCst)
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn slot_of(registry: &Registry, dboid: u32) -> Option<usize> {
    registry.slots.iter().position(|s| s.dboid == dboid)
}

/// The slot of `dboid`, created if needed; `None` when every slot is taken.
fn slot_for(registry: &mut Registry, dboid: u32) -> Option<usize> {
    slot_of(registry, dboid).or_else(|| {
        let free = registry.slots.iter().position(|s| s.dboid == 0)?;
        registry.slots[free] = Slot { dboid, ..Slot::default() };
        Some(free)
    })
}

/// How a worker's registration went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    /// Refused: no slot is free, another worker runs there, or a statement
    /// that needs the database alone keeps workers away.
    Refused,
    /// Registered.
    Registered,
    /// Registered after the database waited for a background worker: its
    /// stream tables are overdue.
    AfterWaiting,
}

/// Records the running worker of `dboid` (the calling process).
pub fn register_worker(dboid: u32) -> Registration {
    let mut r = REGISTRY.exclusive();
    let Some(i) = slot_for(&mut r, dboid) else { return Registration::Refused };
    let slot = &mut r.slots[i];
    if slot.pid != 0 || slot.stop_requested || slot.retry_after_ms > now_ms() {
        return Registration::Refused;
    }
    let waited = slot.waiting_since_ms != 0;
    unsafe {
        slot.pid = pg_sys::MyProcPid;
        slot.latch = &raw mut (*pg_sys::MyProc).procLatch as usize;
    }
    slot.stop_requested = false;
    slot.has_extension = Known::Yes;
    slot.waiting_since_ms = 0;
    slot.started_ms = now_ms();
    if waited {
        Registration::AfterWaiting
    } else {
        Registration::Registered
    }
}

/// Records that `dboid` has pg_trickle (a stream table was created there): if
/// no worker can be started for it, it waits its turn.
pub fn note_extension(dboid: u32) {
    let mut r = REGISTRY.exclusive();
    if let Some(i) = slot_for(&mut r, dboid) {
        r.slots[i].has_extension = Known::Yes;
    }
}

/// Records that the worker of `dboid` found no pg_trickle there.
pub fn note_no_extension(dboid: u32) {
    let mut r = REGISTRY.exclusive();
    if let Some(i) = slot_of(&r, dboid) {
        r.slots[i].has_extension = Known::No;
        r.slots[i].waiting_since_ms = 0;
    }
}

/// The launcher could not start a worker for `dboid` (no free background
/// worker slot): a database that has pg_trickle, or may have it (not probed
/// yet, as after a restart), now waits (from now, unless it waited already).
/// One without it is probed when a worker is free.
pub fn note_waiting(dboid: u32) {
    let mut r = REGISTRY.exclusive();
    if let Some(i) = slot_for(&mut r, dboid) {
        let slot = &mut r.slots[i];
        if slot.has_extension != Known::No && slot.waiting_since_ms == 0 {
            slot.waiting_since_ms = now_ms();
        }
    }
}

/// The databases without a worker in the order the launcher should start
/// theirs: those waiting longest first, then the others.
pub fn start_order(databases: &[u32]) -> Vec<u32> {
    let r = REGISTRY.share();
    let mut order: Vec<(i64, u32)> = databases
        .iter()
        .map(|d| {
            let waiting = slot_of(&r, *d).map(|i| r.slots[i].waiting_since_ms).filter(|w| *w != 0).unwrap_or(i64::MAX);
            (waiting, *d)
        })
        .collect();
    order.sort_unstable();
    order.into_iter().map(|(_, d)| d).collect()
}

/// Whether the worker of `dboid`, having run for at least `turn`, should hand
/// its background worker to a waiting database: some database with
/// pg_trickle waits, and no running worker has held its turn longer.
pub fn should_yield(dboid: u32, turn: std::time::Duration) -> bool {
    let r = REGISTRY.share();
    let Some(me) = slot_of(&r, dboid).map(|i| r.slots[i]) else { return false };
    if me.pid == 0 || now_ms() - me.started_ms < turn.as_millis() as i64 {
        return false;
    }
    let waiting = r.slots.iter().any(|s| s.dboid != 0 && s.dboid != dboid && s.pid == 0 && s.waiting_since_ms != 0);
    let oldest = r.slots.iter().filter(|s| s.pid != 0).all(|s| s.started_ms >= me.started_ms);
    waiting && oldest
}

/// How many databases with pg_trickle wait for a scheduler worker.
pub fn waiting_databases() -> usize {
    let r = REGISTRY.share();
    r.slots.iter().filter(|s| s.dboid != 0 && s.pid == 0 && s.waiting_since_ms != 0).count()
}

/// Records a refresh worker of `dboid` (the calling process) refreshing
/// `pgt_id`; false when the database's table of refresh workers is full.
pub fn register_refresh_job(dboid: u32, pgt_id: i64) -> bool {
    let mut r = REGISTRY.exclusive();
    let Some(i) = slot_for(&mut r, dboid) else { return false };
    let Some(free) = r.slots[i].refresh_jobs.iter().position(|j| j.pid == 0) else { return false };
    r.slots[i].refresh_jobs[free] = RefreshJob { pid: unsafe { pg_sys::MyProcPid }, pgt_id };
    true
}

/// Forgets the refresh worker that is the calling process (it is exiting).
pub fn unregister_refresh_job(dboid: u32) {
    let mut r = REGISTRY.exclusive();
    if let Some(i) = slot_of(&r, dboid) {
        let me = unsafe { pg_sys::MyProcPid };
        let slot = &mut r.slots[i];
        for job in slot.refresh_jobs.iter_mut().filter(|j| j.pid == me) {
            *job = RefreshJob::default();
        }
        // The last one out after a stop request: nobody is left to heed it.
        if slot.pid == 0 && slot.refresh_jobs.iter().all(|j| j.pid == 0) {
            slot.stop_requested = false;
        }
    }
}

/// The running refresh workers of `dboid`.
pub fn refresh_jobs(dboid: u32) -> Vec<RefreshJob> {
    let r = REGISTRY.share();
    slot_of(&r, dboid).map(|i| r.slots[i].refresh_jobs.iter().copied().filter(|j| j.pid != 0).collect()).unwrap_or_default()
}

/// Forgets the worker of `dboid` (it is exiting); the launcher may start a new
/// one after `retry_after`.
pub fn unregister_worker(dboid: u32, retry_after: Duration) {
    let mut r = REGISTRY.exclusive();
    let Some(i) = slot_for(&mut r, dboid) else { return };
    let slot = &mut r.slots[i];
    if unsafe { slot.pid == pg_sys::MyProcPid } {
        slot.pid = 0;
        slot.latch = 0;
        slot.stop_requested = false;
    }
    slot.retry_after_ms = slot.retry_after_ms.max(now_ms() + retry_after.as_millis() as i64);
}

/// Whether the worker of `dboid` has been asked to exit.
pub fn stop_requested(dboid: u32) -> bool {
    let r = REGISTRY.share();
    slot_of(&r, dboid).is_some_and(|i| r.slots[i].stop_requested)
}

/// Notes that the worker of `dboid` finished a scheduling cycle, with its
/// totals of due checks run and skipped.
pub fn cycle_done(dboid: u32, checks: u64, skipped_checks: u64) {
    let mut r = REGISTRY.exclusive();
    if let Some(i) = slot_of(&r, dboid) {
        r.slots[i].last_cycle_ms = now_ms();
        r.slots[i].checks = checks;
        r.slots[i].skipped_checks = skipped_checks;
    }
}

/// Whether the launcher may start a worker for `dboid` now.
pub fn may_start(dboid: u32) -> bool {
    let r = REGISTRY.share();
    match slot_of(&r, dboid) {
        Some(i) => r.slots[i].pid == 0 && r.slots[i].retry_after_ms <= now_ms(),
        // A worker needs a slot to register in.
        None => r.slots.iter().any(|s| s.dboid == 0),
    }
}

/// Frees the slots no worker uses: of databases not in `existing`, and of
/// those whose pause is over (a database without pg_trickle takes a slot again
/// at its next probe), so that slots are not used up by databases probed once.
pub fn forget_other_databases(existing: &[u32]) {
    let mut r = REGISTRY.exclusive();
    let now = now_ms();
    for slot in r.slots.iter_mut() {
        let busy = slot.pid != 0 || slot.stop_requested || slot.refresh_jobs.iter().any(|j| j.pid != 0);
        let remembered = slot.has_extension != Known::No && existing.contains(&slot.dboid) && slot.waiting_since_ms != 0
            || slot.has_extension == Known::Yes && existing.contains(&slot.dboid);
        if slot.dboid != 0 && !busy && !remembered && (!existing.contains(&slot.dboid) || slot.retry_after_ms <= now) {
            *slot = Slot::default();
        }
    }
}

/// Asks the worker of `dboid` to exit, keeps the launcher from starting another
/// for `pause`, and waits up to `wait` for it to be gone. Returns whether no
/// worker runs there any more.
pub fn stop_worker(dboid: u32, pause: Duration, wait: Duration) -> bool {
    let latch = {
        let mut r = REGISTRY.exclusive();
        let Some(i) = slot_for(&mut r, dboid) else { return true };
        let slot = &mut r.slots[i];
        slot.retry_after_ms = slot.retry_after_ms.max(now_ms() + pause.as_millis() as i64);
        if slot.pid == 0 && slot.refresh_jobs.iter().all(|j| j.pid == 0) {
            return true;
        }
        // Also keeps refresh workers that have not registered yet from starting.
        slot.stop_requested = true;
        slot.latch
    };
    if latch != 0 {
        unsafe { pg_sys::SetLatch(latch as *mut pg_sys::Latch) };
    }
    // Refresh workers are connected to the database too.
    for job in refresh_jobs(dboid) {
        unsafe { libc_kill(job.pid, pg_sys::SIGTERM as i32) };
    }
    let deadline = std::time::Instant::now() + wait;
    while std::time::Instant::now() < deadline {
        {
            let mut r = REGISTRY.exclusive();
            let gone = |s: &Slot| s.pid == 0 && s.refresh_jobs.iter().all(|j| j.pid == 0);
            match slot_of(&r, dboid) {
                None => return true,
                Some(i) if gone(&r.slots[i]) => {
                    // Nobody left to heed the request; the pause keeps the
                    // launcher away meanwhile.
                    r.slots[i].stop_requested = false;
                    return true;
                }
                Some(_) => {}
            }
        }
        unsafe {
            pg_sys::WaitLatch(
                pg_sys::MyLatch,
                (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                10,
                pg_sys::PG_WAIT_EXTENSION,
            );
            pg_sys::ResetLatch(pg_sys::MyLatch);
            pg_sys::check_for_interrupts!();
        }
    }
    false
}

unsafe extern "C" {
    /// POSIX `kill(2)`.
    #[link_name = "kill"]
    fn libc_kill(pid: i32, signal: i32) -> i32;
}

/// Records that a transaction of `dboid` that captured changes committed (it is
/// visible to snapshots taken from now on: transaction callbacks run after the
/// commit is in the proc array), and wakes the database's worker.
pub fn note_change(dboid: u32) {
    let latch = {
        let mut r = REGISTRY.exclusive();
        match slot_of(&r, dboid) {
            Some(i) => {
                r.slots[i].change_generation = r.slots[i].change_generation.wrapping_add(1);
                r.slots[i].latch
            }
            None => 0,
        }
    };
    if latch != 0 {
        unsafe { pg_sys::SetLatch(latch as *mut pg_sys::Latch) };
    }
}

/// The change generation of `dboid` ([`Slot::change_generation`]).
pub fn change_generation(dboid: u32) -> u64 {
    let r = REGISTRY.share();
    slot_of(&r, dboid).map(|i| r.slots[i].change_generation).unwrap_or(0)
}

/// Wakes the worker of `dboid`, if one runs.
pub fn wake(dboid: u32) {
    let latch = {
        let r = REGISTRY.share();
        slot_of(&r, dboid).map(|i| r.slots[i].latch).unwrap_or(0)
    };
    if latch != 0 {
        unsafe { pg_sys::SetLatch(latch as *mut pg_sys::Latch) };
    }
}

/// A copy of the slot of `dboid`, and the launcher's pid.
pub fn snapshot(dboid: u32) -> (i32, Option<Slot>) {
    let r = REGISTRY.share();
    (r.launcher_pid, slot_of(&r, dboid).map(|i| r.slots[i]))
}

/// Records the launcher (the calling process), or that it is gone.
pub fn set_launcher(running: bool) {
    let mut r = REGISTRY.exclusive();
    unsafe {
        r.launcher_pid = if running { pg_sys::MyProcPid } else { 0 };
        r.launcher_latch = if running { &raw mut (*pg_sys::MyProc).procLatch as usize } else { 0 };
    }
}

/// Lets the launcher start a worker for `dboid` at its next look.
pub fn clear_retry(dboid: u32) {
    let mut r = REGISTRY.exclusive();
    if let Some(i) = slot_of(&r, dboid) {
        r.slots[i].retry_after_ms = 0;
    }
}

/// Sets the launcher's latch (its next look at the databases is now).
pub fn wake_launcher() {
    let latch = REGISTRY.share().launcher_latch;
    if latch != 0 {
        unsafe { pg_sys::SetLatch(latch as *mut pg_sys::Latch) };
    }
}
