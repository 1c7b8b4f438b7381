//! Running a span of work as another role, the way PostgreSQL's own commands do.
//!
//! Two situations need it:
//! - **Running a defining query** (refresh, validation): as the stream table's owner
//!   inside a *security-restricted operation* with `search_path` pinned to
//!   `pg_catalog, pg_temp`, exactly as `REFRESH MATERIALIZED VIEW` does
//!   (`src/backend/commands/matview.c`, the fix for CVE-2022-1552). A function in
//!   the query can then neither change the session's role nor rely on a search
//!   path the caller controls.
//! - **Maintaining pg_trickle's own objects** (catalog rows, change buffers, capture
//!   triggers on sources the caller may read but not alter): as the extension's
//!   owner, with `SECURITY_LOCAL_USERID_CHANGE` and the same pinned `search_path`, so
//!   that the generated SQL resolves only to built-in operators and our own objects.
//!
//! If an error escapes the span, the transaction (or subtransaction) abort restores
//! the role and GUC state, as it does for any PostgreSQL command; on success the
//! guard restores both itself.

use crate::error::{PgtError, PgtResult};
use pgrx::pg_sys;
use pgrx::prelude::*;

/// The saved role and GUC nesting level of one switch.
struct Switched {
    saved_user: pg_sys::Oid,
    saved_sec_context: i32,
    guc_nest_level: i32,
}

impl Switched {
    /// Switches to `role` with the extra security-context bits `sec_bits`, opens a GUC
    /// nesting level and pins `search_path`.
    fn enter(role: pg_sys::Oid, sec_bits: u32) -> Switched {
        let mut saved_user = pg_sys::InvalidOid;
        let mut saved_sec_context: i32 = 0;
        unsafe {
            pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_sec_context);
            pg_sys::SetUserIdAndSecContext(role, saved_sec_context | sec_bits as i32);
            let guc_nest_level = pg_sys::NewGUCNestLevel();
            pg_sys::RestrictSearchPath();
            Switched { saved_user, saved_sec_context, guc_nest_level }
        }
    }
}

impl Drop for Switched {
    fn drop(&mut self) {
        unsafe {
            if !std::thread::panicking() {
                // Roll back GUC changes made inside the span (the pinned search_path).
                pg_sys::AtEOXact_GUC(false, self.guc_nest_level);
            }
            pg_sys::SetUserIdAndSecContext(self.saved_user, self.saved_sec_context);
        }
    }
}

/// Runs `f` with `search_path` pinned to `pg_catalog, pg_temp` (restored after,
/// whether `f` returns `Ok` or `Err`), as the current role.
pub fn with_pinned_search_path<R>(f: impl FnOnce() -> R) -> R {
    let _switched = Switched::enter(current_user(), 0);
    f()
}

/// Runs `f` as `owner` inside a security-restricted operation with a pinned
/// `search_path` (see the module doc). Used for every execution of a defining query.
pub fn as_owner_restricted<R>(owner: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    let _switched = Switched::enter(owner, pg_sys::SECURITY_RESTRICTED_OPERATION);
    f()
}

/// Sets configuration parameter `name` to `value` until the end of the
/// innermost [`as_owner_restricted`] (or other switched) span, which rolls it
/// back like a function's `SET` clause; outside any span, until the end of the
/// transaction.
///
/// # Errors
/// A NUL byte in `name` or `value`. PostgreSQL's own error for an unknown
/// parameter, an invalid value or a missing privilege is raised (not
/// returned), as `SET` raises it.
pub fn set_for_span(name: &str, value: &str) -> PgtResult<()> {
    set_in_context(name, value, pg_sys::GucContext::PGC_USERSET)
}

/// [`set_for_span`] for a parameter only superusers may set
/// (`PGC_SUSET`), whatever the current role: pg_trickle's own bounds on its
/// statements (`temp_file_limit`), never a value from a user.
///
/// The caller keeps `value` within the parameter's range.
///
/// # Errors
/// As [`set_for_span`].
pub fn set_bound_for_span(name: &str, value: &str) -> PgtResult<()> {
    set_in_context(name, value, pg_sys::GucContext::PGC_SUSET)
}

/// Sets `name` to `value` as [`set_for_span`] does, in GUC context `context`.
fn set_in_context(name: &str, value: &str, context: pg_sys::GucContext::Type) -> PgtResult<()> {
    let name = std::ffi::CString::new(name).map_err(|_| PgtError::internal("parameter name contains a NUL byte"))?;
    let value = std::ffi::CString::new(value).map_err(|_| PgtError::internal("parameter value contains a NUL byte"))?;
    unsafe {
        pg_sys::set_config_option(
            name.as_ptr(),
            value.as_ptr(),
            context,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SAVE,
            true,
            0,
            false,
        );
    }
    Ok(())
}

/// Runs `f` as the owner of the `pg_trickle` extension (the superuser who created
/// it), with a pinned `search_path`. Used only for pg_trickle's own objects.
///
/// # Errors
/// Internal error if the extension is not installed in this database.
pub fn as_extension_owner<R>(f: impl FnOnce() -> PgtResult<R>) -> PgtResult<R> {
    let owner = extension_owner()?;
    let _switched = Switched::enter(owner, pg_sys::SECURITY_LOCAL_USERID_CHANGE);
    f()
}

thread_local! {
    /// (extension OID, owner OID) of this backend's database, looked up once.
    static EXTENSION_OWNER: std::cell::Cell<Option<(pg_sys::Oid, pg_sys::Oid)>> = const { std::cell::Cell::new(None) };
}

/// The OID of the role that owns the `pg_trickle` extension. Cached per backend,
/// keyed by the extension's OID (a re-created extension is looked up again).
pub fn extension_owner() -> PgtResult<pg_sys::Oid> {
    let extension = extension_oid()?;
    if let Some((ext, owner)) = EXTENSION_OWNER.with(|c| c.get()) {
        if ext == extension {
            return Ok(owner);
        }
    }
    let owner = Spi::get_one::<pg_sys::Oid>("SELECT extowner FROM pg_catalog.pg_extension WHERE extname = 'pg_trickle'")?
        .ok_or_else(|| PgtError::internal("extension \"pg_trickle\" is not installed in this database"))?;
    EXTENSION_OWNER.with(|c| c.set(Some((extension, owner))));
    Ok(owner)
}

/// The OID of the `pg_trickle` extension in this database.
pub fn extension_oid() -> PgtResult<pg_sys::Oid> {
    let oid = unsafe { pg_sys::get_extension_oid(c"pg_trickle".as_ptr(), true) };
    if oid == pg_sys::InvalidOid {
        return Err(PgtError::internal("extension \"pg_trickle\" is not installed in this database"));
    }
    Ok(oid)
}

/// The current effective role (`current_user`).
pub fn current_user() -> pg_sys::Oid {
    unsafe { pg_sys::GetUserId() }
}

/// True when the current role owns relation `relid` (superusers own everything),
/// the test PostgreSQL applies before `REFRESH MATERIALIZED VIEW`.
pub fn current_user_owns(relid: pg_sys::Oid) -> bool {
    unsafe { pg_sys::object_ownercheck(pg_sys::RelationRelationId, relid, pg_sys::GetUserId()) }
}

/// Records that the object `object_id` of catalog `class_id` goes with the
/// extension (an AUTO dependency): `DROP EXTENSION pg_trickle` drops it without
/// CASCADE. For the objects pg_trickle makes outside its own schema as the
/// extension owner (capture triggers, change buffers, guard triggers).
pub fn record_auto_dependency_on_extension(class_id: pg_sys::Oid, object_id: pg_sys::Oid, extension: pg_sys::Oid) {
    let depender = pg_sys::ObjectAddress { classId: class_id, objectId: object_id, objectSubId: 0 };
    let referenced = pg_sys::ObjectAddress { classId: pg_sys::ExtensionRelationId, objectId: extension, objectSubId: 0 };
    unsafe { pg_sys::recordDependencyOn(&depender, &referenced, pg_sys::DependencyType::DEPENDENCY_AUTO) };
}

/// Makes the object `object_id` of catalog `class_id` a member of the
/// extension (what `ALTER EXTENSION pg_trickle ADD` records). pg_dump leaves
/// extension members out of dumps, schema and data alike: for the change
/// buffers and state tables, whose names carry OIDs and ids of the database
/// they were made in, and whose rows are stamped with its transaction ids, so
/// that no restore ever recreates or loads them (docs/OPERATIONS.md). A member
/// is dropped with `DROP EXTENSION`, and only after
/// [`forget_extension_membership`] by itself.
///
/// Its privileges as they are now are recorded as its initial ones
/// ([`record_initial_privileges`]).
pub fn record_extension_membership(class_id: pg_sys::Oid, object_id: pg_sys::Oid, extension: pg_sys::Oid) {
    let depender = pg_sys::ObjectAddress { classId: class_id, objectId: object_id, objectSubId: 0 };
    let referenced = pg_sys::ObjectAddress { classId: pg_sys::ExtensionRelationId, objectId: extension, objectSubId: 0 };
    unsafe { pg_sys::recordDependencyOn(&depender, &referenced, pg_sys::DependencyType::DEPENDENCY_EXTENSION) };
    record_initial_privileges(class_id, object_id);
}

/// Records the current privileges of extension member `object_id` (of
/// catalog `class_id`: a relation or a function) as its initial ones
/// (`pg_init_privs`, what `ALTER EXTENSION ... ADD` does): pg_dump writes, for
/// a member, only the GRANTs and REVOKEs made since, and those would name an
/// object the dump does not hold. Call after every change of a member's
/// grants.
pub fn record_initial_privileges(class_id: pg_sys::Oid, object_id: pg_sys::Oid) {
    unsafe {
        pg_sys::CommandCounterIncrement();
        pg_sys::recordExtObjInitPriv(object_id, class_id);
    }
}

/// Removes the membership [`record_extension_membership`] recorded, so that
/// the object can be dropped on its own (PostgreSQL refuses to drop an
/// extension member otherwise).
pub fn forget_extension_membership(class_id: pg_sys::Oid, object_id: pg_sys::Oid) {
    delete_extension_dependency(class_id, object_id, pg_sys::DependencyType::DEPENDENCY_EXTENSION);
}

/// Turns the AUTO dependency on the extension that
/// [`record_auto_dependency_on_extension`] recorded for an object into
/// membership ([`record_extension_membership`]), for objects made before they
/// were members (the 0.1.0 -> 0.2.0 upgrade).
pub fn make_extension_member(class_id: pg_sys::Oid, object_id: pg_sys::Oid, extension: pg_sys::Oid) {
    delete_extension_dependency(class_id, object_id, pg_sys::DependencyType::DEPENDENCY_AUTO);
    record_extension_membership(class_id, object_id, extension);
}

/// Deletes the object's dependencies of type `deptype` on any extension,
/// visible to the next command.
fn delete_extension_dependency(class_id: pg_sys::Oid, object_id: pg_sys::Oid, deptype: pg_sys::DependencyType::Type) {
    unsafe {
        pg_sys::deleteDependencyRecordsForClass(class_id, object_id, pg_sys::ExtensionRelationId, deptype as std::ffi::c_char);
        pg_sys::CommandCounterIncrement();
    }
}

/// The role that runs the current command: the session's role (after `SET
/// ROLE`), not the owner of a `SECURITY DEFINER` function on the way (our event
/// triggers are such functions).
pub fn acting_role() -> pg_sys::Oid {
    unsafe { pg_sys::GetOuterUserId() }
}

/// Whether `role` has the privileges of role `other` (is it, a member that
/// inherits, or a superuser): PostgreSQL's `has_privs_of_role`.
pub fn has_privileges_of(role: pg_sys::Oid, other: pg_sys::Oid) -> bool {
    unsafe { pg_sys::has_privs_of_role(role, other) }
}
