//! FULL refresh over every kind of source and DML, change capture into the
//! buffers, and the frontier that bounds what a refresh has applied.

use pg_trickle_e2e::*;
use rand::Rng;

fn setup_items(db: &mut TestDb) {
    db.exec(
        "CREATE TABLE items (id int PRIMARY KEY, grp int, price numeric, tag text);
         INSERT INTO items SELECT g, g % 4, g * 2.5, CASE WHEN g % 5 = 0 THEN NULL ELSE 't' || (g % 3) END
         FROM generate_series(1, 100) g;",
    );
}

const BY_GROUP: &str = "SELECT grp, count(*) AS n, sum(price) AS total, max(tag) AS top_tag FROM items GROUP BY grp";

#[test]
fn insert_update_delete_truncate_each_followed_by_refresh() {
    let mut db = TestDb::new("each_dml");
    setup_items(&mut db);
    db.exec(&format!("SELECT pgtrickle.create_stream_table('by_group', $q${BY_GROUP}$q$)"));
    let steps = [
        "INSERT INTO items SELECT g, g % 6, g, 'new' FROM generate_series(101, 150) g",
        "UPDATE items SET price = price + 1, grp = grp + 10 WHERE id % 7 = 0",
        "DELETE FROM items WHERE id % 3 = 0",
        "TRUNCATE items",
        "INSERT INTO items VALUES (1, 1, 1, 'back')",
    ];
    for step in steps {
        db.exec(step);
        db.exec("SELECT pgtrickle.refresh_stream_table('by_group')");
        assert_st_matches_query(&mut db.client, "by_group", BY_GROUP);
    }
    assert_eq!(count(&mut db, "by_group"), 1);
}

#[test]
fn change_buffer_holds_signed_row_images_and_is_trimmed_by_refresh() {
    let mut db = TestDb::new("buffer_rows");
    setup_items(&mut db);
    db.exec("SELECT pgtrickle.create_stream_table('all_items', 'SELECT id, price FROM items')");
    let buffer: String = db.scalar(
        "SELECT 'pgtrickle_changes.changes_' || 'items'::regclass::oid::text",
        &[],
    );
    assert_eq!(count(&mut db, &buffer), 0, "the initial population consumed nothing");
    // Four transactions (one batch would be one implicit transaction).
    for sql in ["INSERT INTO items VALUES (500, 1, 9, 'x')", "UPDATE items SET price = 0 WHERE id IN (1, 2)", "DELETE FROM items WHERE id = 3", "TRUNCATE items"] {
        db.exec(sql);
    }
    let actions: Vec<(String, Option<i32>)> = db
        .client
        .query(&format!("SELECT __pgt_action::text, id FROM {buffer} ORDER BY __pgt_txid, __pgt_action DESC, id"), &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        actions,
        vec![
            ("I".into(), Some(500)),
            ("I".into(), Some(1)),
            ("I".into(), Some(2)),
            ("D".into(), Some(1)),
            ("D".into(), Some(2)),
            ("D".into(), Some(3)),
            ("T".into(), None),
        ]
    );
    // Every buffer row carries its writer's transaction id, in commit-independent xid8 form.
    let distinct_txids: i64 = db.scalar(&format!("SELECT count(DISTINCT __pgt_txid) FROM {buffer}"), &[]);
    assert_eq!(distinct_txids, 4);
    db.exec("SELECT pgtrickle.refresh_stream_table('all_items')");
    assert_eq!(count(&mut db, &buffer), 0, "applied changes are trimmed");
    assert_st_matches_query(&mut db.client, "all_items", "SELECT id, price FROM items");
}

#[test]
fn changes_of_transactions_in_flight_during_a_refresh_are_kept_for_the_next() {
    let mut db = TestDb::new("in_flight");
    setup_items(&mut db);
    db.exec("SELECT pgtrickle.create_stream_table('all_items', 'SELECT id, price FROM items')");
    let buffer: String = db.scalar("SELECT 'pgtrickle_changes.changes_' || 'items'::regclass::oid::text", &[]);

    let mut writer = db.connect();
    writer.batch_execute("BEGIN; INSERT INTO items VALUES (900, 0, 1, 'late')").unwrap();
    // A refresh while the writer is in flight neither sees its row nor trims it.
    db.exec("INSERT INTO items VALUES (901, 0, 1, 'early')");
    db.exec("SELECT pgtrickle.refresh_stream_table('all_items')");
    assert_eq!(db.scalar::<i64>("SELECT count(*) FROM all_items WHERE id >= 900", &[]), 1);
    writer.batch_execute("COMMIT").unwrap();
    assert_eq!(count(&mut db, &buffer), 1, "the late writer's change waits for the next refresh");
    let frontier_contains_writer: bool = db.scalar(
        &format!("SELECT pg_visible_in_snapshot(__pgt_txid, (SELECT frontier FROM pgtrickle.pgt_stream_tables)) FROM {buffer}"),
        &[],
    );
    assert!(!frontier_contains_writer, "the frontier excludes the in-flight transaction");
    db.exec("SELECT pgtrickle.refresh_stream_table('all_items')");
    assert_eq!(count(&mut db, &buffer), 0);
    assert_st_matches_query(&mut db.client, "all_items", "SELECT id, price FROM items");
}

/// A refresh inside a transaction that itself changed the source applies those
/// changes (it reads them); its frontier records the transaction and command id,
/// so changes the same transaction makes after the refresh are not taken as
/// applied.
#[test]
fn own_transaction_writes_before_and_after_a_refresh() {
    let mut db = TestDb::new("own_xact");
    setup_items(&mut db);
    db.exec("SELECT pgtrickle.create_stream_table('all_items', 'SELECT id, price FROM items')");
    let buffer: String = db.scalar("SELECT 'pgtrickle_changes.changes_' || 'items'::regclass::oid::text", &[]);
    let consumed = "(CASE WHEN b.__pgt_txid = st.frontier_xid THEN b.cmin::text::bigint < st.frontier_cid \
                    ELSE pg_visible_in_snapshot(b.__pgt_txid, st.frontier) END)";
    db.exec("BEGIN");
    db.exec("INSERT INTO items VALUES (601, 0, 1, 'before')");
    // Another transaction commits after ours got its xid, so the refresh's
    // snapshot has xmax above our xid: pg_visible_in_snapshot would call our own
    // transaction visible, including the write after the refresh.
    db.connect().batch_execute("INSERT INTO items VALUES (600, 0, 1, 'other')").unwrap();
    db.exec("SELECT pgtrickle.refresh_stream_table('all_items')");
    let own_below_xmax: bool = db.scalar(
        "SELECT pg_current_xact_id() < pg_snapshot_xmax(frontier) FROM pgtrickle.pgt_stream_tables",
        &[],
    );
    assert!(own_below_xmax, "the test must exercise the own-xid-below-xmax case");
    assert_eq!(db.scalar::<i64>("SELECT count(*) FROM all_items WHERE id = 601", &[]), 1);
    db.exec("INSERT INTO items VALUES (602, 0, 1, 'after')");
    let own: bool = db.scalar("SELECT frontier_xid = pg_current_xact_id() FROM pgtrickle.pgt_stream_tables", &[]);
    assert!(own, "the frontier names the refreshing transaction");
    db.exec("COMMIT");
    let unconsumed: Vec<i32> = db.column(
        &format!("SELECT b.id FROM {buffer} b, pgtrickle.pgt_stream_tables st WHERE NOT COALESCE({consumed}, false) ORDER BY 1"),
        &[],
    );
    assert_eq!(unconsumed, vec![602], "only the write after the refresh is pending");
    db.exec("SELECT pgtrickle.refresh_stream_table('all_items')");
    assert_eq!(count(&mut db, &buffer), 0);
    assert_st_matches_query(&mut db.client, "all_items", "SELECT id, price FROM items");
}

#[test]
fn keyless_source_with_duplicate_rows() {
    let mut db = TestDb::new("keyless");
    db.exec(
        "CREATE TABLE events (kind text, n int);
         INSERT INTO events VALUES ('a', 1), ('a', 1), ('a', 1), ('b', NULL), ('b', NULL), (NULL, 2);",
    );
    let q = "SELECT kind, n FROM events";
    let q2 = "SELECT kind, count(*) AS c, sum(n) AS s FROM events GROUP BY kind";
    db.exec(&format!("SELECT pgtrickle.create_stream_table('ev', '{q}')"));
    db.exec(&format!("SELECT pgtrickle.create_stream_table('ev_counts', '{q2}')"));
    assert_eq!(count(&mut db, "ev"), 6);
    assert_st_matches_query(&mut db.client, "ev", q);
    // Delete one of three identical rows, duplicate more, update duplicates.
    db.exec(
        "DELETE FROM events WHERE ctid = (SELECT min(ctid) FROM events WHERE kind = 'a');
         INSERT INTO events SELECT kind, n FROM events WHERE kind = 'b';
         UPDATE events SET n = 7 WHERE kind IS NULL;
         SELECT pgtrickle.refresh_stream_table('ev'); SELECT pgtrickle.refresh_stream_table('ev_counts');",
    );
    assert_eq!(count(&mut db, "ev"), 7);
    assert_st_matches_query(&mut db.client, "ev", q);
    assert_st_matches_query(&mut db.client, "ev_counts", q2);
}

#[test]
fn views_are_followed_to_their_base_tables() {
    let mut db = TestDb::new("views");
    setup_items(&mut db);
    db.exec(
        "CREATE TABLE groups (grp int PRIMARY KEY, label text);
         INSERT INTO groups SELECT g, 'group ' || g FROM generate_series(0, 5) g;
         CREATE VIEW cheap AS SELECT * FROM items WHERE price < 100;
         CREATE VIEW cheap_labelled AS SELECT c.id, c.price, g.label FROM cheap c JOIN groups g USING (grp);",
    );
    let q = "SELECT label, count(*) AS n FROM cheap_labelled GROUP BY label";
    db.exec(&format!("SELECT pgtrickle.create_stream_table('labelled', '{q}')"));
    let deps: Vec<(String, String, bool)> = db
        .client
        .query(
            "SELECT source_relid::regclass::text, source_kind, is_direct FROM pgtrickle.pgt_dependencies ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        deps,
        vec![
            ("cheap".into(), "VIEW".into(), false),
            ("cheap_labelled".into(), "VIEW".into(), true),
            ("groups".into(), "TABLE".into(), false),
            ("items".into(), "TABLE".into(), false),
        ]
    );
    assert_eq!(buffer_count(&mut db), 2, "base tables are captured, views are not");
    db.exec(
        "UPDATE groups SET label = 'renamed' WHERE grp = 1; DELETE FROM items WHERE id < 10;
         SELECT pgtrickle.refresh_stream_table('labelled');",
    );
    assert_st_matches_query(&mut db.client, "labelled", q);
    // The view cannot be dropped while the stream table reads it.
    let err = db.expect_error("DROP VIEW cheap_labelled", "2BP01");
    assert!(err.contains("labelled"), "{err}");
}

#[test]
fn partitioned_source_captures_writes_through_parent_and_partitions() {
    let mut db = TestDb::new("partitions");
    db.exec(
        "CREATE TABLE sales (id int, region text, amount int) PARTITION BY LIST (region);
         CREATE TABLE sales_eu PARTITION OF sales FOR VALUES IN ('eu');
         CREATE TABLE sales_us PARTITION OF sales FOR VALUES IN ('us') PARTITION BY RANGE (id);
         CREATE TABLE sales_us_low PARTITION OF sales_us FOR VALUES FROM (MINVALUE) TO (1000);
         CREATE TABLE sales_us_high PARTITION OF sales_us FOR VALUES FROM (1000) TO (MAXVALUE);
         INSERT INTO sales SELECT g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END, g FROM generate_series(1, 2000) g;",
    );
    let q = "SELECT region, count(*) AS n, sum(amount) AS total FROM sales GROUP BY region";
    db.exec(&format!("SELECT pgtrickle.create_stream_table('by_region', '{q}')"));
    assert_eq!(capture_trigger_count(&mut db), 4 * 5, "parent, sub-parent and three leaves");
    let buffer: String = db.scalar("SELECT 'pgtrickle_changes.changes_' || 'sales'::regclass::oid::text", &[]);
    db.exec("INSERT INTO sales VALUES (5000, 'eu', 1)"); // via the parent
    db.exec("INSERT INTO sales_us_high VALUES (5001, 'us', 1)"); // directly into a leaf
    db.exec("UPDATE sales_us SET amount = 0 WHERE id < 10"); // through a sub-parent
    db.exec("UPDATE sales SET region = 'eu' WHERE id = 11"); // moves a row between partitions
    db.exec("DELETE FROM sales_eu WHERE id < 20");
    assert!(count(&mut db, &buffer) > 0);
    db.exec("SELECT pgtrickle.refresh_stream_table('by_region')");
    assert_st_matches_query(&mut db.client, "by_region", q);
    db.exec("TRUNCATE sales_us_low");
    assert_eq!(db.scalar::<i64>(&format!("SELECT count(*) FROM {buffer} WHERE __pgt_action = 'T'"), &[]), 1);
    db.exec("SELECT pgtrickle.refresh_stream_table('by_region')");
    assert_st_matches_query(&mut db.client, "by_region", q);
    db.exec("SELECT pgtrickle.drop_stream_table('by_region')");
    assert_eq!(capture_trigger_count(&mut db), 0);
    assert_eq!(buffer_count(&mut db), 0);
}

#[test]
fn stream_tables_sharing_a_source_share_one_buffer_until_the_last_is_dropped() {
    let mut db = TestDb::new("shared_source");
    setup_items(&mut db);
    let queries = [
        ("st_a", "SELECT id, price FROM items WHERE price > 50"),
        ("st_b", "SELECT grp, count(*) AS n FROM items GROUP BY grp"),
        ("st_c", "SELECT DISTINCT tag FROM items"),
    ];
    for (name, q) in queries {
        db.exec(&format!("SELECT pgtrickle.create_stream_table('{name}', '{q}')"));
    }
    assert_eq!(buffer_count(&mut db), 1);
    assert_eq!(capture_trigger_count(&mut db), 4);
    db.exec("UPDATE items SET price = price * 3 WHERE id % 2 = 0");
    db.exec("DELETE FROM items WHERE id > 90");
    // Refreshing one stream table does not trim rows the others still need.
    let buffer: String = db.scalar("SELECT 'pgtrickle_changes.changes_' || 'items'::regclass::oid::text", &[]);
    let pending = count(&mut db, &buffer);
    db.exec("SELECT pgtrickle.refresh_stream_table('st_a')");
    assert_eq!(count(&mut db, &buffer), pending);
    db.exec("SELECT pgtrickle.refresh_stream_table('st_b'); SELECT pgtrickle.refresh_stream_table('st_c')");
    assert_eq!(count(&mut db, &buffer), 0);
    for (name, q) in queries {
        assert_st_matches_query(&mut db.client, name, q);
    }
    db.exec("SELECT pgtrickle.drop_stream_table('st_b')");
    assert_eq!((buffer_count(&mut db), capture_trigger_count(&mut db)), (1, 4));
    db.exec("SELECT pgtrickle.drop_stream_table('st_a')");
    assert_eq!((buffer_count(&mut db), capture_trigger_count(&mut db)), (1, 4));
    db.exec("INSERT INTO items VALUES (777, 1, 1, 'zzz'); SELECT pgtrickle.refresh_stream_table('st_c')");
    assert_st_matches_query(&mut db.client, "st_c", queries[2].1);
    db.exec("SELECT pgtrickle.drop_stream_table('st_c')");
    assert_eq!((buffer_count(&mut db), capture_trigger_count(&mut db)), (0, 0));
    let leftovers: i64 = db.scalar(
        "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'pgtrickle_changes'",
        &[],
    );
    assert_eq!(leftovers, 0);
    assert_eq!(db.scalar::<i64>("SELECT count(*) FROM pgtrickle.pgt_change_tracking", &[]), 0);
}

#[test]
fn identifiers_that_need_quoting() {
    let mut db = TestDb::new("quoting");
    db.exec(
        r#"CREATE SCHEMA "Sales Dept";
           CREATE TABLE "Sales Dept"."Order Lines" ("Line ID" int PRIMARY KEY, "Unit Price" numeric, "we""ird" text, "SELECT" int);
           INSERT INTO "Sales Dept"."Order Lines" SELECT g, g * 1.5, 'q"' || (g % 3), g % 2 FROM generate_series(1, 50) g;"#,
    );
    let q = r#"SELECT "we""ird", "SELECT", sum("Unit Price") AS "Total Price" FROM "Sales Dept"."Order Lines" GROUP BY 1, 2"#;
    db.exec(&format!(r#"SELECT pgtrickle.create_stream_table('"Sales Dept"."Big ""Totals"""', $q${q}$q$)"#));
    let st = r#""Sales Dept"."Big ""Totals""""#;
    assert_st_matches_query(&mut db.client, st, q);
    let columns = pgt_testkit::visible_columns(&mut db.client, st);
    assert_eq!(columns, vec![r#""we""ird""#, r#""SELECT""#, r#""Total Price""#]);
    db.exec(r#"UPDATE "Sales Dept"."Order Lines" SET "Unit Price" = 0 WHERE "Line ID" < 10; DELETE FROM "Sales Dept"."Order Lines" WHERE "SELECT" = 1 AND "Line ID" > 40;"#);
    db.exec(r#"SELECT pgtrickle.refresh_stream_table('"Sales Dept"."Big ""Totals"""')"#);
    assert_st_matches_query(&mut db.client, st, q);
    db.exec(r#"SELECT pgtrickle.alter_stream_table('"Sales Dept"."Big ""Totals"""', schedule => '5m')"#);
    db.exec(r#"SELECT pgtrickle.drop_stream_table('"Sales Dept"."Big ""Totals"""')"#);
    assert_eq!(stream_table_count(&mut db), 0);
    assert_eq!(buffer_count(&mut db), 0);
}

#[test]
fn unqualified_names_mean_schema_public_and_case_folds() {
    let mut db = TestDb::new("case_fold");
    setup_items(&mut db);
    db.exec("CREATE SCHEMA other; SET search_path = other, public;");
    db.exec("SELECT pgtrickle.create_stream_table('MyTotals', 'SELECT grp FROM items')");
    assert!(db.scalar::<bool>("SELECT to_regclass('public.mytotals') IS NOT NULL", &[]));
    db.exec("SELECT pgtrickle.refresh_stream_table('PUBLIC.MYTOTALS')");
    assert_st_matches_query(&mut db.client, "public.mytotals", "SELECT grp FROM public.items");
}

#[test]
fn stream_table_over_stream_table() {
    let mut db = TestDb::new("st_on_st");
    setup_items(&mut db);
    db.exec(&format!("SELECT pgtrickle.create_stream_table('by_group', $q${BY_GROUP}$q$)"));
    let top = "SELECT grp, total FROM by_group WHERE total > 2000";
    db.exec(&format!("SELECT pgtrickle.create_stream_table('big_groups', '{top}')"));
    let kind: String = db.scalar(
        "SELECT source_kind FROM pgtrickle.pgt_dependencies d JOIN pgtrickle.pgt_stream_tables s USING (pgt_id) \
         WHERE s.pgt_relid = 'big_groups'::regclass",
        &[],
    );
    assert_eq!(kind, "STREAM_TABLE");
    db.exec("UPDATE items SET price = price * 10 WHERE grp = 2");
    db.exec("SELECT pgtrickle.refresh_stream_table('by_group'); SELECT pgtrickle.refresh_stream_table('big_groups')");
    assert_st_matches_query(&mut db.client, "by_group", BY_GROUP);
    assert_st_matches_query(&mut db.client, "big_groups", top);
    let err = db.expect_error("SELECT pgtrickle.drop_stream_table('by_group')", "2BP01");
    assert!(err.contains("big_groups"), "{err}");
    db.exec("SELECT pgtrickle.drop_stream_table('big_groups'); SELECT pgtrickle.drop_stream_table('by_group')");
    assert_eq!(buffer_count(&mut db), 0);
}

#[test]
fn dropping_storage_directly_or_by_cascade_cleans_up() {
    let mut db = TestDb::new("drop_behind_back");
    setup_items(&mut db);
    db.exec("SELECT pgtrickle.create_stream_table('a', 'SELECT id FROM items')");
    db.exec("SELECT pgtrickle.create_stream_table('b', 'SELECT grp FROM items')");
    db.exec("DROP TABLE a");
    assert_eq!(stream_table_count(&mut db), 1);
    assert_eq!(buffer_count(&mut db), 1);
    db.exec("DROP TABLE items CASCADE");
    assert_eq!(stream_table_count(&mut db), 0);
    assert_eq!(buffer_count(&mut db), 0);
    assert_eq!(db.scalar::<i64>("SELECT count(*) FROM pgtrickle.pgt_change_tracking", &[]), 0);
    // A schema dropped with CASCADE takes its stream tables along, catalog included.
    db.exec("CREATE SCHEMA s; CREATE TABLE s.t (x int); INSERT INTO s.t VALUES (1);");
    db.exec("SELECT pgtrickle.create_stream_table('s.st', 'SELECT x FROM s.t')");
    db.exec("DROP SCHEMA s CASCADE");
    assert_eq!(stream_table_count(&mut db), 0);
    assert_eq!(buffer_count(&mut db), 0);
    assert_eq!(capture_trigger_count(&mut db), 0);
}

/// Randomized DML cycles over keyed and keyless sources with NULLs and duplicates;
/// after every refresh each stream table equals its query. Replay a failure with
/// the printed seed: `PGT_SEED=<seed> make test`.
#[test]
fn random_dml_cycles_keep_every_stream_table_equal_to_its_query() {
    let (seed, mut rng) = pg_trickle_e2e::seeded("random_dml_cycles");
    let mut db = TestDb::new("random_cycles");
    db.exec(
        "CREATE TABLE c (id int PRIMARY KEY, region text, vip bool);
         CREATE TABLE o (id int PRIMARY KEY, cust int, amount int, note text);
         CREATE TABLE log (k int, v text);
         INSERT INTO c SELECT g, (ARRAY['n','s','e',NULL])[1 + g % 4], g % 5 = 0 FROM generate_series(1, 30) g;
         INSERT INTO o SELECT g, 1 + g % 35, g % 50, CASE WHEN g % 9 = 0 THEN NULL ELSE 'x' END FROM generate_series(1, 300) g;
         INSERT INTO log SELECT g % 10, (ARRAY['a','b',NULL])[1 + g % 3] FROM generate_series(1, 100) g;",
    );
    let queries = [
        ("r_join", "SELECT c.region, o.amount FROM o JOIN c ON c.id = o.cust"),
        ("r_left", "SELECT c.id, o.id AS oid, o.note FROM c LEFT JOIN o ON o.cust = c.id AND o.amount > 40"),
        ("r_agg", "SELECT c.region, count(*) AS n, sum(o.amount) AS total, min(o.amount) AS lo FROM o JOIN c ON c.id = o.cust GROUP BY c.region HAVING count(*) > 5"),
        ("r_scalar", "SELECT count(*) AS n, sum(amount) AS s, avg(amount) AS a FROM o"),
        ("r_distinct", "SELECT DISTINCT k, v FROM log"),
        ("r_keyless", "SELECT k, v FROM log WHERE k < 7"),
        ("r_union", "SELECT cust AS x FROM o WHERE amount < 5 UNION ALL SELECT k FROM log"),
    ];
    for (name, q) in queries {
        db.exec(&format!("SELECT pgtrickle.create_stream_table('{name}', $q${q}$q$)"));
    }
    let mut next_id = 10_000;
    for cycle in 0..20 {
        let statements = rng.random_range(1..6);
        for _ in 0..statements {
            let sql = match rng.random_range(0..10) {
                0 | 1 => {
                    next_id += 1;
                    format!("INSERT INTO o VALUES ({next_id}, {}, {}, 'n')", rng.random_range(1..40), rng.random_range(0..60))
                }
                2 => format!("UPDATE o SET amount = amount + {} WHERE id % 17 = {}", rng.random_range(-5..5), rng.random_range(0..17)),
                3 => format!("UPDATE o SET cust = {} WHERE id % 23 = {}", rng.random_range(1..40), rng.random_range(0..23)),
                4 => format!("DELETE FROM o WHERE id % 31 = {}", rng.random_range(0..31)),
                5 => format!("UPDATE c SET region = (ARRAY['n','s','w',NULL])[{}] WHERE id = {}", rng.random_range(1..5), rng.random_range(1..31)),
                6 => format!("INSERT INTO log SELECT k, v FROM log WHERE k = {} LIMIT 3", rng.random_range(0..10)),
                7 => format!("DELETE FROM log WHERE ctid IN (SELECT ctid FROM log WHERE k = {} LIMIT 2)", rng.random_range(0..10)),
                8 => format!("UPDATE log SET v = NULL WHERE k = {}", rng.random_range(0..10)),
                _ => {
                    if rng.random_range(0..4) == 0 {
                        "TRUNCATE log; INSERT INTO log VALUES (1, 'a'), (1, 'a')".to_string()
                    } else {
                        format!("UPDATE o SET note = NULL WHERE cust = {}", rng.random_range(1..40))
                    }
                }
            };
            db.exec(&sql);
        }
        for (name, q) in queries {
            db.exec(&format!("SELECT pgtrickle.refresh_stream_table('{name}')"));
            let (only_st, only_q) = pgt_testkit::multiset_difference(&mut db.client, name, q);
            assert!(
                only_st.is_empty() && only_q.is_empty(),
                "seed {seed}, cycle {cycle}: {name} differs: only in st {only_st:?}, only in query {only_q:?}"
            );
        }
    }
}

/// A FULL refresh from a session with other TimeZone/DateStyle/float settings
/// finds the same rows: row identities come from the typed values, not their
/// text, so an unchanged result writes nothing (when refreshes write only
/// differences: `pg_trickle.full_refresh_swap` off).
#[test]
fn full_row_identities_do_not_depend_on_session_settings() {
    let mut db = TestDb::new("full_identity_settings");
    db.exec("SET pg_trickle.full_refresh_swap = off");
    db.exec(
        "CREATE TABLE e (id int PRIMARY KEY, at timestamptz, x float8);
         INSERT INTO e SELECT g, '2026-01-01 12:00+00'::timestamptz + g * interval '1 hour', g / 3.0 FROM generate_series(1, 50) g;
         SELECT pgtrickle.create_stream_table('ev', 'SELECT id, at, x FROM e ORDER BY id LIMIT 1000', refresh_mode => 'FULL');",
    );
    db.exec(
        "SET TimeZone = 'Asia/Tokyo'; SET DateStyle = 'German'; SET extra_float_digits = 0;
         SELECT pgtrickle.refresh_stream_table('ev');",
    );
    let (inserted, deleted): (i64, i64) = {
        let r = db.client.query_one("SELECT rows_inserted, rows_deleted FROM pgtrickle.refresh_history('ev', 1)", &[]).unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((inserted, deleted), (0, 0), "nothing changed, nothing written");
    db.exec("RESET TimeZone; RESET DateStyle; RESET extra_float_digits; UPDATE e SET x = x + 1 WHERE id = 1");
    db.exec("SELECT pgtrickle.refresh_stream_table('ev')");
    let (inserted, deleted): (i64, i64) = {
        let r = db.client.query_one("SELECT rows_inserted, rows_deleted FROM pgtrickle.refresh_history('ev', 1)", &[]).unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((inserted, deleted), (1, 1), "one row changed");
    assert_st_matches_query(&mut db.client, "ev", "SELECT id, at, x FROM e");
}

/// A FULL stream table that nothing follows row by row is recomputed
/// wholesale (a new heap swapped in, like REFRESH MATERIALIZED VIEW): every row
/// written, identities the same as the row-by-row MERGE would give (so a
/// later MERGE writes only what changed, copies of equal rows included), no
/// index on the row identity. A downstream stream table, a publication or a
/// trigger of the user's makes it write only the differences instead.
#[test]
fn full_refreshes_swap_in_new_contents_when_nothing_follows_the_rows() {
    let mut db = TestDb::new("full_swap");
    db.exec(
        "CREATE TABLE k (id int PRIMARY KEY, g int, v text, amt numeric, at timestamptz, big bigint);
         INSERT INTO k SELECT x, x % 7, 'v' || (x % 5), (x % 3) / 4.0, '2026-01-01'::timestamptz + (x % 4) * interval '1 day',
                              CASE WHEN x % 9 = 0 THEN NULL ELSE 5000000000 + x % 2 END
         FROM generate_series(1, 500) x;
         SELECT pgtrickle.create_stream_table('dups', 'SELECT g, v, amt, at, big FROM k ORDER BY g LIMIT 100000');",
    );
    let query = "SELECT g, v, amt, at, big FROM k";
    let last = |db: &mut TestDb| -> (String, i64, i64) {
        let r = db.client.query_one("SELECT action, rows_inserted, rows_deleted FROM pgtrickle.refresh_history('dups', 1)", &[]).unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    let row_id_index = |db: &mut TestDb, table: &str| -> i64 {
        db.scalar(
            "SELECT count(*) FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] \
             WHERE i.indrelid = $1::text::regclass AND a.attname = '__pgt_row_id'",
            &[&table],
        )
    };
    db.exec("UPDATE k SET v = 'changed' WHERE id = 3; SELECT pgtrickle.refresh_stream_table('dups')");
    assert_eq!(last(&mut db), ("FULL".to_string(), 500, 500), "every row written");
    assert_st_matches_query(&mut db.client, "dups", query);
    assert_eq!(row_id_index(&mut db, "dups"), 0, "a FULL stream table has no identity index");
    let distinct: i64 = db.scalar("SELECT count(DISTINCT __pgt_row_id) FROM dups", &[]);
    assert_eq!(distinct, 500, "copies of equal rows have identities of their own");
    // (Equal rows were first stored as first copies, found repeated, and the
    // heap dropped and filled again counting copies: no heap is left behind.)
    let stray: i64 = db.scalar("SELECT count(*) FROM pg_class WHERE relname LIKE 'pg\\_temp\\_%'", &[]);
    assert_eq!(stray, 0, "no transient heap left behind");
    // Rows that are all distinct keep the identities of first copies.
    db.exec(
        "SELECT pgtrickle.create_stream_table('distinct_rows', 'SELECT id, v, amt FROM k', refresh_mode => 'FULL');
         SELECT pgtrickle.refresh_stream_table('distinct_rows');
         SET pg_trickle.full_refresh_swap = off; SELECT pgtrickle.refresh_stream_table('distinct_rows'); RESET pg_trickle.full_refresh_swap",
    );
    let written: (i64, i64) = {
        let r = db.client.query_one("SELECT rows_inserted, rows_deleted FROM pgtrickle.refresh_history('distinct_rows', 1)", &[]).unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(written, (0, 0), "the MERGE finds every identity the swap gave");
    let swapped: i64 = db.scalar("SELECT rows_inserted FROM pgtrickle.refresh_history('distinct_rows', 2) ORDER BY refresh_id LIMIT 1", &[]);
    assert_eq!(swapped, 500, "the refresh before swapped in every row");
    assert_st_matches_query(&mut db.client, "distinct_rows", "SELECT id, v, amt FROM k");
    db.exec("SELECT pgtrickle.drop_stream_table('distinct_rows')");

    // The same identities as the MERGE computes: switching to it, nothing to write.
    db.exec("SET pg_trickle.full_refresh_swap = off; SELECT pgtrickle.refresh_stream_table('dups')");
    assert_eq!(last(&mut db), ("FULL".to_string(), 0, 0));
    db.exec("UPDATE k SET v = 'again' WHERE id IN (4, 5); SELECT pgtrickle.refresh_stream_table('dups')");
    assert_eq!(last(&mut db), ("FULL".to_string(), 2, 2));
    assert_st_matches_query(&mut db.client, "dups", query);
    db.exec("RESET pg_trickle.full_refresh_swap");

    // A stream table reading it: only real changes from now on.
    db.exec(
        "SELECT pgtrickle.create_stream_table('per_g', 'SELECT g, count(*) AS n FROM dups GROUP BY g');
         UPDATE k SET g = 6 WHERE id = 10; SELECT pgtrickle.refresh_stream_table('dups')",
    );
    assert_eq!(last(&mut db), ("FULL".to_string(), 1, 1));
    assert_eq!(row_id_index(&mut db, "dups"), 1, "a FULL stream table DIFFERENTIAL readers capture keeps its identity index");
    db.exec("SELECT pgtrickle.refresh_stream_table('per_g')");
    let action: String = db.scalar("SELECT action FROM pgtrickle.refresh_history('per_g', 1)", &[]);
    assert_eq!(action, "DIFFERENTIAL");
    assert_st_matches_query(&mut db.client, "per_g", "SELECT g, count(*) AS n FROM k GROUP BY g");
    db.exec("SELECT pgtrickle.drop_stream_table('per_g')");

    // Refreshed from a query that is reading it: its storage is not swapped
    // under that scan (the rows are written through the MERGE).
    db.exec("UPDATE k SET v = 'scanned' WHERE id = 12");
    let refreshed: i64 = db.scalar("SELECT count(*) FROM (SELECT pgtrickle.refresh_stream_table('dups') FROM dups LIMIT 1) x", &[]);
    assert_eq!(refreshed, 1);
    assert_eq!(last(&mut db), ("FULL".to_string(), 1, 1), "only the changed row written");
    assert_st_matches_query(&mut db.client, "dups", query);

    // A publication replicating it: row by row.
    db.exec(
        "ALTER TABLE dups REPLICA IDENTITY FULL; CREATE PUBLICATION pub_dups FOR TABLE dups;
         UPDATE k SET v = 'pub' WHERE id = 11; SELECT pgtrickle.refresh_stream_table('dups')",
    );
    assert_eq!(last(&mut db), ("FULL".to_string(), 1, 1));
    db.exec("DROP PUBLICATION pub_dups; SELECT pgtrickle.refresh_stream_table('dups')");
    assert_eq!(last(&mut db).1, 500);
    assert_st_matches_query(&mut db.client, "dups", query);

    // A DIFFERENTIAL stream table keeps its identity index.
    db.exec("SELECT pgtrickle.create_stream_table('keyed', 'SELECT id, v FROM k')");
    assert_eq!(row_id_index(&mut db, "keyed"), 1);
}
