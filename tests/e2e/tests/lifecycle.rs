//! Create / refresh / alter / drop of stream tables, and the options they take.

use pg_trickle_e2e::*;

const ORDERS: &str = "
    CREATE TABLE orders (id int PRIMARY KEY, customer text NOT NULL, amount numeric(12,2), status text);
    INSERT INTO orders SELECT g, 'c' || (g % 7), g * 1.25, CASE WHEN g % 3 = 0 THEN 'open' ELSE 'done' END
    FROM generate_series(1, 200) g;";

const TOTALS: &str = "SELECT customer, sum(amount) AS total, count(*) AS orders FROM orders GROUP BY customer";

#[test]
fn create_populates_and_refresh_follows_dml() {
    let mut db = TestDb::new("create_refresh");
    db.exec(ORDERS);
    db.exec(&format!("SELECT pgtrickle.create_stream_table('totals', $q${TOTALS}$q$)"));
    assert_eq!(count(&mut db, "totals"), 7);
    assert_st_matches_query(&mut db.client, "totals", TOTALS);

    db.exec("INSERT INTO orders VALUES (1000, 'new', 10, 'open'); UPDATE orders SET amount = 0 WHERE id <= 10; DELETE FROM orders WHERE id BETWEEN 50 AND 60;");
    // Not refreshed yet: the stream table still shows the old result.
    assert_eq!(count(&mut db, "totals"), 7);
    db.exec("SELECT pgtrickle.refresh_stream_table('totals')");
    assert_eq!(count(&mut db, "totals"), 8);
    assert_st_matches_query(&mut db.client, "totals", TOTALS);

    // History: the initial population (always a full computation) and the manual
    // refresh, differential under AUTO for this query.
    let history: Vec<(String, String, String)> = db
        .client
        .query("SELECT action, status, initiated_by FROM pgtrickle.pgt_refresh_history ORDER BY refresh_id", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        history,
        vec![
            ("FULL".into(), "SUCCESS".into(), "INITIAL".into()),
            ("DIFFERENTIAL".into(), "SUCCESS".into(), "MANUAL".into())
        ]
    );
}

#[test]
fn storage_has_the_query_columns_and_a_hidden_row_id() {
    let mut db = TestDb::new("storage_shape");
    db.exec(ORDERS);
    db.exec("SELECT pgtrickle.create_stream_table('shaped', 'SELECT id, amount, status::varchar(10) AS s, now()::date AS d FROM orders')");
    let columns: Vec<(String, String)> = db
        .client
        .query(
            "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute \
             WHERE attrelid = 'shaped'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        columns,
        vec![
            ("id".into(), "integer".into()),
            ("amount".into(), "numeric(12,2)".into()),
            ("s".into(), "character varying(10)".into()),
            ("d".into(), "date".into()),
            ("__pgt_row_id".into(), "bigint".into()),
        ]
    );
    let unique_index: bool = db.scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] \
         WHERE i.indrelid = 'shaped'::regclass AND i.indisunique AND a.attname = '__pgt_row_id')",
        &[],
    );
    assert!(unique_index);
    let owner: String = db.scalar("SELECT relowner::regrole::text FROM pg_class WHERE oid = 'shaped'::regclass", &[]);
    assert_eq!(owner, "postgres");
    assert_st_matches_query(&mut db.client, "shaped", "SELECT id, amount, status::varchar(10) AS s, now()::date AS d FROM orders");
}

#[test]
fn initialize_false_leaves_the_table_empty_until_the_first_refresh() {
    let mut db = TestDb::new("no_init");
    db.exec(ORDERS);
    db.exec(&format!("SELECT pgtrickle.create_stream_table('totals', $q${TOTALS}$q$, initialize => false)"));
    assert_eq!(count(&mut db, "totals"), 0);
    let populated: bool = db.scalar("SELECT is_populated FROM pgtrickle.pgt_stream_tables", &[]);
    assert!(!populated);
    db.exec("SELECT pgtrickle.refresh_stream_table('totals')");
    assert_st_matches_query(&mut db.client, "totals", TOTALS);
}

#[test]
fn options_are_stored_canonically_and_altered() {
    let mut db = TestDb::new("options");
    db.exec(ORDERS);
    db.exec(&format!(
        "SELECT pgtrickle.create_stream_table('totals', $q${TOTALS}$q$, schedule => '1h30m', refresh_mode => 'full', \
         diamond_consistency => 'NONE', diamond_schedule_policy => 'slowest', cdc_mode => 'trigger', append_only => true)"
    ));
    let row = db
        .client
        .query_one(
            "SELECT schedule, refresh_mode, effective_refresh_mode, status, diamond_consistency, diamond_schedule_policy, \
                    cdc_mode, append_only, pooler_compatibility_mode FROM pgtrickle.pgt_stream_tables",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "1h 30m");
    assert_eq!(row.get::<_, String>(1), "FULL");
    assert_eq!(row.get::<_, String>(2), "FULL");
    assert_eq!(row.get::<_, String>(3), "ACTIVE");
    assert_eq!(row.get::<_, String>(4), "none");
    assert_eq!(row.get::<_, String>(5), "slowest");
    assert_eq!(row.get::<_, Option<String>>(6).as_deref(), Some("trigger"));
    assert!(row.get::<_, bool>(7));
    assert!(!row.get::<_, bool>(8));

    db.exec("SELECT pgtrickle.alter_stream_table('totals', schedule => '*/5 * * * *', status => 'suspended', refresh_mode => 'AUTO')");
    let (schedule, status, mode): (String, String, String) = {
        let r = db.client.query_one("SELECT schedule, status, refresh_mode FROM pgtrickle.pgt_stream_tables", &[]).unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!((schedule.as_str(), status.as_str(), mode.as_str()), ("*/5 * * * *", "SUSPENDED", "AUTO"));
    db.exec("SELECT pgtrickle.alter_stream_table('totals', status => 'ACTIVE', schedule => 'calculated')");
    assert_eq!(db.scalar::<String>("SELECT status FROM pgtrickle.pgt_stream_tables", &[]), "ACTIVE");
    assert_eq!(db.scalar::<String>("SELECT schedule FROM pgtrickle.pgt_stream_tables", &[]), "calculated");
}

#[test]
fn differential_mode_is_effective_for_a_differentiable_query() {
    let mut db = TestDb::new("differential_mode");
    db.exec(ORDERS);
    db.exec(&format!("SELECT pgtrickle.create_stream_table('totals', $q${TOTALS}$q$, refresh_mode => 'DIFFERENTIAL')"));
    let (mode, effective): (String, String) = {
        let r = db.client.query_one("SELECT refresh_mode, effective_refresh_mode FROM pgtrickle.pgt_stream_tables", &[]).unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((mode.as_str(), effective.as_str()), ("DIFFERENTIAL", "DIFFERENTIAL"));
    db.exec("DELETE FROM orders WHERE id % 10 = 0; SELECT pgtrickle.refresh_stream_table('totals')");
    let action: String = db.scalar("SELECT action FROM pgtrickle.pgt_refresh_history ORDER BY refresh_id DESC LIMIT 1", &[]);
    assert_eq!(action, "DIFFERENTIAL");
    assert_st_matches_query(&mut db.client, "totals", TOTALS);
}

#[test]
fn alter_query_with_same_columns_keeps_the_table() {
    let mut db = TestDb::new("alter_same_cols");
    db.exec(ORDERS);
    db.exec("CREATE TABLE refunds (id int PRIMARY KEY, customer text, amount numeric(12,2))");
    db.exec("INSERT INTO refunds VALUES (1, 'c1', 5), (2, 'c2', 7)");
    db.exec(&format!("SELECT pgtrickle.create_stream_table('totals', $q${TOTALS}$q$)"));
    db.exec("CREATE INDEX totals_customer ON totals (customer); GRANT SELECT ON totals TO PUBLIC");
    let relid_before: u32 = db.scalar("SELECT 'totals'::regclass::oid", &[]);
    let new_query = "SELECT customer, -sum(amount) AS total, count(*) AS orders FROM refunds GROUP BY customer";
    db.exec(&format!("SELECT pgtrickle.alter_stream_table('totals', query => $q${new_query}$q$)"));
    let relid_after: u32 = db.scalar("SELECT 'totals'::regclass::oid", &[]);
    assert_eq!(relid_before, relid_after, "same columns: the storage table is kept");
    assert!(db.scalar::<bool>("SELECT EXISTS (SELECT 1 FROM pg_class WHERE relname = 'totals_customer')", &[]));
    assert_st_matches_query(&mut db.client, "totals", new_query);
    // The old source is no longer captured; the new one is.
    let sources: Vec<String> = db.column("SELECT source_relid::regclass::text FROM pgtrickle.pgt_dependencies", &[]);
    assert_eq!(sources, vec!["refunds".to_string()]);
    assert_eq!(buffer_count(&mut db), 1);
    // orders is no longer a dependency: it can be dropped.
    db.exec("DROP TABLE orders");
    db.exec("INSERT INTO refunds VALUES (3, 'c9', 1); SELECT pgtrickle.refresh_stream_table('totals')");
    assert_st_matches_query(&mut db.client, "totals", new_query);
}

#[test]
fn alter_query_with_new_columns_rebuilds_the_table() {
    let mut db = TestDb::new("alter_new_cols");
    db.exec(ORDERS);
    db.exec(&format!("SELECT pgtrickle.create_stream_table('totals', $q${TOTALS}$q$)"));
    let new_query = "SELECT status, customer, max(amount) AS biggest FROM orders GROUP BY status, customer";
    db.exec(&format!("SELECT pgtrickle.alter_stream_table('totals', query => $q${new_query}$q$)"));
    let columns: Vec<String> = pgt_testkit::visible_columns(&mut db.client, "totals");
    assert_eq!(columns, vec!["status", "customer", "biggest"]);
    assert_st_matches_query(&mut db.client, "totals", new_query);
    assert_eq!(stream_table_count(&mut db), 1);
    assert!(db.scalar::<bool>("SELECT pgt_relid = 'totals'::regclass FROM pgtrickle.pgt_stream_tables", &[]));
    db.exec("UPDATE orders SET amount = amount * 100 WHERE id = 3; SELECT pgtrickle.refresh_stream_table('totals')");
    assert_st_matches_query(&mut db.client, "totals", new_query);
}

#[test]
fn drop_removes_table_catalog_and_capture() {
    let mut db = TestDb::new("drop");
    db.exec(ORDERS);
    db.exec(&format!("SELECT pgtrickle.create_stream_table('totals', $q${TOTALS}$q$)"));
    assert_eq!(buffer_count(&mut db), 1);
    assert_eq!(capture_trigger_count(&mut db), 4);
    db.exec("SELECT pgtrickle.drop_stream_table('totals')");
    assert!(!db.scalar::<bool>("SELECT to_regclass('totals') IS NOT NULL", &[]));
    assert_eq!(stream_table_count(&mut db), 0);
    assert_eq!(buffer_count(&mut db), 0);
    assert_eq!(capture_trigger_count(&mut db), 0);
    assert_eq!(db.scalar::<i64>("SELECT count(*) FROM pgtrickle.pgt_refresh_history", &[]), 0);
    // The source works as before.
    db.exec("INSERT INTO orders VALUES (5000, 'x', 1, 'open'); DROP TABLE orders");
}

#[test]
fn if_not_exists_and_create_or_replace() {
    let mut db = TestDb::new("if_not_exists");
    db.exec(ORDERS);
    db.exec(&format!("SELECT pgtrickle.create_stream_table_if_not_exists('totals', $q${TOTALS}$q$)"));
    db.exec(&format!("SELECT pgtrickle.create_stream_table_if_not_exists('totals', $q${TOTALS} HAVING count(*) > 1000$q$)"));
    assert_st_matches_query(&mut db.client, "totals", TOTALS);
    let refreshes: i64 = db.scalar("SELECT count(*) FROM pgtrickle.pgt_refresh_history", &[]);

    // Identical: nothing happens, not even a catalog write (dbt runs this
    // for every unchanged model).
    let row_version = "SELECT xmin::text || ' ' || updated_at::text FROM pgtrickle.pgt_stream_tables";
    let before = db.scalar::<String>(row_version, &[]);
    db.exec(&format!("SELECT pgtrickle.create_or_replace_stream_table('totals', $q${TOTALS}$q$)"));
    assert_eq!(db.scalar::<i64>("SELECT count(*) FROM pgtrickle.pgt_refresh_history", &[]), refreshes);
    assert_eq!(db.scalar::<String>(row_version, &[]), before, "an identical create_or_replace wrote the catalog row");
    // Options differ: altered in place.
    db.exec(&format!("SELECT pgtrickle.create_or_replace_stream_table('totals', $q${TOTALS}$q$, schedule => '10m')"));
    assert_eq!(db.scalar::<String>("SELECT schedule FROM pgtrickle.pgt_stream_tables", &[]), "10m");
    assert_eq!(db.scalar::<i64>("SELECT count(*) FROM pgtrickle.pgt_refresh_history", &[]), refreshes);
    // Query differs: rebuilt.
    let q2 = "SELECT customer, count(*) AS orders FROM orders WHERE status = 'open' GROUP BY customer";
    db.exec(&format!("SELECT pgtrickle.create_or_replace_stream_table('totals', $q${q2}$q$)"));
    assert_st_matches_query(&mut db.client, "totals", q2);
    // Not existing: created.
    db.exec(&format!("SELECT pgtrickle.create_or_replace_stream_table('other', $q${TOTALS}$q$)"));
    assert_st_matches_query(&mut db.client, "other", TOTALS);
}

#[test]
fn explain_st_shows_tree_strategies_and_sql() {
    let mut db = TestDb::new("explain");
    db.exec(ORDERS);
    db.exec(
        "CREATE TABLE customers (name text PRIMARY KEY, tier int);
         INSERT INTO customers SELECT 'c' || g, g FROM generate_series(0, 6) g;
         SELECT pgtrickle.create_stream_table('t', 'SELECT c.tier, count(*) AS n, sum(o.amount) AS total, min(o.amount) AS lo \
                FROM orders o JOIN customers c ON c.name = o.customer GROUP BY c.tier HAVING count(*) > 1');
         SELECT pgtrickle.create_stream_table('f', 'SELECT s.id FROM (SELECT id FROM orders ORDER BY id LIMIT 5) s');",
    );
    let text: String = db.scalar("SELECT pgtrickle.explain_st('t')", &[]);
    for needle in [
        "refresh mode: AUTO (effective: DIFFERENTIAL)",
        "Aggregate — GROUP BY 1 key(s), HAVING",
        "count(...) — algebraic",
        "min(...) — merge; rescan group when the extremum leaves",
        "Join block (2 inputs",
        "Scan \"public\".\"orders\" [key (id)]",
        "full SQL:",
        "delta SQL (every input changed):",
        "MERGE INTO \"public\".\"t\"",
    ] {
        assert!(text.contains(needle), "explain_st lacks {needle:?}:\n{text}");
    }
    let text: String = db.scalar("SELECT pgtrickle.explain_st('f')", &[]);
    assert!(text.contains("effective: FULL") && text.contains("DIFFERENTIAL refresh does not support LIMIT / OFFSET"), "{text}");
    db.expect_error("SELECT pgtrickle.explain_st('nope')", "42P01");

    // explain_refresh_mode: the same facts as one row.
    let row = db.client.query_one("SELECT * FROM pgtrickle.explain_refresh_mode('f')", &[]).unwrap();
    let (requested, effective, reason): (String, String, String) = (row.get(0), row.get(1), row.get(2));
    assert_eq!((requested.as_str(), effective.as_str()), ("AUTO", "FULL"));
    assert!(reason.contains("does not support LIMIT / OFFSET"), "{reason}");
    let reason: String = db.scalar("SELECT reason FROM pgtrickle.explain_refresh_mode('t')", &[]);
    assert!(reason.starts_with("the defining query is maintained differentially"), "{reason}");
    db.exec(
        "SELECT pgtrickle.alter_stream_table('t', refresh_mode => 'FULL');
         SET pg_trickle.block_source_ddl = off; ALTER TABLE customers RENAME COLUMN tier TO level;",
    );
    let reason: String = db.scalar("SELECT reason FROM pgtrickle.explain_refresh_mode('t')", &[]);
    assert!(reason.starts_with("FULL was requested") && reason.contains("next refresh reinitializes it"), "{reason}");
    db.exec("SELECT pgtrickle.refresh_stream_table('t')");
    let reason: String = db.scalar("SELECT reason FROM pgtrickle.explain_refresh_mode('t')", &[]);
    assert_eq!(reason, "FULL was requested");
    assert_st_matches_query(
        &mut db.client,
        "t",
        "SELECT c.level AS tier, count(*) AS n, sum(o.amount) AS total, min(o.amount) AS lo \
         FROM orders o JOIN customers c ON c.name = o.customer GROUP BY c.level HAVING count(*) > 1",
    );
    db.expect_error("SELECT * FROM pgtrickle.explain_refresh_mode('nope')", "42P01");
}

/// `pgtrickle.stream_table_definitions()` recreates every stream table after a
/// logical restore, following docs/OPERATIONS.md (Backup and restore) step by
/// step with the real pg_dump and pg_restore: same modes, status, contents,
/// owner, indexes, grants and comment; a stream table altered to read one
/// created after it comes out in dependency order.
#[test]
fn stream_table_definitions_recreate_stream_tables() {
    let mut db = TestDb::new("definitions");
    let owner = db.create_role("owner", "NOSUPERUSER");
    let reader = db.create_role("reader", "NOSUPERUSER");
    db.exec(&format!(
        "CREATE SCHEMA s; GRANT USAGE, CREATE ON SCHEMA s TO \"{owner}\";
         CREATE TABLE s.orders (id int PRIMARY KEY, cust int NOT NULL, amount numeric NOT NULL);
         INSERT INTO s.orders SELECT g, g % 11, g % 37 FROM generate_series(1, 500) g;
         GRANT SELECT, TRIGGER ON s.orders TO \"{owner}\";"
    ));
    let mut o = db.connect_as(&owner);
    o.batch_execute(&format!(
        "SELECT pgtrickle.create_stream_table('s.later', 'SELECT cust, sum(amount) AS total FROM s.orders GROUP BY cust',
                                             refresh_mode => 'DIFFERENTIAL', schedule => '5m');
         CREATE INDEX later_total ON s.later (total);
         GRANT SELECT ON s.later TO \"{reader}\";
         COMMENT ON TABLE s.later IS 'totals per customer';"
    ))
    .expect("stream table of a non-superuser");
    db.exec(
        "SELECT pgtrickle.create_stream_table('s.first', 'SELECT cust, count(*) AS n FROM s.orders GROUP BY cust', refresh_mode => 'FULL');
         SELECT pgtrickle.create_stream_table('s.top', 'SELECT cust, total FROM s.later WHERE total > 800', refresh_mode => 'AUTO');
         SELECT pgtrickle.create_stream_table('s.live', 'SELECT cust, max(amount) AS m FROM s.orders GROUP BY cust', refresh_mode => 'IMMEDIATE');
         SELECT pgtrickle.alter_stream_table('s.first', query => 'SELECT cust, total FROM s.top');
         SELECT pgtrickle.create_stream_table('s.paused', 'SELECT count(*) AS n FROM s.orders', refresh_mode => 'DIFFERENTIAL');
         SELECT pgtrickle.alter_stream_table('s.paused', status => 'SUSPENDED');",
    );
    let script: Vec<String> = db.column("SELECT definition FROM pgtrickle.stream_table_definitions()", &[]);
    let order: Vec<String> = db.column("SELECT stream_table::text FROM pgtrickle.stream_table_definitions()", &[]);
    let pos = |n: &str| order.iter().position(|x| x == n).unwrap_or_else(|| panic!("{n} missing from {order:?}"));
    assert!(pos("s.later") < pos("s.top") && pos("s.top") < pos("s.first"), "dependency order: {order:?}");
    let describe = "SELECT st.pgt_relid::regclass::text || ' ' || st.refresh_mode || ' ' || st.schedule || ' ' || st.status || ' ' \
                           || pg_get_userbyid(c.relowner) || ' ' || coalesce(c.relacl::text, '-') || ' ' \
                           || coalesce(obj_description(c.oid, 'pg_class'), '-') || ' ' \
                           || coalesce((SELECT string_agg(replace(pg_get_indexdef(i.indexrelid), c.oid::regclass::text, 'T'), ', ' ORDER BY 1) \
                                        FROM pg_index i WHERE i.indrelid = c.oid), '-') \
                    FROM pgtrickle.pgt_stream_tables st JOIN pg_class c ON c.oid = st.pgt_relid ORDER BY 1";
    let before: Vec<String> = db.column(describe, &[]);

    // pg_dump / pg_restore into a new database, then the documented steps.
    let bin = &db.cluster.paths.bin_dir;
    let dump = std::env::temp_dir().join(format!("{}.dump", db.name));
    let conn = |name: &str| vec!["-h".to_string(), "127.0.0.1".into(), "-p".into(), db.cluster.port.to_string(), "-U".into(), "postgres".into(), "-d".into(), name.into()];
    let run = |program: &str, args: Vec<String>| {
        let out = std::process::Command::new(bin.join(program)).args(&args).output().expect("run a PostgreSQL tool");
        assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let mut args = conn(&db.name);
    args.extend(["-Fc".to_string(), "-f".into(), dump.display().to_string()]);
    run("pg_dump", args);
    let target = format!("{}_restored", db.name);
    let mut admin = db.cluster.connect("postgres").expect("connect");
    admin.batch_execute(&format!("CREATE DATABASE \"{target}\"")).expect("create database");
    let mut args = conn(&target);
    args.push(dump.display().to_string());
    run("pg_restore", args);
    let _ = std::fs::remove_file(&dump);
    let mut restored = db.cluster.connect(&target).expect("connect to the restored database");
    assert_eq!(restored.query_one("SELECT count(*) FROM pgtrickle.pgt_stream_tables", &[]).unwrap().get::<_, i64>(0), 0, "nothing is a stream table before finish_restore");
    restored
        .batch_execute(
            "DO $$ DECLARE r record; BEGIN
               FOR r IN SELECT g.tgrelid::regclass AS t FROM pg_trigger g WHERE g.tgname = 'pgt_stream_table_guard' LOOP
                 EXECUTE format('DROP TABLE %s', r.t);
               END LOOP;
               FOR r IN SELECT g.tgname, g.tgrelid::regclass AS t FROM pg_trigger g
                        WHERE g.tgname LIKE 'pgt\\_cdc\\_%' OR g.tgname LIKE 'pgt\\_ivm\\_%' LOOP
                 EXECUTE format('DROP TRIGGER %I ON %s', r.tgname, r.t);
               END LOOP;
             END $$;
             DROP EXTENSION pg_trickle CASCADE;
             CREATE EXTENSION pg_trickle;",
        )
        .expect("the documented clean-up");
    for statement in &script {
        restored.batch_execute(statement).unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    let after: Vec<String> = restored.query(describe, &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(after, before, "recreated stream tables differ");
    // They work: capture, refresh, IMMEDIATE.
    restored.batch_execute("UPDATE s.orders SET amount = amount + 5 WHERE id % 7 = 0; DELETE FROM s.orders WHERE id % 13 = 0;
                            SELECT pgtrickle.refresh_stream_table('s.later'); SELECT pgtrickle.refresh_stream_table('s.top');
                            SELECT pgtrickle.refresh_stream_table('s.first')").expect("DML and refreshes");
    assert_st_matches_query(&mut restored, "s.later", "SELECT cust, sum(amount) AS total FROM s.orders GROUP BY cust");
    assert_st_matches_query(&mut restored, "s.top", "SELECT cust, total FROM (SELECT cust, sum(amount) AS total FROM s.orders GROUP BY cust) t WHERE total > 800");
    assert_st_matches_query(&mut restored, "s.first", "SELECT cust, total FROM (SELECT cust, sum(amount) AS total FROM s.orders GROUP BY cust) t WHERE total > 800");
    assert_st_matches_query(&mut restored, "s.live", "SELECT cust, max(amount) AS m FROM s.orders GROUP BY cust");
    drop(restored);
    admin.batch_execute(&format!("DROP DATABASE \"{target}\" WITH (FORCE)")).expect("drop the restored database");
}
