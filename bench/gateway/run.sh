#!/bin/bash
# Gateway benchmark: throughput and latency of authenticated, rate-limited
# requests through ngx_http_llmsafespace_module (API key from a keys file,
# a limit zone so large nothing is denied, proxy_pass to a backend) against
# bare nginx proxy_pass to the same backend, in the same run, alternating
# A and B for several rounds; medians are reported.
#
#   bench/gateway/run.sh [--rounds N] [--duration S] [--connections N]
#                        [--redis]
#
# --redis adds a figure with llmsafespace_redis configured, so the limiter
# runs its GCRA in Redis (one round trip per request) instead of the
# shared memory zone.
#
# Placement on 2 cores: the measured nginx (1 worker) on CPU 0; wrk, the
# backend nginx and redis-server on CPU 1.  Loopback only.
set -eu
set -o pipefail

top=$(cd "$(dirname "$0")/../.." && pwd)
module=${MODULE:-$top/build/ngx_http_llmsafespace_module.so}
nginx=${LSS_TEST_NGINX:-/usr/sbin/nginx}

rounds=5
duration=5
connections=32
with_redis=0

while [ $# -gt 0 ]; do
    case $1 in
        --rounds) rounds=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        --connections) connections=$2; shift 2 ;;
        --redis) with_redis=1; shift ;;
        *) echo "usage: $0 [--rounds N] [--duration S] [--connections N]" \
               "[--redis]" >&2; exit 2 ;;
    esac
done

for tool in wrk taskset curl sha256sum redis-server awk; do
    command -v $tool > /dev/null || { echo "bench: $tool missing" >&2; exit 1; }
done
[ -f "$module" ] || { echo "bench: no $module (make module)" >&2; exit 1; }

ncpu=$(nproc)
if [ "$ncpu" -ge 2 ]; then
    cpu_server=0
    cpu_client=1
else
    cpu_server=0
    cpu_client=0
fi

# worker_cpu_affinity's bit mask of one CPU: 1, 10, 100...
cpu_mask() {
    if [ "$1" = 0 ]; then echo 1; else printf '1%0*d' "$1" 0; fi
}

dir=$(mktemp -d /tmp/lss-bench-XXXXXX)
chmod 0755 "$dir"
pids=()

cleanup() {
    for pidfile in "$dir"/gw.pid "$dir"/be.pid; do
        [ -s "$pidfile" ] && kill -QUIT "$(cat "$pidfile")" 2> /dev/null
    done
    for p in "${pids[@]}"; do
        kill "$p" 2> /dev/null
    done
    sleep 0.5
    rm -rf "$dir"
}
trap cleanup EXIT

# a free loopback port below the ephemeral range
free_port() {
    local p
    for _ in $(seq 1 50); do
        p=$(( 20000 + RANDOM % 12000 ))
        if ! (exec 3<> /dev/tcp/127.0.0.1/$p) 2> /dev/null; then
            echo $p
            return
        fi
    done
    echo "bench: no free port" >&2
    exit 1
}

be_port=$(free_port)
gw_port=$(free_port)
bare_port=$(free_port)
redis_port=$(free_port)

# an API key in the keys file format: keyid:sha256(secret):user:name:role
alnum() {
    # tr dies of SIGPIPE when head has enough: not a failure
    (LC_ALL=C tr -dc "$1" < /dev/urandom | head -c "$2") || true
}
keyid=$(alnum 'a-z0-9' 16)
secret=$(alnum 'A-Za-z0-9' 32)
hash=$(printf '%s' "$secret" | sha256sum | cut -d' ' -f1)
key="lsp_${keyid}_${secret}"
echo "$keyid:$hash:usr-bench:bench:user" > "$dir/keys"
chmod 0644 "$dir/keys"

temp_paths="
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
"

cat > "$dir/backend.conf" <<EOF
worker_processes 1;
worker_cpu_affinity $(cpu_mask $cpu_client);
pid $dir/be.pid;
error_log $dir/be-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    $temp_paths
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$be_port backlog=4096;
        location / { return 200 "hello from the backend\n"; }
    }
}
EOF

redis_conf=
if [ $with_redis = 1 ]; then
    taskset -c $cpu_client redis-server --port "$redis_port" \
        --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" \
        --logfile "$dir/redis.log" > /dev/null 2>&1 &
    pids+=($!)
fi

gateway_server() {
    # $1 port, $2 zone
    cat <<EOF
    server {
        listen 127.0.0.1:$1 backlog=4096;
        location / {
            llmsafespace_auth on;
            llmsafespace_json_errors on;
            llmsafespace_limit default zone=$2;
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
EOF
}

{
    cat <<EOF
load_module $module;
worker_processes 1;
worker_cpu_affinity $(cpu_mask $cpu_server);
pid $dir/gw.pid;
error_log $dir/gw-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    $temp_paths
    keepalive_requests 1000000;

    llmsafespace_keys_file $dir/keys;
    llmsafespace_key_cache zone=keys:1m;
    llmsafespace_limit_zone zone=bench:10m rate=1000000r/s burst=1000000;
EOF
    if [ $with_redis = 1 ]; then
        echo "    llmsafespace_redis 127.0.0.1:$redis_port;"
    fi
    cat <<EOF

    upstream backend {
        server 127.0.0.1:$be_port;
        keepalive 64;
    }

    # B: the baseline, bare proxy_pass to the same backend
    server {
        listen 127.0.0.1:$bare_port backlog=4096;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
EOF
    gateway_server "$gw_port" bench
    echo "}"
} > "$dir/gateway.conf"

"$nginx" -p "$dir/" -c backend.conf -e "$dir/be-error.log"
"$nginx" -p "$dir/" -c gateway.conf -e "$dir/gw-error.log"

wait_port() {
    for _ in $(seq 1 100); do
        (exec 3<> /dev/tcp/127.0.0.1/$1) 2> /dev/null && return 0
        sleep 0.05
    done
    echo "bench: port $1 not listening" >&2
    cat "$dir"/*error.log >&2
    exit 1
}

wait_port $be_port
wait_port $gw_port
wait_port $bare_port
[ $with_redis = 1 ] && wait_port $redis_port

# the figure measures successful requests only: check both answer 200,
# and that the gateway really authenticates
code=$(curl -s -o /dev/null -w '%{http_code}' \
    -H "Authorization: Bearer $key" "http://127.0.0.1:$gw_port/")
[ "$code" = 200 ] || { echo "bench: gateway answered $code" >&2;
    cat "$dir/gw-error.log" >&2; exit 1; }
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$gw_port/")
[ "$code" = 401 ] || { echo "bench: no key answered $code, not 401" >&2;
    exit 1; }
code=$(curl -s -o /dev/null -w '%{http_code}' \
    "http://127.0.0.1:$bare_port/")
[ "$code" = 200 ] || { echo "bench: baseline answered $code" >&2; exit 1; }

# wrk prints one machine-readable line from Lua: rps p50_us p99_us non2xx
cat > "$dir/bench.lua" <<'EOF'
local key = os.getenv("LSS_BENCH_KEY")
if key and key ~= "" then
    wrk.headers["Authorization"] = "Bearer " .. key
end

function done(summary, latency, requests)
    local bad = summary.errors.status + summary.errors.connect
        + summary.errors.read + summary.errors.write + summary.errors.timeout
    io.write(string.format("RESULT %.1f %d %d %d\n",
        summary.requests / (summary.duration / 1e6),
        latency:percentile(50), latency:percentile(99), bad))
end
EOF

run_wrk() {
    # $1 port, $2 key (may be empty)
    LSS_BENCH_KEY=$2 taskset -c $cpu_client wrk -t1 -c"$connections" \
        -d"${duration}s" -s "$dir/bench.lua" "http://127.0.0.1:$1/" \
        | awk '/^RESULT/ { print $2, $3, $4, $5 }'
}

# warm up both paths (key cache, upstream keepalive)
run_wrk_short() {
    LSS_BENCH_KEY=$2 taskset -c $cpu_client wrk -t1 -c"$connections" \
        -d1s -s "$dir/bench.lua" "http://127.0.0.1:$1/" > /dev/null
}
run_wrk_short $gw_port "$key"
run_wrk_short $bare_port ""

: > "$dir/a.txt"
: > "$dir/b.txt"

for round in $(seq 1 "$rounds"); do
    # alternate the order so drift does not favour one side
    if [ $((round % 2)) = 1 ]; then
        run_wrk $gw_port "$key" >> "$dir/a.txt"
        run_wrk $bare_port "" >> "$dir/b.txt"
    else
        run_wrk $bare_port "" >> "$dir/b.txt"
        run_wrk $gw_port "$key" >> "$dir/a.txt"
    fi
    echo "round $round/$rounds: gateway $(tail -1 "$dir/a.txt")," \
        "bare $(tail -1 "$dir/b.txt") (req/s p50_us p99_us errors)" >&2
done

median() {
    # column $1 of file $2
    awk -v c="$1" '{ print $c }' "$2" | sort -n \
        | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2];
               else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

errors=$(awk '{ s += $4 } END { print s + 0 }' "$dir/a.txt" "$dir/b.txt")

a_rps=$(median 1 "$dir/a.txt"); b_rps=$(median 1 "$dir/b.txt")
a_p50=$(median 2 "$dir/a.txt"); b_p50=$(median 2 "$dir/b.txt")
a_p99=$(median 3 "$dir/a.txt"); b_p99=$(median 3 "$dir/b.txt")

# the ratio of each round (A and B ran back to back), then their median:
# steadier than a ratio of medians when the machine's load drifts
paste -d' ' "$dir/a.txt" "$dir/b.txt" \
    | awk '{ printf "%.4f\n", $1 / $5 }' > "$dir/ratio.txt"
ratio=$(median 1 "$dir/ratio.txt")

limiter=shm
[ $with_redis = 1 ] && limiter=redis

echo
echo "Gateway: $rounds rounds x ${duration}s, wrk -t1 -c$connections," \
     "nginx 1 worker on CPU $cpu_server, client on CPU $cpu_client"
printf '%-44s %11s %9s %9s %11s %7s\n' figure 'req/s' p50 p99 \
    'baseline' ratio
awk -v ar="$a_rps" -v a50="$a_p50" -v a99="$a_p99" -v br="$b_rps" \
    -v b50="$b_p50" -v b99="$b_p99" -v lim="$limiter" -v ratio="$ratio" \
    'BEGIN {
    printf "%-44s %11.0f %7.3fms %7.3fms %11.0f %7.2f\n",
        "auth + rate limit (" lim ") + proxy_pass", ar, a50 / 1000,
        a99 / 1000, br, ratio
    printf "%-44s %11.0f %7.3fms %7.3fms %11s %7s\n",
        "baseline: bare proxy_pass", br, b50 / 1000, b99 / 1000, "-", "-"
}'
echo "ratio: median of the per-round req/s ratios (target >= 0.85);" \
     "p50/p99: medians over rounds; non-2xx or socket errors: $errors"

if grep -E '\[(alert|crit|emerg)\]' "$dir/gw-error.log" >&2; then
    echo "bench: the gateway logged alerts" >&2
    exit 1
fi

[ "$errors" = 0 ] || { echo "bench: requests failed" >&2; exit 1; }
