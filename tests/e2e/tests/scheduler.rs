//! The background scheduler: stream tables refresh on their own, upstream first;
//! a failing stream table is suspended while the others go on; the worker comes
//! back after being killed; DROP DATABASE is not blocked by it.
//!
//! Waits poll the catalog (every 100 ms, up to a generous timeout) instead of
//! sleeping for a fixed time.

use pg_trickle_e2e::*;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(60);

/// Polls boolean query `condition` until it is true; panics after `TIMEOUT`.
fn wait_until(client: &mut pgt_testkit::postgres::Client, condition: &str, what: &str) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let holds: bool = client.query_one(condition, &[]).map(|r| r.get::<_, Option<bool>>(0).unwrap_or(false)).unwrap_or(false);
        if holds {
            return;
        }
        assert!(Instant::now() < deadline, "timed out after {TIMEOUT:?} waiting for {what}: {condition}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The query comparing columns `cols` of a stream table with `query` (true when
/// equal as multisets).
fn equal(st: &str, cols: &str, query: &str) -> String {
    format!(
        "SELECT NOT EXISTS ((SELECT {cols} FROM {st} EXCEPT ALL {query}) UNION ALL ({query} EXCEPT ALL SELECT {cols} FROM {st}))"
    )
}

#[test]
fn schedules_of_each_kind_refresh_without_a_call_upstream_first() {
    let mut db = TestDb::new("sched_kinds");
    db.exec(
        "CREATE TABLE t (id int PRIMARY KEY, v int);
         INSERT INTO t SELECT g, g FROM generate_series(1, 10) g;
         -- A duration, a 6-field cron (every second), and a calculated schedule
         -- that inherits the 1 s of the stream table reading it (the test cluster's
         -- default for calculated schedules is an hour).
         SELECT pgtrickle.create_stream_table('doubled', 'SELECT id, v * 2 AS v2 FROM t', schedule => '1s');
         SELECT pgtrickle.create_stream_table('by_cron', 'SELECT id, v FROM t WHERE v % 2 = 0', schedule => '* * * * * *');
         SELECT pgtrickle.create_stream_table('calc', 'SELECT id, v FROM t WHERE v > 3');
         SELECT pgtrickle.create_stream_table('calc_reader', 'SELECT count(*) AS n FROM calc', schedule => '1s');
         -- A stream table over a stream table: refreshed after it in the same cycle.
         SELECT pgtrickle.create_stream_table('total', 'SELECT sum(v2) AS s, count(*) AS n FROM doubled', schedule => '1s');",
    );
    wait_until(&mut db.client, "SELECT worker_pid IS NOT NULL FROM pgtrickle.scheduler_status()", "the scheduler worker");
    db.exec("INSERT INTO t VALUES (11, 11), (12, 12); UPDATE t SET v = v + 1 WHERE id <= 3; DELETE FROM t WHERE id = 10");
    let checks = [
        ("doubled", "id, v2", "SELECT id, v * 2 AS v2 FROM t"),
        ("by_cron", "id, v", "SELECT id, v FROM t WHERE v % 2 = 0"),
        ("calc", "id, v", "SELECT id, v FROM t WHERE v > 3"),
        ("calc_reader", "n", "SELECT count(*) AS n FROM t WHERE v > 3"),
        ("total", "s, n", "SELECT sum(v * 2) AS s, count(*) AS n FROM t"),
    ];
    for (st, cols, query) in checks {
        wait_until(&mut db.client, &equal(st, cols, query), st);
    }
    for (st, _, query) in checks {
        let q = if st == "calc_reader" { "SELECT count(*) AS n FROM calc".to_string() } else { query.to_string() };
        let q = if st == "total" { "SELECT sum(v2) AS s, count(*) AS n FROM doubled".to_string() } else { q };
        assert_st_matches_query(&mut db.client, st, &q);
        let scheduled: i64 = db.scalar(
            "SELECT count(*) FROM pgtrickle.pgt_refresh_history h JOIN pgtrickle.pgt_stream_tables s USING (pgt_id) \
             WHERE s.pgt_relid = $1::text::regclass AND h.initiated_by = 'SCHEDULER' AND h.status = 'SUCCESS'",
            &[&st],
        );
        assert!(scheduled >= 1, "{st} was not refreshed by the scheduler");
    }
    // The monitoring view counts them.
    let (scheduled, manual): (i64, i64) = {
        let row = db
            .client
            .query_one(
                "SELECT scheduled_refreshes, manual_refreshes FROM pgtrickle.pg_stat_stream_tables WHERE stream_table = 'doubled'::regclass",
                &[],
            )
            .expect("pg_stat_stream_tables");
        (row.get(0), row.get(1))
    };
    assert!(scheduled >= 1 && manual == 0, "scheduled {scheduled}, manual {manual}");
    // Nothing to do: a cycle writes nothing (no new history row) while nothing changes.
    let before: i64 = db.scalar("SELECT count(*) FROM pgtrickle.pgt_refresh_history", &[]);
    std::thread::sleep(Duration::from_millis(2500));
    let after: i64 = db.scalar("SELECT count(*) FROM pgtrickle.pgt_refresh_history", &[]);
    assert_eq!(before, after, "refreshes without changes must not write");
}

#[test]
fn a_zero_schedule_refreshes_when_changes_commit() {
    let mut db = TestDb::new("sched_zero");
    db.exec(
        "CREATE TABLE t (id int PRIMARY KEY, v int);
         SET pg_trickle.min_schedule_seconds = 0;
         SELECT pgtrickle.create_stream_table('eager', 'SELECT v, count(*) AS n FROM t GROUP BY v', schedule => '0s');",
    );
    wait_until(&mut db.client, "SELECT worker_pid IS NOT NULL FROM pgtrickle.scheduler_status()", "the scheduler worker");
    for round in 0..5 {
        db.exec(&format!("INSERT INTO t SELECT g + {round} * 100, g % 3 FROM generate_series(1, 10) g; DELETE FROM t WHERE id % 7 = {round}"));
        wait_until(&mut db.client, &equal("eager", "v, n", "SELECT v, count(*) AS n FROM t GROUP BY v"), "eager to catch up");
    }
    // Nothing changing: a '0s' FULL stream table is checked once per
    // pg_trickle.scheduler_interval_ms, and a check that writes nothing leaves
    // no history row.
    db.exec("SELECT pgtrickle.create_stream_table('eager_full', 'SELECT v FROM t ORDER BY v LIMIT 3', schedule => '0s', refresh_mode => 'FULL')");
    std::thread::sleep(Duration::from_millis(1500));
    let before: i64 = db.scalar("SELECT count(*) FROM pgtrickle.pgt_refresh_history", &[]);
    std::thread::sleep(Duration::from_millis(2500));
    let after: i64 = db.scalar("SELECT count(*) FROM pgtrickle.pgt_refresh_history", &[]);
    assert_eq!(before, after, "idle '0s' stream tables must not write");
    // Without '0s' allowed, the floor applies.
    db.exec("RESET pg_trickle.min_schedule_seconds");
    db.expect_error("SELECT pgtrickle.alter_stream_table('eager', schedule => '0s')", "22023");
    assert_st_matches_query(&mut db.client, "eager", "SELECT v, count(*) AS n FROM t GROUP BY v");
    assert_st_matches_query(&mut db.client, "eager_full", "SELECT v FROM t ORDER BY v LIMIT 3");
}

#[test]
fn a_failing_stream_table_is_suspended_while_others_keep_refreshing() {
    let mut db = TestDb::new("sched_failure");
    db.exec(
        "CREATE TABLE t (id int PRIMARY KEY, v int);
         INSERT INTO t VALUES (1, 1), (2, 2);
         SELECT pgtrickle.create_stream_table('fragile', 'SELECT id, 10 / v AS q FROM t', schedule => '1s', refresh_mode => 'FULL');
         SELECT pgtrickle.create_stream_table('sturdy', 'SELECT id, v FROM t', schedule => '1s');",
    );
    db.exec("UPDATE t SET v = 0 WHERE id = 1");
    wait_until(
        &mut db.client,
        "SELECT status = 'SUSPENDED' FROM pgtrickle.pgt_stream_tables WHERE pgt_relid = 'fragile'::regclass",
        "fragile to be suspended",
    );
    let (failures, errors, last_error): (i64, i32, Option<String>) = {
        let row = db
            .client
            .query_one(
                "SELECT failed_refreshes, consecutive_errors, last_error FROM pgtrickle.pg_stat_stream_tables \
                 WHERE stream_table = 'fragile'::regclass",
                &[],
            )
            .expect("pg_stat_stream_tables");
        (row.get(0), row.get(1), row.get(2))
    };
    assert_eq!(errors, 3, "suspended after pg_trickle.max_consecutive_errors (3) failures");
    assert_eq!(failures, 3);
    assert!(last_error.as_deref().is_some_and(|e| e.contains("division by zero")), "{last_error:?}");
    let by_scheduler: i64 = db.scalar(
        "SELECT count(*) FROM pgtrickle.pgt_refresh_history WHERE status = 'FAILED' AND initiated_by = 'SCHEDULER' AND end_time IS NOT NULL",
        &[],
    );
    assert_eq!(by_scheduler, 3);
    // The failed refreshes left the previous contents in place.
    assert_st_matches_query(&mut db.client, "fragile", "SELECT id, 10 / v AS q FROM (VALUES (1, 1), (2, 2)) t(id, v)");
    // The other stream table kept refreshing.
    db.exec("INSERT INTO t VALUES (3, 3)");
    wait_until(&mut db.client, &equal("sturdy", "id, v", "SELECT id, v FROM t"), "sturdy to catch up");
    // Suspended: no more attempts.
    std::thread::sleep(Duration::from_millis(2500));
    let attempts: i64 = db.scalar("SELECT count(*) FROM pgtrickle.pgt_refresh_history WHERE status = 'FAILED'", &[]);
    assert_eq!(attempts, 3);
    // Fixed and resumed: refreshed again, the error count starts afresh.
    db.exec("UPDATE t SET v = 5 WHERE id = 1; SELECT pgtrickle.alter_stream_table('fragile', status => 'ACTIVE')");
    wait_until(&mut db.client, &equal("fragile", "id, q", "SELECT id, 10 / v AS q FROM t"), "fragile to refresh after resuming");
    let errors: i32 = db.scalar("SELECT consecutive_errors FROM pgtrickle.pgt_stream_tables WHERE pgt_relid = 'fragile'::regclass", &[]);
    assert_eq!(errors, 0);
}

#[test]
fn the_worker_comes_back_after_being_killed() {
    let mut db = TestDb::new("sched_restart");
    db.exec(
        "CREATE TABLE t (id int PRIMARY KEY, v int);
         SELECT pgtrickle.create_stream_table('mirror', 'SELECT id, v FROM t', schedule => '1s');",
    );
    wait_until(&mut db.client, "SELECT worker_pid IS NOT NULL FROM pgtrickle.scheduler_status()", "the scheduler worker");
    let pid: i32 = db.scalar("SELECT worker_pid FROM pgtrickle.scheduler_status()", &[]);
    let backend_type: String = db.scalar("SELECT backend_type FROM pg_stat_activity WHERE pid = $1", &[&pid]);
    assert_eq!(backend_type, "pg_trickle scheduler");
    db.exec(&format!("SELECT pg_terminate_backend({pid})"));
    wait_until(
        &mut db.client,
        &format!("SELECT worker_pid IS NOT NULL AND worker_pid <> {pid} FROM pgtrickle.scheduler_status()"),
        "a new scheduler worker",
    );
    db.exec("INSERT INTO t SELECT g, g FROM generate_series(1, 20) g");
    wait_until(&mut db.client, &equal("mirror", "id, v", "SELECT id, v FROM t"), "mirror after the restart");
}

#[test]
fn drop_database_is_not_blocked_by_the_scheduler() {
    let db = TestDb::new("sched_drop_host");
    let name = format!("{}_victim", db.name);
    let mut admin = db.cluster.connect("postgres").expect("connect to postgres");
    admin.batch_execute(&format!("CREATE DATABASE \"{name}\"")).expect("create database");
    {
        let mut victim = db.cluster.connect(&name).expect("connect");
        victim
            .batch_execute(
                "CREATE EXTENSION pg_trickle; CREATE TABLE t (id int PRIMARY KEY);
                 SELECT pgtrickle.create_stream_table('s', 'SELECT id FROM t', schedule => '1s');",
            )
            .expect("set up");
        wait_until(&mut victim, "SELECT worker_pid IS NOT NULL FROM pgtrickle.scheduler_status()", "the scheduler worker");
    }
    // Without FORCE: PostgreSQL refuses while other sessions are connected.
    admin.batch_execute(&format!("DROP DATABASE \"{name}\"")).expect("DROP DATABASE while its scheduler runs");
}

#[test]
fn scheduled_refreshes_run_as_the_owner_never_as_the_worker() {
    let mut db = TestDb::new("sched_owner");
    let alice = db.create_role("alice", "NOSUPERUSER");
    db.exec(&format!("GRANT CREATE ON SCHEMA public TO \"{alice}\""));
    let mut a = db.connect_as(&alice);
    // The function records who runs it and tries to make its caller superuser:
    // run with the worker's rights, it would succeed.
    a.batch_execute(&format!(
        "CREATE TABLE src (id int PRIMARY KEY);
         CREATE TABLE seen (who text, escalated boolean);
         CREATE FUNCTION who_runs_me() RETURNS text LANGUAGE plpgsql AS $$
         DECLARE ok boolean := true;
         BEGIN
           BEGIN
             EXECUTE 'ALTER ROLE \"{alice}\" SUPERUSER';
           EXCEPTION WHEN OTHERS THEN ok := false;
           END;
           INSERT INTO public.seen VALUES (current_user, ok);
           RETURN current_user;
         END $$;
         SELECT pgtrickle.create_stream_table('probe', 'SELECT id, public.who_runs_me() AS who FROM src', schedule => '1s');"
    ))
    .unwrap();
    a.batch_execute("TRUNCATE seen; INSERT INTO src VALUES (1), (2)").unwrap();
    wait_until(
        &mut db.client,
        "SELECT EXISTS (SELECT 1 FROM pgtrickle.pgt_refresh_history WHERE initiated_by = 'SCHEDULER' AND status = 'SUCCESS')",
        "a scheduled refresh of probe",
    );
    let rows = db.client.query("SELECT DISTINCT who, escalated FROM seen", &[]).unwrap();
    let seen: Vec<(String, bool)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(seen, vec![(alice.clone(), false)], "the query ran as {seen:?}");
    let superuser: bool = db.scalar("SELECT rolsuper FROM pg_roles WHERE rolname = $1", &[&alice]);
    assert!(!superuser, "the function escalated its owner");
    assert_st_matches_query(&mut db.client, "probe", &format!("SELECT id, '{alice}'::text AS who FROM src"));
}

#[test]
fn monitoring_functions_report_what_happened() {
    let mut db = TestDb::new("sched_monitoring");
    db.exec(
        "CREATE TABLE t (id int PRIMARY KEY, v int);
         INSERT INTO t VALUES (1, 1), (2, 2);
         SELECT pgtrickle.create_stream_table('base', 'SELECT id, v FROM t');
         SELECT pgtrickle.create_stream_table('upper_st', 'SELECT count(*) AS n FROM base');
         INSERT INTO t VALUES (3, 3);
         SET pg_trickle.differential_max_change_ratio = 1000;
         SELECT pgtrickle.refresh_stream_table('base');",
    );
    // refresh_history: newest first, with who started it.
    let rows = db.client.query("SELECT action, status, initiated_by FROM pgtrickle.refresh_history('base')", &[]).unwrap();
    let history: Vec<(String, String, String)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    assert_eq!(
        history,
        vec![
            ("DIFFERENTIAL".to_string(), "SUCCESS".to_string(), "MANUAL".to_string()),
            ("FULL".to_string(), "SUCCESS".to_string(), "INITIAL".to_string())
        ]
    );
    db.expect_error("SELECT * FROM pgtrickle.refresh_history('t')", "42809");
    // dependency_tree: upper_st reads base, which reads t.
    let paths: Vec<String> = db.column("SELECT path FROM pgtrickle.dependency_tree() WHERE stream_table = 'upper_st'::regclass ORDER BY depth", &[]);
    assert_eq!(paths, vec!["public.upper_st <- public.base".to_string(), "public.upper_st <- public.base <- public.t".to_string()]);
    // change_buffer_stats: t's buffer is trimmed; base's holds what upper_st has not applied yet.
    let pending: Vec<(String, i64)> = db
        .client
        .query("SELECT source::text, pending_images FROM pgtrickle.change_buffer_stats()", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(pending, vec![("base".to_string(), 1), ("t".to_string(), 0)]);
    // quick_health and stream_table_status.
    wait_until(&mut db.client, "SELECT worker_pid IS NOT NULL FROM pgtrickle.scheduler_status()", "the scheduler worker");
    let (total, status, running): (i64, String, bool) = {
        let r = db.client.query_one("SELECT total, status, scheduler_running FROM pgtrickle.quick_health", &[]).unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!((total, status.as_str(), running), (2, "OK", true));
    let n: i64 = db.scalar("SELECT count(*) FROM pgtrickle.stream_table_status()", &[]);
    assert_eq!(n, 2);
    db.exec("SELECT pgtrickle.alter_stream_table('base', status => 'SUSPENDED')");
    let status: String = db.scalar("SELECT status FROM pgtrickle.quick_health", &[]);
    assert_eq!(status, "ERROR");
    db.exec("SELECT pgtrickle.refresh_stream_table('upper_st')");
    assert_st_matches_query(&mut db.client, "base", "SELECT id, v FROM t");
    assert_st_matches_query(&mut db.client, "upper_st", "SELECT count(*) AS n FROM t");
}

#[test]
fn manual_and_scheduled_refreshes_of_one_stream_table_never_apply_a_change_twice() {
    let mut db = TestDb::new("sched_manual");
    db.exec(
        "CREATE TABLE t (id int PRIMARY KEY, g int, v int);
         INSERT INTO t SELECT x, x % 5, x FROM generate_series(1, 200) x;
         SET pg_trickle.min_schedule_seconds = 0;
         SELECT pgtrickle.create_stream_table('sums', 'SELECT g, sum(v) AS s, count(*) AS n FROM t GROUP BY g', schedule => '0s');",
    );
    wait_until(&mut db.client, "SELECT worker_pid IS NOT NULL FROM pgtrickle.scheduler_status()", "the scheduler worker");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let manual = {
        let mut c = db.connect();
        let stop = stop.clone();
        std::thread::spawn(move || {
            c.batch_execute("SET pg_trickle.differential_max_change_ratio = 1000").unwrap();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                c.batch_execute("SELECT pgtrickle.refresh_stream_table('sums')").unwrap();
                n += 1;
            }
            n
        })
    };
    let mut writer = db.connect();
    for round in 0..60 {
        writer
            .batch_execute(&format!(
                "UPDATE t SET v = v + 1, g = (g + {round}) % 5 WHERE id % 9 = {m}; \
                 INSERT INTO t VALUES ({id}, {round} % 5, {round}); DELETE FROM t WHERE id = {del}",
                m = round % 9,
                id = 1000 + round,
                del = 1 + round * 3
            ))
            .unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let manual_refreshes = manual.join().unwrap();
    assert!(manual_refreshes > 0);
    wait_until(&mut db.client, &equal("sums", "g, s, n", "SELECT g, sum(v) AS s, count(*) AS n FROM t GROUP BY g"), "sums to settle");
    assert_st_matches_query(&mut db.client, "sums", "SELECT g, sum(v) AS s, count(*) AS n FROM t GROUP BY g");
    let by_kind: Vec<(String, i64)> = db
        .client
        .query("SELECT initiated_by, count(*) FROM pgtrickle.pgt_refresh_history GROUP BY 1 ORDER BY 1", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(by_kind.iter().any(|(k, n)| k == "SCHEDULER" && *n > 0), "{by_kind:?}");
    assert!(by_kind.iter().any(|(k, n)| k == "MANUAL" && *n > 0), "{by_kind:?}");
}

#[test]
fn a_stream_table_running_behind_backs_off() {
    let mut db = TestDb::new("sched_backoff");
    // Each refresh takes 2.5 s against a 1 s schedule (and changes the row, so
    // that each is recorded). Back-to-back refreshes
    // would start every 2.5 s; backed off (factor 4 once a refresh outlasts two
    // intervals), they start 4 s apart.
    db.exec(
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);
         CREATE FUNCTION slow() RETURNS int LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(2.5); RETURN 1; END $$;
         SELECT pgtrickle.create_stream_table('sluggish', 'SELECT id, clock_timestamp() AS at FROM t WHERE public.slow() = 1', schedule => '1s');",
    );
    let scheduled = "SELECT count(*) >= 4 FROM pgtrickle.pgt_refresh_history WHERE initiated_by = 'SCHEDULER'";
    wait_until(&mut db.client, scheduled, "four scheduled refreshes");
    let gaps: Vec<f64> = db
        .client
        .query(
            "SELECT extract(epoch FROM start_time - lag(start_time) OVER (ORDER BY start_time))::float8 \
             FROM pgtrickle.pgt_refresh_history WHERE initiated_by = 'SCHEDULER' ORDER BY start_time",
            &[],
        )
        .unwrap()
        .iter()
        .filter_map(|r| r.get::<_, Option<f64>>(0))
        .collect();
    assert!(gaps.iter().any(|g| *g >= 3.5), "refreshes were not spaced out: gaps {gaps:?} s");
}

#[test]
fn a_busy_stream_table_is_skipped_not_failed_and_others_go_on() {
    let mut db = TestDb::new("sched_busy");
    db.exec(
        "CREATE TABLE t (id int PRIMARY KEY, v int);
         SELECT pgtrickle.create_stream_table('held', 'SELECT id, v FROM t', schedule => '1s');
         SELECT pgtrickle.create_stream_table('free', 'SELECT id, v * 2 AS v2 FROM t', schedule => '1s');",
    );
    // Another session refreshes 'held' and leaves its transaction open.
    let mut holder = db.connect();
    holder.batch_execute("BEGIN; SELECT pgtrickle.refresh_stream_table('held')").unwrap();
    db.exec("INSERT INTO t SELECT g, g FROM generate_series(1, 10) g");
    wait_until(&mut db.client, &equal("free", "id, v2", "SELECT id, v * 2 AS v2 FROM t"), "free to refresh while held is locked");
    std::thread::sleep(Duration::from_millis(1500));
    let (errors, failed): (i32, i64) = {
        let r = db
            .client
            .query_one("SELECT consecutive_errors, failed_refreshes FROM pgtrickle.pg_stat_stream_tables WHERE stream_table = 'held'::regclass", &[])
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((errors, failed), (0, 0), "a locked stream table is not a failing one");
    holder.batch_execute("COMMIT").unwrap();
    wait_until(&mut db.client, &equal("held", "id, v", "SELECT id, v FROM t"), "held once released");
}

#[test]
fn statements_on_databases_by_others_leave_the_scheduler_alone() {
    let mut db = TestDb::new("sched_hook_roles");
    db.exec(
        "CREATE TABLE t (id int PRIMARY KEY);
         SELECT pgtrickle.create_stream_table('s', 'SELECT id FROM t', schedule => '1s');",
    );
    wait_until(&mut db.client, "SELECT worker_pid IS NOT NULL FROM pgtrickle.scheduler_status()", "the scheduler worker");
    let pid: i32 = db.scalar("SELECT worker_pid FROM pgtrickle.scheduler_status()", &[]);
    // A role that does not own the database: DROP DATABASE fails, and must not
    // have stopped the scheduler on the way.
    let mallory = db.create_role("mallory", "NOSUPERUSER CREATEDB");
    let mut m = db.cluster.connect_as("postgres", &mallory).expect("connect as mallory");
    let err = m.batch_execute(&format!("DROP DATABASE \"{}\"", db.name)).expect_err("not the owner");
    assert_eq!(sqlstate(&err).as_deref(), Some("42501"));
    let now: Option<i32> = db.scalar("SELECT worker_pid FROM pgtrickle.scheduler_status()", &[]);
    assert_eq!(now, Some(pid), "the scheduler kept running");
    // A cancel while the worker is idle does not stop it either.
    db.exec(&format!("SELECT pg_cancel_backend({pid})"));
    std::thread::sleep(Duration::from_millis(500));
    let after_cancel: Option<i32> = db.scalar("SELECT worker_pid FROM pgtrickle.scheduler_status()", &[]);
    assert_eq!(after_cancel, Some(pid));
    // TEMPLATE DEFAULT (an option without an argument) still works.
    let copy = format!("{}_copy", db.name);
    m.batch_execute(&format!("CREATE DATABASE \"{copy}\" TEMPLATE DEFAULT")).expect("TEMPLATE DEFAULT");
    m.batch_execute(&format!("DROP DATABASE \"{copy}\"")).expect("drop the copy");
}

#[test]
fn an_atomic_diamond_is_never_seen_half_refreshed() {
    let mut db = TestDb::new("sched_diamond");
    // Every transaction keeps sum(v) = 10 * count(*). b and c read t; d reads b
    // and c: a diamond. Refreshed as one unit, b and c always come from the same
    // snapshot of t, and so does d.
    db.exec(
        "CREATE TABLE t (id serial PRIMARY KEY, v int NOT NULL);
         INSERT INTO t (v) SELECT 10 FROM generate_series(1, 20);
         SET pg_trickle.min_schedule_seconds = 0;
         SELECT pgtrickle.create_stream_table('b', 'SELECT sum(v) AS s FROM t', schedule => '0s');
         SELECT pgtrickle.create_stream_table('c', 'SELECT count(*) AS n FROM t', schedule => '0s');
         SELECT pgtrickle.create_stream_table('d', 'SELECT b.s, c.n FROM b CROSS JOIN c', schedule => '0s');",
    );
    let members: Vec<(String, bool)> = db
        .client
        .query("SELECT stream_table::regclass::text, is_convergence FROM pgtrickle.diamond_groups() ORDER BY 1", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(members, vec![("b".to_string(), false), ("c".to_string(), false), ("d".to_string(), true)]);
    wait_until(&mut db.client, "SELECT worker_pid IS NOT NULL FROM pgtrickle.scheduler_status()", "the scheduler worker");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let mut w = db.connect();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let sql = if i % 3 == 2 { "DELETE FROM t WHERE id = (SELECT min(id) FROM t)" } else { "INSERT INTO t (v) VALUES (10)" };
                w.batch_execute(sql).unwrap();
                i += 1;
                std::thread::sleep(Duration::from_millis(3));
            }
        })
    };
    let mut checks = 0;
    let mut torn = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(4) {
        let row = db
            .client
            .query_one("SELECT (SELECT s FROM b), (SELECT n FROM c), (SELECT s FROM d), (SELECT n FROM d)", &[])
            .unwrap();
        let (bs, cn, ds, dn): (Option<i64>, i64, Option<i64>, i64) = (row.get(0), row.get(1), row.get(2), row.get(3));
        if bs != Some(cn * 10) || ds != Some(dn * 10) {
            torn.push((bs, cn, ds, dn));
        }
        checks += 1;
        std::thread::sleep(Duration::from_millis(2));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.join().unwrap();
    assert!(torn.is_empty(), "{} of {checks} reads saw b and c (or d) from different states: {:?}", torn.len(), &torn[..torn.len().min(5)]);
    let scheduled: i64 = db.scalar("SELECT count(*) FROM pgtrickle.pgt_refresh_history WHERE initiated_by = 'SCHEDULER'", &[]);
    assert!(scheduled > 10, "the diamond was refreshed {scheduled} times");
    // t went back and forth between equal sums and counts, and a refresh that
    // took its snapshot before the writer's last commit may still be running:
    // a state t never had before marks the end (all three reach it together).
    let final_rows: i64 = db.scalar("SELECT count(*) + 10000 FROM t", &[]);
    db.exec("INSERT INTO t (v) SELECT 10 FROM generate_series(1, 10000)");
    wait_until(
        &mut db.client,
        &format!("SELECT (SELECT n FROM c) = {final_rows} AND (SELECT n FROM d) = {final_rows} AND (SELECT s FROM b) = {final_rows} * 10"),
        "the diamond to reach t's final state",
    );
    assert_st_matches_query(&mut db.client, "b", "SELECT sum(v) AS s FROM t");
    assert_st_matches_query(&mut db.client, "c", "SELECT count(*) AS n FROM t");
    assert_st_matches_query(&mut db.client, "d", "SELECT b.s, c.n FROM b CROSS JOIN c");
}

/// An idle scheduler does not check DIFFERENTIAL stream tables nothing changed
/// for: due checks are skipped while no transaction that captured a change has
/// committed. A change, or DDL that marks one for reinitialization, is still
/// picked up at once; FULL stream tables are checked as scheduled.
#[test]
fn an_idle_scheduler_skips_checks_of_unchanged_differential_stream_tables() {
    let mut db = TestDb::new("sched_idle");
    db.exec("CREATE TABLE t (id int PRIMARY KEY, g int, v int); INSERT INTO t SELECT x, x % 5, x FROM generate_series(1, 50) x;");
    let queries: Vec<(String, String)> = (0..10)
        .map(|i| (format!("d{i}"), format!("SELECT g, sum(v) AS s FROM t WHERE v % 10 <> {i} GROUP BY g")))
        .collect();
    for (name, q) in &queries {
        db.exec(&format!("SELECT pgtrickle.create_stream_table('{name}', '{q}', schedule => '1s', refresh_mode => 'DIFFERENTIAL')"));
    }
    db.exec("SELECT pgtrickle.create_stream_table('f', 'SELECT g, max(v) AS hi FROM t GROUP BY g', schedule => '1s', refresh_mode => 'FULL')");
    wait_until(&mut db.client, "SELECT worker_pid IS NOT NULL FROM pgtrickle.scheduler_status()", "the scheduler worker");
    // Each stream table gets its first real check one interval after first sight.
    wait_until(&mut db.client, "SELECT checks >= 11 FROM pgtrickle.scheduler_status()", "first checks");
    let counts = |db: &mut TestDb| -> (i64, i64) {
        let row = db.client.query_one("SELECT checks, skipped_checks FROM pgtrickle.scheduler_status()", &[]).unwrap();
        (row.get(0), row.get(1))
    };
    let (checks_before, skipped_before) = counts(&mut db);
    std::thread::sleep(Duration::from_millis(3500));
    let (checks_after, skipped_after) = counts(&mut db);
    // About 3 checks of f, and 30 skipped checks of the d's: allow slack for timing.
    assert!(checks_after - checks_before <= 8, "idle checks ran: {checks_before} -> {checks_after}");
    assert!(skipped_after - skipped_before >= 15, "idle checks skipped: {skipped_before} -> {skipped_after}");

    // A change reaches every stream table.
    db.exec("UPDATE t SET v = v + 1000 WHERE id % 3 = 0; DELETE FROM t WHERE id = 7");
    for (name, q) in &queries {
        wait_until(&mut db.client, &equal(name, "g, s", q), "a stream table to catch up after idling");
    }
    wait_until(&mut db.client, &equal("f", "g, hi", "SELECT g, max(v) AS hi FROM t GROUP BY g"), "f to catch up");

    // DDL that marks them for reinitialization captures no change, yet they are refreshed.
    db.exec("SET pg_trickle.block_source_ddl = off; ALTER TABLE t RENAME COLUMN v TO value");
    wait_until(&mut db.client, "SELECT NOT bool_or(needs_reinit) FROM pgtrickle.pgt_stream_tables", "reinitialization by the scheduler");
    db.exec("INSERT INTO t VALUES (1000, 1, 5)");
    for (name, q) in &queries {
        let q = q.replace("v", "value");
        wait_until(&mut db.client, &equal(name, "g, s", &q), "a stream table to catch up after the rename");
        assert_st_matches_query(&mut db.client, name, &q);
    }
    let f_query = "SELECT g, max(value) AS hi FROM t GROUP BY g";
    wait_until(&mut db.client, &equal("f", "g, hi", f_query), "f to catch up after the rename");
    assert_st_matches_query(&mut db.client, "f", f_query);
}
