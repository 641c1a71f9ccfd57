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
  corpus="$(dirname "$file")/testdata/fuzz/$name"
  before="$(ls "$corpus" 2>/dev/null | sort | tr '\n' ' ')"
  log="$(mktemp)"
  if ! go test -run '^$' -fuzz "^${name}\$" -fuzztime "$FUZZTIME" -timeout 10m "$pkg" 2>&1 | tee "$log"; then
    # Go's fuzzing coordinator sometimes fails with "context deadline
    # exceeded" when -fuzztime ends while a worker is busy (a loaded
    # machine): no input failed, and none was written. That, and only that,
    # is tried once more; a real failure writes its input to the corpus.
    after="$(ls "$corpus" 2>/dev/null | sort | tr '\n' ' ')"
    if [ "$before" = "$after" ] && grep -q '^    context deadline exceeded$' "$log" && ! grep -q 'Failing input written' "$log"; then
      echo "== fuzz $name: the coordinator timed out without a failing input; once more"
      go test -run '^$' -fuzz "^${name}\$" -fuzztime "$FUZZTIME" -timeout 10m "$pkg"
    else
      rm -f "$log"
      exit 1
    fi
  fi
  rm -f "$log"
  found=$((found + 1))
done < <(git grep -o -E '^func Fuzz[A-Za-z0-9_]+' -- '*_test.go' | sed -E 's/:func /:/' | sort -u)
if [ "$found" -eq 0 ]; then
  echo "no fuzz targets found" >&2
  exit 1
fi
echo "fuzzed $found targets"
