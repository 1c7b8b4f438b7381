//! What the metrics views (`pgtrickle.metrics_stream_tables`,
//! `pgtrickle.metrics_scheduler`; bootstrap.rs, docs/INTEGRATIONS.md) need
//! computed outside SQL: each stream table's effective refresh interval (the
//! scheduler's resolution of `calculated` schedules) and what waits for it in
//! the change buffers of its sources.
//!
//! Counting buffer rows reads the buffers, which their row-level security
//! policy reserves for roles that may read all of the source; the counts are
//! taken as the extension owner and only counts leave this module (the
//! functions calling it are granted to `pg_monitor`, as PostgreSQL's own
//! statistics views show tuple counts to monitoring roles).

use crate::catalog;
use crate::error::PgtResult;
use crate::objects::buffer_name;
use crate::privilege::as_extension_owner;
use crate::spi::{col, query_map, query_one};
use pgrx::pg_sys;
use pgt_core::frontier::consumed_by_frontier_sql;
use std::collections::BTreeMap;

/// One stream table's load, as the metrics report it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamTableLoad {
    /// The interval the scheduler refreshes it at (seconds; see
    /// [`crate::scheduler::worker::effective_intervals`]).
    pub schedule_seconds: f64,
    /// Row images in its sources' change buffers that it has not applied yet
    /// (DIFFERENTIAL stream tables with a frontier; 0 for the others, whose
    /// refreshes do not read buffers).
    pub pending_rows: i64,
    /// Total size of the change buffers of the relations it reads (bytes,
    /// `pg_total_relation_size`); a buffer shared by several stream tables
    /// counts for each.
    pub buffer_bytes: i64,
}

/// Every stream table's [`StreamTableLoad`], by `pgt_id`.
///
/// Cost: one scan of each change buffer per DIFFERENTIAL stream table reading
/// it (buffers hold only what their slowest reader has not applied).
pub fn stream_table_loads() -> PgtResult<BTreeMap<i64, StreamTableLoad>> {
    let mut loads: BTreeMap<i64, StreamTableLoad> = BTreeMap::new();
    for (pgt_id, interval) in crate::scheduler::worker::effective_intervals()? {
        loads.entry(pgt_id).or_default().schedule_seconds = interval.as_secs_f64();
    }
    let consumed = consumed_by_frontier_sql("b", "st.frontier", "st.frontier_xid", "st.frontier_cid");
    as_extension_owner(|| {
        for buffer in live_buffers()? {
            let readers = query_map(
                &format!(
                    "SELECT d.pgt_id, \
                            CASE WHEN st.effective_refresh_mode = 'DIFFERENTIAL' AND st.frontier IS NOT NULL \
                                 THEN (SELECT pg_catalog.count(*) FROM {} b WHERE NOT COALESCE({consumed}, false)) \
                                 ELSE 0 END \
                     FROM pgtrickle.pgt_dependencies d JOIN pgtrickle.pgt_stream_tables st USING (pgt_id) \
                     WHERE d.source_relid = $1",
                    buffer.name
                ),
                &[buffer.source_relid.into()],
                |row| Ok((col::<i64>(row, 1)?, col::<i64>(row, 2)?)),
            )?;
            for (pgt_id, pending) in readers {
                let load = loads.entry(pgt_id).or_default();
                load.pending_rows += pending;
                load.buffer_bytes += buffer.bytes;
            }
        }
        Ok(())
    })?;
    Ok(loads)
}

/// Per captured source: `(source, row images in its change buffer, buffer
/// bytes)`.
pub fn change_buffer_sizes() -> PgtResult<Vec<(pg_sys::Oid, i64, i64)>> {
    as_extension_owner(|| {
        let mut sizes = Vec::new();
        for buffer in live_buffers()? {
            let rows = query_one::<i64>(&format!("SELECT pg_catalog.count(*) FROM {}", buffer.name), &[])?.unwrap_or(0);
            sizes.push((buffer.source_relid, rows, buffer.bytes));
        }
        Ok(sizes)
    })
}

/// A change buffer that exists, locked against being dropped.
struct LiveBuffer {
    source_relid: pg_sys::Oid,
    /// Quoted, schema-qualified name.
    name: String,
    bytes: i64,
}

/// The change buffers of the captured sources, each locked (ACCESS SHARE,
/// which only DDL waits for) and checked to still exist: one dropped
/// concurrently (its last reader dropped) is left out rather than failing the
/// scrape.
fn live_buffers() -> PgtResult<Vec<LiveBuffer>> {
    let tracked = catalog::all_change_tracking()?;
    let mut live = Vec::new();
    for (source_relid, buffer_relid) in tracked {
        unsafe { pg_sys::LockRelationOid(buffer_relid, pg_sys::AccessShareLock as pg_sys::LOCKMODE) };
        let exists = unsafe {
            pg_sys::SearchSysCacheExists(
                pg_sys::SysCacheIdentifier::RELOID as i32,
                pg_sys::Datum::from(buffer_relid),
                pg_sys::Datum::from(0),
                pg_sys::Datum::from(0),
                pg_sys::Datum::from(0),
            )
        };
        if !exists {
            unsafe { pg_sys::UnlockRelationOid(buffer_relid, pg_sys::AccessShareLock as pg_sys::LOCKMODE) };
            continue;
        }
        let bytes = query_one::<i64>("SELECT pg_catalog.pg_total_relation_size($1)", &[buffer_relid.into()])?.unwrap_or(0);
        live.push(LiveBuffer { source_relid, name: buffer_name(source_relid).to_sql(), bytes });
    }
    Ok(live)
}
