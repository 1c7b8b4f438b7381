//! DDL on a captured source never breaks writes to it; change capture follows the
//! source's columns and partitions.

use pg_trickle_e2e::*;

fn buffer_columns(db: &mut TestDb, source: &str) -> Vec<String> {
    db.client
        .query(
            "SELECT attname::text FROM pg_attribute a JOIN pgtrickle.pgt_change_tracking ct ON a.attrelid = ct.buffer_relid \
             WHERE ct.source_relid = $1::text::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[&source],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[test]
fn column_changes_keep_writes_working_and_capture_in_step() {
    let mut db = TestDb::new("column_ddl");
    db.exec(
        "CREATE TABLE src (id int PRIMARY KEY, v int, w text, unused int);
         INSERT INTO src SELECT g, g, 'w' || g, 0 FROM generate_series(1, 20) g;",
    );
    let q = "SELECT id, v FROM src";
    db.exec(&format!("SELECT pgtrickle.create_stream_table('st', '{q}')"));
    let steps = [
        ("ALTER TABLE src RENAME COLUMN w TO w2", vec!["__pgt_txid", "__pgt_action", "id", "v", "w2", "unused"]),
        ("ALTER TABLE src ADD COLUMN extra numeric DEFAULT 1", vec!["__pgt_txid", "__pgt_action", "id", "v", "w2", "unused", "extra"]),
        ("ALTER TABLE src DROP COLUMN unused", vec!["__pgt_txid", "__pgt_action", "id", "v", "w2", "extra"]),
        ("ALTER TABLE src ALTER COLUMN extra TYPE bigint", vec!["__pgt_txid", "__pgt_action", "id", "v", "w2", "extra"]),
    ];
    let table = "src";
    let mut next = 100;
    for (ddl, expected) in steps {
        db.exec(ddl);
        assert_eq!(buffer_columns(&mut db, table), expected, "after {ddl}");
        // Writes to the source work, as they would without pg_trickle.
        next += 1;
        db.exec(&format!("INSERT INTO {table} (id, v) VALUES ({next}, {next})"));
        db.exec(&format!("UPDATE {table} SET v = v + 1 WHERE id % 3 = 0"));
        db.exec(&format!("DELETE FROM {table} WHERE id = {}", next - 90));
        let buffer: String = db.scalar("SELECT 'pgtrickle_changes.changes_' || $1::text::regclass::oid::text", &[&table]);
        assert!(count(&mut db, &buffer) >= 2, "writes after {ddl} are captured");
    }
    // Schema changes clear the frontier (pending changes were discarded); the stream
    // table's query reads only id and v, so refreshing works and is correct.
    let frontier_cleared: bool = db.scalar("SELECT frontier IS NULL FROM pgtrickle.pgt_stream_tables", &[]);
    assert!(frontier_cleared);
    db.exec("SELECT pgtrickle.refresh_stream_table('st')");
    assert_st_matches_query(&mut db.client, "st", q);
}

/// The defining query is stored as text: renaming what it names makes the next
/// refresh fail with PostgreSQL's own error (the contents stay) until
/// alter_stream_table is given the updated query. Writes to the source never fail.
#[test]
fn renaming_what_the_query_names_fails_the_refresh_clearly_until_the_query_is_updated() {
    let mut db = TestDb::new("rename_used");
    db.exec("CREATE TABLE src (id int PRIMARY KEY, v int); INSERT INTO src VALUES (1, 1), (2, 2);");
    db.exec("SELECT pgtrickle.create_stream_table('st', 'SELECT id, v FROM src')");
    db.exec("ALTER TABLE src RENAME COLUMN v TO value");
    db.exec("INSERT INTO src VALUES (3, 3)");
    let err = db.expect_error("SELECT pgtrickle.refresh_stream_table('st')", "42703");
    assert!(err.contains("\"v\""), "{err}");
    assert_eq!(count(&mut db, "st"), 2);
    db.exec("SELECT pgtrickle.alter_stream_table('st', query => 'SELECT id, value AS v FROM src')");
    assert_st_matches_query(&mut db.client, "st", "SELECT id, value AS v FROM src");

    db.exec("ALTER TABLE src RENAME TO source_renamed");
    db.exec("UPDATE source_renamed SET value = 0 WHERE id = 1");
    let err = db.expect_error("SELECT pgtrickle.refresh_stream_table('st')", "42P01");
    assert!(err.contains("public.src"), "{err}");
    db.exec("SELECT pgtrickle.alter_stream_table('st', query => 'SELECT id, value AS v FROM source_renamed')");
    db.exec("DELETE FROM source_renamed WHERE id = 2; SELECT pgtrickle.refresh_stream_table('st')");
    assert_st_matches_query(&mut db.client, "st", "SELECT id, value AS v FROM source_renamed");
}

#[test]
fn partitions_created_attached_and_detached_later() {
    let mut db = TestDb::new("partition_ddl");
    db.exec(
        "CREATE TABLE m (id int, k int) PARTITION BY RANGE (k);
         CREATE TABLE m1 PARTITION OF m FOR VALUES FROM (0) TO (10);
         INSERT INTO m SELECT g, g % 10 FROM generate_series(1, 50) g;",
    );
    let q = "SELECT k, count(*) AS n FROM m GROUP BY k";
    db.exec(&format!("SELECT pgtrickle.create_stream_table('by_k', '{q}')"));
    assert_eq!(capture_trigger_count(&mut db), 8);
    // A partition created later gets capture triggers; direct writes to it are captured.
    db.exec("CREATE TABLE m2 PARTITION OF m FOR VALUES FROM (10) TO (20)");
    assert_eq!(capture_trigger_count(&mut db), 12);
    db.exec("INSERT INTO m2 VALUES (100, 15), (101, 16)");
    // An attached table too.
    db.exec("CREATE TABLE m3 (id int, k int); INSERT INTO m3 VALUES (200, 25);");
    db.exec("ALTER TABLE m ATTACH PARTITION m3 FOR VALUES FROM (20) TO (30)");
    assert_eq!(capture_trigger_count(&mut db), 16);
    db.exec("UPDATE m3 SET k = 26");
    db.exec("SELECT pgtrickle.refresh_stream_table('by_k')");
    assert_st_matches_query(&mut db.client, "by_k", q);
    // A detached partition loses them; its writes are no longer the source's.
    db.exec("ALTER TABLE m DETACH PARTITION m1");
    assert_eq!(capture_trigger_count(&mut db), 12);
    let buffer: String = db.scalar("SELECT 'pgtrickle_changes.changes_' || 'm'::regclass::oid::text", &[]);
    let before = count(&mut db, &buffer);
    db.exec("INSERT INTO m1 VALUES (300, 1)");
    assert_eq!(count(&mut db, &buffer), before);
    db.exec("SELECT pgtrickle.refresh_stream_table('by_k')");
    assert_st_matches_query(&mut db.client, "by_k", q);
}

#[test]
fn a_non_superuser_alters_a_table_someone_elses_stream_table_reads() {
    let mut db = TestDb::new("ddl_by_owner");
    let carol = db.create_role("carol", "NOSUPERUSER");
    db.exec(&format!("GRANT CREATE ON SCHEMA public TO \"{carol}\""));
    let mut c = db.connect_as(&carol);
    c.batch_execute("CREATE TABLE carols (id int PRIMARY KEY, v int); INSERT INTO carols VALUES (1, 1);").unwrap();
    db.exec("SELECT pgtrickle.create_stream_table('watch', 'SELECT id, v FROM carols')");
    c.batch_execute(
        "ALTER TABLE carols ADD COLUMN note text;
         ALTER TABLE carols RENAME COLUMN note TO remark;
         INSERT INTO carols VALUES (2, 2, 'x');
         UPDATE carols SET remark = 'y';",
    )
    .unwrap_or_else(|e| panic!("carol's DDL/DML on her own table failed: {e:?}"));
    db.exec("SELECT pgtrickle.refresh_stream_table('watch')");
    assert_st_matches_query(&mut db.client, "watch", "SELECT id, v FROM carols");
}
