#!/bin/bash
# End to end benchmark (bench/e2e.py; run by `make bench`): starts a local
# stack of its own (tools/run.sh, detached, its own LSS_RUN and port),
# measures the sandbox API through the gateway against its baselines, and
# stops the stack.  Root (runc).
#
#   bench/e2e.sh [--rounds N] [--creates N] [--execs N] [--fresh N]
#                [--streams N] [--sandboxes N] [--connections N]
#                [--duration S]
#
# The stack's configuration is conf/local.conf.in with every rate and burst
# raised so far that no request is refused: the rate limiter still runs on
# every request (the figure the product serves), it just never says no.
set -euo pipefail

TOP=$(cd "$(dirname "$0")/.." && pwd)

if [ "$(id -u)" != 0 ]; then
    echo "bench/e2e.sh: needs root (runc)" >&2
    exit 1
fi

run=$(mktemp -d /tmp/lss-e2e-XXXXXX)
chmod 0755 "$run"
port=$(/usr/bin/python3 -c 'import socket; s = socket.socket();
s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

cleanup() {
    LSS_RUN=$run "$TOP/tools/run.sh" stop >/dev/null 2>&1 || true
    rm -rf "$run"
}
trap cleanup EXIT

sed -E -e 's#rate=[0-9]+r/s#rate=1000000r/s#g' \
       -e 's#burst=[0-9]+#burst=1000000#g' \
       -e 's#quota=[0-9]+#quota=100#g' \
    "$TOP/conf/local.conf.in" > "$run/local.conf.in"

echo "bench/e2e.sh: starting a stack in $run on 127.0.0.1:$port" >&2
if ! LSS_RUN=$run LSS_PORT=$port LSS_DETACH=1 \
        LSS_CONF_IN=$run/local.conf.in "$TOP/tools/run.sh" \
        > "$run/start.log" 2>&1; then
    cat "$run/start.log" >&2
    exit 1
fi

/usr/bin/python3 "$TOP/bench/e2e.py" --url "http://127.0.0.1:$port" \
    --run "$run" "$@"
