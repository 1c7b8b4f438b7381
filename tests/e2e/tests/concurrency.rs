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
        db.client.query("SELECT status FROM pgtrickle.pgt_refresh_history ORDER BY refresh_id", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(statuses, vec!["SUCCESS"; 2]);
    assert_st_matches_query(&mut db.client, "totals", "SELECT count(*) AS n, sum(bal) AS total FROM acc");
}

#[test]
fn writers_keep_writing_while_refreshes_loop() {
    let mut db = TestDb::new("writers");
    setup(&mut db);
    let cluster = db.cluster.clone();
    let name = db.name.clone();
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let cluster = cluster.clone();
            let name = name.clone();
            thread::spawn(move || {
                let mut c = cluster.connect(&name).unwrap();
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
            })
        })
        .collect();
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
