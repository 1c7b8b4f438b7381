//! Small SQL-building helpers shared by the operator modules. Identifiers always go
//! through `pgt_core::ident::quote_ident`.

use pgt_core::ident::quote_ident;

/// `a."x", a."y"` — the columns qualified by `alias` and quoted.
pub fn qualified(alias: &str, columns: &[String]) -> String {
    columns.iter().map(|c| format!("{alias}.{}", quote_ident(c))).collect::<Vec<_>>().join(", ")
}

/// `"x", "y"` — the columns quoted.
pub fn quoted(columns: &[String]) -> String {
    columns.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ")
}

/// The row identity of a row given by identity columns `columns` of `alias`: a
/// 64-bit hash of their values ([`record_hash`]). Zero columns (a scalar
/// aggregate) give 0.
pub fn row_id(alias: &str, columns: &[String]) -> String {
    if columns.is_empty() {
        "0::bigint".to_string()
    } else {
        record_hash(&qualified(alias, columns))
    }
}

/// A 64-bit hash (bigint) of the record of the SQL expressions `fields`
/// (comma-separated), by `hash_record_extended`: each field is hashed with its
/// type's hash operator class, so values equal under the type's equality hash
/// equally (`1.0` and `1.00`, `'ab'::char(4)` and `'ab'::text`, citext case), as
/// `GROUP BY` and unique indexes compare them; and the hash does not depend on
/// session settings (TimeZone, DateStyle, extra_float_digits, ...) the way a
/// value's text does. Every field's type needs a hash operator class (the
/// translator checks).
pub fn record_hash(fields: &str) -> String {
    format!("pg_catalog.hash_record_extended(ROW({fields}), 0)")
}

/// SQL true when `value` equals (by operator `op`, e.g. `=` or
/// `OPERATOR(pg_catalog.=)`) one of the values query `list` returns: `value
/// op ANY (ARRAY(list))`. The array is an initplan parameter, so a lookup of
/// an indexed column is an index scan of each value whatever the planner
/// guesses of `list`'s size; a join or `IN` would be planned from that guess,
/// which for CTEs over changes or recursive queries is often far too large
/// (a hash of the whole table). `list` must return one column and should be
/// small: the array is built in memory.
pub fn any_of(value: &str, op: &str, list: &str) -> String {
    format!("{value} {op} ANY (ARRAY({list}))")
}

/// The statement `WITH <with> MERGE INTO <st> ...` applying to table `st`
/// (quoted) the rows of CTE `changes`, which `with` (a WITH list, without the
/// keyword) defines: each row has the columns `inserted`, `__pgt_row_id` and
/// `__pgt_gone` (boolean), one row per identity. A row with `__pgt_gone`
/// deletes the stored row of its identity; any other updates that row's
/// columns `updated`, or inserts it when there is none. The stored rows are
/// looked up among the changes' identities ([`any_of`]): joined to a CTE, the
/// planner would hash the whole table (1M rows for a few thousand written).
/// `returning` is the statement's RETURNING clause, or empty.
pub fn merge_by_identity(with: &str, changes: &str, st: &str, inserted: &[String], updated: &[String], returning: &str) -> String {
    let id = crate::names::ROW_ID;
    format!(
        "WITH {with} \
         MERGE INTO {st} t USING {changes} d \
         ON t.{id} = d.{id} AND {written} \
         WHEN MATCHED AND d.__pgt_gone THEN DELETE \
         WHEN MATCHED THEN UPDATE SET {set} \
         WHEN NOT MATCHED AND NOT d.__pgt_gone THEN INSERT ({cols}, {id}) VALUES ({values}, d.{id}) \
         {returning}",
        written = any_of(&format!("t.{id}"), "=", &format!("SELECT w.{id} FROM {changes} w")),
        set = updated.iter().map(|c| format!("{q} = d.{q}", q = quote_ident(c))).collect::<Vec<_>>().join(", "),
        cols = quoted(inserted),
        values = qualified("d", inserted),
    )
}

/// A 64-bit hash `hash` (a bigint expression) as a value to hash again without
/// losing bits: PostgreSQL's bigint hash folds its argument to 32 bits (so that
/// equal int4 and int8 values hash alike), which would make a hash of hashes
/// collide after some 10^5 rows. Its exact text keeps all 64.
pub fn unfolded(hash: &str) -> String {
    format!("({hash})::text")
}

/// The hash ([`record_hash`]) of columns `columns` of `alias`, each first passed
/// through its function in `functions` (same position; empty or missing: the
/// value itself; a pattern containing `{}`: the pattern with the value in
/// place of each `{}`). Used to keep 64-bit integer values whole
/// (`int8send`) and to tell numerics apart by sign (`{}, {} < 0`: two fields;
/// PostgreSQL's numeric hash ignores the sign, so `x` and `-x` collide).
pub fn hash_through(alias: &str, columns: &[String], functions: &[String]) -> String {
    let fields: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let value = format!("{alias}.{}", quote_ident(c));
            match functions.get(i).filter(|f| !f.is_empty()) {
                // An expression pattern over the value (`ROW({}, {} < 0)`).
                Some(f) if f.contains("{}") => f.replace("{}", &value),
                Some(f) => format!("{f}({value})"),
                None => value,
            }
        })
        .collect();
    record_hash(&fields.join(", "))
}
