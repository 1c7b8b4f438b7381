//! Facts about relations and types that several layers need, at the bottom so
//! that none of them depends on another for them: a relation's row-identity
//! key (capture's signature, the catalog's dependencies and the translation all
//! rely on the same one), the name of a source's change buffer, and types as
//! SQL text.

use crate::error::PgtResult;
use crate::spi::query_one;
use pgrx::pg_sys;
use pgt_core::ident::QualifiedName;

/// Schema holding change buffers and capture functions.
pub const CHANGES_SCHEMA: &str = "pgtrickle_changes";

/// Name of the change buffer of source `source_relid`.
pub fn buffer_name(source_relid: pg_sys::Oid) -> QualifiedName {
    QualifiedName::new(CHANGES_SCHEMA, format!("changes_{}", source_relid.to_u32()))
}

/// Attribute numbers of the relation's identity: its primary key, else a unique,
/// immediate, non-partial index over plain NOT NULL columns, else (for a stream
/// table) `__pgt_row_id`; empty when there is none.
pub fn key_attnums(relid: pg_sys::Oid) -> PgtResult<Vec<i16>> {
    let key = query_one::<Vec<i16>>(
        "SELECT i.indkey::int2[] FROM pg_catalog.pg_index i \
         WHERE i.indrelid = $1 AND i.indisunique AND i.indimmediate AND i.indisvalid \
           AND i.indexprs IS NULL AND i.indpred IS NULL \
           AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a \
                           WHERE a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey::int2[]) AND NOT a.attnotnull) \
         ORDER BY i.indisprimary DESC, i.indnkeyatts, i.indexrelid LIMIT 1",
        &[relid.into()],
    )?;
    Ok(key.unwrap_or_default())
}

/// Type `oid` with modifier `typmod` as SQL text, schema-qualified unless in
/// `pg_catalog` (`format_type` under the pinned search path).
pub fn format_type(oid: pg_sys::Oid, typmod: i32) -> PgtResult<String> {
    crate::privilege::with_pinned_search_path(|| {
        query_one::<String>("SELECT pg_catalog.format_type($1, $2)", &[oid.into(), typmod.into()])?
            .ok_or_else(|| crate::error::PgtError::internal(format!("format_type found no type with OID {}", oid.to_u32())))
    })
}

/// A column's type as SQL text for `CREATE TABLE`: [`format_type`], followed by
/// `COLLATE "schema"."name"` when its collation is not its type's default (a
/// state table column must compare as the subquery column it stores).
pub fn column_type(oid: pg_sys::Oid, typmod: i32, collation: pg_sys::Oid) -> PgtResult<String> {
    let typ = format_type(oid, typmod)?;
    crate::privilege::with_pinned_search_path(|| {
        let collate = query_one::<String>(
            "SELECT ' COLLATE ' || pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.collname) \
             FROM pg_catalog.pg_collation c JOIN pg_catalog.pg_namespace n ON n.oid = c.collnamespace \
             WHERE c.oid = $1 AND c.oid <> (SELECT t.typcollation FROM pg_catalog.pg_type t WHERE t.oid = $2)",
            &[collation.into(), oid.into()],
        )?;
        Ok(format!("{typ}{}", collate.unwrap_or_default()))
    })
}

/// SQL that computes [`column_type`] for column `a` of `pg_attribute` (for
/// comparing a table's columns with the types wanted).
pub const ATTRIBUTE_COLUMN_TYPE_SQL: &str = "pg_catalog.format_type(a.atttypid, a.atttypmod) || COALESCE((SELECT ' COLLATE ' || \
     pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.collname) FROM pg_catalog.pg_collation c \
     JOIN pg_catalog.pg_namespace n ON n.oid = c.collnamespace WHERE c.oid = a.attcollation AND c.oid <> \
     (SELECT t.typcollation FROM pg_catalog.pg_type t WHERE t.oid = a.atttypid)), '')";

/// Drops table `name` (SQL text, schema-qualified and quoted) if it exists,
/// first releasing it from the extension when it is a member
/// ([`crate::privilege::record_extension_membership`]: change buffers and
/// state tables). Run with [`crate::activity::InternalDdl`] begun, as the
/// extension owner.
pub fn drop_internal_table(name: &str) -> PgtResult<()> {
    let Some(relid) = query_one::<pg_sys::Oid>("SELECT pg_catalog.to_regclass($1)::oid", &[name.into()])? else {
        return Ok(());
    };
    crate::privilege::forget_extension_membership(pg_sys::RelationRelationId, relid);
    crate::spi::exec(&format!("DROP TABLE {name}"), &[])?;
    Ok(())
}
