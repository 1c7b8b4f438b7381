#!/usr/bin/env bash
# Installs the real tools the integration tests run against (docs/INTEGRATIONS.md),
# skipping what is already there; `make test` runs it before the tests:
#   - Debian packages prometheus (with promtool), prometheus-postgres-exporter and
#     pgbouncer (as root, or through passwordless sudo; their services are not
#     started: the tests start their own instances on free loopback ports);
#   - a Python virtual environment $PGT_HOME/venv with the pinned dbt-postgres of
#     integrations/dbt-pgtrickle/requirements.txt and the PGXN client of
#     integrations/pgxn/requirements.txt;
#   - the pinned npm packages that validate the Grafana dashboard
#     (integrations/grafana/validate, when Node.js and npm are present).
# A tool that cannot be installed is reported here, and the tests that need it say
# they were skipped and why. Never fails the build for a missing tool.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$PGT_REPO"

skipped=()

# 1. Debian packages.
missing=()
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v prometheus-postgres-exporter >/dev/null 2>&1 || missing+=(prometheus-postgres-exporter)
[ -x /usr/sbin/pgbouncer ] || command -v pgbouncer >/dev/null 2>&1 || missing+=(pgbouncer)
if [ ${#missing[@]} -gt 0 ]; then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  if [ "$(id -u)" = "0" ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO="none"; fi
  if [ "$SUDO" = "none" ]; then
    skipped+=("Debian packages ${missing[*]} (not root and no passwordless sudo: install them to run those tests)")
  else
    pgt_step "installing Debian packages for the integration tests: ${missing[*]}"
    # Keep the packages' own services from starting (the tests start their own),
    # unless the machine already has a policy.
    policy_added=""
    if [ ! -e /usr/sbin/policy-rc.d ] && [ -z "$SUDO" ]; then
      printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && policy_added=1
    fi
    if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }; then
      skipped+=("Debian packages ${missing[*]} (apt-get failed)")
    fi
    [ -n "$policy_added" ] && rm -f /usr/sbin/policy-rc.d
  fi
fi

# 2. dbt and the PGXN client in a virtual environment of the project's.
venv="$PGT_HOME/venv"
reqs=(integrations/dbt-pgtrickle/requirements.txt integrations/pgxn/requirements.txt)
req="${reqs[*]}"
stamp="$venv/.requirements.sha256"
want="$(cat "${reqs[@]}" | sha256sum | cut -d' ' -f1)"
if ! command -v python3 >/dev/null 2>&1; then
  skipped+=("dbt and the PGXN client (no python3 on this machine)")
elif [ ! -x "$venv/bin/dbt" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  pgt_step "installing dbt and the PGXN client into $venv ($req)"
  # pgxnclient comes as a source distribution whose built wheel carries the
  # path of the Python that built it in its command scripts: build it for this
  # environment, never from a wheel cached for another (--no-cache-dir).
  if python3 -m venv "$venv" \
     && "$venv/bin/pip" install --quiet --disable-pip-version-check -r integrations/dbt-pgtrickle/requirements.txt \
     && "$venv/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir --force-reinstall \
          -r integrations/pgxn/requirements.txt \
     && "$venv/bin/pgxn" help install >/dev/null; then
    echo "$want" > "$stamp"
  else
    skipped+=("dbt and the PGXN client (pip install failed)")
  fi
fi

# 3. Grafana dashboard schema validation.
validate="integrations/grafana/validate"
if [ -f "$validate/package-lock.json" ]; then
  if command -v npm >/dev/null 2>&1; then
    lock_sum="$(sha256sum "$validate/package-lock.json" | cut -d' ' -f1)"
    if [ "$(cat "$validate/node_modules/.lock.sha256" 2>/dev/null)" != "$lock_sum" ]; then
      pgt_step "installing the Grafana dashboard validator (npm ci in $validate)"
      if (cd "$validate" && npm ci --silent --no-audit --no-fund >/dev/null); then
        echo "$lock_sum" > "$validate/node_modules/.lock.sha256"
      else
        skipped+=("Grafana dashboard validation (npm ci failed)")
      fi
    fi
  else
    skipped+=("Grafana dashboard validation (no npm on this machine)")
  fi
fi

if [ ${#skipped[@]} -gt 0 ]; then
  printf '\033[1;33mintegration tools not installed; their tests will be skipped:\033[0m\n' >&2
  printf '  - %s\n' "${skipped[@]}" >&2
fi
exit 0
