#!/usr/bin/env bash
# `make dist`: the release archive for PGXN, dist/pg_trickle-<version>.zip, made
# by `git archive` from the committed tree (HEAD), after checking that
# META.json is a valid PGXN distribution file (Meta spec 1.0.0) whose versions
# match the extension's (Cargo.toml, which pg_trickle.control's default_version
# follows). Prints the archive's path.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$PGT_REPO"
version="$(sed -n '/^\[workspace.package\]/,/^\[/{s/^version *= *"\(.*\)"/\1/p}' Cargo.toml)"
[ -n "$version" ] || pgt_die "cannot read the version from Cargo.toml"
python3 - "$version" <<'PY'
import json, re, sys
version = sys.argv[1]
meta = json.load(open("META.json"))
errors = []
for key in ("name", "abstract", "version", "maintainer", "license", "provides", "meta-spec"):
    if key not in meta:
        errors.append(f"missing required key {key!r}")
semver = re.compile(r"^\d+\.\d+\.\d+(-[0-9A-Za-z-]+)?$")
if meta.get("name") != "pg_trickle":
    errors.append("name must be pg_trickle")
if meta.get("version") != version:
    errors.append(f"version {meta.get('version')!r} differs from Cargo.toml's {version!r}")
for ext, p in meta.get("provides", {}).items():
    if not semver.match(p.get("version", "")):
        errors.append(f"provides.{ext}.version is not a semantic version")
    if p.get("version") != version:
        errors.append(f"provides.{ext}.version {p.get('version')!r} differs from {version!r}")
    for f in ("file", "docfile"):
        if f in p:
            try:
                open(p[f]).close()
            except OSError:
                errors.append(f"provides.{ext}.{f} names a missing file {p[f]!r}")
if meta.get("meta-spec", {}).get("version") != "1.0.0":
    errors.append("meta-spec.version must be 1.0.0")
if meta.get("release_status", "stable") not in ("stable", "testing", "unstable"):
    errors.append("release_status must be stable, testing or unstable")
licenses = {"apache_2_0", "postgresql", "mit", "bsd", "gpl_3", "open_source", "restricted", "unknown"}
lic = meta.get("license")
if isinstance(lic, str) and lic not in licenses:
    errors.append(f"license {lic!r} is not a PGXN license key")
if errors:
    sys.exit("META.json: " + "; ".join(errors))
PY
if ! git diff --quiet HEAD -- . 2>/dev/null; then
  echo "note: the archive holds the committed tree (HEAD); uncommitted changes are left out" >&2
fi
mkdir -p dist
archive="dist/pg_trickle-$version.zip"
git archive --format=zip --prefix="pg_trickle-$version/" -o "$archive" HEAD
echo "$PGT_REPO/$archive"
