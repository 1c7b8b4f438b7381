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
    // commands/cluster.h (PostgreSQL 18); pgrx does not bind it. Called only
    // through `pg_sys::ffi::pg_guard_ffi_boundary`.
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

/// How the rows' identities (a bigint column of the table) are made.
#[derive(Debug, Clone, Copy)]
pub enum Identities<'a> {
    /// Column `.0` holds the identity of the first copy of each row's content
    /// (`pgt_delta::replace::first_copy_row_id`); the receiver numbers equal
    /// rows as it stores them: the `k`-th row with first-copy identity `b`
    /// gets `b XOR (k − 1) · COPY_STRIDE`, what
    /// `pgt_delta::replace::content_row_id` gives it — without the sort a
    /// window over contents costs.
    NumberCopies(&'a str),
    /// As `NumberCopies`, the receiver also computing the first-copy identity
    /// from the row's other columns, exactly as
    /// `hash_record_extended(ROW(<those columns>), 0)` does (PostgreSQL's
    /// `utils/adt/rowtypes.c`: each value through its type's extended hash
    /// function, `result = 31 · result + hash`), without building a record
    /// per row. Every other column's type must have an extended hash function.
    HashContent(&'a str),
}

/// `table_tuple_insert` options of the bulk load (tableam.h): skip the free
/// space map, insert frozen — the heap was created in this transaction.
const INSERT_OPTIONS: i32 = 0x0002 | 0x0004;

/// Whether table `relid`'s contents may be replaced wholesale (see the module
/// doc): `pg_trickle.full_refresh_swap` is on, no capture trigger or other
/// trigger of users is on it, no constraint refers to or from it but the
/// identity's own NOT NULL (a swap would skip their checks), no publication replicates it, no dropped column
/// is in its row type.
pub fn swappable(relid: pg_sys::Oid) -> PgtResult<bool> {
    if !crate::guc::FULL_REFRESH_SWAP.get() {
        return Ok(false);
    }
    let blocked = crate::spi::query_one::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t WHERE t.tgrelid = $1 AND NOT t.tgisinternal \
                          AND t.tgname <> $2) \
             OR EXISTS (SELECT 1 FROM pg_catalog.pg_constraint k WHERE (k.conrelid = $1 OR k.confrelid = $1) \
                          AND NOT (k.contype = 'n' AND k.conrelid = $1 AND k.conkey = ARRAY[(SELECT a.attnum \
                                   FROM pg_catalog.pg_attribute a WHERE a.attrelid = $1 AND a.attname = $3)])) \
             OR EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a WHERE a.attrelid = $1 AND a.attnum > 0 AND a.attisdropped) \
             OR EXISTS (SELECT 1 FROM pg_catalog.pg_publication p WHERE p.puballtables) \
             OR EXISTS (SELECT 1 FROM pg_catalog.pg_publication_rel r WHERE r.prrelid = $1) \
             OR EXISTS (SELECT 1 FROM pg_catalog.pg_publication_namespace n JOIN pg_catalog.pg_class c \
                          ON c.relnamespace = n.pnnspid WHERE c.oid = $1)",
        &[relid.into(), crate::storage::GUARD_TRIGGER.into(), crate::storage::ROW_ID_COLUMN.into()],
    )?;
    Ok(blocked == Some(false))
}

/// Makes table `relid` hold exactly the rows of `source` (a query whose
/// output columns are the table's, in order, with the same types), evaluated
/// in `snapshot`, by swapping in a new heap. Returns `Some((rows inserted,
/// rows the table held before))`, or `None` without
/// writing anything when the query's column types do not match the table's
/// exactly (the caller then writes the rows through the MERGE).
pub fn swap_in(relid: pg_sys::Oid, source: &str, identities: Identities, snapshot: &StatementSnapshot) -> PgtResult<Option<(u64, u64)>> {
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
        // A table this session is still reading (a cursor, the query calling
        // the refresh) or has trigger events pending on cannot have its storage
        // swapped (CheckTableNotInUse, as REFRESH MATERIALIZED VIEW checks):
        // it is written through the MERGE then.
        let in_use = (*old).rd_refcnt > 1 || pg_sys::AfterTriggerPendingOnRel(relid);
        let fits = !in_use
            && output_fits(plan, (*old).rd_att)
            && !(*old).rd_tableam.is_null()
            && (*(*old).rd_tableam).tuple_insert.is_some();
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

        // Equal rows are numbered as they are stored. Most results have none:
        // the first attempt gives every row copy number 0 and checks at the
        // end that no identity repeats; if one does, that heap is dropped and
        // the rows are stored again, counting copies as they come (and this
        // stream table is counted so from then on, in this backend).
        let mut exact = REPEATING.with(|r| r.borrow().contains(&relid.to_u32()));
        let (new_heap, inserted) = loop {
            // Bound by hand, so called through pgrx's guard: a PostgreSQL error
            // becomes a Rust panic that unwinds this frame's cleanups.
            let new_heap = pg_sys::ffi::pg_guard_ffi_boundary(|| {
                make_new_heap(relid, tablespace, access_method, persistence, pg_sys::ExclusiveLock as pg_sys::LOCKMODE)
            });
            match fill(new_heap, plan, &csql, identities, exact, old_rows) {
                Ok(Filled::Unique(inserted)) => break (new_heap, inserted),
                Ok(Filled::Repeated) => {
                    let heap = pg_sys::ObjectAddress { classId: pg_sys::RelationRelationId, objectId: new_heap, objectSubId: 0 };
                    pg_sys::performDeletion(&heap, pg_sys::DropBehavior::DROP_RESTRICT, pg_sys::PERFORM_DELETION_INTERNAL as i32);
                    pg_sys::CommandCounterIncrement();
                    REPEATING.with(|r| r.borrow_mut().insert(relid.to_u32()));
                    exact = true;
                }
                Err(e) => {
                    pg_sys::PopActiveSnapshot();
                    return Err(e);
                }
            }
        };
        pg_sys::PopActiveSnapshot();

        // Readers wait from here until the transaction ends.
        pg_sys::LockRelationOid(relid, pg_sys::AccessExclusiveLock as pg_sys::LOCKMODE);
        let (recent_xmin, next_multi) = (pg_sys::RecentXmin, pg_sys::ReadNextMultiXactId());
        pg_sys::ffi::pg_guard_ffi_boundary(|| {
            finish_heap_swap(relid, new_heap, false, false, true, true, recent_xmin, next_multi, persistence)
        });
        pg_sys::CommandCounterIncrement();
        Ok(Some((inserted, old_rows)))
    }
}


thread_local! {
    /// Stream tables (by OID) whose last wholesale refresh in this backend
    /// stored equal rows: their copies are counted from the first row.
    static REPEATING: std::cell::RefCell<std::collections::BTreeSet<u32>> = const { std::cell::RefCell::new(std::collections::BTreeSet::new()) };
}

/// How [`fill`] ended.
enum Filled {
    /// Every row went in with a distinct identity: the rows stored.
    Unique(u64),
    /// Copy numbers were not counted and an identity repeats: the heap must
    /// be dropped and filled again, counting.
    Repeated,
}

/// Runs `plan` (in the active snapshot) into the new heap `new_heap`, giving
/// rows their identities as `identities` says; with `exact`, counting copies
/// of equal rows as they come, else numbering every row as a first copy and
/// checking at the end that no identity repeats. `expected_rows` sizes the
/// bookkeeping.
unsafe fn fill(
    new_heap: pg_sys::Oid,
    plan: *mut pg_sys::PlannedStmt,
    csql: &CString,
    identities: Identities,
    exact: bool,
    expected_rows: u64,
) -> PgtResult<Filled> {
    unsafe {
        let rel = pg_sys::table_open(new_heap, pg_sys::NoLock as pg_sys::LOCKMODE);
        let desc = pgrx::PgTupleDesc::from_pg_unchecked((*rel).rd_att);
        let column = match identities {
            Identities::NumberCopies(name) | Identities::HashContent(name) => Some(name),
        };
        let numbered = column.and_then(|name| {
            (0..desc.len()).find(|i| desc.get(*i).is_some_and(|a| a.name() == name && a.atttypid == pg_sys::INT8OID))
        });
        let mut hashers = Vec::new();
        if let (Identities::HashContent(_), Some(at)) = (identities, numbered) {
            for i in (0..desc.len()).filter(|i| *i != at) {
                let Some(attr) = desc.get(i) else { continue };
                if attr.attisdropped {
                    continue;
                }
                let entry = pg_sys::lookup_type_cache(attr.atttypid, pg_sys::TYPECACHE_HASH_EXTENDED_PROC_FINFO as i32);
                if entry.is_null() || (*entry).hash_extended_proc_finfo.fn_oid == pg_sys::InvalidOid {
                    hashers.clear();
                    break;
                }
                // A call frame per column, built once: the hot loop calls the
                // function itself, without a wrapper per row.
                let finfo = &raw mut (*entry).hash_extended_proc_finfo;
                let fcinfo = pg_sys::palloc0(
                    std::mem::size_of::<pg_sys::FunctionCallInfoBaseData>() + 2 * std::mem::size_of::<pg_sys::NullableDatum>(),
                ) as *mut pg_sys::FunctionCallInfoBaseData;
                (*fcinfo).flinfo = finfo;
                (*fcinfo).fncollation = attr.attcollation;
                (*fcinfo).nargs = 2;
                let Some(function) = (*finfo).fn_addr else {
                    hashers.clear();
                    break;
                };
                hashers.push(Hasher { attribute: i, fcinfo, function });
            }
        }
        let unusable = column.is_some() && numbered.is_none()
            || matches!(identities, Identities::HashContent(_)) && hashers.is_empty() && desc.len() > 1;
        if unusable {
            pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
            return Err(PgtError::internal("the table's identity column or its other columns' hash functions are missing"));
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
        (*receiver).hash = false;
        (*receiver).repeated = false;
        if numbered.is_some() {
            (*receiver).copy = pg_sys::MakeSingleTupleTableSlot((*rel).rd_att, &raw const pg_sys::TTSOpsVirtual);
            let numbering = if exact {
                Numbering::Counted(
                    pgt_core::copies::CopyCounter::with_capacity(expected_rows as usize)
                        .map_err(|e| PgtError::internal(format!("out of memory numbering the rows of a wholesale refresh: {e}")))?,
                )
            } else {
                Numbering::FirstCopies(Vec::with_capacity(expected_rows as usize))
            };
            (*receiver).seen = Box::into_raw(Box::new(Seen { numbering, hashers: std::mem::take(&mut hashers) }));
            (*receiver).hash = matches!(identities, Identities::HashContent(_));
            // Freed with the memory context, also when the refresh fails.
            let callback = pg_sys::palloc0(std::mem::size_of::<pg_sys::MemoryContextCallback>()) as *mut pg_sys::MemoryContextCallback;
            (*callback).func = Some(free_seen);
            (*callback).arg = receiver.cast();
            pg_sys::MemoryContextRegisterResetCallback(pg_sys::CurrentMemoryContext, callback);
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
        pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
        Ok(if (*receiver).repeated { Filled::Repeated } else { Filled::Unique(inserted) })
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
    /// Copies stored so far, and how to hash contents.
    seen: *mut Seen,
    /// Whether the receiver computes first-copy identities ([`Identities::HashContent`]).
    hash: bool,
    /// Set at shutdown: rows numbered as first copies share an identity.
    repeated: bool,
}

/// What the receiver keeps while numbering copies (Rust memory, freed with
/// the memory context, see [`free_seen`]).
struct Seen {
    /// How copy numbers are given.
    numbering: Numbering,
    /// The columns hashed into a content's identity, in order.
    hashers: Vec<Hasher>,
}

/// How a receiver numbers the copies of equal rows.
enum Numbering {
    /// Counting the copies of each first-copy identity as rows come.
    Counted(pgt_core::copies::CopyCounter),
    /// Every row a first copy; the identities given, checked at the end.
    FirstCopies(Vec<i64>),
}

/// One column of a content's hash: its type's extended hash function, with a
/// call frame for it (arguments: the value, seed 0).
struct Hasher {
    attribute: usize,
    fcinfo: *mut pg_sys::FunctionCallInfoBaseData,
    function: unsafe extern "C-unwind" fn(pg_sys::FunctionCallInfo) -> pg_sys::Datum,
}

/// Frees a receiver's [`Seen`] when its memory context goes (normally already
/// freed at shutdown).
#[pg_guard]
unsafe extern "C-unwind" fn free_seen(arg: *mut std::ffi::c_void) {
    let me = arg as *mut Receiver;
    if !(*me).seen.is_null() {
        drop(Box::from_raw((*me).seen));
        (*me).seen = std::ptr::null_mut();
    }
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
        let seen = &mut *(*me).seen;
        let first = if (*me).hash {
            let mut result: u64 = 0;
            for h in &seen.hashers {
                let element = if *(*slot).tts_isnull.add(h.attribute) {
                    0
                } else {
                    let args = (*h.fcinfo).args.as_mut_slice(2);
                    args[0] = pg_sys::NullableDatum { value: *(*slot).tts_values.add(h.attribute), isnull: false };
                    args[1] = pg_sys::NullableDatum { value: pg_sys::Datum::from(0i64), isnull: false };
                    (*h.fcinfo).isnull = false;
                    (h.function)(h.fcinfo).value() as u64
                };
                result = (result << 5).wrapping_sub(result).wrapping_add(element);
            }
            result as i64
        } else {
            (*(*slot).tts_values.add(at)).value() as i64
        };
        let copies = match &mut seen.numbering {
            // Rust memory, outside PostgreSQL's contexts: running out is an
            // error (a panic, raised as ERROR), never an abort.
            Numbering::Counted(counter) => match counter.count(first as u64) {
                Ok(copies) => copies,
                Err(e) => panic!("out of memory numbering the rows of a wholesale refresh: {e}"),
            },
            Numbering::FirstCopies(given) => {
                if given.len() == given.capacity() && given.try_reserve(given.len().max(1024)).is_err() {
                    panic!("out of memory numbering the rows of a wholesale refresh ({} rows)", given.len());
                }
                given.push(first);
                0
            }
        };
        let id = first ^ copies.wrapping_mul(pgt_delta::replace::COPY_STRIDE);
        *(*copy).tts_values.add(at) = pg_sys::Datum::from(id);
        *(*copy).tts_isnull.add(at) = false;
        // ExecStoreVirtualTuple, without a wrapped call per row.
        (*copy).tts_flags &= !(pg_sys::TTS_FLAG_EMPTY as u16);
        (*copy).tts_nvalid = natts as i16;
        row = copy;
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
    if let Some(Seen { numbering: Numbering::FirstCopies(given), .. }) = (*me).seen.as_mut() {
        given.sort_unstable();
        (*me).repeated = given.windows(2).any(|w| w[0] == w[1]);
    }
    free_seen(me.cast());
    let rel = (*me).rel;
    if let Some(finish) = (*(*rel).rd_tableam).finish_bulk_insert {
        finish(rel, INSERT_OPTIONS);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn destroy(_me: *mut pg_sys::DestReceiver) {}

