//! The closed sets of option values a user passes to `pgtrickle.create_stream_table`
//! and `pgtrickle.alter_stream_table` (SPEC §2.1). Parsing is case-insensitive and
//! surrounding blanks are ignored; the canonical spelling (`as_str`) is what the
//! catalog stores.

use std::fmt;

/// An option value that was not one of the accepted spellings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidOption {
    /// The option's parameter name, e.g. `refresh_mode`.
    pub option: &'static str,
    /// The value the user gave, verbatim.
    pub value: String,
    /// The accepted spellings, canonical form.
    pub accepted: &'static [&'static str],
}

impl fmt::Display for InvalidOption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid value \"{}\" for {}", self.value, self.option)
    }
}

impl std::error::Error for InvalidOption {}

macro_rules! option_enum {
    ($(#[$doc:meta])* $name:ident, $param:literal, { $($(#[$vdoc:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            /// Every accepted spelling, canonical form, in declaration order.
            pub const ACCEPTED: &'static [&'static str] = &[$($text),+];

            /// Parses a user-supplied value (case-insensitive, blanks trimmed).
            ///
            /// # Errors
            /// [`InvalidOption`] naming the parameter and the accepted values.
            pub fn parse(value: &str) -> Result<Self, InvalidOption> {
                let v = value.trim();
                $(if v.eq_ignore_ascii_case($text) { return Ok($name::$variant); })+
                Err(InvalidOption { option: $param, value: value.to_string(), accepted: Self::ACCEPTED })
            }

            /// The canonical spelling stored in the catalog.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

option_enum!(
    /// How a stream table is brought up to date (SPEC §3).
    RefreshMode, "refresh_mode", {
        /// DIFFERENTIAL when the query is differentiable, FULL otherwise.
        Auto => "AUTO",
        /// Recompute the whole result and replace the contents atomically.
        Full => "FULL",
        /// Apply only the delta since the frontier.
        Differential => "DIFFERENTIAL",
        /// Maintain inside the source transaction.
        Immediate => "IMMEDIATE",
    }
);

option_enum!(
    /// How changes to sources are captured.
    CdcMode, "cdc_mode", {
        /// Triggers now; WAL-based capture when available.
        Auto => "auto",
        /// Statement-level triggers with transition tables.
        Trigger => "trigger",
        /// Logical decoding of the WAL.
        Wal => "wal",
    }
);

option_enum!(
    /// Whether members of a diamond in the stream-table DAG refresh as one unit.
    DiamondConsistency, "diamond_consistency", {
        /// Refresh the diamond's members together so readers never see a mix.
        Atomic => "atomic",
        /// Refresh members independently.
        None => "none",
    }
);

option_enum!(
    /// Which member's schedule a diamond group follows.
    DiamondSchedulePolicy, "diamond_schedule_policy", {
        /// The tightest schedule among the members.
        Fastest => "fastest",
        /// The loosest schedule among the members.
        Slowest => "slowest",
    }
);

option_enum!(
    /// A stream table's life-cycle status, as stored in `pgt_stream_tables.status`.
    StreamTableStatus, "status", {
        /// Refreshed by the scheduler (and manually).
        Active => "ACTIVE",
        /// Not refreshed by the scheduler until set back to ACTIVE.
        Suspended => "SUSPENDED",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing_is_case_insensitive_and_canonicalises() {
        assert_eq!(RefreshMode::parse(" differential ").unwrap(), RefreshMode::Differential);
        assert_eq!(RefreshMode::parse("Auto").unwrap().as_str(), "AUTO");
        assert_eq!(CdcMode::parse("TRIGGER").unwrap().as_str(), "trigger");
        assert_eq!(DiamondConsistency::parse("none").unwrap(), DiamondConsistency::None);
        assert_eq!(StreamTableStatus::parse("suspended").unwrap().as_str(), "SUSPENDED");
    }

    #[test]
    fn bad_values_name_the_option_and_list_accepted_values() {
        let err = RefreshMode::parse("sometimes").unwrap_err();
        assert_eq!(err.option, "refresh_mode");
        assert_eq!(err.accepted, &["AUTO", "FULL", "DIFFERENTIAL", "IMMEDIATE"]);
        assert_eq!(err.to_string(), "invalid value \"sometimes\" for refresh_mode");
        assert!(DiamondSchedulePolicy::parse("").is_err());
    }
}
