//! End-to-end tests of pg_trickle: each file under `tests/` exercises one area
//! against a real PostgreSQL 18 that `pgt_testkit` starts. Shared fixtures live
//! here.

pub use pgt_testkit::{assert_st_matches_query, sqlstate, TestDb};

pub mod tools;

/// Counts rows of `sql` (a relation name or a query in parentheses).
pub fn count(db: &mut TestDb, relation: &str) -> i64 {
    db.scalar::<i64>(&format!("SELECT count(*) FROM {relation}"), &[])
}

/// Number of pg_trickle change buffers in the database.
pub fn buffer_count(db: &mut TestDb) -> i64 {
    db.scalar::<i64>(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'pgtrickle_changes' AND c.relkind = 'r'",
        &[],
    )
}

/// Number of pg_trickle capture triggers in the database.
pub fn capture_trigger_count(db: &mut TestDb) -> i64 {
    db.scalar::<i64>("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'pgt\\_cdc\\_%'", &[])
}

/// Number of stream tables in the catalog.
pub fn stream_table_count(db: &mut TestDb) -> i64 {
    db.scalar::<i64>("SELECT count(*) FROM pgtrickle.pgt_stream_tables", &[])
}

/// A snapshot of everything pg_trickle may create, to assert that a failed call
/// changed nothing: (relations in public + pgtrickle_changes, triggers, catalog rows).
pub fn footprint(db: &mut TestDb) -> (i64, i64, i64, i64) {
    let relations = db.scalar::<i64>(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast', 'pgtrickle')",
        &[],
    );
    let triggers = db.scalar::<i64>("SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal", &[]);
    let functions = db.scalar::<i64>(
        "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'pgtrickle_changes'",
        &[],
    );
    let catalog = db.scalar::<i64>(
        "SELECT (SELECT count(*) FROM pgtrickle.pgt_stream_tables) + (SELECT count(*) FROM pgtrickle.pgt_dependencies) \
              + (SELECT count(*) FROM pgtrickle.pgt_change_tracking) + (SELECT count(*) FROM pgtrickle.pgt_refresh_history)",
        &[],
    );
    (relations, triggers, functions, catalog)
}

/// How a query of the property suite must be maintained under AUTO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// AUTO must resolve to DIFFERENTIAL, and DIFFERENTIAL refreshes must happen.
    Differential,
    /// AUTO must fall back to FULL (an unsupported construct).
    Full,
}

/// The schema the property suites change: keyed tables with NULLs, composite
/// keys, and a keyless table with duplicates.
pub const PROPERTY_SCHEMA: &str = "
    CREATE TABLE regions (name text PRIMARY KEY, zone int NOT NULL);
    CREATE TABLE customers (id int PRIMARY KEY, region text, vip bool NOT NULL DEFAULT false, score int);
    CREATE TABLE orders (id int PRIMARY KEY, cust int, amount int NOT NULL, qty numeric(10,2),
                         status text NOT NULL, note text);
    CREATE TABLE items (order_id int, line int, sku text, price numeric(10,2), PRIMARY KEY (order_id, line));
    CREATE TABLE events (kind text, n int);
    INSERT INTO regions SELECT 'r' || g, g % 3 FROM generate_series(0, 5) g;
    INSERT INTO customers SELECT g, CASE WHEN g % 7 = 0 THEN NULL ELSE 'r' || (g % 6) END, g % 4 = 0,
                                 CASE WHEN g % 5 = 0 THEN NULL ELSE g * 3 % 50 END
                          FROM generate_series(1, 40) g;
    INSERT INTO orders SELECT g, CASE WHEN g % 11 = 0 THEN NULL ELSE 1 + g % 45 END, g * 7 % 60, (g % 9) * 1.25,
                              (ARRAY['open','done','held'])[1 + g % 3], CASE WHEN g % 4 = 0 THEN NULL ELSE 'n' || (g % 5) END
                       FROM generate_series(1, 300) g;
    INSERT INTO items SELECT 1 + g % 300, g, 's' || (g % 13), (g % 17) * 0.5 FROM generate_series(1, 600) g;
    INSERT INTO events SELECT (ARRAY['a','b',NULL])[1 + g % 3], g % 4 FROM generate_series(1, 80) g;
    CREATE TABLE accounts (id bigint PRIMARY KEY, cust int, balance numeric NOT NULL, tier text);
    CREATE TABLE rates (code numeric(6,2) PRIMARY KEY, factor int);
    INSERT INTO accounts SELECT 5000000000 + g, CASE WHEN g % 6 = 0 THEN NULL ELSE g % 45 END, (g * 37 % 500) / 4.0,
                                (ARRAY['gold','silver',NULL])[1 + g % 3] FROM generate_series(1, 120) g;
    INSERT INTO rates SELECT g / 4.0, g % 7 FROM generate_series(0, 30) g;
    CREATE VIEW open_orders AS SELECT id, cust, amount FROM orders WHERE status = 'open';
    CREATE VIEW cust_totals AS SELECT cust, sum(amount) AS total, count(*) AS n FROM orders GROUP BY cust;
    CREATE VIEW cust_regions AS SELECT c.id, c.region, r.zone FROM customers c JOIN regions r ON r.name = c.region;
    ANALYZE;";

/// One random DML statement against [`PROPERTY_SCHEMA`].
pub fn random_dml(rng: &mut impl rand::Rng, next_id: &mut i32) -> String {
    match rng.random_range(0..19) {
        16 => match rng.random_range(0..3) {
            0 => format!("UPDATE accounts SET balance = balance + {}, cust = {} WHERE id % 11 = {}", rng.random_range(-20..20),
                         if rng.random_range(0..5) == 0 { "NULL".to_string() } else { rng.random_range(1..50).to_string() }, rng.random_range(0..11)),
            1 => format!("DELETE FROM accounts WHERE id = {}", 5_000_000_000i64 + rng.random_range(1..130)),
            _ => format!(
                "INSERT INTO accounts VALUES ({}, {}, {}, {}) ON CONFLICT (id) DO UPDATE SET tier = EXCLUDED.tier",
                5_000_000_000i64 + rng.random_range(1..130),
                rng.random_range(1..50),
                rng.random_range(0..400) as f64 / 4.0,
                ["'gold'", "'silver'", "NULL"][rng.random_range(0..3)]
            ),
        },
        17 => match rng.random_range(0..3) {
            0 => format!("UPDATE rates SET factor = {} WHERE code = {}", rng.random_range(0..7), rng.random_range(0..32) as f64 / 4.0),
            1 => format!("DELETE FROM rates WHERE code = {}", rng.random_range(0..32) as f64 / 4.0),
            _ => format!("INSERT INTO rates VALUES ({}, {}) ON CONFLICT DO NOTHING", rng.random_range(0..32) as f64 / 4.0, rng.random_range(0..7)),
        },
        18 => format!("UPDATE customers SET vip = NOT vip WHERE id % 7 = {}", rng.random_range(0..7)),
        0 | 1 => {
            *next_id += 1;
            let cust = if rng.random_range(0..8) == 0 { "NULL".to_string() } else { rng.random_range(1..50).to_string() };
            format!(
                "INSERT INTO orders VALUES ({id}, {cust}, {amt}, {qty}, '{st}', {note}); \
                 INSERT INTO items VALUES ({id}, 1, 'x', {p}), ({id}, 2, 'y', {p})",
                id = *next_id,
                amt = rng.random_range(0..70),
                qty = rng.random_range(0..40) as f64 / 4.0,
                st = ["open", "done", "held", "new"][rng.random_range(0..4)],
                note = if rng.random_range(0..3) == 0 { "NULL".to_string() } else { format!("'n{}'", rng.random_range(0..6)) },
                p = rng.random_range(0..20) as f64 / 2.0,
            )
        }
        2 => format!("DELETE FROM orders WHERE id % 29 = {}", rng.random_range(0..29)),
        3 => format!("UPDATE orders SET amount = amount + {} WHERE id % 13 = {}", rng.random_range(-9..9), rng.random_range(0..13)),
        4 => format!("UPDATE orders SET status = '{}' WHERE id % 17 = {}", ["open", "done", "held"][rng.random_range(0..3)], rng.random_range(0..17)),
        5 => format!(
            "UPDATE orders SET cust = {} WHERE id % 19 = {}",
            if rng.random_range(0..5) == 0 { "NULL".to_string() } else { rng.random_range(1..50).to_string() },
            rng.random_range(0..19)
        ),
        6 => {
            // The same row updated several times in one transaction and cycle.
            let id = rng.random_range(1..300);
            format!("UPDATE orders SET amount = amount + 1 WHERE id = {id}; UPDATE orders SET amount = amount * 2, note = NULL WHERE id = {id}; UPDATE orders SET status = 'held' WHERE id = {id}")
        }
        7 => format!(
            "UPDATE customers SET region = {} WHERE id % 9 = {}",
            if rng.random_range(0..4) == 0 { "NULL".to_string() } else { format!("'r{}'", rng.random_range(0..7)) },
            rng.random_range(0..9)
        ),
        8 => format!("UPDATE customers SET score = {} WHERE id = {}", rng.random_range(0..60), rng.random_range(1..45)),
        9 => {
            *next_id += 1;
            format!("INSERT INTO customers VALUES ({}, 'r{}', false, {}) ON CONFLICT DO NOTHING", 40 + *next_id % 10, rng.random_range(0..6), rng.random_range(0..50))
        }
        10 => format!("DELETE FROM customers WHERE id = {}", rng.random_range(1..50)),
        11 => format!("UPDATE items SET price = price + {} WHERE order_id % 23 = {}", rng.random_range(1..5), rng.random_range(0..23)),
        12 => format!("DELETE FROM items WHERE (order_id + line) % 31 = {}", rng.random_range(0..31)),
        13 => match rng.random_range(0..3) {
            0 => format!("UPDATE regions SET zone = {} WHERE name = 'r{}'", rng.random_range(0..4), rng.random_range(0..6)),
            // Regions come and go (r6 exists only sometimes): outer joins'
            // NULL extensions flip on the other side of a chain.
            1 => format!("DELETE FROM regions WHERE name = 'r{}'", rng.random_range(0..7)),
            _ => format!("INSERT INTO regions VALUES ('r{}', {}) ON CONFLICT DO NOTHING", rng.random_range(0..7), rng.random_range(0..3)),
        },
        14 => format!(
            "INSERT INTO events SELECT kind, n FROM events WHERE n = {} LIMIT 2; \
             DELETE FROM events WHERE ctid IN (SELECT ctid FROM events WHERE kind IS NOT DISTINCT FROM '{}' LIMIT 1)",
            rng.random_range(0..4),
            ["a", "b"][rng.random_range(0..2)]
        ),
        _ => {
            if rng.random_range(0..6) == 0 {
                // Both sides of a join in one transaction.
                format!(
                    "UPDATE customers SET region = 'r{}' WHERE id = {c}; UPDATE orders SET cust = {c} WHERE id = {}",
                    rng.random_range(0..6),
                    rng.random_range(1..300),
                    c = rng.random_range(1..40)
                )
            } else {
                "DELETE FROM orders WHERE status = 'new'".to_string()
            }
        }
    }
}

/// The random generator of a randomized test, seeded from `PGT_SEED` when
/// set (to replay a failure) or at random, the seed printed with the test's
/// name `test`: `(seed, generator)`.
pub fn seeded(test: &str) -> (u64, rand::rngs::StdRng) {
    use rand::SeedableRng;
    let seed: u64 = std::env::var("PGT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    println!("{test} seed: {seed} (replay with PGT_SEED={seed})");
    (seed, rand::rngs::StdRng::seed_from_u64(seed))
}

/// Runs the property suite: every `(name, query, expect)` becomes a stream table
/// (AUTO) plus a FULL twin `<name>_full`, and each differentiable one an
/// IMMEDIATE twin `<name>_imm`; `cycles` rounds of random DML (seeded:
/// `PGT_SEED` replays), some in explicit transactions with savepoints rolled
/// back or released and some rolled back whole. After each round, before any
/// refresh, every IMMEDIATE twin must equal its query (and inside a
/// transaction, before COMMIT, sometimes too); then every stream table is
/// refreshed and must equal its query, its FULL twin, and its IMMEDIATE twin,
/// as multisets. Stream tables that must be DIFFERENTIAL must also have
/// refreshed DIFFERENTIAL at least once. A failed write — maintenance making a
/// user's statement fail — fails the suite.
pub fn run_property_suite(test: &str, queries: &[(&str, &str, Expect)], cycles: usize) {
    use rand::Rng;
    let (seed, mut rng) = seeded(test);
    let mut db = TestDb::new(test);
    db.exec(PROPERTY_SCHEMA);
    // Exercise the differential path even when a cycle changes much of a small
    // table (the adaptive fallback to FULL has its own test).
    db.exec("SET pg_trickle.differential_max_change_ratio = 1000");
    for (name, query, expect) in queries {
        db.exec(&format!("SELECT pgtrickle.create_stream_table('{name}', $q${query}$q$)"));
        db.exec(&format!("SELECT pgtrickle.create_stream_table('{name}_full', $q${query}$q$, refresh_mode => 'FULL')"));
        let effective: String = db.scalar(
            "SELECT effective_refresh_mode FROM pgtrickle.pgt_stream_tables WHERE pgt_relid = $1::text::regclass",
            &[name],
        );
        let wanted = if *expect == Expect::Differential { "DIFFERENTIAL" } else { "FULL" };
        assert_eq!(effective, wanted, "seed {seed}: {name} resolved to {effective}: {query}");
        if *expect == Expect::Differential {
            db.exec(&format!("SELECT pgtrickle.create_stream_table('{name}_imm', $q${query}$q$, refresh_mode => 'IMMEDIATE')"));
        }
    }
    let immediate: Vec<(&str, &str)> =
        queries.iter().filter(|(_, _, e)| *e == Expect::Differential).map(|(n, q, _)| (*n, *q)).collect();
    let check_immediate = |db: &mut TestDb, cycle: usize, when: &str| {
        let in_transaction = when.starts_with("inside");
        for (name, query) in &immediate {
            if in_transaction {
                // Compared inside the open transaction (the comparison
                // helpers run transactions of their own).
                if pgt_testkit::topk_parts(query).is_some() {
                    continue;
                }
                let differing = pgt_testkit::difference_in_transaction(&mut db.client, &format!("{name}_imm"), query);
                assert_eq!(differing, 0, "seed {seed}, cycle {cycle} ({when}): {name}_imm (IMMEDIATE) differs from its query: {query}");
                continue;
            }
            let (only_st, only_q) = pgt_testkit::st_difference(&mut db.client, &format!("{name}_imm"), query);
            assert!(
                only_st.is_empty() && only_q.is_empty(),
                "seed {seed}, cycle {cycle} ({when}): {name}_imm (IMMEDIATE) differs from its query\n  only in stream table: {only_st:?}\n  only in query: {only_q:?}\n  query: {query}"
            );
        }
    };
    let mut next_id = 10_000;
    for cycle in 0..cycles {
        // How this round's statements are grouped into transactions: one
        // each, or all in one with a savepoint, or all in one rolled back.
        let grouping = rng.random_range(0..6);
        if grouping >= 3 {
            db.exec("BEGIN");
        }
        for i in 0..rng.random_range(1..5) {
            let sql = random_dml(&mut rng, &mut next_id);
            if grouping >= 3 && i == 1 {
                db.exec("SAVEPOINT round");
                db.exec(&sql);
                if rng.random_range(0..2) == 0 {
                    db.exec("ROLLBACK TO SAVEPOINT round");
                } else {
                    db.exec("RELEASE SAVEPOINT round");
                }
            } else {
                db.exec(&sql);
            }
        }
        if grouping >= 3 {
            if rng.random_range(0..3) == 0 {
                // Read your writes: current before COMMIT.
                check_immediate(&mut db, cycle, "inside the transaction");
            }
            db.exec(if grouping == 5 { "ROLLBACK" } else { "COMMIT" });
        }
        if rng.random_range(0..2) == 0 {
            // The keyless table: duplicates added and removed.
            db.exec(&format!(
                "INSERT INTO events SELECT kind, n FROM events WHERE n = {} LIMIT 2",
                rng.random_range(0..4)
            ));
            db.exec(&format!(
                "DELETE FROM events WHERE ctid IN (SELECT ctid FROM events WHERE n = {} LIMIT 1)",
                rng.random_range(0..4)
            ));
        }
        if rng.random_range(0..2) == 0 {
            // The bigint- and numeric-keyed tables, which the statement mix
            // above reaches less often.
            let mut sql = random_dml(&mut rng, &mut next_id);
            while !sql.contains("accounts") && !sql.contains("rates") {
                sql = random_dml(&mut rng, &mut next_id);
            }
            db.exec(&sql);
        }
        if cycle == 0 {
            // The two tables above change in about half the cycles, and their
            // random statements may change nothing (a missing key, a
            // conflicting insert): one sure change each, so that every query
            // over them is refreshed differentially whatever the seed.
            db.exec("UPDATE rates SET factor = factor + 1 WHERE code = (SELECT max(code) FROM rates WHERE code <= 6.5)");
            db.exec("UPDATE accounts SET balance = balance + 1 WHERE id = (SELECT max(id) FROM accounts)");
        }
        if rng.random_range(0..15) == 0 {
            db.exec("TRUNCATE events; INSERT INTO events VALUES ('a', 1), ('a', 1), (NULL, 2), ('b', 3)");
        }
        check_immediate(&mut db, cycle, "after the writes, before any refresh");
        for (name, query, _) in queries {
            db.exec(&format!("SELECT pgtrickle.refresh_stream_table('{name}'); SELECT pgtrickle.refresh_stream_table('{name}_full')"));
            let (only_st, only_q) = pgt_testkit::st_difference(&mut db.client, name, query);
            assert!(
                only_st.is_empty() && only_q.is_empty(),
                "seed {seed}, cycle {cycle}: {name} differs from its query\n  only in stream table: {only_st:?}\n  only in query: {only_q:?}\n  query: {query}"
            );
            let twin = format!("SELECT * FROM {name}_full");
            let columns = pgt_testkit::visible_columns(&mut db.client, name).join(", ");
            let (a, b) = if pgt_testkit::topk_parts(query).is_some() {
                // Either may hold any of the rows tied at the boundary.
                pgt_testkit::st_difference(&mut db.client, &format!("{name}_full"), query)
            } else {
                pgt_testkit::multiset_difference(&mut db.client, name, &format!("SELECT {columns} FROM ({twin}) t"))
            };
            assert!(a.is_empty() && b.is_empty(), "seed {seed}, cycle {cycle}: {name} differs from its FULL twin: {a:?} / {b:?}");
        }
        // Stream tables over stream tables: their IMMEDIATE twins follow the
        // refreshes of what they read.
        check_immediate(&mut db, cycle, "after the refreshes");
        for (name, query) in &immediate {
            if pgt_testkit::topk_parts(query).is_some() {
                continue;
            }
            let columns = pgt_testkit::visible_columns(&mut db.client, name).join(", ");
            let (a, b) = pgt_testkit::multiset_difference(&mut db.client, &format!("{name}_imm"), &format!("SELECT {columns} FROM {name}"));
            assert!(a.is_empty() && b.is_empty(), "seed {seed}, cycle {cycle}: {name}_imm differs from its DIFFERENTIAL twin: {a:?} / {b:?}");
        }
    }
    // The summary first, so that a failed check below shows what ran.
    let summary: Vec<String> = db
        .client
        .query(
            "SELECT s.pgt_relid::regclass::text || ': ' || string_agg(h.action || ' x' || h.n, ', ' ORDER BY h.action) \
             FROM (SELECT pgt_id, action, count(*) AS n FROM pgtrickle.pgt_refresh_history GROUP BY 1, 2) h \
             JOIN pgtrickle.pgt_stream_tables s USING (pgt_id) GROUP BY s.pgt_relid ORDER BY 1",
            &[],
        )
        .map(|rows| rows.iter().map(|r| r.get(0)).collect())
        .unwrap_or_default();
    println!("{test} refresh actions:\n  {}", summary.join("\n  "));
    for (name, query, expect) in queries {
        if *expect == Expect::Differential {
            let n: i64 = db.scalar(
                "SELECT count(*) FROM pgtrickle.pgt_refresh_history h JOIN pgtrickle.pgt_stream_tables s USING (pgt_id) \
                 WHERE s.pgt_relid = $1::text::regclass AND h.action = 'DIFFERENTIAL'",
                &[name],
            );
            assert!(n > 0, "seed {seed}: {name} never refreshed DIFFERENTIAL: {query}");
        }
    }
}
