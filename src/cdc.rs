//! Change data capture by statement-level triggers with transition tables.
//!
//! For every captured source relation `S` (a table, a partitioned table and all its
//! partitions, or another stream table's storage) pg_trickle keeps:
//! - a **change buffer** `pgtrickle_changes.changes_<oid of S>` with one row per
//!   changed row image: `__pgt_txid xid8` (the writing transaction,
//!   `pg_current_xact_id()`), `__pgt_action "char"` ('I' a new image, weight +1;
//!   'D' an old image, weight -1; 'T' a TRUNCATE marker with no image), then one
//!   column per column of `S`, same name and type. An UPDATE is captured as its old
//!   images ('D') plus its new images ('I'): deltas are multisets with signed
//!   weights, so no pairing of old and new rows is needed;
//! - a **capture function** `pgtrickle_changes.capture_<oid>()` (PL/pgSQL,
//!   `SECURITY DEFINER`, `search_path` pinned) that copies a statement's transition
//!   table into the buffer in one set-based INSERT;
//! - four **triggers** `pgt_cdc_<oid>_{ins,upd,del,trunc}` (AFTER ... FOR EACH
//!   STATEMENT; INSERT/UPDATE/DELETE with transition tables; `ENABLE ALWAYS`, so
//!   they fire under `session_replication_role = replica` too) on `S` and, for a
//!   partitioned table, on every partition (a statement aimed at a partition fires
//!   only that partition's statement triggers). Foreign partitions cannot carry
//!   transition-table triggers and are skipped.
//!
//! One buffer serves every stream table reading `S`; it is created with the first
//! and dropped with the last (`pgt_change_tracking` records it). The buffer,
//! function and triggers carry an AUTO dependency on the extension, so `DROP
//! EXTENSION pg_trickle` removes them without CASCADE, and the triggers an AUTO
//! dependency on their table, so dropping a source removes its triggers.
//!
//! **Serialization.** Starting, re-syncing and releasing the capture of `S`, and
//! trimming its buffer, hold a transaction-level advisory lock keyed by `S`
//! ([`lock_source`]): a stream table being created over `S` cannot see capture that
//! a concurrent drop is removing, and a trim never runs while a transaction that
//! adds a consumer of `S` is still in flight (the trim could not see that
//! consumer's frontier). Catalog reads made after the lock see the latest committed
//! state (`crate::spi` runs reads with fresh snapshots; the lifecycle functions
//! require READ COMMITTED).
//!
//! Which buffer rows a refresh reads and when they can be deleted is decided by the
//! frontier (`pgt_core::frontier`, docs/ARCHITECTURE.md): rows every consumer's
//! frontier has consumed are deleted by [`trim_buffer`].
//!
//! **Quoting.** Source column names are user text. They reach generated SQL only
//! through `quote_ident`, and the capture function's body is passed as a quoted
//! string literal (`quote_literal`), never dollar-quoted, so no column name can end
//! the body early. Inside the body every column is qualified by its transition
//! table (`n."col"`), so names such as `tg_op` or `new` cannot clash with PL/pgSQL
//! variables.

use crate::catalog::{self, ChangeTracking};
use crate::error::{PgtError, PgtResult};
use crate::parse::relation_name;
use crate::privilege::{as_extension_owner, extension_oid};
use crate::spi::{col, exec, query_map, query_one, StatementSnapshot};
use pgrx::pg_sys;
use pgrx::PgSqlErrorCode;
use pgt_core::frontier::consumed_by_frontier_sql;
use pgt_core::ident::{quote_ident, quote_literal, QualifiedName};

/// Schema holding change buffers and capture functions.
pub const CHANGES_SCHEMA: &str = "pgtrickle_changes";

/// The change buffer's own columns; a source column may not have these names.
pub const BUFFER_META_COLUMNS: [&str; 2] = ["__pgt_txid", "__pgt_action"];

/// Name of the change buffer of source `source_relid`.
pub fn buffer_name(source_relid: pg_sys::Oid) -> QualifiedName {
    QualifiedName::new(CHANGES_SCHEMA, format!("changes_{}", source_relid.to_u32()))
}

fn capture_function_name(source_relid: pg_sys::Oid) -> QualifiedName {
    QualifiedName::new(CHANGES_SCHEMA, format!("capture_{}", source_relid.to_u32()))
}

/// The four capture triggers: name suffix, event, transition-table clause.
const TRIGGERS: [(&str, &str, &str); 4] = [
    ("ins", "INSERT", "REFERENCING NEW TABLE AS __pgt_new"),
    ("upd", "UPDATE", "REFERENCING OLD TABLE AS __pgt_old NEW TABLE AS __pgt_new"),
    ("del", "DELETE", "REFERENCING OLD TABLE AS __pgt_old"),
    ("trunc", "TRUNCATE", ""),
];

fn trigger_name(source_relid: pg_sys::Oid, suffix: &str) -> String {
    format!("pgt_cdc_{}_{}", source_relid.to_u32(), suffix)
}

/// First half of the advisory-lock key space pg_trickle uses for "capture of a
/// source" (`"pgt\0"`); the second half is the source's OID.
const CAPTURE_LOCK_CLASS: i64 = 0x7067_7400;

/// Takes the transaction-level advisory lock that serializes capture management of
/// `source_relid` (see the module doc); waits for it unless `try_only`, in which
/// case returns whether it was granted.
fn lock_source(source_relid: pg_sys::Oid, try_only: bool) -> PgtResult<bool> {
    let key = (CAPTURE_LOCK_CLASS << 32) | i64::from(source_relid.to_u32());
    if try_only {
        Ok(query_one::<bool>("SELECT pg_catalog.pg_try_advisory_xact_lock($1)", &[key.into()])?.unwrap_or(false))
    } else {
        exec("SELECT pg_catalog.pg_advisory_xact_lock($1)", &[key.into()])?;
        Ok(true)
    }
}

thread_local! {
    /// Depth of capture DDL pg_trickle itself is running in this backend.
    static INTERNAL_DDL_DEPTH: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Marks a span in which pg_trickle runs DDL for change capture (CREATE TRIGGER,
/// ALTER TABLE ... ENABLE ALWAYS TRIGGER, ...). Our own event triggers see that DDL
/// too; while a span is open they do nothing ([`internal_ddl_in_progress`]). The
/// depth is restored on drop, also when an error unwinds.
struct InternalDdl;

impl InternalDdl {
    fn begin() -> InternalDdl {
        INTERNAL_DDL_DEPTH.with(|d| d.set(d.get() + 1));
        InternalDdl
    }
}

impl Drop for InternalDdl {
    fn drop(&mut self) {
        INTERNAL_DDL_DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

/// Whether pg_trickle is itself running capture DDL in this backend.
pub fn internal_ddl_in_progress() -> bool {
    INTERNAL_DDL_DEPTH.with(|d| d.get() > 0)
}

/// A captured column of a source: name and SQL type text (with a COLLATE clause
/// when the column's collation is not its type's default).
#[derive(Debug, Clone, PartialEq, Eq)]
struct CapturedColumn {
    attnum: i16,
    name: String,
    sql_type: String,
}

/// Columns of `relid` as the buffer stores them: every live, non-virtual column in
/// attribute order (virtual generated columns have no stored value to capture),
/// a domain column as its base type: the buffer holds TRUNCATE markers with NULL
/// images and gains columns with pending rows, which a domain's NOT NULL or
/// CHECK would refuse; values were checked when written to the source.
/// Call with `search_path` pinned (inside [`as_extension_owner`]), so that
/// `format_type` schema-qualifies every type not in `pg_catalog`.
fn captured_columns(relid: pg_sys::Oid) -> PgtResult<Vec<CapturedColumn>> {
    // A column's collation, when not its type's default, goes with its type: the
    // delta queries compare and sort buffer values (WHERE name > 'a', min/max) as
    // the source's column would.
    query_map(
        "SELECT a.attnum, a.attname::text, pg_catalog.format_type(b.typid, b.typmod) || \
                CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation \
                     THEN ' COLLATE ' || pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(co.collname) \
                     ELSE '' END \
         FROM pg_catalog.pg_attribute a \
         CROSS JOIN LATERAL ( \
           WITH RECURSIVE d(typid, typmod, depth) AS ( \
             SELECT a.atttypid, a.atttypmod, 0 \
             UNION ALL \
             SELECT dt.typbasetype, CASE WHEN d.typmod >= 0 THEN d.typmod ELSE dt.typtypmod END, d.depth + 1 \
             FROM d JOIN pg_catalog.pg_type dt ON dt.oid = d.typid WHERE dt.typtype = 'd') \
           SELECT d.typid, d.typmod FROM d ORDER BY d.depth DESC LIMIT 1) b \
         JOIN pg_catalog.pg_type t ON t.oid = b.typid \
         LEFT JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation \
         LEFT JOIN pg_catalog.pg_namespace n ON n.oid = co.collnamespace \
         WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated <> 'v' \
         ORDER BY a.attnum",
        &[relid.into()],
        |row| Ok(CapturedColumn { attnum: col(row, 1)?, name: col(row, 2)?, sql_type: col(row, 3)? }),
    )
}

/// `relid` and, for a partitioned table, every partition below it that can carry
/// capture triggers (foreign partitions cannot).
fn relation_tree(relid: pg_sys::Oid) -> PgtResult<Vec<pg_sys::Oid>> {
    query_map(
        "SELECT t.relid::pg_catalog.oid FROM pg_catalog.pg_partition_tree($1::pg_catalog.regclass) t \
         JOIN pg_catalog.pg_class c ON c.oid = t.relid WHERE c.relkind <> 'f' \
         UNION SELECT $1::pg_catalog.oid ORDER BY 1",
        &[relid.into()],
        |row| col(row, 1),
    )
}

/// Starts capturing changes of `source_relid` unless it is captured already.
///
/// Creating the triggers takes a SHARE ROW EXCLUSIVE lock on the source, which
/// waits for writers in progress and blocks new ones until the caller's transaction
/// ends; a snapshot taken afterwards in the same (READ COMMITTED) transaction
/// therefore sees every change made before capture began, and every later change
/// is captured.
///
/// # Errors
/// 42939 when a source column is named like a buffer meta column.
pub fn ensure_capture(source_relid: pg_sys::Oid) -> PgtResult<()> {
    let _internal = InternalDdl::begin();
    as_extension_owner(|| {
        lock_source(source_relid, false)?;
        if catalog::change_tracking(source_relid)?.is_some() {
            return Ok(());
        }
        let source = relation_name(source_relid)?;
        let columns = checked_columns(source_relid, &source)?;
        let extension = extension_oid()?;
        let buffer_relid = create_buffer(source_relid, &source, &columns, extension)?;
        let function_oid = write_capture_function(source_relid, &columns)?;
        record_auto_dependency_on_extension(pg_sys::ProcedureRelationId, function_oid, extension);
        sync_triggers(source_relid, function_oid, extension)?;
        catalog::insert_change_tracking(
            &ChangeTracking {
                source_relid,
                buffer_relid,
                capture_function: function_oid,
                column_signature: signature(source_relid, &columns)?,
                captured_attnums: Some(columns.iter().map(|c| c.attnum).collect()),
            },
            &source,
        )
    })
}

/// What [`sync_capture`] found and did.
#[derive(Debug, Default)]
pub struct CaptureSync {
    /// Attribute numbers of source columns whose captured form changed: dropped,
    /// renamed or retyped. The buffer's pending values of such a column are gone
    /// or no longer comparable with the table's.
    pub changed_columns: Vec<i16>,
    /// Rows entered or left the source without passing through capture
    /// (partitions attached or detached), or the buffer had to be rebuilt: no
    /// stream table reading the source can trust its pending changes.
    pub pending_changes_lost: bool,
}

/// Brings the capture of `source_relid` in line with the source after DDL (called
/// by the event triggers after ALTER TABLE / CREATE TABLE / ALTER TYPE, and after a
/// column of it was dropped by a cascade):
/// - capture triggers on exactly the relations of its partition tree (a partition
///   created or attached later gets them, a detached one loses them);
/// - if its columns changed, the change buffer is altered to match, keeping its
///   pending rows: a dropped column is dropped, a renamed one renamed, a retyped
///   one retyped (its pending values become NULL), a new one added (NULL in
///   pending rows); the capture function is rewritten for the new columns, so
///   writes to the source keep working.
///
/// The caller decides what that means for the stream tables reading the source
/// (`crate::ddl`). A buffer whose columns do not look as recorded is rebuilt
/// instead, losing its pending rows.
pub fn sync_capture(source_relid: pg_sys::Oid) -> PgtResult<CaptureSync> {
    let _internal = InternalDdl::begin();
    as_extension_owner(|| {
        lock_source(source_relid, false)?;
        let Some(tracking) = catalog::change_tracking(source_relid)? else {
            return Ok(CaptureSync::default());
        };
        let source = relation_name(source_relid)?;
        let columns = checked_columns(source_relid, &source)?;
        let extension = extension_oid()?;
        let tree_changed = sync_triggers(source_relid, tracking.capture_function, extension)?;
        // Compare with what capture was built for, not with the buffer: a cascade
        // (DROP TYPE ... CASCADE) drops a column from source and buffer alike.
        let new_signature = signature(source_relid, &columns)?;
        let mut sync = CaptureSync { pending_changes_lost: tree_changed, ..CaptureSync::default() };
        if tracking.column_signature == new_signature {
            return Ok(sync);
        }
        let altered = match &tracking.captured_attnums {
            Some(attnums) => {
                alter_buffer(source_relid, tracking.buffer_relid, attnums, &columns, &mut sync.changed_columns)?
            }
            None => None,
        };
        let (buffer_columns, buffer_relid) = match altered {
            Some(buffer_columns) => (buffer_columns, tracking.buffer_relid),
            None => {
                exec(&format!("DROP TABLE IF EXISTS {}", buffer_name(source_relid).to_sql()), &[])?;
                let buffer_relid = create_buffer(source_relid, &source, &columns, extension)?;
                sync.pending_changes_lost = true;
                sync.changed_columns = columns.iter().map(|c| c.attnum).collect();
                (columns, buffer_relid)
            }
        };
        write_capture_function(source_relid, &buffer_columns)?;
        let attnums: Vec<i16> = buffer_columns.iter().map(|c| c.attnum).collect();
        catalog::update_change_tracking_buffer(source_relid, buffer_relid, &new_signature, &attnums)?;
        sync_buffer_grants(source_relid)?;
        Ok(sync)
    })
}

/// Alters the change buffer `buffer_relid` of `source_relid`, whose user columns hold source
/// columns `old_attnums` in order, to hold `columns`, and adds to `changed` the
/// columns it dropped, renamed or retyped. Returns the buffer's columns in their
/// new order, or `None` when the buffer does not look as recorded (the caller
/// then rebuilds it).
fn alter_buffer(
    source_relid: pg_sys::Oid,
    buffer_relid: pg_sys::Oid,
    old_attnums: &[i16],
    columns: &[CapturedColumn],
    changed: &mut Vec<i16>,
) -> PgtResult<Option<Vec<CapturedColumn>>> {
    let buffer = buffer_name(source_relid);
    let stored: Vec<CapturedColumn> = captured_columns(buffer_relid)?
        .into_iter()
        .filter(|c| !BUFFER_META_COLUMNS.contains(&c.name.as_str()))
        .collect();
    if stored.len() != old_attnums.len() {
        return Ok(None);
    }
    let old: Vec<CapturedColumn> =
        stored.into_iter().zip(old_attnums).map(|(c, attnum)| CapturedColumn { attnum: *attnum, ..c }).collect();
    let alter = |action: String| exec(&format!("ALTER TABLE {} {action}", buffer.to_sql()), &[]);
    let now = |attnum: i16| columns.iter().find(|c| c.attnum == attnum);
    let kept: Vec<(&CapturedColumn, &CapturedColumn)> = old.iter().filter_map(|o| now(o.attnum).map(|n| (o, n))).collect();
    for gone in old.iter().filter(|o| now(o.attnum).is_none()) {
        alter(format!("DROP COLUMN {}", quote_ident(&gone.name)))?;
        changed.push(gone.attnum);
    }
    // Renames go through temporary names, so that swapped names never collide.
    let renamed: Vec<&(&CapturedColumn, &CapturedColumn)> = kept.iter().filter(|(o, n)| o.name != n.name).collect();
    let temporary = |attnum: i16| quote_ident(&format!("__pgt_renaming_{attnum}"));
    for (o, _) in &renamed {
        alter(format!("RENAME COLUMN {} TO {}", quote_ident(&o.name), temporary(o.attnum)))?;
    }
    for (o, n) in &renamed {
        alter(format!("RENAME COLUMN {} TO {}", temporary(o.attnum), quote_ident(&n.name)))?;
        changed.push(o.attnum);
    }
    for (o, n) in kept.iter().filter(|(o, n)| o.sql_type != n.sql_type) {
        alter(format!("ALTER COLUMN {} TYPE {} USING NULL", quote_ident(&n.name), n.sql_type))?;
        changed.push(o.attnum);
    }
    let mut order: Vec<CapturedColumn> = kept.iter().map(|(_, n)| (*n).clone()).collect();
    for added in columns.iter().filter(|c| !old.iter().any(|o| o.attnum == c.attnum)) {
        alter(format!("ADD COLUMN {} {}", quote_ident(&added.name), added.sql_type))?;
        order.push(added.clone());
    }
    changed.sort_unstable();
    changed.dedup();
    Ok(Some(order))
}

/// The signature capture is built for: column names and types (with non-default
/// collations), in order, and the source's row identity (the key columns the
/// differential plans rely on). When it changes — a column added or retyped, the
/// primary key dropped, a key column made nullable — the buffer is rebuilt and
/// the stream tables reading the source recompute, with a new plan.
fn signature(source_relid: pg_sys::Oid, columns: &[CapturedColumn]) -> PgtResult<String> {
    let columns = columns.iter().map(|c| format!("{}:{}", quote_ident(&c.name), c.sql_type)).collect::<Vec<_>>().join(",");
    let key = crate::translate::key_attnums(source_relid)?.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(",");
    Ok(format!("{columns};key:{key}"))
}

/// Makes exactly the owners of the DIFFERENTIAL stream tables reading
/// `source_relid` (superusers need nothing) able to SELECT its change buffer:
/// their refreshes read it, running as them.
pub fn sync_buffer_grants(source_relid: pg_sys::Oid) -> PgtResult<()> {
    as_extension_owner(|| {
        if catalog::change_tracking(source_relid)?.is_none() {
            return Ok(());
        }
        let buffer = buffer_name(source_relid).to_sql();
        let wanted = catalog::buffer_readers(source_relid)?;
        let granted: Vec<String> = query_map(
            "SELECT DISTINCT r.rolname::text FROM pg_catalog.pg_class c, \
                    pg_catalog.aclexplode(c.relacl) a JOIN pg_catalog.pg_roles r ON r.oid = a.grantee \
             WHERE c.oid = $1::pg_catalog.regclass AND a.privilege_type = 'SELECT' AND a.grantee <> c.relowner",
            &[buffer.as_str().into()],
            |row| col(row, 1),
        )?;
        for role in wanted.iter().filter(|r| !granted.contains(r)) {
            exec(&format!("GRANT SELECT ON {buffer} TO {}", quote_ident(role)), &[])?;
        }
        for role in granted.iter().filter(|r| !wanted.contains(r)) {
            exec(&format!("REVOKE SELECT ON {buffer} FROM {}", quote_ident(role)), &[])?;
        }
        Ok(())
    })
}

/// The source's columns, rejecting names that collide with the buffer's own.
fn checked_columns(source_relid: pg_sys::Oid, source: &QualifiedName) -> PgtResult<Vec<CapturedColumn>> {
    let columns = captured_columns(source_relid)?;
    if let Some(c) = columns.iter().find(|c| BUFFER_META_COLUMNS.contains(&c.name.as_str())) {
        return Err(PgtError::new(
            PgSqlErrorCode::ERRCODE_RESERVED_NAME,
            format!("column \"{}\" of {source} has a name reserved by pg_trickle", c.name),
        )
        .hint("Rename the column; the change buffer uses this name."));
    }
    Ok(columns)
}

/// Creates the change buffer of `source_relid` with `columns`; returns its OID.
fn create_buffer(
    source_relid: pg_sys::Oid,
    source: &QualifiedName,
    columns: &[CapturedColumn],
    extension: pg_sys::Oid,
) -> PgtResult<pg_sys::Oid> {
    let buffer = buffer_name(source_relid);
    let column_defs: String = columns.iter().map(|c| format!(", {} {}", quote_ident(&c.name), c.sql_type)).collect();
    exec(
        &format!(
            "CREATE TABLE {} (__pgt_txid pg_catalog.xid8 NOT NULL DEFAULT pg_catalog.pg_current_xact_id(), \
             __pgt_action \"char\" NOT NULL{column_defs})",
            buffer.to_sql()
        ),
        &[],
    )?;
    exec(
        &format!(
            "COMMENT ON TABLE {} IS {}",
            buffer.to_sql(),
            quote_literal(&format!("pg_trickle change buffer of {source}"))
        ),
        &[],
    )?;
    let buffer_relid = query_one::<pg_sys::Oid>("SELECT $1::pg_catalog.regclass::oid", &[buffer.to_sql().as_str().into()])?
        .ok_or_else(|| PgtError::internal(format!("change buffer {buffer} was not created")))?;
    // AUTO dependency on the extension: DROP EXTENSION removes the buffer silently.
    record_auto_dependency_on_extension(pg_sys::RelationRelationId, buffer_relid, extension);
    Ok(buffer_relid)
}

/// The PL/pgSQL body of the capture function for `columns` writing into `buffer`.
fn capture_function_body(buffer: &QualifiedName, columns: &[CapturedColumn]) -> String {
    let target: String = columns.iter().map(|c| format!(", {}", quote_ident(&c.name))).collect();
    let images = |action: &str, table: &str| {
        let values: String = columns.iter().map(|c| format!(", t.{}", quote_ident(&c.name))).collect();
        format!("SELECT '{action}'{values} FROM {table} t")
    };
    let buffer = buffer.to_sql();
    format!(
        "#variable_conflict use_column\n\
         BEGIN\n\
           IF TG_OP = 'INSERT' THEN\n\
             INSERT INTO {buffer} (__pgt_action{target}) {ins};\n\
           ELSIF TG_OP = 'UPDATE' THEN\n\
             INSERT INTO {buffer} (__pgt_action{target}) {upd_old} UNION ALL {upd_new};\n\
           ELSIF TG_OP = 'DELETE' THEN\n\
             INSERT INTO {buffer} (__pgt_action{target}) {del};\n\
           ELSE\n\
             INSERT INTO {buffer} (__pgt_action) VALUES ('T');\n\
           END IF;\n\
           PERFORM pgtrickle._wake_scheduler();\n\
           RETURN NULL;\n\
         END\n",
        ins = images("I", "__pgt_new"),
        upd_old = images("D", "__pgt_old"),
        upd_new = images("I", "__pgt_new"),
        del = images("D", "__pgt_old"),
    )
}

/// Creates or replaces the capture function of `source_relid` for `columns` (the
/// OID stays the same on replace, so existing triggers keep calling it); returns
/// its OID.
fn write_capture_function(source_relid: pg_sys::Oid, columns: &[CapturedColumn]) -> PgtResult<pg_sys::Oid> {
    let function = capture_function_name(source_relid);
    let body = capture_function_body(&buffer_name(source_relid), columns);
    exec(
        &format!(
            "CREATE OR REPLACE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER \
             SET search_path = pg_catalog, pg_temp AS {}",
            function.to_sql(),
            quote_literal(&body)
        ),
        &[],
    )?;
    exec(&format!("REVOKE ALL ON FUNCTION {}() FROM PUBLIC", function.to_sql()), &[])?;
    query_one::<pg_sys::Oid>(
        "SELECT $1::pg_catalog.regprocedure::oid",
        &[format!("{}()", function.to_sql()).as_str().into()],
    )?
    .ok_or_else(|| PgtError::internal(format!("capture function {function} was not created")))
}

/// Puts the four capture triggers (enabled ALWAYS) on every relation of the
/// partition tree of `source_relid` that lacks them, and removes capture triggers
/// of this source from relations no longer in the tree. Returns whether anything
/// changed after the source's first capture (partitions came or went).
fn sync_triggers(source_relid: pg_sys::Oid, function_oid: pg_sys::Oid, extension: pg_sys::Oid) -> PgtResult<bool> {
    let tree = relation_tree(source_relid)?;
    let existing = capture_triggers(function_oid)?;
    let first_capture = existing.is_empty();
    let mut changed = false;
    for trigger in existing.iter().filter(|t| !tree.contains(&t.table)) {
        let table = relation_name(trigger.table)?;
        exec(&format!("DROP TRIGGER {} ON {}", quote_ident(&trigger.name), table.to_sql()), &[])?;
        changed = true;
    }
    let function = capture_function_name(source_relid);
    for relid in tree {
        let table = relation_name(relid)?;
        for (suffix, event, referencing) in TRIGGERS {
            let name = trigger_name(source_relid, suffix);
            if existing.iter().any(|t| t.table == relid && t.name == name) {
                continue;
            }
            exec(
                &format!(
                    "CREATE TRIGGER {} AFTER {event} ON {} {referencing} FOR EACH STATEMENT EXECUTE FUNCTION {}()",
                    quote_ident(&name),
                    table.to_sql(),
                    function.to_sql()
                ),
                &[],
            )?;
            exec(&format!("ALTER TABLE {} ENABLE ALWAYS TRIGGER {}", table.to_sql(), quote_ident(&name)), &[])?;
            changed = true;
        }
    }
    // AUTO dependencies on the extension for the new triggers.
    for trigger in capture_triggers(function_oid)? {
        if !existing.iter().any(|t| t.oid == trigger.oid) {
            record_auto_dependency_on_extension(pg_sys::TriggerRelationId, trigger.oid, extension);
        }
    }
    Ok(changed && !first_capture)
}

/// The captured sources affected by DDL on relation `relid`: `relid` itself or any
/// partitioned table above it that is captured.
pub fn captured_sources_affected_by(relid: pg_sys::Oid) -> PgtResult<Vec<pg_sys::Oid>> {
    query_map(
        "SELECT ct.source_relid FROM pgtrickle.pgt_change_tracking ct \
         WHERE ct.source_relid = $1 \
            OR ct.source_relid IN (SELECT a.relid::pg_catalog.oid FROM pg_catalog.pg_partition_ancestors($1::pg_catalog.regclass) a) \
         ORDER BY 1",
        &[relid.into()],
        |row| col(row, 1),
    )
}

fn record_auto_dependency_on_extension(class_id: pg_sys::Oid, object_id: pg_sys::Oid, extension: pg_sys::Oid) {
    let depender = pg_sys::ObjectAddress { classId: class_id, objectId: object_id, objectSubId: 0 };
    let referenced = pg_sys::ObjectAddress { classId: pg_sys::ExtensionRelationId, objectId: extension, objectSubId: 0 };
    unsafe { pg_sys::recordDependencyOn(&depender, &referenced, pg_sys::DependencyType::DEPENDENCY_AUTO) };
}

struct CaptureTrigger {
    oid: pg_sys::Oid,
    table: pg_sys::Oid,
    name: String,
}

/// Every trigger that calls capture function `function_oid`, wherever it is.
fn capture_triggers(function_oid: pg_sys::Oid) -> PgtResult<Vec<CaptureTrigger>> {
    query_map(
        "SELECT oid, tgrelid, tgname::text FROM pg_catalog.pg_trigger WHERE tgfoid = $1 ORDER BY oid",
        &[function_oid.into()],
        |row| Ok(CaptureTrigger { oid: col(row, 1)?, table: col(row, 2)?, name: col(row, 3)? }),
    )
}

/// Stops capturing `source_relid` if no stream table reads it any more: drops its
/// triggers (wherever they are), capture function and change buffer. A source that
/// was itself dropped has lost its triggers already; the rest goes here.
pub fn release_capture_if_unused(source_relid: pg_sys::Oid) -> PgtResult<()> {
    let _internal = InternalDdl::begin();
    as_extension_owner(|| {
        lock_source(source_relid, false)?;
        if catalog::source_has_consumers(source_relid)? {
            return Ok(());
        }
        let Some(tracking) = catalog::change_tracking(source_relid)? else {
            return Ok(());
        };
        for trigger in capture_triggers(tracking.capture_function)? {
            let table = relation_name(trigger.table)?;
            exec(&format!("DROP TRIGGER {} ON {}", quote_ident(&trigger.name), table.to_sql()), &[])?;
        }
        exec(&format!("DROP FUNCTION IF EXISTS {}()", capture_function_name(source_relid).to_sql()), &[])?;
        exec(&format!("DROP TABLE IF EXISTS {}", buffer_name(source_relid).to_sql()), &[])?;
        catalog::delete_change_tracking(source_relid)
    })
}

/// Deletes the change-buffer rows of `source_relid` that every consumer's frontier
/// has consumed (`pgt_core::frontier`); a consumer without a frontier needs nothing
/// (its next refresh is a full recomputation). Skipped (returns 0) while another
/// transaction manages this source's capture — it may be adding a consumer this
/// transaction cannot see yet; the next refresh trims. The DELETE runs in the
/// latest snapshot, so every committed consumer counts whatever the isolation
/// level. Returns the number of rows deleted.
pub fn trim_buffer(source_relid: pg_sys::Oid) -> PgtResult<u64> {
    let consumed = consumed_by_frontier_sql("b", "st.frontier", "st.frontier_xid", "st.frontier_cid");
    as_extension_owner(|| {
        if catalog::change_tracking(source_relid)?.is_none() || !lock_source(source_relid, true)? {
            return Ok(0);
        }
        StatementSnapshot::latest().exec(&format!(
            "DELETE FROM {} b WHERE NOT EXISTS ( \
               SELECT 1 FROM pgtrickle.pgt_dependencies d \
               JOIN pgtrickle.pgt_stream_tables st USING (pgt_id) \
               WHERE d.source_relid = {} AND st.frontier IS NOT NULL \
                 AND NOT COALESCE({consumed}, false))",
            buffer_name(source_relid).to_sql(),
            source_relid.to_u32()
        ))
    })
}
