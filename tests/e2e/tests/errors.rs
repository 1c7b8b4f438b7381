//! Every error path: the right SQLSTATE, a message naming the object, and nothing
//! created or changed — no storage table, trigger, buffer, function or catalog row
//! after a failed call, and a failed refresh leaves the previous contents.

use pg_trickle_e2e::*;

fn setup(db: &mut TestDb) {
    db.exec(
        "CREATE TABLE t (id int PRIMARY KEY, v int, w text);
         INSERT INTO t SELECT g, g % 10, 'w' || g FROM generate_series(1, 50) g;
         CREATE TABLE taken (x int);
         CREATE MATERIALIZED VIEW mv AS SELECT * FROM t;
         CREATE SEQUENCE seq;
         CREATE TABLE parent (x int); CREATE TABLE child () INHERITS (parent);
         CREATE TABLE bad_cols (__pgt_txid int, y int);
         SELECT pgtrickle.create_stream_table('existing', 'SELECT id, v FROM t');",
    );
}

/// Runs `sql`, expects SQLSTATE `code` and a message containing `needle`, and
/// checks that nothing pg_trickle could create changed.
fn rejects(db: &mut TestDb, sql: &str, code: &str, needle: &str) {
    let before = footprint(db);
    let err = db.expect_error(sql, code);
    assert!(err.to_lowercase().contains(&needle.to_lowercase()), "error for {sql} should mention {needle:?}: {err}");
    assert_eq!(footprint(db), before, "a failed call changed something: {sql}");
}

#[test]
fn bad_create_arguments() {
    let mut db = TestDb::new("bad_create_args");
    setup(&mut db);
    let q = "'SELECT id, v FROM t'";
    let cases: Vec<(String, &str, &str)> = vec![
        (format!("SELECT pgtrickle.create_stream_table(NULL, {q})"), "22004", "name"),
        ("SELECT pgtrickle.create_stream_table('x', NULL)".into(), "22004", "query"),
        (format!("SELECT pgtrickle.create_stream_table('x', {q}, schedule => NULL)"), "22004", "schedule"),
        (format!("SELECT pgtrickle.create_stream_table('x', {q}, refresh_mode => NULL)"), "22004", "refresh_mode"),
        (format!("SELECT pgtrickle.create_stream_table('x', {q}, initialize => NULL)"), "22004", "initialize"),
        (format!("SELECT pgtrickle.create_stream_table('x', {q}, schedule => 'soon')"), "22023", "invalid schedule"),
        (format!("SELECT pgtrickle.create_stream_table('x', {q}, schedule => '')"), "22023", "schedule"),
        (format!("SELECT pgtrickle.create_stream_table('x', {q}, schedule => '61 * * * *')"), "22023", "invalid schedule"),
        (format!("SELECT pgtrickle.create_stream_table('x', {q}, schedule => '30')"), "22023", "invalid schedule"),
        (format!("SELECT pgtrickle.create_stream_table('x', {q}, schedule => '500ms')"), "22023", "below the minimum"),
        (format!("SELECT pgtrickle.create_stream_table('x', {q}, schedule => '300000000000y')"), "22023", "longer than the maximum"),
        (format!("SELECT pgtrickle.create_stream_table('x', {q}, refresh_mode => 'sometimes')"), "22023", "refresh_mode"),
        (
            "SELECT pgtrickle.create_stream_table('x', 'SELECT id, random() AS r FROM t', refresh_mode => 'IMMEDIATE')".to_string(),
            "0A000",
            "IMMEDIATE maintenance does not support",
        ),
        (format!("SELECT pgtrickle.create_stream_table('x', {q}, diamond_consistency => 'eventual')"), "22023", "diamond_consistency"),
        (format!("SELECT pgtrickle.create_stream_table('x', {q}, diamond_schedule_policy => 'median')"), "22023", "diamond_schedule_policy"),
        (format!("SELECT pgtrickle.create_stream_table('x', {q}, cdc_mode => 'polling')"), "22023", "cdc_mode"),
        (format!("SELECT pgtrickle.create_stream_table('x', {q}, cdc_mode => 'wal')"), "0A000", "wal"),
        (format!("SELECT pgtrickle.create_stream_table('x', {q}, append_only => NULL)"), "22004", "append_only"),
        (format!("SELECT pgtrickle.create_stream_table('nope.x', {q})"), "3F000", "schema \"nope\" does not exist"),
        (format!("SELECT pgtrickle.create_stream_table('a.b.c', {q})"), "42602", "too many dotted names"),
        (format!("SELECT pgtrickle.create_stream_table('taken', {q})"), "42P07", "public.taken already exists"),
        (format!("SELECT pgtrickle.create_stream_table('existing', {q})"), "42P07", "stream table public.existing already exists"),
    ];
    for (sql, code, needle) in cases {
        rejects(&mut db, &sql, code, needle);
    }
}

#[test]
fn bad_defining_queries() {
    let mut db = TestDb::new("bad_queries");
    setup(&mut db);
    let cases: Vec<(&str, &str, &str)> = vec![
        ("", "42601", "empty"),
        ("INSERT INTO t VALUES (1000, 1, 'x')", "42601", "INSERT"),
        ("DELETE FROM t", "42601", "DELETE"),
        ("CREATE TABLE z (a int)", "42601", "CREATE TABLE"),
        ("SELECT 1 AS a; SELECT 2 AS b", "42601", "single SELECT"),
        ("SELEC id FROM t", "42601", "syntax error"),
        ("SELECT id FROM no_such_table", "42P01", "no_such_table"),
        ("SELECT no_such_column FROM t", "42703", "no_such_column"),
        ("SELECT id INTO newtab FROM t", "0A000", "SELECT INTO"),
        ("WITH d AS (DELETE FROM t RETURNING *) SELECT id FROM d", "0A000", "data-modifying"),
        ("SELECT id FROM t FOR UPDATE", "0A000", "FOR UPDATE"),
        ("SELECT id, v + 1 FROM t", "42602", "has no name"),
        ("SELECT id, v AS id FROM t", "42701", "\"id\" appears more than once"),
        ("SELECT id AS __pgt_count FROM t", "42939", "reserved"),
        ("SELECT id FROM t WHERE id = $1", "42P02", "parameter"),
        ("SELECT * FROM mv", "0A000", "materialized view public.mv"),
        ("SELECT last_value FROM seq", "0A000", "public.seq"),
        ("SELECT relname FROM pg_class", "0A000", "pg_catalog.pg_class"),
        ("SELECT x FROM parent", "0A000", "inheritance parent public.parent"),
        ("SELECT y FROM bad_cols", "42939", "__pgt_txid"),
    ];
    for (query, code, needle) in cases {
        let sql = format!("SELECT pgtrickle.create_stream_table('x', $q${query}$q$)");
        rejects(&mut db, &sql, code, needle);
    }
    // Temporary tables live in the session: use one connection for both steps.
    let before = footprint(&mut db);
    db.exec("CREATE TEMP TABLE tmp (a int)");
    let err = db.expect_error("SELECT pgtrickle.create_stream_table('x', 'SELECT a FROM tmp')", "0A000");
    assert!(err.contains("temporary table"), "{err}");
    db.exec("DROP TABLE tmp");
    assert_eq!(footprint(&mut db), before);
}

#[test]
fn operations_on_missing_or_wrong_objects() {
    let mut db = TestDb::new("missing_objects");
    setup(&mut db);
    for f in ["refresh_stream_table", "drop_stream_table", "alter_stream_table"] {
        rejects(&mut db, &format!("SELECT pgtrickle.{f}('ghost')"), "42P01", "stream table public.ghost does not exist");
        rejects(&mut db, &format!("SELECT pgtrickle.{f}('taken')"), "42809", "public.taken is not a stream table");
        rejects(&mut db, &format!("SELECT pgtrickle.{f}(NULL)"), "22004", "name must not be NULL");
    }
}

#[test]
fn bad_alter_arguments() {
    let mut db = TestDb::new("bad_alter");
    setup(&mut db);
    let cases: Vec<(&str, &str, &str)> = vec![
        ("schedule => 'whenever'", "22023", "invalid schedule"),
        ("refresh_mode => 'FAST'", "22023", "refresh_mode"),
        ("refresh_mode => 'IMMEDIATE', query => 'SELECT id, random() AS r FROM t'", "0A000", "IMMEDIATE maintenance does not support"),
        ("status => 'PAUSED'", "22023", "status"),
        ("diamond_consistency => 'x'", "22023", "diamond_consistency"),
        ("cdc_mode => 'wal'", "0A000", "wal"),
        ("query => 'SELECT nope FROM t'", "42703", "nope"),
        ("query => 'UPDATE t SET v = 1'", "42601", "UPDATE"),
        ("query => 'SELECT id, v FROM existing'", "42P17", "circular"),
    ];
    for (args, code, needle) in cases {
        rejects(&mut db, &format!("SELECT pgtrickle.alter_stream_table('existing', {args})"), code, needle);
    }
    // A cycle through a second stream table.
    db.exec("SELECT pgtrickle.create_stream_table('downstream', 'SELECT id FROM existing')");
    rejects(&mut db, "SELECT pgtrickle.alter_stream_table('existing', query => 'SELECT id, id AS v FROM downstream')", "42P17", "circular");
    // The error names the whole cycle, starting from the stream table altered.
    db.exec("SELECT pgtrickle.create_stream_table('third', 'SELECT id FROM downstream')");
    let err = db.expect_error("SELECT pgtrickle.alter_stream_table('existing', query => 'SELECT id, id AS v FROM third')", "42P17");
    assert!(err.contains("Cycle: public.existing → public.downstream → public.third → public.existing"), "{err}");
    let err = db.expect_error("SELECT pgtrickle.alter_stream_table('third', query => 'SELECT id FROM third')", "42P17");
    assert!(err.contains("Cycle: public.third → public.third"), "{err}");
    db.exec("SELECT pgtrickle.drop_stream_table('third')");
    // Changing the columns of a stream table another one reads.
    rejects(&mut db, "SELECT pgtrickle.alter_stream_table('existing', query => 'SELECT v FROM t')", "2BP01", "downstream");
    rejects(&mut db, "SELECT pgtrickle.drop_stream_table('existing')", "2BP01", "downstream");
    assert_st_matches_query(&mut db.client, "existing", "SELECT id, v FROM t");
}

#[test]
fn dropping_a_source_names_the_stream_table() {
    let mut db = TestDb::new("drop_source");
    setup(&mut db);
    let err = db.expect_error("DROP TABLE t", "2BP01");
    assert!(err.contains("existing"), "{err}");
    db.exec("INSERT INTO t VALUES (999, 1, 'still here'); SELECT pgtrickle.refresh_stream_table('existing')");
    assert_st_matches_query(&mut db.client, "existing", "SELECT id, v FROM t");
}

#[test]
fn a_failed_refresh_keeps_the_previous_contents() {
    let mut db = TestDb::new("failed_refresh");
    db.exec("CREATE TABLE d (id int PRIMARY KEY, num int, den int); INSERT INTO d SELECT g, g, 1 + g % 3 FROM generate_series(1, 20) g;");
    let q = "SELECT id, num / den AS ratio FROM d";
    db.exec(&format!("SELECT pgtrickle.create_stream_table('ratios', '{q}')"));
    let before: Vec<String> = db.column("SELECT ROW(id, ratio)::text FROM ratios ORDER BY id", &[]);
    let history_before: i64 = db.scalar("SELECT count(*) FROM pgtrickle.pgt_refresh_history", &[]);
    let frontier_before: String = db.scalar("SELECT frontier::text FROM pgtrickle.pgt_stream_tables", &[]);
    db.exec("UPDATE d SET num = num + 100 WHERE id < 5; UPDATE d SET den = 0 WHERE id = 7");
    db.expect_error("SELECT pgtrickle.refresh_stream_table('ratios')", "22012");
    let after: Vec<String> = db.column("SELECT ROW(id, ratio)::text FROM ratios ORDER BY id", &[]);
    assert_eq!(before, after, "the failed refresh left the previous contents");
    assert_eq!(db.scalar::<i64>("SELECT count(*) FROM pgtrickle.pgt_refresh_history", &[]), history_before);
    assert_eq!(db.scalar::<String>("SELECT frontier::text FROM pgtrickle.pgt_stream_tables", &[]), frontier_before);
    // The captured changes are still there for the next refresh.
    db.exec("UPDATE d SET den = 1 WHERE id = 7; SELECT pgtrickle.refresh_stream_table('ratios')");
    assert_st_matches_query(&mut db.client, "ratios", q);
}
