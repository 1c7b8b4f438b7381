//! Renames of what a defining query names besides its relations — schemas,
//! functions, types and domains, operators — and replaced function bodies
//! (docs/SQL_REFERENCE.md, Source DDL). With `pg_trickle.block_source_ddl` off,
//! each rename is followed: the stream tables it concerns reinitialize from
//! their stored query tree under the new names and stay equal to their
//! queries through random DML; with it on, the rename is refused naming them.
//! A replaced function makes its callers reinitialize in both modes.

use pg_trickle_e2e::{assert_st_matches_query, TestDb};
use rand::{Rng, SeedableRng};

const SCHEMA: &str = "
    CREATE SCHEMA app;
    CREATE TABLE app.orders (id int PRIMARY KEY, cust int NOT NULL, amount numeric NOT NULL, qty int NOT NULL);
    INSERT INTO app.orders SELECT g, g % 9, (g * 7) % 50 + 0.5, g % 4 FROM generate_series(1, 400) g;
    CREATE FUNCTION app.net(numeric) RETURNS numeric LANGUAGE sql IMMUTABLE AS 'SELECT $1 * 0.8';
    CREATE DOMAIN app.amount AS numeric CHECK (VALUE >= 0);
    CREATE FUNCTION app.plus_qty(numeric, int) RETURNS numeric LANGUAGE sql IMMUTABLE AS 'SELECT $1 + $2';
    CREATE OPERATOR app.## (LEFTARG = numeric, RIGHTARG = int, FUNCTION = app.plus_qty);
    SELECT pgtrickle.create_stream_table('net_by_cust',
        'SELECT cust, sum(app.net(amount)) AS net, count(*) AS n FROM app.orders GROUP BY cust', refresh_mode => 'DIFFERENTIAL');
    SELECT pgtrickle.create_stream_table('amounts',
        'SELECT id, amount::app.amount AS a, amount OPERATOR(app.##) qty AS aq FROM app.orders WHERE qty > 1', refresh_mode => 'FULL');
    SELECT pgtrickle.create_stream_table('live_net',
        'SELECT cust, max(app.net(amount)) AS top FROM app.orders GROUP BY cust', refresh_mode => 'IMMEDIATE');
    SELECT pgtrickle.create_stream_table('ops',
        'SELECT qty, sum(amount OPERATOR(app.##) qty) AS s FROM app.orders GROUP BY qty', refresh_mode => 'DIFFERENTIAL');";

/// Each stream table's query under the names of `schema` (the orders table,
/// the domain and operator), `function` (schema-qualified) for app.net.
fn queries(schema: &str, function: &str, domain: &str, operator: &str) -> Vec<(&'static str, String)> {
    vec![
        ("net_by_cust", format!("SELECT cust, sum({function}(amount)) AS net, count(*) AS n FROM {schema}.orders GROUP BY cust")),
        ("amounts", format!("SELECT id, amount::{domain} AS a, amount OPERATOR({operator}) qty AS aq FROM {schema}.orders WHERE qty > 1")),
        ("live_net", format!("SELECT cust, max({function}(amount)) AS top FROM {schema}.orders GROUP BY cust")),
        ("ops", format!("SELECT qty, sum(amount OPERATOR({operator}) qty) AS s FROM {schema}.orders GROUP BY qty")),
    ]
}

fn random_dml(db: &mut TestDb, rng: &mut impl Rng, schema: &str, next_id: &mut i32) {
    for _ in 0..rng.random_range(1..4) {
        let sql = match rng.random_range(0..3) {
            0 => {
                *next_id += 1;
                format!("INSERT INTO {schema}.orders VALUES ({}, {}, {}, {})", next_id, rng.random_range(0..9), rng.random_range(0..80), rng.random_range(0..4))
            }
            1 => format!("UPDATE {schema}.orders SET amount = amount + 1, qty = (qty + 1) % 4 WHERE id % 17 = {}", rng.random_range(0..17)),
            _ => format!("DELETE FROM {schema}.orders WHERE id % 31 = {}", rng.random_range(0..31)),
        };
        db.exec(&sql);
    }
}

fn refresh_and_check(db: &mut TestDb, queries: &[(&'static str, String)]) {
    for (st, _) in queries {
        if *st != "live_net" {
            db.exec(&format!("SELECT pgtrickle.refresh_stream_table('{st}')"));
        }
    }
    for (st, q) in queries {
        assert_st_matches_query(&mut db.client, st, q);
    }
}

/// With blocking off, every rename kind is followed, through random DML.
#[test]
fn renames_are_followed_when_blocking_is_off() {
    let mut db = TestDb::new("renames_followed");
    db.exec(SCHEMA);
    let name = db.name.clone();
    db.exec(&format!("ALTER DATABASE \"{name}\" SET pg_trickle.block_source_ddl = off"));
    let mut db2 = reconnect(db);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x4e_a3e5);
    let mut next_id = 1000;
    // Each DDL with the names after it: schema of the table, function, domain, operator.
    type Names<'a> = (&'a str, &'a str, &'a str, &'a str);
    let steps: Vec<(&str, Names)> = vec![
        ("ALTER SCHEMA app RENAME TO shop", ("shop", "shop.net", "shop.amount", "shop.##")),
        ("ALTER FUNCTION shop.net(numeric) RENAME TO net_of", ("shop", "shop.net_of", "shop.amount", "shop.##")),
        ("CREATE SCHEMA lib; ALTER FUNCTION shop.net_of(numeric) SET SCHEMA lib", ("shop", "lib.net_of", "shop.amount", "shop.##")),
        ("ALTER DOMAIN shop.amount RENAME TO amount_t", ("shop", "lib.net_of", "shop.amount_t", "shop.##")),
        ("ALTER DOMAIN shop.amount_t SET SCHEMA lib", ("shop", "lib.net_of", "lib.amount_t", "shop.##")),
        ("ALTER OPERATOR shop.## (numeric, int) SET SCHEMA lib", ("shop", "lib.net_of", "lib.amount_t", "lib.##")),
    ];
    refresh_and_check(&mut db2, &queries("app", "app.net", "app.amount", "app.##"));
    for (ddl, (schema, function, domain, operator)) in steps {
        let (mut c, notices) = db2.connect_collecting_notices();
        c.batch_execute(ddl).unwrap_or_else(|e| panic!("{ddl}: {e}"));
        let said = notices.lock().unwrap().clone();
        assert!(said.iter().any(|(_, m)| m.contains("will reinitialize at its next refresh")), "{ddl}: {said:?}");
        let qs = queries(schema, function, domain, operator);
        for _ in 0..3 {
            random_dml(&mut db2, &mut rng, schema, &mut next_id);
            refresh_and_check(&mut db2, &qs);
        }
        // The stored query now names the new names.
        let stored = db2.scalar::<String>("SELECT defining_query FROM pgtrickle.pgt_stream_tables WHERE pgt_relid = 'net_by_cust'::regclass", &[]);
        assert!(stored.contains(function.split('.').next_back().unwrap()), "{ddl}: {stored}");
        let differential = db2.scalar::<String>(
            "SELECT h.action FROM pgtrickle.pgt_refresh_history h JOIN pgtrickle.pgt_stream_tables st USING (pgt_id) \
             WHERE st.pgt_relid = 'net_by_cust'::regclass ORDER BY h.refresh_id DESC LIMIT 1",
            &[],
        );
        assert_eq!(differential, "DIFFERENTIAL", "{ddl}: DIFFERENTIAL again after the reinitialization");
    }
}

/// With blocking on (the default), each rename kind is refused naming the
/// stream tables, and changes nothing.
#[test]
fn renames_are_refused_when_blocking_is_on() {
    let mut db = TestDb::new("renames_blocked");
    db.exec(SCHEMA);
    for ddl in [
        "ALTER SCHEMA app RENAME TO shop",
        "ALTER FUNCTION app.net(numeric) RENAME TO net_of",
        "ALTER FUNCTION app.net(numeric) SET SCHEMA public",
        "ALTER DOMAIN app.amount RENAME TO amount_t",
        "ALTER OPERATOR app.## (numeric, int) SET SCHEMA public",
    ] {
        let e = db.expect_error(ddl, "2BP01");
        assert!(e.contains("net_by_cust") || e.contains("amounts") || e.contains("ops"), "{ddl}: {e}");
    }
    assert_eq!(db.scalar::<i64>("SELECT count(*) FROM pgtrickle.pgt_stream_tables WHERE needs_reinit", &[]), 0);
    // Unrelated DDL of the same kinds goes through.
    db.exec("CREATE SCHEMA other; ALTER SCHEMA other RENAME TO other2; CREATE FUNCTION app.unused() RETURNS int LANGUAGE sql AS 'SELECT 1'; ALTER FUNCTION app.unused() RENAME TO unused2");
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut next_id = 1000;
    random_dml(&mut db, &mut rng, "app", &mut next_id);
    refresh_and_check(&mut db, &queries("app", "app.net", "app.amount", "app.##"));
}

/// A replaced function body (CREATE OR REPLACE FUNCTION) makes the stream
/// tables calling it reinitialize at their next refresh, in both block modes:
/// groups no change touched get the new body's values too.
#[test]
fn a_replaced_function_reinitializes_its_callers() {
    for block in ["on", "off"] {
        let mut db = TestDb::new(&format!("replaced_function_{block}"));
        db.exec(SCHEMA);
        db.exec(&format!("SET pg_trickle.block_source_ddl = {block}"));
        let qs = queries("app", "app.net", "app.amount", "app.##");
        refresh_and_check(&mut db, &qs);
        let (mut c, notices) = db.connect_collecting_notices();
        c.batch_execute(&format!(
            "SET pg_trickle.block_source_ddl = {block}; \
             CREATE OR REPLACE FUNCTION app.net(numeric) RETURNS numeric LANGUAGE sql IMMUTABLE AS 'SELECT $1 * 0.5'"
        ))
        .expect("replace the function");
        let said = notices.lock().unwrap().clone();
        for st in ["net_by_cust", "live_net"] {
            assert!(said.iter().any(|(_, m)| m.contains(st) && m.contains("was replaced")), "{block}: {st}: {said:?}");
        }
        assert!(!said.iter().any(|(_, m)| m.contains("public.ops")), "ops does not call app.net: {said:?}");
        // A change to one group only; every group must show the new body.
        db.exec("UPDATE app.orders SET amount = amount + 1 WHERE id = 1");
        refresh_and_check(&mut db, &qs);
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut next_id = 1000;
        random_dml(&mut db, &mut rng, "app", &mut next_id);
        refresh_and_check(&mut db, &qs);
    }
}

/// A fresh connection object for the same test database (after ALTER
/// DATABASE ... SET, which applies to new sessions).
fn reconnect(db: TestDb) -> TestDb {
    let mut db = db;
    db.client = db.connect();
    db
}
