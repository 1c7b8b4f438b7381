//! Stream tables after a logical restore (`pg_dump` / `pg_restore`,
//! docs/OPERATIONS.md "Backup and restore").
//!
//! What a dump holds of a stream table, and what it does not:
//! - its storage table with its contents, owner, grants, indexes, policies and
//!   comment, like any table;
//! - its guard trigger, whose one argument is the stream table's definition
//!   ([`crate::catalog::dump_definition`], kept current by
//!   [`crate::storage::ensure_guard`]): pg_dump writes triggers with their
//!   arguments, so full, `--schema-only` and `-n schema` dumps all carry it;
//! - the capture triggers on its sources (calling an extension function, with
//!   the source OIDs of the dumped database as argument);
//! - not pg_trickle's catalog, capture functions, change buffers or state
//!   tables: the catalog is the extension's own, and the others are extension members
//!   ([`crate::privilege::record_extension_membership`]), which pg_dump leaves
//!   out. Their names carry the dumped database's OIDs and ids, and buffer rows
//!   its transaction ids, which mean nothing in another database.
//!
//! So a restore brings back every stream table as a table that nothing
//! maintains yet. The restored capture triggers call
//! `pgtrickle._capture_changes` with the dumped database's source OIDs, which
//! does nothing for them ([`crate::cdc::forward_to_capture_function`]): writes
//! to the sources work and are not captured. [`finish_restore`] then adopts
//! each restored stream table: it drops the restored capture and IMMEDIATE
//! triggers (recognized by having no dependency on the extension, which
//! pg_dump does not carry), records the stream table in the catalog from the
//! definition its guard carries, and reinitializes it — the query analysed
//! again against the restored database's objects, capture started, storage
//! checked, and the contents recomputed once from the sources, in dependency
//! order. The recomputation is what makes the contents exact whatever
//! happened between the dump and now: the dump holds no record of which
//! captured changes the contents included. Later refreshes are DIFFERENTIAL
//! again.
//!
//! A `--data-only` restore into a database whose stream tables exist loads
//! their rows with COPY, which the guard lets through for that purpose when
//! the stream table's owner runs it ([`contents_loaded`]): the stream table
//! is marked for reinitialization, and `finish_restore` (or its next refresh)
//! recomputes it.

use crate::catalog::{self, InitiatedBy, NewStreamTable};
use crate::error::{PgtError, PgtResult};
use crate::privilege::{acting_role, as_extension_owner, extension_oid, extension_owner, has_privileges_of};
use crate::spi::{col, exec, query_map};
use crate::{parse, refresh, storage};
use pgrx::{pg_sys, PgSqlErrorCode};
use pgt_core::ident::{quote_ident, QualifiedName};
use pgt_core::options::{CdcMode, DiamondConsistency, DiamondSchedulePolicy, RefreshMode};

/// One line of `finish_restore()`'s result.
#[derive(Debug, Clone)]
pub struct RestoreOutcome {
    /// The stream table, schema-qualified.
    pub stream_table: String,
    /// `restored`, `recomputed` or `not restored`.
    pub status: &'static str,
    /// What was done, or why not.
    pub detail: String,
}

/// A restored stream table: its storage and the definition its guard carried.
struct Restored {
    relid: pg_sys::Oid,
    name: QualifiedName,
    definition: Option<String>,
}

/// The definition a guard trigger carries, parsed.
struct Definition {
    query: String,
    original_query: String,
    schedule: String,
    refresh_mode: RefreshMode,
    diamond_consistency: DiamondConsistency,
    diamond_schedule_policy: DiamondSchedulePolicy,
    cdc_mode: Option<CdcMode>,
    append_only: bool,
    pooler_compatibility_mode: bool,
}

fn parse_definition(text: &str) -> PgtResult<Definition> {
    let bad = |what: &str| PgtError::internal(format!("the definition its guard trigger carries has no valid {what}"));
    let json: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(&format!("JSON ({e})")))?;
    let text_of = |key: &str| json.get(key).and_then(|v| v.as_str()).map(str::to_string).ok_or_else(|| bad(key));
    let bool_of = |key: &str| json.get(key).and_then(|v| v.as_bool()).ok_or_else(|| bad(key));
    if json.get("format").and_then(|v| v.as_i64()) != Some(1) {
        return Err(bad("format (a newer pg_trickle made the dump)"));
    }
    let cdc_mode = match json.get("cdc_mode") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(CdcMode::parse(v.as_str().ok_or_else(|| bad("cdc_mode"))?)?),
    };
    Ok(Definition {
        query: text_of("query")?,
        original_query: text_of("original_query")?,
        schedule: crate::lifecycle::validate_schedule(&text_of("schedule")?)?.canonical(),
        refresh_mode: RefreshMode::parse(&text_of("refresh_mode")?)?,
        diamond_consistency: DiamondConsistency::parse(&text_of("diamond_consistency")?)?,
        diamond_schedule_policy: DiamondSchedulePolicy::parse(&text_of("diamond_schedule_policy")?)?,
        cdc_mode,
        append_only: bool_of("append_only")?,
        pooler_compatibility_mode: bool_of("pooler_compatibility_mode")?,
    })
}

/// `pgtrickle.finish_restore()`: adopts the stream tables a logical restore
/// brought back and recomputes those whose contents a data-only restore
/// loaded (see the module doc). Returns one line per stream table concerned,
/// upstream first; a stream table that cannot be adopted (its sources are
/// missing, its owner may not read them, ...) is reported and left as it is,
/// and the others go on. Safe to run again: it does nothing when nothing was
/// restored.
///
/// # Errors
/// 42501 unless the caller has the privileges of the extension's owner (it
/// acts for every stream table's owner); 55000 when the catalog is not this
/// library's version; 25001 outside READ COMMITTED (capture starts).
pub fn finish_restore() -> PgtResult<Vec<RestoreOutcome>> {
    catalog::require_current_catalog()?;
    if !has_privileges_of(acting_role(), extension_owner()?) {
        return Err(PgtError::new(PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE, "permission denied for function finish_restore")
            .detail("It records and recomputes the restored stream tables of every owner.")
            .hint("Run it as a superuser, or as the owner of extension pg_trickle."));
    }
    crate::definition::require_read_committed("finish_restore")?;
    drop_restored_capture()?;
    let mut outcomes = Vec::new();
    let mut pending = restored_stream_tables()?;
    pending.retain(|r| match &r.definition {
        Some(_) => true,
        None => {
            outcomes.push(RestoreOutcome {
                stream_table: r.name.to_string(),
                status: "not restored",
                detail: "its guard trigger carries no definition (the dump was made by pg_trickle 0.1.0): recreate it \
                         from pgtrickle.stream_table_definitions() of the dumped database"
                    .into(),
            });
            false
        }
    });
    // Upstream first: a stream table reading another restored one waits for
    // it, so that its analysis sees a stream table.
    let pending_relids: Vec<pg_sys::Oid> = pending.iter().map(|r| r.relid).collect();
    let mut reads: Vec<Vec<pg_sys::Oid>> = Vec::new();
    for r in &pending {
        let query = r.definition.as_deref().map(parse_definition).transpose().ok().flatten().map(|d| d.query);
        let sources = query
            .and_then(|q| {
                crate::spi::in_subtransaction(std::panic::AssertUnwindSafe(|| parse::analyze_defining_query(&q, |_| Ok(false))))
                    .ok()
                    .and_then(Result::ok)
            })
            .map(|a| a.sources.iter().map(|s| s.relid).filter(|s| pending_relids.contains(s)).collect())
            .unwrap_or_default();
        reads.push(sources);
    }
    let mut done: Vec<(pg_sys::Oid, bool)> = Vec::new();
    let mut adopted_any = false;
    while done.len() < pending.len() {
        let next = (0..pending.len()).find(|&i| {
            !done.iter().any(|(relid, _)| *relid == pending[i].relid)
                && reads[i].iter().all(|s| *s == pending[i].relid || done.iter().any(|(d, _)| d == s))
        });
        // A cycle cannot be restored from definitions that were acyclic; should
        // one appear, the rest are adopted in any order and fail as they will.
        let i = next.unwrap_or_else(|| {
            (0..pending.len()).find(|&i| !done.iter().any(|(relid, _)| *relid == pending[i].relid)).unwrap_or(0)
        });
        let r = &pending[i];
        let failed_upstream: Vec<String> = reads[i]
            .iter()
            .filter(|s| done.iter().any(|(d, ok)| d == *s && !ok))
            .filter_map(|s| pending.iter().find(|p| p.relid == *s).map(|p| p.name.to_string()))
            .collect();
        let outcome = if !failed_upstream.is_empty() {
            Err(format!("it reads {}, which could not be restored", failed_upstream.join(", ")))
        } else {
            adopt_in_subtransaction(r)
        };
        done.push((r.relid, outcome.is_ok()));
        adopted_any |= outcome.is_ok();
        outcomes.push(match outcome {
            Ok(detail) => RestoreOutcome { stream_table: r.name.to_string(), status: "restored", detail },
            Err(detail) => RestoreOutcome { stream_table: r.name.to_string(), status: "not restored", detail },
        });
    }
    // Stream tables whose rows a data-only restore loaded (marked for
    // reinitialization).
    for (pgt_id, name) in loaded_stream_tables()? {
        let result = crate::spi::in_subtransaction(std::panic::AssertUnwindSafe(|| {
            match refresh::refresh_stream_table(pgt_id, InitiatedBy::Manual) {
                Ok(done) => done,
                Err(e) => e.raise(),
            }
        }));
        outcomes.push(match result {
            Ok(done) => RestoreOutcome {
                stream_table: name,
                status: "recomputed",
                detail: format!(
                    "rows a restore loaded were replaced by its query's result ({} written, {} removed)",
                    done.rows_inserted, done.rows_deleted
                ),
            },
            Err(caught) => RestoreOutcome {
                stream_table: name,
                status: "not restored",
                detail: crate::error::caught_report(&caught).message().to_string(),
            },
        });
    }
    if adopted_any && crate::scheduler::available() {
        crate::scheduler::request_worker();
    }
    Ok(outcomes)
}

/// Adopts `r` in a subtransaction: its catalog row, a reinitialization and a
/// recomputation; on any error everything it did is undone and the error's
/// message returned.
fn adopt_in_subtransaction(r: &Restored) -> Result<String, String> {
    let result = crate::spi::in_subtransaction(std::panic::AssertUnwindSafe(|| match adopt(r) {
        Ok(detail) => detail,
        Err(e) => e.raise(),
    }));
    result.map_err(|caught| {
        let report = crate::error::caught_report(&caught);
        match report.hint() {
            Some(hint) => format!("{} ({hint})", report.message()),
            None => report.message().to_string(),
        }
    })
}

fn adopt(r: &Restored) -> PgtResult<String> {
    let definition = parse_definition(r.definition.as_deref().unwrap_or_default())?;
    {
        let _internal = crate::activity::InternalDdl::begin();
        as_extension_owner(|| {
            exec(&format!("DROP TRIGGER IF EXISTS {} ON {}", quote_ident(storage::GUARD_TRIGGER), r.name.to_sql()), &[])
        })?;
    }
    let pgt_id = catalog::insert_stream_table(&NewStreamTable {
        relid: r.relid,
        defining_query: &definition.query,
        original_query: &definition.original_query,
        schedule: definition.schedule,
        refresh_mode: definition.refresh_mode,
        // Decided again by the reinitialization below, as for the owner now.
        effective_refresh_mode: RefreshMode::Full,
        diamond_consistency: definition.diamond_consistency,
        diamond_schedule_policy: definition.diamond_schedule_policy,
        cdc_mode: definition.cdc_mode,
        append_only: definition.append_only,
        pooler_compatibility_mode: definition.pooler_compatibility_mode,
        delta_plan: None,
        differential_blocker: None,
    })?;
    // The reinitialization puts the guard back, now the extension's own.
    catalog::mark_needs_reinit(pgt_id)?;
    let outcome = refresh::refresh_stream_table(pgt_id, InitiatedBy::Initial)?;
    let st = catalog::stream_table_by_id(pgt_id)?
        .ok_or_else(|| PgtError::internal(format!("stream table {} vanished while restored", r.name)))?;
    Ok(format!(
        "{} stream table, recomputed from its sources once ({} rows written, {} removed); later refreshes are {}",
        st.effective_refresh_mode.as_str(),
        outcome.rows_inserted,
        outcome.rows_deleted,
        st.effective_refresh_mode.as_str()
    ))
}

/// Tables carrying a guard trigger but not recorded as stream tables: what a
/// restore brought back.
fn restored_stream_tables() -> PgtResult<Vec<Restored>> {
    as_extension_owner(|| {
        query_map(
            "SELECT c.oid, n.nspname::text, c.relname::text, \
                    CASE WHEN t.tgnargs = 1 THEN pg_catalog.convert_from(pg_catalog.substring(t.tgargs, 1, \
                         pg_catalog.length(t.tgargs) - 1), pg_catalog.getdatabaseencoding()) END \
             FROM pg_catalog.pg_trigger t \
             JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE t.tgname = $1 AND NOT t.tgisinternal AND n.nspname <> 'pgtrickle_state' \
               AND NOT EXISTS (SELECT 1 FROM pgtrickle.pgt_stream_tables st WHERE st.pgt_relid = c.oid) \
             ORDER BY c.oid",
            &[storage::GUARD_TRIGGER.into()],
            |row| {
                Ok(Restored {
                    relid: col(row, 1)?,
                    name: QualifiedName::new(col::<String>(row, 2)?, col::<String>(row, 3)?),
                    definition: row.get::<String>(4)?,
                })
            },
        )
    })
}

/// Stream tables marked for reinitialization, as [`contents_loaded`] marks
/// those whose rows a restore loaded (and DDL on a source others; their next
/// refresh would reinitialize them anyway).
fn loaded_stream_tables() -> PgtResult<Vec<(i64, String)>> {
    query_map(
        "SELECT st.pgt_id, st.pgt_relid::pg_catalog.regclass::text FROM pgtrickle.pgt_stream_tables st \
         WHERE st.needs_reinit ORDER BY st.pgt_id",
        &[],
        |row| Ok((col(row, 1)?, col(row, 2)?)),
    )
}

/// Drops what a restore brought back of pg_trickle's capture: capture and
/// IMMEDIATE triggers, and capture functions and tables in pg_trickle's
/// schemas, that have no dependency on the extension (pg_trickle records one
/// for each it makes; pg_dump carries none).
fn drop_restored_capture() -> PgtResult<()> {
    let extension = extension_oid()?;
    let _internal = crate::activity::InternalDdl::begin();
    as_extension_owner(|| {
        let triggers = query_map(
            "SELECT pg_catalog.quote_ident(t.tgname), t.tgrelid::pg_catalog.regclass::text FROM pg_catalog.pg_trigger t \
             WHERE NOT t.tgisinternal AND (t.tgname LIKE 'pgt\\_cdc\\_%' OR t.tgname LIKE 'pgt\\_ivm\\_%') \
               AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_trigger'::pg_catalog.regclass \
                               AND d.objid = t.oid AND d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass \
                               AND d.refobjid = $1)",
            &[extension.into()],
            |row| Ok((col::<String>(row, 1)?, col::<String>(row, 2)?)),
        )?;
        for (trigger, table) in triggers {
            exec(&format!("DROP TRIGGER {trigger} ON {table}"), &[])?;
        }
        // Capture functions and tables in pg_trickle's schemas that are not
        // its own: restored from a dump of 0.1.0, which did not make them
        // extension members.
        let drops = query_map(
            "SELECT 'DROP FUNCTION ' || p.oid::pg_catalog.regprocedure::text FROM pg_catalog.pg_proc p \
             WHERE p.pronamespace = 'pgtrickle_changes'::pg_catalog.regnamespace \
               AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass \
                               AND d.objid = p.oid AND d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass \
                               AND d.refobjid = $1) \
             UNION ALL \
             SELECT 'DROP TABLE ' || c.oid::pg_catalog.regclass::text FROM pg_catalog.pg_class c \
             WHERE c.relnamespace IN ('pgtrickle_changes'::pg_catalog.regnamespace, 'pgtrickle_state'::pg_catalog.regnamespace) \
               AND c.relkind IN ('r', 'p') \
               AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass \
                               AND d.objid = c.oid AND d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass \
                               AND d.refobjid = $1)",
            &[extension.into()],
            |row| col::<String>(row, 1),
        )?;
        for drop in drops {
            exec(&drop, &[])?;
        }
        Ok(())
    })
}

/// Called by the guard trigger of stream table `relid` before a COPY loads
/// rows into it (a data-only restore): its rows are deleted (the loaded ones,
/// with the same row identities, take their place) and it is marked for
/// reinitialization, so that its next refresh — or `finish_restore()` —
/// replaces what was loaded by its query's result.
///
/// # Errors
/// 42501 unless the caller has the privileges of the stream table's owner,
/// as `REFRESH MATERIALIZED VIEW` requires: a role merely granted INSERT
/// (which writes nothing else into a stream table) may not replace what its
/// readers see.
pub fn contents_loaded(relid: pg_sys::Oid) -> PgtResult<()> {
    let Some(st) = catalog::stream_table_by_relid(relid)? else { return Ok(()) };
    if !has_privileges_of(acting_role(), st.owner) {
        return Err(PgtError::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("must be owner of stream table {} to load rows into it", st.name),
        )
        .detail("A COPY into a stream table replaces its contents until its next refresh; only a data-only restore needs it.")
        .hint("Run the restore as the stream table's owner or a superuser."));
    }
    if !st.needs_reinit {
        catalog::mark_needs_reinit(st.pgt_id)?;
    }
    // The loaded rows take the place of the contents (their row identities
    // would collide with them), until the recomputation.
    {
        let _writing = crate::activity::StreamTableWrite::begin();
        as_extension_owner(|| exec(&format!("DELETE FROM ONLY {}", st.name.to_sql()), &[]))?;
    }
    pgrx::notice!(
        "the rows loaded into stream table {} replace its contents until its next refresh, or \
         pgtrickle.finish_restore(), recomputes it",
        st.name
    );
    Ok(())
}
