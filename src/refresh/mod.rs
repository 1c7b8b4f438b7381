//! Refreshing a stream table: bring its storage up to date with its defining query
//! and record what happened.
//!
//! [`refresh_stream_table`] reads as the sequence of steps it performs:
//! 1. take the stream table's maintenance lock (an advisory lock; plus `FOR UPDATE`
//!    on its catalog row under snapshot isolation): concurrent refreshes, alters and
//!    drops of the same stream table serialize here, and the frontier read is the
//!    latest committed one;
//! 2. lock the storage table in EXCLUSIVE mode: readers go on reading the old
//!    contents, writers wait; if DDL on a source marked the stream table
//!    `needs_reinit`, re-derive its query, plan and storage types first
//!    ([`crate::definition::reinitialize`]; its frontier is cleared, so step 3
//!    recomputes);
//! 3. as the owner, inside a security-restricted operation, take one registered
//!    snapshot and run the executor of the effective mode in it — [`full`]
//!    recomputes, [`differential`] applies the changes since the frontier (or
//!    recomputes when it must) — then read the new frontier in that snapshot;
//! 4. record the frontier and a `pgt_refresh_history` row — unless a DIFFERENTIAL
//!    refresh found no change at all: then it writes nothing, and the transaction
//!    stays read-only;
//! 5. for a DIFFERENTIAL stream table, trim the change buffers of its sources to
//!    what some consumer still needs.
//!
//! All of it happens in the caller's transaction: if any step fails, the storage
//! keeps its previous contents and nothing is recorded.

pub mod differential;
pub mod full;
pub mod immediate;
pub mod join_order;
mod preflight;
mod swap;

use crate::catalog::{self, Frontier, InitiatedBy, RefreshRecord};
use crate::cdc;
use crate::error::PgtResult;
use crate::parse::SourceKind;
use crate::privilege::as_owner_restricted;
use crate::spi::StatementSnapshot;
use pgrx::pg_sys;
use pgt_core::options::RefreshMode;

/// What a refresh did.
#[derive(Debug, Clone)]
pub struct RefreshOutcome {
    /// FULL or DIFFERENTIAL: what was actually done.
    pub action: &'static str,
    /// Rows written into the storage table (an update counts here and in
    /// `rows_deleted`).
    pub rows_inserted: i64,
    /// Rows removed from the storage table.
    pub rows_deleted: i64,
    /// The new frontier.
    pub frontier: Frontier,
}

/// What an executor reports.
#[derive(Debug, Clone)]
pub struct Applied {
    /// FULL or DIFFERENTIAL.
    pub action: &'static str,
    /// Rows inserted (updates included).
    pub inserted: u64,
    /// Rows deleted (updates included).
    pub deleted: u64,
    /// Nothing changed since the frontier: no buffer row was consumed.
    pub unchanged: bool,
}

/// The format of the state this build stores for a stream table (its
/// `delta_plan`, row identities and state tables), recorded in
/// `pgt_stream_tables.state_format` (whose default in bootstrap.rs must equal
/// it). Raise it whenever a build changes that state's shape or meaning; a
/// stream table whose state has an older format is reinitialized (plan
/// re-derived, contents recomputed) by its next refresh or IMMEDIATE
/// maintenance, never maintained with the stale state. 1: pg_trickle 0.1.0.
pub const STATE_FORMAT: i32 = 2;

/// Whether stream table `st`'s stored state was written by a build of an
/// older [`STATE_FORMAT`]; says so in a NOTICE.
pub(crate) fn has_stale_state(st: &catalog::StreamTable) -> PgtResult<bool> {
    let format = catalog::state_format(st.pgt_id)?;
    if format >= STATE_FORMAT {
        return Ok(false);
    }
    pgrx::notice!(
        "stream table {} was maintained by an older pg_trickle (state format {format}, this build writes {STATE_FORMAT}): \
         reinitializing it (re-deriving its plan and recomputing its contents)",
        st.name
    );
    Ok(true)
}

/// How far `data_timestamp` may lag behind a refresh that found nothing to
/// apply before that refresh records the later time: bounds how much idle time
/// the staleness metric can count (with the scheduler's real check of an idle
/// DIFFERENTIAL stream table at least once a minute) to about 70 s, at one
/// catalog write per idle stream table per minute at most.
const CURRENT_AS_OF_STEP: std::time::Duration = std::time::Duration::from_secs(10);

/// Refreshes stream table `pgt_id` (see the module doc for the steps).
pub fn refresh_stream_table(pgt_id: i64, initiated_by: InitiatedBy) -> PgtResult<RefreshOutcome> {
    let mut st = catalog::lock_stream_table_for_refresh(pgt_id)?;
    if st.effective_refresh_mode == RefreshMode::Immediate {
        // Writers of its sources hold this row from their first change to
        // commit (refresh::immediate): taken before the storage lock, as they do.
        catalog::lock_immediate(pgt_id)?;
    }
    unsafe { pg_sys::LockRelationOid(st.relid, pg_sys::ExclusiveLock as pg_sys::LOCKMODE) };
    // The owner's rights and the sources' capture, before the snapshot.
    st = preflight::settle(st)?;
    let stale_state = has_stale_state(&st)?;
    if st.needs_reinit || stale_state {
        // DDL on a source concerned it (crate::ddl), or an older build stored
        // its state: re-derive, then recompute.
        crate::definition::reinitialize(&st)?;
        catalog::set_state_format(pgt_id, STATE_FORMAT)?;
        st = catalog::lock_stream_table_for_refresh(pgt_id)?;
    }
    if st.effective_refresh_mode == RefreshMode::Differential && (st.frontier.is_none() || !st.is_populated) {
        // This refresh starts the stream table's frontier afresh: until it
        // commits, no frontier holds its sources' buffers for it
        // (cdc::hold_capture). In OID order, as every taker of these locks.
        for dep in catalog::dependencies(pgt_id)? {
            if dep.kind != SourceKind::View.as_str() {
                cdc::hold_capture(dep.source_relid)?;
            }
        }
    }
    let start_time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default();

    let (applied, frontier, data_timestamp) = as_owner_restricted(st.owner, || -> PgtResult<_> {
        let snapshot = StatementSnapshot::take();
        let applied = match st.effective_refresh_mode {
            RefreshMode::Differential => differential::refresh(&st, &snapshot)?,
            RefreshMode::Immediate => immediate::recompute(&st, &snapshot)?,
            _ => full::refresh_full(&st, &snapshot)?,
        };
        let (frontier, now) = full::frontier_now(&snapshot)?;
        Ok((applied, frontier, now))
    })?;

    let outcome = RefreshOutcome {
        action: applied.action,
        rows_inserted: applied.inserted as i64,
        rows_deleted: applied.deleted as i64,
        frontier: frontier.clone(),
    };
    if applied.unchanged {
        // Nothing changed since the frontier: the contents are current and the
        // frontier equivalent to a new one. No history row; the snapshot time
        // moves forward only when it is more than CURRENT_AS_OF_STEP old, so
        // that staleness (metrics_stream_tables) does not count idle time while
        // idle checks stay nearly write-free.
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default();
        if st.data_timestamp_epoch.is_none_or(|at| now - at > CURRENT_AS_OF_STEP.as_secs_f64()) {
            catalog::mark_current(pgt_id, &data_timestamp)?;
        }
        return Ok(outcome);
    }
    catalog::mark_refreshed(pgt_id, &frontier, &data_timestamp)?;
    let outcome = RefreshOutcome {
        action: applied.action,
        rows_inserted: applied.inserted as i64,
        rows_deleted: applied.deleted as i64,
        frontier,
    };
    // A scheduled FULL refresh that changed nothing (a '0s' schedule polling a
    // FULL stream table) advances the frontier but adds no history row.
    let wrote_nothing = outcome.rows_inserted == 0 && outcome.rows_deleted == 0;
    if initiated_by == InitiatedBy::Scheduler && outcome.action == "FULL" && wrote_nothing {
        catalog::count_refresh(pgt_id, outcome.action, initiated_by.as_str(), "SUCCESS", start_time)?;
    } else {
        catalog::insert_refresh_history(&RefreshRecord {
            pgt_id,
            start_time,
            action: outcome.action,
            rows_inserted: outcome.rows_inserted,
            rows_deleted: outcome.rows_deleted,
            status: "SUCCESS",
            error_message: None,
            initiated_by,
            frontier: Some(outcome.frontier.snapshot.clone()),
        })?;
    }
    // Only DIFFERENTIAL frontiers hold buffer rows: after a FULL-mode refresh
    // there is nothing new to trim (and a buffer just trimmed by a
    // DIFFERENTIAL reader would be scanned again, dead rows and all).
    if !applied.unchanged && st.effective_refresh_mode == RefreshMode::Differential {
        for dep in catalog::dependencies(pgt_id)? {
            if dep.kind != SourceKind::View.as_str() {
                cdc::trim_buffer(dep.source_relid, st.frontier.as_deref())?;
                warn_about_buffer(dep.source_relid)?;
            }
        }
    }
    Ok(outcome)
}

thread_local! {
    /// When this backend last warned about each oversized change buffer.
    static BUFFER_WARNED: std::cell::RefCell<std::collections::BTreeMap<u32, std::time::Instant>> =
        const { std::cell::RefCell::new(std::collections::BTreeMap::new()) };
}

/// How often one backend repeats the WARNING about one oversized buffer.
const BUFFER_WARNING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// Warns (at most once a minute per source and backend) when the change
/// buffer of `source_relid` is still larger than
/// `pg_trickle.change_buffer_alert_kb` after trimming, naming the stream tables
/// that hold it back.
fn warn_about_buffer(source_relid: pg_sys::Oid) -> PgtResult<()> {
    let Some((bytes, readers)) = cdc::buffer_alert(source_relid)? else { return Ok(()) };
    let now = std::time::Instant::now();
    let due = BUFFER_WARNED.with(|w| {
        let mut w = w.borrow_mut();
        let due = w.get(&source_relid.to_u32()).is_none_or(|at| now.duration_since(*at) >= BUFFER_WARNING_INTERVAL);
        if due {
            w.insert(source_relid.to_u32(), now);
        }
        due
    });
    if due {
        pgrx::warning!(
            "the change buffer of {} holds {} kB of changes, more than pg_trickle.change_buffer_alert_kb; the stream \
             tables that have applied the least of it: {}",
            crate::parse::relation_name(source_relid)?,
            bytes / 1024,
            if readers.is_empty() { "none (it is emptied at their next refresh)".to_string() } else { readers.join(", ") }
        );
    }
    Ok(())
}

/// Runs `merge` (a MERGE ... RETURNING merge_action()) in `snapshot` and counts
/// the rows it wrote: (inserted or updated, deleted or updated).
fn merge_counts(merge: &str, snapshot: &StatementSnapshot) -> PgtResult<(u64, u64)> {
    let statement = pgt_delta::DeltaStatement { ctes: Vec::new(), merge: merge.to_string(), output: pgt_delta::DeltaOutput::Actions };
    apply_delta(&statement, snapshot)
}

/// Runs `statement` (the state tables' MERGEs and the stream table's) in
/// `snapshot` as one statement, and counts the rows it wrote into the stream
/// table: (inserted or updated, deleted or updated).
fn apply_delta(statement: &pgt_delta::DeltaStatement, snapshot: &StatementSnapshot) -> PgtResult<(u64, u64)> {
    // The guard triggers of the stream table and state tables let these write.
    let _writing = crate::activity::StreamTableWrite::begin();
    let counts = snapshot.query_map(&count_actions(statement), |row| Ok((row.col::<i64>(1)?, row.col::<i64>(2)?)))?;
    let (inserted, deleted) =
        counts.first().copied().ok_or_else(|| crate::error::PgtError::internal("counting a refresh's writes returned no row"))?;
    Ok((inserted.max(0) as u64, deleted.max(0) as u64))
}

/// `statement` as one query counting the stream table's rows inserted or
/// updated, and deleted or updated; for a TopK's probe, its two counts
/// (changed rows reaching the window, rows stored: `pgt_delta::topk`).
fn count_actions(statement: &pgt_delta::DeltaStatement) -> String {
    match statement.output {
        pgt_delta::DeltaOutput::Actions => statement.wrap(
            "__pgt_m",
            "SELECT count(*) FILTER (WHERE merge_action IN ('INSERT', 'UPDATE')), \
                    count(*) FILTER (WHERE merge_action IN ('DELETE', 'UPDATE')) FROM __pgt_m",
        ),
        pgt_delta::DeltaOutput::TopKProbe => statement.wrap("__pgt_m", "SELECT affecting, stored FROM __pgt_m"),
    }
}

/// The initial size, in entries, of the hash tables of a delta statement that
/// applies `changes` changed rows (crate::plan_size):
/// `pg_trickle.delta_hash_entries_per_change` (16) per change, at least 1,024;
/// `None` (the planner's sizes) when that is 0. Their planned sizes follow the
/// planner's estimates, which for recursive queries and unions over change
/// buffers run to hundreds of thousands of rows whatever the change; the
/// tables grow past this when more rows come.
fn initial_hash_table_rows(changes: f64) -> Option<i64> {
    let per_change = crate::guc::DELTA_HASH_ENTRIES_PER_CHANGE.get();
    (per_change > 0).then(|| (changes.max(0.0) * f64::from(per_change)).clamp(1024.0, 1e15) as i64)
}

/// [`apply_delta`] for a DIFFERENTIAL refresh's statement, whose text names
/// the frontier as parameters `params` (its plan is kept per `class`, see
/// [`StatementSnapshot::query_map_kept_if`]), unless `accept` declines the
/// planner's total cost estimate of the statement (then `None`, and nothing
/// ran).
fn apply_delta_if(
    statement: &pgt_delta::DeltaStatement,
    snapshot: &StatementSnapshot,
    class: crate::spi::PlanClass,
    params: crate::spi::Parameters<'_>,
    accept: impl FnOnce(f64) -> PgtResult<bool>,
) -> PgtResult<Option<(u64, u64)>> {
    // The guard triggers of the stream table and state tables let these write.
    let _writing = crate::activity::StreamTableWrite::begin();
    let sql = count_actions(statement);
    let Some(counts) =
        snapshot.query_map_kept_if(&sql, class, params, accept, |row| Ok((row.col::<i64>(1)?, row.col::<i64>(2)?)))?
    else {
        return Ok(None);
    };
    let (inserted, deleted) =
        counts.first().copied().ok_or_else(|| crate::error::PgtError::internal("counting a refresh's writes returned no row"))?;
    Ok(Some((inserted.max(0) as u64, deleted.max(0) as u64)))
}

