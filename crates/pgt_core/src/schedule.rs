//! A stream table's `schedule`: how stale it may become before the scheduler
//! refreshes it.
//!
//! Three forms are accepted (SPEC §2.1):
//! - `calculated` (case-insensitive): inherit the tightest schedule of the stream
//!   tables downstream, else `pg_trickle.default_schedule_seconds`;
//! - a duration: a sequence of `<number><unit>` with units `ms`, `s`, `m`/`min`,
//!   `h`, `d`, `w` and the other units of the `humantime` crate, e.g. `30s`, `5m`,
//!   `1h30m`, `1d`, `1w`;
//! - a cron expression as the `croner` crate reads it: 5 fields (minute precision),
//!   6 fields (leading seconds), or a nickname such as `@hourly` / `@daily`.

use std::fmt;
use std::time::Duration;

/// A parsed, validated schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// Derived from downstream stream tables (or the default).
    Calculated,
    /// Refresh when the data is older than this.
    Every(Duration),
    /// Refresh at the instants the cron expression names (the text as given).
    Cron(String),
}

/// Why a schedule was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScheduleError {
    /// Empty or blank text.
    Empty,
    /// Neither `calculated`, a duration, nor a cron expression; carries both parsers'
    /// complaints for the error's DETAIL.
    Unparsable {
        /// The text as given.
        value: String,
        /// Why it is not a duration (humantime's message).
        duration_error: String,
        /// Why it is not a cron expression (croner's message).
        cron_error: String,
    },
    /// A duration shorter than the configured floor
    /// (`pg_trickle.min_schedule_seconds`).
    BelowFloor {
        /// The text as given.
        value: String,
        /// The duration it parses to.
        duration: Duration,
        /// The floor it is below.
        floor: Duration,
    },
}

impl fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScheduleError::Empty => write!(f, "schedule must not be empty"),
            ScheduleError::Unparsable { value, .. } => write!(f, "invalid schedule \"{value}\""),
            ScheduleError::BelowFloor { value, duration, floor } => write!(
                f,
                "schedule \"{value}\" ({} s) is below the minimum of {} s",
                duration.as_secs_f64(),
                floor.as_secs_f64()
            ),
        }
    }
}

impl std::error::Error for ScheduleError {}

impl Schedule {
    /// Parses `text` and checks a duration against `floor`.
    ///
    /// # Errors
    /// [`ScheduleError::Empty`] for blank text, [`ScheduleError::Unparsable`] when it
    /// is no accepted form, [`ScheduleError::BelowFloor`] for a duration under `floor`.
    pub fn parse(text: &str, floor: Duration) -> Result<Schedule, ScheduleError> {
        let t = text.trim();
        if t.is_empty() {
            return Err(ScheduleError::Empty);
        }
        if t.eq_ignore_ascii_case("calculated") {
            return Ok(Schedule::Calculated);
        }
        let looks_like_cron = t.starts_with('@') || t.split_whitespace().count() >= 5;
        if !looks_like_cron {
            // humantime reads "1h30m" and "1h 30m" alike; we also accept "90" only
            // with a unit, so that a bare number is never silently read as seconds.
            return match humantime::parse_duration(t) {
                Ok(d) if d < floor => Err(ScheduleError::BelowFloor { value: t.to_string(), duration: d, floor }),
                Ok(d) => Ok(Schedule::Every(d)),
                Err(e) => Err(ScheduleError::Unparsable {
                    value: t.to_string(),
                    duration_error: e.to_string(),
                    cron_error: "not a cron expression (expected 5 or 6 fields or @nickname)".into(),
                }),
            };
        }
        match croner::Cron::new(t).with_seconds_optional().parse() {
            Ok(_) => Ok(Schedule::Cron(t.to_string())),
            Err(e) => Err(ScheduleError::Unparsable {
                value: t.to_string(),
                duration_error: "not a duration".into(),
                cron_error: e.to_string(),
            }),
        }
    }

    /// The canonical text stored in the catalog: `calculated`, the duration as
    /// `humantime` formats it (e.g. `1h 30m`), or the cron expression as given.
    pub fn canonical(&self) -> String {
        match self {
            Schedule::Calculated => "calculated".into(),
            Schedule::Every(d) => humantime::format_duration(*d).to_string(),
            Schedule::Cron(c) => c.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLOOR: Duration = Duration::from_secs(1);

    #[test]
    fn durations_of_every_documented_form() {
        for (text, secs) in [("30s", 30), ("5m", 300), ("1h30m", 5400), ("1h 30m", 5400), ("1d", 86400), ("1w", 604800)] {
            assert_eq!(Schedule::parse(text, FLOOR).unwrap(), Schedule::Every(Duration::from_secs(secs)), "{text}");
        }
        assert_eq!(Schedule::parse("1h30m", FLOOR).unwrap().canonical(), "1h 30m");
    }

    #[test]
    fn calculated_and_cron_forms() {
        assert_eq!(Schedule::parse("CALCULATED", FLOOR).unwrap(), Schedule::Calculated);
        for c in ["*/5 * * * *", "0 */5 * * * *", "@hourly", "@daily", "0 3 * * 1-5"] {
            assert_eq!(Schedule::parse(c, FLOOR).unwrap(), Schedule::Cron(c.into()), "{c}");
        }
    }

    #[test]
    fn rejects_blank_garbage_bad_cron_and_below_floor() {
        assert_eq!(Schedule::parse("  ", FLOOR), Err(ScheduleError::Empty));
        assert!(matches!(Schedule::parse("soon", FLOOR), Err(ScheduleError::Unparsable { .. })));
        assert!(matches!(Schedule::parse("30", FLOOR), Err(ScheduleError::Unparsable { .. })));
        assert!(matches!(Schedule::parse("61 * * * *", FLOOR), Err(ScheduleError::Unparsable { .. })));
        assert!(matches!(Schedule::parse("@sometimes", FLOOR), Err(ScheduleError::Unparsable { .. })));
        assert!(matches!(Schedule::parse("500ms", FLOOR), Err(ScheduleError::BelowFloor { .. })));
        assert!(Schedule::parse("500ms", Duration::ZERO).is_ok());
    }
}
