//! IMMEDIATE mode (issue 12): stream tables maintained inside the writing
//! transaction. The operator coverage is checked by every DIFFERENTIAL
//! property suite, which keeps an IMMEDIATE twin of each differentiable query
//! (`pg_trickle_e2e::run_property_suite`); here: the lifecycle, each kind of
//! statement that changes several sources or one source several times,
//! cascades, roles, isolation levels, and many concurrent writers. Every test
//! that changes data ends with each stream table equal to its query.

use pg_trickle_e2e::*;
use std::thread;

const JOIN_AGG: &str = "SELECT c.region, count(*) AS n, sum(o.amount) AS total FROM o JOIN c ON c.id = o.cust GROUP BY c.region";

fn orders_schema(db: &mut TestDb) {
    db.exec(
        "CREATE TABLE c (id int PRIMARY KEY, region text, parent int REFERENCES c ON DELETE CASCADE);
         CREATE TABLE o (id int PRIMARY KEY, cust int REFERENCES c ON DELETE CASCADE, amount int);
         INSERT INTO c SELECT g, 'r' || (g % 3), NULL FROM generate_series(1, 20) g;
         INSERT INTO o SELECT g, 1 + g % 20, g FROM generate_series(1, 200) g;",
    );
}

fn trigger_count(db: &mut TestDb) -> i64 {
    db.scalar("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'pgt\\_ivm\\_%'", &[])
}

#[test]
fn immediate_stream_tables_are_current_when_the_statement_returns() {
    let mut db = TestDb::new("imm_basic");
    orders_schema(&mut db);
    db.exec(&format!("SELECT pgtrickle.create_stream_table('agg', '{JOIN_AGG}', refresh_mode => 'IMMEDIATE')"));
    let mode: String = db.scalar("SELECT effective_refresh_mode FROM pgtrickle.pgt_stream_tables", &[]);
    assert_eq!(mode, "IMMEDIATE");
    // No change buffer, no capture trigger: five maintenance triggers per source.
    assert_eq!(buffer_count(&mut db), 0);
    assert_eq!(capture_trigger_count(&mut db), 0);
    assert_eq!(trigger_count(&mut db), 10);
    db.exec("INSERT INTO o VALUES (1000, 1, 5)");
    assert_st_matches_query(&mut db.client, "agg", JOIN_AGG);
    // Read your writes, and rollback undoes the maintenance with the write.
    db.exec("BEGIN; UPDATE o SET amount = amount * 2 WHERE id < 50");
    assert_st_matches_query_in_transaction(&mut db, "agg", JOIN_AGG);
    db.exec("ROLLBACK");
    assert_st_matches_query(&mut db.client, "agg", JOIN_AGG);
    let staleness: String = db.scalar("SELECT staleness::text FROM pgtrickle.pg_stat_stream_tables", &[]);
    assert_eq!(staleness, "00:00:00");
    let explain: String = db.scalar("SELECT pgtrickle.explain_st('agg')", &[]);
    assert!(explain.contains("effective: IMMEDIATE") && explain.contains("pgt_ivm_") && explain.contains("AFTER UPDATE"), "{explain}");
    let reason: String = db.scalar("SELECT reason FROM pgtrickle.explain_refresh_mode('agg')", &[]);
    assert!(reason.contains("IMMEDIATE was requested"), "{reason}");
    // The scheduler leaves it alone; a manual refresh recomputes it.
    db.exec("SELECT pgtrickle.refresh_stream_table('agg')");
    assert_st_matches_query(&mut db.client, "agg", JOIN_AGG);
}

/// Compares inside the caller's open transaction.
fn assert_st_matches_query_in_transaction(db: &mut TestDb, st: &str, query: &str) {
    assert_eq!(pgt_testkit::difference_in_transaction(&mut db.client, st, query), 0, "{st} differs from its query inside the transaction");
}

#[test]
fn statements_that_change_several_sources_or_one_several_times() {
    let mut db = TestDb::new("imm_multi");
    orders_schema(&mut db);
    db.exec(&format!("SELECT pgtrickle.create_stream_table('agg', '{JOIN_AGG}', refresh_mode => 'IMMEDIATE')"));
    let tree = "SELECT p.region, count(*) AS children FROM c p JOIN c k ON k.parent = p.id GROUP BY p.region";
    db.exec(&format!("SELECT pgtrickle.create_stream_table('tree', '{tree}', refresh_mode => 'IMMEDIATE')"));
    let check = |db: &mut TestDb| {
        assert_st_matches_query(&mut db.client, "agg", JOIN_AGG);
        assert_st_matches_query(&mut db.client, "tree", tree);
    };
    // Both sides of the join in one statement (a data-modifying CTE): the
    // cross term must be counted once.
    db.exec("WITH moved AS (UPDATE c SET region = 'rX' WHERE id IN (3, 4) RETURNING id) UPDATE o SET amount = amount + 1 WHERE cust IN (3, 4, 5)");
    check(&mut db);
    db.exec("WITH n AS (INSERT INTO c VALUES (100, 'new', NULL) RETURNING id) INSERT INTO o SELECT 5000 + g, (SELECT id FROM n), g FROM generate_series(1, 3) g");
    check(&mut db);
    // ON DELETE CASCADE: the orders go in a nested statement of the DELETE.
    db.exec("DELETE FROM c WHERE id = 7");
    check(&mut db);
    // A self-referencing key: one DELETE removes a whole subtree, the same
    // table changed at three nesting levels.
    db.exec("UPDATE c SET parent = 1 WHERE id IN (2, 3); UPDATE c SET parent = 2 WHERE id IN (8, 9); UPDATE c SET parent = 8 WHERE id = 10");
    check(&mut db);
    db.exec("DELETE FROM c WHERE id = 1");
    check(&mut db);
    // Another trigger writing a second source inside the statement.
    db.exec(
        "CREATE FUNCTION bump() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN UPDATE c SET region = region || '+' WHERE id = NEW.cust; RETURN NULL; END $$;
         CREATE TRIGGER bump AFTER INSERT ON o FOR EACH ROW EXECUTE FUNCTION bump();",
    );
    db.exec("INSERT INTO o VALUES (6000, 11, 1), (6001, 12, 2), (6002, 11, 3)");
    check(&mut db);
    db.exec("DROP TRIGGER bump ON o");
    // The same row changed several times in one transaction.
    db.exec("BEGIN; UPDATE o SET amount = 1 WHERE id = 20; UPDATE o SET cust = 12 WHERE id = 20; DELETE FROM o WHERE id = 20; INSERT INTO o VALUES (20, 13, 9); COMMIT");
    check(&mut db);
    // INSERT ... ON CONFLICT DO UPDATE fires the INSERT and the UPDATE triggers.
    db.exec("INSERT INTO o VALUES (21, 11, 1), (7001, 11, 1) ON CONFLICT (id) DO UPDATE SET amount = o.amount + 100, cust = 12");
    check(&mut db);
    // MERGE with all three actions.
    db.exec(
        "MERGE INTO o USING (VALUES (22, 3), (23, NULL), (7002, 4)) v(id, a) ON o.id = v.id \
         WHEN MATCHED AND v.a IS NULL THEN DELETE WHEN MATCHED THEN UPDATE SET amount = v.a \
         WHEN NOT MATCHED THEN INSERT VALUES (v.id, 14, v.a)",
    );
    check(&mut db);
    // COPY.
    db.client.batch_execute("CREATE TEMP TABLE src AS SELECT 8000 + g AS id, 15 AS cust, g AS amount FROM generate_series(1, 50) g").unwrap();
    let mut writer = db.client.copy_in("COPY o FROM STDIN").unwrap();
    use std::io::Write;
    for i in 0..40 {
        writeln!(writer, "{}\t{}\t{}", 9000 + i, 16 + i % 3, i).unwrap();
    }
    writer.finish().unwrap();
    check(&mut db);
    // Savepoints: what a rolled-back subtransaction wrote is not applied,
    // what a failed statement began is forgotten.
    db.exec("BEGIN; INSERT INTO o VALUES (9100, 17, 1); SAVEPOINT a; DELETE FROM c WHERE id = 17; ROLLBACK TO a; UPDATE c SET region = 'rY' WHERE id = 17; SAVEPOINT b");
    let failed = db.client.batch_execute("INSERT INTO o VALUES (9101, 17, 1), (9101, 17, 2)");
    assert_eq!(failed.as_ref().err().and_then(sqlstate).as_deref(), Some("23505"));
    db.exec("ROLLBACK TO b; INSERT INTO o VALUES (9102, 18, 4); COMMIT");
    check(&mut db);
    // TRUNCATE recomputes inside the transaction; rolled back, nothing changed.
    db.exec("BEGIN; TRUNCATE o; INSERT INTO o VALUES (1, 11, 3)");
    assert_st_matches_query_in_transaction(&mut db, "agg", JOIN_AGG);
    db.exec("ROLLBACK");
    check(&mut db);
    db.exec("TRUNCATE o CASCADE");
    check(&mut db);
}

#[test]
fn cascades_and_mode_switches() {
    let mut db = TestDb::new("imm_cascade");
    orders_schema(&mut db);
    db.exec(&format!("SELECT pgtrickle.create_stream_table('agg', '{JOIN_AGG}', refresh_mode => 'IMMEDIATE')"));
    // IMMEDIATE over IMMEDIATE, reading a source of the first too.
    let upper = "SELECT a.region, a.total, (SELECT count(*) FROM o) AS orders FROM agg a WHERE a.n > 2";
    db.exec(&format!("SELECT pgtrickle.create_stream_table('upper', $q${upper}$q$, refresh_mode => 'IMMEDIATE')"));
    // DIFFERENTIAL over IMMEDIATE: fed through a change buffer as today.
    let diff = "SELECT region, total FROM agg WHERE total > 100";
    // (agg has a few rows, each change a large share of them.)
    db.exec("SET pg_trickle.differential_max_change_ratio = 1000");
    db.exec(&format!("SELECT pgtrickle.create_stream_table('diff', '{diff}', refresh_mode => 'DIFFERENTIAL')"));
    for sql in [
        "INSERT INTO o SELECT 1000 + g, 1 + g % 20, g FROM generate_series(1, 30) g",
        "UPDATE c SET region = 'r9' WHERE id % 4 = 0",
        "WITH d AS (DELETE FROM o WHERE id % 7 = 0 RETURNING 1) UPDATE c SET region = 'r1' WHERE id = 5",
        "DELETE FROM c WHERE id = 6",
    ] {
        db.exec(sql);
        assert_st_matches_query(&mut db.client, "agg", JOIN_AGG);
        assert_st_matches_query(&mut db.client, "upper", upper);
        db.exec("SELECT pgtrickle.refresh_stream_table('diff')");
        assert_st_matches_query(&mut db.client, "diff", diff);
    }
    let history: i64 = db.scalar(
        "SELECT count(*) FROM pgtrickle.pgt_refresh_history h JOIN pgtrickle.pgt_stream_tables s USING (pgt_id) \
         WHERE s.pgt_relid = 'diff'::regclass AND h.action = 'DIFFERENTIAL'",
        &[],
    );
    assert!(history >= 3, "the DIFFERENTIAL reader refreshed differentially ({history})");
    // IMMEDIATE -> DIFFERENTIAL -> FULL -> IMMEDIATE, contents right after each.
    db.exec("DROP TABLE diff");
    db.exec("SELECT pgtrickle.drop_stream_table('upper')");
    for mode in ["DIFFERENTIAL", "FULL", "IMMEDIATE", "AUTO", "IMMEDIATE"] {
        db.exec(&format!("SELECT pgtrickle.alter_stream_table('agg', refresh_mode => '{mode}')"));
        db.exec("INSERT INTO o VALUES (5000 + (random() * 1000)::int, 3, 7) ON CONFLICT DO NOTHING");
        db.exec("SELECT pgtrickle.refresh_stream_table('agg')");
        assert_st_matches_query(&mut db.client, "agg", JOIN_AGG);
        let triggers = trigger_count(&mut db);
        assert_eq!(triggers, if mode == "IMMEDIATE" { 10 } else { 0 }, "maintenance triggers in mode {mode}");
    }
    db.exec("UPDATE o SET amount = amount + 1");
    assert_st_matches_query(&mut db.client, "agg", JOIN_AGG);
    db.exec("SELECT pgtrickle.drop_stream_table('agg')");
    assert_eq!(trigger_count(&mut db), 0);
    let sync: i64 = db.scalar("SELECT count(*) FROM pgtrickle.pgt_immediate_sync", &[]);
    assert_eq!(sync, 0);
}

#[test]
fn what_immediate_refuses() {
    let mut db = TestDb::new("imm_refuse");
    orders_schema(&mut db);
    let e = db.expect_error(
        "SELECT pgtrickle.create_stream_table('w', 'SELECT id FROM o', refresh_mode => 'IMMEDIATE', cdc_mode => 'wal')",
        "0A000",
    );
    assert!(e.contains("wal"), "{e}");
    let e = db.expect_error(
        "SELECT pgtrickle.create_stream_table('v', 'SELECT id, random() AS r FROM o', refresh_mode => 'IMMEDIATE')",
        "0A000",
    );
    assert!(e.contains("IMMEDIATE"), "{e}");
    db.exec("ALTER TABLE o ADD COLUMN __pgt_action int");
    db.expect_error("SELECT pgtrickle.create_stream_table('m', 'SELECT id FROM o', refresh_mode => 'IMMEDIATE')", "42939");
    assert_eq!(trigger_count(&mut db), 0);
}

#[test]
fn maintenance_runs_as_the_owner_whoever_writes() {
    let mut db = TestDb::new("imm_roles");
    orders_schema(&mut db);
    let owner = db.create_role("owner", "NOSUPERUSER");
    let writer = db.create_role("writer", "NOSUPERUSER");
    db.exec(&format!(
        "GRANT SELECT ON c, o TO \"{owner}\"; ALTER TABLE o OWNER TO \"{owner}\"; ALTER TABLE c OWNER TO \"{owner}\";
         GRANT INSERT, UPDATE, DELETE, SELECT ON o TO \"{writer}\"; GRANT CREATE ON SCHEMA public TO \"{owner}\";"
    ));
    let mut as_owner = db.connect_as(&owner);
    as_owner
        .batch_execute(&format!("SELECT pgtrickle.create_stream_table('agg', '{JOIN_AGG}', refresh_mode => 'IMMEDIATE')"))
        .unwrap();
    // The writer may write the source but not read the stream table, nor the
    // other source, nor pg_trickle's internals; it keeps the stream table right.
    let mut as_writer = db.connect_as(&writer);
    let denied = as_writer.batch_execute("SELECT * FROM agg");
    assert_eq!(denied.as_ref().err().and_then(sqlstate).as_deref(), Some("42501"));
    as_writer.batch_execute("INSERT INTO o VALUES (3000, 2, 10); UPDATE o SET amount = 0 WHERE id < 10; DELETE FROM o WHERE id = 11").unwrap();
    assert_st_matches_query(&mut db.client, "agg", JOIN_AGG);
    // Rights and policies are checked at every statement, not only at create:
    // once row-level security applies to the owner, or it loses SELECT, writes
    // are refused rather than show it rows it may not read.
    db.exec(&format!("ALTER TABLE o FORCE ROW LEVEL SECURITY; ALTER TABLE o ENABLE ROW LEVEL SECURITY; CREATE POLICY mine ON o TO \"{owner}\" USING (cust < 5)"));
    let refused = as_writer.batch_execute("INSERT INTO o VALUES (3001, 9, 10)");
    assert_eq!(refused.as_ref().err().and_then(sqlstate).as_deref(), Some("42501"), "{refused:?}");
    assert!(format!("{refused:?}").contains("row-level security"), "{refused:?}");
    db.exec("ALTER TABLE o NO FORCE ROW LEVEL SECURITY; ALTER TABLE o DISABLE ROW LEVEL SECURITY; DROP POLICY mine ON o");
    db.exec(&format!("REVOKE SELECT ON c FROM \"{owner}\""));
    let refused = as_writer.batch_execute("UPDATE o SET amount = amount + 1 WHERE id = 12");
    assert_eq!(refused.as_ref().err().and_then(sqlstate).as_deref(), Some("42501"), "{refused:?}");
    assert!(format!("{refused:?}").contains("SELECT on the table"), "the unchanged source is checked too: {refused:?}");
    db.exec(&format!("GRANT SELECT ON c TO \"{owner}\""));
    as_writer.batch_execute("INSERT INTO o VALUES (3002, 9, 10)").unwrap();
    assert_st_matches_query(&mut db.client, "agg", JOIN_AGG);
    // A role whose rows of a source are limited by row-level security cannot
    // own an IMMEDIATE stream table over it (transition tables hold every row).
    let limited = db.create_role("limited", "NOSUPERUSER");
    db.exec(&format!(
        "GRANT SELECT ON c, o TO \"{limited}\"; GRANT CREATE ON SCHEMA public TO \"{limited}\";
         ALTER TABLE c ENABLE ROW LEVEL SECURITY; CREATE POLICY p ON c TO \"{limited}\" USING (id < 10);"
    ));
    let mut as_limited = db.connect_as(&limited);
    let refused = as_limited.batch_execute(&format!(
        "SELECT pgtrickle.create_stream_table('lim', '{JOIN_AGG}', refresh_mode => 'IMMEDIATE')"
    ));
    assert_eq!(refused.as_ref().err().and_then(sqlstate).as_deref(), Some("42501"), "{refused:?}");
}

#[test]
fn isolation_levels() {
    let mut db = TestDb::new("imm_iso");
    orders_schema(&mut db);
    db.exec(&format!("SELECT pgtrickle.create_stream_table('agg', '{JOIN_AGG}', refresh_mode => 'IMMEDIATE')"));
    for level in ["READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"] {
        // Writer B's snapshot is taken before writer A's maintenance commits.
        let mut a = db.connect();
        let mut b = db.connect();
        b.batch_execute(&format!("BEGIN ISOLATION LEVEL {level}; SELECT count(*) FROM o")).unwrap();
        a.batch_execute("BEGIN; UPDATE c SET region = 'rZ' WHERE id = 2").unwrap();
        let waiter = thread::spawn(move || {
            // B writes the other side of the join while A holds the stream table.
            let r = b.batch_execute("INSERT INTO o VALUES (4000, 2, 1)");
            match r {
                Ok(()) => b.batch_execute("COMMIT").map(|_| "committed".to_string()).unwrap_or_else(|e| sqlstate(&e).unwrap_or_default()),
                Err(e) => {
                    let code = sqlstate(&e).unwrap_or_default();
                    b.batch_execute("ROLLBACK").unwrap();
                    code
                }
            }
        });
        thread::sleep(std::time::Duration::from_millis(300));
        a.batch_execute("COMMIT").unwrap();
        let outcome = waiter.join().unwrap();
        if level == "READ COMMITTED" {
            assert_eq!(outcome, "committed", "{level}: B waits for A and then sees its maintenance");
        } else {
            assert_eq!(outcome, "40001", "{level}: B cannot see A's maintenance and must retry");
        }
        assert_st_matches_query(&mut db.client, "agg", JOIN_AGG);
        db.exec("DELETE FROM o WHERE id = 4000; UPDATE c SET region = 'r2' WHERE id = 2");
    }
    // A writer whose snapshot saw every committed maintenance proceeds under
    // every level.
    for (i, level) in ["REPEATABLE READ", "SERIALIZABLE"].iter().enumerate() {
        db.exec(&format!(
            "BEGIN ISOLATION LEVEL {level}; INSERT INTO o VALUES ({}, 3, 1); UPDATE c SET region = 'rQ' WHERE id = 3; COMMIT",
            4100 + i
        ));
        assert_st_matches_query(&mut db.client, "agg", JOIN_AGG);
    }
    // A refresh and a create wait for writers in progress and vice versa.
    let mut w = db.connect();
    w.batch_execute("BEGIN; INSERT INTO o VALUES (4200, 4, 4)").unwrap();
    let (cluster, name) = (db.cluster.clone(), db.name.clone());
    let refresher = thread::spawn(move || {
        let mut r = cluster.connect(&name).unwrap();
        r.batch_execute("SELECT pgtrickle.refresh_stream_table('agg')").unwrap();
        r.batch_execute(
            "SELECT pgtrickle.create_stream_table('cnt', 'SELECT cust, count(*) AS n FROM o GROUP BY cust', refresh_mode => 'IMMEDIATE')",
        )
        .unwrap();
    });
    thread::sleep(std::time::Duration::from_millis(300));
    w.batch_execute("UPDATE o SET amount = 5 WHERE id = 4200; COMMIT").unwrap();
    refresher.join().unwrap();
    db.exec("INSERT INTO o VALUES (4201, 4, 4)");
    assert_st_matches_query(&mut db.client, "agg", JOIN_AGG);
    assert_st_matches_query(&mut db.client, "cnt", "SELECT cust, count(*) AS n FROM o GROUP BY cust");
}

/// 32 writers over three IMMEDIATE stream tables sharing sources, each
/// running short transactions of random statements (the sources touched in
/// one order: customers before orders); no write may fail but for a
/// serialization failure, none deadlocks, and every stream table ends equal
/// to its query.
#[test]
fn thirty_two_concurrent_writers() {
    let mut db = TestDb::new("imm_soak");
    orders_schema(&mut db);
    let queries = [
        ("agg", JOIN_AGG.to_string()),
        ("per_cust", "SELECT cust, count(*) AS n, max(amount) AS top FROM o GROUP BY cust".to_string()),
        ("regions", "SELECT region, count(*) AS customers FROM c GROUP BY region".to_string()),
    ];
    for (name, query) in &queries {
        db.exec(&format!("SELECT pgtrickle.create_stream_table('{name}', $q${query}$q$, refresh_mode => 'IMMEDIATE')"));
    }
    let writers: Vec<_> = (0..32)
        .map(|w| {
            let (cluster, name) = (db.cluster.clone(), db.name.clone());
            thread::spawn(move || -> u32 {
                use rand::{Rng, SeedableRng};
                let mut rng = rand::rngs::StdRng::seed_from_u64(w);
                let mut client = cluster.connect(&name).unwrap();
                let mut committed = 0;
                for i in 0..25 {
                    let id = 20_000 + w as i32 * 100 + i;
                    let cust = rng.random_range(1..21);
                    let sql = match rng.random_range(0..5) {
                        0 => format!("INSERT INTO o VALUES ({id}, {cust}, {})", rng.random_range(0..100)),
                        1 => format!("UPDATE o SET amount = amount + 1 WHERE cust = {cust}"),
                        2 => format!("BEGIN; UPDATE c SET region = 'r{}' WHERE id = {cust}; INSERT INTO o VALUES ({id}, {cust}, 1); COMMIT", rng.random_range(0..4)),
                        3 => format!("DELETE FROM o WHERE id = {}", rng.random_range(1..200)),
                        _ => format!("WITH x AS (UPDATE c SET region = region WHERE id = {cust} RETURNING id) INSERT INTO o SELECT {id}, id, 2 FROM x"),
                    };
                    match client.batch_execute(&sql) {
                        Ok(()) => committed += 1,
                        Err(e) => {
                            let _ = client.batch_execute("ROLLBACK");
                            panic!("writer {w}: a write failed ({:?}): {e}: {sql}", sqlstate(&e));
                        }
                    }
                }
                committed
            })
        })
        .collect();
    let mut committed = 0;
    for w in writers {
        committed += w.join().expect("no writer's statement failed");
    }
    assert_eq!(committed, 32 * 25);
    let deadlocks: i64 = db.scalar("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()", &[]);
    assert_eq!(deadlocks, 0);
    for (name, query) in &queries {
        assert_st_matches_query(&mut db.client, name, query);
    }
}
