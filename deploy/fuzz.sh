#!/usr/bin/env bash
# Fuzzes every Fuzz target of the repository briefly (FUZZTIME each,
# default 10s), starting from the corpora committed under each package's
# testdata/fuzz. A failing input is written there by go test; commit it
# with the fix. Called by deploy/test.sh; run alone for a longer pass:
#
#   FUZZTIME=10m deploy/fuzz.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:${PATH}" GOTOOLCHAIN="${GOTOOLCHAIN:-auto}"
export CGO_ENABLED=1 CGO_CFLAGS="-Wno-deprecated-declarations"
FUZZTIME="${FUZZTIME:-10s}"

found=0
while IFS=: read -r file name; do
  pkg="./$(dirname "$file")"
  echo "== fuzz $name ($pkg, $FUZZTIME)"
  go test -run '^$' -fuzz "^${name}\$" -fuzztime "$FUZZTIME" -timeout 10m "$pkg"
  found=$((found + 1))
done < <(git grep -o -E '^func Fuzz[A-Za-z0-9_]+' -- '*_test.go' | sed -E 's/:func /:/' | sort -u)
if [ "$found" -eq 0 ]; then
  echo "no fuzz targets found" >&2
  exit 1
fi
echo "fuzzed $found targets"
