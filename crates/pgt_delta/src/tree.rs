//! The operator tree's data: what the translation from PostgreSQL's analysed
//! query builds and the catalog stores (as JSON, inside [`crate::plan::Plan`]).
//! Pure data with structural queries (which relations, which hidden columns);
//! the delta rules that turn it into SQL live in the operator modules.
//!
//! A query block is carried as a *template*: PostgreSQL's own deparse of the
//! block in which every input has been replaced by a placeholder name (a CTE
//! reference). Binding each placeholder to SQL for the input's new state, old
//! state or delta evaluates the block over those inputs with PostgreSQL's exact
//! semantics for every expression, while the delta rules decide the bindings.
//! An input is a base relation ([`Source::Relation`]) or a child operator
//! ([`Source::Node`]), which is how operators nest.

use crate::names;

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

/// What a block's input stands for: a captured base relation, or a child
/// operator whose result the block reads (an aggregate in a subquery, ...).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Source {
    /// A base relation ([`crate::scan`]).
    Relation(Relation),
    /// A child operator ([`crate::node`]).
    Node(Box<Node>),
}

impl Source {
    /// The base relations read, at any depth.
    pub fn relations(&self) -> Vec<&Relation> {
        match self {
            Source::Relation(r) => vec![r],
            Source::Node(n) => n.relations(),
        }
    }

    /// The identity columns of its rows, as the block reads them: the key of a
    /// relation, the row id of a child; empty when rows have no identity.
    pub fn key(&self) -> Vec<String> {
        match self {
            Source::Relation(r) => r.key.clone(),
            Source::Node(n) => n.key(),
        }
    }

    /// The base relation, if it is one.
    pub fn relation(&self) -> Option<&Relation> {
        match self {
            Source::Relation(r) => Some(r),
            Source::Node(_) => None,
        }
    }
}

/// One input of a block template: the placeholder the template reads, and what it
/// stands for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Input {
    /// Name the template uses in FROM (unquoted; safe identifier chars only).
    pub placeholder: String,
    /// What is bound to it.
    pub source: Source,
    /// Read without partitions or inheritance children (`FROM ONLY`).
    pub only: bool,
    /// Set when the input is the nullable side of a LEFT or RIGHT JOIN: its
    /// changes are applied by the outer-join rule of [`crate::join`].
    #[serde(default)]
    pub nullable: Option<NullableSide>,
    /// Set when the input (a child) is read only inside subquery expressions:
    /// its changes are applied by the presence rule ([`crate::presence`]).
    /// It has no weight column in the block's output.
    #[serde(default)]
    pub presence: Option<Presence>,
}

/// What the presence rule needs about a child read inside subquery
/// expressions: how the FROM inputs are restricted to the rows its changes
/// can affect (none: uncorrelated).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Presence {
    /// Per restricted FROM input, the correlation pairs.
    pub restrictions: Vec<Restriction>,
}

/// The FROM input at position `input` (0-based) is restricted to the rows
/// that match a changed row of the child on every pair.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Restriction {
    /// Position of the restricted input in the block.
    pub input: usize,
    /// The correlation pairs.
    pub pairs: Vec<CorrelationPair>,
}

/// `<input column> <operator> <child column>`: one equality of a subquery's
/// correlation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CorrelationPair {
    /// The input's column (placeholder column name).
    pub input_column: String,
    /// The correlation's operator, schema-qualified (`OPERATOR(pg_catalog.=)`).
    pub operator: String,
    /// The child's column (`__pgt_c<i>`).
    pub child_column: String,
    /// Whether the input's column is the operator's left operand (else the
    /// child's is).
    pub input_on_left: bool,
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
    /// A block output column (not visible) holding how many copies of the row
    /// each output row stands for (≥ 0), for INTERSECT ALL / EXCEPT ALL; the
    /// branches are then keyless. `None`: one.
    #[serde(default)]
    pub multiplicity: Option<String>,
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

impl Block {
    /// Calls `f` on every base relation this block reads, at any depth.
    pub fn for_each_relation_mut(&mut self, f: &mut dyn FnMut(&mut Relation)) {
        for input in self.inputs.iter_mut() {
            match &mut input.source {
                Source::Relation(r) => f(r),
                Source::Node(n) => n.for_each_block_mut(&mut |b| b.for_each_relation_mut(f)),
            }
        }
    }
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
    /// For the regression family: the input column with the second
    /// argument (`__pgt_b<j>`, the `x` of `corr(y, x)`; `arg` holds `y`).
    #[serde(default)]
    pub arg2: Option<String>,
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
    /// `bool_and(x)`, `every(x)`: true when every contributing value is
    /// (counted: the contributing rows and the true ones)
    BoolAnd,
    /// `bool_or(x)`: true when some contributing value is
    BoolOr,
    /// `var_samp(x)`, `variance(x)` over an integer type (Σx and Σx² kept exact)
    VarSamp,
    /// `var_pop(x)` over an integer type
    VarPop,
    /// `stddev_samp(x)`, `stddev(x)` over an integer type
    StddevSamp,
    /// `stddev_pop(x)` over an integer type
    StddevPop,
    /// `bit_and(x)` over `smallint`, `integer`, `bigint`: per bit position,
    /// the contributing rows with that bit set are counted
    BitAnd,
    /// `bit_or(x)` over `smallint`, `integer`, `bigint` (counted as `BitAnd`)
    BitOr,
    /// `corr(y, x)`: the regression family (two float8 arguments, `y`
    /// first), from the exact sums Σx, Σx², Σy, Σy², Σxy
    Corr,
    /// `covar_pop(y, x)`
    CovarPop,
    /// `covar_samp(y, x)`
    CovarSamp,
    /// `regr_avgx(y, x)`
    RegrAvgX,
    /// `regr_avgy(y, x)`
    RegrAvgY,
    /// `regr_count(y, x)`
    RegrCount,
    /// `regr_intercept(y, x)`
    RegrIntercept,
    /// `regr_r2(y, x)`
    RegrR2,
    /// `regr_slope(y, x)`
    RegrSlope,
    /// `regr_sxx(y, x)`
    RegrSxx,
    /// `regr_sxy(y, x)`
    RegrSxy,
    /// `regr_syy(y, x)`
    RegrSyy,
    /// Any other aggregate (string_agg, array_agg, bool_and, count(DISTINCT x),
    /// float sums, user-defined aggregates, ...): recomputed for every affected
    /// group.
    Rescan,
}

impl AggregateKind {
    /// `bit_and` or `bit_or`.
    pub fn is_bitwise(self) -> bool {
        matches!(self, AggregateKind::BitAnd | AggregateKind::BitOr)
    }

    /// `var_samp`, `var_pop`, `stddev_samp` or `stddev_pop`.
    pub fn is_variance(self) -> bool {
        matches!(self, AggregateKind::VarSamp | AggregateKind::VarPop | AggregateKind::StddevSamp | AggregateKind::StddevPop)
    }

    /// `corr`, `covar_*` or `regr_*` (two arguments, five running sums).
    pub fn is_regression(self) -> bool {
        matches!(
            self,
            AggregateKind::Corr
                | AggregateKind::CovarPop
                | AggregateKind::CovarSamp
                | AggregateKind::RegrAvgX
                | AggregateKind::RegrAvgY
                | AggregateKind::RegrCount
                | AggregateKind::RegrIntercept
                | AggregateKind::RegrR2
                | AggregateKind::RegrSlope
                | AggregateKind::RegrSxx
                | AggregateKind::RegrSxy
                | AggregateKind::RegrSyy
        )
    }

    /// How it is maintained, for EXPLAIN.
    pub fn strategy(self) -> &'static str {
        if self.is_regression() {
            return "algebraic";
        }
        match self {
            AggregateKind::CountStar
            | AggregateKind::Count
            | AggregateKind::Sum
            | AggregateKind::Avg
            | AggregateKind::BoolAnd
            | AggregateKind::BoolOr
            | AggregateKind::VarSamp
            | AggregateKind::VarPop
            | AggregateKind::StddevSamp
            | AggregateKind::StddevPop
            | AggregateKind::BitAnd
            | AggregateKind::BitOr => "algebraic",
            AggregateKind::Min | AggregateKind::Max => "merge; rescan group when the extremum leaves",
            AggregateKind::Rescan => "rescan of each affected group",
            _ => "algebraic",
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


/// A child operator (see the module doc). Each keeps its result in a state
/// table, numbered within its stream table ([`crate::plan::Plan::number_states`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Node {
    /// An aggregate (GROUP BY, DISTINCT, UNION).
    Aggregate(ChildAggregate),
    /// Rows of blocks (a subquery with outer joins, a UNION ALL, the nullable
    /// side of an outer join that is a view, a subquery or a keyless table).
    Rows(ChildRows),
    /// A query level with window functions ([`crate::window`]).
    Window(ChildWindow),
    /// A recursive WITH query ([`crate::recursive`]).
    Recursive(ChildRecursive),
}

/// A recursive child: a [`RecursivePlan`] kept in state
/// table `state`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChildRecursive {
    /// Its state table number.
    pub state: usize,
    /// The recursive query.
    pub plan: RecursivePlan,
    /// The SQL types of its visible columns, in order.
    pub column_types: Vec<String>,
}

/// A window child: a [`WindowPlan`] whose visible columns are
/// named `__pgt_c1`, ..., kept in state table `state`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChildWindow {
    /// Its state table number.
    pub state: usize,
    /// The window level.
    pub plan: WindowPlan,
    /// The SQL types of its visible columns, in order.
    pub column_types: Vec<String>,
}

/// An aggregate child: the aggregate plan whose visible columns are named
/// `__pgt_c1`, ... (positional: a subquery's output names need not be unique)
/// and the number of its state table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChildAggregate {
    /// Its state table: `pgtrickle_state.pgt_<pgt_id>_<state>`.
    pub state: usize,
    /// The aggregate.
    pub plan: AggregatePlan,
    /// The SQL types of its visible columns (the state table's), in order.
    pub column_types: Vec<String>,
}

/// A rows child: a [`RowsPlan`] whose visible columns are named `__pgt_c1`,
/// ..., kept in state table `state` like a stream table with that plan.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChildRows {
    /// Its state table number.
    pub state: usize,
    /// The rows.
    pub plan: RowsPlan,
    /// The SQL types of its visible columns, in order.
    pub column_types: Vec<String>,
}

impl Node {
    /// The names of its visible columns (`__pgt_c1`, ...).
    pub fn visible(&self) -> &[String] {
        match self {
            Node::Aggregate(a) => &a.plan.visible,
            Node::Rows(r) => &r.plan.visible,
            Node::Window(w) => &w.plan.visible,
            Node::Recursive(r) => &r.plan.visible,
        }
    }

    /// The SQL types of its visible columns.
    pub fn column_types(&self) -> &[String] {
        match self {
            Node::Aggregate(a) => &a.column_types,
            Node::Rows(r) => &r.column_types,
            Node::Window(w) => &w.column_types,
            Node::Recursive(r) => &r.column_types,
        }
    }

    /// The base relations read, at any depth.
    pub fn relations(&self) -> Vec<&Relation> {
        self.blocks().into_iter().flat_map(|b| b.inputs.iter().flat_map(|i| i.source.relations())).collect()
    }

    /// The columns a parent reads: the output columns, then `__pgt_row_id`.
    pub fn columns(&self) -> Vec<String> {
        let mut c = self.visible().to_vec();
        c.push(names::ROW_ID.to_string());
        c
    }

    /// Its rows' identity columns for the parent: `__pgt_row_id`.
    pub fn key(&self) -> Vec<String> {
        vec![names::ROW_ID.to_string()]
    }

    /// Calls `f` on each block of this node.
    pub fn for_each_block_mut(&mut self, f: &mut dyn FnMut(&mut Block)) {
        match self {
            Node::Aggregate(a) => a.plan.inputs.iter_mut().for_each(f),
            Node::Rows(r) => r.plan.branches.iter_mut().for_each(|b| f(&mut b.block)),
            Node::Window(w) => w.plan.input.branches.iter_mut().for_each(|b| f(&mut b.block)),
            Node::Recursive(r) => r.plan.blocks_mut().into_iter().for_each(f),
        }
    }

    /// Its blocks.
    pub fn blocks(&self) -> Vec<&Block> {
        match self {
            Node::Aggregate(a) => a.plan.inputs.iter().collect(),
            Node::Rows(r) => r.plan.branches.iter().map(|b| &b.block).collect(),
            Node::Window(w) => w.plan.input.branches.iter().map(|b| &b.block).collect(),
            Node::Recursive(r) => r.plan.blocks(),
        }
    }

    /// The number of its state table.
    pub fn state(&self) -> Option<usize> {
        Some(self.state_number())
    }

    /// The number of its state table.
    pub fn state_number(&self) -> usize {
        match self {
            Node::Aggregate(a) => a.state,
            Node::Rows(r) => r.state,
            Node::Window(w) => w.state,
            Node::Recursive(r) => r.state,
        }
    }

    fn state_number_mut(&mut self) -> &mut usize {
        match self {
            Node::Aggregate(a) => &mut a.state,
            Node::Rows(r) => &mut r.state,
            Node::Window(w) => &mut w.state,
            Node::Recursive(r) => &mut r.state,
        }
    }

    /// The columns its state table stores, in order.
    pub fn stored_columns(&self) -> Vec<String> {
        match self {
            Node::Aggregate(a) => {
                let mut c = a.plan.visible.clone();
                c.extend(a.plan.passthrough_columns());
                c
            }
            Node::Rows(r) => {
                let mut c = r.plan.visible.clone();
                c.push(names::ROW_ID.to_string());
                c
            }
            Node::Window(w) => w.plan.stored_columns(),
            Node::Recursive(r) => r.plan.stored_columns(),
        }
    }

    /// Its state table's columns with their SQL types, for creating it.
    pub fn stored_column_types(&self) -> Vec<(String, String)> {
        let mut c: Vec<(String, String)> = self.visible().iter().cloned().zip(self.column_types().iter().cloned()).collect();
        c.push((names::ROW_ID.to_string(), "bigint".to_string()));
        match self {
            Node::Aggregate(a) => c.extend(a.plan.state_columns().into_iter().map(|h| (h.name, h.sql_type))),
            Node::Window(w) => c.extend(w.plan.hidden_column_types()),
            Node::Rows(_) | Node::Recursive(_) => {}
        }
        c
    }
}

/// Numbers the state tables of the nodes under `block` from `*next` on,
/// children before parents.
pub fn number_states(block: &mut Block, next: &mut usize) {
    for input in block.inputs.iter_mut() {
        if let Source::Node(node) = &mut input.source {
            node.for_each_block_mut(&mut |b| number_states(b, next));
            *next += 1;
            *node.state_number_mut() = *next;
        }
    }
}

/// Per child read inside subquery expressions under `block` (at any depth):
/// its state table number and the columns its correlation pairs compare,
/// which the presence rule and the re-evaluated subqueries look its rows up
/// by (an index on them makes each lookup an index scan).
pub fn collect_lookups(block: &Block, out: &mut Vec<(usize, Vec<String>)>) {
    for input in &block.inputs {
        if let Source::Node(node) = &input.source {
            for b in node.blocks() {
                collect_lookups(b, out);
            }
            if let Node::Window(w) = node.as_ref() {
                // Its stored rows are looked up by partition key.
                let entry = (node.state_number(), w.plan.partition_columns());
                if !entry.1.is_empty() && !out.contains(&entry) {
                    out.push(entry);
                }
            }
            if let Node::Recursive(r) = node.as_ref() {
                // Its step joins its rows by any of their columns.
                for c in &r.plan.visible {
                    let entry = (node.state_number(), vec![c.clone()]);
                    if !out.contains(&entry) {
                        out.push(entry);
                    }
                }
            }
            let Some(presence) = &input.presence else { continue };
            let mut columns: Vec<String> = Vec::new();
            for pair in presence.restrictions.iter().flat_map(|r| &r.pairs) {
                if !columns.contains(&pair.child_column) {
                    columns.push(pair.child_column.clone());
                }
            }
            let entry = (node.state_number(), columns);
            if !entry.1.is_empty() && !out.contains(&entry) {
                out.push(entry);
            }
        }
    }
}

/// The nodes with state tables in the tree under `block`, children before
/// parents.
pub fn collect_stateful<'a>(block: &'a Block, out: &mut Vec<&'a Node>) {
    for input in &block.inputs {
        if let Source::Node(node) = &input.source {
            for b in node.blocks() {
                collect_stateful(b, out);
            }
            if node.state().is_some() {
                out.push(node);
            }
        }
    }
}

impl Aggregate {
    /// The state column holding aggregate `j`'s value (its running sum, its
    /// extremum, its rescanned value), if it has one.
    pub fn value_state_column(&self, j: usize) -> Option<String> {
        match self.kind {
            AggregateKind::Sum
            | AggregateKind::Avg
            | AggregateKind::BoolAnd
            | AggregateKind::BoolOr
            | AggregateKind::BitAnd
            | AggregateKind::BitOr => Some(names::aux_sum(j)),
            k if k.is_variance() || k.is_regression() => Some(names::aux_sum(j)),
            AggregateKind::Min => Some(names::aux_min(j)),
            AggregateKind::Max => Some(names::aux_max(j)),
            AggregateKind::Rescan => Some(names::aux_val(j)),
            _ => None,
        }
    }

    /// The state columns of aggregate `j` after its value column, each
    /// `numeric`: Σx² of the variance family; Σx², Σy, Σy², Σxy of the
    /// regression family.
    pub fn extra_state_columns(&self, j: usize) -> Vec<(String, String)> {
        let names: Vec<String> = if self.kind.is_variance() {
            vec![names::aux_sumsq(j)]
        } else if self.kind.is_regression() {
            vec![names::aux_sumsq(j), names::aux_sum_y(j), names::aux_sumsq_y(j), names::aux_sum_xy(j)]
        } else {
            Vec::new()
        };
        names.into_iter().map(|n| (n, "numeric".to_string())).collect()
    }

    /// Whether its argument is a float (`real`, `double precision`), whose
    /// values are summed exactly (`pgtrickle._exact_sum`).
    pub fn float_argument(&self) -> bool {
        self.kind.is_regression() || matches!(self.arg_type.as_str(), "double precision" | "real")
    }

    /// The SQL type of that column.
    pub fn value_state_type(&self) -> String {
        match self.kind {
            AggregateKind::Avg => "numeric".to_string(),
            AggregateKind::BoolAnd | AggregateKind::BoolOr => "bigint".to_string(),
            AggregateKind::BitAnd | AggregateKind::BitOr => "bigint[]".to_string(),
            k if k.is_variance() || k.is_regression() => "numeric".to_string(),
            AggregateKind::Min | AggregateKind::Max => self.arg_type.clone(),
            _ => self.result_type.clone(),
        }
    }
}

impl AggregatePlan {
    /// The hidden state columns, in storage order: `__pgt_count`, then per
    /// aggregate `j` `__pgt_aux_count_<j>` and its value column, if any.
    pub fn state_columns(&self) -> Vec<HiddenColumn> {
        state_columns_for(&self.aggregates)
    }

    /// Columns of the placeholder `__pgt_agg` passed through the output
    /// template after the visible columns: the row identity, then the state
    /// columns.
    pub fn passthrough_columns(&self) -> Vec<String> {
        passthrough_columns(&self.aggregates)
    }
}

/// The hidden state columns for `aggregates`, in storage order.
pub fn state_columns_for(aggregates: &[Aggregate]) -> Vec<HiddenColumn> {
    let mut cols = vec![HiddenColumn { name: names::COUNT.into(), sql_type: "bigint".into() }];
    for (i, agg) in aggregates.iter().enumerate() {
        let j = i + 1;
        cols.push(HiddenColumn { name: names::aux_count(j), sql_type: "bigint".into() });
        if let Some(name) = agg.value_state_column(j) {
            cols.push(HiddenColumn { name, sql_type: agg.value_state_type() });
        }
        for (name, sql_type) in agg.extra_state_columns(j) {
            cols.push(HiddenColumn { name, sql_type });
        }
    }
    cols
}

/// The pass-through columns for `aggregates`: `__pgt_row_id`, then the state
/// columns.
pub fn passthrough_columns(aggregates: &[Aggregate]) -> Vec<String> {
    let mut out = vec![names::ROW_ID.to_string()];
    out.extend(state_columns_for(aggregates).into_iter().map(|c| c.name));
    out
}

/// A window query level (see [`crate::window`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WindowPlan {
    /// The rows the windows are computed over, with visible columns
    /// `__pgt_wx1`, ... ([`names::window_input`]): every column, aggregate
    /// and expression the window level reads, and the partition key.
    pub input: RowsPlan,
    /// The input columns holding the partition key common to every window,
    /// in order; empty when the windows share none (one partition).
    pub partition: Vec<String>,
    /// Per partition column, its type's equality operator, schema-qualified
    /// (`OPERATOR(pg_catalog.=)`): the one PARTITION BY groups by.
    pub partition_equality: Vec<String>,
    /// Per partition column, the function its value goes through before it
    /// is hashed into a row identity (as [`crate::tree::AggregatePlan::group_hash`]).
    pub partition_hash: Vec<String>,
    /// Per partition column, its SQL type (the state table's hidden column).
    pub partition_types: Vec<String>,
    /// PostgreSQL's deparse of the window level reading placeholder
    /// `__pgt_win` (columns `__pgt_wx<i>`): the visible columns, then the
    /// partition key as `__pgt_wp1`, ... ([`names::window_partition`]).
    pub output_template: String,
    /// Names of the visible columns.
    pub visible: Vec<String>,
    /// Per visible column, the function its value goes through before it is
    /// hashed into a row identity.
    pub content_hash: Vec<String>,
    /// Per visible column, whether it holds a window function's value (or an
    /// expression over one). Those columns are left out of a stored row's
    /// identity, so a row whose window values change keeps its identity and
    /// is updated in place (empty: every column is part of the identity).
    #[serde(default)]
    pub windowed: Vec<bool>,
    /// Set when the parent keeps only a ranked prefix of each partition
    /// (`WHERE rn <= 3` over the level): the operator then computes and
    /// stores only that prefix, and recomputes a partition only when a
    /// change reaches it ([`crate::window`], "Ranked prefix").
    #[serde(default)]
    pub prefix: Option<RankedPrefix>,
}

/// A ranked prefix of every partition (see [`crate::window`]): the rows
/// whose ranking column is at most `bound`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RankedPrefix {
    /// The visible column holding the ranking function (`row_number()`,
    /// `rank()` or `dense_rank()`) the parent filters on.
    pub column: String,
    /// The largest value of `column` kept (`rn <= 3` and `rn = 3` keep 3,
    /// `rn < 3` keeps 2).
    pub bound: i64,
    /// The input columns (`__pgt_wx<i>`) the window's ORDER BY reads,
    /// stored under the same names so that the probe can rank changed rows
    /// among the stored ones.
    pub order_columns: Vec<String>,
    /// Per order column, its SQL type (the state table's hidden column).
    pub order_types: Vec<String>,
    /// Per order column, the function its value goes through before it is
    /// hashed into the row identity (order values are part of a stored
    /// row's content).
    pub order_hash: Vec<String>,
    /// PostgreSQL's deparse of the probe over placeholder `__pgt_win`
    /// (its input columns plus `__pgt_wchanged`): the partition key
    /// (`__pgt_wx1`, ...), `__pgt_wchanged`, and `rank()` (for a
    /// `dense_rank()` prefix: `dense_rank()`) over the window's partition
    /// and order as `__pgt_wrank`.
    pub probe_template: String,
}

impl WindowPlan {
    /// The hidden partition-key columns of its table (`__pgt_wp<i>`).
    pub fn partition_columns(&self) -> Vec<String> {
        (1..=self.partition.len()).map(names::window_partition).collect()
    }

    /// The input columns of a ranked prefix's order, stored (none without
    /// a prefix).
    pub fn order_columns(&self) -> &[String] {
        self.prefix.as_ref().map(|p| p.order_columns.as_slice()).unwrap_or(&[])
    }

    /// The columns its table stores, in order: the visible ones,
    /// `__pgt_row_id`, the partition key, a ranked prefix's order columns.
    pub fn stored_columns(&self) -> Vec<String> {
        let mut c = self.visible.clone();
        c.push(names::ROW_ID.to_string());
        c.extend(self.partition_columns());
        c.extend(self.order_columns().iter().cloned());
        c
    }

    /// The hidden columns of its table with their SQL types: the partition
    /// key, then a ranked prefix's order columns.
    pub fn hidden_column_types(&self) -> Vec<(String, String)> {
        let mut c: Vec<(String, String)> = self.partition_columns().into_iter().zip(self.partition_types.iter().cloned()).collect();
        if let Some(p) = &self.prefix {
            c.extend(p.order_columns.iter().cloned().zip(p.order_types.iter().cloned()));
        }
        c
    }
}

/// A recursive WITH query (see [`crate::recursive`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecursivePlan {
    /// The non-recursive term, with visible columns `__pgt_c1`, ...
    pub base: RowsPlan,
    /// The recursive term: a block whose template reads `__pgt_rec` (the
    /// recursive reference, columns `__pgt_c1`, ...) besides its inputs;
    /// its columns are the visible ones.
    pub step: Block,
    /// Names of the visible columns (`__pgt_c1`, ...).
    pub visible: Vec<String>,
    /// Per visible column, the function its value goes through before it is
    /// hashed into the row identity.
    pub content_hash: Vec<String>,
    /// UNION ALL (multiset, by counting) rather than UNION. The step then
    /// also outputs the recursive row's weight and depth (`__pgt_rw`,
    /// `__pgt_rd`), read from `__pgt_rec`'s columns `__pgt_w`, `__pgt_depth`.
    #[serde(default)]
    pub all: bool,
    /// For UNION ALL: the most rounds a recursion may take
    /// (`pg_trickle.ivm_recursive_max_depth` when the query was analysed).
    #[serde(default)]
    pub max_depth: i32,
}

impl RecursivePlan {
    /// The columns its state table stores: the visible ones, `__pgt_row_id`.
    pub fn stored_columns(&self) -> Vec<String> {
        let mut c = self.visible.clone();
        c.push(names::ROW_ID.to_string());
        c
    }

    /// Its blocks: the base's, then the step.
    pub fn blocks(&self) -> Vec<&Block> {
        let mut b: Vec<&Block> = self.base.branches.iter().map(|b| &b.block).collect();
        b.push(&self.step);
        b
    }

    /// Its blocks, to patch.
    pub fn blocks_mut(&mut self) -> Vec<&mut Block> {
        let mut b: Vec<&mut Block> = self.base.branches.iter_mut().map(|b| &mut b.block).collect();
        b.push(&mut self.step);
        b
    }
}
