#!/usr/bin/env bash
# Checks the PGXN release archive as a user would use it: `make dist`, then
# `pgxn install` of the archive with the PGXN client, which unpacks it and runs
# the PGXS-style `make all` and `make install` with PG_CONFIG=... (without the
# client: `make install PG_CONFIG=...` in the unpacked archive). It installs into
# the provisioned PostgreSQL 18, building in a cargo build folder of its own
# ($PGT_HOME/target-dist, kept between runs): sharing the work tree's would let
# cargo leave one tree's library in place for the other. Fails if the archive
# misses a file the build needs.
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
pgxn="$PGT_HOME/venv/bin/pgxn"
if [ -x "$pgxn" ]; then
  # What a PGXN user runs: the client unpacks the archive, then runs
  # `make PG_CONFIG=... all` and `make PG_CONFIG=... install` in it.
  how="pgxn install (pgxnclient $("$pgxn" --version | cut -d' ' -f2))"
  (cd "$check" && CARGO_TARGET_DIR="$PGT_HOME/target-dist" PGT_HOME="$PGT_HOME" \
     "$pgxn" install --unstable --pg_config "$PG_CONFIG" --make make --nosudo "$archive") >"$check/install.log" 2>&1 \
    || { tail -30 "$check/install.log"; pgt_die "$how of the release archive failed (log: $check/install.log)"; }
else
  [ "${PGT_REQUIRE_INTEGRATIONS:-0}" = "1" ] && pgt_die "the PGXN client is missing ($pgxn); make integrations installs it"
  echo "SKIPPED pgxn install: the PGXN client is not installed ($pgxn); checking make install PG_CONFIG=... instead" >&2
  how="make install PG_CONFIG=..."
  CARGO_TARGET_DIR="$PGT_HOME/target-dist" PGT_HOME="$PGT_HOME" make -s -C "$dir" install PG_CONFIG="$PG_CONFIG" >"$check/install.log" 2>&1 \
    || { tail -30 "$check/install.log"; pgt_die "$how from the release archive failed (log: $check/install.log)"; }
fi
share="$("$PG_CONFIG" --sharedir)/extension"
version="$(sed -n 's/.*"version": "\(.*\)",/\1/p' "$dir/META.json" | head -1)"
[ -f "$share/pg_trickle--$version.sql" ] || pgt_die "installing from the archive left no pg_trickle--$version.sql"
[ "$(find "$("$PG_CONFIG" --pkglibdir)/pg_trickle.so" -newer "$archive" | wc -l)" = 1 ] \
  || pgt_die "installing from the archive did not install pg_trickle.so"
rm -rf "$check"
echo "release archive $archive: builds and installs with $how"
