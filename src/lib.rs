//! pg_trickle: stream tables for PostgreSQL 18.
//!
//! A stream table is an ordinary heap table whose contents are defined by a SQL
//! query and kept up to date as its sources change. This crate is the PostgreSQL
//! extension; plain-Rust building blocks live in `crates/pgt_core`.
//!
//! Layers, top to bottom (dependencies point down only):
//! - [`api`]: `#[pg_extern]` SQL functions, thin;
//! - [`scheduler`]: the background workers that refresh on schedule;
//! - [`lifecycle`] (create / alter / drop) and [`refresh`] (executors);
//! - [`parse`] (PostgreSQL parse analysis), [`cdc`] (change capture), [`storage`]
//!   (storage tables), [`catalog`] (the `pgtrickle.*` tables);
//! - [`privilege`], [`spi`], [`error`], [`guc`], [`activity`]: helpers every
//!   layer uses.
//!
//! docs/ARCHITECTURE.md describes the data flow and the frontier.

use pgrx::prelude::*;

mod activity;
mod api;
mod bootstrap;
mod catalog;
mod cdc;
mod ddl;
mod definition;
mod error;
mod guc;
mod lifecycle;
mod monitoring;
mod objects;
mod parse;
mod plan_size;
mod privilege;
mod refresh;
mod restore;
mod scheduler;
mod spi;
mod translate;
mod storage;

::pgrx::pg_module_magic!(name, version);

/// Library load: registers the `pg_trickle.*` parameters and, when preloaded
/// (`shared_preload_libraries`), the scheduler's shared memory, launcher and
/// utility hook.
///
/// Also turns off Rust backtrace capture (`RUST_LIB_BACKTRACE=0`) unless the server's
/// environment asks for it explicitly: pgrx appends a captured backtrace to an
/// error's DETAIL, and a user's error message is no place for one (a server
/// started from a shell with `RUST_BACKTRACE=1` would otherwise show them).
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // PostgreSQL backends are single-threaded; nothing reads the environment concurrently.
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    guc::register();
    refresh::join_order::install();
    refresh::immediate::register_callbacks();
    scheduler::init_at_load();
}
