#!/usr/bin/env bash
# Builds pg_trickle (release profile, no LTO) and installs it into the provisioned
# PostgreSQL 18. Cargo's incremental build makes a second run take seconds.
set -euo pipefail
source "$(dirname "$0")/env.sh"
[ -x "$PG_CONFIG" ] || pgt_die "PostgreSQL is not provisioned; run scripts/setup.sh (make setup)"
pgt_step "building and installing the pg_trickle extension into $($PG_CONFIG --version)"
cd "$PGT_REPO"
cargo pgrx install --release --pg-config "$PG_CONFIG" 2>&1 | grep --line-buffered -v '^\s*$' | sed -u -e 's/^/    /'
test "${PIPESTATUS[0]}" -eq 0
# The install scripts of earlier releases and the upgrade scripts (sql/README.md).
install -m 644 sql/pg_trickle--*.sql "$("$PG_CONFIG" --sharedir)/extension/"
