//! DDL on a captured source never breaks writes to it; change capture follows the
//! source's columns and partitions; DDL on what a stream table reads is blocked
//! (pg_trickle.block_source_ddl) or followed by a reinitialization; DDL on other
//! columns concerns nobody.

use pg_trickle_e2e::*;

fn buffer_columns(db: &mut TestDb, source: &str) -> Vec<String> {
    db.column(
        "SELECT attname::text FROM pg_attribute a JOIN pgtrickle.pgt_change_tracking ct ON a.attrelid = ct.buffer_relid \
         WHERE ct.source_relid = $1::text::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        &[&source],
    )
}

fn last_action(db: &mut TestDb, st: &str) -> String {
    db.scalar(
        "SELECT action FROM pgtrickle.pgt_refresh_history h JOIN pgtrickle.pgt_stream_tables s USING (pgt_id) \
         WHERE s.pgt_relid = $1::text::regclass ORDER BY refresh_id DESC LIMIT 1",
        &[&st],
    )
}

fn frontier_kept(db: &mut TestDb, st: &str) -> bool {
    db.scalar("SELECT frontier IS NOT NULL FROM pgtrickle.pgt_stream_tables WHERE pgt_relid = $1::text::regclass", &[&st])
}

/// DDL on columns no stream table reads is never blocked and concerns nobody:
/// the buffer follows the source in place, pending changes stay, and the next
/// refresh is DIFFERENTIAL. Writes work after every step.
#[test]
fn ddl_on_unused_columns_keeps_pending_changes_and_differential_refresh() {
    let mut db = TestDb::new("column_ddl");
    db.exec(
        "SET pg_trickle.differential_max_change_ratio = 1000;
         CREATE TABLE src (id int PRIMARY KEY, v int, w text, unused int, g int);
         INSERT INTO src SELECT g, g, 'w' || g, 0, g % 3 FROM generate_series(1, 20) g;
         CREATE TABLE bag (k int, x int, note text);
         INSERT INTO bag SELECT g % 4, g, 'n' FROM generate_series(1, 12) g;",
    );
    let queries = [
        ("st", "SELECT id, v FROM src"),
        ("by_g", "SELECT g, sum(v) AS s, count(*) AS n FROM src GROUP BY g"),
        ("joined", "SELECT s.id, s.v, b.x FROM src s JOIN bag b ON b.k = s.id % 4"),
        ("bag_rows", "SELECT k, x FROM bag"),
    ];
    for (name, q) in queries {
        db.exec(&format!("SELECT pgtrickle.create_stream_table('{name}', '{q}', refresh_mode => 'DIFFERENTIAL')"));
    }
    let steps = [
        ("ALTER TABLE src RENAME COLUMN w TO w2", vec!["__pgt_txid", "__pgt_action", "id", "v", "w2", "unused", "g"]),
        ("ALTER TABLE src ADD COLUMN extra numeric DEFAULT 1", vec!["__pgt_txid", "__pgt_action", "id", "v", "w2", "unused", "g", "extra"]),
        ("ALTER TABLE src DROP COLUMN unused", vec!["__pgt_txid", "__pgt_action", "id", "v", "w2", "g", "extra"]),
        ("ALTER TABLE src ALTER COLUMN extra TYPE bigint", vec!["__pgt_txid", "__pgt_action", "id", "v", "w2", "g", "extra"]),
        ("ALTER TABLE src ALTER COLUMN w2 TYPE varchar(40) USING upper(w2)", vec!["__pgt_txid", "__pgt_action", "id", "v", "w2", "g", "extra"]),
        ("ALTER TABLE bag ALTER COLUMN note TYPE text USING note || '!'", vec![]),
        ("ALTER TABLE bag RENAME COLUMN note TO remark", vec![]),
        ("ALTER TABLE src ADD COLUMN later int GENERATED ALWAYS AS (v * 2) STORED", vec!["__pgt_txid", "__pgt_action", "id", "v", "w2", "g", "extra", "later"]),
    ];
    let mut next = 100;
    for (i, (ddl, expected)) in steps.into_iter().enumerate() {
        // Changes pending across the DDL, and after it.
        next += 1;
        db.exec(&format!("INSERT INTO src (id, v, g) VALUES ({next}, {next}, {next} % 3); UPDATE bag SET x = x + 1 WHERE k = {}", i % 4));
        db.exec(ddl);
        if !expected.is_empty() {
            assert_eq!(buffer_columns(&mut db, "src"), expected, "after {ddl}");
        }
        db.exec(&format!("UPDATE src SET v = v + 1 WHERE id % 3 = {}", i % 3));
        db.exec(&format!("DELETE FROM src WHERE id = {}", i + 1));
        db.exec(&format!("INSERT INTO bag (k, x) VALUES ({}, {next})", i % 5));
        for (name, q) in queries {
            assert!(frontier_kept(&mut db, name), "{name} keeps its frontier after {ddl}");
            db.exec(&format!("SELECT pgtrickle.refresh_stream_table('{name}')"));
            assert_eq!(last_action(&mut db, name), "DIFFERENTIAL", "{name} after {ddl}");
            assert_st_matches_query(&mut db.client, name, q);
        }
    }
    let reinit: i64 = db.scalar("SELECT count(*) FROM pgtrickle.pgt_stream_tables WHERE needs_reinit", &[]);
    assert_eq!(reinit, 0);
}

/// With pg_trickle.block_source_ddl on (the default), DDL that changes what a
/// stream table reads fails naming it and the escape hatch; nothing changes.
#[test]
fn ddl_on_columns_a_stream_table_reads_is_blocked_by_default() {
    let mut db = TestDb::new("block_ddl");
    db.exec(
        "SET pg_trickle.differential_max_change_ratio = 1000;
         CREATE TABLE src (id int PRIMARY KEY, v int, other int);
         INSERT INTO src SELECT g, g, g FROM generate_series(1, 10) g;
         CREATE TABLE t2 (id int PRIMARY KEY, x int);
         INSERT INTO t2 SELECT g, g FROM generate_series(1, 10) g;
         CREATE VIEW vt2 AS SELECT id, x FROM t2 WHERE x > 2;
         SELECT pgtrickle.create_stream_table('reader', 'SELECT id, v FROM src');
         SELECT pgtrickle.create_stream_table('totals', 'SELECT sum(v) AS s FROM src');
         SELECT pgtrickle.create_stream_table('via_view', 'SELECT id, x FROM vt2');",
    );
    for ddl in [
        "ALTER TABLE src ALTER COLUMN v TYPE bigint",
        "ALTER TABLE src RENAME COLUMN v TO value",
        "ALTER TABLE src DROP COLUMN v",
        "ALTER TABLE src ALTER COLUMN v TYPE int USING v * 10",
        "ALTER TABLE src RENAME TO src2",
        "ALTER TABLE src DROP CONSTRAINT src_pkey",
        "CREATE OR REPLACE VIEW vt2 AS SELECT id, x FROM t2 WHERE x > 5",
        "ALTER VIEW vt2 RENAME COLUMN x TO y",
    ] {
        let err = db.expect_error(ddl, "2BP01");
        assert!(err.contains("public.reader") || err.contains("public.via_view"), "{ddl}: {err}");
        assert!(err.contains("pg_trickle.block_source_ddl = off"), "{ddl}: {err}");
    }
    let err = db.expect_error("ALTER TABLE src RENAME COLUMN v TO value", "2BP01");
    assert!(err.contains("public.reader") && err.contains("public.totals"), "{err}");
    assert!(err.contains("column v was renamed to value"), "{err}");
    // Columns nobody reads are free to change.
    db.exec("ALTER TABLE src ALTER COLUMN other TYPE text; ALTER TABLE src RENAME COLUMN other TO note; ALTER TABLE src ADD COLUMN z int");
    db.exec("UPDATE src SET v = v + 1 WHERE id < 4");
    db.exec("UPDATE t2 SET x = x + 1 WHERE id = 2");
    for (name, q) in [("reader", "SELECT id, v FROM src"), ("totals", "SELECT sum(v) AS s FROM src"), ("via_view", "SELECT id, x FROM vt2")] {
        db.exec(&format!("SELECT pgtrickle.refresh_stream_table('{name}')"));
        assert_eq!(last_action(&mut db, name), "DIFFERENTIAL");
        assert_st_matches_query(&mut db.client, name, q);
    }
    // The escape hatch: the stream tables reinitialize at their next refresh.
    db.exec(
        "BEGIN; SET LOCAL pg_trickle.block_source_ddl = off;
         ALTER TABLE src ALTER COLUMN v TYPE bigint; COMMIT;",
    );
    let flagged: i64 = db.scalar("SELECT count(*) FROM pgtrickle.pgt_stream_tables WHERE needs_reinit", &[]);
    assert_eq!(flagged, 2);
    // Already marked: later DDL on the same columns is not blocked again.
    db.exec("ALTER TABLE src RENAME COLUMN v TO v2; ALTER TABLE src RENAME COLUMN v2 TO v");
    db.exec("INSERT INTO src (id, v) VALUES (50, 5000000000)");
    for (name, q) in [("reader", "SELECT id, v FROM src"), ("totals", "SELECT sum(v) AS s FROM src")] {
        db.exec(&format!("SELECT pgtrickle.refresh_stream_table('{name}')"));
        assert_eq!(last_action(&mut db, name), "FULL", "{name} reinitialized");
        assert_st_matches_query(&mut db.client, name, q);
    }
    let v_type: String = db.scalar("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'reader'::regclass AND attname = 'v'", &[]);
    assert_eq!(v_type, "bigint", "the storage column follows the source's type");
    db.exec("UPDATE src SET v = v * 2 WHERE id % 2 = 0");
    for (name, q) in [("reader", "SELECT id, v FROM src"), ("totals", "SELECT sum(v) AS s FROM src")] {
        db.exec(&format!("SELECT pgtrickle.refresh_stream_table('{name}')"));
        assert_eq!(last_action(&mut db, name), "DIFFERENTIAL", "{name} is differential again");
        assert_st_matches_query(&mut db.client, name, q);
    }
}

/// With blocking off, renames of what a query reads are followed: the stored query
/// tree is deparsed under the new names, and the output columns keep theirs.
#[test]
fn renames_are_followed_when_blocking_is_off() {
    let mut db = TestDb::new("rename_used");
    db.exec(
        "SET pg_trickle.block_source_ddl = off; SET pg_trickle.differential_max_change_ratio = 1000;
         CREATE TABLE src (id int PRIMARY KEY, v int); INSERT INTO src VALUES (1, 1), (2, 2);
         CREATE VIEW big AS SELECT id, v FROM src WHERE v > 1;
         SELECT pgtrickle.create_stream_table('st', 'SELECT id, v FROM src');
         SELECT pgtrickle.create_stream_table('via_view', 'SELECT id, v * 2 AS twice FROM big');",
    );
    db.exec("ALTER TABLE src RENAME COLUMN v TO value");
    db.exec("INSERT INTO src VALUES (3, 3)");
    db.exec("SELECT pgtrickle.refresh_stream_table('st')");
    assert_st_matches_query(&mut db.client, "st", "SELECT id, value AS v FROM src");
    let stored: String = db.scalar("SELECT defining_query FROM pgtrickle.pgt_stream_tables WHERE pgt_relid = 'st'::regclass", &[]);
    assert!(stored.contains("value AS v"), "{stored}");

    db.exec("ALTER TABLE src RENAME TO source_renamed; ALTER VIEW big RENAME TO bigger; ALTER VIEW bigger RENAME COLUMN v TO val");
    db.exec("UPDATE source_renamed SET value = 0 WHERE id = 1; DELETE FROM source_renamed WHERE id = 2");
    db.exec("SELECT pgtrickle.refresh_stream_table('st'); SELECT pgtrickle.refresh_stream_table('via_view')");
    assert_st_matches_query(&mut db.client, "st", "SELECT id, value AS v FROM source_renamed");
    assert_st_matches_query(&mut db.client, "via_view", "SELECT id, val * 2 AS twice FROM bigger");
    db.exec("INSERT INTO source_renamed VALUES (7, 7); SELECT pgtrickle.refresh_stream_table('st'); SELECT pgtrickle.refresh_stream_table('via_view')");
    assert_eq!(last_action(&mut db, "st"), "DIFFERENTIAL");
    assert_st_matches_query(&mut db.client, "st", "SELECT id, value AS v FROM source_renamed");
    assert_st_matches_query(&mut db.client, "via_view", "SELECT id, val * 2 AS twice FROM bigger");
}

/// A dropped column the query reads: the refresh fails saying so (contents stay)
/// until alter_stream_table gives a new query. A redefined view is picked up.
#[test]
fn a_dropped_column_fails_clearly_and_a_redefined_view_is_picked_up() {
    let mut db = TestDb::new("drop_used");
    db.exec(
        "SET pg_trickle.block_source_ddl = off; SET pg_trickle.differential_max_change_ratio = 1000;
         CREATE TABLE src (id int PRIMARY KEY, v int, w int); INSERT INTO src SELECT g, g, g FROM generate_series(1, 9) g;
         CREATE TABLE other (id int PRIMARY KEY, v int); INSERT INTO other SELECT g, -g FROM generate_series(1, 5) g;
         CREATE VIEW pick AS SELECT id, v FROM src WHERE v % 2 = 0;
         SELECT pgtrickle.create_stream_table('st', 'SELECT id, w FROM src');
         SELECT pgtrickle.create_stream_table('picked', 'SELECT id, v FROM pick', refresh_mode => 'DIFFERENTIAL');",
    );
    db.exec("ALTER TABLE src DROP COLUMN w");
    let err = db.expect_error("SELECT pgtrickle.refresh_stream_table('st')", "42703");
    assert!(err.contains("reads column w of public.src, which was dropped") && err.contains("alter_stream_table"), "{err}");
    assert_eq!(count(&mut db, "st"), 9);
    db.exec("SELECT pgtrickle.alter_stream_table('st', query => 'SELECT id, v AS w FROM src')");
    assert_st_matches_query(&mut db.client, "st", "SELECT id, v AS w FROM src");

    // The view now reads another table: the stream table follows, differential.
    db.exec("CREATE OR REPLACE VIEW pick AS SELECT id, v FROM other WHERE v < -1");
    db.exec("SELECT pgtrickle.refresh_stream_table('picked')");
    assert_st_matches_query(&mut db.client, "picked", "SELECT id, v FROM pick");
    let reads_other: bool = db.scalar(
        "SELECT EXISTS (SELECT 1 FROM pgtrickle.pgt_dependencies WHERE source_relid = 'other'::regclass)",
        &[],
    );
    assert!(reads_other);
    db.exec("UPDATE other SET v = v - 10 WHERE id = 1; UPDATE src SET v = 100; SELECT pgtrickle.refresh_stream_table('picked')");
    assert_eq!(last_action(&mut db, "picked"), "DIFFERENTIAL");
    assert_st_matches_query(&mut db.client, "picked", "SELECT id, v FROM pick");
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

/// Property: random DDL on columns no stream table reads (add, drop, rename,
/// retype, rewrite in place), interleaved with random DML on everything, never
/// forces a recomputation, and every stream table — keyed and keyless, joins,
/// outer joins, aggregates, DISTINCT — stays equal to its query after every
/// refresh. Seeded: PGT_SEED replays.
#[test]
fn random_ddl_on_unread_columns_never_disturbs_differential_refresh() {
    use rand::Rng;
    let (seed, mut rng) = pg_trickle_e2e::seeded("random_unread_ddl");
    let mut db = TestDb::new("random_unread_ddl");
    db.exec(
        "SET pg_trickle.differential_max_change_ratio = 1000;
         CREATE TABLE p (id int PRIMARY KEY, k int, v int, pad_p1 text, pad_p2 int);
         CREATE TABLE c (pid int PRIMARY KEY, w int, pad_c1 text);
         CREATE TABLE e (k int, n int, pad_e1 int);
         INSERT INTO p SELECT g, g % 5, g, 'x', g FROM generate_series(1, 30) g;
         INSERT INTO c SELECT g, g * 10, 'y' FROM generate_series(1, 30, 2) g;
         INSERT INTO e SELECT g % 4, g % 3, g FROM generate_series(1, 20) g;",
    );
    let queries = [
        ("rows_p", "SELECT id, v FROM p WHERE k <> 2"),
        ("joined", "SELECT p.id, p.v, c.w FROM p JOIN c ON c.pid = p.id"),
        ("left_joined", "SELECT p.id, c.w FROM p LEFT JOIN c ON c.pid = p.id"),
        ("by_k", "SELECT k, sum(v) AS s, count(*) AS n, max(v) AS hi FROM p GROUP BY k"),
        ("bag", "SELECT k, n FROM e WHERE n > 0"),
        ("bag_distinct", "SELECT DISTINCT k FROM e"),
    ];
    for (name, q) in queries {
        db.exec(&format!("SELECT pgtrickle.create_stream_table('{name}', '{q}', refresh_mode => 'DIFFERENTIAL')"));
    }
    // Unread columns per table: (name, type).
    let mut pads: Vec<(&str, Vec<(String, &str)>)> = vec![
        ("p", vec![("pad_p1".into(), "text"), ("pad_p2".into(), "int")]),
        ("c", vec![("pad_c1".into(), "text")]),
        ("e", vec![("pad_e1".into(), "int")]),
    ];
    let mut serial = 0;
    let mut next_id = 100;
    for cycle in 0..30 {
        let t = rng.random_range(0..pads.len());
        let (table, columns) = &mut pads[t];
        serial += 1;
        let ddl = match rng.random_range(0..6) {
            0 => {
                let name = format!("pad_{table}_new{serial}");
                let ddl = format!("ALTER TABLE {table} ADD COLUMN {name} int DEFAULT {serial}");
                columns.push((name, "int"));
                ddl
            }
            1 if !columns.is_empty() => {
                let (name, _) = columns.remove(rng.random_range(0..columns.len()));
                format!("ALTER TABLE {table} DROP COLUMN {name}")
            }
            2 if !columns.is_empty() => {
                let i = rng.random_range(0..columns.len());
                let new_name = format!("pad_{table}_ren{serial}");
                let ddl = format!("ALTER TABLE {table} RENAME COLUMN {} TO {new_name}", columns[i].0);
                columns[i].0 = new_name;
                ddl
            }
            3 if !columns.is_empty() => {
                let i = rng.random_range(0..columns.len());
                let (ddl, new_type) = if columns[i].1 == "text" {
                    (format!("ALTER TABLE {table} ALTER COLUMN {0} TYPE int USING length({0})", columns[i].0), "int")
                } else {
                    (format!("ALTER TABLE {table} ALTER COLUMN {0} TYPE text USING {0}::text", columns[i].0), "text")
                };
                columns[i].1 = new_type;
                ddl
            }
            4 if !columns.is_empty() => {
                let i = rng.random_range(0..columns.len());
                let (name, ty) = &columns[i];
                format!("ALTER TABLE {table} ALTER COLUMN {name} TYPE {ty} USING {name}")
            }
            _ => String::new(),
        };
        let table = *table;
        let pad_update = columns.first().map(|(name, ty)| {
            let value = if *ty == "text" { "'z'" } else { "7" };
            format!("UPDATE {table} SET {name} = {value} WHERE random() < 0.3")
        });
        // DML pending across the DDL and after it.
        let dml = |rng: &mut rand::rngs::StdRng, next_id: &mut i32| -> String {
            *next_id += 1;
            match rng.random_range(0..6) {
                0 => format!("INSERT INTO p (id, k, v) VALUES ({0}, {0} % 5, {1})", next_id, rng.random_range(0..100)),
                1 => format!("UPDATE p SET v = v + 1, k = (k + 1) % 5 WHERE id % 7 = {}", rng.random_range(0..7)),
                2 => format!("DELETE FROM p WHERE id % 11 = {}", rng.random_range(0..11)),
                3 => format!(
                    "INSERT INTO c (pid, w) SELECT id, {} FROM p WHERE id % 4 = {} ON CONFLICT (pid) DO UPDATE SET w = excluded.w",
                    rng.random_range(0..50),
                    rng.random_range(0..4)
                ),
                4 => format!("DELETE FROM c WHERE pid % 5 = {}", rng.random_range(0..5)),
                _ => format!(
                    "INSERT INTO e (k, n) VALUES ({0}, {1}), ({0}, {1}); DELETE FROM e WHERE ctid IN (SELECT ctid FROM e WHERE k = {2} LIMIT 1)",
                    rng.random_range(0..4),
                    rng.random_range(0..3),
                    rng.random_range(0..4)
                ),
            }
        };
        let before = dml(&mut rng, &mut next_id);
        db.exec(&before);
        if !ddl.is_empty() {
            db.exec(&ddl);
        }
        if let Some(u) = pad_update {
            db.exec(&u);
        }
        let after = dml(&mut rng, &mut next_id);
        db.exec(&after);
        for (name, q) in queries {
            db.exec(&format!("SELECT pgtrickle.refresh_stream_table('{name}')"));
            let (only_st, only_q) = pgt_testkit::multiset_difference(&mut db.client, name, q);
            assert!(
                only_st.is_empty() && only_q.is_empty(),
                "seed {seed}, cycle {cycle} ({before}; {ddl}; {after}): {name} differs\n  only in stream table: {only_st:?}\n  only in query: {only_q:?}"
            );
        }
    }
    let full: Vec<String> = db.column(
        "SELECT s.pgt_relid::regclass::text FROM pgtrickle.pgt_refresh_history h JOIN pgtrickle.pgt_stream_tables s USING (pgt_id) \
         WHERE h.action <> 'DIFFERENTIAL' AND h.initiated_by <> 'INITIAL'",
        &[],
    );
    assert!(full.is_empty(), "seed {seed}: recomputed after DDL on unread columns: {full:?}");
}

/// Found by review: DDL that changes how a source's rows reach capture, or
/// drift no command reported, is handled without blocking unrelated DDL.
#[test]
fn membership_keys_domains_and_cycles_after_ddl() {
    let mut db = TestDb::new("ddl_edges");
    db.exec(
        "SET pg_trickle.differential_max_change_ratio = 1000;
         CREATE DOMAIN posint AS int NOT NULL CHECK (VALUE > 0);
         CREATE TABLE src (id int PRIMARY KEY, v int, p posint DEFAULT 1);
         INSERT INTO src SELECT g, g FROM generate_series(1, 10) g;
         CREATE TABLE bag (k int NOT NULL, v int);
         INSERT INTO bag SELECT g, g FROM generate_series(1, 10) g;
         SELECT pgtrickle.create_stream_table('reads_src', 'SELECT id, v FROM src', refresh_mode => 'DIFFERENTIAL');
         SELECT pgtrickle.create_stream_table('reads_bag', 'SELECT k, v FROM bag', refresh_mode => 'DIFFERENTIAL');",
    );
    // Domains with NOT NULL: TRUNCATE markers and new columns with pending rows.
    db.exec("UPDATE src SET v = v + 1 WHERE id < 3; ALTER TABLE src ADD COLUMN q posint DEFAULT 5");
    db.exec("TRUNCATE src; INSERT INTO src (id, v) SELECT g, g * 2 FROM generate_series(1, 4) g");
    db.exec("SELECT pgtrickle.refresh_stream_table('reads_src')");
    assert_st_matches_query(&mut db.client, "reads_src", "SELECT id, v FROM src");

    // A key appearing on a keyless source (CREATE INDEX reports nothing) changes
    // nothing for its keyless plan, and unrelated DDL is not blocked afterwards.
    db.exec("CREATE UNIQUE INDEX bag_k ON bag (k)");
    db.exec("CREATE TABLE other (i int); CREATE INDEX other_i ON other (i); DROP INDEX other_i; ALTER TABLE bag ADD COLUMN z int");
    db.exec("ALTER TABLE bag ADD PRIMARY KEY USING INDEX bag_k");
    db.exec("UPDATE bag SET v = -v WHERE k % 2 = 0; SELECT pgtrickle.refresh_stream_table('reads_bag')");
    assert_st_matches_query(&mut db.client, "reads_bag", "SELECT k, v FROM bag");

    // A source that joins an inheritance tree or becomes a partition would have
    // rows changed without its triggers firing: blocked, in every direction.
    db.exec("CREATE TABLE parent (id int, v int, p posint, q posint)");
    let err = db.expect_error("ALTER TABLE src INHERIT parent", "2BP01");
    assert!(err.contains("it inherits from public.parent"), "{err}");
    db.expect_error("CREATE TABLE child () INHERITS (src)", "2BP01");
    db.exec(
        "CREATE TABLE loose (id int, v int); INSERT INTO loose VALUES (1, 1);
         SELECT pgtrickle.create_stream_table('reads_loose', 'SELECT id, v FROM loose');
         CREATE TABLE root (id int, v int) PARTITION BY RANGE (id);",
    );
    let err = db.expect_error("ALTER TABLE root ATTACH PARTITION loose FOR VALUES FROM (0) TO (100)", "2BP01");
    assert!(err.contains("became a partition of public.root"), "{err}");

    // A view redefined to read a stream table downstream of its reader: the
    // reinitialization refuses the cycle, and the contents stay.
    db.exec(
        "SET pg_trickle.block_source_ddl = off;
         CREATE TABLE base (id int PRIMARY KEY, v int); INSERT INTO base VALUES (1, 1), (2, 2);
         CREATE VIEW vw AS SELECT id, v FROM base;
         SELECT pgtrickle.create_stream_table('a', 'SELECT id, v FROM vw');
         SELECT pgtrickle.create_stream_table('b', 'SELECT id, v + 1 AS v FROM a');
         CREATE OR REPLACE VIEW vw AS SELECT id, v FROM b;",
    );
    db.expect_error("SELECT pgtrickle.refresh_stream_table('a')", "42P17");
    assert_eq!(count(&mut db, "a"), 2);
    db.exec("CREATE OR REPLACE VIEW vw AS SELECT id, v * 10 AS v FROM base; SELECT pgtrickle.refresh_stream_table('a')");
    assert_st_matches_query(&mut db.client, "a", "SELECT id, v FROM vw");
    // Reinitializing into a new source inside REPEATABLE READ is refused.
    db.exec("CREATE TABLE base2 (id int PRIMARY KEY, v int); INSERT INTO base2 VALUES (5, 5); CREATE OR REPLACE VIEW vw AS SELECT id, v FROM base2");
    db.exec("BEGIN ISOLATION LEVEL REPEATABLE READ");
    db.expect_error("SELECT pgtrickle.refresh_stream_table('a')", "25001");
    db.exec("ROLLBACK; SELECT pgtrickle.refresh_stream_table('a')");
    assert_st_matches_query(&mut db.client, "a", "SELECT id, v FROM vw");
}
