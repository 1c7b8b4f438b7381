//! Replacing a table's contents wholesale, the way `REFRESH MATERIALIZED VIEW`
//! does (PostgreSQL's `commands/matview.c`): the recomputed rows go into a new
//! heap (`make_new_heap`), inserted frozen with a bulk-insert state, and the new
//! heap's storage is swapped in for the table's (`finish_heap_swap`, which
//! also rebuilds its indexes). The table keeps its OID, privileges, policies,
//! triggers and dependencies.
//!
//! Compared with the MERGE that writes only the rows that differ
//! (`pgt_delta::replace`), it skips joining the new result with the stored
//! rows, and costs what the native refresh costs. What it gives up:
//!
//! - the swap takes an ACCESS EXCLUSIVE lock on the table at the end: readers
//!   wait while the new storage and its indexes are put in place (they never
//!   see a partial table);
//! - like the native refresh and TRUNCATE, it is not MVCC-safe: a transaction
//!   whose snapshot predates the refresh sees the new contents once the refresh
//!   commits;
//! - no row-level change happens, so nothing that follows the table's rows may
//!   depend on it. It is used only for a table that no stream table reads (no
//!   capture), that no publication replicates, that has no triggers of users,
//!   and whose stored columns match the recomputation's types exactly (see
//!   [`swappable`]); otherwise the MERGE is used.

use crate::error::{PgtError, PgtResult};
use crate::spi::StatementSnapshot;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgList;
use std::ffi::CString;

unsafe extern "C-unwind" {
    // commands/cluster.h (PostgreSQL 18); pgrx does not bind it.
    fn make_new_heap(
        old_heap: pg_sys::Oid,
        tablespace: pg_sys::Oid,
        access_method: pg_sys::Oid,
        relpersistence: std::ffi::c_char,
        lockmode: pg_sys::LOCKMODE,
    ) -> pg_sys::Oid;
    fn finish_heap_swap(
        old_heap: pg_sys::Oid,
        new_heap: pg_sys::Oid,
        is_system_catalog: bool,
        swap_toast_by_content: bool,
        check_constraints: bool,
        is_internal: bool,
        frozen_xid: pg_sys::TransactionId,
        cutoff_multi: pg_sys::MultiXactId,
        relpersistence: std::ffi::c_char,
    );
}

/// `table_tuple_insert` options of the bulk load (tableam.h): skip the free
/// space map, insert frozen — the heap was created in this transaction.
const INSERT_OPTIONS: i32 = 0x0002 | 0x0004;

/// Whether table `relid`'s contents may be replaced wholesale (see the module
/// doc): `pg_trickle.full_refresh_swap` is on, no capture trigger or other
/// trigger of users is on it, no publication replicates it, no dropped column
/// is in its row type.
pub fn swappable(relid: pg_sys::Oid) -> PgtResult<bool> {
    if !crate::guc::FULL_REFRESH_SWAP.get() {
        return Ok(false);
    }
    let blocked = crate::spi::query_one::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t WHERE t.tgrelid = $1 AND NOT t.tgisinternal \
                          AND t.tgname <> 'pgt_stream_table_guard') \
             OR EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a WHERE a.attrelid = $1 AND a.attnum > 0 AND a.attisdropped) \
             OR EXISTS (SELECT 1 FROM pg_catalog.pg_publication p WHERE p.puballtables) \
             OR EXISTS (SELECT 1 FROM pg_catalog.pg_publication_rel r WHERE r.prrelid = $1) \
             OR EXISTS (SELECT 1 FROM pg_catalog.pg_publication_namespace n JOIN pg_catalog.pg_class c \
                          ON c.relnamespace = n.pnnspid WHERE c.oid = $1)",
        &[relid.into()],
    )?;
    Ok(blocked == Some(false))
}

/// Makes table `relid` hold exactly the rows of `source` (a query whose
/// output columns are the table's, in order, with the same types), evaluated
/// in `snapshot`, by swapping in a new heap. Returns `Some((rows inserted,
/// rows the table held before))`, or `None` without
/// writing anything when the query's column types do not match the table's
/// exactly (the caller then writes the rows through the MERGE).
///
/// With `copies` (a bigint column of the table holding the identity of the
/// first copy of each row's content, `pgt_delta::replace::first_copy_row_id`),
/// the receiver numbers equal rows as it stores them: the `k`-th row with a
/// given first-copy identity `b` gets `b XOR (k − 1) · COPY_STRIDE`, the
/// identity `pgt_delta::replace::content_row_id` gives it — without the sort
/// a window over contents costs.
pub fn swap_in(relid: pg_sys::Oid, source: &str, copies: Option<&str>, snapshot: &StatementSnapshot) -> PgtResult<Option<(u64, u64)>> {
    let csql = CString::new(source).map_err(|_| PgtError::internal("generated SQL contains a NUL byte"))?;
    unsafe {
        // Plan the recomputation first: its output must fit the table's row type.
        let raw = PgList::<pg_sys::RawStmt>::from_pg(pg_sys::pg_parse_query(csql.as_ptr()));
        let stmt = raw.get_ptr(0).ok_or_else(|| PgtError::internal("the recomputation did not parse"))?;
        pg_sys::CommandCounterIncrement();
        pg_sys::PushCopiedSnapshot(snapshot.raw());
        pg_sys::UpdateActiveSnapshotCommandId();
        let queries = PgList::<pg_sys::Query>::from_pg(pg_sys::pg_analyze_and_rewrite_fixedparams(
            stmt,
            csql.as_ptr(),
            std::ptr::null_mut(),
            0,
            std::ptr::null_mut(),
        ));
        let Some(query) = queries.get_ptr(0).filter(|_| queries.len() == 1) else {
            pg_sys::PopActiveSnapshot();
            return Err(PgtError::internal("the recomputation is not one query"));
        };
        let plan = pg_sys::pg_plan_query(query, csql.as_ptr(), pg_sys::CURSOR_OPT_PARALLEL_OK as i32, std::ptr::null_mut());
        let old = pg_sys::table_open(relid, pg_sys::NoLock as pg_sys::LOCKMODE);
        let fits = output_fits(plan, (*old).rd_att) && !(*old).rd_tableam.is_null() && (*(*old).rd_tableam).tuple_insert.is_some();
        let (tablespace, access_method, persistence) =
            ((*(*old).rd_rel).reltablespace, (*(*old).rd_rel).relam, (*(*old).rd_rel).relpersistence);
        pg_sys::table_close(old, pg_sys::NoLock as pg_sys::LOCKMODE);
        if !fits {
            pg_sys::PopActiveSnapshot();
            return Ok(None);
        }
        // The rows replaced, for the refresh's history (the old heap's pages
        // are likely cached: a small part of the refresh).
        let old_rows = snapshot
            .query_text(&format!("SELECT count(*) FROM {}", crate::spi::query_one::<String>("SELECT $1::pg_catalog.regclass::text", &[relid.into()])?.unwrap_or_default()))?
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);

        let new_heap = make_new_heap(relid, tablespace, access_method, persistence, pg_sys::ExclusiveLock as pg_sys::LOCKMODE);
        let rel = pg_sys::table_open(new_heap, pg_sys::NoLock as pg_sys::LOCKMODE);
        let desc = pgrx::PgTupleDesc::from_pg_unchecked((*rel).rd_att);
        let numbered = copies.and_then(|name| {
            (0..desc.len()).find(|i| desc.get(*i).is_some_and(|a| a.name() == name && a.atttypid == pg_sys::INT8OID))
        });
        if copies.is_some() && numbered.is_none() {
            pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
            pg_sys::PopActiveSnapshot();
            return Err(PgtError::internal("the column to number copies in is not a bigint column of the table"));
        }
        let receiver = pg_sys::palloc0(std::mem::size_of::<Receiver>()) as *mut Receiver;
        (*receiver).public.receiveSlot = Some(receive);
        (*receiver).public.rStartup = Some(startup);
        (*receiver).public.rShutdown = Some(shutdown);
        (*receiver).public.rDestroy = Some(destroy);
        (*receiver).public.mydest = pg_sys::CommandDest::DestTransientRel;
        (*receiver).rel = rel;
        (*receiver).cid = pg_sys::GetCurrentCommandId(true);
        (*receiver).bistate = pg_sys::GetBulkInsertState();
        (*receiver).number = numbered.map(|i| i as i32).unwrap_or(-1);
        (*receiver).natts = desc.len() as i32;
        (*receiver).copy = std::ptr::null_mut();
        (*receiver).seen = std::ptr::null_mut();
        if numbered.is_some() {
            (*receiver).copy = pg_sys::MakeSingleTupleTableSlot((*rel).rd_att, &raw const pg_sys::TTSOpsVirtual);
            let ctl = pg_sys::HASHCTL { keysize: 8, entrysize: std::mem::size_of::<SeenEntry>(), hcxt: pg_sys::CurrentMemoryContext, ..Default::default() };
            (*receiver).seen = pg_sys::hash_create(
                c"pg_trickle copies".as_ptr(),
                1024,
                &ctl,
                (pg_sys::HASH_ELEM | pg_sys::HASH_BLOBS | pg_sys::HASH_CONTEXT) as i32,
            );
        }
        let desc = pg_sys::CreateQueryDesc(
            plan,
            csql.as_ptr(),
            pg_sys::GetActiveSnapshot(),
            std::ptr::null_mut(),
            receiver as *mut pg_sys::DestReceiver,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        );
        pg_sys::ExecutorStart(desc, 0);
        pg_sys::ExecutorRun(desc, pg_sys::ScanDirection::ForwardScanDirection, 0);
        let inserted = (*(*desc).estate).es_processed;
        pg_sys::ExecutorFinish(desc);
        pg_sys::ExecutorEnd(desc);
        pg_sys::FreeQueryDesc(desc);
        pg_sys::PopActiveSnapshot();
        pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);

        // Readers wait from here until the transaction ends.
        pg_sys::LockRelationOid(relid, pg_sys::AccessExclusiveLock as pg_sys::LOCKMODE);
        finish_heap_swap(relid, new_heap, false, false, true, true, pg_sys::RecentXmin, pg_sys::ReadNextMultiXactId(), persistence);
        pg_sys::CommandCounterIncrement();
        Ok(Some((inserted, old_rows)))
    }
}

/// Whether the planned query's output columns have exactly the types and
/// type modifiers of `tupdesc`'s attributes, in order.
unsafe fn output_fits(plan: *mut pg_sys::PlannedStmt, tupdesc: pg_sys::TupleDesc) -> bool {
    let outputs: Vec<*mut pg_sys::TargetEntry> =
        PgList::<pg_sys::TargetEntry>::from_pg((*(*plan).planTree).targetlist).iter_ptr().filter(|te| !(**te).resjunk).collect();
    let desc = pgrx::PgTupleDesc::from_pg_unchecked(tupdesc);
    if outputs.len() != desc.len() {
        return false;
    }
    outputs.iter().enumerate().all(|(i, te)| {
        let e = (**te).expr as *mut pg_sys::Node;
        desc.get(i).is_some_and(|attr| {
            !attr.attisdropped && attr.atttypid == pg_sys::exprType(e) && (attr.atttypmod < 0 || attr.atttypmod == pg_sys::exprTypmod(e))
        })
    })
}

/// The executor's destination: every row goes into the new heap.
#[repr(C)]
struct Receiver {
    public: pg_sys::DestReceiver,
    rel: pg_sys::Relation,
    cid: pg_sys::CommandId,
    bistate: pg_sys::BulkInsertState,
    /// The attribute (0-based) whose first-copy identities are numbered, or -1.
    number: i32,
    /// The table's attribute count.
    natts: i32,
    /// A virtual slot of the table's row type, for numbered rows.
    copy: *mut pg_sys::TupleTableSlot,
    /// First-copy identity → copies stored so far.
    seen: *mut pg_sys::HTAB,
}

/// An entry of [`Receiver::seen`].
#[repr(C)]
struct SeenEntry {
    first: i64,
    copies: i64,
}

#[pg_guard]
unsafe extern "C-unwind" fn startup(_me: *mut pg_sys::DestReceiver, _operation: i32, _typeinfo: pg_sys::TupleDesc) {}

#[pg_guard]
unsafe extern "C-unwind" fn receive(slot: *mut pg_sys::TupleTableSlot, me: *mut pg_sys::DestReceiver) -> bool {
    let me = me as *mut Receiver;
    let rel = (*me).rel;
    let mut row = slot;
    if (*me).number >= 0 {
        // The row's values with its number in place.
        let natts = (*me).natts;
        if ((*slot).tts_nvalid as i32) < natts {
            pg_sys::slot_getsomeattrs_int(slot, natts);
        }
        let copy = (*me).copy;
        if let Some(clear) = (*(*copy).tts_ops).clear {
            clear(copy);
        }
        std::ptr::copy_nonoverlapping((*slot).tts_values, (*copy).tts_values, natts as usize);
        std::ptr::copy_nonoverlapping((*slot).tts_isnull, (*copy).tts_isnull, natts as usize);
        let at = (*me).number as usize;
        let first = (*(*slot).tts_values.add(at)).value() as i64;
        let mut found = false;
        let entry = pg_sys::hash_search((*me).seen, (&raw const first).cast(), pg_sys::HASHACTION::HASH_ENTER, &mut found) as *mut SeenEntry;
        if !found {
            (*entry).copies = 0;
        }
        let id = first ^ (*entry).copies.wrapping_mul(pgt_delta::replace::COPY_STRIDE);
        (*entry).copies += 1;
        *(*copy).tts_values.add(at) = pg_sys::Datum::from(id);
        *(*copy).tts_isnull.add(at) = false;
        row = pg_sys::ExecStoreVirtualTuple(copy);
    }
    if let Some(insert) = (*(*rel).rd_tableam).tuple_insert {
        insert(rel, row, (*me).cid, INSERT_OPTIONS, (*me).bistate);
    }
    true
}

#[pg_guard]
unsafe extern "C-unwind" fn shutdown(me: *mut pg_sys::DestReceiver) {
    let me = me as *mut Receiver;
    pg_sys::FreeBulkInsertState((*me).bistate);
    if !(*me).copy.is_null() {
        pg_sys::ExecDropSingleTupleTableSlot((*me).copy);
        (*me).copy = std::ptr::null_mut();
    }
    if !(*me).seen.is_null() {
        pg_sys::hash_destroy((*me).seen);
        (*me).seen = std::ptr::null_mut();
    }
    let rel = (*me).rel;
    if let Some(finish) = (*(*rel).rd_tableam).finish_bulk_insert {
        finish(rel, INSERT_OPTIONS);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn destroy(_me: *mut pg_sys::DestReceiver) {}
