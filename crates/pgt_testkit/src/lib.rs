//! Runs PostgreSQL 18 clusters with pg_trickle preloaded, for the E2E tests, the
//! demo and the benchmarks.
//!
//! - [`Cluster`]: a data directory the kit initialises (`initdb`), starts on a free
//!   loopback port and stops. Several processes share one cluster safely (a lock
//!   file serialises start-up; `cargo nextest` runs each test in its own process).
//!   A running cluster whose installed `pg_trickle.so` changed since it started is
//!   restarted, so tests always run the freshly installed extension. As root, the
//!   server runs as the unprivileged service user (PostgreSQL refuses root).
//! - [`TestDb`]: a fresh database per test with the extension created, dropped after
//!   a passing test; a failing test prints the server log lines of its database.
//! - [`assert_st_matches_query`]: the multiset comparison every data-changing test
//!   ends with.
//!
//! Locations come from the environment `make` sets (`PG_CONFIG`, `PGT_HOME`,
//! `PGT_SERVICE_USER`; see scripts/env.sh), with the work tree's `.pgt` as default.

mod cluster;
mod compare;
mod testdb;
pub mod tpch;

pub use cluster::{Cluster, ClusterOptions, DedicatedCluster, Paths};
pub use compare::{assert_st_matches_query, difference_in_transaction, multiset_difference, st_difference, topk_parts, visible_columns};
pub use testdb::{expect_error as testdb_expect_error, sqlstate, TestDb};

pub use postgres;
