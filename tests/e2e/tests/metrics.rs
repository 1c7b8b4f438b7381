//! The metrics views (`pgtrickle.metrics_stream_tables`, `metrics_refreshes`,
//! `metrics_scheduler`; docs/INTEGRATIONS.md): each figure checked against an
//! independent count over random DML, failures counted, who may read them.

use pg_trickle_e2e::{assert_st_matches_query, sqlstate, TestDb};
use rand::{Rng, SeedableRng};
use std::time::{Duration, Instant};

fn wait_until(db: &mut TestDb, condition: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !db.scalar::<bool>(condition, &[]) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {condition}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn gauge(db: &mut TestDb, st: &str, column: &str) -> f64 {
    db.scalar::<f64>(&format!("SELECT {column} FROM pgtrickle.metrics_stream_tables WHERE stream_table = $1"), &[&st])
}

fn counter(db: &mut TestDb, st: &str, mode: &str, initiated_by: &str, status: &str, column: &str) -> f64 {
    db.scalar::<f64>(
        &format!(
            "SELECT {column} FROM pgtrickle.metrics_refreshes \
             WHERE stream_table = $1 AND mode = $2 AND initiated_by = $3 AND status = $4"
        ),
        &[&st, &mode, &initiated_by, &status],
    )
}

/// Over random DML rounds: pending rows equal the row images the round
/// wrote (INSERT and DELETE one each, UPDATE two), staleness is 0 exactly when
/// nothing is pending, and the counters add up what the history says; the
/// stream table equals its query after every refresh.
#[test]
fn stream_table_metrics_follow_changes_and_refreshes() {
    let mut db = TestDb::new("metrics_follow");
    db.exec(
        "CREATE TABLE src (id int PRIMARY KEY, g int NOT NULL, v int NOT NULL);
         INSERT INTO src SELECT i, i % 7, i FROM generate_series(1, 500) i;
         SELECT pgtrickle.create_stream_table('agg', 'SELECT g, sum(v) AS s, count(*) AS n FROM src GROUP BY g',
                                              refresh_mode => 'DIFFERENTIAL');
         SELECT pgtrickle.create_stream_table('snap', 'SELECT g, max(v) AS m FROM src GROUP BY g', refresh_mode => 'FULL');",
    );
    let query = "SELECT g, sum(v) AS s, count(*) AS n FROM src GROUP BY g";
    assert_eq!(counter(&mut db, "public.agg", "FULL", "INITIAL", "SUCCESS", "total"), 1.0);
    assert_eq!(counter(&mut db, "public.agg", "FULL", "INITIAL", "SUCCESS", "rows_inserted_total"), 7.0);
    assert_eq!(db.scalar::<i64>("SELECT count(*) FROM pgtrickle.metrics_refreshes", &[]), 16, "8 combinations per stream table");
    assert_eq!(gauge(&mut db, "public.agg", "staleness_seconds"), 0.0, "nothing pending: current");
    assert_eq!(gauge(&mut db, "public.agg", "populated"), 1.0);
    assert!(gauge(&mut db, "public.agg", "storage_bytes") > 0.0);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed_0015);
    let mut next_id = 1000;
    for round in 0..12 {
        let mut images = 0i64;
        for _ in 0..rng.random_range(1..5) {
            match rng.random_range(0..3) {
                0 => {
                    let n = rng.random_range(1..4);
                    db.exec(&format!(
                        "INSERT INTO src SELECT i, i % 7, i FROM generate_series({next_id}, {}) i",
                        next_id + n - 1
                    ));
                    next_id += n;
                    images += n as i64;
                }
                1 => {
                    let k = rng.random_range(0..40);
                    let n = db.scalar::<i64>(&format!("WITH d AS (DELETE FROM src WHERE id % 40 = {k} RETURNING 1) SELECT count(*) FROM d"), &[]);
                    images += n;
                }
                _ => {
                    let k = rng.random_range(0..30);
                    let n = db.scalar::<i64>(
                        &format!("WITH u AS (UPDATE src SET v = v + 1, g = (g + 1) % 7 WHERE id % 30 = {k} RETURNING 1) SELECT count(*) FROM u"),
                        &[],
                    );
                    images += 2 * n;
                }
            }
        }
        assert_eq!(gauge(&mut db, "public.agg", "change_buffer_pending_rows"), images as f64, "round {round}: pending row images");
        assert!(gauge(&mut db, "public.agg", "change_buffer_bytes") > 0.0);
        assert_eq!(gauge(&mut db, "public.snap", "change_buffer_pending_rows"), 0.0, "a FULL stream table reads no buffer");
        if images > 0 {
            assert!(gauge(&mut db, "public.agg", "staleness_seconds") > 0.0, "round {round}: changes pending, not current");
        }
        db.exec("SELECT pgtrickle.refresh_stream_table('agg')");
        assert_eq!(gauge(&mut db, "public.agg", "change_buffer_pending_rows"), 0.0, "round {round}: all applied");
        assert_eq!(gauge(&mut db, "public.agg", "staleness_seconds"), 0.0, "round {round}: current again");
        assert_st_matches_query(&mut db.client, "agg", query);
    }
    // The counters equal what the (unpruned) history holds.
    let (refreshes, inserted, deleted, seconds): (i64, i64, i64, f64) = {
        let row = db
            .client
            .query_one(
                "SELECT count(*), coalesce(sum(rows_inserted), 0)::bigint, coalesce(sum(rows_deleted), 0)::bigint, \
                        coalesce(sum(extract(epoch FROM end_time - start_time)), 0)::float8 \
                 FROM pgtrickle.pgt_refresh_history h JOIN pgtrickle.pgt_stream_tables st USING (pgt_id) \
                 WHERE st.pgt_relid = 'agg'::regclass AND h.action = 'DIFFERENTIAL' AND h.initiated_by = 'MANUAL'",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1), row.get(2), row.get(3))
    };
    assert!(refreshes > 0);
    assert_eq!(counter(&mut db, "public.agg", "DIFFERENTIAL", "MANUAL", "SUCCESS", "total"), refreshes as f64);
    assert_eq!(counter(&mut db, "public.agg", "DIFFERENTIAL", "MANUAL", "SUCCESS", "rows_inserted_total"), inserted as f64);
    assert_eq!(counter(&mut db, "public.agg", "DIFFERENTIAL", "MANUAL", "SUCCESS", "rows_deleted_total"), deleted as f64);
    let counted = counter(&mut db, "public.agg", "DIFFERENTIAL", "MANUAL", "SUCCESS", "duration_seconds_total");
    assert!((counted - seconds).abs() < 0.05 + seconds * 0.5, "duration counted {counted} s, history says {seconds} s");
    let last = gauge(&mut db, "public.agg", "last_refresh_duration_seconds");
    assert!(last > 0.0 && last < 10.0, "last refresh duration {last}");
    let last_at = gauge(&mut db, "public.agg", "last_refresh_timestamp_seconds");
    let now = db.scalar::<f64>("SELECT extract(epoch FROM now())::float8", &[]);
    assert!((now - last_at).abs() < 60.0, "last refresh at {last_at}, now {now}");
    // The database's totals.
    let buffers = db.scalar::<f64>("SELECT change_buffer_bytes FROM pgtrickle.metrics_scheduler", &[]);
    assert!(buffers > 0.0);
    assert_eq!(db.scalar::<f64>("SELECT stream_tables FROM pgtrickle.metrics_scheduler", &[]), 2.0);
    // A refresh that finds nothing to apply records that the contents were
    // current, when the recorded time is more than 10 s old (an idle hour
    // here), and writes nothing otherwise.
    let history = db.scalar::<i64>("SELECT count(*) FROM pgtrickle.pgt_refresh_history", &[]);
    db.exec("UPDATE pgtrickle.pgt_stream_tables SET data_timestamp = now() - interval '1 hour' WHERE pgt_relid = 'agg'::regclass");
    db.exec("SELECT pgtrickle.refresh_stream_table('agg')");
    let age = db.scalar::<f64>(
        "SELECT extract(epoch FROM now() - data_timestamp)::float8 FROM pgtrickle.pgt_stream_tables WHERE pgt_relid = 'agg'::regclass",
        &[],
    );
    assert!(age < 30.0, "data_timestamp is {age} s old after a refresh found the stream table current");
    let version = db.scalar::<String>("SELECT xmin::text FROM pgtrickle.pgt_stream_tables WHERE pgt_relid = 'agg'::regclass", &[]);
    db.exec("SELECT pgtrickle.refresh_stream_table('agg')");
    assert_eq!(
        db.scalar::<String>("SELECT xmin::text FROM pgtrickle.pgt_stream_tables WHERE pgt_relid = 'agg'::regclass", &[]),
        version,
        "a second idle refresh within 10 s writes nothing"
    );
    assert_eq!(db.scalar::<i64>("SELECT count(*) FROM pgtrickle.pgt_refresh_history", &[]), history, "no history row");
    db.exec("SELECT pgtrickle.refresh_stream_table('snap')");
    assert_eq!(counter(&mut db, "public.snap", "FULL", "MANUAL", "SUCCESS", "total"), 1.0);
    assert_st_matches_query(&mut db.client, "snap", "SELECT g, max(v) AS m FROM src GROUP BY g");
}

/// Scheduled refreshes that fail are counted as FAILED, raise
/// consecutive_errors, suspend the stream table (suspended = 1); the
/// scheduler's figures follow; after the cause is removed and the stream
/// table resumed it catches up.
#[test]
fn failures_suspension_and_the_scheduler_are_reported() {
    let mut db = TestDb::new("metrics_failures");
    db.exec(
        "CREATE TABLE src (id int PRIMARY KEY, v int NOT NULL);
         INSERT INTO src SELECT i, i FROM generate_series(1, 50) i;
         SELECT pgtrickle.create_stream_table('ratio', 'SELECT id, 100 / v AS r FROM src', schedule => '1s',
                                              refresh_mode => 'DIFFERENTIAL');
         SELECT pgtrickle.create_stream_table('later', 'SELECT count(*) AS n FROM src', initialize => false,
                                              refresh_mode => 'FULL');",
    );
    wait_until(&mut db, "SELECT up = 1 FROM pgtrickle.metrics_scheduler", "the scheduler");
    assert_eq!(gauge(&mut db, "public.later", "populated"), 0.0);
    assert!(gauge(&mut db, "public.later", "staleness_seconds") > 0.0, "never populated: stale since created");
    assert_eq!(gauge(&mut db, "public.ratio", "schedule_seconds"), 1.0);
    assert_eq!(gauge(&mut db, "public.later", "schedule_seconds"), 3600.0, "calculated: the default (test cluster)");
    db.exec("UPDATE src SET v = v + 1 WHERE id = 3");
    wait_until(
        &mut db,
        "SELECT total >= 1 FROM pgtrickle.metrics_refreshes WHERE stream_table = 'public.ratio' \
           AND mode = 'DIFFERENTIAL' AND initiated_by = 'SCHEDULER' AND status = 'SUCCESS'",
        "a scheduled refresh counted",
    );
    db.exec("UPDATE src SET v = 0 WHERE id = 7");
    wait_until(&mut db, "SELECT suspended = 1 FROM pgtrickle.metrics_stream_tables WHERE stream_table = 'public.ratio'", "suspension");
    let failed = counter(&mut db, "public.ratio", "DIFFERENTIAL", "SCHEDULER", "FAILED", "total");
    let history_failed = db.scalar::<i64>(
        "SELECT count(*) FROM pgtrickle.pgt_refresh_history h JOIN pgtrickle.pgt_stream_tables st USING (pgt_id) \
         WHERE st.pgt_relid = 'ratio'::regclass AND h.status = 'FAILED'",
        &[],
    );
    assert!(failed >= 3.0, "{failed} failures counted");
    assert_eq!(failed, history_failed as f64);
    assert!(gauge(&mut db, "public.ratio", "consecutive_errors") >= 3.0);
    assert_eq!(db.scalar::<f64>("SELECT suspended_stream_tables FROM pgtrickle.metrics_scheduler", &[]), 1.0);
    assert_eq!(db.scalar::<f64>("SELECT failing_stream_tables FROM pgtrickle.metrics_scheduler", &[]), 1.0);
    assert!(db.scalar::<f64>("SELECT checks_total FROM pgtrickle.metrics_scheduler", &[]) >= 4.0);
    // Suspended with changes pending: stale, and in the scheduler's queue
    // only while active.
    assert!(gauge(&mut db, "public.ratio", "staleness_seconds") > 0.0);
    db.exec("UPDATE src SET v = 1 WHERE id = 7; SELECT pgtrickle.alter_stream_table('ratio', status => 'ACTIVE')");
    wait_until(
        &mut db,
        "SELECT suspended = 0 AND consecutive_errors = 0 AND staleness_seconds = 0 \
         FROM pgtrickle.metrics_stream_tables WHERE stream_table = 'public.ratio'",
        "recovery",
    );
    assert_eq!(db.scalar::<f64>("SELECT failing_stream_tables FROM pgtrickle.metrics_scheduler", &[]), 0.0);
    assert_st_matches_query(&mut db.client, "ratio", "SELECT id, 100 / v AS r FROM src");
}

/// The metrics count change buffer rows, which only roles that may read the
/// whole source read: they are for pg_monitor (and superusers), as
/// PostgreSQL's statistics views are; other roles get 42501, and pg_monitor
/// still cannot read the buffers or the sources.
#[test]
fn metrics_are_for_pg_monitor() {
    let mut db = TestDb::new("metrics_roles");
    db.exec(
        "CREATE TABLE secret (id int PRIMARY KEY, v int);
         INSERT INTO secret SELECT i, i FROM generate_series(1, 20) i;
         SELECT pgtrickle.create_stream_table('s', 'SELECT v % 3 AS k, count(*) AS n FROM secret GROUP BY 1',
                                              refresh_mode => 'DIFFERENTIAL');
         UPDATE secret SET v = v + 1 WHERE id < 4;",
    );
    let monitor = db.create_role("monitor", "NOSUPERUSER");
    let stranger = db.create_role("stranger", "NOSUPERUSER");
    db.exec(&format!("GRANT pg_monitor TO \"{monitor}\""));
    let mut m = db.connect_as(&monitor);
    let pending: f64 = m
        .query_one("SELECT change_buffer_pending_rows FROM pgtrickle.metrics_stream_tables WHERE stream_table = 'public.s'", &[])
        .unwrap()
        .get(0);
    assert_eq!(pending, 6.0);
    let rows: i64 = m.query_one("SELECT count(*) FROM pgtrickle.metrics_refreshes", &[]).unwrap().get(0);
    assert_eq!(rows, 8);
    let up: f64 = m.query_one("SELECT stream_tables FROM pgtrickle.metrics_scheduler", &[]).unwrap().get(0);
    assert_eq!(up, 1.0);
    let buffer = db.scalar::<String>("SELECT buffer_relid::regclass::text FROM pgtrickle.pgt_change_tracking", &[]);
    for sql in [format!("SELECT count(*) FROM {buffer}"), "SELECT count(*) FROM secret".to_string()] {
        let e = m.query(sql.as_str(), &[]).expect_err("pg_monitor reads no data");
        assert_eq!(sqlstate(&e).as_deref(), Some("42501"), "{sql}: {e}");
    }
    let mut s = db.connect_as(&stranger);
    for view in ["metrics_stream_tables", "metrics_refreshes", "metrics_scheduler"] {
        let e = s.query(&format!("SELECT * FROM pgtrickle.{view}"), &[]).expect_err("not for strangers");
        assert_eq!(sqlstate(&e).as_deref(), Some("42501"), "{view}: {e}");
    }
    for f in ["_stream_table_load", "_change_buffer_sizes"] {
        let e = s.query(&format!("SELECT * FROM pgtrickle.{f}()"), &[]).expect_err("not for strangers");
        assert_eq!(sqlstate(&e).as_deref(), Some("42501"), "{f}: {e}");
    }
    db.exec("SELECT pgtrickle.refresh_stream_table('s')");
    assert_st_matches_query(&mut db.client, "s", "SELECT v % 3 AS k, count(*) AS n FROM secret GROUP BY 1");
}
