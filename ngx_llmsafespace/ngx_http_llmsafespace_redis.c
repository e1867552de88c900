
/*
 * Copyright (C) LLMSafeSpace
 *
 * Asynchronous Redis client: one pipelined connection per worker.
 *
 * nginx owns the socket (ngx_event_connect_peer, its event loop, its
 * timers); hiredis only formats commands and decodes replies.  hiredis'
 * own async API is not used: in Debian's 0.14.1 it has no timeouts and its
 * cleanup closes a descriptor nginx would close as well.
 *
 * Every command, sent or not, sits in one FIFO in the order its bytes are
 * in the output stream, so the n-th reply belongs to the FIFO's head.  A
 * command that times out or is cancelled keeps its place (its handler is
 * just cleared) and its late reply is discarded.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
#include <ngx_event_connect.h>
#include <ngx_http.h>

#include "ngx_http_llmsafespace.h"


/* how often an idle connection is probed, so /healthz stays truthful */
#define NGX_HTTP_LLMSAFESPACE_REDIS_PING      3000

#define NGX_HTTP_LLMSAFESPACE_REDIS_BUFSIZE   16384


/* connection states */
#define NGX_HTTP_LLMSAFESPACE_REDIS_OFF        0   /* not running */
#define NGX_HTTP_LLMSAFESPACE_REDIS_BACKOFF    1   /* waiting to reconnect */
#define NGX_HTTP_LLMSAFESPACE_REDIS_CONNECTING 2
#define NGX_HTTP_LLMSAFESPACE_REDIS_CONNECTED  3
#define NGX_HTTP_LLMSAFESPACE_REDIS_PARKED     4   /* closed while exiting,
                                                      reconnects on demand */

/* command kinds */
#define NGX_HTTP_LLMSAFESPACE_REDIS_USER       0
#define NGX_HTTP_LLMSAFESPACE_REDIS_SETUP      1   /* AUTH, SELECT */
#define NGX_HTTP_LLMSAFESPACE_REDIS_PROBE      2   /* PING */


struct ngx_http_llmsafespace_redis_cmd_s {
    ngx_queue_t                              queue;
    ngx_http_llmsafespace_redis_handler_pt   handler;  /* NULL: nobody
                                                          waits any more */
    void                                    *data;
    ngx_msec_t                               start;
    uint64_t                                 end;      /* stream offset
                                                          past its bytes */
    ngx_uint_t                               kind;
};


typedef struct {
    ngx_http_llmsafespace_redis_conf_t      *conf;
    ngx_log_t                               *log;
    ngx_uint_t                               state;

    ngx_peer_connection_t                    peer;
    ngx_connection_t                        *conn;
    redisReader                             *reader;

    ngx_queue_t                              fifo;
    ngx_uint_t                               nfifo;
    ngx_uint_t                               nwaiting; /* handlers due */
    ngx_uint_t                               setup_pending;
    ngx_uint_t                               ready;

    /* output stream of this connection, formatted commands back to back */
    u_char                                  *out;
    size_t                                   out_pos;
    size_t                                   out_last;
    size_t                                   out_size;
    uint64_t                                 out_total;
    uint64_t                                 sent_total;

    ngx_event_t                              backoff_ev;
    ngx_event_t                              ping_ev;
    ngx_event_t                              expire_ev;
    ngx_msec_t                               backoff;

    ngx_uint_t                               reconnects;
    ngx_uint_t                               errors;
    ngx_uint_t                               timeouts;
} ngx_http_llmsafespace_redis_t;


static ngx_int_t ngx_http_llmsafespace_redis_parse_param(ngx_conf_t *cf,
    ngx_http_llmsafespace_redis_conf_t *rcf, ngx_str_t *value);
static void ngx_http_llmsafespace_redis_connect(void);
static void ngx_http_llmsafespace_redis_connected(void);
static void ngx_http_llmsafespace_redis_fail(const char *reason);
static void ngx_http_llmsafespace_redis_close(void);
static void ngx_http_llmsafespace_redis_park(void);
static void ngx_http_llmsafespace_redis_read_handler(ngx_event_t *rev);
static void ngx_http_llmsafespace_redis_write_handler(ngx_event_t *wev);
static ngx_int_t ngx_http_llmsafespace_redis_test_connect(
    ngx_connection_t *c);
static ngx_int_t ngx_http_llmsafespace_redis_flush(void);
static ngx_int_t ngx_http_llmsafespace_redis_dispatch(redisReply *reply);
static void ngx_http_llmsafespace_redis_settle(void);
static ngx_http_llmsafespace_redis_cmd_t *ngx_http_llmsafespace_redis_push(
    int argc, const char **argv, const size_t *argvlen, ngx_uint_t kind);
static void ngx_http_llmsafespace_redis_expire_handler(ngx_event_t *ev);
static void ngx_http_llmsafespace_redis_arm_expire(void);
static void ngx_http_llmsafespace_redis_backoff_handler(ngx_event_t *ev);
static void ngx_http_llmsafespace_redis_ping_handler(ngx_event_t *ev);
static void ngx_http_llmsafespace_redis_free_fifo(ngx_queue_t *q,
    ngx_int_t rc);


/* one client per worker process */
static ngx_http_llmsafespace_redis_t  ngx_http_llmsafespace_redis;


char *
ngx_http_llmsafespace_redis_parse(ngx_conf_t *cf,
    ngx_http_llmsafespace_redis_conf_t *rcf)
{
    ngx_str_t   *value;
    ngx_url_t    u;
    ngx_uint_t   i;

    value = cf->args->elts;

    rcf->connect_timeout = 1000;
    rcf->timeout = 1000;
    rcf->backoff_min = 100;
    rcf->backoff_max = 5000;
    rcf->max_queue = 1024;
    rcf->database = 0;
    ngx_str_null(&rcf->password);

    ngx_memzero(&u, sizeof(ngx_url_t));

    u.url = value[1];
    u.default_port = 6379;

    if (ngx_parse_url(cf->pool, &u) != NGX_OK) {
        if (u.err) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "%V: %s in \"%V\"", &value[0], u.err,
                               &u.url);
        }

        return NGX_CONF_ERROR;
    }

    if (u.naddrs == 0 || u.addrs == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "%V: no address for \"%V\"", &value[0], &u.url);
        return NGX_CONF_ERROR;
    }

    if (u.uri.len && u.family != AF_UNIX) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "%V: invalid address \"%V\"", &value[0], &u.url);
        return NGX_CONF_ERROR;
    }

    /* a name resolving to several addresses: the first one is used */
    rcf->addr = &u.addrs[0];
    rcf->server = value[1];

    for (i = 2; i < cf->args->nelts; i++) {
        if (ngx_http_llmsafespace_redis_parse_param(cf, rcf, &value[i])
            != NGX_OK)
        {
            rcf->addr = NULL;
            return NGX_CONF_ERROR;
        }
    }

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_llmsafespace_redis_parse_param(ngx_conf_t *cf,
    ngx_http_llmsafespace_redis_conf_t *rcf, ngx_str_t *value)
{
    u_char      *eq, *colon;
    ngx_int_t    n;
    ngx_str_t    name, arg, s;
    ngx_str_t   *args;
    ngx_msec_t   ms, max;

    args = cf->args->elts;

    eq = ngx_strlchr(value->data, value->data + value->len, '=');
    if (eq == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "%V: invalid parameter \"%V\"", &args[0], value);
        return NGX_ERROR;
    }

    name.data = value->data;
    name.len = eq - value->data;
    arg.data = eq + 1;
    arg.len = value->len - name.len - 1;

    if (name.len == 8 && ngx_strncmp(name.data, "password", 8) == 0) {
        if (arg.len == 0) {
            goto invalid;
        }

        rcf->password = arg;
        return NGX_OK;
    }

    if (name.len == 2 && ngx_strncmp(name.data, "db", 2) == 0) {
        n = ngx_atoi(arg.data, arg.len);
        if (n == NGX_ERROR || n > 65535) {
            goto invalid;
        }

        rcf->database = n;
        return NGX_OK;
    }

    if (name.len == 5 && ngx_strncmp(name.data, "queue", 5) == 0) {
        n = ngx_atoi(arg.data, arg.len);
        if (n == NGX_ERROR || n == 0) {
            goto invalid;
        }

        rcf->max_queue = n;
        return NGX_OK;
    }

    if ((name.len == 15
         && ngx_strncmp(name.data, "connect_timeout", 15) == 0)
        || (name.len == 7 && ngx_strncmp(name.data, "timeout", 7) == 0))
    {
        ms = ngx_parse_time(&arg, 0);
        if (ms == (ngx_msec_t) NGX_ERROR || ms == 0) {
            goto invalid;
        }

        if (name.len == 7) {
            rcf->timeout = ms;

        } else {
            rcf->connect_timeout = ms;
        }

        return NGX_OK;
    }

    if (name.len == 7 && ngx_strncmp(name.data, "backoff", 7) == 0) {
        colon = ngx_strlchr(arg.data, arg.data + arg.len, ':');
        if (colon == NULL) {
            goto invalid;
        }

        s.data = arg.data;
        s.len = colon - arg.data;

        ms = ngx_parse_time(&s, 0);
        if (ms == (ngx_msec_t) NGX_ERROR || ms == 0) {
            goto invalid;
        }

        s.data = colon + 1;
        s.len = arg.data + arg.len - s.data;

        max = ngx_parse_time(&s, 0);
        if (max == (ngx_msec_t) NGX_ERROR || max < ms) {
            goto invalid;
        }

        rcf->backoff_min = ms;
        rcf->backoff_max = max;
        return NGX_OK;
    }

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "%V: unknown parameter \"%V\"", &args[0], &name);
    return NGX_ERROR;

invalid:

    /* never echo a password back into a log */

    if (name.len == 8 && ngx_strncmp(name.data, "password", 8) == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "%V: empty \"password\" value", &args[0]);
        return NGX_ERROR;
    }

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "%V: invalid \"%V\" value \"%V\"", &args[0], &name,
                       &arg);
    return NGX_ERROR;
}


ngx_int_t
ngx_http_llmsafespace_redis_init_process(ngx_cycle_t *cycle,
    ngx_http_llmsafespace_redis_conf_t *rcf)
{
    ngx_http_llmsafespace_redis_t  *rd;

    rd = &ngx_http_llmsafespace_redis;

    ngx_memzero(rd, sizeof(ngx_http_llmsafespace_redis_t));

    rd->conf = rcf;
    rd->log = cycle->log;
    rd->backoff = rcf->backoff_min;

    ngx_queue_init(&rd->fifo);

    /*
     * Timers are cancelable, so none holds back a graceful exit, except
     * the one of commands that requests wait for: a worker must not exit
     * under a request that is still to be answered.
     */

    rd->backoff_ev.handler = ngx_http_llmsafespace_redis_backoff_handler;
    rd->backoff_ev.log = cycle->log;
    rd->backoff_ev.data = rd;
    rd->backoff_ev.cancelable = 1;

    rd->ping_ev.handler = ngx_http_llmsafespace_redis_ping_handler;
    rd->ping_ev.log = cycle->log;
    rd->ping_ev.data = rd;
    rd->ping_ev.cancelable = 1;

    rd->expire_ev.handler = ngx_http_llmsafespace_redis_expire_handler;
    rd->expire_ev.log = cycle->log;
    rd->expire_ev.data = rd;

    rd->state = NGX_HTTP_LLMSAFESPACE_REDIS_BACKOFF;

    ngx_http_llmsafespace_redis_connect();

    return NGX_OK;
}


/*
 * The worker is going away: requests still waiting are abandoned with it,
 * so no handler is called (a handler would wake a request in a process
 * that no longer runs its events).
 */

void
ngx_http_llmsafespace_redis_exit_process(ngx_cycle_t *cycle)
{
    ngx_queue_t                     q;
    ngx_http_llmsafespace_redis_t  *rd;

    rd = &ngx_http_llmsafespace_redis;

    if (rd->conf == NULL) {
        return;
    }

    ngx_http_llmsafespace_redis_close();

    if (rd->backoff_ev.timer_set) {
        ngx_del_timer(&rd->backoff_ev);
    }

    ngx_queue_init(&q);

    if (!ngx_queue_empty(&rd->fifo)) {
        ngx_queue_add(&q, &rd->fifo);
        ngx_queue_init(&rd->fifo);
    }

    rd->nfifo = 0;
    rd->nwaiting = 0;
    rd->state = NGX_HTTP_LLMSAFESPACE_REDIS_OFF;
    rd->conf = NULL;

    ngx_http_llmsafespace_redis_free_fifo(&q, NGX_DECLINED);

    if (rd->out) {
        ngx_free(rd->out);
        rd->out = NULL;
    }
}


ngx_http_llmsafespace_redis_cmd_t *
ngx_http_llmsafespace_redis_command(int argc, const char **argv,
    const size_t *argvlen, ngx_http_llmsafespace_redis_handler_pt handler,
    void *data)
{
    ngx_http_llmsafespace_redis_t      *rd;
    ngx_http_llmsafespace_redis_cmd_t  *cmd;

    rd = &ngx_http_llmsafespace_redis;

    if (rd->conf == NULL) {
        return NULL;
    }

    if (rd->state == NGX_HTTP_LLMSAFESPACE_REDIS_PARKED) {
        /* closed for a graceful exit, yet a request still needs it */
        ngx_http_llmsafespace_redis_connect();
    }

    if (rd->state != NGX_HTTP_LLMSAFESPACE_REDIS_CONNECTING
        && rd->state != NGX_HTTP_LLMSAFESPACE_REDIS_CONNECTED)
    {
        /* in backoff: refuse at once rather than make the client wait */
        rd->errors++;
        return NULL;
    }

    if (rd->nfifo >= rd->conf->max_queue) {
        rd->errors++;

        ngx_log_error(NGX_LOG_WARN, rd->log, 0,
                      "redis %V: queue full (%ui commands)",
                      &rd->conf->server, rd->nfifo);
        return NULL;
    }

    cmd = ngx_http_llmsafespace_redis_push(argc, argv, argvlen,
                                           NGX_HTTP_LLMSAFESPACE_REDIS_USER);
    if (cmd == NULL) {
        rd->errors++;
        return NULL;
    }

    cmd->handler = handler;
    cmd->data = data;

    rd->nwaiting++;

    if (!rd->expire_ev.timer_set) {
        ngx_add_timer(&rd->expire_ev, rd->conf->timeout);
    }

    return cmd;
}


void
ngx_http_llmsafespace_redis_cancel(ngx_http_llmsafespace_redis_cmd_t *cmd)
{
    ngx_http_llmsafespace_redis_t  *rd;

    rd = &ngx_http_llmsafespace_redis;

    if (cmd->handler == NULL) {
        return;
    }

    /* the command keeps its place in the FIFO; its reply is dropped */

    cmd->handler = NULL;
    cmd->data = NULL;

    if (rd->nwaiting) {
        rd->nwaiting--;
    }

    if (rd->nwaiting == 0 && rd->expire_ev.timer_set) {
        ngx_del_timer(&rd->expire_ev);
    }
}


void
ngx_http_llmsafespace_redis_stats(ngx_http_llmsafespace_redis_stats_t *stats)
{
    ngx_queue_t                        *q;
    ngx_http_llmsafespace_redis_t      *rd;
    ngx_http_llmsafespace_redis_cmd_t  *cmd;

    rd = &ngx_http_llmsafespace_redis;

    ngx_memzero(stats, sizeof(ngx_http_llmsafespace_redis_stats_t));

    stats->up = rd->ready;
    stats->reconnects = rd->reconnects;
    stats->errors = rd->errors;
    stats->timeouts = rd->timeouts;

    if (rd->conf == NULL) {
        return;
    }

    for (q = ngx_queue_head(&rd->fifo);
         q != ngx_queue_sentinel(&rd->fifo);
         q = ngx_queue_next(q))
    {
        cmd = ngx_queue_data(q, ngx_http_llmsafespace_redis_cmd_t, queue);

        if (rd->state == NGX_HTTP_LLMSAFESPACE_REDIS_CONNECTED
            && cmd->end <= rd->sent_total)
        {
            stats->in_flight++;

        } else {
            stats->queued++;
        }
    }
}


/*
 * Formats a command at the end of the output stream and of the FIFO.  The
 * write itself is posted: commands issued while handling one event leave
 * in one write, and no handler can run from inside the caller.
 */

static ngx_http_llmsafespace_redis_cmd_t *
ngx_http_llmsafespace_redis_push(int argc, const char **argv,
    const size_t *argvlen, ngx_uint_t kind)
{
    int                                 len;
    char                               *buf;
    u_char                             *p;
    size_t                              need, size;
    ngx_connection_t                   *c;
    ngx_http_llmsafespace_redis_t      *rd;
    ngx_http_llmsafespace_redis_cmd_t  *cmd;

    rd = &ngx_http_llmsafespace_redis;

    buf = NULL;

    len = redisFormatCommandArgv(&buf, argc, argv, argvlen);
    if (len < 0 || buf == NULL) {
        ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                      "redis %V: could not format a command",
                      &rd->conf->server);
        return NULL;
    }

    cmd = ngx_alloc(sizeof(ngx_http_llmsafespace_redis_cmd_t), rd->log);
    if (cmd == NULL) {
        redisFreeCommand(buf);
        return NULL;
    }

    need = rd->out_last + len;

    if (need > rd->out_size && rd->out_pos) {
        ngx_memmove(rd->out, rd->out + rd->out_pos,
                    rd->out_last - rd->out_pos);
        rd->out_last -= rd->out_pos;
        rd->out_pos = 0;
        need = rd->out_last + len;
    }

    if (need > rd->out_size) {
        size = ngx_max(rd->out_size * 2, NGX_HTTP_LLMSAFESPACE_REDIS_BUFSIZE);

        while (size < need) {
            size *= 2;
        }

        p = ngx_alloc(size, rd->log);
        if (p == NULL) {
            ngx_free(cmd);
            redisFreeCommand(buf);
            return NULL;
        }

        if (rd->out) {
            ngx_memcpy(p, rd->out + rd->out_pos, rd->out_last - rd->out_pos);
            ngx_free(rd->out);
        }

        rd->out_last -= rd->out_pos;
        rd->out_pos = 0;
        rd->out = p;
        rd->out_size = size;
    }

    rd->out_last = ngx_cpymem(rd->out + rd->out_last, buf, len) - rd->out;
    rd->out_total += len;

    redisFreeCommand(buf);

    cmd->handler = NULL;
    cmd->data = NULL;
    cmd->start = ngx_current_msec;
    cmd->end = rd->out_total;
    cmd->kind = kind;

    ngx_queue_insert_tail(&rd->fifo, &cmd->queue);
    rd->nfifo++;

    if (rd->state == NGX_HTTP_LLMSAFESPACE_REDIS_CONNECTED) {
        c = rd->conn;
        c->idle = 0;

        if (c->write->ready && !c->write->posted) {
            ngx_post_event(c->write, &ngx_posted_events);
        }

        if (!c->read->timer_set) {
            ngx_add_timer(c->read, rd->conf->timeout);
        }
    }

    return cmd;
}


static void
ngx_http_llmsafespace_redis_connect(void)
{
    ngx_int_t                        rc;
    ngx_file_info_t                  fi;
    struct sockaddr_un              *saun;
    ngx_http_llmsafespace_redis_t   *rd;
    ngx_http_llmsafespace_redis_cmd_t *cmd;
    const char                      *argv[2];
    size_t                           argvlen[2];
    u_char                           db[NGX_INT_T_LEN];

    rd = &ngx_http_llmsafespace_redis;

    rd->out_pos = 0;
    rd->out_last = 0;
    rd->out_total = 0;
    rd->sent_total = 0;
    rd->setup_pending = 0;
    rd->ready = 0;

    /*
     * nginx logs a missing unix socket at "crit", which is routine here
     * (Redis removes its socket when it stops): look first.
     */

    if (rd->conf->addr->sockaddr->sa_family == AF_UNIX) {
        saun = (struct sockaddr_un *) rd->conf->addr->sockaddr;

        if (ngx_file_info(saun->sun_path, &fi) == NGX_FILE_ERROR) {
            ngx_log_error(NGX_LOG_ERR, rd->log, ngx_errno,
                          "redis %V: cannot connect", &rd->conf->server);
            goto failed;
        }
    }

    rd->reader = redisReaderCreate();
    if (rd->reader == NULL) {
        goto failed;
    }

    rd->state = NGX_HTTP_LLMSAFESPACE_REDIS_CONNECTING;

    /* AUTH and SELECT go first, pipelined with whatever follows */

    if (rd->conf->password.len) {
        argv[0] = "AUTH";
        argvlen[0] = 4;
        argv[1] = (const char *) rd->conf->password.data;
        argvlen[1] = rd->conf->password.len;

        cmd = ngx_http_llmsafespace_redis_push(2, argv, argvlen,
                                          NGX_HTTP_LLMSAFESPACE_REDIS_SETUP);
        if (cmd == NULL) {
            goto failed;
        }

        rd->setup_pending++;
    }

    if (rd->conf->database) {
        argv[0] = "SELECT";
        argvlen[0] = 6;
        argv[1] = (const char *) db;
        argvlen[1] = ngx_sprintf(db, "%i", rd->conf->database) - db;

        cmd = ngx_http_llmsafespace_redis_push(2, argv, argvlen,
                                          NGX_HTTP_LLMSAFESPACE_REDIS_SETUP);
        if (cmd == NULL) {
            goto failed;
        }

        rd->setup_pending++;
    }

    ngx_memzero(&rd->peer, sizeof(ngx_peer_connection_t));

    rd->peer.sockaddr = rd->conf->addr->sockaddr;
    rd->peer.socklen = rd->conf->addr->socklen;
    rd->peer.name = &rd->conf->server;
    rd->peer.get = ngx_event_get_peer;
    rd->peer.log = rd->log;
    rd->peer.log_error = NGX_ERROR_ERR;

    rc = ngx_event_connect_peer(&rd->peer);

    if (rc == NGX_ERROR || rc == NGX_BUSY || rc == NGX_DECLINED) {
        goto failed;
    }

    rd->conn = rd->peer.connection;
    rd->conn->data = rd;
    rd->conn->read->handler = ngx_http_llmsafespace_redis_read_handler;
    rd->conn->write->handler = ngx_http_llmsafespace_redis_write_handler;
    rd->conn->read->cancelable = 1;
    rd->conn->write->cancelable = 1;

    if (rc == NGX_AGAIN) {
        ngx_add_timer(rd->conn->write, rd->conf->connect_timeout);
        return;
    }

    ngx_http_llmsafespace_redis_connected();

    return;

failed:

    /* only setup commands can be queued here: nobody to tell */
    ngx_http_llmsafespace_redis_fail(NULL);
}


static void
ngx_http_llmsafespace_redis_connected(void)
{
    ngx_connection_t               *c;
    ngx_http_llmsafespace_redis_t  *rd;

    rd = &ngx_http_llmsafespace_redis;
    c = rd->conn;

    if (c->write->timer_set) {
        ngx_del_timer(c->write);
    }

    if (ngx_tcp_nodelay(c) != NGX_OK) {
        ngx_http_llmsafespace_redis_fail("setsockopt(TCP_NODELAY) failed");
        return;
    }

    rd->state = NGX_HTTP_LLMSAFESPACE_REDIS_CONNECTED;

    ngx_log_error(NGX_LOG_INFO, rd->log, 0, "redis %V: connected",
                  &rd->conf->server);

    if (rd->setup_pending == 0) {
        rd->ready = 1;
        rd->backoff = rd->conf->backoff_min;
    }

    ngx_add_timer(&rd->ping_ev, NGX_HTTP_LLMSAFESPACE_REDIS_PING);

    if (rd->nfifo) {
        ngx_add_timer(c->read, rd->conf->timeout);
    }

    if (ngx_http_llmsafespace_redis_flush() != NGX_OK) {
        return;
    }

    ngx_http_llmsafespace_redis_settle();
}


/*
 * The connection is unusable: close it, fail every command (oldest first)
 * and retry after the backoff delay, which doubles up to its maximum.
 */

static void
ngx_http_llmsafespace_redis_fail(const char *reason)
{
    ngx_queue_t                     q;
    ngx_http_llmsafespace_redis_t  *rd;

    rd = &ngx_http_llmsafespace_redis;

    if (reason) {
        ngx_log_error(NGX_LOG_ERR, rd->log, 0, "redis %V: %s",
                      &rd->conf->server, reason);
    }

    ngx_http_llmsafespace_redis_close();

    /* the state changes first: handlers issuing new commands are refused */

    rd->state = NGX_HTTP_LLMSAFESPACE_REDIS_BACKOFF;

    ngx_add_timer(&rd->backoff_ev, rd->backoff);

    rd->backoff = ngx_min(rd->backoff * 2, rd->conf->backoff_max);

    ngx_queue_init(&q);

    if (!ngx_queue_empty(&rd->fifo)) {
        ngx_queue_add(&q, &rd->fifo);
        ngx_queue_init(&rd->fifo);
    }

    rd->nfifo = 0;
    rd->nwaiting = 0;

    ngx_http_llmsafespace_redis_free_fifo(&q, NGX_ERROR);
}


/* Closes the socket and stops its timers; the FIFO is left to the caller. */

static void
ngx_http_llmsafespace_redis_close(void)
{
    ngx_http_llmsafespace_redis_t  *rd;

    rd = &ngx_http_llmsafespace_redis;

    if (rd->conn) {
        ngx_close_connection(rd->conn);
        rd->conn = NULL;
    }

    if (rd->reader) {
        redisReaderFree(rd->reader);
        rd->reader = NULL;
    }

    if (rd->ping_ev.timer_set) {
        ngx_del_timer(&rd->ping_ev);
    }

    if (rd->expire_ev.timer_set) {
        ngx_del_timer(&rd->expire_ev);
    }

    rd->out_pos = 0;
    rd->out_last = 0;
    rd->ready = 0;
    rd->setup_pending = 0;
}


/*
 * Graceful shutdown with nothing in flight: close so the old worker can
 * exit at once; a request finishing in it may still reconnect on demand.
 */

static void
ngx_http_llmsafespace_redis_park(void)
{
    ngx_http_llmsafespace_redis_t  *rd;

    rd = &ngx_http_llmsafespace_redis;

    ngx_log_debug0(NGX_LOG_DEBUG_EVENT, rd->log, 0,
                   "redis: closing idle connection for exit");

    ngx_http_llmsafespace_redis_close();

    rd->state = NGX_HTTP_LLMSAFESPACE_REDIS_PARKED;
}


static void
ngx_http_llmsafespace_redis_free_fifo(ngx_queue_t *q, ngx_int_t rc)
{
    ngx_queue_t                            *h;
    ngx_http_llmsafespace_redis_t          *rd;
    ngx_http_llmsafespace_redis_cmd_t      *cmd;
    ngx_http_llmsafespace_redis_handler_pt  handler;

    rd = &ngx_http_llmsafespace_redis;

    while (!ngx_queue_empty(q)) {
        h = ngx_queue_head(q);
        ngx_queue_remove(h);

        cmd = ngx_queue_data(h, ngx_http_llmsafespace_redis_cmd_t, queue);

        handler = cmd->handler;
        cmd->handler = NULL;

        if (handler && rc != NGX_DECLINED) {
            rd->errors++;
            handler(cmd->data, NULL, rc);
        }

        ngx_free(cmd);
    }
}


static void
ngx_http_llmsafespace_redis_write_handler(ngx_event_t *wev)
{
    ngx_connection_t               *c;
    ngx_http_llmsafespace_redis_t  *rd;

    c = wev->data;
    rd = c->data;

    if (rd->state == NGX_HTTP_LLMSAFESPACE_REDIS_CONNECTING) {

        if (wev->timedout) {
            ngx_http_llmsafespace_redis_fail("connect timed out");
            return;
        }

        if (ngx_http_llmsafespace_redis_test_connect(c) != NGX_OK) {
            ngx_http_llmsafespace_redis_fail(NULL);
            return;
        }

        ngx_http_llmsafespace_redis_connected();
        return;
    }

    if (ngx_http_llmsafespace_redis_flush() != NGX_OK) {
        return;
    }

    ngx_http_llmsafespace_redis_settle();
}


static ngx_int_t
ngx_http_llmsafespace_redis_test_connect(ngx_connection_t *c)
{
    int                             err;
    socklen_t                       len;
    ngx_http_llmsafespace_redis_t  *rd;

    rd = c->data;

    err = 0;
    len = sizeof(int);

    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, (void *) &err, &len) == -1) {
        err = ngx_socket_errno;
    }

    if (err) {
        ngx_log_error(NGX_LOG_ERR, rd->log, err,
                      "redis %V: connect() failed", &rd->conf->server);
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* Writes as much of the output stream as the socket takes. */

static ngx_int_t
ngx_http_llmsafespace_redis_flush(void)
{
    ssize_t                         n;
    ngx_connection_t               *c;
    ngx_http_llmsafespace_redis_t  *rd;

    rd = &ngx_http_llmsafespace_redis;
    c = rd->conn;

    while (rd->out_pos < rd->out_last) {

        n = c->send(c, rd->out + rd->out_pos, rd->out_last - rd->out_pos);

        if (n == NGX_AGAIN) {
            break;
        }

        if (n == NGX_ERROR || n == 0) {
            ngx_http_llmsafespace_redis_fail("send() failed");
            return NGX_ERROR;
        }

        rd->out_pos += n;
        rd->sent_total += n;
    }

    if (rd->out_pos == rd->out_last) {
        rd->out_pos = 0;
        rd->out_last = 0;
    }

    if (ngx_handle_write_event(c->write, 0) != NGX_OK) {
        ngx_http_llmsafespace_redis_fail("cannot watch the socket");
        return NGX_ERROR;
    }

    return NGX_OK;
}


static void
ngx_http_llmsafespace_redis_read_handler(ngx_event_t *rev)
{
    int                             status;
    void                           *reply;
    ssize_t                         n;
    ngx_uint_t                      progress;
    ngx_connection_t               *c;
    ngx_http_llmsafespace_redis_t  *rd;
    u_char                          buf[NGX_HTTP_LLMSAFESPACE_REDIS_BUFSIZE];

    c = rev->data;
    rd = c->data;

    if (c->close) {
        /* ngx_close_idle_connections(): graceful shutdown began */

        if (rd->nfifo == 0) {
            ngx_http_llmsafespace_redis_park();
            return;
        }

        /* replies are still due: settle() parks it once they are in */
        c->close = 0;
    }

    if (rd->state == NGX_HTTP_LLMSAFESPACE_REDIS_CONNECTING) {

        /* a refused connect may be reported as readable first */

        if (ngx_http_llmsafespace_redis_test_connect(c) != NGX_OK) {
            ngx_http_llmsafespace_redis_fail(NULL);
            return;
        }

        ngx_http_llmsafespace_redis_connected();

        if (rd->state != NGX_HTTP_LLMSAFESPACE_REDIS_CONNECTED) {
            return;
        }
    }

    if (rev->timedout) {
        rd->timeouts++;
        ngx_http_llmsafespace_redis_fail("no reply within the timeout, "
                                         "closing the connection");
        return;
    }

    progress = 0;

    /* edge-triggered: drain the socket */

    while (rev->ready) {

        n = c->recv(c, buf, sizeof(buf));

        if (n == NGX_AGAIN) {
            break;
        }

        if (n == 0) {
            ngx_http_llmsafespace_redis_fail("server closed the connection");
            return;
        }

        if (n == NGX_ERROR) {
            ngx_http_llmsafespace_redis_fail("recv() failed");
            return;
        }

        if (redisReaderFeed(rd->reader, (const char *) buf, n) != REDIS_OK) {
            ngx_http_llmsafespace_redis_fail("reply buffer failed");
            return;
        }

        for ( ;; ) {
            reply = NULL;

            status = redisReaderGetReply(rd->reader, &reply);

            if (status != REDIS_OK) {
                ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                              "redis %V: protocol error: %s",
                              &rd->conf->server, rd->reader->errstr);
                ngx_http_llmsafespace_redis_fail(NULL);
                return;
            }

            if (reply == NULL) {
                break;
            }

            if (ngx_http_llmsafespace_redis_dispatch(reply) != NGX_OK) {
                return;
            }

            progress = 1;
        }
    }

    if (ngx_handle_read_event(rev, 0) != NGX_OK) {
        ngx_http_llmsafespace_redis_fail("cannot watch the socket");
        return;
    }

    /* a reply came: the no-reply watchdog starts over */

    if (rd->nfifo == 0) {
        if (rev->timer_set) {
            ngx_del_timer(rev);
        }

    } else if (progress || !rev->timer_set) {
        ngx_add_timer(rev, rd->conf->timeout);
    }

    ngx_http_llmsafespace_redis_settle();
}


/*
 * Hands one reply to the FIFO's head.  Returns NGX_ERROR when the
 * connection was failed (and freed) meanwhile.
 */

static ngx_int_t
ngx_http_llmsafespace_redis_dispatch(redisReply *reply)
{
    ngx_queue_t                            *q;
    ngx_http_llmsafespace_redis_t          *rd;
    ngx_http_llmsafespace_redis_cmd_t      *cmd;
    ngx_http_llmsafespace_redis_handler_pt  handler;

    rd = &ngx_http_llmsafespace_redis;

    q = ngx_queue_head(&rd->fifo);
    cmd = ngx_queue_data(q, ngx_http_llmsafespace_redis_cmd_t, queue);

    if (ngx_queue_empty(&rd->fifo) || rd->sent_total < cmd->end) {
        /* a reply to nothing we asked: the stream is out of step */
        freeReplyObject(reply);
        ngx_http_llmsafespace_redis_fail("unexpected reply");
        return NGX_ERROR;
    }

    ngx_queue_remove(q);
    rd->nfifo--;

    switch (cmd->kind) {

    case NGX_HTTP_LLMSAFESPACE_REDIS_SETUP:

        if (reply->type == REDIS_REPLY_ERROR) {
            ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                          "redis %V: connection setup failed: %*s",
                          &rd->conf->server, (size_t) reply->len,
                          reply->str);
            ngx_free(cmd);
            freeReplyObject(reply);
            ngx_http_llmsafespace_redis_fail(NULL);
            return NGX_ERROR;
        }

        if (--rd->setup_pending == 0) {
            rd->ready = 1;
            rd->backoff = rd->conf->backoff_min;
        }

        break;

    case NGX_HTTP_LLMSAFESPACE_REDIS_PROBE:

        if (reply->type == REDIS_REPLY_ERROR) {
            ngx_log_error(NGX_LOG_WARN, rd->log, 0,
                          "redis %V: PING answered: %*s",
                          &rd->conf->server, (size_t) reply->len,
                          reply->str);
        }

        break;

    default: /* NGX_HTTP_LLMSAFESPACE_REDIS_USER */

        ngx_http_llmsafespace_metrics_latency(NGX_HTTP_LLMSAFESPACE_LAT_REDIS,
                                              ngx_current_msec - cmd->start);

        /* cleared first: the handler may cancel its own command */

        handler = cmd->handler;

        if (handler) {
            cmd->handler = NULL;
            rd->nwaiting--;
            handler(cmd->data, reply, NGX_OK);
        }
    }

    ngx_free(cmd);
    freeReplyObject(reply);

    return NGX_OK;
}


/*
 * After an event: mark the connection idle when nothing is in flight so a
 * graceful shutdown may close it, and close it ourselves if one is on.
 */

static void
ngx_http_llmsafespace_redis_settle(void)
{
    ngx_http_llmsafespace_redis_t  *rd;

    rd = &ngx_http_llmsafespace_redis;

    if (rd->nwaiting == 0 && rd->expire_ev.timer_set) {
        ngx_del_timer(&rd->expire_ev);
    }

    if (rd->state != NGX_HTTP_LLMSAFESPACE_REDIS_CONNECTED) {
        return;
    }

    if (rd->nfifo) {
        rd->conn->idle = 0;
        return;
    }

    if (ngx_exiting) {
        ngx_http_llmsafespace_redis_park();
        return;
    }

    rd->conn->idle = 1;
}


/*
 * Commands expire in FIFO order (one timeout for all), so one timer set for
 * the oldest one still waiting is enough.
 */

static void
ngx_http_llmsafespace_redis_expire_handler(ngx_event_t *ev)
{
    ngx_queue_t                        *q;
    ngx_msec_int_t                      left;
    ngx_http_llmsafespace_redis_t      *rd;
    ngx_http_llmsafespace_redis_cmd_t  *cmd;
    ngx_http_llmsafespace_redis_handler_pt  handler;

    rd = ev->data;

    for (q = ngx_queue_head(&rd->fifo);
         q != ngx_queue_sentinel(&rd->fifo);
         q = ngx_queue_next(q))
    {
        cmd = ngx_queue_data(q, ngx_http_llmsafespace_redis_cmd_t, queue);

        if (cmd->handler == NULL) {
            continue;
        }

        left = (ngx_msec_int_t) (cmd->start + rd->conf->timeout
                                 - ngx_current_msec);
        if (left > 0) {
            break;
        }

        /* the handler may queue more commands: they go to the tail */

        handler = cmd->handler;
        cmd->handler = NULL;
        rd->nwaiting--;
        rd->timeouts++;

        handler(cmd->data, NULL, NGX_HTTP_LLMSAFESPACE_REDIS_TIMEDOUT);
    }

    ngx_http_llmsafespace_redis_arm_expire();
}


static void
ngx_http_llmsafespace_redis_arm_expire(void)
{
    ngx_queue_t                        *q;
    ngx_msec_int_t                      left;
    ngx_http_llmsafespace_redis_t      *rd;
    ngx_http_llmsafespace_redis_cmd_t  *cmd;

    rd = &ngx_http_llmsafespace_redis;

    for (q = ngx_queue_head(&rd->fifo);
         q != ngx_queue_sentinel(&rd->fifo);
         q = ngx_queue_next(q))
    {
        cmd = ngx_queue_data(q, ngx_http_llmsafespace_redis_cmd_t, queue);

        if (cmd->handler == NULL) {
            continue;
        }

        left = (ngx_msec_int_t) (cmd->start + rd->conf->timeout
                                 - ngx_current_msec);

        ngx_add_timer(&rd->expire_ev, left > 0 ? (ngx_msec_t) left : 1);
        return;
    }

    if (rd->expire_ev.timer_set) {
        ngx_del_timer(&rd->expire_ev);
    }
}


static void
ngx_http_llmsafespace_redis_backoff_handler(ngx_event_t *ev)
{
    ngx_http_llmsafespace_redis_t  *rd;

    rd = ev->data;

    if (rd->state != NGX_HTTP_LLMSAFESPACE_REDIS_BACKOFF) {
        return;
    }

    rd->reconnects++;

    ngx_http_llmsafespace_redis_connect();
}


static void
ngx_http_llmsafespace_redis_ping_handler(ngx_event_t *ev)
{
    const char                     *argv[1];
    size_t                          argvlen[1];
    ngx_http_llmsafespace_redis_t  *rd;

    rd = ev->data;

    if (rd->state != NGX_HTTP_LLMSAFESPACE_REDIS_CONNECTED || ngx_exiting) {
        return;
    }

    /* busy connections are watched by the no-reply timer already */

    if (rd->nfifo == 0) {
        argv[0] = "PING";
        argvlen[0] = 4;

        (void) ngx_http_llmsafespace_redis_push(1, argv, argvlen,
                                          NGX_HTTP_LLMSAFESPACE_REDIS_PROBE);
    }

    ngx_add_timer(&rd->ping_ev, NGX_HTTP_LLMSAFESPACE_REDIS_PING);
}
