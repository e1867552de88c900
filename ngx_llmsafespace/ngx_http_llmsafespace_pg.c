
/*
 * Copyright (C) LLMSafeSpace
 *
 * The asynchronous PostgreSQL client of a worker: a few libpq connections in
 * nonblocking mode, each with at most one query in flight, fed from one
 * bounded FIFO.  nginx only watches the descriptors libpq owns; it never
 * closes them (PQfinish does).  Reads are level-triggered because
 * PQconsumeInput() does not promise to read until EAGAIN, and an
 * edge-triggered descriptor with unread bytes would never fire again.
 */


#include "ngx_http_llmsafespace.h"

#include <netdb.h>
#include <arpa/inet.h>


#define NGX_HTTP_LLMSAFESPACE_PG_CLOSED      0
#define NGX_HTTP_LLMSAFESPACE_PG_CONNECTING  1
#define NGX_HTTP_LLMSAFESPACE_PG_IDLE        2
#define NGX_HTTP_LLMSAFESPACE_PG_BUSY        3   /* a caller's query */
#define NGX_HTTP_LLMSAFESPACE_PG_PING        4   /* our health check */

/* an idle connection is probed this often so /healthz is truthful */
#define NGX_HTTP_LLMSAFESPACE_PG_PING_INTERVAL  10000

#define NGX_HTTP_LLMSAFESPACE_PG_MAX_PARAMS  65535


typedef struct {
    PGconn                             *pg;
    ngx_connection_t                   *c;        /* wraps PQsocket() */
    ngx_uint_t                          state;
    ngx_uint_t                          index;
    ngx_http_llmsafespace_pg_query_t   *query;    /* BUSY */
    PGresult                           *result;
    ngx_event_t                         timer;    /* backoff, connect, ping */
    ngx_msec_t                          backoff;
    unsigned                            flushing:1;
} ngx_http_llmsafespace_pg_conn_t;


struct ngx_http_llmsafespace_pg_query_s {
    ngx_queue_t                         queue;
    ngx_http_llmsafespace_pg_conn_t    *conn;     /* in flight on */
    ngx_http_llmsafespace_pg_handler_pt handler;  /* NULL: cancelled */
    void                               *data;
    ngx_event_t                         timer;
    ngx_msec_t                          start;
    int                                 nparams;
    char                               *sql;
    char                              **values;
    unsigned                            queued:1;
    unsigned                            done:1;
};


typedef struct {
    ngx_http_llmsafespace_pg_conf_t    *conf;
    ngx_http_llmsafespace_pg_conn_t    *conns;
    ngx_uint_t                          nconns;
    ngx_queue_t                         queue;
    ngx_uint_t                          queued;
    ngx_event_t                         dispatch;
    ngx_log_t                          *log;
    ngx_uint_t                          reconnects;
    ngx_uint_t                          errors;
    ngx_uint_t                          timeouts;
    unsigned                            active:1;
} ngx_http_llmsafespace_pg_t;


static char *ngx_http_llmsafespace_pg_conninfo(ngx_conf_t *cf,
    ngx_http_llmsafespace_pg_conf_t *pcf);
static ngx_int_t ngx_http_llmsafespace_pg_resolve(ngx_conf_t *cf,
    PQconninfoOption *opts, ngx_array_t *out);
static const char *ngx_http_llmsafespace_pg_option(PQconninfoOption *opts,
    const char *keyword);
static ngx_int_t ngx_http_llmsafespace_pg_append(ngx_array_t *out,
    const char *key, u_char *val, size_t len);
static ngx_int_t ngx_http_llmsafespace_pg_list(ngx_array_t *list,
    ngx_uint_t first, u_char *val, size_t len);
static u_char *ngx_http_llmsafespace_pg_redact(ngx_pool_t *pool, char *msg);
static void ngx_http_llmsafespace_pg_connect(
    ngx_http_llmsafespace_pg_conn_t *pc);
static void ngx_http_llmsafespace_pg_connect_step(
    ngx_http_llmsafespace_pg_conn_t *pc, PostgresPollingStatusType poll);
static ngx_int_t ngx_http_llmsafespace_pg_watch(
    ngx_http_llmsafespace_pg_conn_t *pc, ngx_uint_t write);
static void ngx_http_llmsafespace_pg_unwatch(
    ngx_http_llmsafespace_pg_conn_t *pc);
static void ngx_http_llmsafespace_pg_close(
    ngx_http_llmsafespace_pg_conn_t *pc);
static void ngx_http_llmsafespace_pg_lost(ngx_http_llmsafespace_pg_conn_t *pc,
    const char *why);
static void ngx_http_llmsafespace_pg_ready(
    ngx_http_llmsafespace_pg_conn_t *pc);
static void ngx_http_llmsafespace_pg_send(ngx_http_llmsafespace_pg_conn_t *pc,
    ngx_http_llmsafespace_pg_query_t *q);
static void ngx_http_llmsafespace_pg_process(
    ngx_http_llmsafespace_pg_conn_t *pc);
static void ngx_http_llmsafespace_pg_done(ngx_http_llmsafespace_pg_conn_t *pc);
static void ngx_http_llmsafespace_pg_finish(ngx_http_llmsafespace_pg_query_t *q,
    PGresult *res, ngx_int_t rc);
static void ngx_http_llmsafespace_pg_fail_queue(void);
static void ngx_http_llmsafespace_pg_run_queue(void);
static ngx_uint_t ngx_http_llmsafespace_pg_count(ngx_uint_t state);
static void ngx_http_llmsafespace_pg_event_handler(ngx_event_t *ev);
static void ngx_http_llmsafespace_pg_timer_handler(ngx_event_t *ev);
static void ngx_http_llmsafespace_pg_query_timeout(ngx_event_t *ev);
static void ngx_http_llmsafespace_pg_dispatch_handler(ngx_event_t *ev);
static void ngx_http_llmsafespace_pg_notice(void *arg, const char *message);


static ngx_http_llmsafespace_pg_t  ngx_http_llmsafespace_pg;


char *
ngx_http_llmsafespace_pg_parse(ngx_conf_t *cf,
    ngx_http_llmsafespace_pg_conf_t *pcf)
{
    u_char     *p;
    ngx_int_t   n;
    ngx_str_t  *value, s;
    ngx_msec_t  ms;
    ngx_uint_t  i;

    value = cf->args->elts;

    if (pcf->conninfo.data != NULL) {
        return "is duplicate";
    }

    pcf->connections = 2;
    pcf->connect_timeout = 2000;
    pcf->timeout = 1000;
    pcf->backoff_min = 100;
    pcf->backoff_max = 5000;
    pcf->max_queue = 1024;

    for (i = 2; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "connections=", 12) == 0) {
            n = ngx_atoi(value[i].data + 12, value[i].len - 12);
            if (n <= 0 || n > 64) {
                goto invalid;
            }
            pcf->connections = n;
            continue;
        }

        if (ngx_strncmp(value[i].data, "queue=", 6) == 0) {
            n = ngx_atoi(value[i].data + 6, value[i].len - 6);
            if (n <= 0) {
                goto invalid;
            }
            pcf->max_queue = n;
            continue;
        }

        if (ngx_strncmp(value[i].data, "connect_timeout=", 16) == 0) {
            s.data = value[i].data + 16;
            s.len = value[i].len - 16;
            ms = ngx_parse_time(&s, 0);
            if (ms == (ngx_msec_t) NGX_ERROR || ms == 0) {
                goto invalid;
            }
            pcf->connect_timeout = ms;
            continue;
        }

        if (ngx_strncmp(value[i].data, "timeout=", 8) == 0) {
            s.data = value[i].data + 8;
            s.len = value[i].len - 8;
            ms = ngx_parse_time(&s, 0);
            if (ms == (ngx_msec_t) NGX_ERROR || ms == 0) {
                goto invalid;
            }
            pcf->timeout = ms;
            continue;
        }

        if (ngx_strncmp(value[i].data, "backoff=", 8) == 0) {
            s.data = value[i].data + 8;
            p = ngx_strlchr(s.data, value[i].data + value[i].len, ':');
            if (p == NULL) {
                goto invalid;
            }
            s.len = p - s.data;
            ms = ngx_parse_time(&s, 0);
            if (ms == (ngx_msec_t) NGX_ERROR || ms == 0) {
                goto invalid;
            }
            pcf->backoff_min = ms;

            s.data = p + 1;
            s.len = value[i].data + value[i].len - s.data;
            ms = ngx_parse_time(&s, 0);
            if (ms == (ngx_msec_t) NGX_ERROR || ms < pcf->backoff_min) {
                goto invalid;
            }
            pcf->backoff_max = ms;
            continue;
        }

        goto invalid;
    }

    return ngx_http_llmsafespace_pg_conninfo(cf, pcf);

invalid:

    /* a parameter is never the connection string, so it holds no password */
    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "\"%V\" has an invalid parameter \"%V\"",
                       &value[0], &value[i]);

    return NGX_CONF_ERROR;
}


/*
 * Checks the connection string and rewrites it in key='value' form with a
 * "hostaddr" for every host name: libpq would otherwise resolve names with a
 * blocking getaddrinfo() inside the worker; here, as nginx does for upstream
 * servers, names are resolved once, when the configuration is read.
 */

static char *
ngx_http_llmsafespace_pg_conninfo(ngx_conf_t *cf,
    ngx_http_llmsafespace_pg_conf_t *pcf)
{
    char              *err;
    size_t             len;
    u_char            *nul, *msg;
    ngx_str_t         *value;
    ngx_array_t        out;
    PQconninfoOption  *opts, *o;

    value = cf->args->elts;

    err = NULL;
    opts = PQconninfoParse((char *) value[1].data, &err);

    if (opts == NULL) {
        if (err == NULL) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"%V\": out of memory parsing the connection "
                               "string", &value[0]);
            return NGX_CONF_ERROR;
        }

        msg = (u_char *) err;

        /* libpq quotes pieces of the string, which may be a password */
        if (ngx_strstr(value[1].data, "password") != NULL
            || ngx_strlchr(value[1].data, value[1].data + value[1].len, '@')
               != NULL)
        {
            msg = ngx_http_llmsafespace_pg_redact(cf->pool, err);
            if (msg == NULL) {
                PQfreemem(err);
                return NGX_CONF_ERROR;
            }
        }

        len = ngx_strlen(msg);
        while (len && (msg[len - 1] == '\n' || msg[len - 1] == ' ')) {
            len--;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" has an invalid connection string: %*s",
                           &value[0], len, msg);
        PQfreemem(err);
        return NGX_CONF_ERROR;
    }

    if (ngx_array_init(&out, cf->pool, 256, 1) != NGX_OK) {
        goto failed;
    }

    for (o = opts; o->keyword != NULL; o++) {
        if (o->val == NULL
            || ngx_strcmp(o->keyword, "host") == 0
            || ngx_strcmp(o->keyword, "hostaddr") == 0
            || ngx_strcmp(o->keyword, "port") == 0)
        {
            continue;
        }

        if (ngx_http_llmsafespace_pg_append(&out, o->keyword,
                                            (u_char *) o->val,
                                            ngx_strlen(o->val))
            != NGX_OK)
        {
            goto failed;
        }
    }

    if (ngx_http_llmsafespace_pg_resolve(cf, opts, &out) != NGX_OK) {
        goto failed;
    }

    nul = ngx_array_push(&out);
    if (nul == NULL) {
        goto failed;
    }

    *nul = '\0';

    pcf->conninfo.data = out.elts;
    pcf->conninfo.len = out.nelts - 1;

    PQconninfoFree(opts);

    return NGX_CONF_OK;

failed:

    PQconninfoFree(opts);

    return NGX_CONF_ERROR;
}


static ngx_int_t
ngx_http_llmsafespace_pg_resolve(ngx_conf_t *cf, PQconninfoOption *opts,
    ngx_array_t *out)
{
    int               rc;
    u_char           *p, *end, *hp, *pp, *pend, *hend, *host, *port;
    size_t            hlen, plen;
    ngx_str_t        *value;
    ngx_uint_t        nports, first;
    ngx_array_t       hosts, addrs, ports;
    struct addrinfo   hints, *res, *ai;
    u_char            text[NGX_SOCKADDR_STRLEN + 1];
    u_char            name[NI_MAXHOST + 1];
    struct in6_addr   a6;

    value = cf->args->elts;

    host = (u_char *) ngx_http_llmsafespace_pg_option(opts, "host");
    port = (u_char *) ngx_http_llmsafespace_pg_option(opts, "port");
    p = (u_char *) ngx_http_llmsafespace_pg_option(opts, "hostaddr");

    if (host == NULL || *host == '\0' || (p != NULL && *p != '\0')) {

        /* the default (a unix socket) or addresses given: nothing to do */

        if (host && ngx_http_llmsafespace_pg_append(out, "host", host,
                                                    ngx_strlen(host))
                    != NGX_OK)
        {
            return NGX_ERROR;
        }

        if (p && ngx_http_llmsafespace_pg_append(out, "hostaddr", p,
                                                 ngx_strlen(p))
                 != NGX_OK)
        {
            return NGX_ERROR;
        }

        if (port && ngx_http_llmsafespace_pg_append(out, "port", port,
                                                    ngx_strlen(port))
                    != NGX_OK)
        {
            return NGX_ERROR;
        }

        return NGX_OK;
    }

    if (ngx_array_init(&hosts, cf->pool, 64, 1) != NGX_OK
        || ngx_array_init(&addrs, cf->pool, 64, 1) != NGX_OK
        || ngx_array_init(&ports, cf->pool, 16, 1) != NGX_OK)
    {
        return NGX_ERROR;
    }

    nports = 0;
    if (port) {
        nports = 1;
        for (pp = port; *pp; pp++) {
            nports += (*pp == ',');
        }
    }

    hp = host;
    pp = port;
    first = 1;

    for ( ;; ) {
        hend = (u_char *) ngx_strchr(hp, ',');
        if (hend == NULL) {
            hend = hp + ngx_strlen(hp);
        }

        hlen = hend - hp;

        /* the port of this host, when a list of ports is given */
        plen = 0;
        if (nports > 1) {
            if (pp == NULL) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "\"%V\": the port list does not match the "
                                   "host list", &value[0]);
                return NGX_ERROR;
            }

            pend = (u_char *) ngx_strchr(pp, ',');
            plen = pend ? (size_t) (pend - pp) : ngx_strlen(pp);
        }

        if (hlen == 0 || hp[0] == '/' || hp[0] == '@') {

            /* the default host or a unix socket: no address */
            if (ngx_http_llmsafespace_pg_list(&hosts, first, hp, hlen)
                    != NGX_OK
                || ngx_http_llmsafespace_pg_list(&addrs, first, NULL, 0)
                   != NGX_OK
                || (nports > 1
                    && ngx_http_llmsafespace_pg_list(&ports, first, pp, plen)
                       != NGX_OK))
            {
                return NGX_ERROR;
            }

            first = 0;

        } else {

            if (hlen > NI_MAXHOST) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "\"%V\": host name too long", &value[0]);
                return NGX_ERROR;
            }

            ngx_memcpy(name, hp, hlen);
            name[hlen] = '\0';

            ngx_memzero(&hints, sizeof(struct addrinfo));
            hints.ai_family = AF_UNSPEC;
            hints.ai_socktype = SOCK_STREAM;

            if (inet_pton(AF_INET6, (char *) name, &a6) == 1
                || inet_pton(AF_INET, (char *) name, &a6) == 1)
            {
                hints.ai_flags = AI_NUMERICHOST;
            }

            res = NULL;
            rc = getaddrinfo((char *) name, NULL, &hints, &res);
            if (rc != 0) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "\"%V\" cannot resolve host \"%s\": %s",
                                   &value[0], name, gai_strerror(rc));
                return NGX_ERROR;
            }

            /* every address of the name, as libpq itself would try them */
            for (ai = res; ai; ai = ai->ai_next) {
                if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6) {
                    continue;
                }

                end = text + ngx_sock_ntop(ai->ai_addr, ai->ai_addrlen,
                                           text, NGX_SOCKADDR_STRLEN, 0);

                if (ngx_http_llmsafespace_pg_list(&hosts, first, hp, hlen)
                        != NGX_OK
                    || ngx_http_llmsafespace_pg_list(&addrs, first, text,
                                                     end - text)
                       != NGX_OK
                    || (nports > 1
                        && ngx_http_llmsafespace_pg_list(&ports, first, pp,
                                                         plen)
                           != NGX_OK))
                {
                    freeaddrinfo(res);
                    return NGX_ERROR;
                }

                first = 0;
            }

            freeaddrinfo(res);
        }

        if (nports > 1) {
            pp = (u_char *) ngx_strchr(pp, ',');
            if (pp) {
                pp++;
            }
        }

        if (*hend == '\0') {
            break;
        }

        hp = hend + 1;
    }

    if (nports > 1 && pp != NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\": the port list does not match the host "
                           "list", &value[0]);
        return NGX_ERROR;
    }

    if (ngx_http_llmsafespace_pg_append(out, "host", hosts.elts,
                                        hosts.nelts)
        != NGX_OK
        || ngx_http_llmsafespace_pg_append(out, "hostaddr", addrs.elts,
                                           addrs.nelts)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (nports > 1) {
        return ngx_http_llmsafespace_pg_append(out, "port", ports.elts,
                                               ports.nelts);
    }

    if (port) {
        return ngx_http_llmsafespace_pg_append(out, "port", port,
                                               ngx_strlen(port));
    }

    return NGX_OK;
}


static const char *
ngx_http_llmsafespace_pg_option(PQconninfoOption *opts, const char *keyword)
{
    PQconninfoOption  *o;

    for (o = opts; o->keyword != NULL; o++) {
        if (ngx_strcmp(o->keyword, keyword) == 0) {
            return o->val;
        }
    }

    return NULL;
}


/* appends one element of a comma-separated list (host, hostaddr, port) */

static ngx_int_t
ngx_http_llmsafespace_pg_list(ngx_array_t *list, ngx_uint_t first,
    u_char *val, size_t len)
{
    u_char  *p;

    p = ngx_array_push_n(list, len + (first ? 0 : 1));
    if (p == NULL) {
        return NGX_ERROR;
    }

    if (!first) {
        *p++ = ',';
    }

    if (len) {
        ngx_memcpy(p, val, len);
    }

    return NGX_OK;
}


/* appends  key='value' , quoting as libpq's conninfo syntax requires */

static ngx_int_t
ngx_http_llmsafespace_pg_append(ngx_array_t *out, const char *key,
    u_char *val, size_t len)
{
    u_char  *p;
    size_t   klen, n, i;

    klen = ngx_strlen(key);

    n = 0;
    for (i = 0; i < len; i++) {
        n += (val[i] == '\'' || val[i] == '\\');
    }

    p = ngx_array_push_n(out, (out->nelts ? 1 : 0) + klen + 3 + len + n);
    if (p == NULL) {
        return NGX_ERROR;
    }

    if (out->nelts != klen + 3 + len + n) {
        *p++ = ' ';
    }

    p = ngx_cpymem(p, key, klen);
    *p++ = '=';
    *p++ = '\'';

    for (i = 0; i < len; i++) {
        if (val[i] == '\'' || val[i] == '\\') {
            *p++ = '\\';
        }
        *p++ = val[i];
    }

    *p = '\'';

    return NGX_OK;
}


/*
 * Replaces every "quoted" piece of a libpq message by "...", except single
 * characters such as the "=" of 'missing "=" after ...'.
 */

static u_char *
ngx_http_llmsafespace_pg_redact(ngx_pool_t *pool, char *msg)
{
    char    *src, *end;
    u_char  *dst, *out;

    /* each quoted piece is at least 2 bytes and becomes at most 5 */
    out = ngx_pnalloc(pool, 3 * ngx_strlen(msg) + 1);
    if (out == NULL) {
        return NULL;
    }

    dst = out;

    for (src = msg; *src; src++) {
        if (*src != '"') {
            *dst++ = *src;
            continue;
        }

        end = ngx_strchr(src + 1, '"');

        if (end == NULL) {
            dst = ngx_cpymem(dst, "\"...", 4);
            break;
        }

        if (end - src <= 2) {
            dst = ngx_cpymem(dst, src, end - src + 1);

        } else {
            dst = ngx_cpymem(dst, "\"...\"", 5);
        }

        src = end;
    }

    *dst = '\0';

    return out;
}


ngx_int_t
ngx_http_llmsafespace_pg_init_process(ngx_cycle_t *cycle,
    ngx_http_llmsafespace_pg_conf_t *pcf)
{
    ngx_uint_t                        i;
    ngx_http_llmsafespace_pg_t       *pg;
    ngx_http_llmsafespace_pg_conn_t  *pc;

    pg = &ngx_http_llmsafespace_pg;

    if (pcf->conninfo.len == 0 || pcf->connections == 0) {
        return NGX_OK;
    }

    ngx_memzero(pg, sizeof(ngx_http_llmsafespace_pg_t));

    pg->conf = pcf;
    pg->log = cycle->log;
    pg->nconns = pcf->connections;

    pg->conns = ngx_calloc(pg->nconns * sizeof(ngx_http_llmsafespace_pg_conn_t),
                           cycle->log);
    if (pg->conns == NULL) {
        return NGX_ERROR;
    }

    ngx_queue_init(&pg->queue);

    pg->dispatch.handler = ngx_http_llmsafespace_pg_dispatch_handler;
    pg->dispatch.data = pg;
    pg->dispatch.log = cycle->log;

    pg->active = 1;

    for (i = 0; i < pg->nconns; i++) {
        pc = &pg->conns[i];

        pc->index = i;
        pc->backoff = pcf->backoff_min;
        pc->timer.handler = ngx_http_llmsafespace_pg_timer_handler;
        pc->timer.data = pc;
        pc->timer.log = cycle->log;

        /* nothing else waits on these: a graceful quit need not */
        pc->timer.cancelable = 1;

        ngx_http_llmsafespace_pg_connect(pc);
    }

    return NGX_OK;
}


void
ngx_http_llmsafespace_pg_exit_process(ngx_cycle_t *cycle)
{
    ngx_uint_t                         i;
    ngx_queue_t                       *qq;
    ngx_http_llmsafespace_pg_t        *pg;
    ngx_http_llmsafespace_pg_conn_t   *pc;
    ngx_http_llmsafespace_pg_query_t  *q;

    pg = &ngx_http_llmsafespace_pg;

    if (!pg->active) {
        return;
    }

    /* no reconnect, no dispatch from here on */
    pg->active = 0;

    if (pg->dispatch.posted) {
        ngx_delete_posted_event(&pg->dispatch);
    }

    for (i = 0; i < pg->nconns; i++) {
        pc = &pg->conns[i];

        q = pc->query;
        pc->query = NULL;

        ngx_http_llmsafespace_pg_close(pc);

        if (pc->timer.timer_set) {
            ngx_del_timer(&pc->timer);
        }

        if (q) {
            ngx_http_llmsafespace_pg_finish(q, NULL, NGX_ERROR);
        }
    }

    while (!ngx_queue_empty(&pg->queue)) {
        qq = ngx_queue_head(&pg->queue);
        q = ngx_queue_data(qq, ngx_http_llmsafespace_pg_query_t, queue);

        ngx_queue_remove(qq);
        q->queued = 0;
        pg->queued--;

        ngx_http_llmsafespace_pg_finish(q, NULL, NGX_ERROR);
    }

    ngx_free(pg->conns);
    pg->conns = NULL;
    pg->nconns = 0;
}


ngx_http_llmsafespace_pg_query_t *
ngx_http_llmsafespace_pg_query(const char *sql, int nparams,
    const char *const *values, ngx_http_llmsafespace_pg_handler_pt handler,
    void *data)
{
    u_char                            *p;
    size_t                             size, len;
    ngx_int_t                          i;
    ngx_http_llmsafespace_pg_t        *pg;
    ngx_http_llmsafespace_pg_query_t  *q;

    pg = &ngx_http_llmsafespace_pg;

    if (!pg->active || sql == NULL || handler == NULL
        || nparams < 0 || nparams > NGX_HTTP_LLMSAFESPACE_PG_MAX_PARAMS)
    {
        return NULL;
    }

    if (pg->queued >= pg->conf->max_queue) {
        ngx_log_error(NGX_LOG_WARN, pg->log, 0,
                      "llmsafespace postgres: queue full (%ui queries), "
                      "query refused", pg->queued);
        return NULL;
    }

    /* fail fast: every connection is down and waiting out its backoff */
    if (ngx_http_llmsafespace_pg_count(NGX_HTTP_LLMSAFESPACE_PG_CLOSED)
        == pg->nconns)
    {
        return NULL;
    }

    /* a quitting worker does not reconnect, so only open ones count */
    if (ngx_exiting
        && ngx_http_llmsafespace_pg_count(NGX_HTTP_LLMSAFESPACE_PG_CONNECTING)
           + ngx_http_llmsafespace_pg_count(NGX_HTTP_LLMSAFESPACE_PG_CLOSED)
           == pg->nconns)
    {
        return NULL;
    }

    size = sizeof(ngx_http_llmsafespace_pg_query_t)
           + nparams * sizeof(char *) + ngx_strlen(sql) + 1;

    for (i = 0; i < nparams; i++) {
        if (values[i]) {
            size += ngx_strlen(values[i]) + 1;
        }
    }

    q = ngx_alloc(size, pg->log);
    if (q == NULL) {
        return NULL;
    }

    ngx_memzero(q, sizeof(ngx_http_llmsafespace_pg_query_t));

    p = (u_char *) q + sizeof(ngx_http_llmsafespace_pg_query_t);

    q->values = (char **) p;
    p += nparams * sizeof(char *);

    for (i = 0; i < nparams; i++) {
        if (values[i] == NULL) {
            q->values[i] = NULL;
            continue;
        }

        len = ngx_strlen(values[i]) + 1;
        q->values[i] = (char *) p;
        p = ngx_cpymem(p, values[i], len);
    }

    q->sql = (char *) p;
    ngx_memcpy(p, sql, ngx_strlen(sql) + 1);

    q->nparams = nparams;
    q->handler = handler;
    q->data = data;
    q->start = ngx_current_msec;

    /*
     * Not cancelable: the timeout bounds the wait, and a worker that is
     * quitting gracefully should answer the requests waiting on it.
     */
    q->timer.handler = ngx_http_llmsafespace_pg_query_timeout;
    q->timer.data = q;
    q->timer.log = pg->log;
    ngx_add_timer(&q->timer, pg->conf->timeout);

    ngx_queue_insert_tail(&pg->queue, &q->queue);
    q->queued = 1;
    pg->queued++;

    /* sent from a posted event, so the handler never runs from in here */
    if (!pg->dispatch.posted) {
        ngx_post_event(&pg->dispatch, &ngx_posted_events);
    }

    return q;
}


void
ngx_http_llmsafespace_pg_cancel(ngx_http_llmsafespace_pg_query_t *q)
{
    ngx_http_llmsafespace_pg_t  *pg;

    pg = &ngx_http_llmsafespace_pg;

    /* after exit_process every query has been finished and freed */
    if (q == NULL || !pg->active || q->done) {
        return;
    }

    q->handler = NULL;

    if (q->queued) {
        ngx_queue_remove(&q->queue);
        q->queued = 0;
        pg->queued--;

        if (q->timer.timer_set) {
            ngx_del_timer(&q->timer);
        }

        ngx_free(q);
    }

    /* in flight: freed when its result or its timeout arrives */
}


void
ngx_http_llmsafespace_pg_stats(ngx_http_llmsafespace_pg_stats_t *stats)
{
    ngx_http_llmsafespace_pg_t  *pg;

    pg = &ngx_http_llmsafespace_pg;

    ngx_memzero(stats, sizeof(ngx_http_llmsafespace_pg_stats_t));

    if (!pg->active) {
        return;
    }

    stats->up = ngx_http_llmsafespace_pg_count(NGX_HTTP_LLMSAFESPACE_PG_IDLE)
                + ngx_http_llmsafespace_pg_count(NGX_HTTP_LLMSAFESPACE_PG_BUSY)
                + ngx_http_llmsafespace_pg_count(NGX_HTTP_LLMSAFESPACE_PG_PING);
    stats->queued = pg->queued;
    stats->in_flight =
                ngx_http_llmsafespace_pg_count(NGX_HTTP_LLMSAFESPACE_PG_BUSY);
    stats->reconnects = pg->reconnects;
    stats->errors = pg->errors;
    stats->timeouts = pg->timeouts;
}


static ngx_uint_t
ngx_http_llmsafespace_pg_count(ngx_uint_t state)
{
    ngx_uint_t                   i, n;
    ngx_http_llmsafespace_pg_t  *pg;

    pg = &ngx_http_llmsafespace_pg;

    n = 0;

    for (i = 0; i < pg->nconns; i++) {
        n += (pg->conns[i].state == state);
    }

    return n;
}


static void
ngx_http_llmsafespace_pg_connect(ngx_http_llmsafespace_pg_conn_t *pc)
{
    char                        *msg;
    ngx_http_llmsafespace_pg_t  *pg;

    pg = &ngx_http_llmsafespace_pg;

    pc->pg = PQconnectStart((char *) pg->conf->conninfo.data);

    if (pc->pg == NULL) {
        ngx_http_llmsafespace_pg_lost(pc, "out of memory");
        return;
    }

    if (PQstatus(pc->pg) == CONNECTION_BAD) {
        msg = PQerrorMessage(pc->pg);
        ngx_http_llmsafespace_pg_lost(pc, msg);
        return;
    }

    PQsetNoticeProcessor(pc->pg, ngx_http_llmsafespace_pg_notice, pc);

    if (PQsetnonblocking(pc->pg, 1) != 0) {
        ngx_http_llmsafespace_pg_lost(pc, PQerrorMessage(pc->pg));
        return;
    }

    pc->state = NGX_HTTP_LLMSAFESPACE_PG_CONNECTING;

    if (pc->timer.timer_set) {
        ngx_del_timer(&pc->timer);
    }

    ngx_add_timer(&pc->timer, pg->conf->connect_timeout);

    /* libpq: start as if PQconnectPoll() had asked to wait for writing */
    ngx_http_llmsafespace_pg_connect_step(pc, PGRES_POLLING_WRITING);
}


static void
ngx_http_llmsafespace_pg_connect_step(ngx_http_llmsafespace_pg_conn_t *pc,
    PostgresPollingStatusType poll)
{
    switch (poll) {

    case PGRES_POLLING_OK:
        ngx_http_llmsafespace_pg_ready(pc);
        return;

    case PGRES_POLLING_READING:
    case PGRES_POLLING_WRITING:
        if (ngx_http_llmsafespace_pg_watch(pc,
                                           poll == PGRES_POLLING_WRITING)
            != NGX_OK)
        {
            ngx_http_llmsafespace_pg_lost(pc, "cannot watch the socket");
        }
        return;

    default:
        ngx_http_llmsafespace_pg_lost(pc, PQerrorMessage(pc->pg));
        return;
    }
}


/*
 * Wraps libpq's current socket in an nginx connection (once) and asks for
 * read events always and write events only when "write" is set: they are
 * level-triggered and a writable socket would otherwise fire forever.
 */

static ngx_int_t
ngx_http_llmsafespace_pg_watch(ngx_http_llmsafespace_pg_conn_t *pc,
    ngx_uint_t write)
{
    ngx_socket_t                 s;
    ngx_connection_t            *c;
    ngx_http_llmsafespace_pg_t  *pg;

    pg = &ngx_http_llmsafespace_pg;

    c = pc->c;

    if (c == NULL) {
        s = PQsocket(pc->pg);
        if (s == (ngx_socket_t) -1) {
            return NGX_ERROR;
        }

        c = ngx_get_connection(s, pg->log);
        if (c == NULL) {
            return NGX_ERROR;
        }

        c->data = pc;
        c->read->handler = ngx_http_llmsafespace_pg_event_handler;
        c->write->handler = ngx_http_llmsafespace_pg_event_handler;
        c->read->log = pg->log;
        c->write->log = pg->log;

        pc->c = c;

        if (ngx_add_event(c->read, NGX_READ_EVENT, NGX_LEVEL_EVENT)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    if (write && !c->write->active) {
        if (ngx_add_event(c->write, NGX_WRITE_EVENT, NGX_LEVEL_EVENT)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    if (!write && c->write->active) {
        if (ngx_del_event(c->write, NGX_WRITE_EVENT, 0) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    /* idle unless a caller's query is in flight: a graceful quit closes it */
    c->idle = (pc->state != NGX_HTTP_LLMSAFESPACE_PG_BUSY);

    return NGX_OK;
}


/*
 * Forgets the nginx connection around libpq's socket without closing it.
 */

static void
ngx_http_llmsafespace_pg_unwatch(ngx_http_llmsafespace_pg_conn_t *pc)
{
    ngx_uint_t         flags;
    ngx_connection_t  *c;

    c = pc->c;

    if (c == NULL) {
        return;
    }

    pc->c = NULL;

    /*
     * libpq closes its socket itself when it sees the connection fail;
     * the kernel has then forgotten it, and epoll_ctl() would fail.
     */
    flags = (pc->pg == NULL || PQsocket(pc->pg) != c->fd) ? NGX_CLOSE_EVENT
                                                          : 0;

    if (c->read->active) {
        (void) ngx_del_event(c->read, NGX_READ_EVENT, flags);
    }

    if (c->write->active) {
        (void) ngx_del_event(c->write, NGX_WRITE_EVENT, flags);
    }

    if (c->read->posted) {
        ngx_delete_posted_event(c->read);
    }

    if (c->write->posted) {
        ngx_delete_posted_event(c->write);
    }

    if (c->read->timer_set) {
        ngx_del_timer(c->read);
    }

    if (c->write->timer_set) {
        ngx_del_timer(c->write);
    }

    c->idle = 0;
    ngx_free_connection(c);
    c->fd = (ngx_socket_t) -1;
}


/* closes the libpq connection; the caller decides what comes next */

static void
ngx_http_llmsafespace_pg_close(ngx_http_llmsafespace_pg_conn_t *pc)
{
    ngx_http_llmsafespace_pg_unwatch(pc);

    if (pc->result) {
        PQclear(pc->result);
        pc->result = NULL;
    }

    if (pc->pg) {
        /* nonblocking: the Terminate message is sent if it fits, no wait */
        PQfinish(pc->pg);
        pc->pg = NULL;
    }

    pc->flushing = 0;
    pc->state = NGX_HTTP_LLMSAFESPACE_PG_CLOSED;

    if (pc->timer.timer_set) {
        ngx_del_timer(&pc->timer);
    }
}


/*
 * The connection failed or could not be made: fail its query, wait out the
 * backoff, and when no connection is left fail the queue at once so that
 * callers answer 503 instead of waiting for their timeouts.
 */

static void
ngx_http_llmsafespace_pg_lost(ngx_http_llmsafespace_pg_conn_t *pc,
    const char *why)
{
    u_char                            *p, *last;
    u_char                             msg[512];
    ngx_http_llmsafespace_pg_t        *pg;
    ngx_http_llmsafespace_pg_query_t  *q;

    pg = &ngx_http_llmsafespace_pg;

    /* libpq's messages span lines; the log wants one */
    p = msg;
    last = msg + sizeof(msg);

    for ( /* void */ ; why && *why && p < last; why++) {
        if (*why == '\n' || *why == '\t' || *why == '\r') {
            if (p > msg && p[-1] != ' ') {
                *p++ = ' ';
            }
            continue;
        }
        *p++ = *why;
    }

    while (p > msg && p[-1] == ' ') {
        p--;
    }

    /* libpq's messages name host, port and user, never the password */
    ngx_log_error(NGX_LOG_ERR, pg->log, 0,
                  "llmsafespace postgres: connection #%ui %s: %*s%s "
                  "%s %M ms", pc->index,
                  pc->state == NGX_HTTP_LLMSAFESPACE_PG_CONNECTING
                  || pc->state == NGX_HTTP_LLMSAFESPACE_PG_CLOSED
                  ? "cannot connect" : "lost", p - msg, msg,
                  (p > msg && p[-1] == '.') ? "" : ";",
                  ngx_exiting ? "exiting, not retrying; backoff"
                              : "retrying in",
                  pc->backoff);

    q = pc->query;
    pc->query = NULL;

    ngx_http_llmsafespace_pg_close(pc);
    pg->errors++;

    if (q) {
        q->conn = NULL;
        ngx_http_llmsafespace_pg_finish(q, NULL, NGX_ERROR);
    }

    if (!pg->active) {
        return;
    }

    if (!ngx_exiting) {
        ngx_add_timer(&pc->timer, pc->backoff);

        pc->backoff *= 2;
        if (pc->backoff > pg->conf->backoff_max) {
            pc->backoff = pg->conf->backoff_max;
        }
    }

    if (ngx_http_llmsafespace_pg_count(NGX_HTTP_LLMSAFESPACE_PG_CLOSED)
        == pg->nconns)
    {
        ngx_http_llmsafespace_pg_fail_queue();
    }
}


static void
ngx_http_llmsafespace_pg_ready(ngx_http_llmsafespace_pg_conn_t *pc)
{
    ngx_http_llmsafespace_pg_t  *pg;

    pg = &ngx_http_llmsafespace_pg;

    ngx_log_error(NGX_LOG_INFO, pg->log, 0,
                  "llmsafespace postgres: connection #%ui ready", pc->index);

    pc->backoff = pg->conf->backoff_min;
    pc->state = NGX_HTTP_LLMSAFESPACE_PG_IDLE;

    if (pc->timer.timer_set) {
        ngx_del_timer(&pc->timer);
    }

    if (ngx_http_llmsafespace_pg_watch(pc, 0) != NGX_OK) {
        ngx_http_llmsafespace_pg_lost(pc, "cannot watch the socket");
        return;
    }

    if (ngx_exiting && ngx_queue_empty(&pg->queue)) {
        ngx_http_llmsafespace_pg_close(pc);
        return;
    }

    ngx_add_timer(&pc->timer, NGX_HTTP_LLMSAFESPACE_PG_PING_INTERVAL);

    ngx_http_llmsafespace_pg_run_queue();
}


static void
ngx_http_llmsafespace_pg_send(ngx_http_llmsafespace_pg_conn_t *pc,
    ngx_http_llmsafespace_pg_query_t *q)
{
    int                          rc;
    ngx_http_llmsafespace_pg_t  *pg;

    pg = &ngx_http_llmsafespace_pg;

    if (pc->timer.timer_set) {
        ngx_del_timer(&pc->timer);
    }

    if (q) {
        pc->state = NGX_HTTP_LLMSAFESPACE_PG_BUSY;
        pc->query = q;
        q->conn = pc;

        rc = PQsendQueryParams(pc->pg, q->sql, q->nparams, NULL,
                               (const char *const *) q->values, NULL, NULL,
                               0);

    } else {
        pc->state = NGX_HTTP_LLMSAFESPACE_PG_PING;
        ngx_add_timer(&pc->timer, pg->conf->timeout);

        rc = PQsendQuery(pc->pg, "SELECT 1");
    }

    if (rc == 0) {
        ngx_http_llmsafespace_pg_lost(pc, PQerrorMessage(pc->pg));
        return;
    }

    pc->flushing = 1;

    ngx_http_llmsafespace_pg_process(pc);
}


/* flushes what is left to send, then reads whatever results have come */

static void
ngx_http_llmsafespace_pg_process(ngx_http_llmsafespace_pg_conn_t *pc)
{
    int        rc;
    PGresult  *res;
    PGnotify  *notify;

    if (pc->flushing) {
        rc = PQflush(pc->pg);

        if (rc == -1) {
            ngx_http_llmsafespace_pg_lost(pc, PQerrorMessage(pc->pg));
            return;
        }

        pc->flushing = (rc == 1);

        if (ngx_http_llmsafespace_pg_watch(pc, pc->flushing) != NGX_OK) {
            ngx_http_llmsafespace_pg_lost(pc, "cannot watch the socket");
            return;
        }
    }

    if (PQconsumeInput(pc->pg) == 0) {
        ngx_http_llmsafespace_pg_lost(pc, PQerrorMessage(pc->pg));
        return;
    }

    if (pc->state == NGX_HTTP_LLMSAFESPACE_PG_IDLE) {

        /* nothing asked: parse notices (logged) and drop notifications */
        while ((notify = PQnotifies(pc->pg)) != NULL) {
            PQfreemem(notify);
        }

        if (PQstatus(pc->pg) == CONNECTION_BAD) {
            ngx_http_llmsafespace_pg_lost(pc, PQerrorMessage(pc->pg));
        }

        return;
    }

    while (!PQisBusy(pc->pg)) {
        res = PQgetResult(pc->pg);

        if (res == NULL) {

            /* libpq makes an error result of a lost connection: not SQL */
            if (PQstatus(pc->pg) == CONNECTION_BAD) {
                ngx_http_llmsafespace_pg_lost(pc, PQerrorMessage(pc->pg));
                return;
            }

            ngx_http_llmsafespace_pg_done(pc);
            return;
        }

        /* one statement, one result; keep the last (an error comes last) */
        if (pc->result) {
            PQclear(pc->result);
        }

        pc->result = res;
    }

    if (PQstatus(pc->pg) == CONNECTION_BAD) {
        ngx_http_llmsafespace_pg_lost(pc, PQerrorMessage(pc->pg));
    }
}


static void
ngx_http_llmsafespace_pg_done(ngx_http_llmsafespace_pg_conn_t *pc)
{
    char                              *err;
    PGresult                          *res;
    ngx_uint_t                         ping;
    ngx_http_llmsafespace_pg_t        *pg;
    ngx_http_llmsafespace_pg_query_t  *q;

    pg = &ngx_http_llmsafespace_pg;

    res = pc->result;
    pc->result = NULL;

    q = pc->query;
    pc->query = NULL;

    ping = (pc->state == NGX_HTTP_LLMSAFESPACE_PG_PING);

    pc->state = NGX_HTTP_LLMSAFESPACE_PG_IDLE;

    if (pc->timer.timer_set) {
        ngx_del_timer(&pc->timer);
    }

    if (pc->c) {
        pc->c->idle = 1;
    }

    if (q) {
        q->conn = NULL;

        if (res) {
            ngx_http_llmsafespace_metrics_latency(
                NGX_HTTP_LLMSAFESPACE_LAT_PG, ngx_current_msec - q->start);
        }

        ngx_http_llmsafespace_pg_finish(q, res, res ? NGX_OK : NGX_ERROR);
    }

    if (ping && (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK)) {
        err = res ? PQresultErrorMessage(res) : (char *) "no result";
        ngx_http_llmsafespace_pg_lost(pc, err);

        if (res) {
            PQclear(res);
        }

        return;
    }

    if (res) {
        PQclear(res);
    }

    /* the handler may have ended the worker's client (exit_process) */
    if (!pg->active || pc->state != NGX_HTTP_LLMSAFESPACE_PG_IDLE) {
        return;
    }

    if (ngx_exiting && ngx_queue_empty(&pg->queue)) {
        ngx_http_llmsafespace_pg_close(pc);
        return;
    }

    ngx_add_timer(&pc->timer, NGX_HTTP_LLMSAFESPACE_PG_PING_INTERVAL);

    ngx_http_llmsafespace_pg_run_queue();
}


/* calls the query's handler, if any, exactly once and frees the query */

static void
ngx_http_llmsafespace_pg_finish(ngx_http_llmsafespace_pg_query_t *q,
    PGresult *res, ngx_int_t rc)
{
    ngx_http_llmsafespace_pg_handler_pt  handler;

    if (q->timer.timer_set) {
        ngx_del_timer(&q->timer);
    }

    handler = q->handler;
    q->handler = NULL;
    q->done = 1;

    if (handler) {
        handler(q->data, res, rc);
    }

    ngx_free(q);
}


static void
ngx_http_llmsafespace_pg_fail_queue(void)
{
    ngx_queue_t                       *qq;
    ngx_http_llmsafespace_pg_t        *pg;
    ngx_http_llmsafespace_pg_query_t  *q;

    pg = &ngx_http_llmsafespace_pg;

    while (!ngx_queue_empty(&pg->queue)) {
        qq = ngx_queue_head(&pg->queue);
        q = ngx_queue_data(qq, ngx_http_llmsafespace_pg_query_t, queue);

        ngx_queue_remove(qq);
        q->queued = 0;
        pg->queued--;

        ngx_http_llmsafespace_pg_finish(q, NULL, NGX_ERROR);
    }
}


/* hands queued queries, oldest first, to idle connections */

static void
ngx_http_llmsafespace_pg_run_queue(void)
{
    ngx_uint_t                         i;
    ngx_queue_t                       *qq;
    ngx_http_llmsafespace_pg_t        *pg;
    ngx_http_llmsafespace_pg_conn_t   *pc;
    ngx_http_llmsafespace_pg_query_t  *q;

    pg = &ngx_http_llmsafespace_pg;

    for (i = 0; pg->active && i < pg->nconns; i++) {
        pc = &pg->conns[i];

        if (ngx_queue_empty(&pg->queue)) {
            return;
        }

        if (pc->state != NGX_HTTP_LLMSAFESPACE_PG_IDLE) {
            continue;
        }

        qq = ngx_queue_head(&pg->queue);
        q = ngx_queue_data(qq, ngx_http_llmsafespace_pg_query_t, queue);

        ngx_queue_remove(qq);
        q->queued = 0;
        pg->queued--;

        ngx_http_llmsafespace_pg_send(pc, q);
    }
}


static void
ngx_http_llmsafespace_pg_event_handler(ngx_event_t *ev)
{
    ngx_connection_t                 *c;
    ngx_http_llmsafespace_pg_conn_t  *pc;

    c = ev->data;
    pc = c->data;

    if (c->close) {

        /* a graceful quit: a caller's query in flight is let finish */
        c->close = 0;

        if (pc->state == NGX_HTTP_LLMSAFESPACE_PG_BUSY) {
            return;
        }

        ngx_http_llmsafespace_pg_close(pc);

        if (ngx_http_llmsafespace_pg_count(NGX_HTTP_LLMSAFESPACE_PG_CLOSED)
            == ngx_http_llmsafespace_pg.nconns)
        {
            ngx_http_llmsafespace_pg_fail_queue();
        }

        return;
    }

    if (pc->state == NGX_HTTP_LLMSAFESPACE_PG_CONNECTING) {

        /* libpq may switch sockets inside PQconnectPoll(): watch anew */
        ngx_http_llmsafespace_pg_unwatch(pc);
        ngx_http_llmsafespace_pg_connect_step(pc, PQconnectPoll(pc->pg));
        return;
    }

    ngx_http_llmsafespace_pg_process(pc);
}


static void
ngx_http_llmsafespace_pg_timer_handler(ngx_event_t *ev)
{
    ngx_http_llmsafespace_pg_t       *pg;
    ngx_http_llmsafespace_pg_conn_t  *pc;

    pc = ev->data;
    pg = &ngx_http_llmsafespace_pg;

    if (!pg->active) {
        return;
    }

    switch (pc->state) {

    case NGX_HTTP_LLMSAFESPACE_PG_CLOSED:
        if (!ngx_exiting) {
            pg->reconnects++;
            ngx_http_llmsafespace_pg_connect(pc);
        }
        return;

    case NGX_HTTP_LLMSAFESPACE_PG_CONNECTING:
        ngx_http_llmsafespace_pg_lost(pc, "connect timed out");
        return;

    case NGX_HTTP_LLMSAFESPACE_PG_IDLE:
        ngx_http_llmsafespace_pg_send(pc, NULL);
        return;

    case NGX_HTTP_LLMSAFESPACE_PG_PING:
        ngx_http_llmsafespace_pg_lost(pc, "health check timed out");
        return;

    default:
        return;
    }
}


/*
 * PQcancel() would block the worker on a new connection, so a query past
 * its timeout costs its connection instead: it is closed and made anew.
 */

static void
ngx_http_llmsafespace_pg_query_timeout(ngx_event_t *ev)
{
    ngx_http_llmsafespace_pg_t        *pg;
    ngx_http_llmsafespace_pg_conn_t   *pc;
    ngx_http_llmsafespace_pg_query_t  *q;

    q = ev->data;
    pg = &ngx_http_llmsafespace_pg;

    pg->timeouts++;

    pc = q->conn;

    if (pc) {
        ngx_log_error(NGX_LOG_WARN, pg->log, 0,
                      "llmsafespace postgres: query timed out after %M ms, "
                      "reconnecting #%ui", pg->conf->timeout, pc->index);

        pc->query = NULL;
        q->conn = NULL;

        ngx_http_llmsafespace_pg_close(pc);

        ngx_http_llmsafespace_pg_finish(q, NULL,
                                        NGX_HTTP_LLMSAFESPACE_PG_TIMEDOUT);

        if (pg->active && pc->state == NGX_HTTP_LLMSAFESPACE_PG_CLOSED
            && !pc->timer.timer_set && !ngx_exiting)
        {
            pg->reconnects++;
            ngx_http_llmsafespace_pg_connect(pc);
        }

        return;
    }

    ngx_log_error(NGX_LOG_WARN, pg->log, 0,
                  "llmsafespace postgres: query waited %M ms for a "
                  "connection, timed out", pg->conf->timeout);

    if (q->queued) {
        ngx_queue_remove(&q->queue);
        q->queued = 0;
        pg->queued--;
    }

    ngx_http_llmsafespace_pg_finish(q, NULL, NGX_HTTP_LLMSAFESPACE_PG_TIMEDOUT);
}


static void
ngx_http_llmsafespace_pg_dispatch_handler(ngx_event_t *ev)
{
    ngx_http_llmsafespace_pg_run_queue();
}


/* libpq prints notices on stderr by default; they belong in the log */

static void
ngx_http_llmsafespace_pg_notice(void *arg, const char *message)
{
    size_t  len;

    len = ngx_strlen(message);
    while (len && (message[len - 1] == '\n' || message[len - 1] == ' ')) {
        len--;
    }

    ngx_log_error(NGX_LOG_INFO, ngx_http_llmsafespace_pg.log, 0,
                  "llmsafespace postgres: %*s", len, message);
}
