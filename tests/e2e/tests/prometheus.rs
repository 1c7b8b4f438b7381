//! The Prometheus integration against the real tools (Debian's
//! `prometheus-postgres-exporter`, `prometheus` and `promtool`;
//! docs/INTEGRATIONS.md): the exporter serves pg_trickle's metrics from
//! integrations/prometheus/pg_trickle_queries.yml, Prometheus scrapes them and
//! evaluates integrations/prometheus/pg_trickle_alerts.yml, an alert really
//! fires for a stream table made stale on purpose (and not for a fresh one),
//! and every PromQL expression of the Grafana dashboard returns series.

use pg_trickle_e2e::tools::{free_port, http_get, prometheus_query, repo_root, require_tool, run_ok, wait_for, Process, Scratch};
use pg_trickle_e2e::{assert_st_matches_query, TestDb};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

fn promtool(test: &str) -> Option<PathBuf> {
    require_tool(test, "promtool (Debian package prometheus)", &[PathBuf::from("/usr/bin/promtool")])
}

/// The alert rules are valid (`promtool check rules`) and their unit tests
/// pass (`promtool test rules`): each alert fires when it should and not
/// otherwise, `for` durations included.
#[test]
fn alert_rules_pass_promtool() {
    let Some(promtool) = promtool("alert_rules_pass_promtool") else { return };
    let dir = repo_root().join("integrations/prometheus");
    let out = run_ok("promtool check rules", Command::new(&promtool).arg("check").arg("rules").arg(dir.join("pg_trickle_alerts.yml")));
    assert!(out.contains("SUCCESS"), "{out}");
    let out = run_ok(
        "promtool test rules",
        Command::new(&promtool).current_dir(&dir).arg("test").arg("rules").arg("pg_trickle_alerts_test.yml"),
    );
    assert!(out.contains("SUCCESS"), "{out}");
}

/// The Grafana dashboard matches Grafana's own dashboard schema (the
/// TypeScript types of `@grafana/schema`, pinned in
/// integrations/grafana/validate): every key exists, every value has its type,
/// every enum value is allowed.
#[test]
fn grafana_dashboard_matches_the_schema() {
    let test = "grafana_dashboard_matches_the_schema";
    let candidates = |name: &str| -> Vec<PathBuf> {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).map(|d| d.join(name)).collect())
            .unwrap_or_default()
    };
    if require_tool(test, "Node.js", &candidates("node")).is_none() || require_tool(test, "npm", &candidates("npm")).is_none() {
        return;
    }
    let validate = repo_root().join("integrations/grafana/validate/validate.sh");
    let out = run_ok("validate.sh", Command::new("bash").arg(&validate));
    assert!(out.contains("1 dashboard(s) match"), "{out}");
}

/// Every `expr` of the dashboard (panels nested in rows included), and the
/// queries of its template variables.
fn dashboard_expressions(dashboard: &serde_json::Value) -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, child) in map {
                    if k == "expr" {
                        if let Some(e) = child.as_str() {
                            if !e.trim().is_empty() {
                                out.push(e.to_string());
                            }
                        }
                    } else {
                        walk(child, out);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// The dashboard's variables as Grafana would fill them for "All": every
/// database and stream table, a rate window that covers several scrapes.
fn substitute_variables(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("${__rate_interval}", "1m")
        .replace("$__interval", "5s")
        .replace("$__range", "5m")
        .replace("${datname}", ".+")
        .replace("$datname", ".+")
        .replace("${stream_table}", ".+")
        .replace("$stream_table", ".+")
}

#[test]
fn exporter_prometheus_alerts_and_dashboard() {
    let test = "exporter_prometheus_alerts_and_dashboard";
    let Some(exporter) = require_tool(test, "postgres_exporter (Debian package prometheus-postgres-exporter)", &[PathBuf::from("/usr/bin/prometheus-postgres-exporter")])
    else {
        return;
    };
    let Some(prometheus) = require_tool(test, "Prometheus (Debian package prometheus)", &[PathBuf::from("/usr/bin/prometheus")]) else { return };
    let integrations = repo_root().join("integrations");
    let mut db = TestDb::new("prometheus");
    db.exec(
        "CREATE TABLE orders (id int PRIMARY KEY, cust int NOT NULL, amount numeric NOT NULL);
         INSERT INTO orders SELECT g, g % 10, g FROM generate_series(1, 1000) g;
         SELECT pgtrickle.create_stream_table('fresh', 'SELECT cust, sum(amount) AS total FROM orders GROUP BY cust',
                                              schedule => '1s', refresh_mode => 'DIFFERENTIAL');
         SELECT pgtrickle.create_stream_table('stale', 'SELECT cust, count(*) AS n FROM orders GROUP BY cust',
                                              schedule => '1s', refresh_mode => 'DIFFERENTIAL');
         SELECT pgtrickle.create_stream_table('snapshot', 'SELECT max(amount) AS m FROM orders', schedule => '2s', refresh_mode => 'FULL');
         SELECT pgtrickle.create_stream_table('live', 'SELECT cust, min(amount) AS m FROM orders GROUP BY cust', refresh_mode => 'IMMEDIATE');",
    );
    // The exporter connects as a monitoring role, as in production.
    let monitor = db.create_role("exporter", "NOSUPERUSER");
    db.exec(&format!("GRANT pg_monitor TO \"{monitor}\""));
    let scratch = Scratch::new("prometheus");
    let exporter_port = free_port();
    let mut command = Command::new(&exporter);
    command
        .env("DATA_SOURCE_NAME", format!("postgresql://{monitor}@127.0.0.1:{}/{}?sslmode=disable", db.cluster.port, db.name))
        .arg(format!("--web.listen-address=127.0.0.1:{exporter_port}"))
        .arg(format!("--extend.query-path={}", integrations.join("prometheus/pg_trickle_queries.yml").display()));
    let mut exporter_process = Process::start("postgres_exporter", command, &scratch);
    // The exporter serves every metric family, labelled per stream table.
    let metrics = wait_for("the exporter to serve pg_trickle metrics", Duration::from_secs(60), || {
        exporter_process.assert_running();
        let body = http_get(&format!("http://127.0.0.1:{exporter_port}/metrics"))?;
        Ok(body.contains("pgtrickle_scheduler_up{").then_some(body))
    });
    for needle in [
        "pgtrickle_stream_table_staleness_seconds{",
        "pgtrickle_stream_table_schedule_seconds{",
        "pgtrickle_stream_table_last_refresh_duration_seconds{",
        "pgtrickle_stream_table_change_buffer_pending_rows{",
        "pgtrickle_stream_table_change_buffer_bytes{",
        "pgtrickle_stream_table_suspended{",
        "pgtrickle_refreshes_total{",
        "pgtrickle_refreshes_rows_inserted_total{",
        "pgtrickle_refreshes_duration_seconds_total{",
        "pgtrickle_scheduler_stream_tables{",
        "pgtrickle_scheduler_checks_total{",
        "pgtrickle_scheduler_last_cycle_timestamp_seconds{",
        "stream_table=\"public.fresh\"",
        "stream_table=\"public.live\"",
    ] {
        assert!(metrics.contains(needle), "the exporter does not serve {needle}:\n{metrics}");
    }
    let scrape_errors: Vec<&str> = metrics.lines().filter(|l| l.starts_with("pg_exporter_last_scrape_error ")).collect();
    assert_eq!(scrape_errors, vec!["pg_exporter_last_scrape_error 0"], "the exporter reports a scrape error:\n{}", exporter_process.log());

    let prometheus_port = free_port();
    let config = scratch.write(
        "prometheus.yml",
        &format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: postgres\n    static_configs:\n      - targets: ['127.0.0.1:{exporter_port}']\n",
            integrations.join("prometheus/pg_trickle_alerts.yml").display()
        ),
    );
    let mut command = Command::new(&prometheus);
    command
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", scratch.dir.join("tsdb").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{prometheus_port}"));
    let mut prometheus_process = Process::start("prometheus", command, &scratch);
    let base = format!("http://127.0.0.1:{prometheus_port}");
    wait_for("Prometheus to scrape the stream tables", Duration::from_secs(60), || {
        prometheus_process.assert_running();
        Ok((prometheus_query(&base, "pgtrickle_stream_table_staleness_seconds")?.len() == 4).then_some(()))
    });

    // Stale on purpose: changes pending, refreshes stopped.
    db.exec("UPDATE orders SET amount = amount + 1 WHERE id % 3 = 0; SELECT pgtrickle.alter_stream_table('stale', status => 'SUSPENDED')");
    let firing = |base: &str, alert: &str, st: &str| -> Result<bool, String> {
        let body = http_get(&format!("{base}/api/v1/alerts"))?;
        let json: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        Ok(json["data"]["alerts"].as_array().into_iter().flatten().any(|a| {
            a["labels"]["alertname"] == alert && a["labels"]["stream_table"] == st && a["state"] == "firing"
        }))
    };
    wait_for("PgTrickleStreamTableSuspended to fire", Duration::from_secs(60), || {
        Ok(firing(&base, "PgTrickleStreamTableSuspended", "public.stale")?.then_some(()))
    });
    // Writes keep coming; the fresh stream table keeps up, the stale one not.
    let writer_db = db.name.clone();
    let cluster = db.cluster.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_writer = stop.clone();
    let writer = std::thread::spawn(move || {
        let mut c = cluster.connect(&writer_db).expect("writer connection");
        let mut i = 0;
        while !stop_writer.load(std::sync::atomic::Ordering::Relaxed) {
            i += 1;
            c.batch_execute(&format!("UPDATE orders SET amount = amount + 1 WHERE id = {}", 1 + i % 1000)).expect("write");
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    wait_for("PgTrickleStreamTableStale to fire for public.stale", Duration::from_secs(150), || {
        prometheus_process.assert_running();
        Ok(firing(&base, "PgTrickleStreamTableStale", "public.stale")?.then_some(()))
    });
    for st in ["public.fresh", "public.snapshot", "public.live"] {
        assert!(!firing(&base, "PgTrickleStreamTableStale", st).unwrap(), "{st} is fresh, yet the stale alert fires");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().expect("writer");

    // Every expression of the Grafana dashboard returns series.
    let dashboard_path = integrations.join("grafana/pg_trickle_dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&dashboard_path).expect("read the dashboard")).expect("the dashboard is JSON");
    let expressions = dashboard_expressions(&dashboard);
    assert!(expressions.len() >= 10, "the dashboard has {} expressions", expressions.len());
    let mut empty = Vec::new();
    for expr in &expressions {
        let query = substitute_variables(expr);
        match prometheus_query(&base, &query) {
            Ok(series) if !series.is_empty() => {}
            Ok(_) => empty.push(format!("no series: {expr}")),
            Err(e) => empty.push(format!("error: {expr}: {e}")),
        }
    }
    assert!(empty.is_empty(), "dashboard expressions that return nothing:\n{}", empty.join("\n"));

    db.exec("SELECT pgtrickle.alter_stream_table('stale', status => 'ACTIVE'); SELECT pgtrickle.refresh_stream_table('stale'); SELECT pgtrickle.refresh_stream_table('fresh')");
    assert_st_matches_query(&mut db.client, "stale", "SELECT cust, count(*) AS n FROM orders GROUP BY cust");
    assert_st_matches_query(&mut db.client, "fresh", "SELECT cust, sum(amount) AS total FROM orders GROUP BY cust");
    assert_st_matches_query(&mut db.client, "live", "SELECT cust, min(amount) AS m FROM orders GROUP BY cust");
}
