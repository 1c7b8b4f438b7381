//! The operator tree of a defining query, as the translation from PostgreSQL's
//! analysed query produces it.
//!
//! A query block is carried as a *template*: PostgreSQL's own deparse of the block
//! in which every base relation has been replaced by a placeholder name (a CTE
//! reference). Binding each placeholder to SQL for the relation's new state, old
//! state or delta evaluates the block over those inputs with PostgreSQL's exact
//! semantics for every expression, while the delta rules decide the bindings.

/// A base relation read by the query: a table, partitioned table or stream table
/// whose changes are captured.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Relation {
    /// `pg_class` OID.
    pub relid: u32,
    /// The relation, quoted and schema-qualified (`"public"."orders"`).
    pub table_sql: String,
    /// Its change buffer, quoted (`"pgtrickle_changes"."changes_16384"`).
    pub buffer_sql: String,
    /// Its columns by position (attnum − 1); `None` for a dropped column.
    pub columns: Vec<Option<String>>,
    /// Columns of its primary key (or other non-null unique key): the identity of
    /// its rows. Empty when it has none.
    pub key: Vec<String>,
}

/// One input of a block template: the placeholder the template reads, and what it
/// stands for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Input {
    /// Name the template uses in FROM (unquoted; safe identifier chars only).
    pub placeholder: String,
    /// The relation bound to it.
    pub relation: Relation,
    /// Read without partitions or inheritance children (`FROM ONLY`).
    pub only: bool,
    /// Set when the input is the nullable side of a LEFT or RIGHT JOIN: its
    /// changes are applied by the outer-join rule of [`crate::join`].
    #[serde(default)]
    pub nullable: Option<NullableSide>,
}

/// What the outer-join delta rule needs about an input `R` that is the nullable
/// side of a LEFT or RIGHT JOIN `J = P ⟕ R` (see [`crate::join`]). Every template
/// here reads the same placeholders as the block's template.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NullableSide {
    /// The block's template with `J` made an inner join: the block's rows in
    /// which `R`'s row is real (not NULL-extended). Same output columns.
    pub inner_template: String,
    /// A query over `J` alone, made an inner join, without the block's WHERE:
    /// one row per pair of a preserved row and a matching `R` row, with the
    /// keys of the restricted inputs (`__pgt_p<input>_<n>`, 1-based), the
    /// preserved row's content as text (`__pgt_pc`) and `R`'s weight
    /// (`__pgt_pw`).
    pub affected_template: String,
    /// `J` alone as written (outer), without the block's WHERE: the preserved
    /// row's content (`__pgt_pc`) and `R`'s first key column (`__pgt_pk`),
    /// NULL for a preserved row without a match. `J`'s condition includes
    /// `<that column> IS NOT NULL`, so testing it for NULL is an anti-join.
    pub presence_template: String,
    /// The block's template with one more output column, `__pgt_pc`: the
    /// content of the preserved row each output row comes from.
    pub null_template: String,
    /// The preserved inputs whose rows are restricted to the affected keys:
    /// positions (0-based) in the block's inputs. Each is keyed and is not itself
    /// the nullable side of a join.
    pub restricted: Vec<usize>,
}

/// A select-project-join block as a template (see the module doc). Its output
/// columns are, in order, `columns`, then `__pgt_w_<i>` for each input `i`
/// (1-based): the weight of the row read from that input.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Block {
    /// Deparsed SQL: `SELECT ... FROM <placeholders> ... WHERE ...`.
    pub template: String,
    /// The placeholders, in the order of their weight columns.
    pub inputs: Vec<Input>,
    /// Names of the template's data output columns, in order.
    pub columns: Vec<String>,
}

/// The OIDs of the relations whose change windows are not empty in a refresh.
pub type Changed = std::collections::BTreeSet<u32>;

/// The defining query as an operator tree.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Plan {
    /// A block whose rows are the stream table's rows; identity from the inputs' keys.
    Rows(RowsPlan),
    /// Aggregation over a block.
    Aggregate(AggregatePlan),
}

/// `SELECT <visible> FROM ... WHERE ...` (inner and outer joins), or a UNION ALL
/// of such blocks.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RowsPlan {
    /// The branches (one unless UNION ALL).
    pub branches: Vec<RowsBranch>,
    /// Names of the visible columns (the stream table's user columns).
    pub visible: Vec<String>,
    /// Per visible column, a function applied to it before a keyless row's
    /// content is hashed (as [`AggregatePlan::group_hash`]), or empty.
    #[serde(default)]
    pub content_hash: Vec<String>,
}

/// One branch of a [`RowsPlan`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RowsBranch {
    /// The block; its columns are the visible columns (under the plan's names)
    /// followed by the identity columns `__pgt_k<i>_<j>` (input `i`'s key column `j`).
    pub block: Block,
    /// Names of the identity columns in the block's output; empty when some input
    /// has no key, and rows are identified by content and multiplicity instead.
    pub identity: Vec<String>,
}

impl RowsBranch {
    /// Whether rows are identified by content and multiplicity (some input has
    /// no key).
    pub fn keyless(&self) -> bool {
        self.identity.is_empty()
    }
}

/// `SELECT <outputs> FROM ... GROUP BY <keys> [HAVING ...]`, or DISTINCT (no
/// aggregates), or UNION (DISTINCT over the union of branches).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AggregatePlan {
    /// The input: the union of these blocks (one unless UNION). Their columns are
    /// the group keys `__pgt_g<i>`, then each aggregate's argument `__pgt_a<j>` and
    /// filter `__pgt_f<j>` where present.
    pub inputs: Vec<Block>,
    /// Names of the group-key columns in the input (`__pgt_g1`, ...); empty for a
    /// scalar aggregate, which has exactly one row even over empty input.
    pub groups: Vec<String>,
    /// Per group key, its type's equality operator as SQL (`OPERATOR(pg_catalog.=)`),
    /// schema-qualified so that it is the operator GROUP BY uses whatever the
    /// search path (a citext key must not compare as text). Empty: `=`.
    #[serde(default)]
    pub group_equality: Vec<String>,
    /// Per group key, a function applied to it before it is hashed into the row
    /// identity (`pg_catalog.int8send` for a bigint: PostgreSQL's hash of a
    /// 64-bit integer type folds it to 32 bits), or empty for the value itself.
    #[serde(default)]
    pub group_hash: Vec<String>,
    /// The aggregate calls, in order (`j` is the position + 1).
    pub aggregates: Vec<Aggregate>,
    /// Template computing the visible columns (and `__pgt_having` if `having`)
    /// from one row of the placeholder `__pgt_agg`, whose columns are the group
    /// keys `__pgt_g<i>`, the aggregate values `__pgt_v<j>`, then the pass-through
    /// columns named in `passthrough`, which it outputs after the visible ones.
    pub output_template: String,
    /// Names of the visible columns.
    pub visible: Vec<String>,
    /// Whether the query has HAVING (the output template then yields
    /// `__pgt_having`).
    pub having: bool,
    /// Columns of `__pgt_agg` passed through the output template unchanged (the
    /// row identity and the aggregate state), in order.
    pub passthrough: Vec<String>,
}

/// An aggregate call the engine maintains.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Aggregate {
    /// What it computes.
    pub kind: AggregateKind,
    /// Input column with its argument (`__pgt_a<j>`), `None` for COUNT(*).
    pub arg: Option<String>,
    /// Input column with its FILTER condition (`__pgt_f<j>`), if any.
    pub filter: Option<String>,
    /// SQL type of the argument (for MIN/MAX state), e.g. `integer`.
    pub arg_type: String,
    /// SQL type of the aggregate's result, e.g. `bigint` or `numeric`.
    pub result_type: String,
    /// How the user wrote it, for EXPLAIN (`sum(l.amount)`).
    pub display: String,
    /// For [`AggregateKind::Rescan`]: the call over the input's columns.
    pub call: Option<AggregateCall>,
}

/// An aggregate call over input columns, for aggregates recomputed per group.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AggregateCall {
    /// The function, quoted and schema-qualified (`"pg_catalog"."string_agg"`).
    pub function: String,
    /// Input columns holding the arguments, in order.
    pub args: Vec<String>,
    /// `DISTINCT` inside the call.
    pub distinct: bool,
    /// `ORDER BY` inside the call: input column and the ordering clause that
    /// follows it (`USING OPERATOR(pg_catalog.<) NULLS LAST`).
    pub order_by: Vec<(String, String)>,
}

impl AggregateCall {
    /// The call over the columns of `alias` (without FILTER).
    pub fn sql(&self, alias: &str) -> String {
        let col = |c: &String| format!("{alias}.{}", pgt_core::ident::quote_ident(c));
        let args = self.args.iter().map(col).collect::<Vec<_>>().join(", ");
        let order = if self.order_by.is_empty() {
            String::new()
        } else {
            format!(" ORDER BY {}", self.order_by.iter().map(|(c, how)| format!("{} {how}", col(c))).collect::<Vec<_>>().join(", "))
        };
        let args = if args.is_empty() { "*".to_string() } else { args };
        format!("{}({}{args}{order})", self.function, if self.distinct { "DISTINCT " } else { "" })
    }
}

/// The aggregates maintained incrementally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum AggregateKind {
    /// `count(*)`
    CountStar,
    /// `count(x)`
    Count,
    /// `sum(x)` over an integer or numeric type
    Sum,
    /// `avg(x)` over an integer or numeric type
    Avg,
    /// `min(x)`
    Min,
    /// `max(x)`
    Max,
    /// Any other aggregate (string_agg, array_agg, bool_and, count(DISTINCT x),
    /// float sums, user-defined aggregates, ...): recomputed for every affected
    /// group.
    Rescan,
}

impl AggregateKind {
    /// How it is maintained, for EXPLAIN.
    pub fn strategy(self) -> &'static str {
        match self {
            AggregateKind::CountStar | AggregateKind::Count | AggregateKind::Sum | AggregateKind::Avg => "algebraic",
            AggregateKind::Min | AggregateKind::Max => "merge; rescan group when the extremum leaves",
            AggregateKind::Rescan => "rescan of each affected group",
        }
    }
}

/// A hidden column the stream table needs for this plan (beyond `__pgt_row_id`):
/// name and SQL type.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HiddenColumn {
    /// Column name (`__pgt_count`, `__pgt_aux_sum_1`, ...).
    pub name: String,
    /// SQL type.
    pub sql_type: String,
}

impl Plan {
    /// The plan as JSON, for the catalog.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// A plan stored with [`Plan::to_json`].
    ///
    /// # Errors
    /// The JSON parser's message when the text is no plan.
    pub fn from_json(text: &str) -> Result<Plan, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    /// The blocks whose union is the plan's input.
    pub fn blocks(&self) -> Vec<&Block> {
        match self {
            Plan::Rows(r) => r.branches.iter().map(|b| &b.block).collect(),
            Plan::Aggregate(a) => a.inputs.iter().collect(),
        }
    }

    /// The blocks, to patch in place.
    fn blocks_mut(&mut self) -> Vec<&mut Block> {
        match self {
            Plan::Rows(r) => r.branches.iter_mut().map(|b| &mut b.block).collect(),
            Plan::Aggregate(a) => a.inputs.iter_mut().collect(),
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
        for block in self.blocks_mut() {
            for input in block.inputs.iter_mut().filter(|i| i.relation.relid == relid) {
                for attnum in attnums {
                    let Some(slot) = usize::try_from(*attnum - 1).ok().and_then(|i| input.relation.columns.get_mut(i)) else {
                        continue;
                    };
                    if slot.is_some() {
                        *slot = None;
                        changed = true;
                    }
                }
            }
        }
        changed
    }

    /// Hidden state columns the stream table must have for this plan.
    pub fn hidden_columns(&self) -> Vec<HiddenColumn> {
        match self {
            Plan::Rows(_) => Vec::new(),
            Plan::Aggregate(a) => crate::aggregate::state_columns(a),
        }
    }

    /// The base relations read, each once.
    pub fn relations(&self) -> Vec<&Relation> {
        let mut out: Vec<&Relation> = Vec::new();
        for block in self.blocks() {
            for i in &block.inputs {
                if !out.iter().any(|r| r.relid == i.relation.relid) {
                    out.push(&i.relation);
                }
            }
        }
        out
    }
}

impl Plan {
    /// What a FULL refresh of a stream table with this plan inserts: the visible
    /// columns, `__pgt_row_id`, then the hidden state columns.
    pub fn full_sql(&self) -> String {
        match self {
            Plan::Rows(r) => crate::rows::full_sql(r),
            Plan::Aggregate(a) => crate::aggregate::full_sql(a),
        }
    }

    /// The columns [`Plan::full_sql`] yields, in order.
    pub fn stored_columns(&self) -> Vec<String> {
        match self {
            Plan::Rows(r) => {
                let mut c = r.visible.clone();
                c.push("__pgt_row_id".into());
                c
            }
            Plan::Aggregate(a) => {
                let mut c = a.visible.clone();
                c.extend(crate::aggregate::passthrough_columns(&a.aggregates));
                c
            }
        }
    }

    /// The MERGE applying the changes after `frontier` to stream table `st`, given
    /// which inputs changed; `None` when none did.
    pub fn merge_sql(&self, st: &str, frontier: &crate::scan::Frontier, changed: &Changed) -> Option<String> {
        match self {
            Plan::Rows(r) => crate::rows::merge_sql(r, st, frontier, changed),
            Plan::Aggregate(a) => crate::aggregate::merge_sql(a, st, frontier, changed),
        }
    }
}

impl Plan {
    /// A human-readable description: the operator tree with each operator's
    /// strategy, then the full SQL and the MERGE for a refresh in which every
    /// input changed since `frontier`.
    pub fn explain(&self, st: &str, frontier: &crate::scan::Frontier) -> String {
        let mut out = String::from("operator tree:\n");
        let scans = |block: &Block, indent: &str, out: &mut String| {
            let outer = block.inputs.iter().any(|i| i.nullable.is_some());
            out.push_str(&format!("{indent}Join block ({} input{}; {}joins, filters, projections) — telescoping delta rule\n",
                block.inputs.len(), if block.inputs.len() == 1 { "" } else { "s" }, if outer { "inner and outer " } else { "inner " }));
            for input in &block.inputs {
                let key = if input.relation.key.is_empty() { "no key".to_string() } else { format!("key ({})", input.relation.key.join(", ")) };
                let side = match &input.nullable {
                    Some(_) => " — nullable side of an outer join: inner part + NULL-extended rows of the preserved rows its changes match",
                    None => "",
                };
                out.push_str(&format!(
                    "{indent}  Scan {}{} [{}] — change buffer {}{side}\n",
                    if input.only { "ONLY " } else { "" },
                    input.relation.table_sql,
                    key,
                    input.relation.buffer_sql
                ));
            }
        };
        match self {
            Plan::Rows(r) => {
                if r.branches.len() > 1 {
                    out.push_str(&format!("  Union all — {} branches, delta = union of the branches' deltas\n", r.branches.len()));
                }
                for (i, b) in r.branches.iter().enumerate() {
                    let prefix = if r.branches.len() > 1 { format!("branch {}, ", i + 1) } else { String::new() };
                    if b.keyless() {
                        out.push_str(&format!("  Rows — keyless: MERGE by hash({prefix}content, copy number)\n"));
                    } else {
                        out.push_str(&format!("  Rows — MERGE by row identity hash({prefix}{})\n", b.identity.join(", ")));
                    }
                    scans(&b.block, "    ", &mut out);
                }
            }
            Plan::Aggregate(a) => {
                if a.aggregates.is_empty() {
                    out.push_str("  Distinct — multiplicity in __pgt_count; a row disappears when it reaches 0\n");
                }
                out.push_str(&format!(
                    "  Aggregate — {}{}\n",
                    if a.groups.is_empty() { "scalar (one row)".to_string() } else { format!("GROUP BY {} key(s)", a.groups.len()) },
                    if a.having { ", HAVING (groups crossing it are rescanned when absent)" } else { "" }
                ));
                for agg in &a.aggregates {
                    let filter = if agg.filter.is_some() { " FILTER" } else { "" };
                    out.push_str(&format!("    {}{} — {}\n", agg.display, filter, agg.kind.strategy()));
                }
                if a.inputs.len() > 1 {
                    out.push_str(&format!("    Union — {} branches\n", a.inputs.len()));
                }
                for input in &a.inputs {
                    scans(input, "    ", &mut out);
                }
            }
        }
        let all_changed: Changed = self.relations().iter().map(|r| r.relid).collect();
        out.push_str("full SQL:\n  ");
        out.push_str(&self.full_sql());
        out.push_str("\ndelta SQL (every input changed):\n  ");
        out.push_str(&self.merge_sql(st, frontier, &all_changed).unwrap_or_default());
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
            relation: Relation {
                relid,
                table_sql: format!("\"public\".\"t{relid}\""),
                buffer_sql: format!("\"pgtrickle_changes\".\"changes_{relid}\""),
                columns: vec![Some("id".into()), Some("unused".into()), Some("v".into())],
                key: vec!["id".into()],
            },
            only: false,
            nullable: None,
        }
    }

    #[test]
    fn forget_columns_turns_them_into_placeholders_in_every_input_of_the_relation() {
        let block = Block { template: String::new(), inputs: vec![input(1), input(2), input(1)], columns: vec![] };
        let mut plan = Plan::Rows(RowsPlan {
            branches: vec![RowsBranch { block, identity: vec![] }],
            visible: vec![],
            content_hash: vec![],
        });
        assert!(plan.forget_columns(1, &[2, 7]), "attnum 7 is past the plan's columns and ignored");
        for input in &plan.blocks()[0].inputs {
            let expected = if input.relation.relid == 1 { None } else { Some("unused".to_string()) };
            assert_eq!(input.relation.columns[1], expected);
            assert_eq!(input.relation.columns[2].as_deref(), Some("v"));
        }
        assert!(!plan.forget_columns(1, &[2]), "already forgotten");
        assert!(!plan.forget_columns(3, &[1]), "not an input");
    }
}
