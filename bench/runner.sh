#!/bin/sh
# Runner benchmark (see bench/runner.py): one command, prints a table.
#   bench/runner.sh [--rounds N] [--execs N] [--fresh N] [--gap-ms MS]
#                   [--compare ROOTFS]
# Needs root and the python rootfs: `make -C runtimes bench` builds both
# the runner and the rootfs first.
set -eu
exec /usr/bin/python3 "$(dirname "$0")/runner.py" "$@"
