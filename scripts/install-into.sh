#!/usr/bin/env bash
# `make install PG_CONFIG=/path/to/pg_config`: builds pg_trickle and installs it
# into your own PostgreSQL 18 (the PGXS convention), instead of the PostgreSQL
# `make demo` and `make test` provision. Needs Rust (rustup), clang and
# libclang-dev, and PostgreSQL 18's server development files (pg_config,
# headers); installs cargo-pgrx 0.18.0 if it is missing. With SUDO=1, copies
# the files with sudo (for a PostgreSQL owned by root).
# With --build-only (`make all PG_CONFIG=...`), builds the package without
# installing it.
set -euo pipefail
source "$(dirname "$0")/env.sh"
build_only=""
if [ "${1:-}" = "--build-only" ]; then build_only=1; shift; fi
target_pg_config="${1:?usage: install-into.sh [--build-only] /path/to/pg_config}"
[ -x "$target_pg_config" ] || pgt_die "$target_pg_config is not an executable pg_config"
version="$("$target_pg_config" --version)"
case "$version" in
  "PostgreSQL 18"*) ;;
  *) pgt_die "pg_trickle needs PostgreSQL 18; $target_pg_config is $version" ;;
esac
[ -f "$("$target_pg_config" --includedir-server)/postgres.h" ] \
  || pgt_die "PostgreSQL's server headers are missing ($("$target_pg_config" --includedir-server)/postgres.h); install its -dev package"
command -v cargo >/dev/null 2>&1 || pgt_die "cargo is missing: install Rust with rustup (https://rustup.rs)"
if ! cargo pgrx --version 2>/dev/null | grep -q "$PGRX_VERSION"; then
  pgt_step "installing cargo-pgrx $PGRX_VERSION (about 7 minutes, once)"
  cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
fi
# pgrx's configuration for this PostgreSQL, apart from the provisioned one's.
export PGRX_HOME="$PGT_HOME/pgrx-target"
if ! grep -qs "pg18 = \"$target_pg_config\"" "$PGRX_HOME/config.toml"; then
  mkdir -p "$PGRX_HOME"
  cargo pgrx init --pg18 "$target_pg_config" >/dev/null
fi
cd "$PGT_REPO"
if [ -n "$build_only" ]; then
  pgt_step "building pg_trickle for $version"
  cargo pgrx package --pg-config "$target_pg_config" --out-dir "$PGT_HOME/package"
  exit 0
fi
pgt_step "building and installing pg_trickle into $version ($("$target_pg_config" --sharedir))"
sudo_flag=()
[ "${SUDO:-0}" = "1" ] && sudo_flag=(--sudo)
cargo pgrx install --release --pg-config "$target_pg_config" "${sudo_flag[@]}"
# The install scripts of earlier releases and the upgrade scripts (sql/README.md).
if [ "${SUDO:-0}" = "1" ]; then
  sudo install -m 644 sql/pg_trickle--*.sql "$("$target_pg_config" --sharedir)/extension/"
else
  install -m 644 sql/pg_trickle--*.sql "$("$target_pg_config" --sharedir)/extension/"
fi
pgt_step "installed: add pg_trickle to shared_preload_libraries (for the scheduler), restart, then CREATE EXTENSION pg_trickle"
