#!/bin/bash
# Entry point of `make bench`: runs every benchmark the project has, each
# one command that prints its own table: bench/*/run.sh (one directory
# per component) and the top-level bench/*.sh scripts.  Arguments are
# passed to each.  Exits non-zero if any benchmark failed; the others
# still run.
set -u

cd "$(dirname "$0")"
status=0

for b in */run.sh *.sh; do
    [ -f "$b" ] || continue
    [ "$b" = run.sh ] && continue

    printf '\n==== bench/%s\n' "$b"
    if ! bash "$b" "$@"; then
        echo "bench: bench/$b failed" >&2
        status=1
    fi
done

exit $status
