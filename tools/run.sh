#!/bin/bash
# The local stack, all state under run/ in the checkout: Redis and PostgreSQL
# on unix sockets, nginx with the module on 127.0.0.1:$LSS_PORT (8080).
#
#   tools/run.sh          start, print the URL and the admin key, wait;
#                         Ctrl-C stops everything
#   LSS_DETACH=1 tools/run.sh   start and return once ready
#   tools/run.sh stop     stop a detached stack
set -euo pipefail

TOP=$(cd "$(dirname "$0")/.." && pwd)
RUN=$TOP/run
PORT=${LSS_PORT:-8080}
PGBIN=/usr/lib/postgresql/15/bin
MODULE=$TOP/build/ngx_http_llmsafespace_module.so

log() { printf 'llmsafespace: %s\n' "$*"; }

pg_as() {
    # PostgreSQL refuses to run as root
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

stop() {
    if [ -s "$RUN/nginx/nginx.pid" ]; then
        nginx -p "$RUN/nginx" -c "$RUN/nginx/nginx.conf" -s quit 2>/dev/null || true
    fi
    if [ -s "$RUN/redis/redis.pid" ]; then
        kill "$(cat "$RUN/redis/redis.pid")" 2>/dev/null || true
    fi
    if [ -d "$RUN/pg/data" ]; then
        pg_as "$PGBIN/pg_ctl" -D "$RUN/pg/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
    for _ in $(seq 50); do
        [ -s "$RUN/nginx/nginx.pid" ] && kill -0 "$(cat "$RUN/nginx/nginx.pid")" 2>/dev/null || break
        sleep 0.1
    done
    log "stopped"
}

if [ "${1:-}" = stop ]; then
    stop
    exit 0
fi

mkdir -p "$RUN"/{nginx/logs,redis,pg}
chmod 0755 "$RUN" "$RUN/pg"

# Redis
if ! { [ -s "$RUN/redis/redis.pid" ] && kill -0 "$(cat "$RUN/redis/redis.pid")" 2>/dev/null; }; then
    redis-server --port 0 --unixsocket "$RUN/redis/redis.sock" \
        --unixsocketperm 700 --dir "$RUN/redis" --daemonize yes \
        --pidfile "$RUN/redis/redis.pid" --logfile "$RUN/redis/redis.log" \
        --save 60 1 >/dev/null
fi

# PostgreSQL
if [ ! -d "$RUN/pg/data" ]; then
    [ "$(id -u)" = 0 ] && chown postgres "$RUN/pg"
    pg_as "$PGBIN/initdb" -D "$RUN/pg/data" -A trust -U postgres >/dev/null
fi
if ! pg_as "$PGBIN/pg_ctl" -D "$RUN/pg/data" status >/dev/null 2>&1; then
    pg_as "$PGBIN/pg_ctl" -D "$RUN/pg/data" -w -l "$RUN/pg/log" \
        -o "-k $RUN/pg -c listen_addresses=''" start >/dev/null
fi
DB="host=$RUN/pg user=postgres dbname=llmsafespace"
if ! psql "host=$RUN/pg user=postgres dbname=postgres" -tAc \
        "SELECT 1 FROM pg_database WHERE datname = 'llmsafespace'" | grep -q 1; then
    psql "host=$RUN/pg user=postgres dbname=postgres" -qc "CREATE DATABASE llmsafespace"
fi

# the first admin key, once
key=$("$TOP/tools/llmsafespace-admin" init --db "$DB" | grep '^lsp_' || true)
if [ -n "$key" ]; then
    (umask 077; echo "$key" > "$RUN/admin.key")
fi

# nginx (Redis' socket is the nginx workers' to reach: they run as root's
# "nobody" unless told, so run them as the invoking user)
sed -e "s#@RUN@#$RUN#g" -e "s#@PORT@#$PORT#g" -e "s#@MODULE@#$MODULE#g" \
    -e "s#@USER@#$(id -un)#g" \
    "$TOP/conf/local.conf.in" > "$RUN/nginx/nginx.conf"
if [ -s "$RUN/nginx/nginx.pid" ] && kill -0 "$(cat "$RUN/nginx/nginx.pid")" 2>/dev/null; then
    nginx -p "$RUN/nginx" -c "$RUN/nginx/nginx.conf" -s reload
else
    nginx -p "$RUN/nginx" -c "$RUN/nginx/nginx.conf"
fi

for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null || {
    log "the gateway did not become healthy; see $RUN/nginx/logs/error.log"
    exit 1
}

cat <<EOF

  LLMSafeSpace gateway   http://127.0.0.1:$PORT/api/v1
  admin API key          $(cat "$RUN/admin.key")   (also in run/admin.key)

  try:  curl -H "Authorization: Bearer \$(cat run/admin.key)" http://127.0.0.1:$PORT/api/v1/user

EOF

if [ "${LSS_DETACH:-0}" = 1 ]; then
    log "running in the background; 'make stop' stops it"
    exit 0
fi

trap 'stop; exit 0' INT TERM
log "running; Ctrl-C stops everything"
while sleep 3600; do :; done
