//! The one error type of the extension: a PostgreSQL error with SQLSTATE, a message
//! that names the object, and DETAIL/HINT where the user can act.
//!
//! Code below the SQL-facing layer returns `PgtResult<T>`; the `#[pg_extern]`
//! functions in `api` turn an `Err` into `ereport(ERROR, ...)` with
//! [`PgtError::raise`]. Errors raised by PostgreSQL itself while we run SQL (a
//! permission denial, a constraint violation) propagate unchanged, with their own
//! SQLSTATE.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};
use std::fmt;

/// A PostgreSQL error waiting to be raised.
#[derive(Debug, Clone)]
pub struct PgtError {
    /// SQLSTATE, e.g. `ERRCODE_UNDEFINED_TABLE` (42P01).
    pub code: PgSqlErrorCode,
    /// Primary message; names the object (`stream table public.x ...`).
    pub message: String,
    /// Optional DETAIL line.
    pub detail: Option<String>,
    /// Optional HINT line: what the user can do about it.
    pub hint: Option<String>,
}

/// Result type of everything below the SQL API.
pub type PgtResult<T> = Result<T, PgtError>;

impl PgtError {
    /// An error with SQLSTATE `code` and primary message `message`.
    pub fn new(code: PgSqlErrorCode, message: impl Into<String>) -> Self {
        PgtError { code, message: message.into(), detail: None, hint: None }
    }

    /// Adds a DETAIL line.
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Adds a HINT line.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// An internal error (SQLSTATE XX000): something pg_trickle expected to hold
    /// did not. The message says what.
    pub fn internal(message: impl Into<String>) -> Self {
        PgtError::new(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, message)
    }

    /// Raises this error as `ereport(ERROR)`; never returns. The current
    /// transaction (or subtransaction) aborts, undoing everything it did.
    pub fn raise(self) -> ! {
        let mut report = ErrorReport::new(self.code, self.message, "pg_trickle");
        if let Some(d) = self.detail {
            report = report.set_detail(d);
        }
        if let Some(h) = self.hint {
            report = report.set_hint(h);
        }
        report.report(PgLogLevel::ERROR);
        unreachable!("ereport(ERROR) returned")
    }
}

impl fmt::Display for PgtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<pgrx::spi::SpiError> for PgtError {
    fn from(e: pgrx::spi::SpiError) -> Self {
        PgtError::internal(format!("SPI failed: {e}"))
    }
}

impl From<pgt_core::options::InvalidOption> for PgtError {
    fn from(e: pgt_core::options::InvalidOption) -> Self {
        PgtError::new(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, e.to_string())
            .hint(format!("Use one of: {}.", e.accepted.join(", ")))
    }
}

/// Raises `Err` results as PostgreSQL errors; used at the SQL boundary.
pub trait OrRaise<T> {
    /// The value, or `ereport(ERROR)` with the error's SQLSTATE, message, detail and hint.
    fn or_raise(self) -> T;
}

impl<T> OrRaise<T> for PgtResult<T> {
    fn or_raise(self) -> T {
        match self {
            Ok(v) => v,
            Err(e) => e.raise(),
        }
    }
}

/// The report of an error caught with `PgTryBuilder`: PostgreSQL's, one
/// raised from Rust, or a panic's.
pub fn caught_report(caught: &pgrx::pg_sys::panic::CaughtError) -> &pgrx::pg_sys::panic::ErrorReportWithLevel {
    match caught {
        pgrx::pg_sys::panic::CaughtError::PostgresError(r) | pgrx::pg_sys::panic::CaughtError::ErrorReport(r) => r,
        pgrx::pg_sys::panic::CaughtError::RustPanic { ereport, .. } => ereport,
    }
}

/// The SQLSTATE of an error caught with `PgTryBuilder`.
pub fn caught_sqlstate(caught: &pgrx::pg_sys::panic::CaughtError) -> PgSqlErrorCode {
    caught_report(caught).sql_error_code()
}
