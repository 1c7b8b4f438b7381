#!/usr/bin/env bash
# Validate Grafana dashboard JSON files against Grafana's dashboard schema
# (the TypeScript types of @grafana/schema, pinned in package.json), e.g.
#   integrations/grafana/validate/validate.sh                       # the pg_trickle dashboard
#   integrations/grafana/validate/validate.sh some/dashboard.json   # any others
# Exits non-zero when a file is not JSON or does not match the schema.
# The first run installs the pinned packages (npm ci) into node_modules here.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ "$#" -eq 0 ]; then
  set -- "$here/../pg_trickle_dashboard.json"
fi

if [ ! -x "$here/node_modules/.bin/tsc" ] || [ ! -d "$here/node_modules/@grafana/schema" ]; then
  (cd "$here" && npm ci --no-audit --no-fund --loglevel=error)
fi

rm -rf "$here/.build"
mkdir -p "$here/.build"
i=0
for f in "$@"; do
  i=$((i + 1))
  # Strict JSON first: TypeScript would also accept comments, trailing commas, ...
  node -e 'JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"))' "$f" \
    || { echo "validate.sh: $f is not valid JSON" >&2; exit 1; }
  {
    printf '// generated from %s\n' "$f"
    printf "import type { DashboardJson } from '../dashboard-schema';\n"
    printf 'export const dashboard%d = (\n' "$i"
    cat "$f"
    printf '\n) satisfies DashboardJson;\n'
  } > "$here/.build/dashboard$i.ts"
done

if (cd "$here" && ./node_modules/.bin/tsc -p tsconfig.json --pretty false); then
  echo "validate.sh: $# dashboard(s) match the Grafana dashboard schema (@grafana/schema $(node -p 'require(process.argv[1]).version' "$here/node_modules/@grafana/schema/package.json"))"
else
  echo "validate.sh: schema errors above (line numbers are those of .build/dashboardN.ts: the JSON file's plus 3)" >&2
  exit 1
fi
