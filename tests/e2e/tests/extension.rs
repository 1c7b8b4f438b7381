//! The extension itself: DROP EXTENSION removes stream-table machinery cleanly and
//! leaves stream tables behind as ordinary tables; CREATE EXTENSION works again.

use pg_trickle_e2e::*;

#[test]
fn drop_extension_removes_machinery_and_keeps_tables() {
    let mut db = TestDb::new("drop_extension");
    db.exec(
        "CREATE TABLE src (id int PRIMARY KEY, v int);
         INSERT INTO src SELECT g, g FROM generate_series(1, 10) g;
         CREATE TABLE part (id int, k text) PARTITION BY LIST (k);
         CREATE TABLE part_a PARTITION OF part FOR VALUES IN ('a');
         SELECT pgtrickle.create_stream_table('st1', 'SELECT id, v FROM src');
         SELECT pgtrickle.create_stream_table('st2', 'SELECT count(*) AS n FROM part');",
    );
    assert!(capture_trigger_count(&mut db) > 0);
    // Refreshes in this session keep plans of their catalog statements; after
    // the extension is created again they must read its new tables.
    for _ in 0..7 {
        db.exec("UPDATE src SET v = v + 1; SELECT pgtrickle.refresh_stream_table('st1')");
    }
    assert_st_matches_query(&mut db.client, "st1", "SELECT id, v FROM src");
    // No CASCADE needed.
    db.exec("DROP EXTENSION pg_trickle");
    assert_eq!(capture_trigger_count(&mut db), 0, "capture triggers go with the extension");
    for schema in ["pgtrickle", "pgtrickle_changes"] {
        let exists: bool = db.scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", &[&schema]);
        assert!(!exists, "schema {schema} should be gone");
    }
    let event_triggers: i64 = db.scalar("SELECT count(*) FROM pg_event_trigger", &[]);
    assert_eq!(event_triggers, 0);
    // The stream tables remain as ordinary tables with their last contents.
    assert_eq!(count(&mut db, "st1"), 10);
    db.exec("INSERT INTO src VALUES (11, 11); INSERT INTO part VALUES (1, 'a'); UPDATE src SET v = 0");
    assert_eq!(count(&mut db, "st1"), 10);
    // They still depend on their sources, like views: drop them first.
    db.expect_error("DROP TABLE src", "2BP01");
    db.exec("DROP TABLE st1; DROP TABLE src");
    // The extension can be created again and used.
    db.exec("CREATE EXTENSION pg_trickle; CREATE TABLE again (x int); INSERT INTO again VALUES (1);");
    db.exec("SELECT pgtrickle.create_stream_table('st3', 'SELECT x FROM again')");
    for x in 2..9 {
        db.exec(&format!("INSERT INTO again VALUES ({x}); SELECT pgtrickle.refresh_stream_table('st3')"));
    }
    assert_st_matches_query(&mut db.client, "st3", "SELECT x FROM again");
}

#[test]
fn create_extension_twice_and_catalog_shape() {
    let mut db = TestDb::new("catalog_shape");
    db.expect_error("CREATE EXTENSION pg_trickle", "42710");
    let tables: Vec<String> = db.column(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'pgtrickle' AND c.relkind = 'r' ORDER BY 1",
        &[],
    );
    assert_eq!(
        tables,
        vec!["pgt_change_tracking", "pgt_dependencies", "pgt_immediate_sync", "pgt_refresh_history", "pgt_refresh_stats", "pgt_stream_tables"]
    );
    let version: String = db.scalar("SELECT extversion FROM pg_extension WHERE extname = 'pg_trickle'", &[]);
    assert_eq!(version, env!("CARGO_PKG_VERSION"), "the extension is the version of the build");
    let preloaded: String = db.scalar("SHOW shared_preload_libraries", &[]);
    assert!(preloaded.contains("pg_trickle"));
}
