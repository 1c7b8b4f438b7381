//! Every SQL function of pg_trickle through a real PgBouncer (Debian's
//! `pgbouncer`) in transaction pooling mode, with fewer server connections
//! than clients so that consecutive transactions of one client land on
//! different server sessions, and transactions of different clients on the
//! same one. pg_trickle must assume no session state between transactions
//! (docs/INTEGRATIONS.md, PgBouncer). The clients use the simple query
//! protocol, as PgBouncer 1.18 in transaction mode requires of unnamed
//! prepared statements.

use pg_trickle_e2e::tools::{as_service_user, free_port, require_tool, wait_for, Process, Scratch};
use pg_trickle_e2e::{assert_st_matches_query, TestDb};
use pgt_testkit::postgres::{Client, NoTls, SimpleQueryMessage};
use rand::{Rng, SeedableRng};
use std::path::PathBuf;
use std::time::Duration;

/// A PgBouncer in front of the test database, `pool_size` server connections.
struct Bouncer {
    port: u16,
    db: String,
    _process: Process,
    _scratch: Scratch,
}

impl Bouncer {
    fn start(test: &str, db: &TestDb, pool_size: u32) -> Option<Bouncer> {
        let binary = require_tool(test, "PgBouncer (Debian package pgbouncer)", &[PathBuf::from("/usr/sbin/pgbouncer"), PathBuf::from("/usr/bin/pgbouncer")])?;
        let scratch = Scratch::new(test);
        let port = free_port();
        scratch.write("users.txt", "\"postgres\" \"\"\n");
        let ini = scratch.write(
            "pgbouncer.ini",
            &format!(
                "[databases]\n{db} = host=127.0.0.1 port={pg} dbname={db} user=postgres\n\n\
                 [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 auth_type = trust\nauth_file = {users}\npool_mode = transaction\n\
                 default_pool_size = {pool_size}\nmin_pool_size = 0\nreserve_pool_size = 0\nmax_client_conn = 100\n\
                 ignore_startup_parameters = extra_float_digits\nserver_lifetime = 3600\n\
                 pidfile = {dir}/pgbouncer.pid\n",
                db = db.name,
                pg = db.cluster.port,
                users = scratch.dir.join("users.txt").display(),
                dir = scratch.dir.display(),
            ),
        );
        // PgBouncer refuses to run as root.
        let mut command = as_service_user(&binary);
        command.arg(&ini);
        let mut process = Process::start("pgbouncer", command, &scratch);
        let name = db.name.clone();
        wait_for("PgBouncer to accept connections", Duration::from_secs(30), || {
            process.assert_running();
            match Client::connect(&format!("host=127.0.0.1 port={port} user=postgres dbname={name}"), NoTls) {
                Ok(_) => Ok(Some(())),
                Err(e) => Err(e.to_string()),
            }
        });
        Some(Bouncer { port, db: db.name.clone(), _process: process, _scratch: scratch })
    }

    fn connect(&self) -> Client {
        Client::connect(&format!("host=127.0.0.1 port={} user=postgres dbname={}", self.port, self.db), NoTls)
            .expect("connect through PgBouncer")
    }
}

/// The rows of `sql` (simple protocol) as text, NULL as "NULL".
fn rows(client: &mut Client, sql: &str) -> Vec<Vec<String>> {
    let messages = client.simple_query(sql).unwrap_or_else(|e| panic!("through PgBouncer: {sql}: {e}"));
    messages
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((0..r.len()).map(|i| r.get(i).unwrap_or("NULL").to_string()).collect()),
            _ => None,
        })
        .collect()
}

fn one(client: &mut Client, sql: &str) -> String {
    let r = rows(client, sql);
    assert_eq!(r.len(), 1, "{sql}: expected one row, got {r:?}");
    r[0][0].clone()
}

/// What a server session may carry from one transaction into the next:
/// prepared statements, temporary objects, advisory locks, cursors, LISTEN
/// channels and settings changed with SET. Asked through the pooler, it
/// describes whichever server session serves the asking transaction.
fn session_state(client: &mut Client) -> String {
    one(
        client,
        "SELECT concat_ws(' | ', \
           (SELECT 'prepared: ' || string_agg(name, ',') FROM pg_prepared_statements), \
           (SELECT 'temporary schema in use' WHERE pg_my_temp_schema() <> 0 \
              AND EXISTS (SELECT 1 FROM pg_class WHERE relnamespace = pg_my_temp_schema())), \
           (SELECT 'advisory locks: ' || count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() HAVING count(*) > 0), \
           (SELECT 'cursors: ' || string_agg(name, ',') FROM pg_cursors), \
           (SELECT 'listening: ' || string_agg(c, ',') FROM pg_listening_channels() c), \
           (SELECT 'settings: ' || string_agg(name, ',') FROM pg_settings WHERE source = 'session' \
              AND name NOT IN ('application_name', 'client_encoding', 'DateStyle', 'TimeZone', 'IntervalStyle', \
                               'standard_conforming_strings', 'extra_float_digits')))",
    )
}

/// Each function of the SQL API, called through PgBouncer by clients that
/// share one server connection, with the session state checked after each
/// call, and the stream tables equal to their queries at the end.
#[test]
fn every_function_works_through_transaction_pooling() {
    let mut db = TestDb::new("pgbouncer_api");
    let Some(bouncer) = Bouncer::start("every_function_works_through_transaction_pooling", &db, 1) else { return };
    db.exec(
        "CREATE TABLE orders (id int PRIMARY KEY, cust int NOT NULL, amount numeric NOT NULL);
         CREATE TABLE custs (id int PRIMARY KEY, region text);
         INSERT INTO custs SELECT g, 'r' || (g % 4) FROM generate_series(1, 20) g;
         INSERT INTO orders SELECT g, 1 + g % 20, g * 1.5 FROM generate_series(1, 400) g;",
    );
    let mut a = bouncer.connect();
    let mut b = bouncer.connect();
    // Both clients are served by the same single server session.
    let pid_a = one(&mut a, "SELECT pg_backend_pid()");
    let pid_b = one(&mut b, "SELECT pg_backend_pid()");
    assert_eq!(pid_a, pid_b, "pool of one: one server session for both clients");

    let calls: Vec<(&str, &str)> = vec![
        ("a", "SELECT pgtrickle.create_stream_table('by_cust', 'SELECT cust, sum(amount) AS total, count(*) AS n FROM orders GROUP BY cust', refresh_mode => 'DIFFERENTIAL')"),
        ("b", "SELECT pgtrickle.create_stream_table_if_not_exists('by_cust', 'SELECT 1')"),
        ("a", "SELECT pgtrickle.create_or_replace_stream_table('by_region', 'SELECT c.region, sum(o.amount) AS total FROM orders o JOIN custs c ON c.id = o.cust GROUP BY c.region', schedule => '1s')"),
        ("b", "SELECT pgtrickle.create_stream_table('live', 'SELECT cust, count(*) AS n FROM orders GROUP BY cust', refresh_mode => 'IMMEDIATE')"),
        ("a", "SELECT pgtrickle.create_stream_table('top_region', 'SELECT region, total FROM by_region WHERE total > 100', refresh_mode => 'DIFFERENTIAL')"),
        ("b", "INSERT INTO orders SELECT g, 1 + g % 20, g FROM generate_series(401, 450) g"),
        ("a", "UPDATE orders SET amount = amount + 1 WHERE id % 7 = 0"),
        ("b", "SELECT pgtrickle.refresh_stream_table('by_cust')"),
        ("a", "SELECT pgtrickle.alter_stream_table('by_cust', schedule => '2s')"),
        ("b", "SELECT pgtrickle.alter_stream_table('by_cust', refresh_mode => 'FULL')"),
        ("a", "SELECT pgtrickle.refresh_stream_table('by_cust')"),
        ("b", "SELECT pgtrickle.alter_stream_table('by_cust', refresh_mode => 'DIFFERENTIAL')"),
        ("a", "SELECT pgtrickle.alter_stream_table('by_cust', status => 'SUSPENDED')"),
        ("b", "SELECT pgtrickle.alter_stream_table('by_cust', status => 'ACTIVE')"),
        ("a", "SELECT pgtrickle.alter_stream_table('by_cust', query => 'SELECT cust, sum(amount) AS total, count(*) AS n FROM orders WHERE amount > 2 GROUP BY cust')"),
        ("b", "SELECT pgtrickle.create_or_replace_stream_table('by_region', 'SELECT c.region, sum(o.amount) AS total FROM orders o JOIN custs c ON c.id = o.cust GROUP BY c.region', schedule => '1s')"),
        ("a", "SELECT length(pgtrickle.explain_st('by_cust')) > 0"),
        ("b", "SELECT * FROM pgtrickle.explain_refresh_mode('by_region')"),
        ("a", "SELECT * FROM pgtrickle.scheduler_status()"),
        ("b", "SELECT * FROM pgtrickle.diamond_groups()"),
        ("a", "SELECT * FROM pgtrickle.stream_table_status()"),
        ("b", "SELECT * FROM pgtrickle.refresh_history('by_cust', 5)"),
        ("a", "SELECT * FROM pgtrickle.dependency_tree()"),
        ("b", "SELECT * FROM pgtrickle.change_buffer_stats()"),
        ("a", "SELECT * FROM pgtrickle.quick_health"),
        ("b", "SELECT * FROM pgtrickle.pg_stat_stream_tables"),
        ("a", "SELECT * FROM pgtrickle.metrics_stream_tables"),
        ("b", "SELECT * FROM pgtrickle.metrics_refreshes"),
        ("a", "SELECT * FROM pgtrickle.metrics_scheduler"),
        // A transaction spanning several round trips stays on one server
        // session: IMMEDIATE maintenance, a savepoint rolled back, and SET LOCAL.
        ("b", "BEGIN"),
        ("b", "INSERT INTO orders VALUES (1000, 3, 10)"),
        ("b", "SAVEPOINT s"),
        ("b", "DELETE FROM orders WHERE id < 50"),
        ("b", "ROLLBACK TO SAVEPOINT s"),
        ("b", "SET LOCAL pg_trickle.block_source_ddl = off"),
        ("b", "SELECT pgtrickle.refresh_stream_table('by_cust')"),
        ("b", "COMMIT"),
        ("a", "DELETE FROM orders WHERE id % 11 = 0"),
        ("b", "SELECT pgtrickle.refresh_stream_table('by_region')"),
        ("a", "SELECT pgtrickle.refresh_stream_table('top_region')"),
        ("b", "SELECT pgtrickle.drop_stream_table('top_region')"),
    ];
    let mut in_transaction = false;
    for (who, sql) in calls {
        let client = if who == "a" { &mut a } else { &mut b };
        client.simple_query(sql).unwrap_or_else(|e| panic!("through PgBouncer ({who}): {sql}: {e}"));
        match sql {
            "BEGIN" => in_transaction = true,
            "COMMIT" => in_transaction = false,
            _ => {}
        }
        // Between transactions (inside one, the session is the transaction's,
        // and the other client would wait for it), the other client is served
        // by the same session: nothing may linger in it.
        if !in_transaction {
            let other = if who == "a" { &mut b } else { &mut a };
            let state = session_state(other);
            assert_eq!(state, "", "after `{sql}`, the server session carries state into the next transaction");
        }
    }
    // The server saw only one session for both clients throughout.
    assert_eq!(one(&mut a, "SELECT pg_backend_pid()"), pid_a);
    one(&mut b, "SELECT pgtrickle.refresh_stream_table('by_cust')");
    assert_st_matches_query(&mut db.client, "by_cust", "SELECT cust, sum(amount) AS total, count(*) AS n FROM orders WHERE amount > 2 GROUP BY cust");
    assert_st_matches_query(&mut db.client, "by_region", "SELECT c.region, sum(o.amount) AS total FROM orders o JOIN custs c ON c.id = o.cust GROUP BY c.region");
    assert_st_matches_query(&mut db.client, "live", "SELECT cust, count(*) AS n FROM orders GROUP BY cust");
    assert_eq!(db.scalar::<i64>("SELECT count(*) FROM pgtrickle.pgt_stream_tables", &[]), 3);
}

/// Many clients through a small pool writing, refreshing and altering at
/// once, as an application behind PgBouncer does: every call succeeds and
/// the stream tables (DIFFERENTIAL and IMMEDIATE) equal their queries.
#[test]
fn concurrent_clients_through_a_small_pool() {
    let mut db = TestDb::new("pgbouncer_load");
    let Some(bouncer) = Bouncer::start("concurrent_clients_through_a_small_pool", &db, 2) else { return };
    db.exec(
        "CREATE TABLE events (id bigint PRIMARY KEY, kind text NOT NULL, v numeric NOT NULL);
         INSERT INTO events SELECT g, 'k' || (g % 9), g FROM generate_series(1, 2000) g;
         SELECT pgtrickle.create_stream_table('kinds', 'SELECT kind, sum(v) AS s, count(*) AS n FROM events GROUP BY kind',
                                              refresh_mode => 'DIFFERENTIAL');
         SELECT pgtrickle.create_stream_table('kinds_now', 'SELECT kind, count(*) AS n FROM events GROUP BY kind',
                                              refresh_mode => 'IMMEDIATE');",
    );
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let mut client = bouncer.connect();
            std::thread::spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(0xb0c0 + t);
                for i in 0..40u64 {
                    let id = 10_000 + t * 1000 + i;
                    let sql = match rng.random_range(0..6) {
                        0 => format!("INSERT INTO events VALUES ({id}, 'k{}', {})", rng.random_range(0..12), rng.random_range(0..100)),
                        1 => format!("UPDATE events SET v = v + 1, kind = 'k{}' WHERE id % 97 = {}", rng.random_range(0..12), rng.random_range(0..97)),
                        2 => format!("DELETE FROM events WHERE id % 211 = {}", rng.random_range(0..211)),
                        3 => "SELECT pgtrickle.refresh_stream_table('kinds')".to_string(),
                        4 => format!("BEGIN; INSERT INTO events VALUES ({id}, 'x', 1); SELECT pgtrickle.refresh_stream_table('kinds'); COMMIT"),
                        _ => "SELECT count(*) FROM pgtrickle.metrics_stream_tables".to_string(),
                    };
                    client.batch_execute(&sql).unwrap_or_else(|e| panic!("client {t}: {sql}: {e}"));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a client failed");
    }
    db.exec("SELECT pgtrickle.refresh_stream_table('kinds')");
    assert_st_matches_query(&mut db.client, "kinds", "SELECT kind, sum(v) AS s, count(*) AS n FROM events GROUP BY kind");
    assert_st_matches_query(&mut db.client, "kinds_now", "SELECT kind, count(*) AS n FROM events GROUP BY kind");
}
