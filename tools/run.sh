#!/bin/bash
# The local stack: Redis and PostgreSQL on unix sockets, the controller
# (local driver, the warm pools of conf/warmpools) and nginx with the
# module on 127.0.0.1:$LSS_PORT, all state under one directory.
#
#   tools/run.sh                builds what is missing (make stack), starts,
#                               prints the URL, the admin key and a first
#                               curl command, waits; Ctrl-C stops everything
#   LSS_DETACH=1 tools/run.sh   returns once the stack is ready: nginx
#                               answers and the python pool has a ready
#                               sandbox
#   tools/run.sh stop           stops it; its sandboxes are terminated
#
#   LSS_RUN=DIR           state directory (default: run/ in the checkout);
#                         several stacks run side by side with their own
#   LSS_PORT=N            nginx's port on 127.0.0.1 (8080)
#   LSS_READY_TIMEOUT=S   how long to wait for readiness (300 s)
#   LSS_NO_BUILD=1        skip `make stack`
#   LSS_CONF_IN=FILE      nginx template instead of conf/local.conf.in (the
#                         end to end benchmark raises the rate limits)
#
# Root only: runc and runsc need it.  Starting an already running stack
# is harmless: what runs is kept (a process whose binary was rebuilt is
# restarted; sandboxes survive a controller restart) and nginx reloads.
set -euo pipefail

TOP=$(cd "$(dirname "$0")/.." && pwd)
RUN=${LSS_RUN:-$TOP/run}
PORT=${LSS_PORT:-8080}
READY_TIMEOUT=${LSS_READY_TIMEOUT:-300}
PGBIN=/usr/lib/postgresql/15/bin
MODULE=$TOP/build/ngx_http_llmsafespace_module.so
CONTROLLER=$TOP/build/controller/llmsafespace-controller
# the nginx workers' user; the runners' sockets are its group's
LSS_USER=llmsafespace
POOL=python

log() { printf 'llmsafespace: %s\n' "$*"; }
die() { printf 'llmsafespace: %s\n' "$*" >&2; exit 1; }

if [ "$(id -u)" != 0 ]; then
    die "the local stack runs containers (runc): run it as root (sudo make run)"
fi

mkdir -p "$RUN"
RUN=$(cd "$RUN" && pwd)
REDIS_SOCK=$RUN/redis/redis.sock
DB="host=$RUN/pg user=postgres dbname=llmsafespace"

# The controller's state dir must be an absolute path of at most 60 bytes
# (a runner's socket path under it has to fit a unix socket address).
# A longer $RUN (a test's temporary directory, say) gets a short symlink
# in /run named after a hash of $RUN, so each stack has its own.
STATE=$RUN/state
if [ ${#STATE} -gt 60 ]; then
    STATE=/run/llmsafespace-$(printf '%s' "$RUN" | sha256sum | cut -c1-16)
fi

pid_of() {
    # a pid file's pid, if that process still runs
    local pid
    [ -s "$1" ] || return 1
    pid=$(cat "$1" 2>/dev/null) || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

controller_pid() {
    # the pid file names a controller of this state dir, not a reused pid
    local pid
    pid=$(pid_of "$RUN/controller/controller.pid") || return 1
    tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null \
        | grep -q -- "llmsafespace-controller --state $STATE " || return 1
    echo "$pid"
}

CONTROLLER_ARGS=(--state "$STATE" --redis "unix:$REDIS_SOCK" --pg "$DB"
                 --pools "$TOP/conf/warmpools" --socket-group "$LSS_USER")

wait_gone() {
    # bounded: $1 pid, $2 tenths of a second
    local i
    for i in $(seq "$2"); do
        kill -0 "$1" 2>/dev/null || return 0
        sleep 0.1
    done
    return 1
}

stop_controller() {
    local pid
    pid=$(controller_pid) || return 0
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_gone "$pid" 150; then
        log "the controller did not stop in 15 s: killed"
        kill -KILL "$pid" 2>/dev/null || true
        wait_gone "$pid" 50 || true
    fi
}

pg_as() {
    # PostgreSQL refuses to run as root
    runuser -u postgres -- "$@"
}

stop() {
    local pid

    # the gateway first: no request may reach a sandbox being removed
    if pid=$(pid_of "$RUN/nginx/nginx.pid"); then
        kill -QUIT "$pid" 2>/dev/null || true
        # open WebSockets would hold a graceful stop: bounded
        if ! wait_gone "$pid" 50; then
            kill -TERM "$pid" 2>/dev/null || true
            wait_gone "$pid" 50 || true
        fi
    fi

    # then the controller, and every sandbox with it (while Redis and
    # PostgreSQL still run: the records end Terminated/Shutdown)
    stop_controller
    if [ -d "$STATE/routes" ] && [ -x "$CONTROLLER" ]; then
        if ! timeout 120 "$CONTROLLER" "${CONTROLLER_ARGS[@]}" \
                --terminate-all >> "$RUN/controller/controller.log" 2>&1
        then
            log "could not terminate every sandbox (see" \
                "$RUN/controller/controller.log); removing the containers"
            for rt in runc runsc; do
                [ -d "$STATE/$rt" ] || continue
                q=-q; [ $rt = runsc ] && q=-quiet
                for c in $("$rt" --root "$STATE/$rt" list $q 2>/dev/null); do
                    "$rt" --root "$STATE/$rt" delete --force "$c" \
                        >/dev/null 2>&1 || true
                done
            done
        fi
    fi

    if pid=$(pid_of "$RUN/redis/redis.pid"); then
        kill -TERM "$pid" 2>/dev/null || true
        wait_gone "$pid" 100 || true
    fi
    if [ -d "$RUN/pg/data" ]; then
        pg_as "$PGBIN/pg_ctl" -D "$RUN/pg/data" -m fast -w stop \
            >/dev/null 2>&1 || true
    fi
    [ -L "$STATE" ] && rm -f "$STATE"
    log "stopped"
}

# One start or stop at a time per state directory.
exec 9> "$RUN/.lock"
flock 9

if [ "${1:-}" = stop ]; then
    stop
    exit 0
fi
[ $# -eq 0 ] || die "usage: tools/run.sh [stop]"

if [ "${LSS_NO_BUILD:-0}" != 1 ]; then
    make -s -C "$TOP" --no-print-directory stack
fi

# The nginx workers' user, unprivileged; the controller gives the
# runners' sockets to its group (--socket-group).
if ! id -u "$LSS_USER" >/dev/null 2>&1; then
    # the group may exist already (the end-to-end tests create it)
    getent group "$LSS_USER" >/dev/null || groupadd --system "$LSS_USER"
    useradd --system --gid "$LSS_USER" --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin "$LSS_USER"
    log "created the system user $LSS_USER (the gateway's workers)"
fi
for who in "$LSS_USER" postgres; do
    runuser -u "$who" -- test -x "$RUN" \
        || die "$who cannot reach $RUN:" \
               "choose an LSS_RUN that every user can traverse"
done

mkdir -p "$RUN"/{nginx/logs,redis,pg,controller,state}
chmod 0755 "$RUN" "$RUN/pg"
# Logs are the operator's alone: requests name users, keys and sandboxes.
# nginx (its master, root) creates its logs with mode 0644 less the umask
# it starts with, set below; files from earlier runs are closed here too.
chmod 0700 "$RUN/nginx/logs" "$RUN/controller"
find "$RUN/nginx/logs" "$RUN/controller" -maxdepth 1 -type f \
    -exec chmod go-rwx {} +

# Redis, as the workers' user: its socket is theirs (and root's).  One
# they cannot reach (started otherwise, earlier) is restarted.
if pid=$(pid_of "$RUN/redis/redis.pid") \
        && ! runuser -u "$LSS_USER" -- redis-cli -s "$REDIS_SOCK" PING \
             >/dev/null 2>&1; then
    kill -TERM "$pid"
    wait_gone "$pid" 100 || die "Redis (pid $pid) does not stop"
fi
chown -R "$LSS_USER:" "$RUN/redis"
if ! pid_of "$RUN/redis/redis.pid" >/dev/null; then
    runuser -u "$LSS_USER" -- redis-server --port 0 \
        --unixsocket "$REDIS_SOCK" --unixsocketperm 770 --dir "$RUN/redis" \
        --daemonize yes --pidfile "$RUN/redis/redis.pid" \
        --logfile "$RUN/redis/redis.log" --save 60 1 >/dev/null
fi

# PostgreSQL
if [ ! -d "$RUN/pg/data" ]; then
    chown postgres "$RUN/pg"
    pg_as "$PGBIN/initdb" -D "$RUN/pg/data" -A trust -U postgres >/dev/null
fi
if ! pg_as "$PGBIN/pg_ctl" -D "$RUN/pg/data" status >/dev/null 2>&1; then
    pg_as "$PGBIN/pg_ctl" -D "$RUN/pg/data" -w -l "$RUN/pg/log" \
        -o "-k $RUN/pg -c listen_addresses=''" start >/dev/null
fi
PGADMIN="host=$RUN/pg user=postgres dbname=postgres"
if ! psql "$PGADMIN" -tAc \
        "SELECT 1 FROM pg_database WHERE datname = 'llmsafespace'" \
        | grep -q 1; then
    psql "$PGADMIN" -qc "CREATE DATABASE llmsafespace"
fi

# the admin key: the first admin's, or a new one when the file was lost
if [ ! -s "$RUN/admin.key" ]; then
    key=$("$TOP/tools/llmsafespace-admin" init --db "$DB" \
          | grep '^lsp_' || true)
    if [ -z "$key" ]; then
        key=$("$TOP/tools/llmsafespace-admin" init --db "$DB" --force-new-key \
              | grep '^lsp_')
    fi
    (umask 077; echo "$key" > "$RUN/admin.key")
else
    # the schema is idempotent; applied in case it changed
    "$TOP/tools/llmsafespace-admin" init --db "$DB" >/dev/null
fi

# The controller, in its own session: Ctrl-C reaches this script, which
# stops things in order.  A controller whose binary was rebuilt is
# restarted; the sandboxes it ran are adopted by the new one.
if [ "$STATE" != "$RUN/state" ]; then
    ln -sfn "$RUN/state" "$STATE"
fi
if pid=$(controller_pid) \
        && [ "$(readlink "/proc/$pid/exe")" != "$CONTROLLER" ]; then
    log "restarting the controller (rebuilt)"
    stop_controller
fi
if ! controller_pid >/dev/null; then
    # not a process group leader: setsid execs in place, so $! is it
    (umask 077; : >> "$RUN/controller/controller.log")
    setsid "$CONTROLLER" "${CONTROLLER_ARGS[@]}" \
        >> "$RUN/controller/controller.log" 2>&1 < /dev/null &
    echo $! > "$RUN/controller/controller.pid"
fi

# nginx; a master that still maps a module since rebuilt is restarted (a
# reload would keep the old one loaded)
sed -e "s#@RUN@#$RUN#g" -e "s#@PORT@#$PORT#g" -e "s#@MODULE@#$MODULE#g" \
    -e "s#@USER@#$LSS_USER#g" -e "s#@TOP@#$TOP#g" \
    "${LSS_CONF_IN:-$TOP/conf/local.conf.in}" > "$RUN/nginx/nginx.conf"
(umask 077; nginx -q -t -p "$RUN/nginx" -c "$RUN/nginx/nginx.conf")
if pid=$(pid_of "$RUN/nginx/nginx.pid") \
        && grep -q "ngx_http_llmsafespace_module.so (deleted)" "/proc/$pid/maps"
then
    log "restarting nginx (module rebuilt)"
    kill -QUIT "$pid"
    wait_gone "$pid" 50 || { kill -TERM "$pid"; wait_gone "$pid" 50 || true; }
fi
if pid_of "$RUN/nginx/nginx.pid" >/dev/null; then
    nginx -p "$RUN/nginx" -c "$RUN/nginx/nginx.conf" -s reload
else
    (umask 077; exec nginx -p "$RUN/nginx" -c "$RUN/nginx/nginx.conf")
fi

# Ready: nginx answers, and a sandbox of the default pool is ready to be
# claimed.  Bounded; the first start builds the pool's sandboxes.
deadline=$((SECONDS + READY_TIMEOUT))
until curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] \
        || die "nginx does not answer on 127.0.0.1:$PORT;" \
               "see $RUN/nginx/logs/error.log"
    sleep 0.2
done
ready_count() {
    redis-cli -s "$REDIS_SOCK" LLEN "lss:pool:$POOL:ready" 2>/dev/null
}
until [ "$(ready_count)" -ge 1 ] 2>/dev/null; do
    controller_pid >/dev/null || {
        tail -5 "$RUN/controller/controller.log" >&2
        die "the controller exited; see $RUN/controller/controller.log"
    }
    [ $SECONDS -lt $deadline ] || {
        tail -5 "$RUN/controller/controller.log" >&2
        die "no ready sandbox in the $POOL pool after ${READY_TIMEOUT}s;" \
            "see $RUN/controller/controller.log"
    }
    sleep 0.2
done

keyfile=$RUN/admin.key
[ "$RUN" = "$TOP/run" ] && keyfile=run/admin.key
cat <<EOF

  LLMSafeSpace gateway   http://127.0.0.1:$PORT/api/v1
  admin API key          $(cat "$RUN/admin.key")   (also in $keyfile)

  try:  curl -H "Authorization: Bearer \$(cat $keyfile)" http://127.0.0.1:$PORT/api/v1/user
  then: README.md, "Quickstart": create, execute, stream, files, terminate

EOF

flock -u 9
if [ "${LSS_DETACH:-0}" = 1 ]; then
    if [ "$RUN" = "$TOP/run" ]; then
        log "running in the background; 'make stop' stops it"
    else
        log "running in the background; 'LSS_RUN=$RUN make stop' stops it"
    fi
    exit 0
fi

trap 'flock 9; stop; exit 0' INT TERM HUP
log "running; Ctrl-C stops everything"
while :; do
    sleep 5 & wait $! || true
    if ! controller_pid >/dev/null; then
        log "the controller exited; see $RUN/controller/controller.log"
        sleep 3600 & wait $! || true
    fi
done
