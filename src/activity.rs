//! Backend-local markers of what pg_trickle itself is doing, which its event
//! triggers and its stream-table guard trigger consult:
//!
//! - [`InternalDdl`]: pg_trickle runs DDL for change capture or storage
//!   (CREATE TRIGGER, GRANT on a change buffer, ...). Its own event triggers see
//!   that DDL too; while a span is open they do nothing.
//! - [`StreamTableWrite`]: a refresh is writing a stream table. Outside such a
//!   span, the guard trigger on every stream table refuses INSERT, UPDATE,
//!   DELETE, MERGE and TRUNCATE, as PostgreSQL refuses them on a materialized
//!   view.
//!
//! Both are depths restored on drop, also when an error unwinds. Nothing here
//! can be set from SQL.

use std::cell::Cell;

thread_local! {
    static INTERNAL_DDL_DEPTH: Cell<u32> = const { Cell::new(0) };
    static WRITE_DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// A span in which pg_trickle runs DDL of its own.
pub struct InternalDdl(());

impl InternalDdl {
    /// Opens the span.
    pub fn begin() -> InternalDdl {
        INTERNAL_DDL_DEPTH.with(|d| d.set(d.get() + 1));
        InternalDdl(())
    }
}

impl Drop for InternalDdl {
    fn drop(&mut self) {
        INTERNAL_DDL_DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

/// Whether pg_trickle is itself running DDL in this backend.
pub fn internal_ddl_in_progress() -> bool {
    INTERNAL_DDL_DEPTH.with(|d| d.get() > 0)
}

/// A span in which a refresh writes a stream table.
pub struct StreamTableWrite(());

impl StreamTableWrite {
    /// Opens the span.
    pub fn begin() -> StreamTableWrite {
        WRITE_DEPTH.with(|d| d.set(d.get() + 1));
        StreamTableWrite(())
    }
}

impl Drop for StreamTableWrite {
    fn drop(&mut self) {
        WRITE_DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

/// Whether a refresh is writing a stream table in this backend.
pub fn stream_table_write_in_progress() -> bool {
    WRITE_DEPTH.with(|d| d.get() > 0)
}
