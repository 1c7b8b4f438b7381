//! Where a refresh reads the changes of a base relation: the one abstraction
//! every delta rule reads changes through ([`ChangeSource`]). Rules never see
//! how changes are kept; they ask for a relation's changed row images with
//! signed weights.
//!
//! There are two sources:
//! - the change buffer's *window* behind a stream table's frontier
//!   (DIFFERENTIAL refresh). A buffer row written by transaction `T` at command
//!   `c` is in the window when the refresh's snapshot sees it and the previous
//!   frontier had not consumed it ([`pgt_core::frontier`]);
//! - the *transition tables* of the statements being maintained (IMMEDIATE
//!   maintenance): PostgreSQL's `REFERENCING OLD TABLE / NEW TABLE` relations
//!   of statement-level AFTER triggers, exposed to the delta statement as
//!   ephemeral named relations (PostgreSQL docs, "CREATE TRIGGER" and "SPI_register_trigger_data").
//!   Their old rows are images of weight −1, their new rows +1, exactly as the
//!   buffer's `D` and `I` images.

use crate::names::ACTION;
use pgt_core::ident::quote_ident;

/// The column numbering the rows of transition tables ([`ChangeSource::position`]).
const POSITION: &str = "__pgt_position";
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
    /// Transition tables of the statements being maintained (IMMEDIATE).
    Transition {
        /// Per relation (OID), the transition tables holding its changes.
        tables: std::collections::BTreeMap<u32, Vec<TransitionTable>>,
        /// Per relation (OID), the number of row images its tables hold.
        images: std::collections::BTreeMap<u32, u64>,
    },
}

/// One transition table: an ephemeral named relation with the columns of the
/// changed relation (by name), holding either its old or its new rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitionTable {
    /// The name it is registered under for the delta statement (an SQL
    /// identifier the caller chose; quoted when rendered).
    pub name: String,
    /// `true` for new rows (weight +1), `false` for old rows (weight −1).
    pub new_rows: bool,
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
            other => other,
        }
    }

    /// Transition tables `tables` (relation OID → its tables) with `images`
    /// row images per relation.
    pub fn transition(
        tables: std::collections::BTreeMap<u32, Vec<TransitionTable>>,
        images: std::collections::BTreeMap<u32, u64>,
    ) -> ChangeSource {
        ChangeSource::Transition { tables, images }
    }

    /// The same source, with the number of row images in each relation's
    /// window (relation OID → count). The counts must be taken in the
    /// snapshot the statements will run in (see [`ChangeSource::Window`]).
    pub fn with_images(self, counts: std::collections::BTreeMap<u32, u64>) -> ChangeSource {
        match self {
            ChangeSource::Window { frontier, parameterized, .. } => ChangeSource::Window { frontier, images: counts, parameterized },
            ChangeSource::Transition { tables, .. } => ChangeSource::Transition { tables, images: counts },
        }
    }

    /// The number of row images in the window of `relid`, if known.
    pub fn images(&self, relid: u32) -> Option<u64> {
        match self {
            ChangeSource::Window { images, .. } | ChangeSource::Transition { images, .. } => images.get(&relid).copied(),
        }
    }

    /// SQL predicate: row `alias` of the relation's change buffer is a row
    /// image of this run's changes (not a TRUNCATE marker).
    pub fn image_predicate(&self, alias: &str) -> String {
        match self {
            ChangeSource::Window { .. } => format!("{alias}.{ACTION} <> 'T' AND {}", self.pending_predicate(alias)),
            // Transition tables hold row images only.
            ChangeSource::Transition { .. } => "true".to_string(),
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
            ChangeSource::Transition { .. } => "true".to_string(),
        }
    }

    /// The relation the changes of `relation` are read from, aliased `alias`
    /// (`<buffer> b`).
    ///
    /// Transition tables are read as one derived table: each table's rows with
    /// the column `__pgt_action` ('I' for new rows, 'D' for old ones) and a
    /// position unique among them ([`ChangeSource::position`]). A relation
    /// with no transition table reads as empty.
    pub fn changes_from(&self, relation: &Relation, alias: &str) -> String {
        match self {
            ChangeSource::Window { .. } => format!("{} {alias}", relation.buffer_sql),
            ChangeSource::Transition { tables, .. } => {
                let columns: Vec<String> = relation.columns.iter().flatten().map(|c| quote_ident(c)).collect();
                let list = |t: &str| columns.iter().map(|c| format!("{t}.{c}")).collect::<Vec<_>>().join(", ");
                let sep = if columns.is_empty() { "" } else { ", " };
                let parts: Vec<String> = tables
                    .get(&relation.relid)
                    .map(|ts| ts.as_slice())
                    .unwrap_or_default()
                    .iter()
                    .enumerate()
                    .map(|(k, t)| {
                        format!(
                            "SELECT {cols}{sep}'{action}'::\"char\" AS {ACTION},                              (pg_catalog.row_number() OVER () * {n} + {k})::bigint AS {POSITION} FROM {name} t",
                            cols = list("t"),
                            action = if t.new_rows { 'I' } else { 'D' },
                            n = tables.get(&relation.relid).map_or(1, |ts| ts.len()),
                            name = quote_ident(&t.name),
                        )
                    })
                    .collect();
                if parts.is_empty() {
                    // No changes: the relation's columns and types, no rows.
                    return format!(
                        "(SELECT {}{sep}NULL::\"char\" AS {ACTION}, NULL::bigint AS {POSITION} FROM ONLY {} t WHERE false) {alias}",
                        list("t"),
                        relation.table_sql
                    );
                }
                format!("({}) {alias}", parts.join(" UNION ALL "))
            }
        }
    }

    /// The expression telling apart the row images of `alias`
    /// ([`ChangeSource::changes_from`]): the buffer row's `ctid`, or the
    /// transition row's position.
    pub fn position(&self, alias: &str) -> String {
        match self {
            ChangeSource::Window { .. } => format!("{alias}.ctid"),
            ChangeSource::Transition { .. } => format!("{alias}.{POSITION}"),
        }
    }

    /// The signed weight of image `alias`: +1 for a new image, −1 for an old one.
    pub fn weight(&self, alias: &str) -> String {
        format!("(CASE {alias}.{ACTION} WHEN 'I' THEN 1 ELSE -1 END)")
    }

    /// A query returning true when the changes of `relation` include a
    /// TRUNCATE (then no row images express them: the refresh recomputes).
    pub fn truncated_sql(&self, relation: &Relation) -> String {
        if let ChangeSource::Transition { .. } = self {
            // A TRUNCATE has no transition table: maintenance recomputes.
            return "SELECT false".to_string();
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn relation() -> Relation {
        Relation {
            relid: 7,
            table_sql: "\"public\".\"t\"".into(),
            buffer_sql: "\"pgtrickle_changes\".\"changes_7\"".into(),
            columns: vec![Some("id".into()), None, Some("v".into())],
            key: vec!["id".into()],
        }
    }

    fn transition(tables: Vec<TransitionTable>) -> ChangeSource {
        ChangeSource::transition([(7u32, tables)].into_iter().collect(), Default::default())
    }

    #[test]
    fn transition_tables_read_as_signed_images_with_distinct_positions() {
        let source = transition(vec![
            TransitionTable { name: "__pgt_old_7_0".into(), new_rows: false },
            TransitionTable { name: "__pgt_new_7_0".into(), new_rows: true },
        ]);
        let sql = source.changes_from(&relation(), "b");
        assert!(sql.contains("'D'::\"char\" AS __pgt_action"), "{sql}");
        assert!(sql.contains("'I'::\"char\" AS __pgt_action"), "{sql}");
        // Two tables: positions 2n and 2n + 1 never collide.
        assert!(sql.contains("* 2 + 0") && sql.contains("* 2 + 1"), "{sql}");
        // Dropped columns are not read from the transition tables.
        assert!(sql.contains("t.\"id\", t.\"v\","), "{sql}");
        assert_eq!(source.image_predicate("b"), "true");
        assert_eq!(source.position("b"), "b.__pgt_position");
        assert_eq!(source.weight("b"), "(CASE b.__pgt_action WHEN 'I' THEN 1 ELSE -1 END)");
    }

    #[test]
    fn a_relation_without_transition_tables_reads_as_empty_with_its_types() {
        let sql = transition(Vec::new()).changes_from(&relation(), "b");
        assert!(sql.contains("FROM ONLY \"public\".\"t\" t WHERE false"), "{sql}");
    }
}
