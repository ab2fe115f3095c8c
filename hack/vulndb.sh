#!/usr/bin/env bash
# hack/vulndb.sh VERSION: builds the Go vulnerability database that govulncheck reads
# (-db file://DIR) from the OSV reports in golang.org/x/vulndb@VERSION, and prints DIR.
#
# https://vuln.go.dev is not reachable from CI; the Go module proxy is, and it serves the
# vulndb repository as a module: data/osv/*.json holds every report. The vulndb module's
# own cmd/indexdb writes the layout govulncheck expects (index/db.json, index/modules.json,
# index/vulns.json, ID/<id>.json; https://go.dev/security/vuln/database#api).
#
# DIR is ${KIPVS_CACHE:-$HOME/.cache/kipvs}/vulndb-VERSION; an already built DIR is reused.
# GO names the go command (default go).
set -euo pipefail

version=${1:?usage: hack/vulndb.sh VULNDB_VERSION}
go=${GO:-go}
cache=${KIPVS_CACHE:-$HOME/.cache/kipvs}
out=$cache/vulndb-$version

if [ -f "$out/index/modules.json" ] && [ -f "$out/index/db.json" ]; then
	echo "$out"
	exit 0
fi

mkdir -p "$cache"
tmp=$(mktemp -d "$cache/vulndb-$version.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
# Outside any module, so neither command looks at (or edits) a go.mod.
cd "$tmp"

echo "vulndb: building $out from golang.org/x/vulndb@$version (Go module proxy)" >&2
if ! json=$("$go" mod download -json "golang.org/x/vulndb@$version"); then
	echo "vulndb: go mod download failed: $json" >&2
	exit 1
fi
field() { sed -n "s/^[[:space:]]*\"$1\": \"\(.*\)\",\{0,1\}$/\1/p" <<<"$json"; }
src=$(field Dir)
info=$(field Info)
[ -d "$src/data/osv" ] || { echo "vulndb: no data/osv in $src" >&2; exit 1; }

"$go" run "golang.org/x/vulndb/cmd/indexdb@$version" -vulns "$src/data/osv" -out "$tmp/db" >&2

# indexdb leaves the database's modified time at zero (the OSV files in the repository carry
# none; vuln.go.dev takes it from git). Use the vulndb commit time, which govulncheck reports
# as the database's age.
modified=$(sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' "$info")
if [ -n "$modified" ]; then
	printf '{"modified":"%s"}' "$modified" >"$tmp/db/index/db.json"
	gzip -nf -c "$tmp/db/index/db.json" >"$tmp/db/index/db.json.gz"
fi

n=$(find "$tmp/db/ID" -name '*.json' | wc -l)
[ "$n" -gt 0 ] || { echo "vulndb: indexdb wrote no reports" >&2; exit 1; }
# -T: a concurrent build that finished first wins; ours is dropped with $tmp.
mv -T "$tmp/db" "$out" 2>/dev/null || [ -f "$out/index/modules.json" ]
echo "vulndb: $n reports, modified $modified" >&2
echo "$out"
