//! The storage table of a stream table: a real heap table with exactly the defining
//! query's output columns (names, types, typmods, collations, as `CREATE TABLE AS`
//! derives them) plus the hidden `__pgt_row_id bigint NOT NULL` under a unique
//! index. It is created by, and owned by, the role that creates the stream table.
//!
//! The storage table also carries a normal `pg_depend` entry on every relation the
//! query reads, so PostgreSQL itself refuses to drop a source while a stream table
//! reads it (SQLSTATE 2BP01, naming the stream table), exactly as for a view.

use crate::error::{PgtError, PgtResult};
use crate::parse::{AnalyzedQuery, SourceRelation};
use crate::spi::{col, exec, query_map, query_one};
use pgrx::pg_sys;
use pgt_core::ident::{quote_ident, QualifiedName};
use pgt_delta::Plan;

/// The hidden row-identity column.
pub const ROW_ID_COLUMN: &str = pgt_delta::names::ROW_ID;

/// The trigger on every stream table that refuses writes other than a
/// refresh's (`pgtrickle._guard_stream_table()`, [`crate::activity`]).
pub const GUARD_TRIGGER: &str = "pgt_stream_table_guard";

/// Creates the storage table `name` for `query` (as the current role, who owns it),
/// with the hidden state columns `plan` needs, and records its dependencies on the
/// query's sources. Returns its OID.
pub fn create_storage(name: &QualifiedName, query: &AnalyzedQuery, plan: Option<&Plan>) -> PgtResult<pg_sys::Oid> {
    // A DIFFERENTIAL stream table is updated in place row by row; leaving room
    // on each page lets those updates be HOT (no new index entry).
    let storage_options = if plan.is_some() { " WITH (fillfactor = 90)" } else { "" };
    exec(
        &format!(
            "CREATE TABLE {}{storage_options} AS SELECT * FROM ({}) __pgt_q WITH NO DATA",
            name.to_sql(),
            query.normalized_sql
        ),
        &[],
    )?;
    let mut additions = vec![format!("ADD COLUMN {} bigint NOT NULL", quote_ident(ROW_ID_COLUMN))];
    for hidden in plan_hidden_columns(plan) {
        additions.push(format!("ADD COLUMN {} {}", quote_ident(&hidden.name), hidden.sql_type));
    }
    exec(&format!("ALTER TABLE {} {}", name.to_sql(), additions.join(", ")), &[])?;
    exec(&format!("CREATE UNIQUE INDEX ON {} ({})", name.to_sql(), quote_ident(ROW_ID_COLUMN)), &[])?;
    let relid = query_one::<pg_sys::Oid>("SELECT $1::pg_catalog.regclass::oid", &[name.to_sql().as_str().into()])?
        .ok_or_else(|| PgtError::internal(format!("storage table {name} was not created")))?;
    record_source_dependencies(relid, &query.sources);
    let _created = ensure_guard(relid)?;
    Ok(relid)
}

/// Makes stream table `relid` carry the unique index on `__pgt_row_id`
/// exactly when `wanted`: a DIFFERENTIAL stream table needs it (its MERGEs find
/// rows by identity, keyless copies are probed through it), and so does a FULL
/// one that DIFFERENTIAL stream tables read (it is their source's key); any
/// other FULL one does not (a recomputation either replaces the table wholesale or joins the new
/// result with all stored rows, a hash join), and rebuilding the index would
/// be a large part of each of its refreshes. Created and dropped as the
/// extension owner; the index belongs to the table's owner.
///
/// # Errors
/// PostgreSQL's, from the catalog reads or the CREATE / DROP INDEX (a
/// duplicate identity makes the CREATE fail with 23505).
pub fn sync_row_id_index(relid: pg_sys::Oid, wanted: bool) -> PgtResult<()> {
    let existing = query_one::<String>(
        "SELECT pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname) \
         FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attname = $2 \
         WHERE i.indrelid = $1 AND i.indisunique AND i.indnatts = 1 AND i.indkey[0] = a.attnum \
           AND i.indpred IS NULL AND i.indexprs IS NULL ORDER BY i.indisreplident DESC LIMIT 1",
        &[relid.into(), ROW_ID_COLUMN.into()],
    )?;
    if wanted == existing.is_some() {
        return Ok(());
    }
    // An index the owner made the table's replica identity stays.
    let replica_identity = query_one::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_index WHERE indrelid = $1 AND indisreplident)",
        &[relid.into()],
    )?;
    if !wanted && replica_identity == Some(true) {
        return Ok(());
    }
    let _internal = crate::activity::InternalDdl::begin();
    crate::privilege::as_extension_owner(|| {
        match existing {
            Some(index) => {
                exec(&format!("DROP INDEX {index}"), &[])?;
            }
            None => {
                let table = query_one::<String>("SELECT $1::pg_catalog.regclass::text", &[relid.into()])?
                    .ok_or_else(|| PgtError::internal("stream table not found"))?;
                exec(&format!("CREATE UNIQUE INDEX ON {table} ({})", quote_ident(ROW_ID_COLUMN)), &[])?;
            }
        }
        Ok(())
    })
}

/// Makes sure stream table `relid` carries its guard trigger ([`GUARD_TRIGGER`]:
/// BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE, FOR EACH STATEMENT, calling
/// `pgtrickle._guard_stream_table()`, enabled ALWAYS), creating or repairing it
/// as the extension owner. Its owner may drop or disable triggers on its own
/// table; the event triggers call this after such DDL, so the guard comes back
/// in the same statement. Returns what was repaired, if anything.
///
/// The trigger's one argument is the stream table's definition
/// ([`crate::catalog::dump_definition`]; none for a state table): pg_dump
/// writes triggers with their arguments, so every dump that holds the
/// stream table's storage — full, `--schema-only`, `-n schema` — also holds
/// what `pgtrickle.finish_restore()` recreates it from (`crate::restore`).
/// Call this again after every change of the definition; a trigger whose
/// argument differs is replaced (not reported as a repair).
pub fn ensure_guard(relid: pg_sys::Oid) -> PgtResult<Option<String>> {
    let definition = guard_definition(relid)?;
    let _internal = crate::activity::InternalDdl::begin();
    crate::privilege::as_extension_owner(|| {
        let table = crate::parse::relation_name(relid)?;
        let found = query_map(
            "SELECT t.oid, t.tgenabled::text, t.tgtype, t.tgqual IS NULL AND t.tgfoid = \
                    'pgtrickle._guard_stream_table()'::pg_catalog.regprocedure, \
                    t.tgnargs = 0 AND $3::text IS NULL \
                    OR t.tgnargs = 1 AND t.tgargs = pg_catalog.convert_to($3, pg_catalog.getdatabaseencoding()) || '\\x00'::bytea \
             FROM pg_catalog.pg_trigger t WHERE t.tgrelid = $1 AND t.tgname = $2",
            &[relid.into(), GUARD_TRIGGER.into(), definition.clone().into()],
            |row| {
                Ok((col::<pg_sys::Oid>(row, 1)?, col::<String>(row, 2)?, col::<i16>(row, 3)?, col::<bool>(row, 4)?, col::<bool>(row, 5)?))
            },
        )?;
        // BEFORE (2) + INSERT (4) + DELETE (8) + UPDATE (16) + TRUNCATE (32),
        // statement level (catalog/pg_trigger.h).
        const GUARD_TYPE: i16 = 2 | 4 | 8 | 16 | 32;
        let repaired = match found.first() {
            Some((_, enabled, tgtype, ours, current)) if *ours && *tgtype == GUARD_TYPE && *current => {
                if enabled == "A" {
                    return Ok(None);
                }
                exec(&format!("ALTER TABLE {} ENABLE ALWAYS TRIGGER {}", table.to_sql(), quote_ident(GUARD_TRIGGER)), &[])?;
                return Ok(Some(format!("trigger {GUARD_TRIGGER} on {table} was disabled")));
            }
            Some((_, enabled, tgtype, ours, _)) => {
                exec(&format!("DROP TRIGGER {} ON {}", quote_ident(GUARD_TRIGGER), table.to_sql()), &[])?;
                // Only the definition it carries is out of date: no repair.
                (!(*ours && *tgtype == GUARD_TYPE && enabled == "A"))
                    .then(|| format!("trigger {GUARD_TRIGGER} on {table} was changed"))
            }
            None => Some(format!("trigger {GUARD_TRIGGER} on {table} was missing")),
        };
        let argument = definition.as_deref().map(pgt_core::ident::quote_literal).unwrap_or_default();
        exec(
            &format!(
                "CREATE TRIGGER {} BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON {} \
                 FOR EACH STATEMENT EXECUTE FUNCTION pgtrickle._guard_stream_table({argument})",
                quote_ident(GUARD_TRIGGER),
                table.to_sql()
            ),
            &[],
        )?;
        exec(&format!("ALTER TABLE {} ENABLE ALWAYS TRIGGER {}", table.to_sql(), quote_ident(GUARD_TRIGGER)), &[])?;
        let trigger = query_one::<pg_sys::Oid>(
            "SELECT oid FROM pg_catalog.pg_trigger WHERE tgrelid = $1 AND tgname = $2",
            &[relid.into(), GUARD_TRIGGER.into()],
        )?
        .ok_or_else(|| PgtError::internal(format!("guard trigger on {table} was not created")))?;
        crate::privilege::record_auto_dependency_on_extension(pg_sys::TriggerRelationId, trigger, crate::privilege::extension_oid()?);
        Ok(repaired)
    })
}

/// The definition [`ensure_guard`] gives the guard of `relid`:
/// [`crate::catalog::dump_definition`], except that a stream table marked for
/// reinitialization gets the query its stored tree deparses to now: after a
/// rename of something it names, and until the reinitialization that follows
/// it stores that text, the stored text names what is gone.
fn guard_definition(relid: pg_sys::Oid) -> PgtResult<Option<String>> {
    let Some((definition, tree)) = crate::catalog::dump_definition(relid)? else { return Ok(None) };
    let Some(tree) = tree else { return Ok(Some(definition)) };
    // A tree naming something dropped no longer deparses: the stored text stays.
    let deparsed = crate::spi::in_subtransaction(std::panic::AssertUnwindSafe(|| crate::parse::deparse_stored_tree(&tree)));
    let Ok(Ok(Some(text))) = deparsed else { return Ok(Some(definition)) };
    query_one::<String>(
        "SELECT pg_catalog.jsonb_set($1::pg_catalog.jsonb, '{query}', pg_catalog.to_jsonb($2::text))::text",
        &[definition.into(), text.into()],
    )
}

/// Records that storage table `relid` depends (normally) on each of `sources`.
pub fn record_source_dependencies(relid: pg_sys::Oid, sources: &[SourceRelation]) {
    let depender = pg_sys::ObjectAddress { classId: pg_sys::RelationRelationId, objectId: relid, objectSubId: 0 };
    for s in sources {
        let referenced =
            pg_sys::ObjectAddress { classId: pg_sys::RelationRelationId, objectId: s.relid, objectSubId: 0 };
        unsafe { pg_sys::recordDependencyOn(&depender, &referenced, pg_sys::DependencyType::DEPENDENCY_NORMAL) };
    }
    unsafe { pg_sys::CommandCounterIncrement() };
}

/// Removes the dependencies of storage table `relid` on other relations (before
/// recording those of a new defining query).
pub fn remove_source_dependencies(relid: pg_sys::Oid) {
    unsafe {
        pg_sys::deleteDependencyRecordsForClass(
            pg_sys::RelationRelationId,
            relid,
            pg_sys::RelationRelationId,
            pg_sys::DependencyType::DEPENDENCY_NORMAL as _,
        );
        pg_sys::CommandCounterIncrement();
    }
}

/// A visible column of a storage table: name and SQL type text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageColumn {
    /// Column name.
    pub name: String,
    /// Type as `format_type` prints it, with type modifier (e.g. `numeric(12,2)`).
    pub sql_type: String,
}

/// The visible (non-`__pgt_`) columns of storage table `relid`, in order.
pub fn visible_columns(relid: pg_sys::Oid) -> PgtResult<Vec<StorageColumn>> {
    query_map(
        "SELECT attname::text, pg_catalog.format_type(atttypid, atttypmod) FROM pg_catalog.pg_attribute \
         WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped AND attname::text NOT LIKE '\\_\\_pgt\\_%' \
         ORDER BY attnum",
        &[relid.into()],
        |row| Ok(StorageColumn { name: col(row, 1)?, sql_type: col(row, 2)? }),
    )
}

/// The hidden state columns (beyond `__pgt_row_id`) of storage table `relid`, with
/// types formatted under the pinned search path.
pub fn hidden_columns(relid: pg_sys::Oid) -> PgtResult<Vec<StorageColumn>> {
    crate::privilege::with_pinned_search_path(|| {
        query_map(
            "SELECT attname::text, pg_catalog.format_type(atttypid, atttypmod) FROM pg_catalog.pg_attribute \
             WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped AND attname::text LIKE '\\_\\_pgt\\_%' \
               AND attname <> $2 ORDER BY attnum",
            &[relid.into(), pgt_delta::names::ROW_ID.into()],
            |row| Ok(StorageColumn { name: col(row, 1)?, sql_type: col(row, 2)? }),
        )
    })
}

/// The hidden state columns a storage table for `plan` has.
pub fn plan_hidden_columns(plan: Option<&Plan>) -> Vec<StorageColumn> {
    plan.map(|p| p.hidden_columns())
        .unwrap_or_default()
        .into_iter()
        .map(|h| StorageColumn { name: h.name, sql_type: h.sql_type })
        .collect()
}

/// Makes the hidden state columns of storage table `name` (OID `relid`) those
/// `plan` needs: a plan rebuilt after source DDL can keep state of another type
/// (a sum over a column retyped to float8 becomes a rescan with no state, a min
/// over text keeps a text extremum). Drops the columns it no longer needs or
/// needs with another type, then adds the missing ones; the caller recomputes
/// every row afterwards.
pub fn sync_hidden_columns(relid: pg_sys::Oid, name: &QualifiedName, plan: &Plan) -> PgtResult<()> {
    let _internal = crate::activity::InternalDdl::begin();
    let have = hidden_columns(relid)?;
    let want = plan_hidden_columns(Some(plan));
    if have == want {
        return Ok(());
    }
    let drops: Vec<String> =
        have.iter().filter(|h| !want.contains(h)).map(|h| format!("DROP COLUMN {}", quote_ident(&h.name))).collect();
    if !drops.is_empty() {
        exec(&format!("ALTER TABLE {} {}", name.to_sql(), drops.join(", ")), &[])?;
    }
    let adds: Vec<String> = want
        .iter()
        .filter(|w| !have.contains(w))
        .map(|w| format!("ADD COLUMN {} {}", quote_ident(&w.name), w.sql_type))
        .collect();
    if !adds.is_empty() {
        exec(&format!("ALTER TABLE {} {}", name.to_sql(), adds.join(", ")), &[])?;
    }
    Ok(())
}

/// The columns a storage table for `query` would have.
pub fn columns_for(query: &AnalyzedQuery) -> PgtResult<Vec<StorageColumn>> {
    query
        .columns
        .iter()
        .map(|c| {
            let sql_type = query_one::<String>(
                "SELECT pg_catalog.format_type($1, $2)",
                &[c.type_oid.into(), c.typmod.into()],
            )?
            .ok_or_else(|| PgtError::internal("format_type returned NULL"))?;
            Ok(StorageColumn { name: c.name.clone(), sql_type })
        })
        .collect()
}

/// The intermediate state tables of stream table `pgt_id` that exist
/// (`pgtrickle_state.pgt_<pgt_id>_<n>`): (n, OID).
fn existing_state_tables(pgt_id: i64) -> PgtResult<Vec<(usize, pg_sys::Oid)>> {
    let prefix = format!("pgt_{pgt_id}_");
    let rows = query_map(
        "SELECT c.relname::text, c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relkind = 'r' AND pg_catalog.starts_with(c.relname::text, $2)",
        &[pgt_delta::names::STATE_SCHEMA.into(), prefix.as_str().into()],
        |row| Ok((col::<String>(row, 1)?, col::<pg_sys::Oid>(row, 2)?)),
    )?;
    Ok(rows.into_iter().filter_map(|(name, oid)| name.strip_prefix(&prefix).and_then(|n| n.parse().ok()).map(|n| (n, oid))).collect())
}

/// Gathers planner statistics (ANALYZE) of stream table `relid` and of its
/// intermediate state tables, just filled by a first recomputation: until
/// autovacuum gets to them, the planner would guess how many rows a lookup
/// by a correlation or join column finds and, guessing thousands, scan a
/// state table whole for every refresh. The state tables are analysed as
/// the extension owner (their owner); the stream table as its owner, who
/// runs the refresh.
pub fn analyze_after_recompute(pgt_id: i64, relid: pg_sys::Oid) -> PgtResult<()> {
    let tables = pgt_delta::Tables { stream_table: String::new(), pgt_id };
    let states = existing_state_tables(pgt_id)?;
    if !states.is_empty() {
        crate::privilege::as_extension_owner(|| {
            for (n, _) in &states {
                exec(&format!("ANALYZE {}", tables.state_table(*n)), &[])?;
            }
            Ok::<(), PgtError>(())
        })?;
    }
    exec(&format!("ANALYZE {}", crate::parse::relation_name(relid)?.to_sql()), &[])?;
    Ok(())
}

/// Makes the intermediate state tables of stream table `pgt_id` (owned by
/// `owner`) exactly those `plan` keeps (`pgt_delta::node`): a table per child
/// with a state, with its columns and types, a unique index on `__pgt_row_id`
/// and the guard trigger; others are dropped. Made as the extension owner, with
/// an AUTO dependency on the extension; the stream table's owner gets the
/// privileges its refreshes need. The caller recomputes them (a FULL refresh
/// with the plan fills them).
pub fn sync_state_tables(pgt_id: i64, owner: pg_sys::Oid, plan: &Plan) -> PgtResult<()> {
    let _internal = crate::activity::InternalDdl::begin();
    crate::privilege::as_extension_owner(|| {
        let tables = pgt_delta::Tables { stream_table: String::new(), pgt_id };
        let wanted = plan.state_tables();
        let existing = existing_state_tables(pgt_id)?;
        for (n, oid) in &existing {
            let keep = wanted.iter().find(|w| w.state() == Some(*n)).is_some_and(|w| {
                let have = crate::spi::query_map(
                    &format!(
                        "SELECT a.attname::text, {} FROM pg_catalog.pg_attribute a \
                         WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                        crate::objects::ATTRIBUTE_COLUMN_TYPE_SQL
                    ),
                    &[(*oid).into()],
                    |row| Ok((col::<String>(row, 1)?, col::<String>(row, 2)?)),
                );
                have.is_ok_and(|have| have == w.stored_column_types())
            });
            if !keep {
                crate::objects::drop_internal_table(&tables.state_table(*n))?;
            }
        }
        let remaining = existing_state_tables(pgt_id)?;
        for node in wanted {
            let Some(n) = node.state() else { continue };
            let table = tables.state_table(n);
            if !remaining.iter().any(|(m, _)| *m == n) {
                let columns = node
                    .stored_column_types()
                    .iter()
                    .map(|(c, t)| format!("{} {t}", quote_ident(c)))
                    .collect::<Vec<_>>()
                    .join(", ");
                exec(&format!("CREATE TABLE {table} ({columns}) WITH (fillfactor = 90)"), &[])?;
                exec(&format!("CREATE UNIQUE INDEX ON {table} ({})", quote_ident(ROW_ID_COLUMN)), &[])?;
                exec(
                    &format!(
                        "COMMENT ON TABLE {table} IS {}",
                        pgt_core::ident::quote_literal(&format!("pg_trickle: intermediate state {n} of stream table {pgt_id}"))
                    ),
                    &[],
                )?;
                let relid = query_one::<pg_sys::Oid>("SELECT $1::pg_catalog.regclass::oid", &[table.as_str().into()])?
                    .ok_or_else(|| PgtError::internal(format!("state table {table} was not created")))?;
                // A member, like the change buffers: left out of dumps.
                crate::privilege::record_extension_membership(pg_sys::RelationRelationId, relid, crate::privilege::extension_oid()?);
                let _ = ensure_guard(relid)?;
            }
        }
        sync_lookup_indexes(&tables, plan)?;
        sync_state_grants(pgt_id, owner)
    })
}

/// Creates the indexes the plan looks state table rows up by
/// (`Plan::state_lookups`), where missing and where every column's type has
/// a default btree operator class. Named `<state table>_<columns>_idx`.
fn sync_lookup_indexes(tables: &pgt_delta::Tables, plan: &Plan) -> PgtResult<()> {
    for (n, columns) in plan.state_lookups() {
        let table = tables.state_table(n);
        let indexable = query_one::<bool>(
            "SELECT pg_catalog.bool_and(EXISTS (SELECT 1 FROM pg_catalog.pg_opclass o JOIN pg_catalog.pg_am m ON m.oid = o.opcmethod \
                 WHERE m.amname = 'btree' AND o.opcdefault AND (o.opcintype IN (a.atttypid, \
                   (SELECT t.typbasetype FROM pg_catalog.pg_type t WHERE t.oid = a.atttypid)) \
                   OR EXISTS (SELECT 1 FROM pg_catalog.pg_cast c WHERE c.castsource = a.atttypid \
                              AND c.casttarget = o.opcintype AND c.castmethod = 'b')))) \
             FROM pg_catalog.pg_attribute a WHERE a.attrelid = $1::text::pg_catalog.regclass AND a.attname::text = ANY ($2)",
            &[table.as_str().into(), columns.clone().into()],
        )?;
        if indexable != Some(true) {
            continue;
        }
        let suffix = columns.iter().map(|c| c.trim_start_matches("__pgt_")).collect::<Vec<_>>().join("_");
        let name = format!("pgt_{}_{n}_{suffix}_idx", tables.pgt_id);
        exec(
            &format!(
                "CREATE INDEX IF NOT EXISTS {} ON {table} ({})",
                quote_ident(&name),
                columns.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ")
            ),
            &[],
        )?;
    }
    Ok(())
}

/// Gives the owner of stream table `pgt_id` (unless a superuser) exactly the
/// privileges its refreshes need on its state tables, taking them from anyone
/// else (after `ALTER TABLE ... OWNER TO`).
pub fn sync_state_grants(pgt_id: i64, owner: pg_sys::Oid) -> PgtResult<()> {
    let _internal = crate::activity::InternalDdl::begin();
    crate::privilege::as_extension_owner(|| {
        let tables = pgt_delta::Tables { stream_table: String::new(), pgt_id };
        let owner_name = query_one::<String>("SELECT rolname::text FROM pg_catalog.pg_roles WHERE oid = $1 AND NOT rolsuper", &[owner.into()])?;
        for (n, oid) in existing_state_tables(pgt_id)? {
            let table = tables.state_table(n);
            let granted: Vec<String> = query_map(
                "SELECT DISTINCT r.rolname::text FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a \
                 JOIN pg_catalog.pg_roles r ON r.oid = a.grantee WHERE c.oid = $1 AND a.grantee <> c.relowner",
                &[oid.into()],
                |row| col(row, 1),
            )?;
            for role in granted.iter().filter(|r| Some(*r) != owner_name.as_ref()) {
                exec(&format!("REVOKE ALL ON {table} FROM {}", quote_ident(role)), &[])?;
            }
            if let Some(owner) = &owner_name {
                exec(&format!("GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {}", quote_ident(owner)), &[])?;
            }
            crate::privilege::record_initial_privileges(pg_sys::RelationRelationId, oid);
        }
        Ok(())
    })
}

/// Drops the intermediate state tables of stream table `pgt_id`.
pub fn drop_state_tables(pgt_id: i64) -> PgtResult<()> {
    let _internal = crate::activity::InternalDdl::begin();
    crate::privilege::as_extension_owner(|| {
        let tables = pgt_delta::Tables { stream_table: String::new(), pgt_id };
        for (n, _) in existing_state_tables(pgt_id)? {
            crate::objects::drop_internal_table(&tables.state_table(n))?;
        }
        Ok(())
    })
}
