//! Running the real tools of the integration tests (tests/integrations.rs):
//! finding them, starting them on free loopback ports, stopping them, and
//! reading their HTTP APIs.
//!
//! `make integrations` (scripts/setup-integrations.sh) installs them. A test
//! whose tool is missing is skipped with the reason on stderr, unless
//! `PGT_REQUIRE_INTEGRATIONS=1` (set by scripts/test.sh when running as root, as
//! CI does), where it fails.

use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The repository's root (integration files live under `integrations/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repository root")
}

/// The first of `candidates` (absolute paths) that exists and is executable.
/// When none does: `None` after printing that `test` is skipped and why, or a
/// panic when `PGT_REQUIRE_INTEGRATIONS=1`.
pub fn require_tool(test: &str, what: &str, candidates: &[PathBuf]) -> Option<PathBuf> {
    if let Some(found) = candidates.iter().find(|p| fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)) {
        return Some(found.clone());
    }
    let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
    let reason = format!("{what} is not installed (looked for {}); `make integrations` installs it", looked.join(", "));
    if std::env::var("PGT_REQUIRE_INTEGRATIONS").is_ok_and(|v| v == "1") {
        panic!("{test}: {reason} (PGT_REQUIRE_INTEGRATIONS=1: missing tools fail the test)");
    }
    eprintln!("SKIPPED {test}: {reason}");
    None
}

/// A free TCP port on 127.0.0.1 (free when asked; the tool binds it next).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

/// A fresh scratch folder under `$PGT_HOME` for one test's tool files,
/// readable and writable by the service user (tools that refuse root run as
/// it). Removed on drop unless the test panicked.
pub struct Scratch {
    /// The folder.
    pub dir: PathBuf,
}

impl Scratch {
    /// Creates `$PGT_HOME/it-<name>-<pid>`.
    pub fn new(name: &str) -> Scratch {
        let paths = pgt_testkit::Paths::from_env().unwrap_or_else(|e| panic!("{e}"));
        let dir = paths.home.join(format!("it-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create scratch folder");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).expect("chmod scratch folder");
        Scratch { dir }
    }

    /// Writes `contents` to file `name` in the folder (world-readable) and
    /// returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.join(name);
        fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("scratch folder kept for inspection: {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// A tool process started by a test, its output going to a log file; killed on
/// drop, when the log's last lines are printed if the test panicked.
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Starts `command` with its stdout and stderr in `<scratch>/<name>.log`.
    pub fn start(name: &str, mut command: Command, scratch: &Scratch) -> Process {
        let log = scratch.dir.join(format!("{name}.log"));
        let out = fs::File::create(&log).expect("create tool log");
        let err = out.try_clone().expect("clone log handle");
        // A process group of its own: a tool started through runuser (or one
        // that forks) is stopped with everything it started.
        let child = command
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("start {name} ({command:?}): {e}"));
        Process { name: name.to_string(), child, log }
    }

    /// The log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics (with the log) if the process has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited ({status}):\n{}", self.name, self.log());
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // The whole group (runuser leaves the tool it started running when
        // it is killed alone), then the child itself.
        let _ = Command::new("kill").arg("-KILL").arg("--").arg(format!("-{}", self.child.id())).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- last lines of {} ---\n{}", self.name, tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
    }
}

/// A command running `program` as the service user when we are root (for
/// tools that refuse to run as root, as PgBouncer does).
pub fn as_service_user(program: &Path) -> Command {
    let paths = pgt_testkit::Paths::from_env().unwrap_or_else(|e| panic!("{e}"));
    match paths.service_user {
        Some(user) => {
            let mut c = Command::new("runuser");
            c.arg("-u").arg(user).arg("--").arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// Runs `command` to completion; panics with its output unless it succeeds.
/// Returns its stdout.
pub fn run_ok(what: &str, command: &mut Command) -> String {
    let out = command.output().unwrap_or_else(|e| panic!("{what}: cannot run {command:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        panic!("{what} failed ({}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    stdout
}

/// GET `url`: the body of a 2xx answer, else the error as text.
pub fn http_get(url: &str) -> Result<String, String> {
    let mut response = ureq::get(url).call().map_err(|e| format!("GET {url}: {e}"))?;
    let mut body = String::new();
    response
        .body_mut()
        .as_reader()
        .read_to_string(&mut body)
        .map_err(|e| format!("GET {url}: reading the body: {e}"))?;
    Ok(body)
}

/// Runs PromQL `expr` as an instant query against the Prometheus HTTP API at
/// `base` (`http://127.0.0.1:port`): the `data.result` series, or the error.
pub fn prometheus_query(base: &str, expr: &str) -> Result<Vec<serde_json::Value>, String> {
    let url = format!("{base}/api/v1/query");
    let mut response = ureq::get(&url).query("query", expr).call().map_err(|e| format!("query {expr}: {e}"))?;
    let mut body = String::new();
    response.body_mut().as_reader().read_to_string(&mut body).map_err(|e| format!("query {expr}: {e}"))?;
    let json: serde_json::Value = serde_json::from_str(&body).map_err(|e| format!("query {expr}: {e}: {body}"))?;
    if json["status"] != "success" {
        return Err(format!("query {expr}: {body}"));
    }
    Ok(json["data"]["result"].as_array().cloned().unwrap_or_default())
}

/// Calls `probe` every 200 ms until it returns `Some`, for at most `timeout`;
/// panics with `what` and the last probe's error otherwise.
pub fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Result<Option<T>, String>) -> T {
    let start = Instant::now();
    let mut last = String::from("no answer yet");
    loop {
        match probe() {
            Ok(Some(v)) => return v,
            Ok(None) => {}
            Err(e) => last = e,
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}; last: {last}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
