//! Quoting of identifiers and literals for generated SQL.
//!
//! Every piece of SQL that pg_trickle generates goes through these helpers; SQL is
//! never assembled from unquoted user strings. Identifiers are always double-quoted
//! (PostgreSQL docs §4.1.1, "Identifiers and Key Words"), which is correct for every
//! name, including keywords, mixed case and names containing quotes.

use std::fmt;

/// Returns `name` as a double-quoted SQL identifier, doubling embedded quotes.
///
/// `quote_ident("Order Lines")` is `"Order Lines"`; `quote_ident(r#"a"b"#)` is
/// `"a""b"`. The result is case-preserving: `quote_ident("foo")` names the same
/// relation as the bare `foo` only because `foo` is lower case.
pub fn quote_ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Returns `value` as an SQL string literal that is correct whatever the setting of
/// `standard_conforming_strings`: quotes are doubled, and a value containing a
/// backslash is written in escape-string syntax (`E'...'`) with backslashes doubled,
/// as PostgreSQL's own `quote_literal()` does.
pub fn quote_literal(value: &str) -> String {
    let has_backslash = value.contains('\\');
    let mut out = String::with_capacity(value.len() + 3);
    if has_backslash {
        out.push('E');
    }
    out.push('\'');
    for c in value.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            _ => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A schema-qualified relation name as the user meant it (already case-folded as
/// PostgreSQL folds unquoted identifiers), e.g. `public.orders` or
/// `"Sales"."Order Lines"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QualifiedName {
    /// Schema name, exactly as stored in `pg_namespace.nspname`.
    pub schema: String,
    /// Relation name, exactly as stored in `pg_class.relname`.
    pub name: String,
}

impl QualifiedName {
    /// Builds a name from its two parts, taken verbatim.
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        QualifiedName { schema: schema.into(), name: name.into() }
    }

    /// The name as SQL: both parts double-quoted, e.g. `"public"."orders"`.
    pub fn to_sql(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

impl fmt::Display for QualifiedName {
    /// Displays the name for messages: parts quoted only where PostgreSQL would
    /// need it, so `public.orders` reads naturally and `public."Order Lines"` stays
    /// unambiguous.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", display_ident(&self.schema), display_ident(&self.name))
    }
}

/// Formats an identifier for a human-readable message: bare when it is a plain
/// lower-case identifier, double-quoted otherwise. Never use this for SQL; use
/// [`quote_ident`].
pub fn display_ident(name: &str) -> String {
    let plain = !name.is_empty()
        && name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
    if plain {
        name.to_string()
    } else {
        quote_ident(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_always_quoted_and_quotes_doubled() {
        assert_eq!(quote_ident("orders"), "\"orders\"");
        assert_eq!(quote_ident("Order Lines"), "\"Order Lines\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_ident(""), "\"\"");
    }

    #[test]
    fn literals_double_quotes_and_escape_backslashes() {
        assert_eq!(quote_literal("abc"), "'abc'");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("a\\b"), "E'a\\\\b'");
    }

    #[test]
    fn qualified_names_render_for_sql_and_for_people() {
        let n = QualifiedName::new("public", "Order Lines");
        assert_eq!(n.to_sql(), "\"public\".\"Order Lines\"");
        assert_eq!(n.to_string(), "public.\"Order Lines\"");
        assert_eq!(QualifiedName::new("s", "t1").to_string(), "s.t1");
        assert_eq!(display_ident("1abc"), "\"1abc\"");
    }
}
