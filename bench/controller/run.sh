#!/bin/sh
# Controller benchmark (root): see bench/controller/bench.py and the
# "Controller" section of docs/benchmarks.md.
set -eu
TOP=$(cd "$(dirname "$0")/../.." && pwd)
[ -x "$TOP/build/controller/llmsafespace-controller" ] || make -C "$TOP/controller"
exec /usr/bin/python3 "$TOP/bench/controller/bench.py" "$@"
