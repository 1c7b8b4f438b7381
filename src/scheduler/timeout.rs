//! A time limit on the refresh a scheduler or refresh worker runs, with
//! PostgreSQL's own statement timeout (`utils/timeout.h`).
//!
//! A background worker has no client statements, so `statement_timeout` is
//! never armed for it; [`StatementTimeout::arm`] arms the same timer. When it
//! expires, PostgreSQL's handler sends the process SIGINT and the next
//! interrupt check raises "canceling statement due to statement timeout"
//! (SQLSTATE 57014), which aborts the refresh's transaction like any error.
//! (pgrx does not bind `utils/timeout.h`; the declarations below follow
//! PostgreSQL 18's, where `STATEMENT_TIMEOUT` is the fourth `TimeoutId`.)

use pgrx::pg_sys;
use std::time::Duration;

/// `TimeoutId` value of `STATEMENT_TIMEOUT` in PostgreSQL 18 (`utils/timeout.h`:
/// STARTUP_PACKET_TIMEOUT, DEADLOCK_TIMEOUT, LOCK_TIMEOUT, STATEMENT_TIMEOUT).
const STATEMENT_TIMEOUT: u32 = 3;

unsafe extern "C-unwind" {
    fn enable_timeout_after(id: u32, delay_ms: std::ffi::c_int);
    fn disable_timeout(id: u32, keep_indicator: bool);
    fn get_timeout_indicator(id: u32, reset_indicator: bool) -> bool;
}

/// The statement timer, armed until dropped.
pub struct StatementTimeout(());

impl StatementTimeout {
    /// Arms the timer to fire after `limit` (at least 1 ms).
    pub fn arm(limit: Duration) -> StatementTimeout {
        let ms = limit.as_millis().clamp(1, i32::MAX as u128) as std::ffi::c_int;
        unsafe { enable_timeout_after(STATEMENT_TIMEOUT, ms) };
        StatementTimeout(())
    }
}

impl Drop for StatementTimeout {
    fn drop(&mut self) {
        unsafe {
            disable_timeout(STATEMENT_TIMEOUT, false);
            // Fired after the work finished, before it was disarmed: the
            // cancel it requested concerns nothing any more.
            if get_timeout_indicator(STATEMENT_TIMEOUT, true) {
                (&raw mut pg_sys::QueryCancelPending).write_volatile(0);
            }
        }
    }
}
