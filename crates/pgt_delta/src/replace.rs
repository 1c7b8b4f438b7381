//! Replacing a stream table's contents by a full recomputation, writing only
//! what differs.
//!
//! A FULL refresh used to delete every row and insert the new result. Besides
//! writing the whole table twice, that made every FULL refresh look like a total
//! change to whatever captures the stream table's changes — a stream table
//! reading it would see all its rows deleted and inserted, and recompute in turn.
//! Instead, one MERGE matches the stored rows with the new result by row identity
//! (`__pgt_row_id`): identities gone are deleted, new ones inserted, and a row
//! whose other stored columns changed is updated; identical rows are not touched.
//! The new result's identities must be unique and deterministic — the plan's
//! row identities for a DIFFERENTIAL stream table, and content plus copy number
//! ([`content_row_id`]) for one refreshed in FULL mode.

use crate::sql::{qualified, quoted};
use crate::names::ROW_ID;
use pgt_core::ident::quote_ident;

/// The MERGE that makes `table` (quoted) hold exactly the rows of `source`, a
/// query returning `columns` — the stored columns, `__pgt_row_id` among them.
/// Returns one row per row written (`RETURNING merge_action()`).
///
/// "Changed" compares the rows' text (`ROW(...)::text`): a value rewritten in
/// another spelling (1.0 → 1.00) is written, as the stream table's contents do
/// change.
pub fn replace_sql(table: &str, columns: &[String], source: &str) -> String {
    let data: Vec<String> = columns.iter().filter(|c| c.as_str() != "__pgt_row_id").cloned().collect();
    let text = |alias: &str| format!("ROW({})::text", qualified(alias, &data));
    let set = data.iter().map(|c| format!("{q} = s.{q}", q = quote_ident(c))).collect::<Vec<_>>().join(", ");
    let update = if data.is_empty() {
        String::new()
    } else {
        format!("WHEN MATCHED AND {} IS DISTINCT FROM {} THEN UPDATE SET {set} ", text("t"), text("s"))
    };
    format!(
        "MERGE INTO {table} t USING ({source}) s ON t.__pgt_row_id = s.__pgt_row_id \
         {update}WHEN NOT MATCHED BY TARGET THEN INSERT ({cols}) VALUES ({values}) \
         WHEN NOT MATCHED BY SOURCE THEN DELETE RETURNING merge_action()",
        cols = quoted(columns),
        values = qualified("s", columns),
    )
}

/// The multiplier separating the identities of equal rows: copy `k` (1-based)
/// of a content whose first copy has identity `b` has identity
/// `b # ((k - 1) * COPY_STRIDE)` (XOR), so that a writer numbering copies as it
/// stores them (the wholesale replacement) computes the same identities as
/// [`content_row_id`].
pub const COPY_STRIDE: i64 = 2_654_435_761;

/// The hash of row `q`'s content: the identity of its first copy (see
/// [`content_row_id`]).
fn content_hash(columns: &[String], typed: bool) -> String {
    if typed {
        crate::sql::record_hash(&qualified("q", columns))
    } else {
        crate::sql::record_hash(&format!("ROW({})::text", qualified("q", columns)))
    }
}

/// The rows of `query` (whose output columns are `columns`) with a row identity
/// made of their content and copy number, deterministic, so a row that stays
/// keeps its identity from one recomputation to the next.
///
/// With `typed` (every column's type has a hash operator class), the content is
/// `hash_record_extended` of the typed values, which no session setting
/// (TimeZone, DateStyle, extra_float_digits) changes, and which is equal for
/// values their type calls equal (`1.0`, `1.00`: one identity, the MERGE then
/// rewrites the spelling). Otherwise it is the row's text, which is exact but
/// depends on those settings: a refresh from a session with other settings
/// rewrites the rows whose text changes. The first copy's identity is that
/// hash (64 bits); copies are told apart by [`COPY_STRIDE`].
pub fn content_row_id(query: &str, columns: &[String], typed: bool) -> String {
    let first = content_hash(columns, typed);
    with_row_id(query, columns, &format!("{first} # ((pg_catalog.row_number() OVER (PARTITION BY {first}) - 1) * {COPY_STRIDE})"))
}

/// The rows of `query` with the identity of the first copy of their content
/// ([`content_row_id`] without the copy number): for a writer that numbers
/// the copies of equal contents itself, in one pass, without the sort that a
/// window over contents needs.
pub fn first_copy_row_id(query: &str, columns: &[String], typed: bool) -> String {
    with_row_id(query, columns, &content_hash(columns, typed))
}

/// The rows of `query` with a `__pgt_row_id` of 0, for a writer that computes
/// the identities itself as it stores the rows (the same as
/// [`content_row_id`]'s).
pub fn unidentified_rows(query: &str, columns: &[String]) -> String {
    with_row_id(query, columns, "0::bigint")
}

/// `query`'s columns `columns` and `identity` (SQL over them, alias `q`) as
/// `__pgt_row_id`.
fn with_row_id(query: &str, columns: &[String], identity: &str) -> String {
    format!(
        "SELECT {cols}{sep}{identity} AS {ROW_ID} FROM ({query}) q",
        cols = qualified("q", columns),
        sep = if columns.is_empty() { "" } else { ", " },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_writes_only_differences() {
        let cols = vec!["a".to_string(), "b".to_string(), "__pgt_row_id".to_string()];
        let m = replace_sql("\"public\".\"st\"", &cols, "SELECT 1");
        assert!(m.starts_with("MERGE INTO \"public\".\"st\" t USING (SELECT 1) s ON t.__pgt_row_id = s.__pgt_row_id"));
        assert!(m.contains("WHEN MATCHED AND ROW(t.\"a\", t.\"b\")::text IS DISTINCT FROM ROW(s.\"a\", s.\"b\")::text THEN UPDATE SET \"a\" = s.\"a\", \"b\" = s.\"b\""));
        assert!(m.contains("WHEN NOT MATCHED BY TARGET THEN INSERT (\"a\", \"b\", \"__pgt_row_id\") VALUES (s.\"a\", s.\"b\", s.\"__pgt_row_id\")"));
        assert!(m.ends_with("WHEN NOT MATCHED BY SOURCE THEN DELETE RETURNING merge_action()"));
        // Identical rows match and meet no WHEN clause: nothing is written for them.
        assert!(!m.contains("WHEN MATCHED THEN"));
    }

    #[test]
    fn content_identity_numbers_copies() {
        let q = content_row_id("SELECT x FROM t", &["x".to_string()], false);
        assert_eq!(
            q,
            "SELECT q.\"x\", pg_catalog.hash_record_extended(ROW(ROW(q.\"x\")::text), 0) # ((pg_catalog.row_number() OVER (PARTITION BY pg_catalog.hash_record_extended(ROW(ROW(q.\"x\")::text), 0)) - 1) * 2654435761) AS __pgt_row_id FROM (SELECT x FROM t) q"
        );
        let typed = content_row_id("SELECT x FROM t", &["x".to_string()], true);
        assert!(typed.contains("PARTITION BY pg_catalog.hash_record_extended(ROW(q.\"x\"), 0)"), "{typed}");
        let first = first_copy_row_id("SELECT x FROM t", &["x".to_string()], true);
        assert!(first.contains("SELECT q.\"x\", pg_catalog.hash_record_extended(ROW(q.\"x\"), 0) AS __pgt_row_id"), "{first}");
    }
}
