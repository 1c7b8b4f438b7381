//! Where a refresh reads the changes of a base relation: the one abstraction
//! every delta rule reads changes through ([`ChangeSource`]). Rules never see
//! how changes are kept; they ask for a relation's changed row images with
//! signed weights.
//!
//! Today there is one source: the change buffer's *window* behind a stream
//! table's frontier (DIFFERENTIAL refresh). A buffer row written by
//! transaction `T` at command `c` is in the window when the refresh's snapshot
//! sees it and the previous frontier had not consumed it
//! ([`pgt_core::frontier`]). IMMEDIATE maintenance will add the statement's
//! transition tables as a second source.

use crate::names::ACTION;
use crate::tree::Relation;
use pgt_core::frontier::consumed_by_frontier_sql;
use pgt_core::ident::quote_literal;

/// The frontier a refresh starts from, as stored in the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frontier {
    /// `pg_snapshot` text (`xmin:xmax:xip,...`).
    pub snapshot: String,
    /// The refreshing transaction's xid8 text, if it had one.
    pub xid: Option<String>,
    /// Its command id, if it had an xid.
    pub cid: Option<i64>,
}

impl Frontier {
    /// SQL predicate "buffer row `row_alias` is not yet consumed by this frontier".
    pub fn pending_predicate(&self, row_alias: &str) -> String {
        let snapshot = format!("{}::pg_catalog.pg_snapshot", quote_literal(&self.snapshot));
        let xid = match &self.xid {
            Some(x) => format!("{}::pg_catalog.xid8", quote_literal(x)),
            None => "NULL::pg_catalog.xid8".to_string(),
        };
        let cid = match self.cid {
            Some(c) => format!("{c}::bigint"),
            None => "NULL::bigint".to_string(),
        };
        not_consumed(row_alias, &snapshot, &xid, &cid)
    }
}

/// "Buffer row `row_alias` is not consumed by the frontier given as the SQL
/// expressions `snapshot`, `xid` and `cid`" ([`pgt_core::frontier`]).
fn not_consumed(row_alias: &str, snapshot: &str, xid: &str, cid: &str) -> String {
    format!("NOT COALESCE({}, false)", consumed_by_frontier_sql(row_alias, snapshot, xid, cid))
}

/// Where the changes of base relations come from in one maintenance run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeSource {
    /// The change buffers' windows after a frontier (DIFFERENTIAL refresh).
    Window {
        /// Where the windows start.
        frontier: Frontier,
        /// Per relation (OID), the number of row images in its window, when
        /// known (counted by [`ChangeSource::summary_sql`] in the same
        /// snapshot as the delta statement runs in — a count below the
        /// window's true size would make the delta scan's LIMIT drop images):
        /// the delta scan then tells the planner it reads at most that many
        /// rows. A change buffer's statistics say nothing about the
        /// window, and the planner's guess for it can be off by orders of
        /// magnitude, for the join order and for the cost guard alike.
        images: std::collections::BTreeMap<u32, u64>,
        /// Whether statements name the frontier as parameters `$1`–`$3`
        /// ([`ChangeSource::parameterized`]) rather than literals.
        parameterized: bool,
    },
}

impl ChangeSource {
    /// The change buffers' windows after `frontier`, sizes unknown.
    pub fn window(frontier: Frontier) -> ChangeSource {
        ChangeSource::Window { frontier, images: Default::default(), parameterized: false }
    }

    /// The same source, naming the frontier in the statements it renders as
    /// parameters instead of literals: `$1` its `pg_snapshot`, `$2` its
    /// `xid8` (NULL when it had none), `$3` its command id (`bigint`, NULL
    /// when it had no xid). Every statement rendered from it — the summary,
    /// the delta statement, the delta core — must be run with those three
    /// values bound (EXPLAIN it with `GENERIC_PLAN`). A stream table's
    /// statements are then the same text at every refresh with the same
    /// changed inputs and window sizes of the same order, and their plans can
    /// be kept.
    pub fn parameterized(self) -> ChangeSource {
        match self {
            ChangeSource::Window { frontier, images, .. } => ChangeSource::Window { frontier, images, parameterized: true },
        }
    }

    /// The same source, with the number of row images in each relation's
    /// window (relation OID → count). The counts must be taken in the
    /// snapshot the statements will run in (see [`ChangeSource::Window`]).
    pub fn with_images(self, counts: std::collections::BTreeMap<u32, u64>) -> ChangeSource {
        match self {
            ChangeSource::Window { frontier, parameterized, .. } => ChangeSource::Window { frontier, images: counts, parameterized },
        }
    }

    /// The number of row images in the window of `relid`, if known.
    pub fn images(&self, relid: u32) -> Option<u64> {
        match self {
            ChangeSource::Window { images, .. } => images.get(&relid).copied(),
        }
    }

    /// SQL predicate: row `alias` of the relation's change buffer is a row
    /// image of this run's changes (not a TRUNCATE marker).
    pub fn image_predicate(&self, alias: &str) -> String {
        match self {
            ChangeSource::Window { .. } => format!("{alias}.{ACTION} <> 'T' AND {}", self.pending_predicate(alias)),
        }
    }

    /// SQL predicate: row `alias` of the buffer belongs to this run's changes
    /// (images and TRUNCATE markers).
    pub fn pending_predicate(&self, alias: &str) -> String {
        match self {
            ChangeSource::Window { parameterized: true, .. } => {
                not_consumed(alias, "$1::pg_catalog.pg_snapshot", "$2::pg_catalog.xid8", "$3::bigint")
            }
            ChangeSource::Window { frontier, .. } => frontier.pending_predicate(alias),
        }
    }

    /// The relation the changes of `relation` are read from, aliased `alias`
    /// (`<buffer> b`).
    pub fn changes_from(&self, relation: &Relation, alias: &str) -> String {
        match self {
            ChangeSource::Window { .. } => format!("{} {alias}", relation.buffer_sql),
        }
    }

    /// The signed weight of image `alias`: +1 for a new image, −1 for an old one.
    pub fn weight(&self, alias: &str) -> String {
        format!("(CASE {alias}.{ACTION} WHEN 'I' THEN 1 ELSE -1 END)")
    }

    /// A query returning true when the changes of `relation` include a
    /// TRUNCATE (then no row images express them: the refresh recomputes).
    pub fn truncated_sql(&self, relation: &Relation) -> String {
        format!(
            "SELECT EXISTS (SELECT 1 FROM {} WHERE b.{ACTION} = 'T' AND {})",
            self.changes_from(relation, "b"),
            self.pending_predicate("b")
        )
    }

    /// One query describing the changes of every relation in `relations`: a row
    /// `(relid oid, rows bigint, truncated boolean, images bigint)` per
    /// relation that changed. `rows` estimates the changed rows as the larger
    /// of the new and old images (an UPDATE writes one of each); `images`
    /// counts the row images.
    pub fn summary_sql(&self, relations: &[&Relation]) -> String {
        let parts: Vec<String> = relations
            .iter()
            .map(|r| {
                format!(
                    "SELECT {relid}::pg_catalog.oid AS relid, b.{ACTION} AS action FROM {from} WHERE {pending}",
                    relid = r.relid,
                    from = self.changes_from(r, "b"),
                    pending = self.pending_predicate("b")
                )
            })
            .collect();
        format!(
            "SELECT u.relid, greatest(count(*) FILTER (WHERE u.action = 'I'), count(*) FILTER (WHERE u.action = 'D'))::bigint, \
                    bool_or(u.action = 'T'), count(*) FILTER (WHERE u.action <> 'T')::bigint FROM ({}) u GROUP BY u.relid",
            parts.join(" UNION ALL ")
        )
    }
}
