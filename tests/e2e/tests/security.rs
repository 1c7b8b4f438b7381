//! Security and isolation, as three ordinary roles see it: `alice` owns a
//! table, `bob` may read it (SELECT), `mallory` may not. Each test reproduces
//! one way a stream table, a change buffer or an error message could show a
//! role what it cannot read, let capture be bypassed, or let one role hold
//! another's work, and asserts the fixed behaviour (docs/SECURITY.md lists the
//! points and their tests). Tests that change data end by comparing the stream
//! table with its defining query as its owner sees it.

use pg_trickle_e2e::*;
use pgt_testkit::postgres::Client;
use pgt_testkit::testdb_expect_error as expect_error;
use std::time::{Duration, Instant};

/// A database with the three roles and alice's table `src(id, v, w, visible)`
/// (200 rows), readable by bob. Returns (db, alice, bob, mallory).
fn three_roles(hint: &str) -> (TestDb, String, String, String) {
    let mut db = TestDb::new(hint);
    let alice = db.create_role("alice", "NOSUPERUSER");
    let bob = db.create_role("bob", "NOSUPERUSER");
    let mallory = db.create_role("mallory", "NOSUPERUSER");
    db.exec(&format!("GRANT CREATE ON SCHEMA public TO \"{alice}\", \"{bob}\", \"{mallory}\""));
    let mut a = db.connect_as(&alice);
    a.batch_execute(&format!(
        "CREATE TABLE src (id int PRIMARY KEY, v int NOT NULL, w text, visible bool NOT NULL DEFAULT true);
         INSERT INTO src SELECT g, g % 7, 'w' || g, g % 3 <> 0 FROM generate_series(1, 200) g;
         GRANT SELECT ON src TO \"{bob}\";"
    ))
    .unwrap();
    (db, alice, bob, mallory)
}

fn buffer_of(db: &mut TestDb, table: &str) -> String {
    db.scalar(&format!("SELECT 'pgtrickle_changes.changes_' || '{table}'::regclass::oid::text"), &[])
}

fn mode_of(db: &mut TestDb, st: &str) -> String {
    db.scalar("SELECT effective_refresh_mode FROM pgtrickle.pgt_stream_tables WHERE pgt_relid = $1::text::regclass", &[&st])
}

fn taken(notices: &std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>) -> Vec<(String, String)> {
    std::mem::take(&mut *notices.lock().unwrap())
}

fn wait_until(client: &mut Client, condition: &str, what: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let holds: bool = client.query_one(condition, &[]).map(|r| r.get::<_, Option<bool>>(0).unwrap_or(false)).unwrap_or(false);
        if holds {
            return;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}: {condition}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Point 1: row-level security enabled on a source after a stream table was
/// created over it. The reader's DIFFERENTIAL stream table must not copy in the
/// rows the policy hides from it, nor may it read them in the change buffer.
#[test]
fn row_level_security_applies_to_refreshes_and_change_buffers() {
    let (mut db, alice, bob, _) = three_roles("sec_rls");
    let mut a = db.connect_as(&alice);
    // alice's own stream table starts capture; bob's then uses it.
    a.batch_execute("SELECT pgtrickle.create_stream_table('alice_st', 'SELECT id, v FROM src')").unwrap();
    let (mut b, bob_notices) = db.connect_as_collecting_notices(&bob);
    b.batch_execute("SELECT pgtrickle.create_stream_table('bob_st', 'SELECT id, v, w FROM src WHERE v > 1')").unwrap();
    assert_eq!(mode_of(&mut db, "bob_st"), "DIFFERENTIAL");
    let buffer = buffer_of(&mut db, "src");
    // While bob may read all of src, he may read its buffer.
    b.batch_execute(&format!("SELECT count(*) FROM {buffer}")).unwrap();

    a.batch_execute(
        "ALTER TABLE src ENABLE ROW LEVEL SECURITY;
         CREATE POLICY only_visible ON src FOR SELECT USING (visible);
         INSERT INTO src SELECT g, 5, 'hidden' || g, false FROM generate_series(1001, 1010) g;
         UPDATE src SET w = 'secret' WHERE id = 3;",
    )
    .unwrap();
    // The buffer now holds rows the policy hides from bob: reading it fails.
    let err = expect_error(&mut b, &format!("SELECT * FROM {buffer}"), "42501");
    assert!(err.contains("change buffer") || err.contains("permission denied"), "{err}");
    taken(&bob_notices);
    b.batch_execute("SELECT pgtrickle.refresh_stream_table('bob_st')").unwrap();
    let said = taken(&bob_notices);
    assert!(
        said.iter().any(|(sev, m)| sev == "WARNING" && m.contains("now refreshes in FULL mode") && m.contains("row-level security")),
        "{said:?}"
    );
    assert_eq!(mode_of(&mut db, "bob_st"), "FULL");
    let hidden: i64 = db.scalar("SELECT count(*) FROM bob_st WHERE w LIKE 'hidden%' OR w = 'secret' OR id % 3 = 0", &[]);
    assert_eq!(hidden, 0, "bob's stream table holds rows the policy hides from him");
    assert_st_matches_query(&mut b, "bob_st", "SELECT id, v, w FROM src WHERE v > 1");
    let why: String = db.scalar("SELECT reason FROM pgtrickle.explain_refresh_mode('bob_st')", &[]);
    assert!(why.contains("row-level security on public.src"), "{why}");
    // alice owns src: the policy does not apply to her; her stream table stays
    // DIFFERENTIAL and complete.
    a.batch_execute("SELECT pgtrickle.refresh_stream_table('alice_st')").unwrap();
    assert_eq!(mode_of(&mut db, "alice_st"), "DIFFERENTIAL");
    assert_st_matches_query(&mut a, "alice_st", "SELECT id, v FROM src");
    // An explicit DIFFERENTIAL stream table over src is refused to bob.
    let err = expect_error(
        &mut b,
        "SELECT pgtrickle.create_stream_table('bob_diff', 'SELECT id FROM src', refresh_mode => 'DIFFERENTIAL')",
        "42501",
    );
    assert!(err.contains("row-level security on public.src"), "{err}");

    // RLS off again: bob's next refresh switches back to DIFFERENTIAL.
    a.batch_execute("ALTER TABLE src DISABLE ROW LEVEL SECURITY; UPDATE src SET v = v + 1 WHERE id < 20").unwrap();
    b.batch_execute("SELECT pgtrickle.refresh_stream_table('bob_st')").unwrap();
    assert_eq!(mode_of(&mut db, "bob_st"), "DIFFERENTIAL");
    a.batch_execute("UPDATE src SET v = v + 1 WHERE id BETWEEN 20 AND 40; DELETE FROM src WHERE id = 1005").unwrap();
    b.batch_execute("SELECT pgtrickle.refresh_stream_table('bob_st')").unwrap();
    let last: String = db.scalar(
        "SELECT action FROM pgtrickle.pgt_refresh_history h JOIN pgtrickle.pgt_stream_tables s USING (pgt_id) \
         WHERE s.pgt_relid = 'bob_st'::regclass ORDER BY refresh_id DESC LIMIT 1",
        &[],
    );
    assert_eq!(last, "DIFFERENTIAL");
    assert_st_matches_query(&mut b, "bob_st", "SELECT id, v, w FROM src WHERE v > 1");
}

/// Point 2: a role that loses SELECT on a source loses its change buffer at
/// once — by REVOKE (the grant follows) and by losing a role membership (no
/// event fires: the buffer's policy decides at reading time).
#[test]
fn change_buffers_follow_the_privileges_on_their_source() {
    let (mut db, alice, bob, mallory) = three_roles("sec_revoke");
    let readers = db.create_role("readers", "NOSUPERUSER");
    let mut a = db.connect_as(&alice);
    a.batch_execute(&format!(
        "SELECT pgtrickle.create_stream_table('alice_st', 'SELECT id, v FROM src');
         CREATE TABLE other (id int PRIMARY KEY, secret text);
         INSERT INTO other VALUES (1, 'a');
         GRANT SELECT ON other TO \"{readers}\";
         SELECT pgtrickle.create_stream_table('alice_other', 'SELECT id, secret FROM other');"
    ))
    .unwrap();
    db.exec(&format!("GRANT \"{readers}\" TO \"{bob}\""));
    let mut b = db.connect_as(&bob);
    b.batch_execute(
        "SELECT pgtrickle.create_stream_table('bob_st', 'SELECT id, w FROM src');
         SELECT pgtrickle.create_stream_table('bob_other', 'SELECT id, secret FROM other');",
    )
    .unwrap();
    let src_buffer = buffer_of(&mut db, "src");
    let other_buffer = buffer_of(&mut db, "other");
    let grantees = |db: &mut TestDb, buffer: &str| -> Vec<String> {
        db.column(
            &format!(
                "SELECT DISTINCT a.grantee::regrole::text FROM pg_class c, aclexplode(c.relacl) a \
                 WHERE c.oid = '{buffer}'::regclass AND a.grantee <> c.relowner ORDER BY 1"
            ),
            &[],
        )
    };
    assert_eq!(grantees(&mut db, &src_buffer), vec![alice.clone(), bob.clone()]);
    // The stranger reads no buffer at all.
    let mut m = db.connect_as(&mallory);
    expect_error(&mut m, &format!("SELECT * FROM {src_buffer}"), "42501");
    expect_error(&mut m, &format!("SELECT * FROM {other_buffer}"), "42501");

    // REVOKE: bob's grant on the buffer goes with it.
    a.batch_execute(&format!("REVOKE SELECT ON src FROM \"{bob}\"; INSERT INTO src VALUES (500, 1, 'new', true)")).unwrap();
    assert_eq!(grantees(&mut db, &src_buffer), vec![alice.clone()]);
    expect_error(&mut b, &format!("SELECT * FROM {src_buffer}"), "42501");
    // bob's refreshes now fail (his AUTO stream table cannot even run FULL),
    // and his stream table keeps what it had.
    let before = count(&mut db, "bob_st");
    expect_error(&mut b, "SELECT pgtrickle.refresh_stream_table('bob_st')", "42501");
    assert_eq!(count(&mut db, "bob_st"), before);

    // Membership lost: no event trigger fires for it, but the buffer's policy
    // checks bob's rights whenever he reads.
    b.batch_execute(&format!("SELECT count(*) FROM {other_buffer}")).unwrap();
    db.exec(&format!("REVOKE \"{readers}\" FROM \"{bob}\""));
    a.batch_execute("INSERT INTO other VALUES (2, 'fresh secret')").unwrap();
    let err = expect_error(&mut b, &format!("SELECT * FROM {other_buffer}"), "42501");
    assert!(err.contains("change buffer of public.other"), "{err}");
    expect_error(&mut b, "SELECT pgtrickle.refresh_stream_table('bob_other')", "42501");
    // alice is unaffected.
    a.batch_execute("SELECT pgtrickle.refresh_stream_table('alice_st'); SELECT pgtrickle.refresh_stream_table('alice_other')")
        .unwrap();
    assert_st_matches_query(&mut a, "alice_st", "SELECT id, v FROM src");
    assert_st_matches_query(&mut a, "alice_other", "SELECT id, secret FROM other");
}

/// Point 3: a stream table given to another owner keeps refreshing, under its
/// new owner's rights; the old owner's grant on the buffer goes.
#[test]
fn a_new_owner_refreshes_with_its_own_rights() {
    let (mut db, alice, bob, _) = three_roles("sec_owner");
    let mut a = db.connect_as(&alice);
    a.batch_execute("CREATE TABLE own (id int PRIMARY KEY, x int); INSERT INTO own SELECT g, g FROM generate_series(1, 50) g")
        .unwrap();
    a.batch_execute(&format!("GRANT SELECT ON own TO \"{bob}\"")).unwrap();
    // alice may SET ROLE bob (to give him the stream table) without having
    // his privileges.
    db.exec(&format!("GRANT \"{bob}\" TO \"{alice}\" WITH INHERIT FALSE, SET TRUE"));
    a.batch_execute("SELECT pgtrickle.create_stream_table('st', 'SELECT o.id, o.x, s.w FROM own o JOIN src s ON s.id = o.id')")
        .unwrap();
    assert_eq!(mode_of(&mut db, "st"), "DIFFERENTIAL");
    a.batch_execute(&format!("ALTER TABLE st OWNER TO \"{bob}\"")).unwrap();
    let own_buffer = buffer_of(&mut db, "own");
    let grantees: Vec<String> = db.column(
        &format!(
            "SELECT DISTINCT a.grantee::regrole::text FROM pg_class c, aclexplode(c.relacl) a \
             WHERE c.oid = '{own_buffer}'::regclass AND a.grantee <> c.relowner"
        ),
        &[],
    );
    assert_eq!(grantees, vec![bob.clone()]);
    a.batch_execute("UPDATE own SET x = x * 2 WHERE id < 10; UPDATE src SET w = 'changed' WHERE id = 5").unwrap();
    let mut b = db.connect_as(&bob);
    b.batch_execute("SELECT pgtrickle.refresh_stream_table('st')").unwrap_or_else(|e| panic!("bob's refresh: {e:?}"));
    let last: String = db.scalar(
        "SELECT action FROM pgtrickle.pgt_refresh_history ORDER BY refresh_id DESC LIMIT 1",
        &[],
    );
    assert_eq!(last, "DIFFERENTIAL");
    assert_st_matches_query(&mut b, "st", "SELECT o.id, o.x, s.w FROM own o JOIN src s ON s.id = o.id");
    // alice no longer owns it.
    let err = expect_error(&mut db.connect_as(&alice), "SELECT pgtrickle.refresh_stream_table('st')", "42501");
    assert!(err.contains("must be owner"), "{err}");
}

/// Point 4: the error of a failed refresh can quote source values; it is shown
/// to the owner and to roles that may read every source, to no one else. The
/// query as typed (with its comments) is the owner's too.
#[test]
fn refresh_errors_and_original_queries_are_shown_only_to_who_may_read_them() {
    let (mut db, alice, bob, mallory) = three_roles("sec_errors");
    let mut a = db.connect_as(&alice);
    a.batch_execute(
        "SELECT pgtrickle.create_stream_table('casts', 'SELECT id, w::int AS n FROM src WHERE w ~ ''^[0-9]+$'' OR id > 900 /* api key 123 */', schedule => '1s');
         INSERT INTO src VALUES (901, 1, 'top-secret-value', true);",
    )
    .unwrap();
    wait_until(
        &mut db.client,
        "SELECT failed_refreshes > 0 FROM pgtrickle.pg_stat_stream_tables WHERE stream_table = 'casts'::regclass",
        "a failed scheduled refresh",
        Duration::from_secs(30),
    );
    let last_error = |c: &mut Client| -> Option<String> {
        c.query_one("SELECT last_error FROM pgtrickle.pg_stat_stream_tables WHERE stream_table = 'casts'::regclass", &[])
            .unwrap()
            .get(0)
    };
    let history_error = |c: &mut Client| -> Option<String> {
        c.query_one(
            "SELECT error_message FROM pgtrickle.refresh_history('casts') WHERE status = 'FAILED' LIMIT 1",
            &[],
        )
        .unwrap()
        .get(0)
    };
    for owner_or_reader in [&alice, &bob] {
        let mut c = db.connect_as(owner_or_reader);
        let e = last_error(&mut c).unwrap_or_default();
        assert!(e.contains("top-secret-value"), "{owner_or_reader} should see the error: {e:?}");
        assert!(history_error(&mut c).unwrap_or_default().contains("top-secret-value"));
    }
    let mut m = db.connect_as(&mallory);
    assert_eq!(last_error(&mut m), None);
    assert_eq!(history_error(&mut m), None);
    expect_error(&mut m, "SELECT error_message FROM pgtrickle.pgt_refresh_history", "42501");
    expect_error(&mut m, "SELECT original_query FROM pgtrickle.pgt_stream_tables", "42501");
    // What everyone may read: the normalized definition, without comments.
    let defining: String =
        m.query_one("SELECT defining_query FROM pgtrickle.pgt_stream_tables", &[]).unwrap().get(0);
    assert!(!defining.contains("api key"), "{defining}");
    let n: i64 = m.query_one("SELECT failed_refreshes FROM pgtrickle.pg_stat_stream_tables", &[]).unwrap().get(0);
    assert!(n > 0);
    // Once bob may not read src, he sees no more than mallory.
    a.batch_execute(&format!("REVOKE SELECT ON src FROM \"{bob}\"")).unwrap();
    assert_eq!(last_error(&mut db.connect_as(&bob)), None);
}

/// Point 5: owners suspend and resume their own stream tables; a suspended
/// stream table does not hold back its sources' change buffers.
#[test]
fn owners_suspend_and_resume_their_stream_tables() {
    let (mut db, alice, bob, _) = three_roles("sec_suspend");
    let mut a = db.connect_as(&alice);
    a.batch_execute(
        "SELECT pgtrickle.create_stream_table('st', 'SELECT v, count(*) AS n FROM src GROUP BY v');
         SELECT pgtrickle.alter_stream_table('st', status => 'SUSPENDED');",
    )
    .unwrap_or_else(|e| panic!("alice suspends her stream table: {e:?}"));
    let (status, frontier): (String, Option<String>) = {
        let r = db.client.query_one("SELECT status, frontier::text FROM pgtrickle.pgt_stream_tables", &[]).unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((status.as_str(), frontier), ("SUSPENDED", None));
    // Others may not.
    let err = expect_error(&mut db.connect_as(&bob), "SELECT pgtrickle.alter_stream_table('st', status => 'ACTIVE')", "42501");
    assert!(err.contains("must be owner"), "{err}");
    a.batch_execute("INSERT INTO src VALUES (300, 3, 'x', true); SELECT pgtrickle.alter_stream_table('st', status => 'ACTIVE')")
        .unwrap();
    a.batch_execute("DELETE FROM src WHERE id < 10; SELECT pgtrickle.refresh_stream_table('st')").unwrap();
    assert_eq!(db.scalar::<String>("SELECT status FROM pgtrickle.pgt_stream_tables", &[]), "ACTIVE");
    a.batch_execute("UPDATE src SET v = 0 WHERE id < 50; SELECT pgtrickle.refresh_stream_table('st')").unwrap();
    assert_st_matches_query(&mut a, "st", "SELECT v, count(*) AS n FROM src GROUP BY v");
}

/// Point 6: queries that read no table have nothing to capture; they refresh
/// FULL (AUTO), are refused as DIFFERENTIAL, and never fail.
#[test]
fn queries_without_a_table_refresh_full() {
    let mut db = TestDb::new("sec_no_from");
    let (mut c, notices) = db.connect_collecting_notices();
    for (name, query) in [("one", "SELECT 1 AS a"), ("xact", "SELECT pg_current_xact_id()::text AS x"), ("now_st", "SELECT now() AS t")] {
        c.batch_execute(&format!("SELECT pgtrickle.create_stream_table('{name}', $q${query}$q$)")).unwrap();
        let said = taken(&notices);
        assert!(
            said.iter().any(|(sev, m)| sev == "WARNING" && (m.contains("reads no table") || m.contains("volatile"))),
            "{name}: {said:?}"
        );
        assert_eq!(mode_of(&mut db, name), "FULL");
        for _ in 0..3 {
            c.batch_execute(&format!("SELECT pgtrickle.refresh_stream_table('{name}')")).unwrap();
        }
        assert_eq!(count(&mut db, name), 1);
    }
    assert_st_matches_query(&mut db.client, "one", "SELECT 1 AS a");
    let err = db.expect_error("SELECT pgtrickle.create_stream_table('d', 'SELECT 1 AS a', refresh_mode => 'DIFFERENTIAL')", "0A000");
    assert!(err.contains("reads no table"), "{err}");
}

/// Point 7: the owner of a source cannot switch capture off: disabled,
/// dropped, re-enabled or renamed capture triggers are put back before the
/// statement returns; and when even that was bypassed (a superuser with
/// `event_triggers = off`), the next refresh repairs capture and recomputes.
#[test]
fn capture_cannot_be_switched_off() {
    let (mut db, alice, _, _) = three_roles("sec_capture");
    let mut a = db.connect_as(&alice);
    a.batch_execute("SELECT pgtrickle.create_stream_table('st', 'SELECT v, count(*) AS n, max(w) AS mw FROM src GROUP BY v')")
        .unwrap();
    let oid: u32 = db.scalar::<pgt_testkit::postgres::types::Oid>("SELECT 'src'::regclass::oid", &[]);
    let triggers = |db: &mut TestDb| -> Vec<(String, String)> {
        db.client
            .query(
                "SELECT tgname::text, tgenabled::text FROM pg_trigger WHERE tgrelid = 'src'::regclass AND NOT tgisinternal ORDER BY 1",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    };
    let intact: Vec<(String, String)> =
        ["del", "ins", "trunc", "upd"].iter().map(|s| (format!("pgt_cdc_{oid}_{s}"), "A".to_string())).collect();
    assert_eq!(triggers(&mut db), intact);
    let q = "SELECT v, count(*) AS n, max(w) AS mw FROM src GROUP BY v";
    let (mut an, notices) = db.connect_as_collecting_notices(&alice);
    let attempts = [
        "ALTER TABLE src DISABLE TRIGGER USER".to_string(),
        "ALTER TABLE src DISABLE TRIGGER ALL".to_string(),
        format!("ALTER TABLE src DISABLE TRIGGER pgt_cdc_{oid}_ins"),
        format!("ALTER TABLE src ENABLE TRIGGER pgt_cdc_{oid}_upd"),
        format!("ALTER TABLE src ENABLE REPLICA TRIGGER pgt_cdc_{oid}_del"),
        format!("DROP TRIGGER pgt_cdc_{oid}_ins ON src"),
        format!("ALTER TRIGGER pgt_cdc_{oid}_upd ON src RENAME TO my_upd"),
        format!(
            "CREATE FUNCTION noop() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$; \
             CREATE OR REPLACE TRIGGER pgt_cdc_{oid}_ins AFTER INSERT ON src FOR EACH STATEMENT EXECUTE FUNCTION noop()"
        ),
    ];
    for (i, attempt) in attempts.iter().enumerate() {
        an.batch_execute(attempt).unwrap_or_else(|e| panic!("{attempt}: {e:?}"));
        assert_eq!(triggers(&mut db), intact, "after {attempt}");
        an.batch_execute(&format!(
            "INSERT INTO src VALUES ({}, {}, 'after{i}', true); UPDATE src SET v = v + 1 WHERE id = {}; DELETE FROM src WHERE id = {}",
            2000 + i,
            i % 5,
            10 + i,
            100 + i
        ))
        .unwrap();
        an.batch_execute("SELECT pgtrickle.refresh_stream_table('st')").unwrap();
        assert_st_matches_query(&mut a, "st", q);
    }
    let said = taken(&notices);
    assert!(said.iter().any(|(_, m)| m.contains("pg_trickle put it back")), "{said:?}");
    // The refreshes stayed DIFFERENTIAL: no write had gone uncaptured.
    let full: i64 = db.scalar("SELECT count(*) FROM pgtrickle.pgt_refresh_history WHERE action = 'FULL' AND initiated_by = 'MANUAL'", &[]);
    assert_eq!(full, 0, "repairs made by the command that broke capture need no recomputation");

    // Switched off where no event trigger saw it (a superuser with
    // event_triggers = off), then repaired by the next DDL that does fire them:
    // the readers recompute, as writes went uncaptured meanwhile.
    db.exec("SET event_triggers = off; ALTER TABLE src DISABLE TRIGGER ALL; RESET event_triggers");
    db.exec("INSERT INTO src VALUES (2900, 2, 'unseen', true)");
    let (mut sn, sn_notices) = db.connect_collecting_notices();
    sn.batch_execute("ALTER TABLE src ADD COLUMN unused_col int").unwrap();
    let said = taken(&sn_notices);
    assert!(said.iter().any(|(sev, m)| sev == "WARNING" && m.contains("had been switched off")), "{said:?}");
    assert_eq!(triggers(&mut db), intact);
    an.batch_execute("SELECT pgtrickle.refresh_stream_table('st')").unwrap();
    assert_st_matches_query(&mut a, "st", q);

    // Bypassed: a superuser turns event triggers off and disables capture.
    db.exec("SET event_triggers = off; ALTER TABLE src DISABLE TRIGGER ALL; RESET event_triggers");
    db.exec("INSERT INTO src VALUES (3000, 1, 'uncaptured', true); UPDATE src SET w = 'zz' WHERE id = 50");
    sn.batch_execute("SELECT pgtrickle.refresh_stream_table('st')").unwrap();
    let said = taken(&sn_notices);
    assert!(said.iter().any(|(sev, m)| sev == "WARNING" && m.contains("had been switched off")), "{said:?}");
    assert_eq!(triggers(&mut db), intact);
    let last: String = db.scalar("SELECT action FROM pgtrickle.pgt_refresh_history ORDER BY refresh_id DESC LIMIT 1", &[]);
    assert_eq!(last, "FULL", "the refresh recomputed");
    assert_st_matches_query(&mut a, "st", q);
}

/// Point 8: a role that may only read a table gains no power over it: it
/// cannot start capture (its stream table refreshes FULL unless capture exists
/// or the owner grants TRIGGER), its open transaction blocks none of the
/// owner's writes, and its stream table never blocks the owner's DDL.
#[test]
fn a_reader_gains_no_power_over_the_owners_table() {
    let (mut db, alice, bob, _) = three_roles("sec_reader");
    let (mut b, bob_notices) = db.connect_as_collecting_notices(&bob);
    // No capture on src yet: bob may not start it.
    b.batch_execute("SELECT pgtrickle.create_stream_table('bob_full', 'SELECT id, w FROM src WHERE v = 1')").unwrap();
    let said = taken(&bob_notices);
    assert!(said.iter().any(|(s, m)| s == "WARNING" && m.contains("may not start")), "{said:?}");
    assert_eq!(mode_of(&mut db, "bob_full"), "FULL");
    assert_eq!(capture_trigger_count(&mut db), 0);
    let err = expect_error(
        &mut b,
        "SELECT pgtrickle.create_stream_table('bob_diff', 'SELECT id FROM src', refresh_mode => 'DIFFERENTIAL')",
        "42501",
    );
    assert!(err.contains("may not start"), "{err}");
    // bob's transaction creating a stream table stays open: alice writes on.
    let mut a = db.connect_as(&alice);
    a.batch_execute("SET lock_timeout = '3s'").unwrap();
    b.batch_execute("BEGIN; SELECT pgtrickle.create_stream_table('bob_open', 'SELECT id, v FROM src')").unwrap();
    a.batch_execute("INSERT INTO src VALUES (901, 1, 'during', true); UPDATE src SET v = 2 WHERE id = 1")
        .unwrap_or_else(|e| panic!("bob's open transaction blocks alice: {e:?}"));
    b.batch_execute("COMMIT").unwrap();

    // With capture in place (alice's own stream table), bob's is DIFFERENTIAL,
    // and his open transaction still blocks nothing of hers.
    a.batch_execute("SELECT pgtrickle.create_stream_table('alice_st', 'SELECT id, v FROM src')").unwrap();
    b.batch_execute("BEGIN; SELECT pgtrickle.create_stream_table('bob_diff', 'SELECT id, w FROM src WHERE v > 2')").unwrap();
    a.batch_execute("INSERT INTO src VALUES (902, 3, 'during2', true)")
        .unwrap_or_else(|e| panic!("bob's open transaction blocks alice: {e:?}"));
    b.batch_execute("COMMIT").unwrap();
    assert_eq!(mode_of(&mut db, "bob_diff"), "DIFFERENTIAL");

    // alice's DDL: a column only bob's stream table reads is hers to rename;
    // his stream table reinitializes. One her own stream table reads is
    // blocked, naming only hers.
    let (mut an, alice_notices) = db.connect_as_collecting_notices(&alice);
    an.batch_execute("ALTER TABLE src RENAME COLUMN w TO w_renamed").unwrap_or_else(|e| panic!("blocked by bob's stream table: {e:?}"));
    let said = taken(&alice_notices);
    assert!(said.iter().any(|(_, m)| m.contains("public.bob_diff") && m.contains("reinitialize")), "{said:?}");
    an.batch_execute("ALTER TABLE src RENAME COLUMN w_renamed TO w").unwrap_or_else(|e| panic!("{e:?}"));
    let err = expect_error(&mut an, "ALTER TABLE src RENAME COLUMN v TO value", "2BP01");
    assert!(err.contains("public.alice_st") && !err.contains("bob_diff"), "{err}");
    // With alice's permission, bob may start capture himself.
    a.batch_execute(&format!("CREATE TABLE more (id int PRIMARY KEY, x int); INSERT INTO more VALUES (1, 1); GRANT SELECT, TRIGGER ON more TO \"{bob}\""))
        .unwrap();
    b.batch_execute("SELECT pgtrickle.create_stream_table('bob_more', 'SELECT id, x FROM more')").unwrap();
    assert_eq!(mode_of(&mut db, "bob_more"), "DIFFERENTIAL");
    a.batch_execute("UPDATE more SET x = 5; UPDATE src SET v = v + 1 WHERE id < 30").unwrap();
    b.batch_execute(
        "SELECT pgtrickle.refresh_stream_table('bob_more'); SELECT pgtrickle.refresh_stream_table('bob_diff'); \
         SELECT pgtrickle.refresh_stream_table('bob_full'); SELECT pgtrickle.refresh_stream_table('bob_open')",
    )
    .unwrap();
    assert_st_matches_query(&mut b, "bob_more", "SELECT id, x FROM more");
    assert_st_matches_query(&mut b, "bob_diff", "SELECT id, w FROM src WHERE v > 2");
    assert_st_matches_query(&mut b, "bob_full", "SELECT id, w FROM src WHERE v = 1");
    assert_st_matches_query(&mut b, "bob_open", "SELECT id, v FROM src");

    // Capture on src exists now: bob's FULL stream tables became DIFFERENTIAL
    // at their last refresh.
    assert_eq!(mode_of(&mut db, "bob_full"), "DIFFERENTIAL");
    assert_eq!(mode_of(&mut db, "bob_open"), "DIFFERENTIAL");

    // alice drops her stream table; bob's are the last to read src through
    // capture. When he drops the last, his transaction does not lock alice's
    // table (dropping triggers would): capture is left for the scheduler.
    a.batch_execute("SELECT pgtrickle.drop_stream_table('alice_st')").unwrap();
    b.batch_execute("SELECT pgtrickle.drop_stream_table('bob_full'); SELECT pgtrickle.drop_stream_table('bob_open')").unwrap();
    b.batch_execute("BEGIN; SELECT pgtrickle.drop_stream_table('bob_diff')").unwrap();
    a.batch_execute("INSERT INTO src VALUES (903, 1, 'during3', true)")
        .unwrap_or_else(|e| panic!("bob's open transaction blocks alice: {e:?}"));
    b.batch_execute("COMMIT").unwrap();
    wait_until(
        &mut db.client,
        "SELECT NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = 'src'::regclass AND tgname LIKE 'pgt\\_cdc\\_%')",
        "the scheduler to release capture nobody needs",
        Duration::from_secs(90),
    );
}

/// Point 11: only refreshes write stream tables, as only REFRESH writes a
/// materialized view; the guard comes back if its owner removes it.
#[test]
fn only_refreshes_write_stream_tables() {
    let (mut db, alice, _, _) = three_roles("sec_guard");
    let (mut a, notices) = db.connect_as_collecting_notices(&alice);
    a.batch_execute(
        "SELECT pgtrickle.create_stream_table('diff', 'SELECT id, v FROM src WHERE v > 2');
         SELECT pgtrickle.create_stream_table('full_st', 'SELECT id, v FROM src WHERE v > 2', refresh_mode => 'FULL');",
    )
    .unwrap();
    for st in ["diff", "full_st"] {
        for dml in [
            format!("INSERT INTO {st} (id, v, __pgt_row_id) VALUES (-1, 99, 12345)"),
            format!("UPDATE {st} SET v = 0"),
            format!("DELETE FROM {st}"),
            format!("TRUNCATE {st}"),
            format!("MERGE INTO {st} t USING (SELECT 1 AS id) s ON t.id = s.id WHEN MATCHED THEN DELETE"),
        ] {
            let err = expect_error(&mut a, &dml, "42809");
            assert!(err.contains(&format!("cannot change stream table public.{st}")), "{err}");
            db.expect_error(&dml, "42809");
        }
    }
    let guard = |db: &mut TestDb| -> Vec<String> {
        db.column("SELECT tgenabled::text FROM pg_trigger WHERE tgrelid = 'diff'::regclass AND tgname = 'pgt_stream_table_guard'", &[])
    };
    for tamper in ["ALTER TABLE diff DISABLE TRIGGER ALL", "DROP TRIGGER pgt_stream_table_guard ON diff", "ALTER TABLE diff ENABLE TRIGGER pgt_stream_table_guard"] {
        a.batch_execute(tamper).unwrap();
        assert_eq!(guard(&mut db), vec!["A".to_string()], "after {tamper}");
        expect_error(&mut a, "DELETE FROM diff", "42809");
    }
    assert!(taken(&notices).iter().any(|(_, m)| m.contains("only refreshes write stream table")));
    a.batch_execute(
        "UPDATE src SET v = v + 3 WHERE id < 40; SELECT pgtrickle.refresh_stream_table('diff'); SELECT pgtrickle.refresh_stream_table('full_st')",
    )
    .unwrap();
    assert_st_matches_query(&mut a, "diff", "SELECT id, v FROM src WHERE v > 2");
    assert_st_matches_query(&mut a, "full_st", "SELECT id, v FROM src WHERE v > 2");
    // Nor may its shape change under the query: columns, or inheritance.
    a.batch_execute("CREATE TABLE parent_t (id int, v int)").unwrap();
    for reshape in [
        "ALTER TABLE diff ADD COLUMN extra int",
        "ALTER TABLE diff DROP COLUMN v",
        "ALTER TABLE diff RENAME COLUMN v TO w",
        "ALTER TABLE diff ALTER COLUMN v TYPE bigint",
        "ALTER TABLE diff ALTER COLUMN v TYPE int USING v + 1",
        "ALTER TABLE diff INHERIT parent_t",
        "CREATE TABLE child_t () INHERITS (diff)",
    ] {
        let err = expect_error(&mut a, reshape, "42809");
        assert!(err.contains("stream table public.diff"), "{reshape}: {err}");
    }
    // Indexes, grants and policies on a stream table stay the owner's to make.
    a.batch_execute("CREATE INDEX ON diff (v); GRANT SELECT ON diff TO PUBLIC; ALTER TABLE diff ENABLE ROW LEVEL SECURITY").unwrap();
    // Dropping the extension leaves an ordinary, writable table.
    db.exec("DROP EXTENSION pg_trickle; DELETE FROM diff WHERE id = 5");
}

/// Point 10: a change buffer held back by a stream table that is not
/// refreshed draws a WARNING naming it and shows in the monitoring views;
/// refresh history is pruned by age and count.
#[test]
fn growth_is_bounded_or_reported() {
    let mut db = TestDb::new("sec_growth");
    db.exec(
        "CREATE TABLE t (id int PRIMARY KEY, pad text);
         SELECT pgtrickle.create_stream_table('busy', 'SELECT id FROM t');
         SELECT pgtrickle.create_stream_table('lagging', 'SELECT id, pad FROM t');",
    );
    let (mut c, notices) = db.connect_collecting_notices();
    c.batch_execute(
        "SET pg_trickle.change_buffer_alert_kb = 64;
         INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(1, 3000) g;
         SELECT pgtrickle.refresh_stream_table('busy');",
    )
    .unwrap();
    let said = taken(&notices);
    assert!(
        said.iter().any(|(sev, m)| sev == "WARNING" && m.contains("change buffer of public.t") && m.contains("public.lagging")),
        "{said:?}"
    );
    let (over, slowest): (bool, Option<String>) = {
        let r = c.query_one("SELECT over_alert_size, slowest_reader::text FROM pgtrickle.change_buffer_stats()", &[]).unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((over, slowest.as_deref()), (true, Some("lagging")));
    let (status, n): (String, i64) = {
        let r = c.query_one("SELECT status, buffers_over_alert_size FROM pgtrickle.quick_health", &[]).unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((status.as_str(), n), ("WARNING", 1));
    // The laggard catches up: the buffer empties (and shrinks once vacuumed).
    let buffer = buffer_of(&mut db, "t");
    c.batch_execute("SELECT pgtrickle.refresh_stream_table('lagging')").unwrap();
    c.batch_execute(&format!("VACUUM {buffer}")).unwrap();
    let over: bool = c.query_one("SELECT over_alert_size FROM pgtrickle.change_buffer_stats()", &[]).unwrap().get(0);
    assert!(!over);
    assert_st_matches_query(&mut db.client, "lagging", "SELECT id, pad FROM t");

    // History: at most pg_trickle.history_max_rows per stream table (give or
    // take one pruning period), and nothing older than the retention.
    c.batch_execute("SET pg_trickle.history_max_rows = 10").unwrap();
    for i in 0..120 {
        c.batch_execute(&format!("UPDATE t SET pad = 'p{i}' WHERE id = 1; SELECT pgtrickle.refresh_stream_table('lagging')"))
            .unwrap();
    }
    let kept: i64 = db.scalar(
        "SELECT count(*) FROM pgtrickle.pgt_refresh_history h JOIN pgtrickle.pgt_stream_tables s USING (pgt_id) \
         WHERE s.pgt_relid = 'lagging'::regclass",
        &[],
    );
    assert!((10..=10 + 32).contains(&kept), "kept {kept} history rows");
    let newest: i64 = db.scalar("SELECT max(refresh_id) FROM pgtrickle.pgt_refresh_history", &[]);
    c.batch_execute("SET pg_trickle.history_max_rows = 0; SET pg_trickle.history_retention_s = 1").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    for i in 0..40 {
        c.batch_execute(&format!("UPDATE t SET pad = 'q{i}' WHERE id = 2; SELECT pgtrickle.refresh_stream_table('lagging')"))
            .unwrap();
    }
    let old: i64 = db.scalar(&format!("SELECT count(*) FROM pgtrickle.pgt_refresh_history WHERE refresh_id <= {newest} AND pgt_id = (SELECT pgt_id FROM pgtrickle.pgt_stream_tables WHERE pgt_relid = 'lagging'::regclass)"), &[]);
    assert_eq!(old, 0, "rows older than the retention remain");
    assert_st_matches_query(&mut db.client, "lagging", "SELECT id, pad FROM t");
}

/// Point 9: a refresh that takes 5 s does not hold a '1s' stream table of its
/// database past its schedule by more than pg_trickle.max_inline_refresh_ms
/// (1 s): it moves to a refresh worker of its own.
#[test]
fn a_slow_refresh_does_not_hold_up_the_others() {
    let mut db = TestDb::new("sec_slow");
    db.exec(
        "CREATE TABLE f (id int PRIMARY KEY);
         CREATE TABLE s (id int PRIMARY KEY); INSERT INTO s VALUES (1);
         SELECT pgtrickle.create_stream_table('slow_st', 'SELECT s.id FROM s, pg_sleep(5)', schedule => '1s');
         SELECT pgtrickle.create_stream_table('fast', 'SELECT id FROM f', schedule => '1s');",
    );
    wait_until(&mut db.client, "SELECT worker_pid IS NOT NULL FROM pgtrickle.scheduler_status()", "the scheduler", Duration::from_secs(30));
    let start = Instant::now();
    let mut worst = Duration::ZERO;
    let mut saw_refresh_worker = false;
    let mut id = 0;
    while start.elapsed() < Duration::from_secs(14) {
        id += 1;
        db.exec(&format!("INSERT INTO f VALUES ({id})"));
        let inserted = Instant::now();
        loop {
            let seen: bool = db.scalar(&format!("SELECT EXISTS (SELECT 1 FROM fast WHERE id = {id})"), &[]);
            let workers: i32 = db.scalar("SELECT refresh_workers FROM pgtrickle.scheduler_status()", &[]);
            saw_refresh_worker |= workers > 0;
            if seen {
                break;
            }
            assert!(inserted.elapsed() < Duration::from_secs(20), "fast never caught up with row {id}");
            std::thread::sleep(Duration::from_millis(20));
        }
        worst = worst.max(inserted.elapsed());
        std::thread::sleep(Duration::from_millis(200));
    }
    // One second of schedule, at most one second inline before the slow refresh
    // moves out, and slack for this 2-core machine.
    assert!(worst < Duration::from_millis(3500), "a '1s' stream table was {worst:?} behind");
    assert!(saw_refresh_worker, "the slow refresh never ran in a refresh worker");
    // Its refreshes succeed there (a FULL refresh that changes nothing leaves
    // no history row, but marks the stream table refreshed).
    let refreshed_at: f64 = db.scalar("SELECT extract(epoch FROM clock_timestamp())::float8", &[]);
    wait_until(
        &mut db.client,
        &format!(
            "SELECT last_refresh_at > to_timestamp({refreshed_at}) FROM pgtrickle.pgt_stream_tables \
             WHERE pgt_relid = 'slow_st'::regclass"
        ),
        "the slow stream table to refresh in its worker",
        Duration::from_secs(30),
    );
    let failed: i64 = db.scalar("SELECT count(*) FROM pgtrickle.pgt_refresh_history WHERE status = 'FAILED'", &[]);
    assert_eq!(failed, 0, "moving a slow refresh is no failure");
    assert_st_matches_query(&mut db.client, "fast", "SELECT id FROM f");
    assert_st_matches_query(&mut db.client, "slow_st", "SELECT s.id FROM s, pg_sleep(0)");
}

/// Point 9: more databases with stream tables than background workers allow
/// schedulers: every one of them is served, in turns; a waiting database
/// shows in scheduler_status(), quick_health and pg_stat_stream_tables, and
/// creating a stream table there says so. And pg_trickle.refresh_timeout_ms
/// cancels a refresh that runs longer (recorded as failed).
#[test]
fn more_databases_than_workers_are_all_served_in_turn() {
    // 4 background workers: the pg_trickle launcher and three schedulers; no
    // logical replication launcher, no parallel query workers.
    let dedicated = pgt_testkit::Cluster::dedicated(
        "rotation",
        vec![
            "max_worker_processes = 4".into(),
            "max_logical_replication_workers = 0".into(),
            "max_parallel_workers_per_gather = 0".into(),
            "pg_trickle.scheduler_turn_ms = 1000".into(),
            "pg_trickle.max_concurrent_refreshes = 0".into(),
            "pg_trickle.refresh_timeout_ms = 1500".into(),
        ],
    );
    let cluster = &dedicated.cluster;
    let names: Vec<String> = (1..=6).map(|i| format!("rot{i}")).collect();
    let mut admin = cluster.connect("postgres").unwrap();
    for name in &names {
        admin.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
        let mut c = cluster.connect(name).unwrap();
        c.batch_execute(
            "CREATE EXTENSION pg_trickle;
             CREATE TABLE t (id int PRIMARY KEY);
             SELECT pgtrickle.create_stream_table('st', 'SELECT id FROM t', schedule => '1s');",
        )
        .unwrap();
    }
    let mut clients: Vec<Client> = names.iter().map(|n| cluster.connect(n).unwrap()).collect();
    let mut seen_waiting = Vec::new();
    let mut warned = false;
    for round in 1..=3 {
        for c in &mut clients {
            c.batch_execute(&format!("INSERT INTO t VALUES ({round})")).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let mut fresh = 0;
            for (i, c) in clients.iter_mut().enumerate() {
                let ok: bool = c.query_one(&format!("SELECT EXISTS (SELECT 1 FROM st WHERE id = {round})"), &[]).unwrap().get(0);
                fresh += ok as usize;
                let row = c
                    .query_one(
                        "SELECT s.state, q.status, (SELECT min(scheduler_state) FROM pgtrickle.pg_stat_stream_tables) \
                         FROM pgtrickle.scheduler_status() s, pgtrickle.quick_health q",
                        &[],
                    )
                    .unwrap();
                let (state, health, per_table): (String, String, Option<String>) = (row.get(0), row.get(1), row.get(2));
                if state == "waiting for a background worker" {
                    assert_eq!(health, "SCHEDULER WAITING", "quick_health of a waiting database");
                    assert_eq!(per_table.as_deref(), Some(state.as_str()));
                    seen_waiting.push(i);
                    if !warned {
                        // Creating a stream table there warns that it waits.
                        let notices = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
                        let sink = notices.clone();
                        let mut config: pgt_testkit::postgres::Config = cluster.conninfo(&names[i]).parse().unwrap();
                        config.notice_callback(move |n| sink.lock().unwrap().push(n.message().to_string()));
                        let mut w = config.connect(pgt_testkit::postgres::NoTls).unwrap();
                        w.batch_execute("SELECT pgtrickle.create_stream_table('probe', 'SELECT id FROM t', schedule => '1s')").unwrap();
                        warned = notices.lock().unwrap().iter().any(|m| m.contains("no background worker is free"));
                        w.batch_execute("SELECT pgtrickle.drop_stream_table('probe')").unwrap();
                    }
                }
            }
            if fresh == clients.len() {
                break;
            }
            assert!(Instant::now() < deadline, "round {round}: only {fresh} of {} databases were refreshed", clients.len());
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    assert!(!seen_waiting.is_empty(), "no database was ever seen waiting for a worker");
    assert!(warned, "creating a stream table in a waiting database gave no WARNING");
    for c in &mut clients {
        pgt_testkit::assert_st_matches_query(c, "st", "SELECT id FROM t");
    }
    // The refresh timeout: a 5 s refresh is cancelled after 1.5 s and recorded.
    let c = &mut clients[0];
    c.batch_execute("SELECT pgtrickle.create_stream_table('sleepy', 'SELECT 1 AS one FROM pg_sleep(5)', schedule => '1s')").unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let err: Option<String> = c
            .query_one("SELECT max(error_message) FROM pgtrickle.pgt_refresh_history WHERE status = 'FAILED'", &[])
            .unwrap()
            .get(0);
        if let Some(err) = err {
            assert!(err.contains("pg_trickle.refresh_timeout_ms"), "{err}");
            break;
        }
        assert!(Instant::now() < deadline, "the sleepy refresh was never cancelled");
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(clients);
    for name in &names {
        admin.batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)")).unwrap();
    }
}

/// Point 2, for a role that bypasses row-level security (the buffers' policy
/// does not apply to it): losing SELECT through a role membership, which no
/// event reports, takes its buffer grant away at the scheduler's next
/// housekeeping (every 10 s).
#[test]
fn buffer_grants_follow_membership_changes_for_bypassrls_roles() {
    let (mut db, alice, _, _) = three_roles("sec_bypassrls");
    let carol = db.create_role("carol", "NOSUPERUSER BYPASSRLS");
    let readers = db.create_role("readers2", "NOSUPERUSER");
    db.exec(&format!("GRANT CREATE ON SCHEMA public TO \"{carol}\"; GRANT \"{readers}\" TO \"{carol}\""));
    let mut a = db.connect_as(&alice);
    a.batch_execute(&format!("GRANT SELECT ON src TO \"{readers}\"; SELECT pgtrickle.create_stream_table('alice_st', 'SELECT id FROM src')"))
        .unwrap();
    let mut c = db.connect_as(&carol);
    c.batch_execute("SELECT pgtrickle.create_stream_table('carol_st', 'SELECT id, w FROM src')").unwrap();
    let buffer = buffer_of(&mut db, "src");
    c.batch_execute(&format!("SELECT count(*) FROM {buffer}")).unwrap();
    db.exec(&format!("REVOKE \"{readers}\" FROM \"{carol}\""));
    wait_until(
        &mut db.client,
        &format!("SELECT NOT has_table_privilege('{carol}', '{buffer}', 'SELECT')"),
        "the scheduler to take the stale grant away",
        Duration::from_secs(40),
    );
    expect_error(&mut c, &format!("SELECT * FROM {buffer}"), "42501");
}

/// Point 5, under concurrency: a stream table suspended and resumed while
/// writers run and another stream table over the same source keeps refreshing
/// (and trimming the shared buffer) loses no change: its first refresh after
/// resuming holds the buffer until it has a frontier again.
#[test]
fn resuming_under_concurrent_writes_and_trims_loses_nothing() {
    let mut db = TestDb::new("sec_resume_race");
    db.exec(
        "CREATE TABLE t (id serial PRIMARY KEY, v int NOT NULL);
         INSERT INTO t (v) SELECT g % 10 FROM generate_series(1, 100) g;
         SELECT pgtrickle.create_stream_table('x', 'SELECT v, count(*) AS n FROM t GROUP BY v');
         SELECT pgtrickle.create_stream_table('y', 'SELECT v, sum(id) AS s FROM t GROUP BY v');",
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spawn = |sql: &'static str, pause: u64| {
        let mut c = db.connect();
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                c.batch_execute(sql).unwrap();
                std::thread::sleep(Duration::from_millis(pause));
            }
        })
    };
    let threads = vec![
        spawn("INSERT INTO t (v) VALUES ((random() * 9)::int)", 2),
        spawn("UPDATE t SET v = (v + 1) % 10 WHERE id = (SELECT (random() * 100)::int + 1)", 3),
        spawn("SELECT pgtrickle.refresh_stream_table('y')", 1),
    ];
    for _ in 0..40 {
        db.exec(
            "SELECT pgtrickle.alter_stream_table('x', status => 'SUSPENDED');
             SELECT pgtrickle.alter_stream_table('x', status => 'ACTIVE');
             SELECT pgtrickle.refresh_stream_table('x');",
        );
        for _ in 0..3 {
            db.exec("SELECT pgtrickle.refresh_stream_table('x')");
        }
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    db.exec("SELECT pgtrickle.refresh_stream_table('x'); SELECT pgtrickle.refresh_stream_table('y')");
    assert_st_matches_query(&mut db.client, "x", "SELECT v, count(*) AS n FROM t GROUP BY v");
    assert_st_matches_query(&mut db.client, "y", "SELECT v, sum(id) AS s FROM t GROUP BY v");
}
