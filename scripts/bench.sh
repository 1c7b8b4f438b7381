#!/usr/bin/env bash
# Runs the benchmark (DIFFERENTIAL vs FULL vs REFRESH MATERIALIZED VIEW) against a
# dedicated cluster and writes docs/BENCHMARK.md and docs/benchmark.json.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$PGT_REPO"
pgt_step "building the benchmark"
cargo build --release --quiet -p pg_trickle_bench
pgt_step "running the benchmark (PGT_BENCH_ROWS=${PGT_BENCH_ROWS:-100000,1000000}, about 45 minutes)"
"$PGT_REPO/target/release/pg_trickle_bench"
pgt_as_service "$($PG_CONFIG --bindir)/pg_ctl" stop -D "$PGT_HOME/bench/data" -m fast -w >/dev/null 2>&1 || true
