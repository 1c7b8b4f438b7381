//! Source DDL: what `ALTER TABLE` (and `ALTER VIEW`, `CREATE OR REPLACE VIEW`,
//! `ALTER TYPE` on a typed table's type, renames) on a relation means for the
//! stream tables reading it.
//!
//! Every dependency of a stream table records the columns it relies on — those
//! its defining query reads (the parser's `selectedCols`, as privilege checks use
//! them) plus a table's row-identity key — and their *signature*
//! (`pgtrickle._source_signature`: the relation's name, each such column's
//! number, name, type and collation, a view's definition). After DDL on a source
//! the `ddl_command_end` event trigger calls [`on_relations_changed`], which for
//! each stream table reading it decides:
//!
//! - **concerned** when the signature changed (a column it reads renamed,
//!   retyped or dropped; the source renamed or moved; a view it reads redefined),
//!   when a column it reads was rewritten in place (`ALTER COLUMN ... TYPE ...
//!   USING` to the same type, `SET EXPRESSION`: found in the collected commands),
//!   or, for a DIFFERENTIAL plan, when the source's row-identity key changed.
//!   With `pg_trickle.block_source_ddl` (on by default) the DDL then fails with
//!   an error naming the stream tables; otherwise they are marked
//!   `needs_reinit` and their next refresh re-derives the query from the stored
//!   query tree (following renames), the plan and the storage column types, and
//!   recomputes ([`crate::refresh`]).
//! - **not concerned** otherwise — DDL on columns it does not read. The change
//!   buffer is altered in place ([`cdc::sync_capture`]) and its pending rows stay
//!   valid for it; its DIFFERENTIAL plan stops reading the columns whose captured
//!   form changed ([`pgt_delta::Plan::forget_columns`]). Nothing is recomputed.
//!
//! Rows that entered or left a source without passing through capture (a
//! partition attached or detached) clear every reader's frontier, so each
//! recomputes once; that is never blocked.

use crate::catalog::{self, Consumer};
use crate::cdc;
use crate::error::{PgtError, PgtResult};
use crate::guc;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use pgt_core::ident::QualifiedName;
use pgt_delta::Plan;

/// Why a stream table is concerned by DDL on one of its sources.
struct Concerned {
    stream_table: QualifiedName,
    pgt_id: i64,
    /// The stream table's owner.
    owner: pg_sys::Oid,
    reason: String,
}

/// Called by the `ddl_command_end` event trigger with the OIDs of relations the
/// command touched (see the module doc), and by `sql_drop` after a cascade
/// dropped columns or an index (`in_ddl_command_end` false: no collected commands
/// to read).
///
/// # Errors
/// 2BP01 (dependent_objects_still_exist) when `pg_trickle.block_source_ddl` is on
/// and a stream table is concerned; the DDL is rolled back.
pub fn on_relations_changed(relids: &[pg_sys::Oid], in_ddl_command_end: bool, command_tag: &str) -> PgtResult<()> {
    if crate::activity::internal_ddl_in_progress() {
        return Ok(());
    }
    let collected = if in_ddl_command_end { collected_subcommands()? } else { Vec::new() };
    let rewritten: Vec<(pg_sys::Oid, i16)> =
        collected.iter().filter(|c| c.rewrites).filter_map(|c| c.column.map(|a| (c.relid, a))).collect();
    // Whether this command itself could have switched capture triggers off:
    // then their repair, at its end, means no write went uncaptured.
    let touches_triggers =
        matches!(command_tag, "ALTER TRIGGER" | "CREATE TRIGGER" | "DROP TRIGGER") || collected.iter().any(|c| c.triggers);
    refuse_stream_table_reshaping(relids, &rewritten)?;
    // Stream tables the command touched: their guard trigger comes back if it
    // was dropped or disabled, and a new owner gets the change buffers its
    // refreshes read.
    for relid in relids {
        if let Some(st) = catalog::stream_table_by_relid(*relid)? {
            if let Some(repaired) = crate::storage::ensure_guard(st.relid)? {
                pgrx::notice!("{repaired}; pg_trickle put it back: only refreshes write stream table {}", st.name);
            }
            for dep in catalog::dependencies(st.pgt_id)? {
                cdc::sync_buffer_grants(dep.source_relid)?;
            }
            crate::storage::sync_state_grants(st.pgt_id, st.owner)?;
        }
    }
    let mut sources: Vec<pg_sys::Oid> = Vec::new();
    for relid in relids {
        let mut affected = cdc::captured_sources_affected_by(*relid)?;
        // Read relations the command touched, and those it made a partition or
        // an inheritance parent or child of them (ATTACH PARTITION reports the
        // parent, CREATE TABLE ... INHERITS the child).
        affected.extend(read_relations_related_to(*relid)?);
        for source in affected {
            if !sources.contains(&source) {
                sources.push(source);
            }
        }
    }
    let mut concerned: Vec<Concerned> = Vec::new();
    for source in sources {
        let consumers = catalog::consumers(source)?;
        let sync = cdc::sync_capture(source)?;
        for repaired in &sync.repaired {
            pgrx::notice!(
                "{repaired}; pg_trickle put it back: stream tables read {} and every change to it must be captured",
                crate::parse::relation_name(source)?
            );
        }
        if !sync.repaired.is_empty() && !touches_triggers {
            // Switched off earlier, where no event trigger saw it (a superuser
            // with event_triggers = off): writes may have gone uncaptured.
            pgrx::warning!(
                "capture of {} had been switched off; the stream tables reading it recompute in full at their next refresh",
                crate::parse::relation_name(source)?
            );
            catalog::clear_frontiers_of_readers(source)?;
        }
        // Row-level security switched, or a new owner: who may have the buffer.
        cdc::sync_buffer_grants(source)?;
        let source_name = crate::parse::relation_name(source)?;
        let key = current_key(source)?;
        let membership = membership_problem(source)?;
        let rewritten_here: Vec<i16> = rewritten.iter().filter(|(r, _)| *r == source).map(|(_, a)| *a).collect();
        for consumer in consumers {
            if consumer.needs_reinit {
                // Earlier DDL (run with blocking off) already concerned it: it
                // re-derives everything at its next refresh and reads no
                // pending changes, so later DDL changes nothing for it but
                // the names its query has in dumps until then.
                sync_guard(consumer.pgt_id)?;
                continue;
            }
            let plan = consumer.delta_plan.as_deref().and_then(|p| Plan::from_json(p).ok());
            let why = membership
                .clone()
                .or_else(|| why_concerned(&consumer, plan.as_ref(), source, &key, &rewritten_here, &source_name));
            match why {
                Some(reason) => concerned.push(Concerned {
                    stream_table: consumer.name.clone(),
                    pgt_id: consumer.pgt_id,
                    owner: consumer.owner,
                    reason,
                }),
                None => keep_differential(consumer.pgt_id, plan, source, &sync)?,
            }
        }
    }
    block_or_reinitialize(concerned, in_ddl_command_end)
}

/// The end of every DDL check: with `pg_trickle.block_source_ddl` on, fails the
/// command being reported (`in_ddl_command_end`) when it concerns stream
/// tables of the role running it, naming them and why (2BP01); otherwise
/// marks every stream table `concerned` for reinitialization at its next
/// refresh, with a NOTICE each.
fn block_or_reinitialize(concerned: Vec<Concerned>, in_ddl_command_end: bool) -> PgtResult<()> {
    if concerned.is_empty() {
        return Ok(());
    }
    // Only the command being reported is blocked; a cascade or DROP INDEX seen
    // at sql_drop may reveal drift it did not cause, so there the stream tables
    // concerned reinitialize instead. And only the stream tables of the role
    // running the DDL block it: another role's stream table reading the table
    // gives that role no say over the table's DDL (a view would not either,
    // for a rename); it reinitializes.
    let actor = crate::privilege::acting_role();
    let blocking: Vec<&Concerned> =
        concerned.iter().filter(|c| crate::privilege::has_privileges_of(actor, c.owner)).collect();
    if guc::BLOCK_SOURCE_DDL.get() && in_ddl_command_end && !blocking.is_empty() {
        let concerned = blocking;
        let mut names: Vec<String> = concerned.iter().map(|c| c.stream_table.to_string()).collect();
        names.dedup();
        return Err(PgtError::new(
            PgSqlErrorCode::ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST,
            format!("cannot change a source of stream table{} {}", if names.len() == 1 { "" } else { "s" }, names.join(", ")),
        )
        .detail(concerned.iter().map(|c| format!("{}: {}.", c.stream_table, c.reason)).collect::<Vec<_>>().join("\n"))
        .hint(
            "Run the DDL after SET LOCAL pg_trickle.block_source_ddl = off; the stream tables then reinitialize \
             at their next refresh. Or drop them, or give them a new query with alter_stream_table first.",
        ));
    }
    for c in &concerned {
        catalog::mark_needs_reinit(c.pgt_id)?;
        sync_guard(c.pgt_id)?;
        pgrx::notice!("stream table {} will reinitialize at its next refresh: {}", c.stream_table, c.reason);
    }
    Ok(())
}

/// Brings the definition the guard of stream table `pgt_id` carries into
/// dumps up to date ([`crate::storage::ensure_guard`]): until its
/// reinitialization, a stream table marked for one carries its query as its
/// stored tree deparses under the names of now.
fn sync_guard(pgt_id: i64) -> PgtResult<()> {
    if let Some(st) = catalog::stream_table_by_id(pgt_id)? {
        crate::storage::ensure_guard(st.relid)?;
    }
    Ok(())
}

/// Called by the `ddl_command_end` event trigger after DDL that can rename or
/// move what a defining query names besides the relations it reads: `ALTER
/// SCHEMA`, `ALTER FUNCTION`, `ALTER AGGREGATE`, `ALTER OPERATOR`, `ALTER
/// TYPE`, `ALTER DOMAIN` (RENAME, SET SCHEMA), and after `CREATE [OR REPLACE]
/// FUNCTION` (`functions`: the functions it created or replaced).
///
/// Refreshes run the query text stored at create (`defining_query`) and SQL
/// generated from it, while the stored query tree names everything by OID, as
/// a view's rule does. A stream table is concerned by a rename when its tree,
/// deparsed now, no longer gives its stored text: it is then blocked or
/// reinitialized (re-derived from the tree, under the new names) as DDL on a
/// source is ([`on_relations_changed`]). A replaced function changes what its
/// callers compute: the stream tables calling it (directly, or as an
/// aggregate or window function) reinitialize at their next refresh, whatever
/// `pg_trickle.block_source_ddl` says, as their stored state came from the
/// old body.
pub fn on_objects_changed(command_tag: &str, functions: &[pg_sys::Oid]) -> PgtResult<()> {
    if crate::activity::internal_ddl_in_progress() {
        return Ok(());
    }
    let mut renamed: Vec<Concerned> = Vec::new();
    for st in catalog::stored_definitions()? {
        if st.needs_reinit {
            if command_tag != "CREATE FUNCTION" {
                sync_guard(st.pgt_id)?;
            }
            continue;
        }
        let Some(tree) = st.query_tree.as_deref() else { continue };
        if command_tag == "CREATE FUNCTION" {
            if let Some(function) = functions.iter().find(|f| crate::parse::tree_calls_function(tree, **f)) {
                let name = crate::spi::query_one::<String>("SELECT $1::pg_catalog.regprocedure::text", &[(*function).into()])?
                    .unwrap_or_else(|| format!("with OID {}", function.to_u32()));
                catalog::mark_needs_reinit(st.pgt_id)?;
                pgrx::notice!(
                    "stream table {} will reinitialize at its next refresh: function {name}, which its query calls, was replaced",
                    st.name
                );
            }
            continue;
        }
        // A tree that no longer deparses names something dropped since: its
        // refresh reports that; this DDL is not what concerns it.
        let deparsed = crate::spi::in_subtransaction(|| crate::parse::deparse_stored_tree(tree));
        if let Ok(Ok(Some(text))) = deparsed {
            if text != st.defining_query {
                renamed.push(Concerned {
                    stream_table: st.name.clone(),
                    pgt_id: st.pgt_id,
                    owner: st.owner,
                    reason: format!("{command_tag} renamed or moved something its query names; the query now reads: {text}"),
                });
            }
        }
    }
    block_or_reinitialize(renamed, true)
}

/// Called by the `ddl_command_end` event trigger after GRANT or REVOKE in a
/// database with change capture: the grants on every change buffer follow who
/// may now read its source ([`cdc::sync_buffer_grants`]). Whether a refresh
/// may read a buffer is decided anyway when it reads (the buffer's policy);
/// this keeps the grants themselves least.
pub fn on_privileges_changed() -> PgtResult<()> {
    if crate::activity::internal_ddl_in_progress() {
        return Ok(());
    }
    for source in catalog::captured_sources()? {
        cdc::sync_buffer_grants(source)?;
    }
    Ok(())
}

/// Why `consumer` (with its DIFFERENTIAL `plan`, if any) is concerned by the DDL
/// just run on its source `relid`, or `None`. `key` is the source's row-identity
/// key now (column names).
fn why_concerned(
    consumer: &Consumer,
    plan: Option<&Plan>,
    relid: pg_sys::Oid,
    key: &[String],
    rewritten: &[i16],
    source: &QualifiedName,
) -> Option<String> {
    let (Some(recorded), Some(current)) = (&consumer.recorded_signature, &consumer.current_signature) else {
        return Some(format!("{source} changed"));
    };
    if recorded != current {
        return Some(describe_signature_change(recorded, current, source));
    }
    let reads = |attnum: &i16| consumer.columns_read.as_ref().is_none_or(|read| read.contains(attnum));
    if let Some(attnum) = rewritten.iter().find(|a| reads(a)) {
        let name = column_name(current, *attnum).unwrap_or_else(|| format!("number {attnum}"));
        return Some(format!("column {name} of {source}, which it reads, was rewritten"));
    }
    // A keyed DIFFERENTIAL plan relies on exactly the key it was built with (a
    // keyless one on none: a new key changes nothing for it).
    let relation = plan?.relations().into_iter().find(|r| r.relid == relid.to_u32())?;
    if !relation.key.is_empty() && relation.key != key {
        return Some(format!(
            "its DIFFERENTIAL plan identifies rows of {source} by ({}), which is no longer its key",
            relation.key.join(", ")
        ));
    }
    None
}

/// The row-identity key of `relid` now (column names, in key order), as the
/// translation chooses it; empty when it has none.
fn current_key(relid: pg_sys::Oid) -> PgtResult<Vec<String>> {
    let attnums = crate::objects::key_attnums(relid)?;
    crate::spi::query_map(
        "SELECT a.attname::text FROM pg_catalog.unnest($2::int2[]) WITH ORDINALITY k(attnum, n) \
         JOIN pg_catalog.pg_attribute a ON a.attrelid = $1 AND a.attnum = k.attnum ORDER BY k.n",
        &[relid.into(), attnums.into()],
        |row| crate::spi::col(row, 1),
    )
}

/// Whether source `relid` became a partition, or joined an inheritance tree,
/// since it was read: statements on the parent would then change its rows
/// without firing its own statement triggers, so its changes would be missed.
fn membership_problem(relid: pg_sys::Oid) -> PgtResult<Option<String>> {
    let problem = crate::spi::query_one::<String>(
        "SELECT CASE WHEN c.relispartition THEN 'it became a partition of ' || i.inhparent::pg_catalog.regclass::text \
                     WHEN i.inhparent IS NOT NULL THEN 'it inherits from ' || i.inhparent::pg_catalog.regclass::text \
                     WHEN c.relkind = 'r' AND EXISTS (SELECT 1 FROM pg_catalog.pg_inherits x WHERE x.inhparent = c.oid) \
                          THEN 'another table inherits from it' END \
         FROM pg_catalog.pg_class c LEFT JOIN pg_catalog.pg_inherits i ON i.inhrelid = c.oid \
         WHERE c.oid = $1 AND c.relkind IN ('r', 'p') LIMIT 1",
        &[relid.into()],
    )?;
    let name = crate::parse::relation_name(relid)?;
    Ok(problem.map(|p| {
        format!("it reads {name}, and {p}: statements on the parent change its rows without firing its own capture triggers")
    }))
}

/// Relations some stream table reads among `relid`, the partitions and
/// inheritance children below it, and its inheritance parents.
fn read_relations_related_to(relid: pg_sys::Oid) -> PgtResult<Vec<pg_sys::Oid>> {
    crate::spi::query_map(
        "SELECT DISTINCT d.source_relid FROM pgtrickle.pgt_dependencies d \
         WHERE d.source_relid = $1 \
            OR d.source_relid IN (SELECT t.relid::pg_catalog.oid FROM pg_catalog.pg_partition_tree($1::pg_catalog.regclass) t) \
            OR d.source_relid IN (SELECT inhrelid FROM pg_catalog.pg_inherits WHERE inhparent = $1) \
            OR d.source_relid IN (SELECT inhparent FROM pg_catalog.pg_inherits WHERE inhrelid = $1) \
         ORDER BY 1",
        &[relid.into()],
        |row| crate::spi::col(row, 1),
    )
}

/// Says what differs between two signatures
/// (`name|attnum:column:type:typmod:collation|...[|view:definition]`).
fn describe_signature_change(recorded: &str, current: &str, source: &QualifiedName) -> String {
    // A view's definition comes last and may itself contain `|`.
    let (recorded, old_view) = recorded.split_once("|view:").unwrap_or((recorded, ""));
    let (current, new_view) = current.split_once("|view:").unwrap_or((current, ""));
    let mut old = recorded.split('|');
    let mut new = current.split('|');
    let (old_name, new_name) = (old.next().unwrap_or_default(), new.next().unwrap_or_default());
    if old_name != new_name {
        return format!("{old_name}, which it reads, was renamed to {new_name}");
    }
    let new: Vec<&str> = new.collect();
    let mut changes = Vec::new();
    for element in old {
        if new.contains(&element) {
            continue;
        }
        let mut parts = element.splitn(3, ':');
        let (attnum, name) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
        let now = new.iter().find(|e| e.split(':').next() == Some(attnum));
        changes.push(match now {
            None => format!("column {name} was dropped"),
            Some(now) if now.split(':').nth(1) != Some(name) => {
                format!("column {name} was renamed to {}", now.split(':').nth(1).unwrap_or_default())
            }
            Some(_) => format!("column {name} changed type or collation"),
        });
    }
    if old_view != new_view {
        changes.push("its definition was replaced".to_string());
    }
    if changes.is_empty() {
        changes.push("the columns it reads changed".to_string());
    }
    format!("it reads {source}, where {}", changes.join(", "))
}

/// The name of column `attnum` in a signature, if listed.
pub(crate) fn column_name(signature: &str, attnum: i16) -> Option<String> {
    let prefix = format!("{attnum}:");
    signature.split('|').skip(1).find_map(|e| e.strip_prefix(&prefix).and_then(|rest| rest.split(':').next()).map(str::to_string))
}

/// A stream table not concerned by the DDL keeps its frontier: its plan stops
/// reading the source columns whose captured form changed (none of which it
/// reads). If rows bypassed capture, it recomputes once instead.
fn keep_differential(pgt_id: i64, plan: Option<Plan>, source: pg_sys::Oid, sync: &cdc::CaptureSync) -> PgtResult<()> {
    if sync.pending_changes_lost {
        return catalog::clear_frontier(pgt_id);
    }
    let Some(mut plan) = plan else { return Ok(()) };
    if !sync.changed_columns.is_empty() && plan.forget_columns(source.to_u32(), &sync.changed_columns) {
        catalog::update_plan_text(pgt_id, &plan.to_json())?;
    }
    Ok(())
}

/// One ALTER TABLE subcommand of the command being reported, as the DDL
/// handling needs it.
struct Subcommand {
    /// The relation it changed.
    relid: pg_sys::Oid,
    /// The column it changed, if any.
    column: Option<i16>,
    /// It rewrote a column's values in place: `ALTER COLUMN ... TYPE` (also to
    /// the same type, with USING) or `SET EXPRESSION`.
    rewrites: bool,
    /// It enabled or disabled triggers.
    triggers: bool,
}

/// The ALTER TABLE subcommands of the commands being reported, read from the
/// collected commands of `pg_event_trigger_ddl_commands()`
/// (`tcop/deparse_utility.h`): each carries the address of what it changed.
fn collected_subcommands() -> PgtResult<Vec<Subcommand>> {
    use pg_sys::AlterTableType as T;
    Spi::connect_mut(|client| {
        let mut table = client.update(
            "SELECT command FROM pg_catalog.pg_event_trigger_ddl_commands() \
             WHERE command_tag IN ('ALTER TABLE', 'ALTER TYPE', 'ALTER FOREIGN TABLE')",
            None,
            &[],
        )?;
        let mut out = Vec::new();
        // pg_ddl_command has no SQL representation: read the raw pointer datum
        // of each row in turn.
        while table.next().is_some() {
            let Some(datum) = table.get_datum_by_ordinal(1)? else { continue };
            let command = datum.cast_mut_ptr::<pg_sys::CollectedCommand>();
            unsafe {
                if command.is_null() || (*command).type_ != pg_sys::CollectedCommandType::SCT_AlterTable {
                    continue;
                }
                let relid = (*command).d.alterTable.objectId;
                let subcommands = pgrx::PgList::<pg_sys::CollectedATSubcmd>::from_pg((*command).d.alterTable.subcmds);
                for sub in subcommands.iter_ptr() {
                    let parsetree = (*sub).parsetree;
                    if parsetree.is_null() || !pgrx::is_a(parsetree, pg_sys::NodeTag::T_AlterTableCmd) {
                        continue;
                    }
                    let subtype = (*(parsetree as *mut pg_sys::AlterTableCmd)).subtype;
                    let address = (*sub).address;
                    let column = (address.classId == pg_sys::RelationRelationId && address.objectSubId > 0)
                        .then_some(address.objectSubId as i16);
                    out.push(Subcommand {
                        relid: if address.classId == pg_sys::RelationRelationId && address.objectId != pg_sys::InvalidOid {
                            address.objectId
                        } else {
                            relid
                        },
                        column,
                        rewrites: subtype == T::AT_AlterColumnType || subtype == T::AT_SetExpression,
                        triggers: [
                            T::AT_EnableTrig,
                            T::AT_EnableAlwaysTrig,
                            T::AT_EnableReplicaTrig,
                            T::AT_DisableTrig,
                            T::AT_EnableTrigAll,
                            T::AT_DisableTrigAll,
                            T::AT_EnableTrigUser,
                            T::AT_DisableTrigUser,
                        ]
                        .contains(&subtype),
                    });
                }
            }
        }
        Ok::<_, PgtError>(out)
    })
}

/// Refuses DDL that would make a stream table's contents something else than
/// its query's result, as PostgreSQL refuses it on a materialized view: its
/// columns added, dropped, renamed or retyped (`ALTER COLUMN ... TYPE ...
/// USING` rewrites its rows), or the table joined to an inheritance tree or
/// partitioned table (statements on the parent would change its rows without
/// its guard trigger firing, and its rows would show in the parent's).
///
/// # Errors
/// 42809 (wrong_object_type), naming the stream table.
fn refuse_stream_table_reshaping(relids: &[pg_sys::Oid], rewritten: &[(pg_sys::Oid, i16)]) -> PgtResult<()> {
    let inheriting = crate::spi::query_map(
        "SELECT DISTINCT st.pgt_relid FROM pgtrickle.pgt_stream_tables st JOIN pg_catalog.pg_inherits i \
           ON i.inhrelid = st.pgt_relid OR i.inhparent = st.pgt_relid",
        &[],
        |row| crate::spi::col::<pg_sys::Oid>(row, 1),
    )?;
    let refuse = |relid: pg_sys::Oid, what: &str| -> PgtResult<()> {
        let name = crate::parse::relation_name(relid)?;
        Err(PgtError::new(PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE, format!("cannot {what} stream table {name}"))
            .detail("Its rows are the result of its defining query; pg_trickle's refreshes write them.")
            .hint("Change its query with pgtrickle.alter_stream_table(name, query => ...)."))
    };
    if let Some(relid) = inheriting.first() {
        return refuse(*relid, "make an inheritance parent, child or partition of");
    }
    for relid in relids {
        let Some(st) = catalog::stream_table_by_relid(*relid)? else { continue };
        if rewritten.iter().any(|(r, _)| *r == st.relid) {
            return refuse(st.relid, "rewrite the columns of");
        }
        let analyzed = crate::parse::analyze_defining_query(&st.defining_query, catalog::is_stream_table)?;
        let plan = st.delta_plan.as_deref().and_then(|p| Plan::from_json(p).ok());
        let same = crate::storage::visible_columns(st.relid)? == crate::storage::columns_for(&analyzed)?
            && (plan.is_none() || crate::storage::hidden_columns(st.relid)? == crate::storage::plan_hidden_columns(plan.as_ref()));
        if !same {
            return refuse(st.relid, "change the columns of");
        }
    }
    Ok(())
}
