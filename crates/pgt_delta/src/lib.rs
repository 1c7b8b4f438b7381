//! pg_trickle's delta algebra: the operator tree of a defining query, the delta
//! rule of each operator, and the SQL those rules generate. Nothing here knows
//! PostgreSQL's C API; the extension translates an analysed query into a [`Plan`]
//! and runs the SQL this crate writes.
//!
//! Data and deltas are multisets with signed integer weights (Z-sets; Budiu et al.,
//! "DBSP: Automatic Incremental View Maintenance for Rich Query Languages", VLDB
//! 2023). A relation's delta over a refresh is `ΔR = R_new − R_old`: rows inserted
//! carry weight +1, rows deleted −1, an UPDATE is both. Every operator `Q` has a
//! rule giving `ΔQ` from its inputs' deltas and (where needed) their states, such
//! that `Q(new) = Q(old) + ΔQ`. Each operator lives in its own module with its
//! identity and derivation at the top:
//!
//! - [`scan`]: a captured base relation — its delta from the change buffer window,
//!   its new and old states;
//! - [`join`]: a select-project-join block (filters, projections, inner joins of
//!   any arity and condition), by the telescoping rule, and LEFT / RIGHT joins,
//!   whose NULL-extended rows follow their preserved rows' match counts;
//! - [`presence`]: children read only inside subquery expressions (EXISTS,
//!   IN, NOT IN, ANY / ALL, scalar subqueries), by restricted recomputation;
//! - [`node`]: child operators (aggregates, DISTINCT, UNION, outer joins in
//!   subqueries) kept in state tables, which is how operators nest;
//! - [`union`]: UNION ALL of blocks;
//! - [`aggregate`]: GROUP BY with COUNT / SUM / AVG maintained algebraically, MIN /
//!   MAX merged and rescanned only when an extremum leaves, FILTER and HAVING;
//!   DISTINCT and UNION as grouping with a multiplicity count;
//! - [`rows`]: applying a block's delta to a stream table keyed by row identity;
//! - [`replace`]: applying a full recomputation, writing only the rows that differ;
//! - [`window`]: window functions, by recomputing the partitions a change
//!   touches;
//! - [`recursive`]: WITH RECURSIVE (UNION), by delete and rederive and
//!   semi-naive insertion;
//! - [`topk`]: `ORDER BY ... LIMIT / OFFSET` over the root, storing only the
//!   window, recomputed by a bounded query only when a change reaches it.
//!
//! [`model`] re-states the rules over in-memory Z-sets; its property tests check
//! the identities on random data.
//!
//! Weights are `bigint`; row identities are 64-bit hashes
//! (`hash_record_extended(ROW(key...), 0)`, see `sql::record_hash`) of the identity columns.

pub mod aggregate;
pub mod ctx;
pub mod join;
pub mod model;
pub mod names;
pub mod node;
pub mod plan;
pub mod recursive;
pub mod presence;
pub mod replace;
pub mod rows;
pub mod scan;
pub mod source;
mod sql;
pub mod topk;
pub mod tree;
pub mod union;
pub mod window;

pub use plan::*;
