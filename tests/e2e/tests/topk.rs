//! TopK stream tables (issue 11): `ORDER BY ... LIMIT n [OFFSET m]` and
//! `FETCH FIRST n ROWS WITH TIES` maintained differentially, storing only
//! their window. A property suite over seeded random DML (ties, NULLs,
//! offsets, aggregates, joins, DISTINCT, UNION ALL, subqueries; int, bigint,
//! text, numeric, composite and no keys) checks every refresh against the
//! query, up to which rows tied at the boundary are held. Then what a change
//! outside the window costs, and the limits (`pg_trickle.ivm_topk_max_limit`,
//! LIMIT without ORDER BY, ORDER BY without LIMIT).

use pg_trickle_e2e::{run_property_suite, sqlstate, Expect::*, TestDb};

const CYCLES: usize = 25;

/// The last refresh of stream table `st`: action, rows inserted, rows deleted.
fn last_refresh(db: &mut TestDb, st: &str) -> (String, i64, i64) {
    let row = db
        .client
        .query_one(
            "SELECT h.action, h.rows_inserted, h.rows_deleted FROM pgtrickle.pgt_refresh_history h \
             JOIN pgtrickle.pgt_stream_tables s USING (pgt_id) WHERE s.pgt_relid = $1::text::regclass \
             ORDER BY h.refresh_id DESC LIMIT 1",
            &[&st],
        )
        .expect("history");
    (row.get(0), row.get(1), row.get(2))
}

#[test]
fn topk_windows_stay_equal_to_their_queries() {
    run_property_suite(
        "topk",
        &[
            ("k_ties", "SELECT id, amount FROM orders ORDER BY amount DESC LIMIT 5", Differential),
            ("k_nulls_offset", "SELECT id, amount, note FROM orders ORDER BY note NULLS FIRST, amount, id LIMIT 7 OFFSET 3", Differential),
            ("k_desc_nulls_last", "SELECT id, score FROM customers ORDER BY score DESC NULLS LAST, id LIMIT 6", Differential),
            (
                "k_aggregate",
                "SELECT cust, sum(amount) AS total, count(*) AS n FROM orders GROUP BY cust ORDER BY total DESC NULLS LAST, cust LIMIT 4",
                Differential,
            ),
            ("k_aggregate_ties", "SELECT status, count(*) AS n FROM orders GROUP BY status ORDER BY n DESC LIMIT 2", Differential),
            ("k_join", "SELECT o.id, c.region, o.amount FROM orders o JOIN customers c ON c.id = o.cust ORDER BY amount, id LIMIT 6", Differential),
            ("k_keyless", "SELECT kind, n FROM events ORDER BY n DESC, kind LIMIT 3", Differential),
            ("k_with_ties", "SELECT id, amount FROM orders ORDER BY amount DESC FETCH FIRST 3 ROWS WITH TIES", Differential),
            ("k_distinct", "SELECT DISTINCT status FROM orders ORDER BY status LIMIT 2", Differential),
            ("k_text", "SELECT id, region FROM customers ORDER BY region DESC NULLS LAST, id LIMIT 4", Differential),
            ("k_numeric", "SELECT code, factor FROM rates ORDER BY code DESC LIMIT 5 OFFSET 2", Differential),
            ("k_bigint", "SELECT id, balance FROM accounts ORDER BY balance, id LIMIT 5", Differential),
            ("k_composite", "SELECT order_id, line, price FROM items ORDER BY price DESC, order_id, line LIMIT 8", Differential),
            (
                "k_exists",
                "SELECT c.id, c.score FROM customers c WHERE EXISTS (SELECT 1 FROM orders o WHERE o.cust = c.id AND o.amount > 50) \
                 ORDER BY score DESC NULLS LAST, id LIMIT 5",
                Differential,
            ),
            ("k_union_all", "SELECT id AS x FROM customers UNION ALL SELECT cust FROM orders ORDER BY x DESC LIMIT 4", Differential),
            (
                "k_nested_aggregate",
                "SELECT s.cust, s.total FROM (SELECT cust, sum(amount) AS total FROM orders GROUP BY cust) s \
                 JOIN customers c ON c.id = s.cust WHERE c.vip ORDER BY total, cust LIMIT 3",
                Differential,
            ),
            ("k_limit_zero", "SELECT id FROM orders ORDER BY id LIMIT 0", Differential),
            // Fewer rows than the LIMIT (mostly): the changes apply directly,
            // rows past the LIMIT are trimmed.
            ("k_all_groups", "SELECT status, count(*) AS n, sum(amount) AS total FROM orders GROUP BY status ORDER BY total DESC, status LIMIT 5", Differential),
            ("k_all_vips", "SELECT id, score, region FROM customers WHERE vip ORDER BY score NULLS FIRST, id LIMIT 12", Differential),
            ("k_all_keyless", "SELECT kind, n FROM events WHERE n = 2 ORDER BY kind LIMIT 30", Differential),
        ],
        CYCLES,
    );
}

/// A change sorting after the window's last row writes nothing; one before
/// it writes only the rows that enter and leave.
#[test]
fn changes_outside_the_window_write_nothing() {
    let mut db = TestDb::new("topk_outside");
    db.exec(
        "CREATE TABLE scores (id int PRIMARY KEY, points int NOT NULL);
         INSERT INTO scores SELECT g, g * 10 FROM generate_series(1, 1000) g;
         SELECT pgtrickle.create_stream_table('leaders', 'SELECT id, points FROM scores ORDER BY points DESC LIMIT 10',
                                              refresh_mode => 'DIFFERENTIAL');",
    );
    // Below the 10th (points 9910): inserted, updated and deleted rows there.
    db.exec("INSERT INTO scores VALUES (2001, 5); UPDATE scores SET points = points + 1 WHERE id BETWEEN 100 AND 120; DELETE FROM scores WHERE id = 7");
    db.exec("SELECT pgtrickle.refresh_stream_table('leaders')");
    assert_eq!(last_refresh(&mut db, "leaders"), ("DIFFERENTIAL".into(), 0, 0));
    pgt_testkit::assert_st_matches_query(&mut db.client, "leaders", "SELECT id, points FROM scores ORDER BY points DESC LIMIT 10");
    // One new leader: it enters, the 10th leaves.
    db.exec("INSERT INTO scores VALUES (2002, 99999)");
    db.exec("SELECT pgtrickle.refresh_stream_table('leaders')");
    assert_eq!(last_refresh(&mut db, "leaders"), ("DIFFERENTIAL".into(), 1, 1));
    // A leader leaves: the 11th comes back.
    db.exec("DELETE FROM scores WHERE id = 2002");
    db.exec("SELECT pgtrickle.refresh_stream_table('leaders')");
    assert_eq!(last_refresh(&mut db, "leaders"), ("DIFFERENTIAL".into(), 1, 1));
    pgt_testkit::assert_st_matches_query(&mut db.client, "leaders", "SELECT id, points FROM scores ORDER BY points DESC LIMIT 10");
    assert_eq!(db.scalar::<i64>("SELECT count(*) FROM leaders", &[]), 10, "only the window is stored");
    let explain: String = db.scalar("SELECT pgtrickle.explain_st('leaders')", &[]);
    assert!(explain.contains("TopK ORDER BY \"points\" DESC LIMIT 10"), "{explain}");
}

/// Top N per group (a ranking window under `WHERE rn <= N`) and DISTINCT
/// ON keep only each group's ranked prefix: changes that rank below it
/// write nothing, a change reaching it rewrites its group.
#[test]
fn top_n_per_group_keeps_only_its_ranked_prefix() {
    let mut db = TestDb::new("topk_prefix");
    db.exec("CREATE TABLE s (id int PRIMARY KEY, g int, v int); CREATE INDEX ON s (g); \
             INSERT INTO s SELECT i, i % 20, i FROM generate_series(1, 2000) i");
    let top = "SELECT g, id, v FROM (SELECT g, id, v, row_number() OVER (PARTITION BY g ORDER BY v DESC, id) AS rn FROM s) x WHERE rn <= 3";
    let first = "SELECT DISTINCT ON (g) g, id, v FROM s ORDER BY g, v, id";
    db.exec(&format!("SELECT pgtrickle.create_stream_table('top', $q${top}$q$, refresh_mode => 'DIFFERENTIAL')"));
    db.exec(&format!("SELECT pgtrickle.create_stream_table('first', $q${first}$q$, refresh_mode => 'DIFFERENTIAL')"));
    for name in ["top", "first"] {
        let explain: String = db.scalar("SELECT pgtrickle.explain_st($1)", &[&name]);
        assert!(explain.contains("ranked prefix"), "{explain}");
    }
    let tables: Vec<String> = db
        .client
        .query("SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'pgtrickle_state' AND c.relkind = 'r'", &[])
        .expect("state tables")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let state_rows: i64 = tables.iter().map(|t| db.scalar::<i64>(&format!("SELECT count(*) FROM {t}"), &[])).sum();
    assert_eq!(state_rows, 60 + 20, "the state tables hold each group's 3 and 1 ranked rows, not the 2,000 rows");
    // Below every group's prefix: middle rows updated, deleted, inserted.
    db.exec("UPDATE s SET v = v + 1 WHERE id BETWEEN 500 AND 560; DELETE FROM s WHERE id BETWEEN 900 AND 905; \
             INSERT INTO s SELECT i, i % 20, i - 2900 FROM generate_series(3001, 3010) i");
    db.exec("SELECT pgtrickle.refresh_stream_table('top'); SELECT pgtrickle.refresh_stream_table('first')");
    assert_eq!(last_refresh(&mut db, "top"), ("DIFFERENTIAL".into(), 0, 0));
    assert_eq!(last_refresh(&mut db, "first"), ("DIFFERENTIAL".into(), 0, 0));
    pgt_testkit::assert_st_matches_query(&mut db.client, "top", top);
    pgt_testkit::assert_st_matches_query(&mut db.client, "first", first);
    // A new leader of group 7: it enters, the group's 3rd leaves.
    db.exec("INSERT INTO s VALUES (5007, 7, 99999)");
    db.exec("SELECT pgtrickle.refresh_stream_table('top')");
    assert_eq!(last_refresh(&mut db, "top"), ("DIFFERENTIAL".into(), 1, 1));
    pgt_testkit::assert_st_matches_query(&mut db.client, "top", top);
    // The lowest row of group 3 goes: DISTINCT ON's winner changes.
    db.exec("DELETE FROM s WHERE id = 3");
    db.exec("SELECT pgtrickle.refresh_stream_table('top'); SELECT pgtrickle.refresh_stream_table('first')");
    pgt_testkit::assert_st_matches_query(&mut db.client, "top", top);
    pgt_testkit::assert_st_matches_query(&mut db.client, "first", first);
}

/// `pg_trickle.ivm_topk_max_limit` bounds LIMIT + OFFSET; LIMIT needs an
/// ORDER BY; ORDER BY without LIMIT draws a WARNING.
#[test]
fn topk_limits_and_warnings() {
    let mut db = TestDb::new("topk_limits");
    db.exec("CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t SELECT g, g % 7 FROM generate_series(1, 100) g");
    let (mut client, notices) = db.connect_collecting_notices();
    client.batch_execute("SET pg_trickle.ivm_topk_max_limit = 20").unwrap();
    client.batch_execute("SELECT pgtrickle.create_stream_table('big', 'SELECT id, v FROM t ORDER BY v, id LIMIT 15 OFFSET 10')").unwrap();
    let mode: String = client
        .query_one("SELECT effective_refresh_mode FROM pgtrickle.pgt_stream_tables WHERE pgt_relid = 'big'::regclass", &[])
        .unwrap()
        .get(0);
    assert_eq!(mode, "FULL");
    let warned = notices.lock().unwrap().iter().any(|(sev, m)| sev == "WARNING" && m.contains("above pg_trickle.ivm_topk_max_limit (20)"));
    assert!(warned, "{:?}", notices.lock().unwrap());
    let err = client
        .batch_execute("SELECT pgtrickle.create_stream_table('big2', 'SELECT id, v FROM t ORDER BY v, id LIMIT 21', refresh_mode => 'DIFFERENTIAL')")
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("0A000"), "{err:?}");
    pgt_testkit::assert_st_matches_query(&mut client, "big", "SELECT id, v FROM t ORDER BY v, id LIMIT 15 OFFSET 10");

    client.batch_execute("SELECT pgtrickle.create_stream_table('any10', 'SELECT id FROM t LIMIT 10')").unwrap();
    let reason: String = client.query_one("SELECT reason FROM pgtrickle.explain_refresh_mode('any10')", &[]).unwrap().get(0);
    assert!(reason.contains("LIMIT / OFFSET without ORDER BY"), "{reason}");

    notices.lock().unwrap().clear();
    client.batch_execute("SELECT pgtrickle.create_stream_table('sorted', 'SELECT id, v FROM t ORDER BY v')").unwrap();
    let warned = notices.lock().unwrap().iter().any(|(sev, m)| sev == "WARNING" && m.contains("has no effect: a stream table is a set of rows"));
    assert!(warned, "{:?}", notices.lock().unwrap());
    pgt_testkit::assert_st_matches_query(&mut client, "sorted", "SELECT id, v FROM t");
}

/// A TopK over an aggregate and a join, as a source of another stream table,
/// and switched between modes: contents right after each step.
#[test]
fn topk_as_a_source_and_across_mode_changes() {
    let mut db = TestDb::new("topk_chain");
    db.exec(
        "CREATE TABLE sales (id int PRIMARY KEY, shop int NOT NULL, amount numeric(12,2) NOT NULL);
         CREATE TABLE shops (id int PRIMARY KEY, city text NOT NULL);
         INSERT INTO shops SELECT g, 'c' || (g % 4) FROM generate_series(1, 30) g;
         INSERT INTO sales SELECT g, 1 + g % 30, (g * 7919 % 1000) / 10.0 FROM generate_series(1, 3000) g;
         SELECT pgtrickle.create_stream_table('top_shops',
            'SELECT s.id, s.city, sum(x.amount) AS revenue FROM sales x JOIN shops s ON s.id = x.shop GROUP BY s.id, s.city ORDER BY revenue DESC, id LIMIT 5',
            refresh_mode => 'DIFFERENTIAL');
         SELECT pgtrickle.create_stream_table('top_cities', 'SELECT city, count(*) AS shops FROM top_shops GROUP BY city',
            refresh_mode => 'DIFFERENTIAL');",
    );
    let top = "SELECT s.id, s.city, sum(x.amount) AS revenue FROM sales x JOIN shops s ON s.id = x.shop GROUP BY s.id, s.city ORDER BY revenue DESC, id LIMIT 5";
    for round in 0..6 {
        db.exec(&format!(
            "INSERT INTO sales SELECT 10000 + {round} * 100 + g, 1 + (g * {m}) % 30, g * 3 FROM generate_series(1, 20) g;
             UPDATE sales SET amount = amount / 2 WHERE shop = {shop};
             UPDATE shops SET city = 'c9' WHERE id = {shop};
             DELETE FROM sales WHERE id % 97 = {round}",
            m = round + 3,
            shop = 1 + round * 5,
        ));
        if round == 3 {
            db.exec("SELECT pgtrickle.alter_stream_table('top_shops', refresh_mode => 'FULL')");
        }
        if round == 4 {
            db.exec("SELECT pgtrickle.alter_stream_table('top_shops', refresh_mode => 'DIFFERENTIAL')");
        }
        db.exec("SELECT pgtrickle.refresh_stream_table('top_shops'); SELECT pgtrickle.refresh_stream_table('top_cities')");
        pgt_testkit::assert_st_matches_query(&mut db.client, "top_shops", top);
        pgt_testkit::assert_st_matches_query(&mut db.client, "top_cities", "SELECT city, count(*) AS shops FROM top_shops GROUP BY city");
    }
}

/// A window holding every row (fewer than the LIMIT, no OFFSET) takes the
/// changes as they are, then loses what passes the LIMIT — no recomputation.
#[test]
fn a_window_holding_every_row_takes_changes_directly() {
    let mut db = TestDb::new("topk_direct");
    // The table is tiny: every change is a large fraction of it, which would
    // otherwise make the refresh recompute (differential_max_change_ratio).
    db.exec("SET pg_trickle.differential_max_change_ratio = 1000");
    db.exec(
        "CREATE TABLE scores (id int PRIMARY KEY, points int NOT NULL);
         INSERT INTO scores SELECT g, g * 10 FROM generate_series(1, 5) g;
         SELECT pgtrickle.create_stream_table('leaders', 'SELECT id, points FROM scores ORDER BY points DESC, id LIMIT 10',
                                              refresh_mode => 'DIFFERENTIAL');",
    );
    let query = "SELECT id, points FROM scores ORDER BY points DESC, id LIMIT 10";
    db.exec("INSERT INTO scores VALUES (6, 5), (7, 500), (8, 25)");
    db.exec("SELECT pgtrickle.refresh_stream_table('leaders')");
    assert_eq!(last_refresh(&mut db, "leaders"), ("DIFFERENTIAL".into(), 3, 0), "three rows inserted, none trimmed");
    pgt_testkit::assert_st_matches_query(&mut db.client, "leaders", query);
    // 13 rows now: the three lowest pass the LIMIT and go.
    db.exec("INSERT INTO scores SELECT g, g * 100 FROM generate_series(9, 13) g");
    db.exec("SELECT pgtrickle.refresh_stream_table('leaders')");
    assert_eq!(last_refresh(&mut db, "leaders"), ("DIFFERENTIAL".into(), 5, 3), "five rows inserted, three trimmed");
    pgt_testkit::assert_st_matches_query(&mut db.client, "leaders", query);
    assert_eq!(db.scalar::<i64>("SELECT count(*) FROM leaders", &[]), 10);
    // A full window again follows the probe: a change beyond it writes nothing.
    db.exec("UPDATE scores SET points = 1 WHERE id = 6");
    db.exec("SELECT pgtrickle.refresh_stream_table('leaders')");
    assert_eq!(last_refresh(&mut db, "leaders"), ("DIFFERENTIAL".into(), 0, 0));
    pgt_testkit::assert_st_matches_query(&mut db.client, "leaders", query);
}
