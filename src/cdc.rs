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
//!   STATEMENT; INSERT/UPDATE/DELETE with transition tables), each calling
//!   `pgtrickle._capture_changes('<oid>')`, which hands the statement to the
//!   capture function ([`forward_to_capture_function`]): the triggers name only
//!   an object of the extension, so that a dump holding the source (which
//!   holds its triggers) restores wherever pg_trickle is installed; `ENABLE ALWAYS`, so
//!   they fire under `session_replication_role = replica` too) on `S` and, for a
//!   partitioned table, on every partition (a statement aimed at a partition fires
//!   only that partition's statement triggers). Foreign partitions cannot carry
//!   transition-table triggers and are skipped.
//!
//! One buffer serves every stream table reading `S`; it is created with the first
//! and dropped with the last (`pgt_change_tracking` records it). The buffer and
//! the capture function are extension members and the triggers carry an AUTO
//! dependency on the extension, so `DROP EXTENSION pg_trickle` removes them
//! without CASCADE and pg_dump leaves buffer and function out (their names and
//! rows belong to this database: `crate::restore`); the triggers have an AUTO
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

use crate::activity::InternalDdl;
use crate::catalog::{self, ChangeTracking};
use crate::error::{PgtError, PgtResult};
use crate::parse::relation_name;
use crate::privilege::{as_extension_owner, extension_oid, record_auto_dependency_on_extension};
use crate::spi::{col, exec, kept, query_map, query_one, StatementSnapshot};
use pgrx::pg_sys;
use pgrx::PgSqlErrorCode;
use pgt_core::frontier::consumed_by_frontier_sql;
use pgt_core::ident::{quote_ident, quote_literal, QualifiedName};

pub use crate::objects::{buffer_name, CHANGES_SCHEMA};

/// The change buffer's own columns; a source column may not have these names.
pub const BUFFER_META_COLUMNS: [&str; 2] = [pgt_delta::names::TXID, pgt_delta::names::ACTION];

fn capture_function_name(source_relid: pg_sys::Oid) -> QualifiedName {
    QualifiedName::new(CHANGES_SCHEMA, format!("capture_{}", source_relid.to_u32()))
}

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
        Ok(query_one::<bool>(kept("SELECT pg_catalog.pg_try_advisory_xact_lock($1)"), &[key.into()])?.unwrap_or(false))
    } else {
        exec(kept("SELECT pg_catalog.pg_advisory_xact_lock($1)"), &[key.into()])?;
        Ok(true)
    }
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
/// 42939 when a source column is named like a buffer meta column; 42501 when
/// `owner` (the stream table's) may not start capture there
/// ([`may_start_capture`]) and no capture exists.
pub fn ensure_capture(source_relid: pg_sys::Oid, owner: pg_sys::Oid) -> PgtResult<()> {
    let _internal = InternalDdl::begin();
    as_extension_owner(|| {
        lock_source(source_relid, false)?;
        if catalog::change_tracking(source_relid)?.is_some() {
            return Ok(());
        }
        let source = relation_name(source_relid)?;
        // Decided before, but capture may have gone since (a concurrent drop):
        // only a role that could create triggers here may start it again.
        if !may_start_capture(source_relid, owner)? {
            return Err(PgtError::new(
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!("capturing changes of {source} may not be started by role {}", role_name(owner)?),
            )
            .detail("The capture this stream table would have used was removed meanwhile.")
            .hint("Ask the table's owner to grant TRIGGER on it, or use refresh_mode => 'FULL'."));
        }
        let columns = checked_columns(source_relid, &source)?;
        let extension = extension_oid()?;
        let buffer_relid = create_buffer(source_relid, &source, &columns, extension)?;
        let function_oid = write_capture_function(source_relid, &columns)?;
        crate::privilege::record_extension_membership(pg_sys::ProcedureRelationId, function_oid, extension);
        let _ = sync_triggers(source_relid, extension)?;
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
    /// Capture triggers a table owner had disabled, dropped or changed, now
    /// repaired (see `sync_triggers`).
    pub repaired: Vec<String>,
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
        let triggers = sync_triggers(source_relid, extension)?;
        // Triggers repaired here were switched off by the very command that
        // runs this (event triggers fire at its end): no write went uncaptured.
        let tree_changed = triggers.tree_changed;
        // Compare with what capture was built for, not with the buffer: a cascade
        // (DROP TYPE ... CASCADE) drops a column from source and buffer alike.
        let new_signature = signature(source_relid, &columns)?;
        let mut sync = CaptureSync { pending_changes_lost: tree_changed, repaired: triggers.repaired, ..CaptureSync::default() };
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
                crate::objects::drop_internal_table(&buffer_name(source_relid).to_sql())?;
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
    let key = crate::objects::key_attnums(source_relid)?.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(",");
    Ok(format!("{columns};key:{key}"))
}

/// Grants SELECT on the change buffer of `source_relid` to exactly the owners
/// of the DIFFERENTIAL stream tables reading it who may read all of the source
/// now (superusers need nothing): their refreshes read it, running as them.
/// Called whenever that may have changed: stream tables created, altered or
/// dropped, an owner changed, GRANT / REVOKE, row-level security switched, and
/// by a refresh whose owner lacks the grant. Reading is decided anyway by the
/// buffer's policy (`pgtrickle._may_read_changes`), at the moment of reading.
pub fn sync_buffer_grants(source_relid: pg_sys::Oid) -> PgtResult<()> {
    // Our own GRANT/REVOKE must not wake our event trigger's handler.
    let _internal = InternalDdl::begin();
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
        if let Some(tracking) = catalog::change_tracking(source_relid)? {
            crate::privilege::record_initial_privileges(pg_sys::RelationRelationId, tracking.buffer_relid);
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
            "CREATE TABLE {} ({txid} pg_catalog.xid8 NOT NULL DEFAULT pg_catalog.pg_current_xact_id(), \
             {action} \"char\" NOT NULL{column_defs})",
            buffer.to_sql(),
            txid = pgt_delta::names::TXID,
            action = pgt_delta::names::ACTION
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
    // Who may read the buffer is decided when reading, by what they may read
    // of the source (`pgtrickle._may_read_changes`): SELECT on it and no
    // row-level security applying. Grants ([`sync_buffer_grants`]) only follow.
    // The buffer's owner (the extension owner, a superuser) is not subject to
    // the policy, so capture and trimming are not either.
    exec(&format!("ALTER TABLE {} ENABLE ROW LEVEL SECURITY", buffer.to_sql()), &[])?;
    exec(
        &format!(
            "CREATE POLICY pgt_source_readers ON {} FOR SELECT USING ((SELECT pgtrickle._may_read_changes({}::pg_catalog.oid)))",
            buffer.to_sql(),
            source_relid.to_u32()
        ),
        &[],
    )?;
    // An extension member: DROP EXTENSION removes the buffer silently, and
    // pg_dump leaves it out (its name and rows belong to this database).
    crate::privilege::record_extension_membership(pg_sys::RelationRelationId, buffer_relid, extension);
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
             INSERT INTO {buffer} ({action}{target}) {ins};\n\
           ELSIF TG_OP = 'UPDATE' THEN\n\
             INSERT INTO {buffer} ({action}{target}) {upd_old} UNION ALL {upd_new};\n\
           ELSIF TG_OP = 'DELETE' THEN\n\
             INSERT INTO {buffer} ({action}{target}) {del};\n\
           ELSE\n\
             INSERT INTO {buffer} ({action}) VALUES ('T');\n\
           END IF;\n\
           PERFORM pgtrickle._wake_scheduler();\n\
           RETURN NULL;\n\
         END\n",
        ins = images("I", "__pgt_new"),
        upd_old = images("D", "__pgt_old"),
        upd_new = images("I", "__pgt_new"),
        del = images("D", "__pgt_old"),
        action = pgt_delta::names::ACTION,
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

/// One of the four capture triggers.
struct TriggerSpec {
    /// Name suffix (`pgt_cdc_<oid>_<suffix>`).
    suffix: &'static str,
    /// `pg_trigger.tgtype`: AFTER, FOR EACH STATEMENT, the event's bit
    /// (`catalog/pg_trigger.h`).
    tgtype: i16,
    /// The event.
    event: &'static str,
    /// The transition-table clause.
    referencing: &'static str,
    /// The transition tables' names.
    old_table: Option<&'static str>,
    new_table: Option<&'static str>,
}

const TRIGGER_SPECS: [TriggerSpec; 4] = [
    TriggerSpec { suffix: "ins", tgtype: 4, event: "INSERT", referencing: "REFERENCING NEW TABLE AS __pgt_new", old_table: None, new_table: Some("__pgt_new") },
    TriggerSpec {
        suffix: "upd",
        tgtype: 16,
        event: "UPDATE",
        referencing: "REFERENCING OLD TABLE AS __pgt_old NEW TABLE AS __pgt_new",
        old_table: Some("__pgt_old"),
        new_table: Some("__pgt_new"),
    },
    TriggerSpec { suffix: "del", tgtype: 8, event: "DELETE", referencing: "REFERENCING OLD TABLE AS __pgt_old", old_table: Some("__pgt_old"), new_table: None },
    TriggerSpec { suffix: "trunc", tgtype: 32, event: "TRUNCATE", referencing: "", old_table: None, new_table: None },
];

impl TriggerSpec {
    /// Whether `t` is exactly this trigger, calling `dispatcher` for `source`.
    fn matches(&self, t: &CaptureTrigger, dispatcher: pg_sys::Oid, source: pg_sys::Oid) -> bool {
        t.function == dispatcher
            && t.argument.as_deref() == Some(source.to_u32().to_string().as_str())
            && t.tgtype == self.tgtype
            && !t.has_condition
            && t.old_table.as_deref() == self.old_table
            && t.new_table.as_deref() == self.new_table
    }
}

/// What [`sync_triggers`] did.
#[derive(Debug, Default)]
struct TriggerSync {
    /// Relations came into or left the partition tree since capture began.
    tree_changed: bool,
    /// Capture triggers that had been disabled, dropped, renamed or replaced
    /// (by a table owner; pg_trickle's own triggers are never touched that
    /// way) and were repaired: writes may have gone uncaptured.
    repaired: Vec<String>,
}

/// Makes the capture triggers of `source_relid` exactly what capture needs: on
/// every relation of its partition tree, the four triggers of [`TRIGGER_SPECS`]
/// under their names, calling [`CAPTURE_DISPATCHER`] with the source's OID, without a WHEN
/// condition, enabled ALWAYS (so `session_replication_role = replica` and
/// `DISABLE TRIGGER USER` do not switch them off). A trigger that differs —
/// disabled, renamed, replaced (`CREATE OR REPLACE TRIGGER`), or left on a
/// relation no longer in the tree — is dropped or re-enabled, and a missing one
/// created.
fn sync_triggers(source_relid: pg_sys::Oid, extension: pg_sys::Oid) -> PgtResult<TriggerSync> {
    let tree = relation_tree(source_relid)?;
    let prefix = format!("pgt_cdc_{}_", source_relid.to_u32());
    let dispatcher = capture_dispatcher()?;
    let existing = capture_triggers(source_relid, dispatcher, &prefix)?;
    let first_capture = existing.is_empty();
    let mut sync = TriggerSync::default();
    let spec_of =
        |t: &CaptureTrigger| TRIGGER_SPECS.iter().find(|spec| trigger_name(source_relid, spec.suffix) == t.name && tree.contains(&t.table));
    let sound = |t: &CaptureTrigger| spec_of(t).is_some_and(|spec| spec.matches(t, dispatcher, source_relid));
    for trigger in &existing {
        let table = relation_name(trigger.table)?;
        if !sound(trigger) {
            exec(&format!("DROP TRIGGER {} ON {}", quote_ident(&trigger.name), table.to_sql()), &[])?;
            if tree.contains(&trigger.table) {
                sync.repaired.push(format!("trigger {} on {table} was changed", trigger.name));
            } else {
                sync.tree_changed = true;
            }
        } else if trigger.enabled != "A" {
            exec(&format!("ALTER TABLE {} ENABLE ALWAYS TRIGGER {}", table.to_sql(), quote_ident(&trigger.name)), &[])?;
            sync.repaired.push(format!("trigger {} on {table} was disabled", trigger.name));
        }
    }
    let kept: Vec<&CaptureTrigger> = existing.iter().filter(|t| sound(t)).collect();
    for relid in &tree {
        let table = relation_name(*relid)?;
        for spec in &TRIGGER_SPECS {
            let name = trigger_name(source_relid, spec.suffix);
            if kept.iter().any(|t| t.table == *relid && t.name == name) {
                continue;
            }
            exec(
                &format!(
                    "CREATE TRIGGER {} AFTER {} ON {} {} FOR EACH STATEMENT EXECUTE FUNCTION {CAPTURE_DISPATCHER}('{}')",
                    quote_ident(&name),
                    spec.event,
                    table.to_sql(),
                    spec.referencing,
                    source_relid.to_u32()
                ),
                &[],
            )?;
            exec(&format!("ALTER TABLE {} ENABLE ALWAYS TRIGGER {}", table.to_sql(), quote_ident(&name)), &[])?;
            if !first_capture {
                if existing.iter().any(|t| t.table == *relid) {
                    if !sync.repaired.iter().any(|r| r.contains(&format!("trigger {name} on {table} "))) {
                        sync.repaired.push(format!("trigger {name} on {table} was dropped"));
                    }
                } else {
                    sync.tree_changed = true;
                }
            }
        }
    }
    // AUTO dependencies on the extension for the new triggers.
    for trigger in capture_triggers(source_relid, dispatcher, &prefix)? {
        if !existing.iter().any(|t| t.oid == trigger.oid) {
            record_auto_dependency_on_extension(pg_sys::TriggerRelationId, trigger.oid, extension);
        }
    }
    Ok(sync)
}

/// What a refresh checks about one captured source before trusting its change
/// window ([`source_checks`]).
#[derive(Debug, Clone)]
pub struct SourceCheck {
    /// The source.
    pub relid: pg_sys::Oid,
    /// Its name, for messages.
    pub name: String,
    /// The stream table's owner has SELECT on the whole table.
    pub readable: bool,
    /// Row-level security on it applies to the owner.
    pub row_security: bool,
    /// The owner may read its change buffer as granted (superusers need no grant).
    pub granted: bool,
    /// It is captured (has a change buffer).
    pub captured: bool,
    /// Its capture triggers are all there, enabled ALWAYS, unchanged (false
    /// when it is not captured).
    pub capture_intact: bool,
}

impl SourceCheck {
    /// Why the owner's rights rule out DIFFERENTIAL refresh over this source.
    pub fn blocker(&self, owner_name: &str) -> Option<String> {
        if !self.readable {
            Some(format!(
                "sources its owner {owner_name} cannot read in full ({}: column privileges only, or reached through a view)",
                self.name
            ))
        } else if self.row_security {
            Some(format!("row-level security on {}, which applies to its owner {owner_name}", self.name))
        } else {
            None
        }
    }
}

/// Checks, one catalog query per source, what a DIFFERENTIAL refresh of a stream table
/// owned by `owner` relies on for each of its captured `sources`: that the owner
/// may still read all of it (privileges and row-level security change at any
/// GRANT, REVOKE, policy switch or membership change), holds the grant on its
/// buffer (a new owner after `ALTER TABLE ... OWNER TO` does not yet), and that
/// its capture is intact (the event triggers that repair capture at once can be
/// bypassed by a superuser with `event_triggers = off`).
pub fn source_checks(owner: pg_sys::Oid, sources: &[pg_sys::Oid]) -> PgtResult<Vec<SourceCheck>> {
    // One source a run: a statement about one relation keeps one generic
    // plan of index lookups (an array of them would be re-planned every run,
    // its generic estimate never matching a short array's).
    let mut checks = Vec::with_capacity(sources.len());
    for &source in sources {
        checks.extend(query_map(
            kept(
                "SELECT c.oid, \
                    pg_catalog.has_table_privilege($2, c.oid, 'SELECT'), \
                    c.relrowsecurity AND NOT (r.rolsuper OR r.rolbypassrls \
                        OR (pg_catalog.pg_has_role($2, c.relowner, 'USAGE') AND NOT c.relforcerowsecurity)), \
                    ct.buffer_relid IS NOT NULL AND (r.rolsuper OR pg_catalog.has_table_privilege($2, ct.buffer_relid, 'SELECT')), \
                    ct.buffer_relid IS NOT NULL, \
                    ct.buffer_relid IS NOT NULL \
                    AND (SELECT pg_catalog.count(*) FROM pg_catalog.pg_trigger t \
                         WHERE t.tgrelid IN (SELECT p.relid FROM pg_catalog.pg_partition_tree(c.oid) p UNION SELECT c.oid) \
                           AND t.tgfoid = pg_catalog.to_regprocedure('pgtrickle._capture_changes()') AND t.tgenabled = 'A' AND t.tgqual IS NULL \
                           AND t.tgargs = pg_catalog.convert_to(c.oid::text, pg_catalog.getdatabaseencoding()) || '\\x00'::bytea \
                           AND pg_catalog.starts_with(t.tgname::text, 'pgt_cdc_' || c.oid::text || '_')) \
                        = 4 * (SELECT pg_catalog.count(*) FROM (SELECT p.relid FROM pg_catalog.pg_partition_tree(c.oid) p \
                                      WHERE (SELECT pc.relkind FROM pg_catalog.pg_class pc WHERE pc.oid = p.relid) <> 'f' \
                                      UNION SELECT c.oid) tree) \
                 FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_roles r ON r.oid = $2 \
                 LEFT JOIN pgtrickle.pgt_change_tracking ct ON ct.source_relid = c.oid \
                 WHERE c.oid = $1",
            ),
            &[source.into(), owner.into()],
            |row| {
                let relid = col(row, 1)?;
                Ok(SourceCheck {
                    relid,
                    name: relation_name(relid)?.to_string(),
                    readable: col(row, 2)?,
                    row_security: col(row, 3)?,
                    granted: col(row, 4)?,
                    captured: col(row, 5)?,
                    capture_intact: col(row, 6)?,
                })
            },
        )?);
    }
    checks.sort_by_key(|c| c.relid.to_u32());
    Ok(checks)
}

/// The number of pages (`BLCKSZ` blocks of the main fork) of the change
/// buffer of `source_relid`: its physical size, which the planner reads at
/// every planning. 0 when the source has no buffer (also one dropped
/// meanwhile); it is only a planning hint, so nothing fails.
pub fn buffer_pages(source_relid: pg_sys::Oid) -> u64 {
    let buffer = buffer_name(source_relid);
    let Ok(schema) = std::ffi::CString::new(buffer.schema.as_str()) else { return 0 };
    let Ok(name) = std::ffi::CString::new(buffer.name.as_str()) else { return 0 };
    // SAFETY: catalog-cache lookups and a relation-cache entry opened and
    // closed here; a buffer dropped meanwhile reads as empty.
    unsafe {
        let namespace = pg_sys::get_namespace_oid(schema.as_ptr(), true);
        if namespace == pg_sys::InvalidOid {
            return 0;
        }
        let relid = pg_sys::get_relname_relid(name.as_ptr(), namespace);
        if relid == pg_sys::InvalidOid {
            return 0;
        }
        let rel = pg_sys::RelationIdGetRelation(relid);
        if rel.is_null() {
            return 0;
        }
        let pages = pg_sys::RelationGetNumberOfBlocksInFork(rel, pg_sys::ForkNumber::MAIN_FORKNUM);
        pg_sys::RelationClose(rel);
        u64::from(pages)
    }
}

/// When the change buffer of `source_relid` is larger than
/// `pg_trickle.change_buffer_alert_kb`: its size in bytes and the DIFFERENTIAL
/// stream tables holding it back, least recently refreshed first (a buffer
/// keeps what its slowest reader has not applied).
pub fn buffer_alert(source_relid: pg_sys::Oid) -> PgtResult<Option<(i64, Vec<String>)>> {
    let limit = i64::from(crate::guc::CHANGE_BUFFER_ALERT_KB.get()) * 1024;
    if limit <= 0 {
        return Ok(None);
    }
    let Some(tracking) = catalog::change_tracking(source_relid)? else { return Ok(None) };
    let size = query_one::<i64>(kept("SELECT pg_catalog.pg_total_relation_size($1)"), &[tracking.buffer_relid.into()])?.unwrap_or(0);
    if size <= limit {
        return Ok(None);
    }
    let readers = query_map(
        "SELECT st.pgt_relid FROM pgtrickle.pgt_dependencies d \
         JOIN pgtrickle.pgt_stream_tables st USING (pgt_id) \
         WHERE d.source_relid = $1 AND st.effective_refresh_mode = 'DIFFERENTIAL' AND st.frontier IS NOT NULL \
         ORDER BY st.data_timestamp NULLS FIRST, 1 LIMIT 5",
        &[source_relid.into()],
        |row| Ok(relation_name(col(row, 1)?)?.to_string()),
    )?;
    Ok(Some((size, readers)))
}

/// Repairs the capture triggers of `source_relid` (see [`sync_triggers`]);
/// returns what was repaired (empty when capture was intact).
pub fn repair_capture(source_relid: pg_sys::Oid) -> PgtResult<Vec<String>> {
    let _internal = InternalDdl::begin();
    as_extension_owner(|| {
        lock_source(source_relid, false)?;
        if catalog::change_tracking(source_relid)?.is_none() {
            return Ok(Vec::new());
        }
        let sync = sync_triggers(source_relid, extension_oid()?)?;
        Ok(sync.repaired)
    })
}

/// The 0.1.0 -> 0.2.0 upgrade of capture (run by its script): capture
/// functions, change buffers and state tables, which 0.1.0 tied to the
/// extension by AUTO dependencies, become extension members with their
/// privileges recorded as initial ones (so that pg_dump leaves them out), and
/// every captured source's triggers are pointed at [`CAPTURE_DISPATCHER`]
/// ([`repair_capture`], in OID order; 0.1.0's called the capture functions
/// directly).
pub fn upgrade_capture_from_0_1_0() -> PgtResult<()> {
    let extension = extension_oid()?;
    let members = query_map(
        "SELECT d.classid, d.objid FROM pg_catalog.pg_depend d \
         WHERE d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass AND d.refobjid = $1 AND d.deptype = 'a' \
           AND (d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objid IN (SELECT c.oid FROM pg_catalog.pg_class c \
                    WHERE c.relnamespace IN ('pgtrickle_changes'::pg_catalog.regnamespace, 'pgtrickle_state'::pg_catalog.regnamespace)) \
                OR d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND d.objid IN (SELECT p.oid FROM pg_catalog.pg_proc p \
                    WHERE p.pronamespace = 'pgtrickle_changes'::pg_catalog.regnamespace))",
        &[extension.into()],
        |row| Ok((col::<pg_sys::Oid>(row, 1)?, col::<pg_sys::Oid>(row, 2)?)),
    )?;
    for (class_id, object_id) in members {
        crate::privilege::make_extension_member(class_id, object_id, extension);
    }
    let mut sources = catalog::captured_sources()?;
    sources.sort_by_key(|s| s.to_u32());
    for source in sources {
        if unsafe { !pg_sys::get_rel_name(source).is_null() } {
            repair_capture(source)?;
        }
    }
    Ok(())
}

/// Whether `role` may start capturing changes of `source_relid`: PostgreSQL
/// lets only roles with the table owner's privileges, or the TRIGGER privilege
/// on it, create triggers on a table, and capture is triggers on the owner's
/// table that take a `SHARE ROW EXCLUSIVE` lock when created and cost every
/// later write. A role that may only read the table uses capture only where it
/// exists already.
pub fn may_start_capture(source_relid: pg_sys::Oid, role: pg_sys::Oid) -> PgtResult<bool> {
    Ok(query_one::<bool>(
        "SELECT pg_catalog.pg_has_role($2, c.relowner, 'USAGE') OR pg_catalog.has_table_privilege($2, c.oid, 'TRIGGER') \
         FROM pg_catalog.pg_class c WHERE c.oid = $1",
        &[source_relid.into(), role.into()],
    )?
    .unwrap_or(false))
}

/// Why the stream table owned by `owner`, reading the captured relations
/// `sources`, cannot be maintained differentially for that owner, or `None`.
/// Its refreshes read the sources' change buffers, which hold every row and
/// column; so the owner must be allowed to read all of each source (SELECT on
/// the table, not only on some columns or through a view), row-level security
/// must not apply to it on any source, and capture must exist or be startable
/// by it ([`may_start_capture`]).
pub fn differential_blocker(owner: pg_sys::Oid, sources: &[pg_sys::Oid]) -> PgtResult<Option<String>> {
    let owner_name = role_name(owner)?;
    for check in source_checks(owner, sources)? {
        if let Some(blocker) = check.blocker(&owner_name) {
            return Ok(Some(blocker));
        }
        if !check.captured && !may_start_capture(check.relid, owner)? {
            return Ok(Some(format!(
                "capturing changes of {}, which its owner {owner_name} may not start (only the table's owner or a role \
                 with the TRIGGER privilege on it may)",
                check.name
            )));
        }
    }
    Ok(None)
}

/// The name of role `role`.
pub fn role_name(role: pg_sys::Oid) -> PgtResult<String> {
    query_one::<String>(kept("SELECT rolname::text FROM pg_catalog.pg_roles WHERE oid = $1"), &[role.into()])?
        .ok_or_else(|| PgtError::internal(format!("role with OID {} does not exist", role.to_u32())))
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

struct CaptureTrigger {
    oid: pg_sys::Oid,
    table: pg_sys::Oid,
    name: String,
    function: pg_sys::Oid,
    tgtype: i16,
    enabled: String,
    has_condition: bool,
    old_table: Option<String>,
    new_table: Option<String>,
    /// Its one argument, if it has exactly one.
    argument: Option<String>,
}

/// Every trigger that calls `dispatcher` for `source_relid` or is named with
/// capture's `prefix` (`pgt_cdc_<source oid>_`), wherever it is.
fn capture_triggers(source_relid: pg_sys::Oid, dispatcher: pg_sys::Oid, prefix: &str) -> PgtResult<Vec<CaptureTrigger>> {
    query_map(
        "SELECT oid, tgrelid, tgname::text, tgfoid, tgtype, tgenabled::text, tgqual IS NOT NULL, \
                tgoldtable::text, tgnewtable::text, \
                CASE WHEN tgnargs = 1 THEN pg_catalog.convert_from(pg_catalog.substring(tgargs, 1, pg_catalog.length(tgargs) - 1), \
                                                                   pg_catalog.getdatabaseencoding()) END \
         FROM pg_catalog.pg_trigger WHERE NOT tgisinternal \
           AND (tgfoid = $1 AND tgargs = pg_catalog.convert_to($3, pg_catalog.getdatabaseencoding()) || '\\x00'::bytea \
                OR pg_catalog.starts_with(tgname::text, $2)) \
         ORDER BY oid",
        &[dispatcher.into(), prefix.into(), source_relid.to_u32().to_string().into()],
        |row| {
            Ok(CaptureTrigger {
                oid: col(row, 1)?,
                table: col(row, 2)?,
                name: col(row, 3)?,
                function: col(row, 4)?,
                tgtype: col(row, 5)?,
                enabled: col(row, 6)?,
                has_condition: col(row, 7)?,
                old_table: row.get::<String>(8)?,
                new_table: row.get::<String>(9)?,
                argument: row.get::<String>(10)?,
            })
        },
    )
}

/// The trigger function every capture trigger calls, with the OID of the
/// captured source as its argument ([`forward_to_capture_function`]).
pub const CAPTURE_DISPATCHER: &str = "pgtrickle._capture_changes";

/// The OID of [`CAPTURE_DISPATCHER`].
fn capture_dispatcher() -> PgtResult<pg_sys::Oid> {
    // Looked up at execution (to_regprocedure), not folded into a kept plan:
    // DROP and CREATE EXTENSION in one session give it a new OID.
    query_one::<pg_sys::Oid>(kept("SELECT pg_catalog.to_regprocedure('pgtrickle._capture_changes()')::pg_catalog.oid"), &[])?
        .ok_or_else(|| PgtError::internal("function pgtrickle._capture_changes() is missing"))
}

/// The body of [`CAPTURE_DISPATCHER`]: hands the statement that fired a
/// capture trigger (`data`, with its transition tables) to the capture
/// function of the source the trigger's argument names,
/// `pgtrickle_changes.capture_<oid>`, as if the trigger called it. Does
/// nothing when the trigger is not one of capture's for that source on that
/// source or one of its partitions, or when the capture function does not
/// exist: such a trigger was restored from a dump of another database, and
/// its source is captured again by `pgtrickle.finish_restore()`
/// (`crate::restore`).
///
/// # Safety
/// `data` must be the trigger data of the running trigger call.
pub unsafe fn forward_to_capture_function(data: &pg_sys::TriggerData) -> PgtResult<()> {
    let trigger = unsafe { &*data.tg_trigger };
    // A trigger once found to be capture's own keeps its call information
    // (and cannot change: a changed capture trigger is dropped and made anew).
    let kept_call = CAPTURE_CALLS.with(|c| c.borrow().get(&trigger.tgoid.to_u32()).copied());
    let flinfo = match kept_call {
        Some((oid, flinfo, source)) if capture_function_is_current(oid, source) => flinfo,
        _ => match checked_call_info(data)? {
            Some(flinfo) => flinfo,
            None => return Ok(()),
        },
    };
    unsafe {
        let fcinfo = pg_sys::palloc0(std::mem::size_of::<pg_sys::FunctionCallInfoBaseData>()).cast::<pg_sys::FunctionCallInfoBaseData>();
        (*fcinfo).flinfo = flinfo;
        (*fcinfo).context = (data as *const pg_sys::TriggerData).cast_mut().cast();
        (*fcinfo).fncollation = pg_sys::InvalidOid;
        (*fcinfo).nargs = 0;
        let Some(call) = (*flinfo).fn_addr else {
            return Err(PgtError::internal("a capture function has no entry point"));
        };
        // The capture function may raise an error: through PostgreSQL's
        // error handling, not across Rust frames.
        pg_sys::ffi::pg_guard_ffi_boundary(|| call(fcinfo));
    }
    Ok(())
}

/// The call information of the capture function the trigger of `data`
/// forwards to, made and kept for the trigger, after checking that the
/// trigger is capture's own (see [`forward_to_capture_function`]); `None`
/// when it is not, or when the function does not exist.
unsafe fn checked_call_info(data: &pg_sys::TriggerData) -> PgtResult<Option<*mut pg_sys::FmgrInfo>> {
    let trigger = unsafe { &*data.tg_trigger };
    if trigger.tgnargs != 1 || trigger.tgargs.is_null() {
        return Ok(None);
    }
    // SAFETY: tgargs holds tgnargs NUL-terminated strings.
    let argument = unsafe { std::ffi::CStr::from_ptr(*trigger.tgargs) }.to_string_lossy();
    let Ok(source) = argument.parse::<u32>() else { return Ok(None) };
    let source = pg_sys::Oid::from(source);
    let name = unsafe { std::ffi::CStr::from_ptr(trigger.tgname) }.to_string_lossy();
    if !name.starts_with(&format!("pgt_cdc_{}_", source.to_u32())) {
        return Ok(None);
    }
    let relid = unsafe { (*data.tg_relation).rd_id };
    if relid != source && !(unsafe { pg_sys::get_rel_relispartition(relid) } && is_ancestor(source, relid)?) {
        return Ok(None);
    }
    capture_function_call_info(source, trigger.tgoid)
}

thread_local! {
    /// Per capture trigger (OID), the capture function it forwards to and the
    /// call information made for it, kept for the backend's life, as
    /// PostgreSQL keeps each trigger's own call information: looking them up
    /// costs more than the rest of forwarding a statement. Per trigger, not
    /// per function: PL/pgSQL keeps the compiled function (with its plans over
    /// the trigger's transition tables) in the call information, and compiles
    /// a trigger function per trigger and relation.
    static CAPTURE_CALLS: std::cell::RefCell<std::collections::HashMap<u32, (pg_sys::Oid, *mut pg_sys::FmgrInfo, pg_sys::Oid)>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// Whether function `oid` still exists as the capture function of `source`
/// (a function dropped and created again has a new OID).
fn capture_function_is_current(oid: pg_sys::Oid, source: pg_sys::Oid) -> bool {
    let function = capture_function_name(source);
    unsafe {
        let name = pg_sys::get_func_name(oid);
        if name.is_null() {
            return false;
        }
        let same_name = std::ffi::CStr::from_ptr(name).to_bytes() == function.name.as_bytes();
        let namespace = pg_sys::get_namespace_name(pg_sys::get_func_namespace(oid));
        same_name && !namespace.is_null() && std::ffi::CStr::from_ptr(namespace).to_bytes() == function.schema.as_bytes()
    }
}

/// The call information of the capture function of `source` for capture
/// trigger `trigger`, made and kept for the backend's life, or `None` when
/// there is no such function. A kept one is used while
/// [`capture_function_is_current`]; a replaced body (`CREATE OR REPLACE`,
/// same OID) is picked up by PL/pgSQL itself, which checks the function's row
/// at every call.
fn capture_function_call_info(source: pg_sys::Oid, trigger: pg_sys::Oid) -> PgtResult<Option<*mut pg_sys::FmgrInfo>> {
    CAPTURE_CALLS.with(|c| c.borrow_mut().remove(&trigger.to_u32()));
    let function = capture_function_name(source);
    let schema = std::ffi::CString::new(function.schema.as_str()).map_err(|_| PgtError::internal("NUL in a schema name"))?;
    let proc = std::ffi::CString::new(function.name.as_str()).map_err(|_| PgtError::internal("NUL in a function name"))?;
    unsafe {
        let names = pg_sys::list_make2_impl(
            pg_sys::NodeTag::T_List,
            pg_sys::ListCell { ptr_value: pg_sys::makeString(pg_sys::pstrdup(schema.as_ptr())).cast() },
            pg_sys::ListCell { ptr_value: pg_sys::makeString(pg_sys::pstrdup(proc.as_ptr())).cast() },
        );
        let oid = pg_sys::LookupFuncName(names, 0, std::ptr::null(), true);
        if oid == pg_sys::InvalidOid {
            return Ok(None);
        }
        let flinfo = pg_sys::MemoryContextAllocZero(pg_sys::TopMemoryContext, std::mem::size_of::<pg_sys::FmgrInfo>())
            .cast::<pg_sys::FmgrInfo>();
        pg_sys::fmgr_info_cxt(oid, flinfo, pg_sys::TopMemoryContext);
        CAPTURE_CALLS.with(|c| c.borrow_mut().insert(trigger.to_u32(), (oid, flinfo, source)));
        Ok(Some(flinfo))
    }
}

/// Whether `ancestor` is a partitioned table above `relid` (partitions' capture
/// triggers name their root source).
fn is_ancestor(ancestor: pg_sys::Oid, relid: pg_sys::Oid) -> PgtResult<bool> {
    query_one::<bool>(
        kept("SELECT $1 IN (SELECT a.relid FROM pg_catalog.pg_partition_ancestors($2) a)"),
        &[ancestor.into(), relid.into()],
    )?
    .ok_or_else(|| PgtError::internal("pg_partition_ancestors returned no row"))
}

/// Stops capturing `source_relid` if no DIFFERENTIAL stream table reads it any
/// more: drops its triggers (wherever they are), capture function and change
/// buffer. A source that was itself dropped has lost its triggers already; the
/// rest goes here.
///
/// Dropping triggers locks the table (`SHARE ROW EXCLUSIVE`) until the end of
/// the transaction. A role that could not have started capture there (neither
/// the table's owner nor holding TRIGGER on it, see [`may_start_capture`]) does
/// not take that lock: capture stays, unused, and the scheduler removes it in
/// a short transaction of its own ([`unused_capture`]). Meanwhile its buffer is
/// emptied at every refresh of any stream table over the table, as no one needs
/// its rows.
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
        let exists = unsafe { !pg_sys::get_rel_name(source_relid).is_null() };
        if exists && !may_start_capture(source_relid, crate::privilege::acting_role())? {
            return Ok(());
        }
        for trigger in capture_triggers(source_relid, capture_dispatcher()?, &format!("pgt_cdc_{}_", source_relid.to_u32()))? {
            let table = relation_name(trigger.table)?;
            exec(&format!("DROP TRIGGER {} ON {}", quote_ident(&trigger.name), table.to_sql()), &[])?;
        }
        crate::privilege::forget_extension_membership(pg_sys::ProcedureRelationId, tracking.capture_function);
        exec(&format!("DROP FUNCTION IF EXISTS {}()", capture_function_name(source_relid).to_sql()), &[])?;
        crate::objects::drop_internal_table(&buffer_name(source_relid).to_sql())?;
        catalog::delete_change_tracking(source_relid)
    })
}

/// Captured sources whose change buffer's grants differ from the roles that
/// need and may have them ([`sync_buffer_grants`]): after changes no event
/// reports (role memberships, BYPASSRLS). One query, for the scheduler's
/// housekeeping.
pub fn stale_buffer_grants() -> PgtResult<Vec<pg_sys::Oid>> {
    query_map(
        "SELECT ct.source_relid FROM pgtrickle.pgt_change_tracking ct \
         WHERE EXISTS ((SELECT a.grantee FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a \
                        WHERE c.oid = ct.buffer_relid AND a.privilege_type = 'SELECT' AND a.grantee <> c.relowner \
                        EXCEPT \
                        SELECT r.oid FROM pgtrickle.pgt_dependencies d \
                        JOIN pgtrickle.pgt_stream_tables st USING (pgt_id) \
                        JOIN pg_catalog.pg_class sc ON sc.oid = st.pgt_relid \
                        JOIN pg_catalog.pg_roles r ON r.oid = sc.relowner \
                        JOIN pg_catalog.pg_class s ON s.oid = d.source_relid \
                        WHERE d.source_relid = ct.source_relid AND st.effective_refresh_mode = 'DIFFERENTIAL' AND NOT r.rolsuper \
                          AND pg_catalog.has_table_privilege(r.oid, s.oid, 'SELECT') \
                          AND NOT (s.relrowsecurity AND NOT (r.rolbypassrls \
                                   OR (pg_catalog.pg_has_role(r.oid, s.relowner, 'USAGE') AND NOT s.relforcerowsecurity))))) \
         ORDER BY 1",
        &[],
        |row| col(row, 1),
    )
}

/// Captured sources that no DIFFERENTIAL stream table reads any more (capture
/// left behind by a role that could not remove it): the scheduler releases
/// them.
pub fn unused_capture() -> PgtResult<Vec<pg_sys::Oid>> {
    catalog::unused_captured_sources()
}

/// Holds the lock on capture of `source_relid` until the end of the
/// transaction ([`lock_source`]): trims of its buffer skip meanwhile. A refresh
/// that starts a stream table's frontier afresh (it had none) takes it before its
/// snapshot, because until it commits no frontier holds the buffer's rows for
/// that stream table: a concurrent refresh of another stream table could trim
/// rows committed after the snapshot, which this one will need next time.
pub fn hold_capture(source_relid: pg_sys::Oid) -> PgtResult<()> {
    lock_source(source_relid, false).map(|_| ())
}

/// Deletes the change-buffer rows of `source_relid` that every consumer's frontier
/// has consumed (`pgt_core::frontier`); a consumer without a frontier needs nothing
/// (its next refresh is a full recomputation), nor does one refreshed FULL. Skipped (returns 0) while another
/// transaction manages this source's capture — it may be adding a consumer this
/// transaction cannot see yet; the next refresh trims. The DELETE runs in the
/// latest snapshot, so every committed consumer counts whatever the isolation
/// level. Returns the number of rows deleted.
///
/// `previous_frontier` (the `pg_snapshot` text the refreshing consumer had
/// before this refresh): when another consumer's frontier is older still,
/// the oldest frontier did not move and nothing new can be deleted — the
/// DELETE, which reads the whole buffer, is skipped. (The oldest consumer's
/// own refresh trims.)
pub fn trim_buffer(source_relid: pg_sys::Oid, previous_frontier: Option<&str>) -> PgtResult<u64> {
    let consumed = consumed_by_frontier_sql("b", "st.frontier", "st.frontier_xid", "st.frontier_cid");
    as_extension_owner(|| {
        if catalog::change_tracking(source_relid)?.is_none() || !lock_source(source_relid, true)? {
            return Ok(0);
        }
        if let Some(previous) = previous_frontier {
            let behind = crate::spi::query_one::<bool>(
                crate::spi::kept("SELECT EXISTS (SELECT 1 FROM pgtrickle.pgt_dependencies d JOIN pgtrickle.pgt_stream_tables st USING (pgt_id) \
                 WHERE d.source_relid = $1 AND st.frontier IS NOT NULL AND st.effective_refresh_mode = 'DIFFERENTIAL' \
                   AND pg_catalog.pg_snapshot_xmax(st.frontier) < pg_catalog.pg_snapshot_xmax($2::pg_catalog.pg_snapshot))"),
                &[source_relid.into(), previous.into()],
            )?;
            if behind == Some(true) {
                return Ok(0);
            }
        }
        StatementSnapshot::latest().exec_kept(&format!(
            "DELETE FROM {} b WHERE NOT EXISTS ( \
               SELECT 1 FROM pgtrickle.pgt_dependencies d \
               JOIN pgtrickle.pgt_stream_tables st USING (pgt_id) \
               WHERE d.source_relid = {} AND st.frontier IS NOT NULL \
                 AND st.effective_refresh_mode = 'DIFFERENTIAL' \
                 AND NOT COALESCE({consumed}, false))",
            buffer_name(source_relid).to_sql(),
            source_relid.to_u32()
        ))
    })
}

/// Prefix of the IMMEDIATE maintenance triggers of source `source_relid`
/// (`pgt_ivm_<oid>_{before,ins,upd,del,trunc}`).
fn immediate_trigger_prefix(source_relid: pg_sys::Oid) -> String {
    format!("pgt_ivm_{}_", source_relid.to_u32())
}

/// The IMMEDIATE maintenance triggers (`crate::refresh::immediate`): name
/// suffix, timing and events, transition-table clause, function.
const IMMEDIATE_TRIGGERS: [(&str, &str, &str, &str); 5] = [
    ("before", "BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE", "", "pgtrickle._immediate_before"),
    ("ins", "AFTER INSERT", "REFERENCING NEW TABLE AS __pgt_new", "pgtrickle._immediate_after"),
    ("upd", "AFTER UPDATE", "REFERENCING OLD TABLE AS __pgt_old NEW TABLE AS __pgt_new", "pgtrickle._immediate_after"),
    ("del", "AFTER DELETE", "REFERENCING OLD TABLE AS __pgt_old", "pgtrickle._immediate_after"),
    ("trunc", "AFTER TRUNCATE", "", "pgtrickle._immediate_after"),
];

/// Makes sure `source_relid` (and, for a partitioned table, every partition
/// that can carry them) has the statement-level triggers IMMEDIATE
/// maintenance runs from, enabled ALWAYS. Creating them takes a SHARE ROW
/// EXCLUSIVE lock on each relation: writers in progress finish first, and
/// every later statement is maintained.
///
/// # Errors
/// 42939 when a source column is named like a meta column of the changes;
/// 42501 when `owner` (the stream table's) may not create triggers on the
/// table ([`may_start_capture`]) and they do not exist yet.
pub fn ensure_immediate_triggers(source_relid: pg_sys::Oid, owner: pg_sys::Oid) -> PgtResult<()> {
    let _internal = InternalDdl::begin();
    as_extension_owner(|| {
        lock_source(source_relid, false)?;
        let source = relation_name(source_relid)?;
        checked_columns(source_relid, &source)?;
        let prefix = immediate_trigger_prefix(source_relid);
        let existing: Vec<(pg_sys::Oid, String)> = query_map(
            "SELECT tgrelid, tgname::text FROM pg_catalog.pg_trigger WHERE NOT tgisinternal AND pg_catalog.starts_with(tgname::text, $1)",
            &[prefix.as_str().into()],
            |row| Ok((col(row, 1)?, col(row, 2)?)),
        )?;
        let tree = relation_tree(source_relid)?;
        let missing = tree.iter().any(|relid| {
            IMMEDIATE_TRIGGERS.iter().any(|(suffix, ..)| !existing.contains(&(*relid, format!("{prefix}{suffix}"))))
        });
        if !missing {
            return Ok(());
        }
        if !may_start_capture(source_relid, owner)? {
            return Err(PgtError::new(
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!("maintaining stream tables IMMEDIATE over {source} may not be started by role {}", role_name(owner)?),
            )
            .detail("IMMEDIATE maintenance runs from triggers on the table, which only its owner or a role with the TRIGGER privilege may create.")
            .hint("Ask the table's owner to grant TRIGGER on it, or use refresh_mode => 'DIFFERENTIAL' or 'FULL'."));
        }
        let extension = extension_oid()?;
        for relid in &tree {
            let table = relation_name(*relid)?;
            for (suffix, timing, referencing, function) in IMMEDIATE_TRIGGERS {
                let name = format!("{prefix}{suffix}");
                if existing.contains(&(*relid, name.clone())) {
                    continue;
                }
                exec(
                    &format!(
                        "CREATE TRIGGER {} {timing} ON {} {referencing} FOR EACH STATEMENT EXECUTE FUNCTION {function}()",
                        quote_ident(&name),
                        table.to_sql()
                    ),
                    &[],
                )?;
                exec(&format!("ALTER TABLE {} ENABLE ALWAYS TRIGGER {}", table.to_sql(), quote_ident(&name)), &[])?;
                let oid = query_one::<pg_sys::Oid>(
                    "SELECT oid FROM pg_catalog.pg_trigger WHERE tgrelid = $1 AND tgname = $2",
                    &[(*relid).into(), name.as_str().into()],
                )?
                .ok_or_else(|| PgtError::internal(format!("trigger {name} on {table} was not created")))?;
                record_auto_dependency_on_extension(pg_sys::TriggerRelationId, oid, extension);
            }
        }
        Ok(())
    })
}

/// Drops the IMMEDIATE maintenance triggers of `source_relid` (on it and on
/// any relation they were put on, partitions included) when no IMMEDIATE
/// stream table reads it any more.
pub fn release_immediate_triggers_if_unused(source_relid: pg_sys::Oid) -> PgtResult<()> {
    let _internal = InternalDdl::begin();
    as_extension_owner(|| {
        lock_source(source_relid, false)?;
        if catalog::read_by_immediate(source_relid)? {
            return Ok(());
        }
        let triggers: Vec<(pg_sys::Oid, String)> = query_map(
            "SELECT tgrelid, tgname::text FROM pg_catalog.pg_trigger WHERE NOT tgisinternal AND pg_catalog.starts_with(tgname::text, $1)",
            &[immediate_trigger_prefix(source_relid).as_str().into()],
            |row| Ok((col(row, 1)?, col(row, 2)?)),
        )?;
        for (relid, name) in triggers {
            if unsafe { pg_sys::get_rel_name(relid).is_null() } {
                continue;
            }
            let table = relation_name(relid)?;
            exec(&format!("DROP TRIGGER IF EXISTS {} ON {}", quote_ident(&name), table.to_sql()), &[])?;
        }
        Ok(())
    })
}

/// The IMMEDIATE maintenance triggers on the sources of stream table
/// `pgt_id`, one line each: `<trigger> ON <table> (<timing and events>)`.
pub fn immediate_triggers_of(pgt_id: i64) -> PgtResult<Vec<String>> {
    as_extension_owner(|| {
        query_map(
            "SELECT pg_catalog.format('%I ON %s (%s)', t.tgname, t.tgrelid::pg_catalog.regclass, \
                    pg_catalog.substring(pg_catalog.pg_get_triggerdef(t.oid), '((?:BEFORE|AFTER) .*?) ON ')) \
             FROM pgtrickle.pgt_dependencies d \
             JOIN pg_catalog.pg_trigger t ON pg_catalog.starts_with(t.tgname::text, 'pgt_ivm_' || d.source_relid::text || '_') \
             WHERE d.pgt_id = $1 AND NOT t.tgisinternal ORDER BY t.tgrelid, t.tgname",
            &[pgt_id.into()],
            |row| col(row, 1),
        )
    })
}
