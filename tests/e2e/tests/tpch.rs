//! TPC-H as the external gate (issue 11): the 22 queries of the TPC-H
//! specification (`crates/pgt_testkit/tpch/`), each a stream table in
//! DIFFERENTIAL, FULL, AUTO and IMMEDIATE mode over data from `tpchgen` at scale factor
//! 0.01 (`PGT_TPCH_SCALE` overrides), under mutation cycles modelled on the
//! specification's refresh functions (RF1 inserts orders with lineitems, RF2
//! deletes them) plus updates that move rows between groups, join partners,
//! filters and top-k boundaries. After every cycle each stream table equals
//! its query (for `ORDER BY ... LIMIT`, up to which rows tied at the boundary
//! it holds) and DIFFERENTIAL equals FULL. Replay a failure with the printed
//! seed: `PGT_SEED=...`.

use pg_trickle_e2e::TestDb;
use pgt_testkit::tpch::{self, CycleSize};

/// The refresh modes each query is created in, as name suffixes.
const MODES: [(&str, &str); 4] = [("diff", "DIFFERENTIAL"), ("full", "FULL"), ("auto", "AUTO"), ("imm", "IMMEDIATE")];

fn scale() -> f64 {
    std::env::var("PGT_TPCH_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(0.01)
}

/// A database with TPC-H loaded and each query as a stream table in each of
/// `modes`, named `<query>_<suffix>`.
fn tpch_db(test: &str, modes: &[(&str, &str)]) -> TestDb {
    let mut db = TestDb::new(test);
    tpch::load(&mut db.client, scale(), false).expect("load TPC-H");
    // Every cycle is applied differentially, even the 1 % ones on the smallest
    // tables (the adaptive fallback to FULL has its own tests).
    db.exec("SET pg_trickle.differential_max_change_ratio = 1000; SET pg_trickle.max_delta_cost_ratio = 0; SET client_min_messages = error");
    for (name, sql) in tpch::QUERIES {
        let query = tpch::query_text(sql);
        for (suffix, mode) in modes {
            let st = format!("{name}_{suffix}");
            db.client
                .execute("SELECT pgtrickle.create_stream_table($1, $2, refresh_mode => $3)", &[&st, &query, mode])
                .unwrap_or_else(|e| panic!("{st}: create in {mode} mode failed: {e:?}"));
        }
    }
    db
}

/// Refreshes every stream table, then checks each against its query and each
/// DIFFERENTIAL one against its FULL twin.
fn refresh_and_check(db: &mut TestDb, modes: &[(&str, &str)], seed: u64, when: &str) {
    for (name, sql) in tpch::QUERIES {
        let query = tpch::query_text(sql);
        for (suffix, _) in modes {
            let st = format!("{name}_{suffix}");
            if *suffix != "imm" {
                // (IMMEDIATE ones are current without a refresh, which would
                // recompute them.)
                db.client
                    .execute("SELECT pgtrickle.refresh_stream_table($1)", &[&st])
                    .unwrap_or_else(|e| panic!("seed {seed}, {when}: refreshing {st} failed: {e:?}"));
            }
            let (only_st, only_query) = pgt_testkit::st_difference(&mut db.client, &st, &query);
            assert!(
                only_st.is_empty() && only_query.is_empty(),
                "seed {seed}, {when}: {st} differs from its query\n  only in the stream table: {only_st:?}\n  only in the query: {only_query:?}"
            );
        }
        if modes.iter().any(|m| m.0 == "full") && pgt_testkit::topk_parts(&query).is_none() {
            let columns = pgt_testkit::visible_columns(&mut db.client, &format!("{name}_full")).join(", ");
            let (a, b) = pgt_testkit::multiset_difference(&mut db.client, &format!("{name}_diff"), &format!("SELECT {columns} FROM {name}_full"));
            assert!(a.is_empty() && b.is_empty(), "seed {seed}, {when}: {name}_diff differs from {name}_full: {a:?} / {b:?}");
        }
    }
}

/// Asserts that every DIFFERENTIAL stream table refreshed differentially
/// (never fell back to FULL) and that AUTO chose DIFFERENTIAL for every query
/// (an AUTO stream table may still recompute a refresh by its measurements).
fn assert_all_differential(db: &mut TestDb, seed: u64) {
    let fallbacks: Vec<String> = db.column(
        "SELECT s.pgt_relid::regclass::text || ': ' || h.action || ' ' || h.status || coalesce(' (' || h.error_message || ')', '') \
         FROM pgtrickle.pgt_refresh_history h JOIN pgtrickle.pgt_stream_tables s USING (pgt_id) \
         WHERE s.refresh_mode = 'DIFFERENTIAL' AND h.initiated_by <> 'INITIAL' \
           AND (h.action NOT IN ('DIFFERENTIAL', 'SKIP') OR h.status = 'FAILED') \
         ORDER BY 1",
        &[],
    );
    assert!(fallbacks.is_empty(), "seed {seed}: refreshes that were not differential:\n  {}", fallbacks.join("\n  "));
    let auto_full: Vec<String> = db.column(
        "SELECT pgt_relid::regclass::text FROM pgtrickle.pgt_stream_tables \
         WHERE refresh_mode = 'AUTO' AND effective_refresh_mode <> 'DIFFERENTIAL' ORDER BY 1",
        &[],
    );
    assert!(auto_full.is_empty(), "AUTO did not choose DIFFERENTIAL for {auto_full:?}");
}

/// Cycles of 0.1 % and 1 % of every table, single-row cycles and a rolled-back
/// cycle, each followed by refreshing the 66 scheduled stream tables and
/// checking them and the 22 IMMEDIATE ones.
#[test]
fn tpch_22_queries_in_every_mode_match_their_queries_after_each_cycle() {
    let (seed, mut rng) = pg_trickle_e2e::seeded("tpch_cycles");
    let mut db = tpch_db("tpch_cycles", &MODES);
    refresh_and_check(&mut db, &MODES, seed, "after create");
    let plan: [(&str, f64, bool); 8] = [
        ("0.1 % cycle", 0.001, false),
        ("1 % cycle", 0.01, false),
        ("single-row cycle", 0.0, false),
        ("rolled-back 1 % cycle", 0.01, true),
        ("0.1 % cycle", 0.001, false),
        ("single-row cycle", 0.0, false),
        ("1 % cycle", 0.01, false),
        ("0.1 % cycle", 0.001, false),
    ];
    for (i, (what, fraction, rollback)) in plan.iter().enumerate() {
        tpch::run_cycle(&mut db.client, &mut rng, CycleSize::all(*fraction), *rollback).expect("mutation cycle");
        refresh_and_check(&mut db, &MODES, seed, &format!("cycle {} ({what})", i + 1));
    }
    assert_all_differential(&mut db, seed);
}

/// A sustained run: 50 cycles of 0.1 %, every DIFFERENTIAL stream table
/// refreshed and checked against its query after each — no drift.
#[test]
fn tpch_sustained_50_cycles_without_drift() {
    let (seed, mut rng) = pg_trickle_e2e::seeded("tpch_sustained");
    let modes = [("diff", "DIFFERENTIAL")];
    let mut db = tpch_db("tpch_sustained", &modes);
    for cycle in 1..=50 {
        tpch::run_cycle(&mut db.client, &mut rng, CycleSize::all(0.001), false).expect("mutation cycle");
        refresh_and_check(&mut db, &modes, seed, &format!("cycle {cycle}"));
    }
    assert_all_differential(&mut db, seed);
}

/// The report kept in docs/TPCH.md: for each query the mode AUTO chose, the
/// operator tree (`explain_st`, with the names of state tables and change
/// buffers, which depend on OIDs, left out) and, for FULL, the construct
/// that forced it. Fails when docs/TPCH.md differs from what this build
/// reports; `PGT_WRITE_TPCH_REPORT=1` rewrites it.
#[test]
fn tpch_report_matches_docs() {
    let mut db = TestDb::new("tpch_report");
    tpch::load(&mut db.client, 0.01, false).expect("load TPC-H");
    db.exec("SET client_min_messages = error");
    let mut summary = String::new();
    let mut trees = String::new();
    for (name, sql) in tpch::QUERIES {
        let query = tpch::query_text(sql);
        db.client.execute("SELECT pgtrickle.create_stream_table($1, $2)", &[&name, &query]).expect("create");
        let row = db.client.query_one("SELECT effective_mode, reason FROM pgtrickle.explain_refresh_mode($1)", &[&name]).expect("mode");
        let (mode, reason): (String, String) = (row.get(0), row.get(1));
        let title = sql.lines().next().unwrap_or_default().trim_start_matches("-- ").to_string();
        let forced = if mode == "FULL" { reason } else { String::new() };
        let explain: String = db.scalar("SELECT pgtrickle.explain_st($1)", &[&name]);
        let tree: Vec<String> = explain
            .lines()
            .skip_while(|l| !l.starts_with("operator tree:"))
            .skip(1)
            .take_while(|l| !l.starts_with("full SQL:"))
            .map(without_oid_names)
            .collect();
        summary.push_str(&format!("| {} | {mode} | {} | {forced} |\n", title.split(',').next().unwrap_or(name), shape(&tree)));
        trees.push_str(&format!("## {title}\n\nAUTO chose {mode}.\n\n```text\n{}\n```\n\n", tree.join("\n")));
    }
    let report = format!(
        "# TPC-H: how pg_trickle maintains each query\n\n\
         The 22 queries of the TPC-H specification (`crates/pgt_testkit/tpch/`, with the \
         specification's validation substitution parameters; adaptations in `crates/pgt_testkit/src/tpch.rs`) \
         as stream tables with `refresh_mode => 'AUTO'`: the mode AUTO chose, the construct that forced FULL \
         if any, and the operator tree `pgtrickle.explain_st` shows (state tables and change buffers unnamed). \
         Written by `PGT_WRITE_TPCH_REPORT=1 make test` (test `tpch_report_matches_docs` in \
         `tests/e2e/tests/tpch.rs`, which fails when this file is out of date). Correctness under churn: \
         the other tests of that file; speed: [BENCHMARK.md](BENCHMARK.md).\n\n\
         Queries are derived from the TPC-H Benchmark specification; results are not comparable to published \
         TPC results. TPC Benchmark is a trademark of the TPC.\n\n\
         | Query | AUTO chose | Operator tree | Construct forcing FULL |\n|---|---|---|---|\n{summary}\n{trees}"
    );
    println!("{report}");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/TPCH.md");
    if std::env::var("PGT_WRITE_TPCH_REPORT").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &report).expect("write docs/TPCH.md");
        return;
    }
    let kept = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(kept == report, "docs/TPCH.md is out of date: run PGT_WRITE_TPCH_REPORT=1 make test (or the test alone) and commit it");
}

/// A one-line summary of an operator tree: its root, its widest join, and
/// how many child operators keep state tables and how many subquery
/// expressions it reads through the presence rule.
fn shape(tree: &[String]) -> String {
    let Some(root) = tree.first() else { return String::new() };
    let top = |line: &str| line.trim().split(" — ").next().unwrap_or_default().trim_end_matches(':').to_string();
    let mut parts = vec![top(root)];
    if root.trim().starts_with("TopK") {
        if let Some(below) = tree.get(1) {
            parts[0] = format!("TopK over {}", top(below).to_lowercase());
        }
    }
    let widest = tree
        .iter()
        .filter_map(|l| l.split("Join block (").nth(1)?.split(' ').next()?.parse::<usize>().ok())
        .max()
        .unwrap_or(0);
    if widest > 1 {
        parts.push(format!("joins of up to {widest} inputs"));
    }
    let states = tree.iter().filter(|l| l.contains("Child result kept in state table")).count();
    if states > 0 {
        parts.push(format!("{states} child state table{}", if states == 1 { "" } else { "s" }));
    }
    let presence = tree.iter().filter(|l| l.contains("presence rule")).count();
    if presence > 0 {
        parts.push(format!("{presence} subquery expression{} (presence rule)", if presence == 1 { "" } else { "s" }));
    }
    let outer = tree.iter().filter(|l| l.contains("outer join")).count();
    if outer > 0 {
        parts.push("outer joins".to_string());
    }
    parts.join("; ")
}

/// An `explain_st` line without the OID-based names of state tables and
/// change buffers.
fn without_oid_names(line: &str) -> String {
    let mut out = line.to_string();
    if let Some(at) = out.find(" — change buffer ") {
        out.truncate(at);
    }
    while let Some(start) = out.find("\"pgtrickle_state\".\"pgt_") {
        let rest = &out[start + "\"pgtrickle_state\".\"pgt_".len()..];
        let Some(end) = rest.find('"') else { break };
        let number = rest[..end].rsplit('_').next().unwrap_or_default().to_string();
        out.replace_range(start..start + "\"pgtrickle_state\".\"pgt_".len() + end + 1, &format!("#{number}"));
    }
    out
}
