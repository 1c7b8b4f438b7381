//! The stored plan of a stream table ([`Plan`]): the operator tree of its
//! defining query ([`crate::tree`]) with how its root is kept, and what a
//! refresh runs for it — the steps of a full recomputation and the statement
//! applying changes — plus its description for `explain_st`.

pub use crate::ctx::{Ctx, Tables};
use crate::node::NodeRules;
use crate::source::{ChangeSource, Frontier};
pub use crate::tree::*;

/// The version of the stored plan's format. A plan stored by a build with
/// another version is not used: the stream table's plan is rebuilt from its
/// defining query (and its contents recomputed).
pub const PLAN_FORMAT: u32 = 2;

/// The defining query as an operator tree, with how its root is kept in the
/// stream table. Stored as JSON in the catalog ([`Plan::to_json`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Plan {
    /// [`PLAN_FORMAT`] of the build that made it.
    pub format: u32,
    /// The root.
    pub root: Root,
    /// `ORDER BY ... LIMIT / OFFSET` over the root's rows (only with a
    /// [`Root::Rows`] root): the stream table stores only that window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topk: Option<crate::topk::TopK>,
}

/// How the root of the tree is kept in the stream table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Root {
    /// A block (or UNION ALL of blocks) whose rows are the stream table's rows;
    /// identity from the inputs' keys ([`crate::rows`]).
    Rows(RowsPlan),
    /// Aggregation over blocks: the stream table holds each group's visible
    /// columns and state ([`crate::aggregate`]).
    Aggregate(AggregatePlan),
}

impl Plan {
    /// A plan of the current format.
    pub fn new(root: Root) -> Plan {
        Plan { format: PLAN_FORMAT, root, topk: None }
    }

    /// The plan as JSON, for the catalog.
    pub fn to_json(&self) -> String {
        // Plain data: serialization cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// A plan stored with [`Plan::to_json`].
    ///
    /// # Errors
    /// The JSON parser's message when the text is no plan, or says that the
    /// plan was stored in another format ([`PLAN_FORMAT`]).
    pub fn from_json(text: &str) -> Result<Plan, String> {
        #[derive(serde::Deserialize)]
        struct Format {
            format: Option<u32>,
        }
        let format = serde_json::from_str::<Format>(text).map_err(|e| e.to_string())?.format;
        if format != Some(PLAN_FORMAT) {
            return Err(format!("the plan was stored in format {} (this build reads {PLAN_FORMAT})", format.unwrap_or(1)));
        }
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    /// The blocks of the root (whose union is the root's input).
    pub fn blocks(&self) -> Vec<&Block> {
        match &self.root {
            Root::Rows(r) => r.branches.iter().map(|b| &b.block).collect(),
            Root::Aggregate(a) => a.inputs.iter().collect(),
        }
    }

    /// Calls `f` on every base relation of the tree, at any depth, to patch it.
    fn for_each_relation_mut(&mut self, f: &mut dyn FnMut(&mut Relation)) {
        let blocks: Vec<&mut Block> = match &mut self.root {
            Root::Rows(r) => r.branches.iter_mut().map(|b| &mut b.block).collect(),
            Root::Aggregate(a) => a.inputs.iter_mut().collect(),
        };
        for block in blocks {
            block.for_each_relation_mut(f);
        }
    }

    /// Stops reading columns `attnums` (1-based) of relation `relid`: they become
    /// NULL placeholders, as dropped columns are, in the relation's new state and
    /// in its change buffer alike. For columns the defining query does not use,
    /// after DDL renamed, retyped or dropped them (the buffer's pending values of
    /// such a column are no longer comparable with the table's). Returns whether
    /// the plan changed.
    pub fn forget_columns(&mut self, relid: u32, attnums: &[i16]) -> bool {
        let mut changed = false;
        self.for_each_relation_mut(&mut |relation| {
            if relation.relid != relid {
                return;
            }
            for attnum in attnums {
                let Some(slot) = usize::try_from(*attnum - 1).ok().and_then(|i| relation.columns.get_mut(i)) else {
                    continue;
                };
                if slot.is_some() {
                    *slot = None;
                    changed = true;
                }
            }
        });
        changed
    }

    /// Hidden state columns the stream table must have for this plan.
    pub fn hidden_columns(&self) -> Vec<HiddenColumn> {
        match &self.root {
            Root::Rows(_) => Vec::new(),
            Root::Aggregate(a) => crate::aggregate::state_columns(a),
        }
    }

    /// The base relations read, at any depth, each once.
    pub fn relations(&self) -> Vec<&Relation> {
        let mut out: Vec<&Relation> = Vec::new();
        for block in self.blocks() {
            for relation in block.inputs.iter().flat_map(|i| i.source.relations()) {
                if !out.iter().any(|r| r.relid == relation.relid) {
                    out.push(relation);
                }
            }
        }
        out
    }

    /// Numbers the state tables of the tree's nodes 1, 2, ..., children
    /// before parents (the translation builds nodes unnumbered).
    pub fn number_states(&mut self) {
        let mut next = 0;
        let blocks: Vec<&mut Block> = match &mut self.root {
            Root::Rows(r) => r.branches.iter_mut().map(|b| &mut b.block).collect(),
            Root::Aggregate(a) => a.inputs.iter_mut().collect(),
        };
        for block in blocks {
            crate::tree::number_states(block, &mut next);
        }
    }

    /// The number of inputs of the widest block of the tree, at any depth: how
    /// many relations one of its joins has (the planner's join search grows
    /// with it).
    pub fn widest_block(&self) -> usize {
        fn widest(block: &Block) -> usize {
            let own = block.inputs.len();
            let below = block
                .inputs
                .iter()
                .filter_map(|i| match &i.source {
                    Source::Node(n) => n.blocks().into_iter().map(widest).max(),
                    Source::Relation(_) => None,
                })
                .max()
                .unwrap_or(0);
            own.max(below)
        }
        self.blocks().into_iter().map(widest).max().unwrap_or(0)
    }

    /// Whether a WITH RECURSIVE ... UNION ALL (maintained by counting) is
    /// in the tree: its delta may stop at the recursion bound where a
    /// recomputation would not (`crate::recursive`).
    pub fn has_counted_recursion(&self) -> bool {
        self.state_tables().iter().any(|n| matches!(n, Node::Recursive(r) if r.plan.all))
    }

    /// Per state table (its number), the column sets its rows are looked up
    /// by ([`crate::tree::collect_lookups`]), each worth an index.
    pub fn state_lookups(&self) -> Vec<(usize, Vec<String>)> {
        let mut out = Vec::new();
        for block in self.blocks() {
            crate::tree::collect_lookups(block, &mut out);
        }
        out
    }

    /// The child operators that keep a state table, children before parents
    /// (the order a full recomputation fills them in).
    pub fn state_tables(&self) -> Vec<&Node> {
        let mut out = Vec::new();
        for block in self.blocks() {
            crate::tree::collect_stateful(block, &mut out);
        }
        out
    }
}

/// One step of a full recomputation: make table `table` hold exactly the rows of
/// `source`, whose columns are `columns` (`crate::replace`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FullStep {
    /// The table (quoted): a state table, or the stream table last.
    pub table: String,
    /// Its stored columns, in order.
    pub columns: Vec<String>,
    /// The query computing them.
    pub source: String,
}

/// The statement applying a refresh's changes: data-modifying CTEs that bring
/// the intermediate state tables up to date (each `(name, MERGE ... RETURNING
/// ...)`, children before parents), then the MERGE into the stream table, which
/// returns one row per action (`merge_action()`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaStatement {
    /// The state tables' MERGEs, as named CTEs.
    pub ctes: Vec<(String, String)>,
    /// The MERGE into the stream table, or for a TopK the probe
    /// ([`DeltaOutput::TopKProbe`]).
    pub merge: String,
    /// What `merge` returns.
    pub output: DeltaOutput,
}

/// What the last part of a [`DeltaStatement`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeltaOutput {
    /// One row per row the MERGE wrote, `merge_action`.
    Actions,
    /// One row `(affecting, stored)` ([`crate::topk::probe_sql`]). When
    /// [`crate::topk::TopK::applies_directly`] to `stored`, the statement
    /// applied the changes to the stream table and `affecting` counts the
    /// rows written (the caller removes the rows past the LIMIT,
    /// [`crate::topk::trim_sql`]); else the stream table is not written and
    /// the caller recomputes its window when
    /// [`crate::topk::TopK::needs_refill`] says so, with the last of
    /// [`Plan::full_steps`].
    TopKProbe,
}

impl DeltaStatement {
    /// One SQL statement: the CTEs, the MERGE as the last CTE `result`, and
    /// `select` over it (which must read `result`).
    pub fn wrap(&self, result: &str, select: &str) -> String {
        let mut ctes: Vec<String> = self.ctes.iter().map(|(n, sql)| format!("{n} AS ({sql})")).collect();
        ctes.push(format!("{result} AS ({})", self.merge));
        format!("WITH {} {select}", ctes.join(", "))
    }
}

impl Plan {
    /// The steps of a full recomputation: each state table in turn, children
    /// first, then the stream table (its visible columns, `__pgt_row_id`, then
    /// the hidden state columns). Run in one snapshot, in order: each step reads
    /// what the steps before it wrote.
    pub fn full_steps(&self, tables: &Tables) -> Vec<FullStep> {
        let ctx = Ctx::full(tables, &NodeRules);
        let mut steps: Vec<FullStep> = self
            .state_tables()
            .into_iter()
            .filter_map(|node| {
                let n = node.state()?;
                Some(FullStep { table: tables.state_table(n), columns: node.stored_columns(), source: crate::node::full_state_sql(node, &ctx) })
            })
            .collect();
        let (source, columns) = match &self.root {
            Root::Rows(r) => (crate::rows::full_sql(r, &ctx), self.stored_columns()),
            Root::Aggregate(a) => (crate::aggregate::full_sql(a, &ctx), self.stored_columns()),
        };
        let source = match &self.topk {
            Some(topk) => crate::topk::window_sql(topk, &source),
            None => source,
        };
        steps.push(FullStep { table: tables.stream_table.clone(), columns, source });
        steps
    }

    /// What a FULL refresh of a stream table with this plan inserts, as one
    /// query (reading the intermediate state tables as they are): for
    /// EXPLAIN and tests. A refresh runs [`Plan::full_steps`].
    pub fn full_sql(&self, tables: &Tables) -> String {
        self.full_steps(tables).pop().map(|s| s.source).unwrap_or_default()
    }

    /// The columns the stream table stores, in order.
    pub fn stored_columns(&self) -> Vec<String> {
        match &self.root {
            Root::Rows(r) => {
                let mut c = r.visible.clone();
                c.push(crate::names::ROW_ID.into());
                c
            }
            Root::Aggregate(a) => {
                let mut c = a.visible.clone();
                c.extend(crate::aggregate::passthrough_columns(&a.aggregates));
                c
            }
        }
    }

    /// The statement applying the changes of `source` to the stream table and
    /// the state tables of `tables`, given which relations changed; `None`
    /// when none did.
    pub fn delta_statement(&self, tables: &Tables, source: &ChangeSource, changed: &Changed) -> Option<DeltaStatement> {
        let ctx = Ctx::delta(tables, source, changed, &NodeRules);
        if let (Some(topk), Root::Rows(r)) = (&self.topk, &self.root) {
            let st = &tables.stream_table;
            let delta = crate::rows::delta_rows_sql(r, &ctx)?;
            // A window holding every row takes the changes as they are.
            let direct = crate::rows::guarded_merge_sql(r, st, &ctx, crate::ctx::Returning::Actions, Some(&topk.direct_guard()))?;
            let mut ctes = ctx.into_hoisted();
            ctes.push((crate::topk::STORED.to_string(), crate::topk::stored_sql(st)));
            ctes.push((crate::topk::DIRECT.to_string(), direct));
            let merge = crate::topk::probe_sql(topk, st, &delta);
            return Some(DeltaStatement { ctes, merge, output: DeltaOutput::TopKProbe });
        }
        let merge = match &self.root {
            Root::Rows(r) => crate::rows::merge_sql(r, &tables.stream_table, &ctx, crate::ctx::Returning::Actions),
            Root::Aggregate(a) => crate::aggregate::merge_sql(a, &tables.stream_table, &ctx, crate::ctx::Returning::Actions),
        }?;
        Some(DeltaStatement { ctes: ctx.into_hoisted(), merge, output: DeltaOutput::Actions })
    }
}

impl Plan {
    /// The delta of the tree's root blocks alone, as one query counting its
    /// rows (with the state tables' MERGEs it reads as CTEs), without what
    /// applies it to the stream table: for comparing its estimated cost with
    /// a full recomputation's ([`Plan::full_steps`]). `None` when nothing
    /// changed.
    pub fn delta_core_sql(&self, tables: &Tables, source: &ChangeSource, changed: &Changed) -> Option<String> {
        let ctx = Ctx::delta(tables, source, changed, &NodeRules);
        let core = crate::union::delta_sql(&self.blocks().into_iter().cloned().collect::<Vec<_>>(), &ctx)?;
        let ctes: Vec<String> = ctx.into_hoisted().into_iter().map(|(n, sql)| format!("{n} AS ({sql})")).collect();
        let with = if ctes.is_empty() { String::new() } else { format!("WITH {} ", ctes.join(", ")) };
        Some(format!("{with}SELECT count(*) FROM ({core}) d"))
    }
}

impl Plan {
    /// A human-readable description: the operator tree with each operator's
    /// strategy and the state it keeps, then the SQL of a full recomputation and
    /// of a refresh in which every input changed since `frontier`.
    pub fn explain(&self, tables: &Tables, frontier: &Frontier) -> String {
        let ctx = Ctx::full(tables, &NodeRules);
        let mut out = String::from("operator tree:\n");
        if let Some(topk) = &self.topk {
            crate::topk::explain(topk, "  ", &mut out);
        }
        match &self.root {
            Root::Rows(r) => crate::rows::explain(r, "  ", &ctx, &mut out),
            Root::Aggregate(a) => crate::aggregate::explain(a, "  ", &ctx, &mut out),
        }
        let all_changed: Changed = self.relations().iter().map(|r| r.relid).collect();
        let steps = self.full_steps(tables);
        out.push_str("full SQL:\n");
        for step in &steps {
            out.push_str(&format!("  into {}: {}\n", step.table, step.source));
        }
        out.push_str("delta SQL (every input changed):\n  ");
        let source = ChangeSource::window(frontier.clone());
        if let Some(statement) = self.delta_statement(tables, &source, &all_changed) {
            let select = match statement.output {
                DeltaOutput::Actions => "SELECT merge_action FROM __pgt_m",
                DeltaOutput::TopKProbe => "SELECT affecting, stored FROM __pgt_m",
            };
            out.push_str(&statement.wrap("__pgt_m", select));
        }
        out.push('\n');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(relid: u32) -> Input {
        Input {
            placeholder: format!("__pgt_in_{relid}"),
            source: Source::Relation(Relation {
                relid,
                table_sql: format!("\"public\".\"t{relid}\""),
                buffer_sql: format!("\"pgtrickle_changes\".\"changes_{relid}\""),
                columns: vec![Some("id".into()), Some("unused".into()), Some("v".into())],
                key: vec!["id".into()],
            }),
            only: false,
            nullable: None,
            presence: None,
        }
    }

    #[test]
    fn forget_columns_turns_them_into_placeholders_in_every_input_of_the_relation() {
        let block = Block { template: String::new(), inputs: vec![input(1), input(2), input(1)], columns: vec![] };
        let mut plan = Plan::new(Root::Rows(RowsPlan {
            branches: vec![RowsBranch { block, identity: vec![] }],
            visible: vec![],
            content_hash: vec![],
            multiplicity: None,
        }));
        assert!(plan.forget_columns(1, &[2, 7]), "attnum 7 is past the plan's columns and ignored");
        for input in &plan.blocks()[0].inputs {
            let relation = input.source.relation().unwrap();
            let expected = if relation.relid == 1 { None } else { Some("unused".to_string()) };
            assert_eq!(relation.columns[1], expected);
            assert_eq!(relation.columns[2].as_deref(), Some("v"));
        }
        assert!(!plan.forget_columns(1, &[2]), "already forgotten");
        assert!(!plan.forget_columns(3, &[1]), "not an input");
    }
}
