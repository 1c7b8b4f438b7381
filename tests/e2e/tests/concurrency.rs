//! Refreshes among concurrent readers, writers and other refreshes.

use pg_trickle_e2e::*;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

fn setup(db: &mut TestDb) {
    db.exec(
        "CREATE TABLE acc (id int PRIMARY KEY, bal int);
         INSERT INTO acc SELECT g, 100 FROM generate_series(1, 1000) g;
         SELECT pgtrickle.create_stream_table('totals', 'SELECT count(*) AS n, sum(bal) AS total FROM acc');",
    );
}

/// Starts `count` writer threads, each with its own connection to `db`, running
/// `work(connection, writer number)`; join the handles to wait for them.
fn spawn_writers<F>(db: &TestDb, count: i32, work: F) -> Vec<thread::JoinHandle<()>>
where
    F: Fn(&mut pgt_testkit::postgres::Client, i32) + Send + Sync + 'static,
{
    let work = std::sync::Arc::new(work);
    (0..count)
        .map(|w| {
            let (cluster, name, work) = (db.cluster.clone(), db.name.clone(), work.clone());
            thread::spawn(move || {
                let mut connection = cluster.connect(&name).expect("writer connects");
                work(&mut connection, w);
            })
        })
        .collect()
}

#[test]
fn readers_see_the_old_contents_until_the_refresh_commits_and_are_not_blocked() {
    let mut db = TestDb::new("readers");
    setup(&mut db);
    db.exec("UPDATE acc SET bal = bal + 1");
    let mut refresher = db.connect();
    refresher.batch_execute("BEGIN; SELECT pgtrickle.refresh_stream_table('totals')").unwrap();
    // The refresh has replaced the rows but not committed: a reader is not blocked
    // and sees the complete old contents, never an empty table.
    let mut reader = db.connect();
    reader.batch_execute("SET lock_timeout = '2s'").unwrap();
    let old: (i64, i64) = {
        let r = reader.query_one("SELECT n, total::bigint FROM totals", &[]).unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(old, (1000, 100_000));
    refresher.batch_execute("COMMIT").unwrap();
    let new: i64 = reader.query_one("SELECT total::bigint FROM totals", &[]).unwrap().get(0);
    assert_eq!(new, 101_000);
    assert_st_matches_query(&mut db.client, "totals", "SELECT count(*) AS n, sum(bal) AS total FROM acc");
}

#[test]
fn concurrent_refreshes_of_one_stream_table_serialize() {
    let mut db = TestDb::new("serialize");
    setup(&mut db);
    db.exec("UPDATE acc SET bal = 0 WHERE id <= 10");
    let mut first = db.connect();
    first.batch_execute("BEGIN; SELECT pgtrickle.refresh_stream_table('totals')").unwrap();
    let (done_tx, done_rx) = mpsc::channel();
    let cluster = db.cluster.clone();
    let name = db.name.clone();
    let second = thread::spawn(move || {
        let mut c = cluster.connect(&name).unwrap();
        c.batch_execute("SELECT pgtrickle.refresh_stream_table('totals')").unwrap();
        done_tx.send(()).unwrap();
    });
    // The second refresh waits for the first one's transaction.
    assert!(done_rx.recv_timeout(Duration::from_millis(700)).is_err(), "second refresh did not wait");
    first.batch_execute("COMMIT").unwrap();
    done_rx.recv_timeout(Duration::from_secs(30)).expect("second refresh finished after the first committed");
    second.join().unwrap();
    // The initial population and the first refresh; the second one, serialized
    // after it, found nothing left to apply and wrote nothing.
    let statuses: Vec<String> =
        db.column("SELECT status FROM pgtrickle.pgt_refresh_history ORDER BY refresh_id", &[]);
    assert_eq!(statuses, vec!["SUCCESS"; 2]);
    assert_st_matches_query(&mut db.client, "totals", "SELECT count(*) AS n, sum(bal) AS total FROM acc");
}

#[test]
fn writers_keep_writing_while_refreshes_loop() {
    let mut db = TestDb::new("writers");
    setup(&mut db);
    let writers = spawn_writers(&db, 3, |c, w| {
        for i in 0..60 {
            // Transfers keep the total constant; inserts and deletes change the count.
            let a = 1 + (i * 7 + w * 13) % 1000;
            let b = 1 + (i * 11 + w * 17) % 1000;
            c.batch_execute(&format!(
                "BEGIN; UPDATE acc SET bal = bal - 1 WHERE id = {a}; SELECT pg_sleep(0.002); UPDATE acc SET bal = bal + 1 WHERE id = {b}; COMMIT;"
            ))
            .unwrap();
            if i % 10 == 0 {
                let id = 10_000 + w * 1000 + i;
                c.batch_execute(&format!("INSERT INTO acc VALUES ({id}, 5)")).unwrap();
            }
        }
    });
    let mut refresher = db.connect();
    for _ in 0..20 {
        refresher.batch_execute("SELECT pgtrickle.refresh_stream_table('totals')").unwrap();
        // Every refresh shows a transaction-consistent state: no half transfer.
        let total: i64 = refresher.query_one("SELECT total::bigint - 5 * (n - 1000) FROM totals", &[]).unwrap().get(0);
        assert_eq!(total, 100_000, "a refresh saw half a transfer");
    }
    for w in writers {
        w.join().unwrap();
    }
    db.exec("SELECT pgtrickle.refresh_stream_table('totals')");
    assert_st_matches_query(&mut db.client, "totals", "SELECT count(*) AS n, sum(bal) AS total FROM acc");
}

#[test]
fn refresh_in_a_repeatable_read_transaction() {
    let mut db = TestDb::new("repeatable_read");
    setup(&mut db);
    db.exec("DELETE FROM acc WHERE id > 500");
    db.exec("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT pgtrickle.refresh_stream_table('totals'); COMMIT;");
    assert_st_matches_query(&mut db.client, "totals", "SELECT count(*) AS n, sum(bal) AS total FROM acc");
}

/// Exactly once under concurrency: writers whose transactions overlap and commit
/// out of order (some held open across several refreshes) while DIFFERENTIAL
/// refreshes loop. Changes committed during a refresh are applied by a later one,
/// never lost and never twice.
#[test]
fn differential_refreshes_with_out_of_order_commits() {
    let mut db = TestDb::new("out_of_order");
    db.exec(
        "CREATE TABLE dept (id int PRIMARY KEY, name text NOT NULL);
         INSERT INTO dept SELECT g, 'd' || g FROM generate_series(1, 10) g;
         CREATE TABLE emp (id int PRIMARY KEY, dept int NOT NULL, pay int NOT NULL);
         INSERT INTO emp SELECT g, 1 + g % 10, 100 FROM generate_series(1, 500) g;",
    );
    let join_q = "SELECT e.id, d.name, e.pay FROM emp e JOIN dept d ON d.id = e.dept";
    let agg_q = "SELECT d.name, count(*) AS n, sum(e.pay) AS payroll, max(e.pay) AS top FROM emp e JOIN dept d ON d.id = e.dept GROUP BY d.name";
    db.exec(&format!("SELECT pgtrickle.create_stream_table('j', '{join_q}', refresh_mode => 'DIFFERENTIAL')"));
    db.exec(&format!("SELECT pgtrickle.create_stream_table('a', '{agg_q}', refresh_mode => 'DIFFERENTIAL')"));
    let writers = spawn_writers(&db, 3, |c, w| {
        for i in 0..25 {
            let id = 1 + (i * 37 + w * 101) % 500;
            // Long transactions (held across refreshes) interleave with short ones.
            let hold = if (i + w) % 4 == 0 { 0.15 } else { 0.005 };
            c.batch_execute(&format!(
                "BEGIN; UPDATE emp SET pay = pay + 1, dept = 1 + (dept % 10) WHERE id = {id};
                 SELECT pg_sleep({hold});
                 INSERT INTO emp VALUES ({new}, {dept}, 50);
                 DELETE FROM emp WHERE id = {del};
                 COMMIT;",
                new = 10_000 + w * 100 + i,
                dept = 1 + i % 10,
                del = 1 + (i * 53 + w * 7) % 500,
            ))
            .unwrap();
            if i % 8 == 0 {
                c.batch_execute(&format!("UPDATE dept SET name = 'd{}' || '_{w}_{i}' WHERE id = {}", 1 + i % 10, 1 + i % 10)).unwrap();
            }
        }
    });
    let mut refresher = db.connect();
    for _ in 0..30 {
        refresher.batch_execute("SELECT pgtrickle.refresh_stream_table('j'); SELECT pgtrickle.refresh_stream_table('a')").unwrap();
        thread::sleep(Duration::from_millis(20));
    }
    for w in writers {
        w.join().unwrap();
    }
    db.exec("SELECT pgtrickle.refresh_stream_table('j'); SELECT pgtrickle.refresh_stream_table('a')");
    assert_st_matches_query(&mut db.client, "j", join_q);
    assert_st_matches_query(&mut db.client, "a", agg_q);
    let differential: i64 = db.scalar("SELECT count(*) FROM pgtrickle.pgt_refresh_history WHERE action = 'DIFFERENTIAL'", &[]);
    assert!(differential > 10, "the loop must have refreshed differentially ({differential})");
}
