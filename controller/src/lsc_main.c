/*
 * llmsafespace-controller: options, the single-instance lock, and the
 * loop.  See docs/controller.md.
 */

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <curl/curl.h>

#include "lsc.h"


#ifndef LSC_TOP
#define LSC_TOP "."
#endif

#define LSC_MAX_STATE_LEN  (LSC_STATE_LEN - 4)


static volatile sig_atomic_t  lsc_stop;


static void
lsc_on_signal(int signo)
{
    (void) signo;
    lsc_stop = 1;
}


static void
lsc_usage(void)
{
    fprintf(stderr,
        "usage: llmsafespace-controller [options]\n"
        "  --state DIR          state dir (lock, bundles, run dirs)\n"
        "  --redis ADDR         unix:/path or host:port\n"
        "  --pg CONNINFO        libpq connection string\n"
        "  --rootfs DIR         root filesystems (build/rootfs)\n"
        "  --runtimes FILE      runtime index (runtimes/index.json)\n"
        "  --mkbundle PATH      bundle generator (runtimes/oci/mkbundle)\n"
        "  --pools DIR          warm pool manifests (conf/warmpools)\n"
        "  --contract DIR       Lua scripts (controller/contract)\n"
        "  --schema FILE        sql/controller.sql, applied at start\n"
        "  --tick-ms N          idle reconcile period (1000)\n"
        "  --ready-timeout-ms N runner readiness deadline (30000)\n"
        "  --max-creates N      containers started per tick (4)\n"
        "  --log-max BYTES      a sandbox's container.log rotates past (1 MiB)\n"
        "  --uid-base N         first host uid of sandbox user ns\n"
        "  --socket-group GROUP runner sockets connectable by GROUP\n"
        "  --egress-subnet CIDR addresses of egress links (10.213.0.0/16)\n"
        "  --hosts FILE         names egress resolves before the host's\n"
        "  --fair-share 0|1     CPU shared per user, not per sandbox (1)\n"
        "  --egress-allow CIDR  a private or special range egress may\n"
        "                       reach (repeatable; refused by default)\n"
        "  --terminate-all      terminate every sandbox, then exit\n");
}


/* a group name, or a number (a group need not have a name) */
static int
lsc_group_id(const char *s, int64_t *gid)
{
    struct group  *gr;
    char          *end;
    long long      n;

    if (*s >= '0' && *s <= '9') {
        n = strtoll(s, &end, 10);
        if (*end != '\0' || n < 1 || n > 0x7fffffff) {
            return -1;
        }
        *gid = n;
        return 0;
    }
    gr = getgrnam(s);
    if (gr == NULL) {
        return -1;
    }
    *gid = gr->gr_gid;
    return 0;
}


static int
lsc_options(lsc_ctx_t *ctx, int argc, char **argv)
{
    int  c, idx;

    static const struct option  opts[] = {
        { "state", required_argument, NULL, 's' },
        { "redis", required_argument, NULL, 'r' },
        { "pg", required_argument, NULL, 'p' },
        { "rootfs", required_argument, NULL, 'f' },
        { "runtimes", required_argument, NULL, 'R' },
        { "mkbundle", required_argument, NULL, 'm' },
        { "pools", required_argument, NULL, 'P' },
        { "contract", required_argument, NULL, 'c' },
        { "schema", required_argument, NULL, 'S' },
        { "tick-ms", required_argument, NULL, 't' },
        { "fair-share", required_argument, NULL, 'F' },
        { "ready-timeout-ms", required_argument, NULL, 'T' },
        { "max-creates", required_argument, NULL, 'n' },
        { "log-max", required_argument, NULL, 'L' },
        { "uid-base", required_argument, NULL, 'u' },
        { "socket-group", required_argument, NULL, 'g' },
        { "terminate-all", no_argument, NULL, 'X' },
        { "egress-subnet", required_argument, NULL, 'E' },
        { "hosts", required_argument, NULL, 'H' },
        { "egress-allow", required_argument, NULL, 'A' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };

    snprintf(ctx->state_dir, LSC_STATE_LEN, "/var/lib/llmsafespace");
    snprintf(ctx->redis_addr, LSC_PATH_LEN, "127.0.0.1:6379");
    snprintf(ctx->pg_conninfo, LSC_PATH_LEN, "dbname=llmsafespace");
    snprintf(ctx->rootfs_dir, LSC_PATH_LEN, "%s/build/rootfs", LSC_TOP);
    snprintf(ctx->runtimes_file, LSC_PATH_LEN, "%s/runtimes/index.json",
             LSC_TOP);
    snprintf(ctx->mkbundle, LSC_PATH_LEN, "%s/runtimes/oci/mkbundle",
             LSC_TOP);
    snprintf(ctx->pools_dir, LSC_PATH_LEN, "%s/conf/warmpools", LSC_TOP);
    snprintf(ctx->contract_dir, LSC_PATH_LEN, "%s/controller/contract",
             LSC_TOP);
    snprintf(ctx->schema_file, LSC_PATH_LEN, "%s/sql/controller.sql",
             LSC_TOP);
    ctx->tick_ms = 1000;
    ctx->fair_share = 1;
    ctx->ready_timeout_ms = 30000;
    ctx->max_creates_per_tick = 4;
    ctx->max_attempts = 3;
    ctx->log_max = 1 << 20;
    ctx->uid_base = 1 << 20;
    ctx->socket_gid = -1;

    while ((c = getopt_long(argc, argv, "h", opts, &idx)) != -1) {
        switch (c) {
        case 's':
            if (strlen(optarg) >= LSC_STATE_LEN) {
                fprintf(stderr, "controller: --state too long\n");
                return -1;
            }
            snprintf(ctx->state_dir, LSC_STATE_LEN, "%s", optarg);
            break;
        case 'r': snprintf(ctx->redis_addr, LSC_PATH_LEN, "%s", optarg); break;
        case 'p': snprintf(ctx->pg_conninfo, LSC_PATH_LEN, "%s", optarg);
                  break;
        case 'f': snprintf(ctx->rootfs_dir, LSC_PATH_LEN, "%s", optarg); break;
        case 'R': snprintf(ctx->runtimes_file, LSC_PATH_LEN, "%s", optarg);
                  break;
        case 'm': snprintf(ctx->mkbundle, LSC_PATH_LEN, "%s", optarg); break;
        case 'P': snprintf(ctx->pools_dir, LSC_PATH_LEN, "%s", optarg); break;
        case 'c': snprintf(ctx->contract_dir, LSC_PATH_LEN, "%s", optarg);
                  break;
        case 'S': snprintf(ctx->schema_file, LSC_PATH_LEN, "%s", optarg);
                  break;
        case 't': ctx->tick_ms = atoi(optarg); break;
        case 'F': ctx->fair_share = strcmp(optarg, "0") != 0; break;
        case 'T': ctx->ready_timeout_ms = atoi(optarg); break;
        case 'n': ctx->max_creates_per_tick = atoi(optarg); break;
        case 'L': ctx->log_max = atoll(optarg); break;
        case 'u': ctx->uid_base = atoll(optarg); break;
        case 'g':
            if (lsc_group_id(optarg, &ctx->socket_gid) != 0) {
                fprintf(stderr, "controller: --socket-group: no group %s\n",
                        optarg);
                return -1;
            }
            break;
        case 'X': ctx->terminate_all = 1; break;
        case 'E':
            if (lsc_net_config(ctx, optarg) != 0) {
                fprintf(stderr, "controller: --egress-subnet: a network of "
                        "at least /18 (a /30 per sandbox)\n");
                return -1;
            }
            break;
        case 'H': snprintf(ctx->hosts_file, LSC_PATH_LEN, "%s", optarg);
                  break;
        case 'A':
            if (lsc_net_allow(ctx, optarg) != 0) {
                fprintf(stderr, "controller: --egress-allow: an IPv4 "
                        "network (a.b.c.d/n, host bits zero), at most %d\n",
                        LSC_EGRESS_ALLOW_MAX);
                return -1;
            }
            break;
        default:
            lsc_usage();
            return -1;
        }
    }

    if (ctx->tick_ms < 10 || ctx->tick_ms > 60000
        || ctx->max_creates_per_tick < 1 || ctx->ready_timeout_ms < 100
        || ctx->uid_base < 65536 || ctx->log_max < 4096)
    {
        fprintf(stderr, "controller: option out of range\n");
        return -1;
    }
    if (ctx->state_dir[0] != '/'
        || strlen(ctx->state_dir) > LSC_MAX_STATE_LEN)
    {
        fprintf(stderr, "controller: --state must be an absolute path of "
                "at most %d bytes (the runner's socket path must fit a "
                "unix socket address)\n", LSC_MAX_STATE_LEN);
        return -1;
    }
    return 0;
}


static int
lsc_mkdirs(lsc_ctx_t *ctx)
{
    static const char  *sub[] = { "", "/bundles", "/sandboxes", "/runc",
                                  "/runsc", "/routes", NULL };
    const char        **s;
    char                path[LSC_PATH_LEN + 16];

    for (s = sub; *s != NULL; s++) {
        snprintf(path, sizeof(path), "%s%s", ctx->state_dir, *s);
        if (mkdir(path, 0711) == -1 && errno != EEXIST) {
            fprintf(stderr, "controller: %s: %s\n", path, strerror(errno));
            return -1;
        }
    }
    return 0;
}


/*
 * One controller per state dir: the others wait here for the lock and
 * take over when its holder exits (or dies: the kernel drops the lock
 * with the process).  O_CLOEXEC: the container runtimes we start must
 * not hold the lock after we are gone.
 */
static int
lsc_lock(lsc_ctx_t *ctx)
{
    char  path[LSC_PATH_LEN + 32], pid[32];
    int   fd, n;

    snprintf(path, sizeof(path), "%s/controller.lock", ctx->state_dir);
    fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd == -1) {
        lsc_log("error", "%s: %s", path, strerror(errno));
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) == -1) {
        if (errno != EWOULDBLOCK) {
            close(fd);
            return -1;
        }
        lsc_log("info", "another controller holds %s: waiting", path);
        while (flock(fd, LOCK_EX) == -1) {
            if (errno != EINTR || lsc_stop) {
                close(fd);
                return -1;
            }
        }
    }
    n = snprintf(pid, sizeof(pid), "%d\n", (int) getpid());
    if (ftruncate(fd, 0) == -1 || pwrite(fd, pid, n, 0) != n) {
        lsc_log("warn", "cannot write the pid to %s", path);
    }
    ctx->lock_fd = fd;
    return 0;
}


int
main(int argc, char **argv)
{
    lsc_ctx_t         *ctx;
    struct sigaction   sa;
    int                n, block, status;
    int64_t            now, last;

    ctx = calloc(1, sizeof(lsc_ctx_t));
    if (ctx == NULL || lsc_options(ctx, argc, argv) != 0) {
        free(ctx);
        return 2;
    }
    ctx->driver = &lsc_local_driver;
    ctx->lock_fd = -1;

    /* no SA_RESTART: a blocked flock or Redis read returns on a signal */
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = lsc_on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stderr, NULL, _IOLBF, 0);
    umask(022);

    if (lsc_mkdirs(ctx) != 0 || lsc_lock(ctx) != 0
        || lsc_local_prepare(ctx) != 0)
    {
        return 1;
    }
    lsc_log("info", "started (pid %d, state %s)", (int) getpid(),
            ctx->state_dir);

    if (curl_global_init(CURL_GLOBAL_DEFAULT) != 0
        || lsc_runtimes_load(ctx) != 0)
    {
        return 1;
    }

    /* PostgreSQL may come up after us: wait for it, interruptibly */
    while (!lsc_stop && lsc_pg_apply_schema(ctx) != 0) {
        sleep(1);
    }

    status = 0;
    if (ctx->terminate_all) {
        if (lsc_stop || lsc_terminate_all(ctx) != 0) {
            status = 1;
        }
        /* one pass, no loop */
        lsc_stop = 1;
    }

    /*
     * A full reconcile every tick (50 ms while work is in flight, else
     * --tick-ms), cut short by any request or event; in between, while
     * sandboxes start, readiness probes every 5 ms.
     */
    last = 0;
    while (!lsc_stop) {
        now = lsc_now_ms();
        if (!ctx->busy || now - last >= 50) {
            if (lsc_reconcile(ctx) != 0) {
                ctx->busy = 0;
            }
            last = lsc_now_ms();
        } else if (lsc_ready_pass(ctx) == 0) {
            /* all started sandboxes ready: the next full pass now */
            last = 0;
        }
        block = ctx->busy ? 5 : ctx->tick_ms;
        n = lsc_redis_read_requests(ctx, block);
        if (n < 0 && !lsc_stop) {
            usleep(block * 1000);
        }
    }

    if (ctx->terminate_all) {
        lsc_log("info", "stopping: %s", status == 0
                ? "every sandbox terminated" : "some sandboxes remain");
    } else {
        lsc_log("info", "stopping: sandboxes keep running");
    }
    if (ctx->redis != NULL) {
        redisFree(ctx->redis);
    }
    if (ctx->pg != NULL) {
        PQfinish(ctx->pg);
    }
    curl_global_cleanup();
    for (n = 0; n < (int) ctx->npools; n++) {
        json_decref(ctx->pools[n].scripts);
    }
    json_decref(ctx->runtimes);
    free(ctx->claim_lua);
    free(ctx->publish_lua);
    free(ctx->retire_lua);
    free(ctx->sb);
    close(ctx->lock_fd);
    free(ctx);
    return status;
}
