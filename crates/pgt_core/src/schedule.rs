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
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The longest duration schedule accepted: 366 days (longer ones are better
/// written as cron expressions, and keep time arithmetic far from overflow).
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 86_400);

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
    /// A duration longer than [`MAX_DURATION`].
    TooLong {
        /// The text as given.
        value: String,
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
            ScheduleError::TooLong { value } => write!(f, "schedule \"{value}\" is longer than the maximum of 366 days"),
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
                Ok(d) if d > MAX_DURATION => Err(ScheduleError::TooLong { value: t.to_string() }),
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

impl Schedule {
    /// When a stream table with this schedule, last checked at `last` (`None`:
    /// never since the scheduler started), is next due; `calculated` is what a
    /// [`Schedule::Calculated`] schedule resolves to ([`resolve_calculated`]).
    ///
    /// A duration `d` is a staleness bound: due `d` after the last check. A cron
    /// expression is due at its first instant after the last check (UTC). With
    /// no last check, every schedule is due at once.
    pub fn next_due(&self, last: Option<SystemTime>, calculated: Duration) -> SystemTime {
        let Some(last) = last else {
            return UNIX_EPOCH;
        };
        let later = |d: Duration| last.checked_add(d).unwrap_or(last + MAX_DURATION);
        match self {
            Schedule::Every(d) => later(*d),
            Schedule::Calculated => later(calculated),
            Schedule::Cron(expr) => cron_after(expr, last).unwrap_or_else(|| later(Duration::from_secs(60))),
        }
    }

    /// The interval this schedule asks of the stream tables it reads, for the
    /// `calculated` schedules upstream: a duration itself; for a cron
    /// expression the gap between its next two instants after `now`; `None`
    /// for `calculated` (it imposes what it inherits).
    pub fn interval(&self, now: SystemTime) -> Option<Duration> {
        match self {
            Schedule::Every(d) => Some(*d),
            Schedule::Calculated => None,
            Schedule::Cron(expr) => {
                let first = cron_after(expr, now)?;
                let second = cron_after(expr, first)?;
                second.duration_since(first).ok()
            }
        }
    }
}

impl Schedule {
    /// [`Schedule::next_due`] with the interval of a duration or `calculated`
    /// schedule multiplied by `factor` ([`backoff_factor`]); cron schedules keep
    /// their instants.
    pub fn next_due_backed_off(&self, last: Option<SystemTime>, calculated: Duration, factor: u32) -> SystemTime {
        let due = self.next_due(last, calculated);
        match (self, last) {
            (Schedule::Cron(_), _) | (_, None) => due,
            (_, Some(last)) => {
                let interval = due.duration_since(last).unwrap_or_default();
                last.checked_add(interval.saturating_mul(factor.max(1))).unwrap_or(due)
            }
        }
    }
}

/// The longest back-off: a stream table that keeps running behind is refreshed
/// at most this many intervals apart.
pub const MAX_BACKOFF: u32 = 16;

/// `pg_trickle.auto_backoff`: the factor applied to a stream table's interval
/// after a refresh that took `took`. A refresh longer than the (backed-off)
/// interval doubles the factor, up to [`MAX_BACKOFF`]; one that fits in the
/// plain interval resets it to 1; otherwise it stays.
pub fn backoff_factor(previous: u32, took: Duration, interval: Duration) -> u32 {
    let previous = previous.max(1);
    if took > interval.saturating_mul(previous) {
        (previous * 2).min(MAX_BACKOFF)
    } else if took <= interval {
        1
    } else {
        previous
    }
}

/// The first instant of cron expression `expr` strictly after `t`, in UTC.
fn cron_after(expr: &str, t: SystemTime) -> Option<SystemTime> {
    let cron = croner::Cron::new(expr).with_seconds_optional().parse().ok()?;
    let start: chrono::DateTime<chrono::Utc> = t.into();
    let next = cron.find_next_occurrence(&start, false).ok()?;
    Some(next.into())
}

/// The interval each `calculated` schedule resolves to: the tightest interval
/// among the stream tables downstream of it (transitively, through other
/// `calculated` ones), else `default`. `order` lists the nodes upstream first
/// ([`crate::dag::topological_order`]); `own` gives each node's own interval
/// ([`Schedule::interval`]; `None` for `calculated`). Returns every node's
/// effective interval.
pub fn resolve_calculated<N: Ord + Copy>(
    order: &[N],
    edges: &crate::dag::Edges<N>,
    own: impl Fn(N) -> Option<Duration>,
    default: Duration,
) -> std::collections::BTreeMap<N, Duration> {
    let mut effective = std::collections::BTreeMap::new();
    // Downstream first, so that each node sees its readers resolved.
    for &n in order.iter().rev() {
        let interval = own(n).unwrap_or_else(|| {
            edges
                .get(&n)
                .into_iter()
                .flatten()
                .filter_map(|down| effective.get(down).copied())
                .min()
                .unwrap_or(default)
        });
        effective.insert(n, interval);
    }
    effective
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLOOR: Duration = Duration::from_secs(1);

    #[test]
    fn due_times_per_form() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000); // 2023-11-14 22:13:20 UTC
        let calc = Duration::from_secs(60);
        assert_eq!(Schedule::Every(Duration::from_secs(30)).next_due(Some(t), calc), t + Duration::from_secs(30));
        assert_eq!(Schedule::Calculated.next_due(Some(t), calc), t + calc);
        assert_eq!(Schedule::Every(Duration::from_secs(30)).next_due(None, calc), UNIX_EPOCH, "never checked: due now");
        // Every 5 minutes: the next multiple of 5 minutes after 22:13:20 is 22:15:00.
        assert_eq!(Schedule::Cron("*/5 * * * *".into()).next_due(Some(t), calc), t + Duration::from_secs(100));
        // 6 fields: every 10 seconds.
        assert_eq!(Schedule::Cron("*/10 * * * * *".into()).next_due(Some(t), calc), t + Duration::from_secs(10));
        assert_eq!(Schedule::Cron("@hourly".into()).interval(t), Some(Duration::from_secs(3600)));
        assert_eq!(Schedule::Every(Duration::from_secs(7)).interval(t), Some(Duration::from_secs(7)));
        assert_eq!(Schedule::Calculated.interval(t), None);
    }

    #[test]
    fn back_off_doubles_while_behind_and_resets_on_time() {
        let second = Duration::from_secs(1);
        let ms = Duration::from_millis;
        assert_eq!(backoff_factor(1, ms(1500), second), 2);
        assert_eq!(backoff_factor(2, ms(2500), second), 4);
        assert_eq!(backoff_factor(4, ms(1500), second), 4, "behind the plain interval, within the backed-off one");
        assert_eq!(backoff_factor(16, ms(60_000), second), MAX_BACKOFF);
        assert_eq!(backoff_factor(8, ms(900), second), 1);
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let every = Schedule::Every(Duration::from_secs(10));
        assert_eq!(every.next_due_backed_off(Some(t), second, 4), t + Duration::from_secs(40));
        let cron = Schedule::Cron("*/10 * * * * *".into());
        assert_eq!(cron.next_due_backed_off(Some(t), second, 4), cron.next_due(Some(t), second), "cron keeps its instants");
    }

    #[test]
    fn calculated_inherits_the_tightest_downstream() {
        // 1 → 2 → 3, 1 → 4; 2 and 1 calculated; 3 every 10 s, 4 every 5 s; 5 isolated.
        let edges = crate::dag::edges([(1, 2), (2, 3), (1, 4)]);
        let own = |n: i32| match n {
            3 => Some(Duration::from_secs(10)),
            4 => Some(Duration::from_secs(5)),
            _ => None,
        };
        let r = resolve_calculated(&[1, 2, 3, 4, 5], &edges, own, Duration::from_secs(60));
        assert_eq!(r[&2], Duration::from_secs(10));
        assert_eq!(r[&1], Duration::from_secs(5));
        assert_eq!(r[&5], Duration::from_secs(60), "no downstream: the default");
    }

    #[test]
    fn durations_of_every_documented_form() {
        for (text, secs) in [("30s", 30), ("5m", 300), ("1h30m", 5400), ("1h 30m", 5400), ("1d", 86400), ("1w", 604800)] {
            assert_eq!(Schedule::parse(text, FLOOR).unwrap(), Schedule::Every(Duration::from_secs(secs)), "{text}");
        }
        assert_eq!(Schedule::parse("1h30m", FLOOR).unwrap().canonical(), "1h 30m");
    }

    #[test]
    fn absurd_durations_are_refused_and_arithmetic_never_overflows() {
        assert!(matches!(Schedule::parse("300000000000y", FLOOR), Err(ScheduleError::TooLong { .. })));
        assert!(matches!(Schedule::parse("367d", FLOOR), Err(ScheduleError::TooLong { .. })));
        assert!(Schedule::parse("366d", FLOOR).is_ok());
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let huge = Duration::from_secs(u64::MAX / 2);
        assert!(Schedule::Calculated.next_due(Some(t), huge) > t);
        assert!(Schedule::Every(MAX_DURATION).next_due_backed_off(Some(t), huge, MAX_BACKOFF) > t);
        assert_eq!(backoff_factor(16, huge, huge), 1);
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
