//! Logical dump and restore with the real `pg_dump`, `pg_restore` and `psql`
//! of the provisioned PostgreSQL (docs/OPERATIONS.md, "Backup and restore";
//! src/restore.rs).
//!
//! A database holds stream tables of every mode over int, bigint, text and
//! composite keys, a keyless source and a partitioned one, a stream table
//! over another, a diamond with a schedule, and a non-superuser owner's
//! stream tables with an index, a grant and a comment. It is dumped while
//! changes are pending (not yet refreshed), and restored into fresh
//! databases of a fresh cluster:
//! - `full_dump_round_trip`: plain format through `psql -v ON_ERROR_STOP=1`
//!   and custom format through `pg_restore --exit-on-error` (so any error
//!   fails the test), then `pgtrickle.finish_restore()`;
//! - `partial_dumps`: `--schema-only`, then `--data-only` into that
//!   installation; `-n` of the schema holding the stream tables, into a
//!   database holding their sources (restored from a `-n app` dump, whose
//!   capture triggers restore) and into one without them.
//!
//! Each case asserts: every stream table is back with its owner, grants,
//! indexes and comment; capture and IMMEDIATE maintenance work with no
//! duplicate trigger; the refresh after the restore's one recomputation is
//! DIFFERENTIAL where it was; the scheduler refreshes the scheduled diamond;
//! and every stream table equals its query after more random DML.

use pg_trickle_e2e::{assert_st_matches_query, TestDb};
use pgt_testkit::postgres::Client;
use pgt_testkit::Cluster;
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Stream tables with their queries, upstream first; (name, query, mode,
/// created by the owner role).
const STREAM_TABLES: &[(&str, &str, &str, bool)] = &[
    ("reports.by_cust", "SELECT cust, sum(amount) AS total, count(*) AS n FROM app.orders GROUP BY cust", "DIFFERENTIAL", true),
    (
        "reports.by_region",
        "SELECT c.region, sum(o.amount) AS total FROM app.orders o JOIN app.customers c ON c.id = o.cust GROUP BY c.region",
        "AUTO",
        false,
    ),
    ("reports.big", "SELECT cust, total FROM reports.by_cust WHERE total > 400", "DIFFERENTIAL", true),
    ("reports.kinds", "SELECT kind, count(*) AS n, sum(n) AS s FROM app.events GROUP BY kind", "FULL", false),
    ("reports.events_big", "SELECT kind, n FROM app.events WHERE n > 10", "DIFFERENTIAL", false),
    ("reports.live", "SELECT cust, max(amount) AS top, count(*) AS n FROM app.orders GROUP BY cust", "IMMEDIATE", false),
    ("reports.top5", "SELECT id, amount FROM app.orders ORDER BY amount DESC, id LIMIT 5", "DIFFERENTIAL", false),
    ("reports.sensors", "SELECT sensor, count(*) AS n, sum(val) AS s FROM app.readings GROUP BY sensor", "DIFFERENTIAL", false),
    ("reports.d_count", "SELECT cust, count(*) AS n FROM app.orders GROUP BY cust", "DIFFERENTIAL", false),
    ("reports.d_sum", "SELECT cust, sum(amount) AS s FROM app.orders GROUP BY cust", "DIFFERENTIAL", false),
    (
        "reports.d_join",
        "SELECT c.cust, c.n, s.s FROM reports.d_count c JOIN reports.d_sum s ON s.cust = c.cust",
        "DIFFERENTIAL",
        false,
    ),
];

/// The scheduled stream table (closing the diamond); the others are
/// refreshed by hand.
const SCHEDULED: &str = "reports.d_join";

/// The query `st` must equal (stream tables read as their own queries).
fn expected_query(st: &str) -> String {
    let query = STREAM_TABLES.iter().find(|(n, ..)| *n == st).map(|(_, q, ..)| q.to_string()).expect("known stream table");
    let mut q = query;
    for (name, inner, ..) in STREAM_TABLES {
        q = q.replace(&format!("FROM {name} "), &format!("FROM ({inner}) "));
        q = q.replace(&format!("JOIN {name} "), &format!("JOIN ({inner}) "));
    }
    q
}

fn source_schema(owner: &str) -> String {
    format!(
        "CREATE SCHEMA app; CREATE SCHEMA reports;
         GRANT USAGE ON SCHEMA app TO \"{owner}\"; GRANT USAGE, CREATE ON SCHEMA reports TO \"{owner}\";
         CREATE TABLE app.customers (id text PRIMARY KEY, region text NOT NULL);
         CREATE TABLE app.orders (id bigint PRIMARY KEY, cust text NOT NULL, amount numeric(12,2) NOT NULL);
         CREATE TABLE app.events (kind text, n int);
         CREATE TABLE app.readings (sensor int, at date, val numeric, PRIMARY KEY (sensor, at)) PARTITION BY RANGE (at);
         CREATE TABLE app.readings_a PARTITION OF app.readings FOR VALUES FROM ('2026-01-01') TO ('2026-07-01');
         CREATE TABLE app.readings_b PARTITION OF app.readings FOR VALUES FROM ('2026-07-01') TO ('2027-01-01');
         GRANT SELECT, TRIGGER ON app.orders TO \"{owner}\";"
    )
}

const SOURCE_DATA: &str = "
    INSERT INTO app.customers SELECT 'c' || g, 'r' || (g % 5) FROM generate_series(1, 40) g;
    INSERT INTO app.orders SELECT g, 'c' || (1 + g % 40), (g * 37) % 211 FROM generate_series(1, 600) g;
    INSERT INTO app.events SELECT CASE WHEN g % 9 = 0 THEN NULL ELSE 'k' || (g % 4) END, g % 23 FROM generate_series(1, 300) g;
    INSERT INTO app.readings SELECT 1 + g % 12, DATE '2026-01-01' + (g / 12), g % 17 FROM generate_series(1, 2400) g;";

/// Creates the stream tables (the owner's as the owner), with the owner's
/// index, grant and comment.
fn create_stream_tables(admin: &mut Client, owner_client: &mut Client, reader: &str) {
    for (name, query, mode, by_owner) in STREAM_TABLES {
        let schedule = if *name == SCHEDULED { "1s" } else { "calculated" };
        let sql = format!(
            "SELECT pgtrickle.create_stream_table('{name}', $q${query}$q$, refresh_mode => '{mode}', schedule => '{schedule}')"
        );
        let client = if *by_owner { &mut *owner_client } else { &mut *admin };
        client.batch_execute(&sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    owner_client
        .batch_execute(&format!(
            "CREATE INDEX by_cust_total ON reports.by_cust (total);
             GRANT SELECT ON reports.by_cust, reports.big TO \"{reader}\";
             COMMENT ON TABLE reports.by_cust IS 'revenue per customer';"
        ))
        .expect("index, grant and comment");
}

/// Random small DML on every source (a few rows each, so refreshes stay
/// DIFFERENTIAL under pg_trickle.differential_max_change_ratio).
fn random_dml(client: &mut Client, rng: &mut rand::rngs::StdRng, round: u32) {
    let base = 1_000_000 + i64::from(round) * 100;
    let mut sql = String::new();
    for _ in 0..3 {
        let cust = format!("c{}", rng.random_range(1..=45));
        match rng.random_range(0..6) {
            0 | 1 => sql.push_str(&format!(
                "INSERT INTO app.orders VALUES ({}, '{cust}', {}) ON CONFLICT DO NOTHING;",
                base + rng.random_range(0..100),
                rng.random_range(0..500)
            )),
            2 => sql.push_str(&format!("UPDATE app.orders SET amount = amount + 7 WHERE id = {};", rng.random_range(1..700))),
            3 => sql.push_str(&format!("DELETE FROM app.orders WHERE id = {};", rng.random_range(1..700))),
            4 => sql.push_str(&format!(
                "INSERT INTO app.customers VALUES ('{cust}', 'r{}') ON CONFLICT (id) DO UPDATE SET region = EXCLUDED.region;",
                rng.random_range(0..7)
            )),
            _ => sql.push_str(&format!(
                "UPDATE app.orders SET cust = '{cust}' WHERE id = {};",
                rng.random_range(1..700)
            )),
        }
    }
    let kind = if rng.random_bool(0.2) { "NULL".to_string() } else { format!("'k{}'", rng.random_range(0..6)) };
    sql.push_str(&format!(
        "INSERT INTO app.events VALUES ({kind}, {n}); DELETE FROM app.events WHERE ctid = (SELECT ctid FROM app.events WHERE n = {d} LIMIT 1);
         UPDATE app.readings SET val = val + 1 WHERE sensor = {s} AND at = DATE '2026-03-01' + {day};
         INSERT INTO app.readings VALUES ({s}, DATE '2026-09-01' + {r}, {r}) ON CONFLICT DO NOTHING;
         DELETE FROM app.readings WHERE sensor = {s2} AND at = DATE '2026-01-05' + {day};",
        n = rng.random_range(0..30),
        d = rng.random_range(0..23),
        s = rng.random_range(1..=12),
        s2 = rng.random_range(1..=12),
        day = rng.random_range(0..100),
        r = round,
    ));
    client.batch_execute(&sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Refreshes every stream table refreshed by hand, upstream first, and
/// asserts each equals its query.
fn refresh_and_check(client: &mut Client, what: &str) {
    for (name, _, mode, _) in STREAM_TABLES {
        if *mode != "IMMEDIATE" && *name != SCHEDULED {
            client
                .batch_execute(&format!("SELECT pgtrickle.refresh_stream_table('{name}')"))
                .unwrap_or_else(|e| panic!("{what}: refresh {name}: {e}"));
        }
    }
    client.batch_execute(&format!("SELECT pgtrickle.refresh_stream_table('{SCHEDULED}')")).expect("refresh the diamond");
    for (name, ..) in STREAM_TABLES {
        assert_st_matches_query(client, name, &expected_query(name));
    }
}

/// How each stream table looks to a DBA: mode, schedule, owner, grants,
/// comment and indexes (names of pg_trickle's own index stripped of OIDs).
const DESCRIBE: &str = "
    SELECT st.pgt_relid::regclass::text || ' ' || st.refresh_mode || ' ' || st.effective_refresh_mode || ' ' || st.schedule
           || ' ' || st.status || ' ' || pg_get_userbyid(c.relowner) || ' ' || coalesce(c.relacl::text, '-') || ' '
           || coalesce(obj_description(c.oid, 'pg_class'), '-') || ' '
           || coalesce((SELECT string_agg(pg_get_indexdef(i.indexrelid), ', ' ORDER BY 1) FROM pg_index i WHERE i.indrelid = c.oid), '-')
    FROM pgtrickle.pgt_stream_tables st JOIN pg_class c ON c.oid = st.pgt_relid ORDER BY 1";

/// pg_trickle's triggers per table and its buffers: a restore must leave no
/// duplicates.
const FOOTPRINT: &str = "
    SELECT coalesce(string_agg(x, ', ' ORDER BY x), '-') FROM (
        SELECT t.tgrelid::regclass::text || ':' || count(*) AS x FROM pg_trigger t
        WHERE NOT t.tgisinternal AND t.tgname LIKE 'pgt\\_%' GROUP BY t.tgrelid
        UNION ALL
        SELECT 'buffers:' || count(*) FROM pg_class WHERE relnamespace = 'pgtrickle_changes'::regnamespace AND relkind = 'r'
        UNION ALL
        SELECT 'capture functions:' || count(*) FROM pg_proc WHERE pronamespace = 'pgtrickle_changes'::regnamespace) f";

fn rows(client: &mut Client, sql: &str) -> Vec<String> {
    client.query(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}")).iter().map(|r| r.get(0)).collect()
}

/// The source database on the shared cluster: roles, schema, data, stream
/// tables, some refreshed DML and some left pending. Returns it with its
/// owner and reader roles.
fn source_database(name: &str) -> (TestDb, String, String) {
    let mut db = TestDb::new(name);
    let owner = db.create_role("owner", "NOSUPERUSER");
    let reader = db.create_role("reader", "NOSUPERUSER");
    db.exec(&source_schema(&owner));
    db.exec(SOURCE_DATA);
    let mut owner_client = db.connect_as(&owner);
    create_stream_tables(&mut db.client, &mut owner_client, &reader);
    let mut rng = rand::rngs::StdRng::seed_from_u64(14);
    for round in 0..3 {
        random_dml(&mut db.client, &mut rng, round);
    }
    refresh_and_check(&mut db.client, "source");
    // Changes the dump holds in sources but no stream table has applied yet.
    for round in 3..5 {
        random_dml(&mut db.client, &mut rng, round);
    }
    (db, owner, reader)
}

/// Runs a PostgreSQL program of the installation; fails the test on a
/// non-zero exit, with its output.
fn run(bin: &Path, program: &str, args: &[String]) {
    let out = Command::new(bin.join(program)).args(args).output().expect("run a PostgreSQL program");
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn conn_args(port: u16, db: &str) -> Vec<String> {
    vec!["-h".into(), "127.0.0.1".into(), "-p".into(), port.to_string(), "-U".into(), "postgres".into(), "-d".into(), db.into()]
}

/// `pg_dump` of `db` on `cluster` with `extra` options into `file`.
fn dump(cluster: &Cluster, db: &str, extra: &[&str], file: &Path) {
    let mut args = conn_args(cluster.port, db);
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(["-f".to_string(), file.display().to_string()]);
    run(&cluster.paths.bin_dir, "pg_dump", &args);
}

/// A fresh cluster with the source's roles.
fn target_cluster(name: &str, roles: &[&str]) -> pgt_testkit::DedicatedCluster {
    let target = Cluster::dedicated(name, vec!["pg_trickle.default_schedule_seconds = 3600".into()]);
    let mut admin = target.cluster.connect("postgres").expect("connect to the fresh cluster");
    for role in roles {
        admin.batch_execute(&format!("CREATE ROLE \"{role}\" LOGIN NOSUPERUSER")).expect("create role");
    }
    target
}

fn create_database(cluster: &Cluster, db: &str, with_extension: bool) -> Client {
    let mut admin = cluster.connect("postgres").expect("connect");
    admin.batch_execute(&format!("CREATE DATABASE \"{db}\"")).expect("create database");
    let mut client = cluster.connect(db).expect("connect to the new database");
    if with_extension {
        client.batch_execute("CREATE EXTENSION pg_trickle").expect("create extension");
    }
    client
}

/// `finish_restore()`'s rows as "name status detail".
fn finish_restore(client: &mut Client) -> Vec<(String, String, String)> {
    client
        .query("SELECT stream_table, status, detail FROM pgtrickle.finish_restore()", &[])
        .expect("finish_restore")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// The checks after a restore of everything (see the module doc).
fn check_restored(client: &mut Client, what: &str, want_describe: &[String], want_footprint: &[String], seed: u64) {
    assert_eq!(rows(client, DESCRIBE), want_describe, "{what}: stream tables as a DBA sees them");
    assert_eq!(rows(client, FOOTPRINT), want_footprint, "{what}: pg_trickle's triggers and buffers");
    for (name, ..) in STREAM_TABLES {
        assert_st_matches_query(client, name, &expected_query(name));
    }
    // Capture works and the next refreshes are DIFFERENTIAL where they were.
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    random_dml(client, &mut rng, 50);
    refresh_and_check(client, what);
    let actions = rows(
        client,
        "SELECT st.pgt_relid::regclass::text || ' ' || (SELECT h.action FROM pgtrickle.pgt_refresh_history h
                 WHERE h.pgt_id = st.pgt_id ORDER BY h.refresh_id DESC LIMIT 1)
         FROM pgtrickle.pgt_stream_tables st WHERE st.effective_refresh_mode = 'DIFFERENTIAL' ORDER BY 1",
    );
    for line in &actions {
        assert!(line.ends_with(" DIFFERENTIAL"), "{what}: the refresh after the restore: {actions:?}");
    }
    // The scheduler refreshes the diamond by itself.
    for round in 51..55 {
        random_dml(client, &mut rng, round);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (only_st, only_query) = pgt_testkit::st_difference(client, SCHEDULED, &expected_query(SCHEDULED));
        if only_st.is_empty() && only_query.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "{what}: the scheduler did not refresh {SCHEDULED}: {only_st:?} / {only_query:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    for round in 55..58 {
        random_dml(client, &mut rng, round);
        refresh_and_check(client, what);
    }
}

#[test]
fn full_dump_round_trip() {
    let (mut db, owner, reader) = source_database("restore_full");
    let describe = rows(&mut db.client, DESCRIBE);
    let footprint = rows(&mut db.client, FOOTPRINT);
    assert_eq!(describe.len(), STREAM_TABLES.len());
    let scratch = pg_trickle_e2e::tools::Scratch::new("restore_full");
    let plain = scratch.dir.join("dump.sql");
    let custom = scratch.dir.join("dump.custom");
    dump(&db.cluster, &db.name, &["-Fp"], &plain);
    dump(&db.cluster, &db.name, &["-Fc"], &custom);
    let text = std::fs::read_to_string(&plain).expect("read the plain dump");
    assert!(!text.contains("pgtrickle_changes.changes_"), "no change buffer is dumped");
    assert!(!text.contains("pgtrickle_state."), "no state table is dumped");
    assert!(!text.contains("pgtrickle.pgt_"), "no catalog row is dumped");

    let target = target_cluster("restore_full", &[&owner, &reader]);
    let cluster = &target.cluster;
    let bin = &cluster.paths.bin_dir;

    // Plain format, through psql stopping at the first error.
    let mut plain_db = create_database(cluster, "from_plain", false);
    let mut args = conn_args(cluster.port, "from_plain");
    args.extend(["-X".to_string(), "-q".into(), "-v".into(), "ON_ERROR_STOP=1".into(), "-f".into(), plain.display().to_string()]);
    run(bin, "psql", &args);
    // Before finish_restore: nothing is a stream table yet, writes to the
    // sources work (the restored capture functions do nothing), and the
    // stream tables refuse writes.
    assert_eq!(rows(&mut plain_db, "SELECT count(*)::text FROM pgtrickle.pgt_stream_tables"), ["0"]);
    plain_db.batch_execute("INSERT INTO app.orders VALUES (5000001, 'c1', 99)").expect("a write before finish_restore");
    let e = plain_db.batch_execute("DELETE FROM reports.by_cust").expect_err("the guard holds");
    assert_eq!(pg_trickle_e2e::sqlstate(&e).as_deref(), Some("42809"), "{e}");
    let e = plain_db
        .batch_execute("SELECT pgtrickle.create_stream_table('reports.by_cust', 'SELECT 1 AS one')")
        .expect_err("the name is taken");
    let e = e.as_db_error().map(|d| d.hint().unwrap_or_default().to_string()).unwrap_or_default();
    assert!(e.contains("pgtrickle.finish_restore()"), "the hint points at finish_restore: {e}");
    let outcome = finish_restore(&mut plain_db);
    assert_eq!(outcome.len(), STREAM_TABLES.len(), "{outcome:?}");
    for (name, status, detail) in &outcome {
        assert_eq!(status, "restored", "{name}: {detail}");
        assert!(detail.contains("recomputed from its sources once"), "{name}: {detail}");
    }
    let order: Vec<&str> = outcome.iter().map(|(n, ..)| n.as_str()).collect();
    let pos = |n: &str| order.iter().position(|x| *x == n).unwrap_or_else(|| panic!("{n} missing from {order:?}"));
    assert!(pos("reports.by_cust") < pos("reports.big"), "upstream first: {order:?}");
    assert!(pos("reports.d_sum") < pos("reports.d_join") && pos("reports.d_count") < pos("reports.d_join"), "{order:?}");
    assert!(finish_restore(&mut plain_db).is_empty(), "a second finish_restore has nothing to do");
    check_restored(&mut plain_db, "plain", &describe, &footprint, 1);

    // Custom format, through pg_restore stopping at the first error.
    create_database(cluster, "from_custom", false);
    let mut args = conn_args(cluster.port, "from_custom");
    args.extend(["--exit-on-error".to_string(), custom.display().to_string()]);
    run(bin, "pg_restore", &args);
    let mut custom_db = cluster.connect("from_custom").expect("connect");
    let outcome = finish_restore(&mut custom_db);
    assert!(outcome.iter().all(|(_, s, _)| s == "restored") && outcome.len() == STREAM_TABLES.len(), "{outcome:?}");
    check_restored(&mut custom_db, "custom", &describe, &footprint, 2);
    // The owner refreshes its own stream table in the restored database.
    let mut as_owner = cluster.connect_as("from_custom", &owner).expect("connect as the owner");
    as_owner.batch_execute("SELECT pgtrickle.refresh_stream_table('reports.by_cust')").expect("the owner's refresh");
    let e = as_owner.batch_execute("SELECT * FROM pgtrickle.finish_restore()").expect_err("only the extension's owner");
    assert_eq!(pg_trickle_e2e::sqlstate(&e).as_deref(), Some("42501"), "{e}");
    drop(db);
}

#[test]
fn partial_dumps() {
    let (mut db, owner, reader) = source_database("restore_partial");
    let describe = rows(&mut db.client, DESCRIBE);
    let scratch = pg_trickle_e2e::tools::Scratch::new("restore_partial");
    let schema_only = scratch.dir.join("schema.custom");
    let data_only = scratch.dir.join("data.custom");
    let sources = scratch.dir.join("app.custom");
    let reports = scratch.dir.join("reports.custom");
    dump(&db.cluster, &db.name, &["-Fc", "--schema-only"], &schema_only);
    dump(&db.cluster, &db.name, &["-Fc", "--data-only"], &data_only);
    dump(&db.cluster, &db.name, &["-Fc", "-n", "app"], &sources);
    dump(&db.cluster, &db.name, &["-Fc", "-n", "reports"], &reports);
    let target = target_cluster("restore_partial", &[&owner, &reader]);
    let cluster = &target.cluster;
    let bin = &cluster.paths.bin_dir;
    let restore = |db: &str, extra: &[&str], file: &Path| {
        let mut args = conn_args(cluster.port, db);
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(["--exit-on-error".to_string(), file.display().to_string()]);
        run(bin, "pg_restore", &args);
    };

    // --schema-only: the stream tables come back populated from the (empty)
    // sources by finish_restore.
    let mut client = create_database(cluster, "schema_then_data", false);
    restore("schema_then_data", &[], &schema_only);
    let outcome = finish_restore(&mut client);
    assert!(outcome.iter().all(|(_, s, _)| s == "restored") && outcome.len() == STREAM_TABLES.len(), "{outcome:?}");
    assert_eq!(rows(&mut client, DESCRIBE), describe, "schema-only: stream tables as a DBA sees them");
    for (name, ..) in STREAM_TABLES {
        assert_st_matches_query(&mut client, name, &expected_query(name));
    }
    assert_eq!(rows(&mut client, "SELECT count(*)::text FROM reports.by_cust"), ["0"]);
    // --data-only into this installation: sources are captured, the stream
    // tables' dumped rows loaded and then replaced by finish_restore.
    restore("schema_then_data", &["--data-only"], &data_only);
    let outcome = finish_restore(&mut client);
    let recomputed: Vec<&str> = outcome.iter().filter(|(_, s, _)| s == "recomputed").map(|(n, ..)| n.as_str()).collect();
    assert!(outcome.iter().all(|(_, s, _)| s == "recomputed"), "{outcome:?}");
    assert!(recomputed.contains(&"reports.by_cust") && recomputed.contains(&"reports.live"), "{outcome:?}");
    let footprint = rows(&mut db.client, FOOTPRINT);
    check_restored(&mut client, "schema-only then data-only", &describe, &footprint, 3);

    // -n reports into a database holding the sources, restored from -n app
    // (their capture triggers call an extension function, and restore).
    let mut client = create_database(cluster, "schemas", true);
    restore("schemas", &[], &sources);
    restore("schemas", &[], &reports);
    let outcome = finish_restore(&mut client);
    assert!(outcome.iter().all(|(_, s, _)| s == "restored") && outcome.len() == STREAM_TABLES.len(), "{outcome:?}");
    check_restored(&mut client, "-n app, then -n reports", &describe, &footprint, 4);

    // -n reports alone, into a database without the sources: a clear result,
    // and the tables stay as restored (still refusing writes).
    let mut client = create_database(cluster, "reports_alone", true);
    restore("reports_alone", &[], &reports);
    let outcome = finish_restore(&mut client);
    assert_eq!(outcome.len(), STREAM_TABLES.len(), "{outcome:?}");
    for (name, status, detail) in &outcome {
        assert_eq!(status, "not restored", "{name}: {detail}");
        assert!(
            detail.contains("does not exist") || detail.contains("could not be restored"),
            "{name}: the reason is given: {detail}"
        );
    }
    let by_cust = outcome.iter().find(|(n, ..)| n == "reports.by_cust").expect("by_cust");
    assert!(by_cust.2.contains("app.orders"), "names the missing source: {by_cust:?}");
    let big = outcome.iter().find(|(n, ..)| n == "reports.big").expect("big");
    assert!(big.2.contains("reports.by_cust"), "names the upstream stream table: {big:?}");
    let e = client.batch_execute("DELETE FROM reports.by_cust").expect_err("the guard holds");
    assert_eq!(pg_trickle_e2e::sqlstate(&e).as_deref(), Some("42809"), "{e}");
    assert_eq!(rows(&mut client, "SELECT count(*)::text FROM pgtrickle.pgt_stream_tables"), ["0"]);
    drop(db);
}

/// A dump taken after a source was renamed and before the stream table's
/// reinitialization (which stores the query under the new names) carries the
/// query under the new names, from its stored query tree.
#[test]
fn dump_between_a_rename_and_the_reinitialization() {
    let mut db = TestDb::new("restore_renamed");
    db.exec(
        "CREATE TABLE src (id int PRIMARY KEY, v int);
         INSERT INTO src SELECT g, g % 7 FROM generate_series(1, 50) g;
         SELECT pgtrickle.create_stream_table('st', 'SELECT v, count(*) AS n FROM src GROUP BY v', refresh_mode => 'DIFFERENTIAL');
         SET pg_trickle.block_source_ddl = off;
         ALTER TABLE src RENAME TO src2;
         ALTER TABLE src2 RENAME COLUMN v TO w;
         RESET pg_trickle.block_source_ddl;
         INSERT INTO src2 VALUES (100, 3);",
    );
    assert!(db.scalar::<bool>("SELECT needs_reinit FROM pgtrickle.pgt_stream_tables", &[]), "marked for reinitialization");
    let scratch = pg_trickle_e2e::tools::Scratch::new("restore_renamed");
    let file = scratch.dir.join("dump.custom");
    dump(&db.cluster, &db.name, &["-Fc"], &file);
    let target = format!("{}_restored", db.name);
    let mut client = create_database(&db.cluster, &target, false);
    let mut args = conn_args(db.cluster.port, &target);
    args.extend(["--exit-on-error".to_string(), file.display().to_string()]);
    run(&db.cluster.paths.bin_dir, "pg_restore", &args);
    let outcome = finish_restore(&mut client);
    assert_eq!(outcome.len(), 1, "{outcome:?}");
    assert_eq!(outcome[0].1, "restored", "{outcome:?}");
    client.batch_execute("DELETE FROM src2 WHERE id < 10; SELECT pgtrickle.refresh_stream_table('st')").expect("DML and refresh");
    assert_st_matches_query(&mut client, "st", "SELECT w AS v, count(*) AS n FROM src2 GROUP BY w");
    drop(client);
    let mut admin = db.cluster.connect("postgres").expect("connect");
    admin.batch_execute(&format!("DROP DATABASE \"{target}\" WITH (FORCE)")).expect("drop the restored database");
}

/// A COPY into a stream table (what a data-only restore runs) is its owner's
/// alone: a role granted INSERT on it gets 42501 and changes nothing; the
/// owner's rows replace the contents until the next refresh recomputes it.
#[test]
fn copy_into_a_stream_table_needs_its_owner() {
    use std::io::Write;
    let mut db = TestDb::new("restore_copy");
    let owner = db.create_role("owner", "NOSUPERUSER");
    let writer = db.create_role("writer", "NOSUPERUSER");
    db.exec(&format!(
        "CREATE TABLE src (id int PRIMARY KEY, v int); INSERT INTO src SELECT g, g % 3 FROM generate_series(1, 30) g;
         ALTER TABLE src OWNER TO \"{owner}\"; GRANT CREATE ON SCHEMA public TO \"{owner}\";"
    ));
    let query = "SELECT v, count(*) AS n FROM src GROUP BY v";
    let mut as_owner = db.connect_as(&owner);
    as_owner
        .batch_execute(&format!(
            "SELECT pgtrickle.create_stream_table('st', '{query}', refresh_mode => 'DIFFERENTIAL');
             GRANT SELECT, INSERT ON st TO \"{writer}\";"
        ))
        .expect("the owner's stream table");
    let row_id: i64 = db.scalar("SELECT __pgt_row_id FROM st WHERE v = 0", &[]);
    let copy = |client: &mut pgt_testkit::postgres::Client, line: &str| -> Result<u64, pgt_testkit::postgres::Error> {
        let mut w = client.copy_in("COPY st (v, n, __pgt_row_id, __pgt_count, __pgt_aux_count_1) FROM STDIN")?;
        w.write_all(line.as_bytes()).expect("write the COPY data");
        w.finish()
    };
    let mut as_writer = db.connect_as(&writer);
    let e = copy(&mut as_writer, &format!("7\t99\t{row_id}\t99\t99\n")).expect_err("only the owner loads rows");
    // The server refuses the first row while the client may still be
    // sending: the client library then sometimes reports the error response
    // as an unexpected message rather than with its SQLSTATE.
    match pg_trickle_e2e::sqlstate(&e) {
        Some(state) => assert_eq!(state, "42501", "{e}"),
        None => assert!(e.to_string().contains("unexpected message from server"), "{e}"),
    }
    assert_st_matches_query(&mut db.client, "st", query);
    assert!(!db.scalar::<bool>("SELECT needs_reinit FROM pgtrickle.pgt_stream_tables", &[]), "nothing marked");
    copy(&mut as_owner, &format!("7\t99\t{row_id}\t99\t99\n")).expect("the owner's COPY");
    assert_eq!(db.scalar::<i64>("SELECT count(*) FROM st", &[]), 1, "the loaded row replaced the contents");
    db.exec("INSERT INTO src VALUES (100, 4); SELECT pgtrickle.refresh_stream_table('st')");
    assert_st_matches_query(&mut db.client, "st", query);
}
