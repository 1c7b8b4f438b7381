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
/// 64-bit hash of their record text. Zero columns (a scalar aggregate) give 0.
pub fn row_id(alias: &str, columns: &[String]) -> String {
    if columns.is_empty() {
        "0::bigint".to_string()
    } else {
        format!("pg_catalog.hashtextextended(ROW({})::text, 0)", qualified(alias, columns))
    }
}
