#!/usr/bin/env bash
# Stops the demo cluster if it runs.
set -euo pipefail
source "$(dirname "$0")/env.sh"
data="$PGT_HOME/demo/data"
if [ -f "$data/postmaster.pid" ]; then
  pgt_step "stopping the demo server"
  pgt_as_service "$($PG_CONFIG --bindir)/pg_ctl" stop -D "$data" -m fast -w
else
  echo "the demo server is not running"
fi
