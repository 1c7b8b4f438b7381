//! IMMEDIATE maintenance: a stream table brought up to date inside the
//! transaction that changes its sources, before the changing statement
//! returns (SPEC §3).
//!
//! **Triggers.** Every relation an IMMEDIATE stream table reads (a table, each
//! partition of a partitioned one, another stream table's storage) carries
//! statement-level triggers (`crate::cdc::ensure_immediate_triggers`): one
//! BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE, and AFTER INSERT, UPDATE,
//! DELETE (with transition tables) and TRUNCATE. The AFTER triggers hand the
//! statement's transition tables — its old rows (weight −1) and new rows
//! (+1) — to the same delta plan a DIFFERENTIAL refresh runs, through
//! [`pgt_delta::source::ChangeSource::Transition`]; the delta statement reads
//! them as ephemeral named relations (`crate::spi::expose_tuplestores`).
//!
//! **When a delta may be applied.** A delta plan computes the change of the
//! stream table from the changes of its sources and their *current* states:
//! it assumes every change not in the delta is already reflected in the
//! stream table. One statement can change several sources before any of its
//! AFTER triggers fire: a data-modifying CTE writes two tables, a foreign-key
//! cascade or another trigger writes a second table (or the same one again)
//! in a nested statement, `INSERT ... ON CONFLICT DO UPDATE` and MERGE fire
//! the triggers of several events. Applying the first AFTER trigger's delta
//! would then join it with the other sources' changes, which are not in the
//! delta (counting their cross product twice, the error pg_ivm's tracker
//! records for writable CTEs). So the BEFORE trigger counts, per (stream
//! table, source), the statements begun and not yet maintained
//! ([`Pending::open`]); an AFTER trigger whose stream table still has a begun
//! statement on any source sets its transition tables aside (copied: they are
//! freed when the statement ends, [`Pending::stash`]), and the last one applies
//! every set-aside change together with its own — when every source is in the
//! state the combined delta expects. PostgreSQL fires every BEFORE STATEMENT
//! trigger of a query before any of its AFTER STATEMENT triggers, once per
//! relation and event per query level, in pairs (PostgreSQL docs, "Overview of
//! Trigger Behavior"). A TRUNCATE cannot be expressed as row images: the
//! stream table is recomputed in the transaction.
//!
//! **Savepoints.** The counts and set-aside changes follow subtransactions: a
//! subtransaction's abort restores them as they were when it began
//! ([`subxact_callback`]); a transaction's end clears them.
//!
//! **Concurrency.** Before a statement changes a source, its BEFORE trigger
//! updates the stream tables' rows in `pgtrickle.pgt_immediate_sync`, in
//! `pgt_id` order, once per transaction (`crate::catalog::lock_immediate`):
//! writers of one stream table's sources serialize from their first change to
//! commit, the second seeing the first's committed maintenance (READ
//! COMMITTED takes a new snapshot per statement), and in REPEATABLE READ and
//! SERIALIZABLE the second fails with a serialization error (40001) rather
//! than apply a delta computed against contents its snapshot cannot see.
//!
//! **Security.** Maintenance runs as the stream table's owner in a
//! security-restricted operation with a pinned `search_path`
//! (`crate::privilege::as_owner_restricted`), as a refresh does.

use super::Applied;
use crate::catalog::{self, StreamTable};
use crate::error::{PgtError, PgtResult};
use crate::spi::{expose_tuplestores, NamedTuplestore, StatementSnapshot};
use pgrx::pg_sys;
use pgt_core::options::RefreshMode;
use pgt_delta::source::{ChangeSource, TransitionTable};
use pgt_delta::Plan;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

/// A statement's changes of one relation: its transition tables.
#[derive(Debug)]
struct Batch {
    /// The relation the stream table's plan reads (a partitioned table for a
    /// change of one of its partitions).
    source: u32,
    /// The relation whose row type the tuplestores hold (the one the trigger
    /// fired on).
    row_type: pg_sys::Oid,
    /// Old rows, if any.
    old: Option<*mut pg_sys::Tuplestorestate>,
    /// New rows, if any.
    new: Option<*mut pg_sys::Tuplestorestate>,
}

impl Batch {
    fn rows(&self) -> u64 {
        let count = |s: Option<*mut pg_sys::Tuplestorestate>| {
            // SAFETY: a live tuplestore (the trigger's, or a copy in the
            // transaction's memory).
            s.map_or(0, |s| unsafe { pg_sys::tuplestore_tuple_count(s) } as u64)
        };
        count(self.old) + count(self.new)
    }
}

/// What the transaction's statements have begun and not yet maintained.
#[derive(Debug, Clone, Default)]
struct Pending {
    /// `(pgt_id, source relid)` → statements on the source begun (BEFORE
    /// trigger fired) whose AFTER trigger has not fired yet.
    open: BTreeMap<(i64, u32), u32>,
    /// `pgt_id` → changes set aside until no statement on its sources is open.
    stash: BTreeMap<i64, Vec<Rc<Batch>>>,
    /// Stream tables to recompute when their turn comes (a source was truncated).
    recompute: BTreeSet<i64>,
    /// Stream tables whose maintenance row this transaction holds.
    locked: BTreeSet<i64>,
}

impl Pending {
    fn waits(&self, pgt_id: i64) -> bool {
        self.open.range((pgt_id, 0)..=(pgt_id, u32::MAX)).any(|(_, n)| *n > 0)
    }
}

thread_local! {
    static PENDING: RefCell<Pending> = RefCell::new(Pending::default());
    /// [`PENDING`] as each open subtransaction found it (its id first).
    static SAVED: RefCell<Vec<(pg_sys::SubTransactionId, Pending)>> = const { RefCell::new(Vec::new()) };
}

/// Registers the transaction callbacks that keep [`PENDING`] in step with
/// commits, aborts and savepoints. Called once, when the library loads.
pub fn register_callbacks() {
    // SAFETY: callbacks with the signatures PostgreSQL expects, registered once.
    unsafe {
        pg_sys::RegisterXactCallback(Some(xact_callback), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(subxact_callback), std::ptr::null_mut());
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn xact_callback(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg_sys::XactEvent::*;
    if matches!(event, XACT_EVENT_COMMIT | XACT_EVENT_ABORT | XACT_EVENT_PREPARE | XACT_EVENT_PARALLEL_COMMIT | XACT_EVENT_PARALLEL_ABORT) {
        PENDING.with(|p| *p.borrow_mut() = Pending::default());
        SAVED.with(|s| s.borrow_mut().clear());
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn subxact_callback(
    event: pg_sys::SubXactEvent::Type,
    subid: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::SubXactEvent::*;
    match event {
        SUBXACT_EVENT_START_SUB => {
            let now = PENDING.with(|p| p.borrow().clone());
            SAVED.with(|s| s.borrow_mut().push((subid, now)));
        }
        SUBXACT_EVENT_COMMIT_SUB => SAVED.with(|s| s.borrow_mut().retain(|(id, _)| *id < subid)),
        SUBXACT_EVENT_ABORT_SUB => {
            let restored = SAVED.with(|s| {
                let mut s = s.borrow_mut();
                let found = s.iter().position(|(id, _)| *id == subid);
                let restored = found.map(|i| s[i].1.clone());
                s.retain(|(id, _)| *id < subid);
                restored
            });
            // Begun before the library was loaded: nothing was pending then.
            PENDING.with(|p| *p.borrow_mut() = restored.unwrap_or_default());
        }
        _ => {}
    }
}

/// The BEFORE STATEMENT trigger on `relid`: counts the statement as begun for
/// every IMMEDIATE stream table it feeds, and takes their maintenance rows.
pub fn before_statement(relid: pg_sys::Oid) -> PgtResult<()> {
    let targets = catalog::immediate_targets(relid)?;
    if targets.is_empty() {
        return Ok(());
    }
    let to_lock: Vec<i64> = PENDING.with(|p| {
        let mut p = p.borrow_mut();
        for (pgt_id, source) in &targets {
            *p.open.entry((*pgt_id, source.to_u32())).or_default() += 1;
        }
        let ids: BTreeSet<i64> = targets.iter().map(|(id, _)| *id).filter(|id| !p.locked.contains(id)).collect();
        ids.into_iter().collect()
    });
    for pgt_id in to_lock {
        catalog::lock_immediate(pgt_id)?;
        PENDING.with(|p| p.borrow_mut().locked.insert(pgt_id));
    }
    Ok(())
}

/// The statement's changes, as an AFTER STATEMENT trigger receives them.
pub struct StatementChanges {
    /// The relation the trigger fired on.
    pub relid: pg_sys::Oid,
    /// Its row type, for copying the tuplestores.
    pub tupdesc: pg_sys::TupleDesc,
    /// The old transition table (UPDATE, DELETE).
    pub old: Option<*mut pg_sys::Tuplestorestate>,
    /// The new transition table (INSERT, UPDATE).
    pub new: Option<*mut pg_sys::Tuplestorestate>,
    /// The statement was a TRUNCATE.
    pub truncate: bool,
}

/// The AFTER STATEMENT trigger on `changes.relid`: for each IMMEDIATE stream
/// table it feeds (in `pgt_id` order), applies the statement's changes with
/// those set aside before, or sets them aside while a statement on another of
/// its sources is still open (see the module doc).
pub fn after_statement(changes: &StatementChanges) -> PgtResult<()> {
    let targets = catalog::immediate_targets(changes.relid)?;
    if targets.is_empty() {
        return Ok(());
    }
    let mut by_table: BTreeMap<i64, u32> = BTreeMap::new();
    for (pgt_id, source) in &targets {
        by_table.insert(*pgt_id, source.to_u32());
    }
    let mut copy: Option<Rc<Batch>> = None;
    for (pgt_id, source) in by_table {
        let live = Batch { source, row_type: changes.relid, old: changes.old, new: changes.new };
        let waits = PENDING.with(|p| {
            let mut p = p.borrow_mut();
            if let Some(n) = p.open.get_mut(&(pgt_id, source)) {
                *n = n.saturating_sub(1);
            }
            if changes.truncate {
                p.recompute.insert(pgt_id);
            }
            p.waits(pgt_id)
        });
        if waits {
            if live.rows() > 0 {
                let batch = match &copy {
                    Some(b) if b.source == source => Rc::clone(b),
                    _ => {
                        // SAFETY: the trigger's live tuplestores and row type.
                        let b = Rc::new(unsafe { copy_batch(&live, changes.tupdesc) });
                        copy = Some(Rc::clone(&b));
                        b
                    }
                };
                PENDING.with(|p| p.borrow_mut().stash.entry(pgt_id).or_default().push(batch));
            }
            continue;
        }
        let (mut batches, recompute) = PENDING.with(|p| {
            let mut p = p.borrow_mut();
            (p.stash.remove(&pgt_id).unwrap_or_default(), p.recompute.remove(&pgt_id))
        });
        batches.push(Rc::new(live));
        maintain(pgt_id, &batches, recompute)?;
    }
    Ok(())
}

/// Copies the tuplestores of `live` into the top transaction's memory (and
/// resource owner, for spilled files), where they outlive the statement.
///
/// # Safety
/// `live`'s tuplestores alive; `tupdesc` their row type.
unsafe fn copy_batch(live: &Batch, tupdesc: pg_sys::TupleDesc) -> Batch {
    unsafe fn copy(src: *mut pg_sys::Tuplestorestate, tupdesc: pg_sys::TupleDesc) -> *mut pg_sys::Tuplestorestate {
        unsafe {
            let context = pg_sys::MemoryContextSwitchTo(pg_sys::TopTransactionContext);
            let owner = pg_sys::CurrentResourceOwner;
            pg_sys::CurrentResourceOwner = pg_sys::TopTransactionResourceOwner;
            let dst = pg_sys::tuplestore_begin_heap(false, false, pg_sys::work_mem);
            let slot = pg_sys::MakeSingleTupleTableSlot(tupdesc, &pg_sys::TTSOpsMinimalTuple);
            let reader = pg_sys::tuplestore_alloc_read_pointer(src, pg_sys::EXEC_FLAG_REWIND as i32);
            pg_sys::tuplestore_select_read_pointer(src, reader);
            pg_sys::tuplestore_rescan(src);
            while pg_sys::tuplestore_gettupleslot(src, true, false, slot) {
                pg_sys::tuplestore_puttupleslot(dst, slot);
            }
            pg_sys::tuplestore_select_read_pointer(src, 0);
            pg_sys::ExecDropSingleTupleTableSlot(slot);
            pg_sys::CurrentResourceOwner = owner;
            pg_sys::MemoryContextSwitchTo(context);
            dst
        }
    }
    unsafe {
        Batch {
            source: live.source,
            row_type: live.row_type,
            old: live.old.map(|s| copy(s, tupdesc)),
            new: live.new.map(|s| copy(s, tupdesc)),
        }
    }
}

/// Applies `batches` to IMMEDIATE stream table `pgt_id` (or recomputes it when
/// `recompute`, or when it cannot apply them).
fn maintain(pgt_id: i64, batches: &[Rc<Batch>], recompute: bool) -> PgtResult<()> {
    catalog::require_current_catalog()?;
    let Some(mut st) = catalog::stream_table_by_id(pgt_id)? else { return Ok(()) };
    if st.effective_refresh_mode != RefreshMode::Immediate {
        return Ok(());
    }
    let stale_state = super::has_stale_state(&st)?;
    if stale_state {
        st.needs_reinit = true;
    }
    let stored = st.delta_plan.as_deref().map(Plan::from_json);
    // Every relation the plan reads (the changed ones when it cannot be read).
    let read: BTreeSet<u32> = match &stored {
        Some(Ok(plan)) => plan.relations().iter().map(|r| r.relid).collect(),
        _ => batches.iter().map(|b| b.source).collect(),
    };
    check_owner_reads_everything(&st, &read)?;
    let plan = match stored {
        Some(Ok(plan)) if st.is_populated && !st.needs_reinit && !recompute => plan,
        _ => {
            // A TRUNCATE among the changes, DDL on a source, state an older
            // build stored, or a plan this build cannot read: recompute in
            // this transaction.
            return recompute_in_transaction(st);
        }
    };
    let mut tables: BTreeMap<u32, Vec<TransitionTable>> = BTreeMap::new();
    let mut images: BTreeMap<u32, u64> = BTreeMap::new();
    let mut stores = Vec::new();
    for (k, batch) in batches.iter().enumerate() {
        for (store, new_rows) in [(batch.old, false), (batch.new, true)] {
            let Some(store) = store else { continue };
            // SAFETY: a live tuplestore (see Batch::rows).
            let rows = unsafe { pg_sys::tuplestore_tuple_count(store) } as u64;
            if rows == 0 {
                continue;
            }
            // The row type's relation is in the name: a kept plan reads
            // columns by position, which differ between a partitioned table
            // and its partitions.
            let name = format!("__pgt_{}_{}_{}_{k}", if new_rows { "new" } else { "old" }, batch.source, batch.row_type.to_u32());
            tables.entry(batch.source).or_default().push(TransitionTable { name: name.clone(), new_rows });
            *images.entry(batch.source).or_default() += rows;
            stores.push(NamedTuplestore {
                name: std::ffi::CString::new(name).map_err(|_| PgtError::internal("transition table name contains a NUL byte"))?,
                relid: batch.row_type,
                store,
            });
        }
    }
    if tables.is_empty() {
        return Ok(());
    }
    let mut changed = pgt_delta::Changed::new();
    for relid in tables.keys() {
        changed.insert(*relid);
    }
    // As a DIFFERENTIAL refresh does: sizes for joins and aggregates only
    // (see refresh::differential).
    let plain_rows = matches!(plan.root, pgt_delta::Root::Rows(_)) && plan.widest_block() < 2 && plan.state_tables().is_empty();
    let changes: u64 = images.values().sum();
    let source = ChangeSource::transition(tables, if plain_rows { BTreeMap::new() } else { images });
    let _exposed = expose_tuplestores(stores);
    crate::privilege::as_owner_restricted(st.owner, || -> PgtResult<()> {
        let snapshot = StatementSnapshot::take();
        apply(&st, &plan, &source, &changed, changes, &snapshot)?;
        Ok(())
    })
}

/// Fails (42501) unless the owner of `st` may still read every row of the
/// relations `read` (OIDs) — what IMMEDIATE was granted on at
/// create (`crate::definition::resolve_mode`): SELECT on the whole table, no
/// row-level security applying to it. Rights and policies can change after
/// create; transition tables hold every row, so maintenance re-checks at every
/// statement, as a DIFFERENTIAL refresh does at every refresh
/// (`refresh::preflight`). Two catalog-cache lookups per relation.
fn check_owner_reads_everything(st: &StreamTable, read: &BTreeSet<u32>) -> PgtResult<()> {
    for source in read {
        let relid = pg_sys::Oid::from(*source);
        // SAFETY: catalog lookups by OID; an unknown relation raises an error.
        let (select, rls) = unsafe {
            (
                pg_sys::pg_class_aclcheck(relid, st.owner, pg_sys::ACL_SELECT as pg_sys::AclMode),
                pg_sys::check_enable_rls(relid, st.owner, true) as pg_sys::CheckEnableRlsResult::Type,
            )
        };
        let table = crate::parse::relation_name(relid)?;
        let why = if select != pg_sys::AclResult::ACLCHECK_OK {
            format!("may no longer read all of {table} (SELECT on the table)")
        } else if rls == pg_sys::CheckEnableRlsResult::RLS_ENABLED {
            format!("is now subject to row-level security on {table}")
        } else {
            continue;
        };
        return Err(PgtError::new(
            pgrx::PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("stream table {} cannot be maintained IMMEDIATE: its owner {} {why}", st.name, crate::cdc::role_name(st.owner)?),
        )
        .detail("IMMEDIATE maintenance reads each statement's transition tables, which hold every row and column of their tables; the statement is refused rather than let the stream table show rows its owner may not read.")
        .hint("Restore the owner's rights, or switch the stream table with alter_stream_table(name, refresh_mode => 'FULL')."));
    }
    Ok(())
}

/// Runs the delta statement of `plan` for `source` (`changes` rows of
/// transition tables) in `snapshot`, then the TopK's trim or refill when it
/// has one.
fn apply(
    st: &StreamTable,
    plan: &Plan,
    source: &ChangeSource,
    changed: &pgt_delta::Changed,
    changes: u64,
    snapshot: &StatementSnapshot,
) -> PgtResult<Applied> {
    let Some(statement) = plan.delta_statement(&st.tables(), source, changed) else {
        return Ok(Applied { action: "IMMEDIATE", inserted: 0, deleted: 0, unchanged: true });
    };
    super::differential::allow_join_reordering(plan.widest_block())?;
    let class = crate::spi::PlanClass { variant: 0, hash_table_rows: super::initial_hash_table_rows(changes as f64) };
    let run = || super::apply_delta_if(&statement, snapshot, class, &[], |_| Ok(true));
    let applied = if plan.has_counted_recursion() {
        // Counting recurses through the new data from every changed row,
        // also around a cycle no row of the result reaches: past
        // pg_trickle.ivm_recursive_max_depth, undone and recomputed.
        match crate::spi::in_subtransaction(std::panic::AssertUnwindSafe(run)) {
            Ok(applied) => applied?,
            Err(caught) if crate::error::caught_sqlstate(&caught) == pgrx::PgSqlErrorCode::ERRCODE_STATEMENT_TOO_COMPLEX => {
                return recompute(st, &StatementSnapshot::take());
            }
            Err(caught) => (*caught).rethrow(),
        }
    } else {
        run()?
    };
    let (inserted, deleted) = applied.ok_or_else(|| PgtError::internal("an IMMEDIATE delta statement was declined"))?;
    let (inserted, deleted) = match &plan.topk {
        Some(topk) => super::differential::finish_topk(st, plan, topk, snapshot, inserted, deleted)?,
        None => (inserted, deleted),
    };
    Ok(Applied { action: "IMMEDIATE", inserted, deleted, unchanged: false })
}

/// Recomputes `st` inside the writing transaction (after a TRUNCATE of a
/// source, DDL on one, or before its first population), re-deriving it first
/// when DDL concerned it. Takes no lock beyond the maintenance row the
/// statement's BEFORE trigger took: a manual refresh takes the stream table's
/// maintenance lock before that row, and a writer holding the row must not
/// wait for it.
fn recompute_in_transaction(mut st: StreamTable) -> PgtResult<()> {
    if st.needs_reinit {
        crate::definition::reinitialize(&st)?;
        catalog::set_state_format(st.pgt_id, super::STATE_FORMAT)?;
        st = catalog::stream_table_by_id(st.pgt_id)?
            .ok_or_else(|| PgtError::internal(format!("stream table {} vanished while reinitialized", st.name)))?;
    }
    let (frontier, now) = crate::privilege::as_owner_restricted(st.owner, || -> PgtResult<_> {
        let snapshot = StatementSnapshot::take();
        recompute(&st, &snapshot)?;
        super::full::frontier_now(&snapshot)
    })?;
    catalog::mark_refreshed(st.pgt_id, &frontier, &now)
}

/// Recomputes IMMEDIATE stream table `st` with its plan (its state tables
/// too): its first population, a manual refresh, a recomputation after a
/// TRUNCATE or DDL. The caller holds the locks and runs this as the owner.
pub fn recompute(st: &StreamTable, snapshot: &StatementSnapshot) -> PgtResult<Applied> {
    super::differential::recompute(st, snapshot)
}
