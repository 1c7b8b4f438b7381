#!/usr/bin/env bash
# Runs every test: the unit and property tests of the pure crates pgt_core and
# pgt_delta (plain cargo test, seconds) and the E2E
# suite against a PostgreSQL 18 cluster that the harness starts in a fresh folder
# and that this script stops afterwards. Exits non-zero on any failure.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$PGT_REPO"

export PGT_E2E_CLUSTER_DIR="$PGT_HOME/e2e-run-$$"
# As root (CI), `make integrations` installs every tool the integration tests
# use, so a missing one is a failure there, not a skip.
if [ "$(id -u)" = "0" ]; then export PGT_REQUIRE_INTEGRATIONS="${PGT_REQUIRE_INTEGRATIONS:-1}"; fi
cleanup() {
  local dir="$PGT_E2E_CLUSTER_DIR"
  if [ -f "$dir/data/postmaster.pid" ]; then
    pgt_as_service "$($PG_CONFIG --bindir)/pg_ctl" stop -D "$dir/data" -m fast -w >/dev/null 2>&1 || true
  fi
  rm -rf "$dir"
}
trap cleanup EXIT

pgt_step "unit and property tests of the pure crates (pgt_core, pgt_delta)"
cargo test --release -p pgt_core -p pgt_delta --quiet

pgt_step "end-to-end tests against PostgreSQL 18 (pg_trickle_e2e)"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --release -p pg_trickle_e2e --no-fail-fast --test-threads "${PGT_TEST_THREADS:-4}" ${PGT_TEST_FILTER:-}
else
  cargo test --release -p pg_trickle_e2e --no-fail-fast -- --test-threads "${PGT_TEST_THREADS:-4}" ${PGT_TEST_FILTER:-}
fi

pgt_step "upgrade from the 0.1.0 release (built from git; tests/e2e/tests/upgrade.rs)"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --release -p pg_trickle_e2e --no-fail-fast --run-ignored only -E 'binary(upgrade)'
else
  cargo test --release -p pg_trickle_e2e --test upgrade -- --ignored
fi

pgt_step "the PGXN release archive installs (make dist; make install PG_CONFIG=... from it)"
scripts/check-dist.sh
