//! Thin helpers over SPI so the rest of the code reads as SQL plus Rust values.
//!
//! Errors PostgreSQL raises while executing (permission denied, constraint
//! violations) propagate as PostgreSQL errors with their own SQLSTATE; only SPI's
//! own status failures become [`PgtError`]s.

use crate::error::{PgtError, PgtResult};
use pgrx::datum::DatumWithOid;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiHeapTupleData, SpiResult, SpiTupleTable};
use pgrx::PgOid;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::ptr::NonNull;
use std::rc::Rc;

/// The text of a statement run through these helpers.
///
/// Text given as `&str` or `&String` is planned at every run: right for SQL
/// built for one stream table (a delta query, DDL). [`kept`] marks a fixed
/// catalog statement that every refresh or scheduler cycle runs: it is prepared
/// once per backend and its plan kept ([`SPI_keepplan`]), so later runs skip
/// parsing and, once PostgreSQL's plan cache settles on a generic plan,
/// planning. The plan cache re-plans a kept statement by itself after DDL on
/// what it reads or a change of `search_path` (PostgreSQL docs, "Plan
/// Caching" under PREPARE).
///
/// [`SPI_keepplan`]: https://www.postgresql.org/docs/18/spi-spi-keepplan.html
#[derive(Clone, Copy, Debug)]
pub enum Sql<'a> {
    /// Planned at every run.
    Once(&'a str),
    /// Prepared once per backend and kept; the text must not vary at run time
    /// (its parameters do), and every run passes arguments of the same types.
    Kept(&'static str),
}

/// Marks `sql` as a fixed statement whose plan is kept (see [`Sql::Kept`]).
pub const fn kept(sql: &'static str) -> Sql<'static> {
    Sql::Kept(sql)
}

impl<'a> From<&'a str> for Sql<'a> {
    fn from(sql: &'a str) -> Self {
        Sql::Once(sql)
    }
}

impl<'a> From<&'a String> for Sql<'a> {
    fn from(sql: &'a String) -> Self {
        Sql::Once(sql)
    }
}

thread_local! {
    /// The kept plans of this backend, by statement text. Their number is
    /// bounded by the [`kept`] statements in the code.
    static KEPT_PLANS: RefCell<HashMap<&'static str, Rc<OwnedPreparedStatement>>> = RefCell::new(HashMap::new());
}

/// How many statement texts [`StatementSnapshot::exec_kept`] keeps plans of
/// per backend (one per captured source it trims).
const KEPT_SNAPSHOT_PLANS_MAX: usize = 1024;

thread_local! {
    /// The plans [`StatementSnapshot::exec_kept`] keeps, by statement text.
    /// They are never freed: a statement running one may be running still.
    static KEPT_SNAPSHOT_PLANS: RefCell<HashMap<String, NonNull<pg_sys::_SPI_plan>>> = RefCell::new(HashMap::new());
}

/// How many statement texts with parameters
/// [`StatementSnapshot::query_map_kept_if`] keeps generic plans of per backend
/// (a DIFFERENTIAL stream table has one or a few: per set of changed inputs
/// and order of window size); past it, the least recently used is freed.
const KEPT_GENERIC_PLANS_MAX: usize = 128;

/// Kept plans by variant and statement text, each with when it was last used
/// (the use counter's value) and when it was made, and the use counter.
type GenericPlans = (HashMap<String, (NonNull<pg_sys::_SPI_plan>, u64, std::time::Instant)>, u64);

/// How long a kept generic plan is used before it is made again. A plan is
/// also made again after DDL or ANALYZE on what it reads, but not when a
/// table only grows or shrinks, which the planner reads from its current
/// size; for change buffers the caller passes their order of size as the
/// plan's variant, and other tables move slowly.
const KEPT_GENERIC_PLAN_TTL: std::time::Duration = std::time::Duration::from_secs(60);

thread_local! {
    /// The plans [`StatementSnapshot::query_map_kept_if`] keeps.
    static KEPT_GENERIC_PLANS: RefCell<GenericPlans> = RefCell::new((HashMap::new(), 0));
}

/// The kept generic plan of `sql`, marked as just used; `None` (and the plan
/// freed) when it is older than [`KEPT_GENERIC_PLAN_TTL`].
fn kept_generic_plan(sql: &str) -> Option<NonNull<pg_sys::_SPI_plan>> {
    let (found, expired) = KEPT_GENERIC_PLANS.with(|kept| {
        let (plans, clock) = &mut *kept.borrow_mut();
        *clock += 1;
        match plans.get_mut(sql) {
            Some((plan, _, made)) if made.elapsed() > KEPT_GENERIC_PLAN_TTL => {
                let plan = *plan;
                plans.remove(sql);
                (None, Some(plan))
            }
            Some((plan, used, _)) => {
                *used = *clock;
                (Some(*plan), None)
            }
            None => (None, None),
        }
    });
    if let Some(plan) = expired {
        // SAFETY: a kept plan no statement is running (see keep_generic_plan).
        unsafe { pg_sys::SPI_freeplan(plan.as_ptr()) };
    }
    found
}

/// Keeps `plan` (saved with `SPI_keepplan`) for `sql`, freeing the least
/// recently used one when [`KEPT_GENERIC_PLANS_MAX`] are kept. No statement
/// is running a kept plan here: refreshes do not nest.
fn keep_generic_plan(sql: &str, plan: NonNull<pg_sys::_SPI_plan>) {
    let evicted = KEPT_GENERIC_PLANS.with(|kept| {
        let (plans, clock) = &mut *kept.borrow_mut();
        *clock += 1;
        let evicted = if plans.len() >= KEPT_GENERIC_PLANS_MAX {
            let oldest = plans.iter().min_by_key(|(_, (_, used, _))| *used).map(|(text, _)| text.clone());
            oldest.and_then(|text| plans.remove(&text)).map(|(plan, _, _)| plan)
        } else {
            None
        };
        plans.insert(sql.to_string(), (plan, *clock, std::time::Instant::now()));
        evicted
    });
    if let Some(plan) = evicted {
        // SAFETY: a kept plan no statement is running (see above).
        unsafe { pg_sys::SPI_freeplan(plan.as_ptr()) };
    }
}

/// A tuplestore exposed by name to the statements [`StatementSnapshot`] runs
/// (an ephemeral named relation, as PostgreSQL exposes a trigger's transition
/// tables to PL/pgSQL: `SPI_register_relation`).
#[derive(Debug, Clone)]
pub struct NamedTuplestore {
    /// The name statements refer to it by.
    pub name: CString,
    /// A relation whose row type the tuplestore's rows have (the relation the
    /// trigger fired on).
    pub relid: pg_sys::Oid,
    /// The rows. Must outlive every statement run while it is exposed.
    pub store: *mut pg_sys::Tuplestorestate,
}

thread_local! {
    /// The tuplestores exposed to statements right now ([`expose_tuplestores`]).
    static EXPOSED: RefCell<Vec<NamedTuplestore>> = const { RefCell::new(Vec::new()) };
}

/// While the returned guard lives, every statement run by
/// [`StatementSnapshot`] can read `stores` by their names. Exposures nest (an
/// IMMEDIATE stream table maintained inside another's maintenance): the
/// guard removes only its own.
pub fn expose_tuplestores(stores: Vec<NamedTuplestore>) -> ExposedTuplestores {
    let added = stores.len();
    EXPOSED.with(|e| e.borrow_mut().extend(stores));
    ExposedTuplestores { added }
}

/// See [`expose_tuplestores`].
pub struct ExposedTuplestores {
    added: usize,
}

impl Drop for ExposedTuplestores {
    fn drop(&mut self) {
        EXPOSED.with(|e| {
            let mut e = e.borrow_mut();
            let keep = e.len().saturating_sub(self.added);
            e.truncate(keep);
        });
    }
}

/// Registers the exposed tuplestores with the current SPI connection.
///
/// # Safety
/// Inside an SPI connection; the tuplestores alive.
unsafe fn register_exposed() -> PgtResult<()> {
    EXPOSED.with(|e| {
        for t in e.borrow().iter() {
            // SAFETY: allocated in the SPI connection's memory, which outlives
            // every statement run in it; the fields as SPI_register_trigger_data
            // sets them.
            unsafe {
                let enr = pg_sys::palloc0(std::mem::size_of::<pg_sys::EphemeralNamedRelationData>()) as pg_sys::EphemeralNamedRelation;
                (*enr).md.name = pg_sys::pstrdup(t.name.as_ptr());
                (*enr).md.reliddesc = t.relid;
                (*enr).md.tupdesc = std::ptr::null_mut();
                (*enr).md.enrtype = pg_sys::EphemeralNameRelationType::ENR_NAMED_TUPLESTORE;
                (*enr).md.enrtuples = pg_sys::tuplestore_tuple_count(t.store) as f64;
                (*enr).reldata = t.store as *mut std::ffi::c_void;
                let rc = pg_sys::SPI_register_relation(enr);
                if rc < 0 {
                    return Err(PgtError::internal(format!("SPI_register_relation failed with code {rc}")));
                }
            }
        }
        Ok(())
    })
}

/// The parameters `$1`, `$2`, … of a statement: each one's type and its value
/// as text (`None` for NULL), converted by the type's input function.
pub type Parameters<'a> = &'a [(pg_sys::Oid, Option<&'a str>)];

/// Runs `sql` with `args` through SPI's read-write path (see [`query_map`]).
fn run<'conn>(client: &mut SpiClient<'conn>, sql: Sql<'_>, args: &[DatumWithOid]) -> SpiResult<SpiTupleTable<'conn>> {
    match sql {
        Sql::Once(text) => client.update(text, None, args),
        Sql::Kept(text) => {
            // The borrow ends before the statement runs: it may call back into
            // code that runs kept statements of its own.
            let plan = match KEPT_PLANS.with(|plans| plans.borrow().get(text).cloned()) {
                Some(plan) => plan,
                None => {
                    let types: Vec<PgOid> = args.iter().map(|a| PgOid::from(a.oid())).collect();
                    let plan = Rc::new(client.prepare_mut(text, &types)?.keep());
                    KEPT_PLANS.with(|plans| plans.borrow_mut().insert(text, Rc::clone(&plan)));
                    plan
                }
            };
            client.update(&*plan, None, args)
        }
    }
}

/// Executes one statement (DML or DDL) and returns the number of rows it processed.
pub fn exec<'a>(sql: impl Into<Sql<'a>>, args: &[DatumWithOid]) -> PgtResult<u64> {
    let sql = sql.into();
    Spi::connect_mut(|client| {
        let table = run(client, sql, args)?;
        Ok(table.len() as u64)
    })
}

/// Runs a query and maps every row with `f`.
///
/// Like every helper here it runs through SPI's read-write path, so in READ
/// COMMITTED each statement sees a fresh snapshot: a catalog read made after
/// waiting for a lock sees what the lock holder committed. (SPI's read-only path
/// would reuse the calling statement's snapshot, and would refuse `FOR UPDATE` and
/// `INSERT ... RETURNING`.)
pub fn query_map<'a, R>(
    sql: impl Into<Sql<'a>>,
    args: &[DatumWithOid],
    mut f: impl FnMut(&SpiHeapTupleData) -> PgtResult<R>,
) -> PgtResult<Vec<R>> {
    let sql = sql.into();
    Spi::connect_mut(|client| {
        let table = run(client, sql, args)?;
        let mut out = Vec::with_capacity(table.len());
        for row in table {
            out.push(f(&row)?);
        }
        Ok(out)
    })
}

/// Runs a query expected to return at most one row and one column.
pub fn query_one<'a, T: FromDatum + IntoDatum>(sql: impl Into<Sql<'a>>, args: &[DatumWithOid]) -> PgtResult<Option<T>> {
    let sql = sql.into();
    Spi::connect_mut(|client| {
        let table = run(client, sql, args)?;
        if table.is_empty() {
            return Ok(None);
        }
        Ok(table.first().get_one::<T>()?)
    })
}

/// Reads column `ordinal` (1-based) of `row`, which must not be NULL.
pub fn col<T: FromDatum + IntoDatum>(row: &SpiHeapTupleData, ordinal: usize) -> PgtResult<T> {
    row.get::<T>(ordinal)?
        .ok_or_else(|| PgtError::internal(format!("unexpected NULL in column {ordinal} of a catalog query")))
}

/// A registered MVCC snapshot that several statements run in, so that they all see
/// the database as of one instant (PostgreSQL docs §13.2; SPI_execute_snapshot).
///
/// A refresh takes one after locking the stream table: every read of sources and
/// change buffers, and the frontier it records (`pg_current_snapshot()` evaluated in
/// this snapshot), then describe the same instant, whatever the transaction's
/// isolation level. The command ID advances between statements so later statements
/// see earlier ones' writes.
pub struct StatementSnapshot {
    snapshot: pg_sys::Snapshot,
}

impl StatementSnapshot {
    /// Takes a snapshot now (`GetTransactionSnapshot`: a fresh one in READ COMMITTED,
    /// the transaction's in REPEATABLE READ and SERIALIZABLE) and registers it.
    pub fn take() -> StatementSnapshot {
        let snapshot = unsafe { pg_sys::RegisterSnapshot(pg_sys::GetTransactionSnapshot()) };
        StatementSnapshot { snapshot }
    }

    /// Takes the latest snapshot (`GetLatestSnapshot`), whatever the isolation
    /// level: everything committed so far is visible. For pg_trickle's own
    /// bookkeeping that must see every committed consumer (buffer trimming).
    pub fn latest() -> StatementSnapshot {
        let snapshot = unsafe { pg_sys::RegisterSnapshot(pg_sys::GetLatestSnapshot()) };
        StatementSnapshot { snapshot }
    }

    /// The registered snapshot, for running a statement without SPI
    /// (`crate::refresh::swap`). Valid while `self` lives.
    pub(crate) fn raw(&self) -> pg_sys::Snapshot {
        self.snapshot
    }

    /// Executes `sql` in this snapshot; returns rows processed and, when the
    /// statement returned rows, the first column of the first row as text.
    /// With `keep`, the plan is looked up in and added to this backend's
    /// [`KEPT_SNAPSHOT_PLANS`].
    fn run(&self, sql: &str, keep: bool) -> PgtResult<(u64, Option<String>)> {
        let csql = CString::new(sql).map_err(|_| PgtError::internal("generated SQL contains a NUL byte"))?;
        Spi::connect_mut(|_client| unsafe {
            register_exposed()?;
            let kept = if keep { KEPT_SNAPSHOT_PLANS.with(|plans| plans.borrow().get(sql).copied()) } else { None };
            let plan = match kept {
                Some(plan) => RunPlan { plan: plan.as_ptr(), owned: false },
                None => {
                    let plan = prepare(&csql, &mut [], 0)?;
                    let keep = keep && KEPT_SNAPSHOT_PLANS.with(|plans| plans.borrow().len()) < KEPT_SNAPSHOT_PLANS_MAX;
                    if keep && pg_sys::SPI_keepplan(plan) == 0 {
                        KEPT_SNAPSHOT_PLANS.with(|plans| plans.borrow_mut().insert(sql.to_string(), NonNull::new_unchecked(plan)));
                        RunPlan { plan, owned: false }
                    } else {
                        RunPlan { plan, owned: true }
                    }
                }
            };
            self.execute(&plan, &mut [], &[])?;
            let processed = pg_sys::SPI_processed;
            let mut first = None;
            let tuptable = pg_sys::SPI_tuptable;
            if !tuptable.is_null() && processed > 0 {
                let value = pg_sys::SPI_getvalue(*(*tuptable).vals, (*tuptable).tupdesc, 1);
                if !value.is_null() {
                    first = Some(CStr::from_ptr(value).to_string_lossy().into_owned());
                }
            }
            Ok((processed, first))
        })
    }

    /// Runs `plan` in this snapshot with parameter values `values` / `nulls`
    /// (`' '` or `'n'` each).
    ///
    /// # Safety
    /// Inside an SPI connection; `plan` prepared with as many parameters.
    unsafe fn execute(&self, plan: &RunPlan, values: &mut [pg_sys::Datum], nulls: &[std::ffi::c_char]) -> PgtResult<()> {
        let (values, nulls) = if values.is_empty() { (std::ptr::null_mut(), std::ptr::null()) } else { (values.as_mut_ptr(), nulls.as_ptr()) };
        let rc = unsafe { pg_sys::SPI_execute_snapshot(plan.plan, values, nulls, self.snapshot, std::ptr::null_mut(), false, true, 0) };
        if rc < 0 {
            return Err(PgtError::internal(format!("SPI_execute_snapshot failed with code {rc}")));
        }
        Ok(())
    }

    /// Runs a query in this snapshot and maps every row with `f` (typed values,
    /// read as the query's column types).
    pub fn query_map<R>(&self, sql: &str, f: impl FnMut(&SnapshotRow) -> PgtResult<R>) -> PgtResult<Vec<R>> {
        let csql = CString::new(sql).map_err(|_| PgtError::internal("generated SQL contains a NUL byte"))?;
        Spi::connect_mut(|_client| unsafe {
            register_exposed()?;
            let plan = RunPlan { plan: prepare(&csql, &mut [], 0)?, owned: true };
            self.execute(&plan, &mut [], &[])?;
            map_rows(f)
        })
    }

    /// Runs a query with parameters `params` in this snapshot and maps every
    /// row with `f` — after asking `accept` whether to run it, given the
    /// planner's total cost estimate of the plan that will run (`None` when
    /// it declines). For a statement whose text repeats from one run to the
    /// next (a DIFFERENTIAL refresh's statements, which name the frontier as
    /// parameters): it is planned once per backend with a generic plan
    /// (`CURSOR_OPT_GENERIC_PLAN`), and the plan kept, re-planned by
    /// PostgreSQL's plan cache after DDL or ANALYZE on what it reads, and
    /// made again after [`KEPT_GENERIC_PLAN_TTL`]; the
    /// [`KEPT_GENERIC_PLANS_MAX`] most recently used texts are kept.
    ///
    /// # Errors
    /// PostgreSQL's errors (raised), an invalid parameter value, or `accept`'s.
    ///
    /// `class` tells apart plans of one text made for different
    /// circumstances the text does not show, and bounds their hash tables
    /// (see [`PlanClass`]).
    pub fn query_map_kept_if<R>(
        &self,
        sql: &str,
        class: PlanClass,
        params: Parameters<'_>,
        accept: impl FnOnce(f64) -> PgtResult<bool>,
        f: impl FnMut(&SnapshotRow) -> PgtResult<R>,
    ) -> PgtResult<Option<Vec<R>>> {
        let key = format!("{}:{sql}", class.variant);
        let csql = CString::new(sql).map_err(|_| PgtError::internal("generated SQL contains a NUL byte"))?;
        let texts = params
            .iter()
            .map(|(_, v)| v.map(CString::new).transpose())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| PgtError::internal("a parameter value contains a NUL byte"))?;
        Spi::connect_mut(|_client| unsafe {
            register_exposed()?;
            let plan = match kept_generic_plan(&key) {
                Some(plan) => RunPlan { plan: plan.as_ptr(), owned: false },
                None => {
                    let mut types: Vec<pg_sys::Oid> = params.iter().map(|(t, _)| *t).collect();
                    let plan = prepare(&csql, &mut types, pg_sys::CURSOR_OPT_GENERIC_PLAN as i32)?;
                    if pg_sys::SPI_keepplan(plan) == 0 {
                        keep_generic_plan(&key, NonNull::new_unchecked(plan));
                        RunPlan { plan, owned: false }
                    } else {
                        RunPlan { plan, owned: true }
                    }
                }
            };
            let mut values = Vec::with_capacity(params.len());
            let mut nulls = Vec::with_capacity(params.len());
            for ((typ, _), text) in params.iter().zip(&texts) {
                match text {
                    Some(text) => {
                        let (mut input, mut ioparam) = (pg_sys::InvalidOid, pg_sys::InvalidOid);
                        pg_sys::getTypeInputInfo(*typ, &mut input, &mut ioparam);
                        values.push(pg_sys::OidInputFunctionCall(input, text.as_ptr() as *mut std::ffi::c_char, ioparam, -1));
                        nulls.push(b' ' as std::ffi::c_char);
                    }
                    None => {
                        values.push(pg_sys::Datum::from(0usize));
                        nulls.push(b'n' as std::ffi::c_char);
                    }
                }
            }
            let cached = pg_sys::SPI_plan_get_cached_plan(plan.plan);
            let mut cost = 0.0;
            if !cached.is_null() {
                for stmt in pgrx::PgList::<pg_sys::PlannedStmt>::from_pg((*cached).stmt_list).iter_ptr() {
                    if !(*stmt).planTree.is_null() {
                        cost += (*(*stmt).planTree).total_cost;
                    }
                    if let Some(rows) = class.hash_table_rows {
                        // The generic plan that runs next: bounded before
                        // every run (idempotent), as the plan cache may have
                        // made it anew.
                        crate::plan_size::bound_hash_tables(stmt, rows);
                    }
                }
                // SPI_plan_get_cached_plan counts the reference of a kept
                // (saved) plan against the current resource owner.
                let owner = if plan.owned { std::ptr::null_mut() } else { pg_sys::CurrentResourceOwner };
                pg_sys::ReleaseCachedPlan(cached, owner);
            }
            if !accept(cost)? {
                return Ok(None);
            }
            self.execute(&plan, &mut values, &nulls)?;
            map_rows(f).map(Some)
        })
    }

    /// Executes a statement in this snapshot and returns the rows it
    /// processed; for a statement whose text is fixed
    /// for one object and runs at every refresh (a change buffer's trim): its
    /// plan is kept by this backend and re-planned by PostgreSQL's plan cache
    /// only after DDL on what it reads (see [`Sql::Kept`]). At most
    /// [`KEPT_SNAPSHOT_PLANS_MAX`] texts are kept; further ones are planned at
    /// every run.
    pub fn exec_kept(&self, sql: &str) -> PgtResult<u64> {
        Ok(self.run(sql, true)?.0)
    }

    /// Runs a one-value query in this snapshot and returns the value as text.
    pub fn query_text(&self, sql: &str) -> PgtResult<Option<String>> {
        Ok(self.run(sql, false)?.1)
    }
}

/// Which kept plan of a statement's text runs, and how its hash tables are
/// sized ([`StatementSnapshot::query_map_kept_if`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct PlanClass {
    /// Tells apart plans of one text made for different circumstances the
    /// text does not show (the order of size of the change buffers read,
    /// which the planner reads at planning): each (text, variant) has a plan
    /// of its own.
    pub variant: u32,
    /// When set, the hash tables the plan sizes from its estimates start with
    /// at most this many entries and grow as rows come
    /// ([`crate::plan_size::bound_hash_tables`]): for a statement whose real
    /// sizes follow a known number of changes, where the estimates do not.
    pub hash_table_rows: Option<i64>,
}

/// An SPI plan for one statement run: freed when dropped, unless kept — or
/// dropped by an error unwinding, when the SPI connection's memory goes with
/// it at `SPI_finish`.
struct RunPlan {
    plan: pg_sys::SPIPlanPtr,
    owned: bool,
}

impl Drop for RunPlan {
    fn drop(&mut self) {
        if self.owned && !std::thread::panicking() {
            // SAFETY: an unkept plan of this SPI connection, used by no one else.
            unsafe { pg_sys::SPI_freeplan(self.plan) };
        }
    }
}

/// Prepares `csql` with parameter types `types` and cursor options `options`.
///
/// # Safety
/// Inside an SPI connection.
unsafe fn prepare(csql: &CString, types: &mut [pg_sys::Oid], options: i32) -> PgtResult<pg_sys::SPIPlanPtr> {
    let argtypes = if types.is_empty() { std::ptr::null_mut() } else { types.as_mut_ptr() };
    let plan = unsafe { pg_sys::SPI_prepare_cursor(csql.as_ptr(), types.len() as i32, argtypes, options) };
    if plan.is_null() {
        let code = unsafe { pg_sys::SPI_result };
        return Err(PgtError::internal(format!("SPI_prepare failed with code {code}")));
    }
    Ok(plan)
}

/// The rows of the statement SPI just ran, each mapped with `f`.
///
/// # Safety
/// Inside the SPI connection that ran it.
unsafe fn map_rows<R>(mut f: impl FnMut(&SnapshotRow) -> PgtResult<R>) -> PgtResult<Vec<R>> {
    let mut out = Vec::new();
    let tuptable = unsafe { pg_sys::SPI_tuptable };
    if !tuptable.is_null() {
        for i in 0..unsafe { pg_sys::SPI_processed } as usize {
            let row = unsafe { SnapshotRow { tuple: *(*tuptable).vals.add(i), tupdesc: (*tuptable).tupdesc } };
            out.push(f(&row)?);
        }
    }
    Ok(out)
}

/// A row of [`StatementSnapshot::query_map`].
pub struct SnapshotRow {
    tuple: pg_sys::HeapTuple,
    tupdesc: pg_sys::TupleDesc,
}

impl SnapshotRow {
    /// Column `ordinal` (1-based) as `T`; `None` for NULL.
    pub fn get<T: FromDatum>(&self, ordinal: usize) -> PgtResult<Option<T>> {
        unsafe {
            let natts = (*self.tupdesc).natts as usize;
            if ordinal == 0 || ordinal > natts {
                return Err(PgtError::internal(format!("column {ordinal} of a {natts}-column result")));
            }
            let mut is_null = false;
            let datum = pg_sys::SPI_getbinval(self.tuple, self.tupdesc, ordinal as i32, &mut is_null);
            let typoid = pg_sys::SPI_gettypeid(self.tupdesc, ordinal as i32);
            Ok(T::from_polymorphic_datum(datum, is_null, typoid))
        }
    }

    /// Column `ordinal` (1-based), which must not be NULL.
    pub fn col<T: FromDatum>(&self, ordinal: usize) -> PgtResult<T> {
        self.get(ordinal)?.ok_or_else(|| PgtError::internal(format!("unexpected NULL in column {ordinal}")))
    }
}

impl Drop for StatementSnapshot {
    fn drop(&mut self) {
        // On error the resource owner releases the registration during abort.
        if !std::thread::panicking() {
            unsafe { pg_sys::UnregisterSnapshot(self.snapshot) };
        }
    }
}

/// Runs `f` in a subtransaction of the current transaction (PostgreSQL's
/// `BeginInternalSubTransaction`, as PL/pgSQL's `EXCEPTION` blocks do):
/// released when `f` returns, rolled back — with everything `f` wrote and every
/// setting it made with `GUC_ACTION_SAVE` — when `f` raises a PostgreSQL error
/// or panics. The error is returned as caught, for the caller to handle or
/// `rethrow()`.
pub fn in_subtransaction<T>(f: impl FnOnce() -> T + std::panic::UnwindSafe) -> Result<T, Box<pg_sys::panic::CaughtError>> {
    // SAFETY: the subtransaction is begun and ended here, on every path, with
    // the caller's memory context and resource owner restored after it.
    unsafe {
        let context = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(context);
        PgTryBuilder::new(move || {
            let value = f();
            pg_sys::ReleaseCurrentSubTransaction();
            pg_sys::MemoryContextSwitchTo(context);
            pg_sys::CurrentResourceOwner = owner;
            Ok(value)
        })
        .catch_others(move |caught| {
            pg_sys::MemoryContextSwitchTo(context);
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
            pg_sys::MemoryContextSwitchTo(context);
            pg_sys::CurrentResourceOwner = owner;
            Err(Box::new(caught))
        })
        .execute()
    }
}
