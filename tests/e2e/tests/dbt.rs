//! The dbt package (integrations/dbt-pgtrickle) against real dbt-core and
//! dbt-postgres from PyPI (the virtual environment `make integrations` makes
//! under `$PGT_HOME/venv`): its integration project's driver
//! (integration_tests/run.sh) runs dbt seed / run / test, a rerun that must
//! leave every stream table alone, changed SQL and config, `--full-refresh`, a
//! stream table over a stream table (a DAG built from `ref()`), scheduled and
//! manual refreshes, and checks each outcome in the database, ending with every
//! stream table equal to its query.

use pg_trickle_e2e::tools::{repo_root, require_tool};
use pg_trickle_e2e::TestDb;
use std::process::Command;

#[test]
fn dbt_stream_table_materialization() {
    let test = "dbt_stream_table_materialization";
    let paths = pgt_testkit::Paths::from_env().unwrap_or_else(|e| panic!("{e}"));
    let Some(dbt) = require_tool(test, "dbt (the virtual environment $PGT_HOME/venv)", &[paths.home.join("venv/bin/dbt")]) else { return };
    let db = TestDb::new("dbt");
    let driver = repo_root().join("integrations/dbt-pgtrickle/integration_tests/run.sh");
    let out = Command::new("bash")
        .arg(&driver)
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", db.cluster.port.to_string())
        .env("PGUSER", "postgres")
        .env("PGDATABASE", &db.name)
        .env("DBT", &dbt)
        .env("PSQL", paths.bin_dir.join("psql"))
        .env("DBT_THREADS", "2")
        .output()
        .expect("run the dbt integration driver");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "run.sh failed ({}):\n{stdout}\n--- stderr ---\n{stderr}", out.status);
    let summary = stdout.lines().rev().find(|l| l.contains("passed")).unwrap_or("");
    assert!(summary.contains(" 0 failed") && !summary.starts_with("0 passed"), "unexpected summary: {summary}\n{stdout}");
    eprintln!("dbt integration: {summary}");
}
