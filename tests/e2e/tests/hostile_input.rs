//! Regression tests for review findings: names and types that could break out of
//! generated SQL, clash with PL/pgSQL, or resolve differently under a pinned
//! search_path; DDL that could break writes to a captured source.

use pg_trickle_e2e::*;

/// A column name containing the old dollar-quote marker, quotes and semicolons
/// must stay a column name: no statement it spells may run (here: granting
/// superuser to an ordinary role).
#[test]
fn column_names_cannot_inject_sql_into_the_capture_function() {
    let mut db = TestDb::new("injection");
    // A short role name: the payload must fit in 63 bytes, or PostgreSQL truncates it.
    let mallory = db.create_role_named(&format!("m_{:08x}", rand::random::<u32>()), "NOSUPERUSER");
    db.exec(&format!("GRANT CREATE ON SCHEMA public TO \"{mallory}\""));
    let payload = format!("$pgt$;ALTER ROLE {mallory} SUPERUSER;SELECT $pgt$");
    assert!(payload.len() < 64);
    let payload_ident = payload.replace('"', "\"\"");
    let mut m = db.connect_as(&mallory);
    m.batch_execute(&format!(
        "SET check_function_bodies = off;
         CREATE TABLE m (\"{payload_ident}\" int, \"$$\" int, \"a'b\" text, \"x\\\\y\" int);
         INSERT INTO m VALUES (1, 2, 'q', 3);
         SELECT pgtrickle.create_stream_table('x', 'SELECT count(*) AS n FROM m');
         INSERT INTO m VALUES (4, 5, 'r', 6);
         UPDATE m SET \"$$\" = 9;
         DELETE FROM m WHERE \"a'b\" = 'q';
         SELECT pgtrickle.refresh_stream_table('x');"
    ))
    .unwrap_or_else(|e| panic!("hostile column names must just work: {e:?}"));
    let is_super: bool = db.scalar("SELECT rolsuper FROM pg_roles WHERE rolname = $1", &[&mallory]);
    assert!(!is_super, "a column name escalated privileges");
    let buffer: String = db.scalar("SELECT 'pgtrickle_changes.changes_' || 'm'::regclass::oid::text", &[]);
    let payload_column: bool = db.scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = $1::text::regclass AND attname = $2)",
        &[&buffer, &payload],
    );
    assert!(payload_column, "the buffer has the column under its exact name");
    assert_st_matches_query(&mut db.client, "x", "SELECT count(*) AS n FROM m");
}

/// Columns named like PL/pgSQL trigger variables (an audit table's `tg_op`).
#[test]
fn columns_named_like_plpgsql_variables() {
    let mut db = TestDb::new("plpgsql_names");
    db.exec(
        "CREATE TABLE audit (id int PRIMARY KEY, tg_op text, new int, old int, found bool, tg_name text, t int);
         INSERT INTO audit VALUES (1, 'INSERT', 1, 0, true, 'x', 7);
         SELECT pgtrickle.create_stream_table('audit_st', 'SELECT tg_op, count(*) AS n, sum(new) AS s FROM audit GROUP BY tg_op');
         INSERT INTO audit VALUES (2, 'UPDATE', 2, 1, false, 'y', 8);
         UPDATE audit SET new = new + 10, tg_op = 'DELETE' WHERE id = 1;
         DELETE FROM audit WHERE id = 2;
         SELECT pgtrickle.refresh_stream_table('audit_st');",
    );
    assert_st_matches_query(&mut db.client, "audit_st", "SELECT tg_op, count(*) AS n, sum(new) AS s FROM audit GROUP BY tg_op");
}

/// Sources with user-defined and extension types outside pg_catalog.
#[test]
fn sources_with_user_defined_types() {
    let mut db = TestDb::new("udt");
    db.exec(
        "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
         CREATE DOMAIN positive AS int CHECK (VALUE > 0);
         CREATE TYPE pair AS (a int, b text);
         CREATE SCHEMA ext; CREATE EXTENSION citext SCHEMA ext;
         SET search_path = public, ext;
         CREATE TABLE people (id int PRIMARY KEY, m mood, p positive, pr pair, email citext);
         INSERT INTO people VALUES (1, 'ok', 3, ROW(1, 'x'), 'A@x'), (2, 'sad', 4, ROW(2, 'y'), 'b@X');
         SELECT pgtrickle.create_stream_table('by_mood', 'SELECT m, count(*) AS n, sum(p) AS total, max(email) AS e FROM people GROUP BY m');
         INSERT INTO people VALUES (3, 'happy', 5, ROW(3, 'z'), 'c@x');
         UPDATE people SET m = 'happy' WHERE id = 1;
         SELECT pgtrickle.refresh_stream_table('by_mood');",
    );
    db.exec("SET search_path = pg_catalog, pg_temp");
    let buffer_types: Vec<String> = db.column(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute a JOIN pgtrickle.pgt_change_tracking ct \
         ON a.attrelid = ct.buffer_relid WHERE attnum > 2 ORDER BY attnum",
        &[],
    );
    // A domain is captured as its base type: the buffer's TRUNCATE markers and
    // pending rows must not trip its constraints.
    assert_eq!(buffer_types, vec!["integer", "public.mood", "integer", "public.pair", "ext.citext"]);
    db.exec("SET search_path = public, ext");
    assert_st_matches_query(&mut db.client, "by_mood", "SELECT m, count(*) AS n, sum(p) AS total, max(email) AS e FROM people GROUP BY m");
}

/// DDL that drops or renames a source column without ALTER TABLE.
#[test]
fn cascaded_column_drops_and_typed_tables_keep_writes_working() {
    let mut db = TestDb::new("cascade_ddl");
    db.exec(
        "CREATE TYPE tag AS ENUM ('a', 'b');
         CREATE TABLE items (id int PRIMARY KEY, t tag, v int);
         INSERT INTO items VALUES (1, 'a', 1);
         CREATE TYPE shape AS (id int, name text, extra int);
         CREATE TABLE shapes OF shape;
         INSERT INTO shapes VALUES (1, 'circle', 0);
         SELECT pgtrickle.create_stream_table('item_ids', 'SELECT id, v FROM items');
         SELECT pgtrickle.create_stream_table('shape_ids', 'SELECT id FROM shapes');",
    );
    db.exec("DROP TYPE tag CASCADE");
    db.exec("INSERT INTO items VALUES (2, 2); UPDATE items SET v = 5");
    db.exec("ALTER TYPE shape RENAME ATTRIBUTE name TO label CASCADE");
    db.exec("ALTER TYPE shape DROP ATTRIBUTE extra CASCADE");
    db.exec("INSERT INTO shapes VALUES (2, 'square'); DELETE FROM shapes WHERE id = 1");
    db.exec("SELECT pgtrickle.refresh_stream_table('item_ids'); SELECT pgtrickle.refresh_stream_table('shape_ids')");
    assert_st_matches_query(&mut db.client, "item_ids", "SELECT id, v FROM items");
    assert_st_matches_query(&mut db.client, "shape_ids", "SELECT id FROM shapes");
}

/// A table rewrite that keeps a column's type (USING) is found in the collected
/// commands: it concerns the stream tables reading that column (they
/// reinitialize) and nobody else.
#[test]
fn same_type_rewrites_concern_exactly_the_readers_of_the_column() {
    let mut db = TestDb::new("rewrite");
    db.exec(
        "SET pg_trickle.block_source_ddl = off;
         CREATE TABLE r (id int PRIMARY KEY, v int, w int); INSERT INTO r VALUES (1, 1, 1), (2, 2, 2);
         SELECT pgtrickle.create_stream_table('reads_v', 'SELECT id, v FROM r');
         SELECT pgtrickle.create_stream_table('reads_w', 'SELECT id, w FROM r');",
    );
    db.exec("UPDATE r SET w = w + 1");
    db.exec("ALTER TABLE r ALTER COLUMN v TYPE int USING v * 10");
    let flagged: Vec<String> = db.column("SELECT pgt_relid::regclass::text FROM pgtrickle.pgt_stream_tables WHERE needs_reinit ORDER BY 1", &[]);
    assert_eq!(flagged, vec!["reads_v".to_string()]);
    db.exec("SELECT pgtrickle.refresh_stream_table('reads_v'); SELECT pgtrickle.refresh_stream_table('reads_w')");
    assert_st_matches_query(&mut db.client, "reads_v", "SELECT id, v FROM r");
    assert_st_matches_query(&mut db.client, "reads_w", "SELECT id, w FROM r");
    db.exec("RESET pg_trickle.block_source_ddl");
    db.expect_error("ALTER TABLE r ALTER COLUMN w TYPE int USING w + 1", "2BP01");
}

/// Capture triggers fire under session_replication_role = replica (logical
/// replication apply workers).
#[test]
fn capture_fires_for_replicated_writes() {
    let mut db = TestDb::new("replica_role");
    db.exec("CREATE TABLE rep (id int PRIMARY KEY); SELECT pgtrickle.create_stream_table('rep_st', 'SELECT id FROM rep')");
    db.exec("SET session_replication_role = replica; INSERT INTO rep VALUES (1), (2); RESET session_replication_role;");
    let buffer: String = db.scalar("SELECT 'pgtrickle_changes.changes_' || 'rep'::regclass::oid::text", &[]);
    assert_eq!(count(&mut db, &buffer), 2);
    db.exec("SELECT pgtrickle.refresh_stream_table('rep_st')");
    assert_st_matches_query(&mut db.client, "rep_st", "SELECT id FROM rep");
}

#[test]
fn more_rejected_sources_and_queries() {
    let mut db = TestDb::new("more_rejections");
    db.exec(
        "CREATE TABLE p (id int, k int) PARTITION BY RANGE (k);
         CREATE TABLE p1 PARTITION OF p FOR VALUES FROM (0) TO (10);
         CREATE TABLE base (x int); CREATE TABLE kid () INHERITS (base);
         CREATE TABLE t (id int);
         CREATE FUNCTION pg_temp.tmpf(int) RETURNS int LANGUAGE sql AS 'SELECT $1';",
    );
    let before = footprint(&mut db);
    for (q, code, needle) in [
        ("SELECT id FROM p1", "0A000", "partition public.p1"),
        ("SELECT x FROM kid", "0A000", "inheritance child public.kid"),
        ("SELECT * FROM (SELECT id FROM t FOR UPDATE) s", "0A000", "FOR UPDATE"),
        ("WITH c AS (SELECT id FROM t FOR SHARE) SELECT id FROM c", "0A000", "FOR UPDATE/SHARE"),
        ("SELECT pg_temp.tmpf(id) AS v FROM t", "0A000", "temporary objects"),
    ] {
        let err = db.expect_error(&format!("SELECT pgtrickle.create_stream_table('x', $q${q}$q$)"), code);
        assert!(err.contains(needle), "{q}: {err}");
    }
    assert_eq!(footprint(&mut db), before);
}

#[test]
fn lifecycle_functions_require_read_committed() {
    let mut db = TestDb::new("isolation");
    db.exec("CREATE TABLE t (id int); INSERT INTO t VALUES (1); SELECT pgtrickle.create_stream_table('ok', 'SELECT id FROM t')");
    let before = footprint(&mut db);
    for level in ["REPEATABLE READ", "SERIALIZABLE"] {
        for call in [
            "pgtrickle.create_stream_table('x', 'SELECT id FROM t')",
            "pgtrickle.drop_stream_table('ok')",
            "pgtrickle.alter_stream_table('ok', query => 'SELECT id + 1 AS id FROM t')",
        ] {
            let err = db.expect_error(&format!("BEGIN ISOLATION LEVEL {level}; SELECT {call}"), "25001");
            assert!(err.contains("READ COMMITTED"), "{err}");
            db.exec("ROLLBACK");
        }
    }
    // Option changes and refreshes are fine at any isolation level.
    db.exec("BEGIN ISOLATION LEVEL SERIALIZABLE; SELECT pgtrickle.alter_stream_table('ok', schedule => '5m'); COMMIT;");
    db.exec("INSERT INTO t VALUES (2)");
    db.exec("BEGIN ISOLATION LEVEL SERIALIZABLE; SELECT pgtrickle.refresh_stream_table('ok'); COMMIT;");
    assert_eq!(stream_table_count(&mut db), 1);
    let (rel, trg, func, _) = footprint(&mut db);
    assert_eq!((rel, trg, func), (before.0, before.1, before.2));
    assert_st_matches_query(&mut db.client, "ok", "SELECT id FROM t");
}

#[test]
fn names_longer_than_63_bytes_are_truncated_like_postgresql_does() {
    let mut db = TestDb::new("long_names");
    let long = "a_very_long_stream_table_name_that_goes_on_and_on_past_sixty_three_bytes";
    db.exec(&format!("CREATE TABLE t (id int); SELECT pgtrickle.create_stream_table('{long}', 'SELECT id FROM t')"));
    db.exec(&format!("SELECT pgtrickle.create_stream_table_if_not_exists('{long}', 'SELECT id FROM t')"));
    db.exec(&format!("INSERT INTO t VALUES (1); SELECT pgtrickle.refresh_stream_table('{long}')"));
    assert_st_matches_query(&mut db.client, &long[..63], "SELECT id FROM t");
    db.exec(&format!("SELECT pgtrickle.drop_stream_table('{long}')"));
    assert_eq!(stream_table_count(&mut db), 0);
}
