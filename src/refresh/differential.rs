//! DIFFERENTIAL refresh: apply the changes captured since the frontier.
//!
//! Steps, all in the refresh's snapshot:
//! 1. without a usable frontier (never populated, or cleared by DDL on a source) —
//!    rebuild the plan from the defining query and recompute in full;
//! 2. if a source's change window holds a TRUNCATE — recompute in full;
//! 3. which inputs changed (a window with any row image);
//! 4. if the window sizes exceed `pg_trickle.differential_max_change_ratio` of the
//!    sources' estimated rows — recompute in full this time (NOTICE), the next
//!    refresh goes back to DIFFERENTIAL;
//! 5. otherwise one MERGE computed by the plan (`pgt_delta`), counting its actions.

use super::full::refresh_full_with_plan;
use super::Applied;
use crate::catalog::{self, StreamTable};
use crate::error::{PgtError, PgtResult};
use crate::guc;
use crate::spi::{PlanClass, StatementSnapshot};
use crate::translate;
use pgrx::{pg_sys, PgSqlErrorCode};
use pgt_core::options::RefreshMode;
use pgt_delta::source::{ChangeSource, Frontier};
use pgt_delta::Plan;

/// Refreshes `st`, whose effective mode is DIFFERENTIAL. Runs as the owner in
/// `snapshot`; the caller holds the locks.
pub fn refresh(st: &StreamTable, snapshot: &StatementSnapshot) -> PgtResult<Applied> {
    let stored = match st.delta_plan.as_deref().map(Plan::from_json) {
        Some(Ok(plan)) => Some(plan),
        Some(Err(why)) => {
            // Stored by another build (or damaged): rebuilt from the query.
            pgrx::notice!("stream table {} recomputes in full: its stored plan cannot be used ({why})", st.name);
            None
        }
        None => None,
    };
    let (Some(plan), Some(frontier_snapshot), true) = (stored, st.frontier.clone(), st.is_populated) else {
        return recompute(st, snapshot);
    };
    // The statements name the frontier as parameters: their texts repeat from
    // one refresh to the next, and their plans are kept (planning a delta
    // statement costs milliseconds, as much as running it on a small change).
    let source =
        ChangeSource::window(Frontier { snapshot: frontier_snapshot.clone(), xid: st.frontier_xid.clone(), cid: st.frontier_cid })
            .parameterized();
    let cid = st.frontier_cid.map(|c| c.to_string());
    let params = [
        (pg_sys::PG_SNAPSHOTOID, Some(frontier_snapshot.as_str())),
        (pg_sys::XID8OID, st.frontier_xid.as_deref()),
        (pg_sys::INT8OID, cid.as_deref()),
    ];

    // What changed, in one query; nothing to do when nothing did.
    let relations = plan.relations();
    let summary = snapshot
        .query_map_kept_if(&source.summary_sql(&relations), PlanClass::default(), &params, |_| Ok(true), |row| {
            Ok((row.col::<pg_sys::Oid>(1)?, row.col::<i64>(2)?, row.col::<bool>(3)?, row.col::<i64>(4)?))
        })?
        .unwrap_or_default();
    if summary.is_empty() {
        return Ok(Applied { action: "DIFFERENTIAL", inserted: 0, deleted: 0, unchanged: true });
    }
    // The order of size of the change buffers read (pages, rounded down to a
    // power of two): the planner reads their current size, so a kept plan is
    // kept per order of size.
    let buffer_pages: u64 = summary.iter().map(|(relid, ..)| crate::cdc::buffer_pages(*relid)).sum();
    let size_class = 64 - buffer_pages.leading_zeros();
    let mut window_rows = 0f64;
    let mut changed = pgt_delta::Changed::new();
    let mut images = std::collections::BTreeMap::new();
    for (relid, rows, truncated, count) in summary {
        if truncated {
            // TRUNCATE among the changes: the images cannot express it.
            return full_measured(st, &plan, snapshot);
        }
        window_rows += rows as f64;
        changed.insert(relid.to_u32());
        images.insert(relid.to_u32(), count.max(0) as u64);
    }
    // Window sizes let the planner size a delta right (see
    // `pgt_delta::scan::delta_sql`): a join's, and an aggregate's, whose
    // groups are then looked up by index rather than by scanning the stream
    // table. A plain scan or filter gains nothing and loses: the scan's LIMIT
    // keeps its filters out of the buffer scan, so the frontier test would run
    // on every buffered row rather than the matching ones.
    let plain_rows = matches!(plan.root, pgt_delta::Root::Rows(_)) && plan.widest_block() < 2 && plan.state_tables().is_empty();
    let source = if plain_rows { source } else { source.with_images(images) };

    // What the owner may read was settled before the snapshot (preflight).
    let max_ratio = guc::DIFFERENTIAL_MAX_CHANGE_RATIO.get();
    let source_rows = source_rows(&plan, snapshot, (window_rows / max_ratio.max(1e-9)).ceil())?;
    let ratio = window_rows / source_rows.max(1.0);
    if ratio > max_ratio {
        pgrx::notice!(
            "stream table {} recomputes in full this time: {} changes are {:.0}% of its sources' rows (pg_trickle.differential_max_change_ratio = {})",
            st.name,
            window_rows,
            ratio * 100.0,
            max_ratio
        );
        return full_measured(st, &plan, snapshot);
    }

    // AUTO: from what this stream table's refreshes have cost so far, a full
    // recomputation is expected to be cheaper than applying this many
    // changes — recompute (the measurements follow the data as it grows).
    if st.refresh_mode == RefreshMode::Auto && window_rows >= COST_SAMPLE_MIN_CHANGES {
        if let (Some(full_ms), Some(per_change)) = (st.full_refresh_ms, st.differential_ms_per_change) {
            let predicted = per_change * window_rows;
            if predicted > full_ms {
                pgrx::notice!(
                    "stream table {} recomputes in full this time: applying its {} changes would take about {predicted:.0} ms \
                     at the {:.3} ms per change its differential refreshes have cost, a full recomputation {full_ms:.0} ms",
                    st.name,
                    window_rows,
                    per_change
                );
                return full_measured(st, &plan, snapshot);
            }
        }
    }
    let class = PlanClass { variant: size_class, hash_table_rows: super::initial_hash_table_rows(window_rows) };
    let started = std::time::Instant::now();
    let Some(statement) = plan.delta_statement(&st.tables(), &source, &changed) else {
        return Ok(Applied { action: "DIFFERENTIAL", inserted: 0, deleted: 0, unchanged: true });
    };
    let widest = plan.widest_block();
    allow_join_reordering(widest)?;
    // Joins too wide for PostgreSQL's exhaustive search are ordered greedily
    // from the changes on (see super::join_order), not by its genetic search.
    let _greedy = (widest > 8).then(super::join_order::Greedy::begin);
    let ratio = guc::MAX_DELTA_COST_RATIO.get();
    let check = widest >= COST_CHECK_MIN_INPUTS && ratio > 0.0;
    let mut estimates = None;
    let accept = |statement_cost: f64| -> PgtResult<bool> {
        if statement_cost < COST_CHECK_FLOOR {
            return Ok(true);
        }
        // The changes alone against a full recomputation: how the statement
        // applies them (keyless copies, aggregate states) is planned with
        // generic guesses that say nothing about a runaway join.
        let Some(core) = plan.delta_core_sql(&st.tables(), &source, &changed) else { return Ok(true) };
        let delta_cost = estimated_cost(&core, snapshot)?;
        let full_cost = full_cost(st, &plan, snapshot)?;
        estimates = Some((delta_cost, full_cost));
        Ok(delta_cost <= ratio * full_cost.max(1.0))
    };
    let apply = || -> PgtResult<Option<(u64, u64)>> {
        if check {
            super::apply_delta_if(&statement, snapshot, class, &params, accept)
        } else {
            super::apply_delta_if(&statement, snapshot, class, &params, |_| Ok(true))
        }
    };
    let limit_kb = delta_temp_limit_kb(&plan, snapshot)?;
    let counting = plan.has_counted_recursion();
    let applied = if limit_kb.is_none() && !counting {
        apply()?
    } else {
        // Bounded, in a subtransaction: past a bound, undone and recomputed
        // (the recomputation writes what the query would).
        let bounded = std::panic::AssertUnwindSafe(|| -> PgtResult<Option<(u64, u64)>> {
            if let Some(limit_kb) = limit_kb {
                crate::privilege::set_bound_for_span("temp_file_limit", &limit_kb.to_string())?;
            }
            apply()
        });
        match crate::spi::in_subtransaction(bounded) {
            Ok(applied) => applied?,
            Err(caught) if crate::error::caught_sqlstate(&caught) == PgSqlErrorCode::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED => {
                pgrx::notice!(
                    "stream table {} recomputes in full this time: applying its changes needed more than {} kB of \
                     temporary files (pg_trickle.delta_temp_file_limit)",
                    st.name,
                    limit_kb.unwrap_or_default()
                );
                return full_measured(st, &plan, snapshot);
            }
            Err(caught) if counting && crate::error::caught_sqlstate(&caught) == PgSqlErrorCode::ERRCODE_STATEMENT_TOO_COMPLEX => {
                // Counting recurses through the new data from every changed
                // row, also around a cycle no row of the result reaches.
                pgrx::notice!(
                    "stream table {} recomputes in full this time: its UNION ALL recursion went past \
                     pg_trickle.ivm_recursive_max_depth counting the changes (the changed rows reach a cycle)",
                    st.name
                );
                return full_measured(st, &plan, snapshot);
            }
            Err(caught) => (*caught).rethrow(),
        }
    };
    let Some((inserted, deleted)) = applied else {
        let (delta_cost, full_cost) = estimates.unwrap_or_default();
        pgrx::notice!(
            "stream table {} recomputes in full this time: the planner estimates applying its changes at cost {delta_cost:.0}, \
             a full recomputation at {full_cost:.0} (pg_trickle.max_delta_cost_ratio = {ratio})",
            st.name,
        );
        return full_measured(st, &plan, snapshot);
    };
    let record = |applied: Applied| -> PgtResult<Applied> {
        if window_rows >= COST_SAMPLE_MIN_CHANGES {
            catalog::record_refresh_cost(st.pgt_id, started.elapsed().as_secs_f64() * 1000.0, Some(window_rows))?;
        }
        Ok(applied)
    };
    if let Some(topk) = &plan.topk {
        let (inserted, deleted) = finish_topk(st, &plan, topk, snapshot, inserted, deleted)?;
        return record(Applied { action: "DIFFERENTIAL", inserted, deleted, unchanged: false });
    }
    record(Applied { action: "DIFFERENTIAL", inserted, deleted, unchanged: false })
}

/// After a TopK's delta statement — its probe (`pgt_delta::topk`), which
/// brought the state tables up to date and counted the changed rows reaching
/// the stored window (`affecting`) and the rows stored (`stored`), writing
/// none — applies the changes to the window: trims it when it held every row
/// (the changes were applied to it directly), refills it when changes reach
/// it. Returns the stream table's rows (inserted, deleted).
pub(super) fn finish_topk(
    st: &StreamTable,
    plan: &Plan,
    topk: &pgt_delta::topk::TopK,
    snapshot: &StatementSnapshot,
    affecting: u64,
    stored: u64,
) -> PgtResult<(u64, u64)> {
    if topk.applies_directly(stored as i64) {
        // The window held every row: the changes were applied to it; what
        // passed the LIMIT goes.
        let trimmed = super::full::trim_window(st, topk, snapshot)?;
        return Ok((affecting, trimmed));
    }
    if !topk.needs_refill(affecting as i64, stored as i64) {
        return Ok((0, 0));
    }
    super::full::refill_window(st, plan, snapshot)
}

/// Differential refreshes of at least this many changed rows are timed for
/// AUTO's choice, and only such refreshes may be turned into full
/// recomputations by it: below, a refresh's fixed costs (planning, catalog)
/// would pass for a cost per change.
const COST_SAMPLE_MIN_CHANGES: f64 = 1000.0;

/// [`refresh_full_with_plan`], its duration recorded as the stream table's
/// cost of a full recomputation (`catalog::record_refresh_cost`).
fn full_measured(st: &StreamTable, plan: &Plan, snapshot: &StatementSnapshot) -> PgtResult<Applied> {
    let started = std::time::Instant::now();
    let applied = refresh_full_with_plan(st, plan, snapshot)?;
    catalog::record_refresh_cost(st.pgt_id, started.elapsed().as_secs_f64() * 1000.0, None)?;
    Ok(applied)
}

/// The temporary file space (kB) the delta statement may use
/// (`pg_trickle.delta_temp_file_limit`; its default: the sources' total size,
/// at least [`MIN_DELTA_TEMP_KB`]), or `None` for no bound of ours. Never above
/// PostgreSQL's own `temp_file_limit`.
fn delta_temp_limit_kb(plan: &Plan, snapshot: &StatementSnapshot) -> PgtResult<Option<i64>> {
    let configured = i64::from(guc::DELTA_TEMP_FILE_LIMIT_KB.get());
    let limit = match configured {
        0 => return Ok(None),
        kb if kb > 0 => kb,
        _ => {
            let relids = plan.relations().iter().map(|r| r.relid.to_string()).collect::<Vec<_>>().join(",");
            // Partitioned tables hold nothing themselves: their leaves count.
            // (The same text at every refresh: its plan is kept.)
            let sql = format!(
                "SELECT coalesce(pg_catalog.sum(pg_catalog.pg_total_relation_size(x)), 0)::float8 FROM (SELECT r AS x FROM \
                 pg_catalog.unnest('{{{relids}}}'::pg_catalog.oid[]) r UNION SELECT p.relid FROM \
                 pg_catalog.unnest('{{{relids}}}'::pg_catalog.oid[]) r, pg_catalog.pg_partition_tree(r) p) s"
            );
            let sizes = snapshot.query_map_kept_if(&sql, PlanClass::default(), &[], |_| Ok(true), |row| row.col::<f64>(1))?.unwrap_or_default();
            let bytes = sizes.first().copied().ok_or_else(|| PgtError::internal("the sources' size query returned no row"))?;
            ((bytes / 1024.0) as i64).max(MIN_DELTA_TEMP_KB)
        }
    };
    // SAFETY: reading an integer GUC variable of this backend.
    let server = i64::from(unsafe { pg_sys::temp_file_limit });
    // temp_file_limit is an int of kB: a larger bound is no bound.
    let limit = limit.min(i64::from(i32::MAX));
    Ok(Some(if server >= 0 { limit.min(server) } else { limit }))
}

/// The least default bound of a delta's temporary files, in kB (64 MB): small
/// sources do not fall back for the work of hashing a few thousand changes.
const MIN_DELTA_TEMP_KB: i64 = 64 * 1024;


/// Joins of at least this many inputs have their delta's estimated cost
/// compared with a full recomputation's before it runs.
const COST_CHECK_MIN_INPUTS: usize = 4;

/// Lets the planner reorder every join of a block of `inputs` inputs.
///
/// A delta term binds one input to its (small) changes and the others to
/// their states; a good plan starts from the changes and reaches the other
/// inputs through their indexes. With PostgreSQL's default
/// `join_collapse_limit` and `from_collapse_limit` (8), a join of more inputs
/// keeps the written order beyond the first 8, and a change to an input in the
/// middle of a long join would first join everything before it in full. Raised
/// for the refresh only (restored at the end of the owner's span).
pub(super) fn allow_join_reordering(inputs: usize) -> PgtResult<()> {
    if inputs <= 8 {
        return Ok(());
    }
    let limit = (inputs + 1).min(1000).to_string();
    crate::privilege::set_for_span("join_collapse_limit", &limit)?;
    crate::privilege::set_for_span("from_collapse_limit", &limit)
}

/// Below this estimated cost (PostgreSQL's cost units: some ten thousand page
/// reads, tens of milliseconds) a delta statement runs without comparing it
/// with a full recomputation: it cannot run away, and planning the full
/// recomputation would cost more than it could save.
const COST_CHECK_FLOOR: f64 = 10_000.0;

/// The planner's estimate of recomputing `st` in full: every step of
/// [`Plan::full_steps`].
fn full_cost(st: &StreamTable, plan: &Plan, snapshot: &StatementSnapshot) -> PgtResult<f64> {
    let mut full = 0.0;
    for step in plan.full_steps(&st.tables()) {
        full += estimated_cost(&step.source, snapshot)?;
    }
    Ok(full)
}

/// The planner's total cost estimate of `sql` (`EXPLAIN (FORMAT JSON,
/// GENERIC_PLAN)`: its parameters, the frontier, stay unknown, as in the
/// plan kept for the statement).
fn estimated_cost(sql: &str, snapshot: &StatementSnapshot) -> PgtResult<f64> {
    let text = snapshot
        .query_text(&format!("EXPLAIN (FORMAT JSON, GENERIC_PLAN) {sql}"))?
        .ok_or_else(|| PgtError::internal("EXPLAIN returned nothing"))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| PgtError::internal(format!("EXPLAIN returned unreadable JSON: {e}")))?;
    json.get(0)
        .and_then(|p| p.get("Plan"))
        .and_then(|p| p.get("Total Cost"))
        .and_then(serde_json::Value::as_f64)
        .ok_or_else(|| PgtError::internal("EXPLAIN did not report a total cost"))
}

/// The sources' row count: `pg_class.reltuples` where the planner has an estimate;
/// for a relation never analysed, its rows counted up to `enough` (the count that
/// already makes the change ratio acceptable), so the cost follows the changes.
fn source_rows(plan: &Plan, snapshot: &StatementSnapshot, enough: f64) -> PgtResult<f64> {
    let mut total = 0f64;
    for relation in plan.relations() {
        total += match analysed_rows(pg_sys::Oid::from(relation.relid), snapshot)? {
            Some(estimate) => estimate,
            None => {
                let limit = (enough - total).max(0.0) as i64 + 1;
                snapshot
                    .query_text(&format!("SELECT count(*) FROM (SELECT 1 FROM {} LIMIT {limit}) s", relation.table_sql))?
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(0.0)
            }
        };
    }
    Ok(total)
}

/// The planner's row estimate of `relid`: its `pg_class.reltuples`, read from
/// the relation cache for a plain table; for a partitioned table, its leaf
/// partitions' summed (partitioned tables and foreign partitions hold no rows
/// here). `None` when one of them was never analysed or vacuumed (reltuples
/// -1).
fn analysed_rows(relid: pg_sys::Oid, snapshot: &StatementSnapshot) -> PgtResult<Option<f64>> {
    // SAFETY: the relation-cache entry is opened and closed here; a relation
    // gone since the plan was made reads as never analysed.
    let plain = unsafe {
        let rel = pg_sys::RelationIdGetRelation(relid);
        if rel.is_null() {
            return Ok(None);
        }
        let (kind, tuples) = ((*(*rel).rd_rel).relkind as u8, (*(*rel).rd_rel).reltuples);
        pg_sys::RelationClose(rel);
        (kind == pg_sys::RELKIND_RELATION).then_some(tuples)
    };
    if let Some(tuples) = plain {
        return Ok((tuples >= 0.0).then_some(f64::from(tuples)));
    }
    Ok(snapshot
        .query_text(&format!(
            "SELECT pg_catalog.sum(c.reltuples) FROM pg_catalog.pg_partition_tree({}) p \
             JOIN pg_catalog.pg_class c ON c.oid = p.relid WHERE c.relkind = 'r' \
             HAVING pg_catalog.min(c.reltuples) >= 0",
            relid.to_u32()
        ))?
        .and_then(|t| t.parse().ok()))
}

/// Rebuilds the plan from the defining query and recomputes with it. If the query
/// can no longer be maintained differentially (a source lost its key, ...), AUTO
/// stream tables continue in FULL mode (WARNING); DIFFERENTIAL ones fail.
pub(super) fn recompute(st: &StreamTable, snapshot: &StatementSnapshot) -> PgtResult<Applied> {
    // An IMMEDIATE stream table stays IMMEDIATE (refresh::immediate).
    let mode = if st.effective_refresh_mode == RefreshMode::Immediate { RefreshMode::Immediate } else { RefreshMode::Differential };
    match translate::translate(&st.defining_query)? {
        Ok(translate::Translation { plan, .. }) => {
            catalog::set_plan(st.pgt_id, mode, Some(&plan.to_json()), None)?;
            crate::storage::sync_hidden_columns(st.relid, &st.name, &plan)?;
            crate::storage::sync_state_tables(st.pgt_id, st.owner, &plan)?;
            for relation in plan.relations() {
                crate::cdc::sync_buffer_grants(pgrx::pg_sys::Oid::from(relation.relid))?;
            }
            let applied = full_measured(st, &plan, snapshot)?;
            crate::storage::analyze_after_recompute(st.pgt_id, st.relid)?;
            Ok(applied)
        }
        Err(translate::Unsupported(construct)) if st.refresh_mode == RefreshMode::Auto && mode == RefreshMode::Differential => {
            pgrx::warning!(
                "stream table {} now refreshes in FULL mode: DIFFERENTIAL refresh does not support {construct}",
                st.name
            );
            catalog::set_plan(st.pgt_id, RefreshMode::Full, None, None)?;
            crate::storage::drop_state_tables(st.pgt_id)?;
            super::full::refresh_full(st, snapshot)
        }
        Err(translate::Unsupported(construct)) => Err(PgtError::new(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("stream table {} cannot refresh {}: it does not support {construct}", st.name, mode.as_str()),
        )
        .hint("Use alter_stream_table(name, refresh_mode => 'AUTO') or 'FULL'.")),
    }
}
