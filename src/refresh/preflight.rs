//! What a refresh settles before it takes its snapshot: the stream table's
//! owner's rights decide whether it can be refreshed DIFFERENTIAL at all, and
//! the capture it relies on must be intact.
//!
//! Rights change at any time — GRANT, REVOKE, `ALTER TABLE ... ENABLE ROW LEVEL
//! SECURITY`, `ALTER TABLE ... OWNER TO`, a role's membership or BYPASSRLS — and
//! not all of it fires an event trigger. So every refresh checks, in one
//! planned-once catalog query per source ([`cdc::source_checks`]):
//!
//! - a DIFFERENTIAL stream table whose owner may no longer read a source in
//!   full, or to whom row-level security on a source now applies, cannot read
//!   change buffers, which hold every row: AUTO switches to FULL, whose query
//!   runs under the owner's privileges and policies (WARNING); an explicit
//!   DIFFERENTIAL fails (42501) and its contents stay;
//! - an AUTO stream table that fell back to FULL for such a reason is checked
//!   again, and reinitialized (back to DIFFERENTIAL) once its owner may;
//! - an owner without the grant on a buffer (a new owner) gets it;
//! - capture that is not intact (a trigger disabled or dropped while the event
//!   triggers that repair it at once were bypassed) is repaired, and every
//!   stream table reading that source recomputes, as writes may have gone
//!   uncaptured (WARNING). Never does a refresh report success over lost rows.
//!
//! Repairs and switches happen before the snapshot, so the recomputation they
//! lead to sees everything committed before capture was whole again. In a
//! REPEATABLE READ transaction (a diamond group) the snapshot is older, so the
//! stream table is marked for reinitialization as well, which its next refresh
//! (outside the group) performs with a fresh snapshot.

use crate::catalog::{self, StreamTable};
use crate::cdc;
use crate::error::{PgtError, PgtResult};
use crate::parse::SourceKind;
use pgrx::{pg_sys, PgSqlErrorCode};
use pgt_core::options::RefreshMode;

/// Settles how `st` (locked) can be refreshed now; see the module doc.
pub(super) fn settle(mut st: StreamTable) -> PgtResult<StreamTable> {
    let snapshot_isolation = unsafe { pg_sys::XactIsoLevel } >= pg_sys::XACT_REPEATABLE_READ as i32;
    let captured: Vec<pg_sys::Oid> = catalog::dependencies(st.pgt_id)?
        .into_iter()
        .filter(|d| d.kind != SourceKind::View.as_str())
        .map(|d| d.source_relid)
        .collect();
    match st.effective_refresh_mode {
        RefreshMode::Differential => {
            let checks = cdc::source_checks(st.owner, &captured)?;
            let owner_name = cdc::role_name(st.owner)?;
            if let Some(blocker) = checks.iter().find_map(|c| c.blocker(&owner_name)) {
                // The owner's grants on the buffers go too (a role that
                // bypasses row-level security is not checked by their policy).
                for check in &checks {
                    cdc::sync_buffer_grants(check.relid)?;
                }
                if st.refresh_mode != RefreshMode::Auto {
                    return Err(PgtError::new(
                        PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                        format!("stream table {} cannot refresh DIFFERENTIAL: {blocker}", st.name),
                    )
                    .detail("A DIFFERENTIAL refresh reads change buffers, which hold every row and column of their tables.")
                    .hint("Use alter_stream_table(name, refresh_mode => 'AUTO') or 'FULL': a FULL refresh runs the query \
                           under the owner's privileges and policies."));
                }
                pgrx::warning!(
                    "stream table {} now refreshes in FULL mode: DIFFERENTIAL refresh is not possible with {blocker}; \
                     each refresh checks again",
                    st.name
                );
                catalog::set_plan(st.pgt_id, RefreshMode::Full, None, Some(&blocker))?;
                crate::storage::drop_state_tables(st.pgt_id)?;
                st.effective_refresh_mode = RefreshMode::Full;
                st.delta_plan = None;
                st.differential_blocker = Some(blocker);
                return Ok(st);
            }
            for check in &checks {
                if check.captured && !check.capture_intact {
                    let repaired = cdc::repair_capture(check.relid)?;
                    pgrx::warning!(
                        "capture of {} had been switched off ({}); pg_trickle repaired it, and the stream tables \
                         reading it recompute in full, as writes may have gone uncaptured",
                        check.name,
                        if repaired.is_empty() { "a capture trigger was missing".to_string() } else { repaired.join("; ") }
                    );
                    catalog::clear_frontiers_of_readers(check.relid)?;
                    st.frontier = None;
                    if snapshot_isolation {
                        // This group's snapshot predates the repair: every
                        // reader recomputes again, outside the group, with a
                        // snapshot taken after it.
                        catalog::mark_readers_need_reinit(check.relid)?;
                    }
                }
                if !check.granted {
                    cdc::sync_buffer_grants(check.relid)?;
                }
            }
        }
        RefreshMode::Full
            if st.refresh_mode == RefreshMode::Auto
                && st.differential_blocker.is_some()
                && cdc::differential_blocker(st.owner, &captured)?.is_none() =>
        {
            pgrx::notice!(
                "stream table {} can refresh DIFFERENTIAL again: its owner may now read its sources as change \
                 buffers hold them; it is reinitialized",
                st.name
            );
            catalog::mark_needs_reinit(st.pgt_id)?;
            // Reinitializing may start capture, which a REPEATABLE READ
            // snapshot taken before could miss: then the next refresh does it.
            if !snapshot_isolation {
                st.needs_reinit = true;
                st.frontier = None;
            }
        }
        _ => {}
    }
    Ok(st)
}
