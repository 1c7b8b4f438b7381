#!/usr/bin/env bash
# Checks the PGXN release archive as a user would use it: `make dist`, unpack
# it in a fresh folder, and install from it with the README's PGXS-style step
# `make install PG_CONFIG=...` (here into the provisioned PostgreSQL 18, sharing
# the work tree's cargo build folder so that only pg_trickle itself is
# rebuilt). Fails if the archive misses a file the build needs.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$PGT_REPO"
archive="$(scripts/dist.sh)"
check="$PGT_HOME/dist-check"
rm -rf "$check"
mkdir -p "$check"
(cd "$check" && unzip -q "$archive")
dir="$(ls -d "$check"/pg_trickle-*/)"
for f in META.json Makefile Cargo.toml Cargo.lock pg_trickle.control README.md; do
  [ -f "$dir/$f" ] || pgt_die "the release archive lacks $f"
done
CARGO_TARGET_DIR="$PGT_REPO/target" PGT_HOME="$PGT_HOME" make -s -C "$dir" install PG_CONFIG="$PG_CONFIG" >"$check/install.log" 2>&1 \
  || { tail -30 "$check/install.log"; pgt_die "make install PG_CONFIG=... from the release archive failed (log: $check/install.log)"; }
share="$("$PG_CONFIG" --sharedir)/extension"
version="$(sed -n 's/.*"version": "\(.*\)",/\1/p' "$dir/META.json" | head -1)"
[ -f "$share/pg_trickle--$version.sql" ] || pgt_die "installing from the archive left no pg_trickle--$version.sql"
[ "$(find "$("$PG_CONFIG" --pkglibdir)/pg_trickle.so" -newer "$archive" | wc -l)" = 1 ] \
  || pgt_die "installing from the archive did not install pg_trickle.so"
rm -rf "$check"
echo "release archive $archive: builds and installs with make install PG_CONFIG=..."
