//! pg_trickle among other users: ordinary work by non-superusers is unaffected; a
//! non-superuser creates and owns stream tables over what it can read, like
//! CREATE MATERIALIZED VIEW; refreshes run the query as the owner inside a
//! security-restricted operation; internals are not writable by users.

use pg_trickle_e2e::*;
use pgt_testkit::testdb_expect_error as expect_error;

#[test]
fn non_superuser_ordinary_ddl_and_dml_are_unaffected() {
    let mut db = TestDb::new("ordinary_work");
    let alice = db.create_role("alice", "NOSUPERUSER");
    db.exec(&format!("GRANT CREATE ON SCHEMA public TO \"{alice}\"; GRANT CREATE ON DATABASE \"{}\" TO \"{alice}\"", db.name));
    // A stream table exists, so the catalog is not empty while alice works.
    db.exec("CREATE TABLE base (x int); INSERT INTO base VALUES (1); SELECT pgtrickle.create_stream_table('st', 'SELECT x FROM base')");
    let mut a = db.connect_as(&alice);
    a.batch_execute(
        "CREATE TABLE mine (id int PRIMARY KEY, v text);
         INSERT INTO mine VALUES (1, 'a'), (2, 'b');
         UPDATE mine SET v = 'c' WHERE id = 1;
         DELETE FROM mine WHERE id = 2;
         ALTER TABLE mine ADD COLUMN extra int;
         ALTER TABLE mine RENAME COLUMN extra TO extra2;
         CREATE INDEX mine_v ON mine (v);
         CREATE VIEW mine_view AS SELECT * FROM mine;
         CREATE FUNCTION mine_sql(int) RETURNS int LANGUAGE sql AS 'SELECT $1 + 1';
         CREATE FUNCTION mine_plpgsql() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
         CREATE TRIGGER mine_trg BEFORE INSERT ON mine FOR EACH ROW EXECUTE FUNCTION mine_plpgsql();
         CREATE SCHEMA alice_space;
         CREATE TABLE alice_space.t AS SELECT * FROM mine;
         CREATE MATERIALIZED VIEW mine_mv AS SELECT count(*) FROM mine;
         REFRESH MATERIALIZED VIEW mine_mv;
         TRUNCATE mine;
         DROP TRIGGER mine_trg ON mine;
         DROP FUNCTION mine_plpgsql();
         DROP FUNCTION mine_sql(int);
         DROP VIEW mine_view;
         DROP MATERIALIZED VIEW mine_mv;
         DROP INDEX mine_v;
         DROP TABLE mine;
         DROP SCHEMA alice_space CASCADE;
         SELECT pgt_id, defining_query, status FROM pgtrickle.pgt_stream_tables;",
    )
    .unwrap_or_else(|e| panic!("alice's ordinary work failed: {e:?}"));
    drop(a);
    db.exec("INSERT INTO base VALUES (2); SELECT pgtrickle.refresh_stream_table('st')");
    assert_st_matches_query(&mut db.client, "st", "SELECT x FROM base");
}

#[test]
fn non_superuser_creates_and_owns_stream_tables() {
    let mut db = TestDb::new("owner_alice");
    let alice = db.create_role("alice", "NOSUPERUSER");
    let bob = db.create_role("bob", "NOSUPERUSER");
    db.exec(&format!("GRANT CREATE ON SCHEMA public TO \"{alice}\", \"{bob}\""));
    let mut b = db.connect_as(&bob);
    b.batch_execute(&format!(
        "CREATE TABLE bobs (id int PRIMARY KEY, amount int);
         INSERT INTO bobs SELECT g, g FROM generate_series(1, 10) g;
         -- SELECT to read it; TRIGGER lets alice start change capture on it
         -- (without it, her stream table would refresh FULL).
         GRANT SELECT, TRIGGER ON bobs TO \"{alice}\";"
    ))
    .unwrap();
    let mut a = db.connect_as(&alice);
    a.batch_execute(
        "CREATE TABLE alices (id int PRIMARY KEY, bob_id int);
         INSERT INTO alices SELECT g, g % 5 FROM generate_series(1, 20) g;
         SELECT pgtrickle.create_stream_table('joined', 'SELECT a.id, b.amount FROM alices a JOIN bobs b ON b.id = a.bob_id');",
    )
    .unwrap_or_else(|e| panic!("alice cannot create a stream table: {e:?}"));
    let owner: String = db.scalar("SELECT relowner::regrole::text FROM pg_class WHERE oid = 'joined'::regclass", &[]);
    assert_eq!(owner, alice);
    let mode: String = db.scalar("SELECT effective_refresh_mode FROM pgtrickle.pgt_stream_tables", &[]);
    assert_eq!(mode, "DIFFERENTIAL");
    // Bob writes to his table; capture works although bob cannot see pgtrickle_changes.
    b.batch_execute("UPDATE bobs SET amount = amount * 10; INSERT INTO bobs VALUES (0, 7)").unwrap();
    let buffer: String = db.scalar("SELECT 'pgtrickle_changes.changes_' || 'bobs'::regclass::oid::text", &[]);
    expect_error(&mut b, &format!("SELECT * FROM {buffer}"), "42501");
    a.batch_execute("SELECT pgtrickle.refresh_stream_table('joined'); SELECT pgtrickle.alter_stream_table('joined', schedule => '2m')")
        .unwrap();
    let q = "SELECT a.id, b.amount FROM alices a JOIN bobs b ON b.id = a.bob_id";
    assert_st_matches_query(&mut db.client, "joined", q);
    // Bob may neither refresh, alter nor drop alice's stream table.
    for f in ["refresh_stream_table('joined')", "alter_stream_table('joined', schedule => '1m')", "drop_stream_table('joined')"] {
        let err = expect_error(&mut b, &format!("SELECT pgtrickle.{f}"), "42501");
        assert!(err.contains("must be owner of stream table public.joined"), "{err}");
    }
    a.batch_execute("SELECT pgtrickle.drop_stream_table('joined')").unwrap();
    assert_eq!(buffer_count(&mut db), 0);
    assert_eq!(capture_trigger_count(&mut db), 0);
}

#[test]
fn cannot_create_a_stream_table_over_an_unreadable_table() {
    let mut db = TestDb::new("unreadable");
    let alice = db.create_role("alice", "NOSUPERUSER");
    db.exec(&format!(
        "GRANT CREATE ON SCHEMA public TO \"{alice}\";
         CREATE TABLE secret (id int, payload text); INSERT INTO secret VALUES (1, 'x');
         CREATE VIEW secret_view AS SELECT id FROM secret;"
    ));
    let before = footprint(&mut db);
    let mut a = db.connect_as(&alice);
    for q in ["SELECT id, payload FROM secret", "SELECT id FROM secret_view", "SELECT 1 AS one WHERE EXISTS (SELECT 1 FROM secret)"] {
        for init in ["true", "false"] {
            let err = expect_error(&mut a, &format!("SELECT pgtrickle.create_stream_table('peek', $q${q}$q$, initialize => {init})"), "42501");
            assert!(err.contains("permission denied"), "{err}");
        }
    }
    drop(a);
    assert_eq!(footprint(&mut db), before);
    // With the view granted (views run with their owner's rights) it works, as for CREATE MATERIALIZED VIEW.
    db.exec(&format!("GRANT SELECT ON secret_view TO \"{alice}\""));
    let mut a = db.connect_as(&alice);
    a.batch_execute("SELECT pgtrickle.create_stream_table('peek', 'SELECT id FROM secret_view')").unwrap();
    assert_st_matches_query(&mut db.client, "peek", "SELECT id FROM secret_view");
}

#[test]
fn refresh_runs_the_query_as_the_owner_in_a_security_restricted_operation() {
    let mut db = TestDb::new("restricted");
    let alice = db.create_role("alice", "NOSUPERUSER");
    db.exec(&format!("GRANT CREATE ON SCHEMA public TO \"{alice}\""));
    let mut a = db.connect_as(&alice);
    a.batch_execute(
        "CREATE TABLE src (id int);
         INSERT INTO src VALUES (1), (2);
         CREATE TABLE seen (who text);
         CREATE FUNCTION who_runs_me() RETURNS text LANGUAGE plpgsql AS $$
         BEGIN
           INSERT INTO public.seen VALUES (current_user);
           RETURN current_user;
         END $$;
         SELECT pgtrickle.create_stream_table('probe', 'SELECT id, public.who_runs_me() AS who FROM src');",
    )
    .unwrap();
    // A superuser refreshes alice's stream table: the query still runs as alice.
    db.exec("TRUNCATE seen; SELECT pgtrickle.refresh_stream_table('probe')");
    let runners: Vec<String> = db.column("SELECT DISTINCT who FROM seen", &[]);
    assert_eq!(runners, vec![alice.clone()]);
    assert_st_matches_query(&mut db.client, "probe", &format!("SELECT id, '{alice}'::text AS who FROM src"));

    // A function that tries to escalate fails the refresh; the contents stay.
    a.batch_execute(
        "CREATE OR REPLACE FUNCTION who_runs_me() RETURNS text LANGUAGE plpgsql AS $$
         BEGIN
           EXECUTE 'SET ROLE postgres';
           RETURN current_user;
         END $$;",
    )
    .unwrap();
    let before: i64 = count(&mut db, "probe");
    db.exec("INSERT INTO src VALUES (3)");
    let err = db.expect_error("SELECT pgtrickle.refresh_stream_table('probe')", "42501");
    assert!(err.contains("security-restricted") || err.contains("permission denied"), "{err}");
    assert_eq!(count(&mut db, "probe"), before);
    a.batch_execute(
        "CREATE OR REPLACE FUNCTION who_runs_me() RETURNS text LANGUAGE plpgsql AS $$
         BEGIN
           CREATE TEMP TABLE sneaky (x int);
           RETURN current_user;
         END $$;",
    )
    .unwrap();
    let err = db.expect_error("SELECT pgtrickle.refresh_stream_table('probe')", "42501");
    assert!(err.contains("security-restricted"), "{err}");
    // The superuser's session is untouched afterwards.
    assert_eq!(db.scalar::<String>("SELECT current_user::text", &[]), "postgres");
}

#[test]
fn internals_are_not_writable_by_users() {
    let mut db = TestDb::new("internals");
    let mallory = db.create_role("mallory", "NOSUPERUSER");
    db.exec("CREATE TABLE t (x int); INSERT INTO t VALUES (1); SELECT pgtrickle.create_stream_table('st', 'SELECT x FROM t')");
    let before = footprint(&mut db);
    let mut m = db.connect_as(&mallory);
    for sql in [
        "DELETE FROM pgtrickle.pgt_stream_tables",
        "UPDATE pgtrickle.pgt_stream_tables SET defining_query = 'SELECT 1'",
        "INSERT INTO pgtrickle.pgt_refresh_history (pgt_id, start_time, action, status, initiated_by) VALUES (1, now(), 'FULL', 'SUCCESS', 'MANUAL')",
        "SELECT pgtrickle._on_relations_dropped(ARRAY['st'::regclass::oid])",
        "SELECT pgtrickle._on_sql_drop()",
    ] {
        expect_error(&mut m, sql, "42501");
    }
    let buffer: String = db.scalar("SELECT 'pgtrickle_changes.changes_' || 't'::regclass::oid::text", &[]);
    expect_error(&mut m, &format!("DELETE FROM {buffer}"), "42501");
    // Reading the catalog is fine.
    let n: i64 = m.query_one("SELECT count(*) FROM pgtrickle.pgt_stream_tables", &[]).unwrap().get(0);
    assert_eq!(n, 1);
    drop(m);
    assert_eq!(footprint(&mut db), before);
    db.exec("INSERT INTO t VALUES (2); SELECT pgtrickle.refresh_stream_table('st')");
    assert_st_matches_query(&mut db.client, "st", "SELECT x FROM t");
}
