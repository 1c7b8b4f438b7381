use crate::cluster::Cluster;
use postgres::types::{FromSqlOwned, ToSql};
use postgres::Client;
use std::sync::OnceLock;

/// NOTICE/WARNING messages a connection received: `(severity, message)` pairs.
pub type Notices = std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>;

/// A fresh database on the shared test cluster with `CREATE EXTENSION pg_trickle`
/// done, and a superuser connection to it.
///
/// Dropped (with `DROP DATABASE ... WITH (FORCE)`) when the test passes. When the
/// test panics, the server log lines of this database (and any server crash lines)
/// are printed instead, and the database is kept for inspection.
pub struct TestDb {
    /// The cluster it lives on.
    pub cluster: Cluster,
    /// Database name (`t_<hint>_<random>`).
    pub name: String,
    /// Superuser connection.
    pub client: Client,
    log_offset: u64,
    roles: Vec<String>,
}

fn shared_cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(Cluster::shared_for_tests)
}

impl TestDb {
    /// Creates the database; `hint` (the test's name) makes it recognisable.
    pub fn new(hint: &str) -> TestDb {
        let cluster = shared_cluster().clone();
        let clean: String = hint.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(40).collect();
        let name = format!("t_{}_{:08x}", clean.to_lowercase(), rand::random::<u32>());
        let log_offset = std::fs::metadata(cluster.log_path()).map(|m| m.len()).unwrap_or(0);
        let mut admin = cluster.connect("postgres").expect("connect to the test cluster");
        admin.batch_execute(&format!("CREATE DATABASE \"{name}\"")).expect("create test database");
        let mut client = cluster.connect(&name).expect("connect to the test database");
        client.batch_execute("CREATE EXTENSION pg_trickle").expect("CREATE EXTENSION pg_trickle");
        TestDb { cluster, name, client, log_offset, roles: Vec::new() }
    }

    /// Creates a LOGIN role unique to this database (roles are cluster-wide, tests
    /// run in parallel) with `attributes` (e.g. `NOSUPERUSER`), and returns its name.
    /// Dropped with the database.
    pub fn create_role(&mut self, suffix: &str, attributes: &str) -> String {
        self.create_role_named(&format!("{}_{}", self.name, suffix), attributes)
    }

    /// Creates LOGIN role `role` (the caller makes the name unique) and drops it
    /// with the database.
    pub fn create_role_named(&mut self, role: &str, attributes: &str) -> String {
        self.exec(&format!("CREATE ROLE \"{role}\" LOGIN {attributes}"));
        self.roles.push(role.to_string());
        role.to_string()
    }

    /// Another superuser connection to this database.
    pub fn connect(&self) -> Client {
        self.cluster.connect(&self.name).expect("connect to the test database")
    }

    /// Another superuser connection whose NOTICE/WARNING messages are collected,
    /// as `(severity, message)` pairs in arrival order, into the returned list.
    pub fn connect_collecting_notices(&self) -> (Client, Notices) {
        let notices = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = notices.clone();
        let mut config: postgres::Config = self.cluster.conninfo(&self.name).parse().expect("parse conninfo");
        config.notice_callback(move |n| {
            if let Ok(mut list) = sink.lock() {
                list.push((n.severity().to_string(), n.message().to_string()));
            }
        });
        let client = config.connect(postgres::NoTls).expect("connect to the test database");
        (client, notices)
    }

    /// A connection to this database as `role` whose NOTICE/WARNING messages are
    /// collected (see [`TestDb::connect_collecting_notices`]).
    pub fn connect_as_collecting_notices(&self, role: &str) -> (Client, Notices) {
        let notices = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = notices.clone();
        let mut config: postgres::Config = self.cluster.conninfo(&self.name).parse().expect("parse conninfo");
        config.user(role);
        config.notice_callback(move |n| {
            if let Ok(mut list) = sink.lock() {
                list.push((n.severity().to_string(), n.message().to_string()));
            }
        });
        let client = config.connect(postgres::NoTls).expect("connect to the test database");
        (client, notices)
    }

    /// A connection to this database as `role` (which must have LOGIN).
    pub fn connect_as(&self, role: &str) -> Client {
        self.cluster.connect_as(&self.name, role).unwrap_or_else(|e| panic!("connect as {role}: {e}"))
    }

    /// Runs `sql` (one or more statements); panics with the SQL and the error.
    pub fn exec(&mut self, sql: &str) {
        if let Err(e) = self.client.batch_execute(sql) {
            panic!("SQL failed: {}\n--- SQL ---\n{sql}", describe(&e));
        }
    }

    /// Runs a one-value query with parameters.
    pub fn scalar<T: FromSqlOwned>(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> T {
        match self.client.query_one(sql, params) {
            Ok(row) => row.get(0),
            Err(e) => panic!("query failed: {}\n--- SQL ---\n{sql}", describe(&e)),
        }
    }

    /// Runs a one-column query with parameters; returns its values in row order.
    pub fn column<T: FromSqlOwned>(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Vec<T> {
        match self.client.query(sql, params) {
            Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
            Err(e) => panic!("query failed: {}\n--- SQL ---\n{sql}", describe(&e)),
        }
    }

    /// Runs `sql`, which must fail with SQLSTATE `code`; returns the error text
    /// (message, detail, hint) for further assertions.
    pub fn expect_error(&mut self, sql: &str, code: &str) -> String {
        expect_error(&mut self.client, sql, code)
    }
}

/// Runs `sql` on `client`; it must fail with SQLSTATE `code`. Returns
/// "message\nDETAIL: ...\nHINT: ..." for further assertions.
pub fn expect_error(client: &mut Client, sql: &str, code: &str) -> String {
    match client.batch_execute(sql) {
        Ok(()) => panic!("expected SQLSTATE {code}, but this succeeded:\n{sql}"),
        Err(e) => {
            let got = sqlstate(&e);
            assert_eq!(got.as_deref(), Some(code), "wrong error for:\n{sql}\n{}", describe(&e));
            let text = describe(&e);
            assert!(
                !text.contains("pgrx") && !text.contains("rust_begin_unwind") && !text.contains("panicking"),
                "a Rust backtrace leaked into the error for:\n{sql}\n{text}"
            );
            text
        }
    }
}

/// The SQLSTATE of a server error, if it is one.
pub fn sqlstate(e: &postgres::Error) -> Option<String> {
    e.as_db_error().map(|d| d.code().code().to_string())
}

fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => {
            let mut s = format!("{} [{}]", d.message(), d.code().code());
            if let Some(detail) = d.detail() {
                s.push_str(&format!("\nDETAIL: {detail}"));
            }
            if let Some(hint) = d.hint() {
                s.push_str(&format!("\nHINT: {hint}"));
            }
            s
        }
        None => e.to_string(),
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read(self.cluster.log_path()).unwrap_or_default();
            let tail = String::from_utf8_lossy(&log[(self.log_offset as usize).min(log.len())..]).into_owned();
            let mine: Vec<&str> = tail
                .lines()
                .filter(|l| l.contains(&format!(" {} ", self.name)) || l.contains("terminated by signal") || l.contains("PANIC"))
                .collect();
            eprintln!(
                "--- server log for database {} ({}), {} lines ---\n{}\n--- end of server log ---",
                self.name,
                self.cluster.log_path().display(),
                mine.len(),
                mine.join("\n")
            );
            return;
        }
        if let Ok(mut admin) = self.cluster.connect("postgres") {
            let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name));
            for role in &self.roles {
                let _ = admin.batch_execute(&format!("DROP ROLE IF EXISTS \"{role}\""));
            }
        }
    }
}
