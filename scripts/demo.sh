#!/usr/bin/env bash
# Runs the demo against the demo cluster (started if needed and left running).
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$PGT_REPO"
pgt_step "building the demo"
cargo build --release --quiet -p pg_trickle_demo
exec "$PGT_REPO/target/release/pg_trickle_demo"
