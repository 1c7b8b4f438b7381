//! pg_trickle building blocks that know nothing of PostgreSQL's C API.
//!
//! Everything here is plain Rust, unit-tested with `cargo test -p pgt_core` in
//! seconds. The extension crate (`pg_trickle`) and the tools (`pgt_testkit`, the
//! demo) sit on top of it; nothing here depends on them.
//!
//! - [`dag`]: the dependency graph of stream tables — topological order, cycles.
//! - [`ident`]: the one quoting helper for identifiers and literals in generated SQL.
//! - [`schedule`]: parsing and validating a stream table's `schedule`.
//! - [`frontier`]: which captured changes a refresh has applied.
//! - [`options`]: the closed sets of option values (`refresh_mode`, `cdc_mode`, ...).
//! - [`copies`]: counting copies of 64-bit keys (numbering equal rows in a FULL refresh).
//! - [`exact`]: the exact decimal value of a double (exact running sums of floats).

/// Counting copies of 64-bit keys.
pub mod copies;
/// The dependency graph of stream tables.
pub mod dag;
/// The exact decimal value of a double.
pub mod exact;
/// Which captured changes a refresh has applied.
pub mod frontier;
/// Quoting of identifiers and literals.
pub mod ident;
/// Option values of the SQL API.
pub mod options;
/// Stream-table schedules.
pub mod schedule;
