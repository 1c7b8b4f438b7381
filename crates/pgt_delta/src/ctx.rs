//! What SQL generation needs besides the operator tree: the tables a stream
//! table's maintenance writes ([`Tables`]), whether it recomputes everything or
//! applies changes, where the changes come from and which relations changed,
//! and the statements a rule must hoist to the top of the refresh's statement
//! (the MERGEs that bring intermediate state tables up to date, whose RETURNING
//! rows are those nodes' deltas).

use crate::names;
use crate::source::ChangeSource;
use crate::tree::{Changed, Node};
use pgt_core::ident::quote_ident;
use std::cell::RefCell;

/// The tables one stream table's maintenance writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tables {
    /// The stream table, quoted and schema-qualified.
    pub stream_table: String,
    /// The stream table's catalog id: intermediate state tables are named
    /// after it (`pgtrickle_state.pgt_<pgt_id>_<n>`), so that they keep their
    /// names when the stream table is renamed or rebuilt.
    pub pgt_id: i64,
}

impl Tables {
    /// Intermediate state table `n` (1-based), quoted and schema-qualified.
    pub fn state_table(&self, n: usize) -> String {
        format!("{}.{}", quote_ident(names::STATE_SCHEMA), quote_ident(&names::state_table(self.pgt_id, n)))
    }
}

/// How the tree is evaluated.
#[derive(Debug, Clone, Copy)]
pub enum Mode<'a> {
    /// A full recomputation: every input is read in its current state; a child
    /// with a state table is read from it (filled before its parent).
    Full,
    /// Applying changes: inputs have new and old states and deltas.
    Delta {
        /// Where base relations' changes come from.
        source: &'a ChangeSource,
        /// Which base relations changed.
        changed: &'a Changed,
    },
}

/// How a placeholder is bound in one evaluation of a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// The input's new state.
    New,
    /// Its delta.
    Delta,
    /// Its old state (as a set for the nullable side of an outer join).
    Old,
}

/// The delta rules of child operators ([`crate::node`]), reached through the
/// context: a rule that reads a child's state or delta (a join's input) need
/// not depend on the rules of the operators inside the child (an aggregate,
/// whose input is a join again), so operators nest without their modules
/// depending on each other in a circle.
pub trait ChildRules {
    /// `node`'s state as a binding: its columns, then the weight.
    fn state_sql(&self, node: &Node, ctx: &Ctx, binding: Binding) -> String;
    /// `node`'s state as a binding restricted to the rows whose `columns`
    /// equal those of some row of `affected` (a CTE with those columns):
    /// reaching the rows by an index on `columns` rather than reading the
    /// whole state.
    fn restricted_state_sql(&self, node: &Node, ctx: &Ctx, binding: Binding, columns: &[String], affected: &str) -> String;
    /// `node`'s delta as a binding; `None` when nothing below it changed.
    fn delta_sql(&self, node: &Node, ctx: &Ctx) -> Option<String>;
    /// The rows of `node`'s new state that its changes did not touch, weight
    /// 1 (the outer-join rule's "kept" rows).
    fn kept_sql(&self, node: &Node, ctx: &Ctx) -> String;
    /// `node`'s columns with no rows.
    fn empty_sql(&self, node: &Node, ctx: &Ctx) -> String;
    /// `node`'s lines in `explain_st`.
    fn explain(&self, node: &Node, indent: &str, ctx: &Ctx, out: &mut String);
}

/// The context of one SQL generation (see the module doc).
pub struct Ctx<'a> {
    /// The tables written.
    pub tables: &'a Tables,
    /// Full recomputation or change application.
    pub mode: Mode<'a>,
    /// The rules of child operators.
    pub rules: &'a dyn ChildRules,
    hoisted: RefCell<Vec<(String, String)>>,
}

impl<'a> Ctx<'a> {
    /// A context for a full recomputation.
    pub fn full(tables: &'a Tables, rules: &'a dyn ChildRules) -> Ctx<'a> {
        Ctx { tables, mode: Mode::Full, rules, hoisted: RefCell::new(Vec::new()) }
    }

    /// A context for applying the changes of `source`.
    pub fn delta(tables: &'a Tables, source: &'a ChangeSource, changed: &'a Changed, rules: &'a dyn ChildRules) -> Ctx<'a> {
        Ctx { tables, mode: Mode::Delta { source, changed }, rules, hoisted: RefCell::new(Vec::new()) }
    }

    /// Whether a base relation below `node` changed.
    pub fn node_changed(&self, node: &Node) -> bool {
        node.relations().iter().any(|r| self.changed(r.relid))
    }

    /// The change source, in a delta context.
    pub fn source(&self) -> Option<&'a ChangeSource> {
        match self.mode {
            Mode::Full => None,
            Mode::Delta { source, .. } => Some(source),
        }
    }

    /// Whether base relation `relid` changed (never, in a full recomputation).
    pub fn changed(&self, relid: u32) -> bool {
        match self.mode {
            Mode::Full => false,
            Mode::Delta { changed, .. } => changed.contains(&relid),
        }
    }

    /// Hoists CTE `name` (a data-modifying statement) to the top of the
    /// refresh's statement, once; later calls with the same name do nothing.
    /// CTEs are kept in the order hoisted: a child's before its parent's.
    pub fn hoist(&self, name: &str, sql: impl FnOnce() -> String) {
        if self.hoisted.borrow().iter().any(|(n, _)| n == name) {
            return;
        }
        let sql = sql();
        self.hoisted.borrow_mut().push((name.to_string(), sql));
    }

    /// Whether CTE `name` was hoisted.
    pub fn is_hoisted(&self, name: &str) -> bool {
        self.hoisted.borrow().iter().any(|(n, _)| n == name)
    }

    /// The hoisted CTEs, in order.
    pub fn into_hoisted(self) -> Vec<(String, String)> {
        self.hoisted.into_inner()
    }
}

/// What the MERGE applying changes to a table returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Returning {
    /// One row per action (`merge_action()`): for the stream table, whose
    /// refresh counts them.
    Actions,
    /// The old and new version of every row written — its row id and the
    /// given visible columns (`__pgt_old_id`, `__pgt_new_id`, `__pgt_o<i>`,
    /// `__pgt_n<i>`): for a child's state table, whose delta they are
    /// ([`crate::node`]).
    Changes(Vec<String>),
}

impl Returning {
    /// The MERGE's RETURNING clause.
    pub fn clause(&self) -> String {
        match self {
            Returning::Actions => "RETURNING merge_action()".to_string(),
            Returning::Changes(columns) => {
                let mut parts = vec![
                    format!("old.{} AS {}", names::ROW_ID, names::OLD_ROW_ID),
                    format!("new.{} AS {}", names::ROW_ID, names::NEW_ROW_ID),
                ];
                for (i, c) in columns.iter().enumerate() {
                    parts.push(format!("old.{q} AS {}", names::old_value(i + 1), q = quote_ident(c)));
                    parts.push(format!("new.{q} AS {}", names::new_value(i + 1), q = quote_ident(c)));
                }
                format!("RETURNING {}", parts.join(", "))
            }
        }
    }
}
