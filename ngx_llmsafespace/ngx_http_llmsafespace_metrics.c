
/*
 * Copyright (C) LLMSafeSpace
 *
 * Gateway observability: counters in a shared memory zone (every worker
 * adds to them, any worker serves them), per worker gauge slots for the
 * Redis and PostgreSQL clients, GET /metrics in the Prometheus text format
 * and GET /healthz for probes.
 *
 * The Prometheus text exposition is written by hand: it is a few printf
 * lines per sample and no packaged C library renders it for nginx.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_llmsafespace.h"


#define NGX_HTTP_LLMSAFESPACE_METRICS_ZONE     "llmsafespace_metrics"
#define NGX_HTTP_LLMSAFESPACE_METRICS_SIZE     (256 * 1024)

/* status codes 100..599 are counted exactly; slot 0 holds anything else */
#define NGX_HTTP_LLMSAFESPACE_STATUS_N         600

/* workers beyond this many are counted but get no gauge slot */
#define NGX_HTTP_LLMSAFESPACE_WORKER_SLOTS     64

#define NGX_HTTP_LLMSAFESPACE_BUCKETS_N        13

#define NGX_HTTP_LLMSAFESPACE_REFRESH          1000

/* a line of output is never longer than this */
#define NGX_HTTP_LLMSAFESPACE_LINE_MAX         256
#define NGX_HTTP_LLMSAFESPACE_OUT_BUF          4096


typedef struct {
    ngx_atomic_t                    buckets[NGX_HTTP_LLMSAFESPACE_BUCKETS_N];
    ngx_atomic_t                    inf;
    ngx_atomic_t                    sum_ms;
    ngx_atomic_t                    count;
} ngx_http_llmsafespace_hist_t;


typedef struct {
    ngx_atomic_t                    up;
    ngx_atomic_t                    queued;
    ngx_atomic_t                    in_flight;
    ngx_atomic_t                    reconnects;
    ngx_atomic_t                    errors;
    ngx_atomic_t                    timeouts;
} ngx_http_llmsafespace_client_gauges_t;


/* written by one worker only (its own slot), read by any */
typedef struct {
    ngx_atomic_t                    pid;          /* 0: slot unused */
    ngx_atomic_t                    updated;      /* unix time, seconds */
    ngx_atomic_t                    audit_pending;
    ngx_http_llmsafespace_client_gauges_t  redis;
    ngx_http_llmsafespace_client_gauges_t  pg;
} ngx_http_llmsafespace_worker_slot_t;


typedef struct {
    ngx_atomic_t                    requests[NGX_HTTP_LLMSAFESPACE_CLASS_N]
                                            [NGX_HTTP_LLMSAFESPACE_STATUS_N];
    ngx_atomic_t                    auth_failures;
    ngx_atomic_t                    rate_limited[NGX_HTTP_LLMSAFESPACE_CLASS_N];
    ngx_atomic_t                    audit_written;
    ngx_atomic_t                    audit_dropped;
    ngx_atomic_t                    start_time;
    ngx_http_llmsafespace_hist_t    latency[NGX_HTTP_LLMSAFESPACE_LAT_N];
    ngx_http_llmsafespace_worker_slot_t
                                    workers[NGX_HTTP_LLMSAFESPACE_WORKER_SLOTS];
} ngx_http_llmsafespace_metrics_t;


/* the body of /metrics, grown 4 KB at a time */
typedef struct {
    ngx_pool_t                     *pool;
    ngx_chain_t                    *first;
    ngx_chain_t                   **last;
    ngx_buf_t                      *buf;
    size_t                          size;
} ngx_http_llmsafespace_out_t;


static ngx_int_t ngx_http_llmsafespace_metrics_init_shm(
    ngx_shm_zone_t *shm_zone, void *data);
static void ngx_http_llmsafespace_metrics_refresh(void);
static void ngx_http_llmsafespace_metrics_timer(ngx_event_t *ev);
static ngx_int_t ngx_http_llmsafespace_out(ngx_http_llmsafespace_out_t *out,
    const char *fmt, ...);
static ngx_int_t ngx_http_llmsafespace_metrics_render(
    ngx_http_llmsafespace_out_t *out, ngx_http_llmsafespace_main_conf_t *lmcf);
static ngx_int_t ngx_http_llmsafespace_render_hist(
    ngx_http_llmsafespace_out_t *out, const char *name, const char *help,
    ngx_http_llmsafespace_hist_t *h);
static ngx_int_t ngx_http_llmsafespace_render_gauges(
    ngx_http_llmsafespace_out_t *out, const char *client,
    ngx_http_llmsafespace_metrics_t *m, size_t offset);
static ngx_int_t ngx_http_llmsafespace_send_body(ngx_http_request_t *r,
    ngx_uint_t status, ngx_str_t *type, ngx_chain_t *body, off_t len);


/*
 * Set by the zone's init in the master before the workers fork; a reused
 * zone keeps its address across reloads, so old and new workers agree.
 */
static ngx_http_llmsafespace_metrics_t  *ngx_http_llmsafespace_metrics;

static ngx_event_t  ngx_http_llmsafespace_metrics_ev;

static ngx_msec_t  ngx_http_llmsafespace_bounds[NGX_HTTP_LLMSAFESPACE_BUCKETS_N]
    = { 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000 };

static const char  *ngx_http_llmsafespace_le[NGX_HTTP_LLMSAFESPACE_BUCKETS_N]
    = { "0.001", "0.002", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25",
        "0.5", "1", "2.5", "5", "10" };

static const char  *ngx_http_llmsafespace_class_names[] = {
    "default", "create", "execute"
};


ngx_int_t
ngx_http_llmsafespace_metrics_init_zone(ngx_conf_t *cf,
    ngx_http_llmsafespace_main_conf_t *lmcf)
{
    ngx_str_t        name;
    ngx_shm_zone_t  *shm_zone;

    if (lmcf->metrics) {
        return NGX_OK;
    }

    ngx_str_set(&name, NGX_HTTP_LLMSAFESPACE_METRICS_ZONE);

    shm_zone = ngx_shared_memory_add(cf, &name,
                                     NGX_HTTP_LLMSAFESPACE_METRICS_SIZE,
                                     &ngx_http_llmsafespace_module);
    if (shm_zone == NULL) {
        return NGX_ERROR;
    }

    shm_zone->init = ngx_http_llmsafespace_metrics_init_shm;
    lmcf->metrics = shm_zone;

    return NGX_OK;
}


static ngx_int_t
ngx_http_llmsafespace_metrics_init_shm(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_slab_pool_t                  *shpool;
    ngx_http_llmsafespace_metrics_t  *m;

    /* a reload keeps the counters: Prometheus expects them monotonic */

    if (data) {
        shm_zone->data = data;
        ngx_http_llmsafespace_metrics = data;
        return NGX_OK;
    }

    shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (shm_zone->shm.exists) {
        shm_zone->data = shpool->data;
        ngx_http_llmsafespace_metrics = shpool->data;
        return NGX_OK;
    }

    m = ngx_slab_calloc(shpool, sizeof(ngx_http_llmsafespace_metrics_t));
    if (m == NULL) {
        return NGX_ERROR;
    }

    m->start_time = ngx_time();

    shpool->data = m;
    shm_zone->data = m;
    ngx_http_llmsafespace_metrics = m;

    return NGX_OK;
}


void
ngx_http_llmsafespace_metrics_request(ngx_uint_t route_class,
    ngx_uint_t status)
{
    ngx_http_llmsafespace_metrics_t  *m;

    m = ngx_http_llmsafespace_metrics;

    if (m == NULL) {
        return;
    }

    if (route_class >= NGX_HTTP_LLMSAFESPACE_CLASS_N) {
        route_class = NGX_HTTP_LLMSAFESPACE_CLASS_DEFAULT;
    }

    if (status < 100 || status >= NGX_HTTP_LLMSAFESPACE_STATUS_N) {
        status = 0;
    }

    (void) ngx_atomic_fetch_add(&m->requests[route_class][status], 1);
}


void
ngx_http_llmsafespace_metrics_auth_failure(void)
{
    if (ngx_http_llmsafespace_metrics) {
        (void) ngx_atomic_fetch_add(
                   &ngx_http_llmsafespace_metrics->auth_failures, 1);
    }
}


void
ngx_http_llmsafespace_metrics_rate_limited(ngx_uint_t route_class)
{
    if (ngx_http_llmsafespace_metrics == NULL) {
        return;
    }

    if (route_class >= NGX_HTTP_LLMSAFESPACE_CLASS_N) {
        route_class = NGX_HTTP_LLMSAFESPACE_CLASS_DEFAULT;
    }

    (void) ngx_atomic_fetch_add(
               &ngx_http_llmsafespace_metrics->rate_limited[route_class], 1);
}


void
ngx_http_llmsafespace_metrics_latency(ngx_uint_t which, ngx_msec_t ms)
{
    ngx_uint_t                     i;
    ngx_http_llmsafespace_hist_t  *h;

    if (ngx_http_llmsafespace_metrics == NULL
        || which >= NGX_HTTP_LLMSAFESPACE_LAT_N)
    {
        return;
    }

    h = &ngx_http_llmsafespace_metrics->latency[which];

    /* buckets are stored apart and made cumulative when rendered */

    for (i = 0; i < NGX_HTTP_LLMSAFESPACE_BUCKETS_N; i++) {
        if (ms <= ngx_http_llmsafespace_bounds[i]) {
            break;
        }
    }

    if (i < NGX_HTTP_LLMSAFESPACE_BUCKETS_N) {
        (void) ngx_atomic_fetch_add(&h->buckets[i], 1);

    } else {
        (void) ngx_atomic_fetch_add(&h->inf, 1);
    }

    (void) ngx_atomic_fetch_add(&h->sum_ms, (ngx_atomic_int_t) ms);
    (void) ngx_atomic_fetch_add(&h->count, 1);
}


void
ngx_http_llmsafespace_metrics_audit_dropped(void)
{
    if (ngx_http_llmsafespace_metrics) {
        (void) ngx_atomic_fetch_add(
                   &ngx_http_llmsafespace_metrics->audit_dropped, 1);
    }
}


void
ngx_http_llmsafespace_metrics_audit_written(void)
{
    if (ngx_http_llmsafespace_metrics) {
        (void) ngx_atomic_fetch_add(
                   &ngx_http_llmsafespace_metrics->audit_written, 1);
    }
}


ngx_int_t
ngx_http_llmsafespace_metrics_init_process(ngx_cycle_t *cycle)
{
    ngx_event_t  *ev;

    if (ngx_http_llmsafespace_metrics == NULL) {
        return NGX_OK;
    }

    ngx_http_llmsafespace_metrics_refresh();

    /*
     * An idle worker refreshes its slot too, so a scrape served by another
     * worker sees it go down; cancelable, so it never delays a quit.
     */

    ev = &ngx_http_llmsafespace_metrics_ev;
    ngx_memzero(ev, sizeof(ngx_event_t));

    ev->handler = ngx_http_llmsafespace_metrics_timer;
    ev->log = cycle->log;
    ev->data = ev;
    ev->cancelable = 1;

    ngx_add_timer(ev, NGX_HTTP_LLMSAFESPACE_REFRESH);

    return NGX_OK;
}


void
ngx_http_llmsafespace_metrics_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_llmsafespace_worker_slot_t  *slot;

    if (ngx_http_llmsafespace_metrics_ev.timer_set) {
        ngx_del_timer(&ngx_http_llmsafespace_metrics_ev);
    }

    if (ngx_http_llmsafespace_metrics == NULL
        || ngx_worker >= NGX_HTTP_LLMSAFESPACE_WORKER_SLOTS)
    {
        return;
    }

    slot = &ngx_http_llmsafespace_metrics->workers[ngx_worker];

    /* after a reload the new worker of this index may own the slot already */

    (void) ngx_atomic_cmp_set(&slot->pid, (ngx_atomic_uint_t) ngx_pid, 0);
}


static void
ngx_http_llmsafespace_metrics_timer(ngx_event_t *ev)
{
    ngx_http_llmsafespace_metrics_refresh();

    if (!ngx_exiting && !ngx_terminate && !ngx_quit) {
        ngx_add_timer(ev, NGX_HTTP_LLMSAFESPACE_REFRESH);
    }
}


/* copies this worker's client states into its slot */

static void
ngx_http_llmsafespace_metrics_refresh(void)
{
    ngx_http_llmsafespace_worker_slot_t  *slot;
    ngx_http_llmsafespace_pg_stats_t      ps;
    ngx_http_llmsafespace_main_conf_t    *lmcf;
    ngx_http_llmsafespace_redis_stats_t   rs;

    if (ngx_http_llmsafespace_metrics == NULL
        || ngx_process != NGX_PROCESS_WORKER
        || ngx_worker >= NGX_HTTP_LLMSAFESPACE_WORKER_SLOTS
        || ngx_cycle->conf_ctx[ngx_http_module.index] == NULL)
    {
        return;
    }

    lmcf = ngx_http_cycle_get_module_main_conf(ngx_cycle,
                                               ngx_http_llmsafespace_module);
    if (lmcf == NULL) {
        return;
    }

    slot = &ngx_http_llmsafespace_metrics->workers[ngx_worker];

    if (lmcf->redis.addr) {
        ngx_memzero(&rs, sizeof(rs));
        ngx_http_llmsafespace_redis_stats(&rs);

        slot->redis.up = rs.up;
        slot->redis.queued = rs.queued;
        slot->redis.in_flight = rs.in_flight;
        slot->redis.reconnects = rs.reconnects;
        slot->redis.errors = rs.errors;
        slot->redis.timeouts = rs.timeouts;
    }

    if (lmcf->pg.conninfo.len) {
        ngx_memzero(&ps, sizeof(ps));
        ngx_http_llmsafespace_pg_stats(&ps);

        slot->pg.up = ps.up;
        slot->pg.queued = ps.queued;
        slot->pg.in_flight = ps.in_flight;
        slot->pg.reconnects = ps.reconnects;
        slot->pg.errors = ps.errors;
        slot->pg.timeouts = ps.timeouts;

        slot->audit_pending = ngx_http_llmsafespace_audit_pending();
    }

    slot->updated = ngx_time();
    slot->pid = ngx_pid;
}


ngx_int_t
ngx_http_llmsafespace_metrics_handler(ngx_http_request_t *r)
{
    off_t                               len;
    ngx_int_t                           rc;
    ngx_str_t                           type;
    ngx_chain_t                        *cl;
    ngx_http_llmsafespace_out_t         out;
    ngx_http_llmsafespace_main_conf_t  *lmcf;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    if (ngx_http_llmsafespace_metrics == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    lmcf = ngx_http_get_module_main_conf(r, ngx_http_llmsafespace_module);

    /* the serving worker's own slot is exact at scrape time */
    ngx_http_llmsafespace_metrics_refresh();

    ngx_memzero(&out, sizeof(ngx_http_llmsafespace_out_t));
    out.pool = r->pool;
    out.last = &out.first;

    if (ngx_http_llmsafespace_metrics_render(&out, lmcf) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    len = 0;
    for (cl = out.first; cl; cl = cl->next) {
        len += cl->buf->last - cl->buf->pos;
    }

    ngx_str_set(&type, "text/plain; version=0.0.4; charset=utf-8");

    return ngx_http_llmsafespace_send_body(r, NGX_HTTP_OK, &type, out.first,
                                           len);
}


static ngx_int_t
ngx_http_llmsafespace_metrics_render(ngx_http_llmsafespace_out_t *out,
    ngx_http_llmsafespace_main_conf_t *lmcf)
{
    ngx_int_t                         rc;
    ngx_uint_t                        c, s;
    ngx_atomic_uint_t                 v;
    ngx_http_llmsafespace_metrics_t  *m;

    m = ngx_http_llmsafespace_metrics;

    if (ngx_http_llmsafespace_out(out,
            "# HELP llmsafespace_requests_total Requests answered by the "
            "gateway, by route class and status code.\n"
            "# TYPE llmsafespace_requests_total counter\n")
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    /* only codes seen so far: 1500 zero lines would bury the real ones */

    for (c = 0; c < NGX_HTTP_LLMSAFESPACE_CLASS_N; c++) {
        for (s = 0; s < NGX_HTTP_LLMSAFESPACE_STATUS_N; s++) {
            v = m->requests[c][s];
            if (v == 0) {
                continue;
            }

            if (s == 0) {
                rc = ngx_http_llmsafespace_out(out,
                         "llmsafespace_requests_total{class=\"%s\","
                         "code=\"other\"} %uA\n",
                         ngx_http_llmsafespace_class_names[c], v);

            } else {
                rc = ngx_http_llmsafespace_out(out,
                         "llmsafespace_requests_total{class=\"%s\","
                         "code=\"%ui\"} %uA\n",
                         ngx_http_llmsafespace_class_names[c], s, v);
            }

            if (rc != NGX_OK) {
                return NGX_ERROR;
            }
        }
    }

    if (ngx_http_llmsafespace_out(out,
            "# HELP llmsafespace_auth_failures_total Requests refused for a "
            "missing, malformed, unknown or revoked API key.\n"
            "# TYPE llmsafespace_auth_failures_total counter\n"
            "llmsafespace_auth_failures_total %uA\n"
            "# HELP llmsafespace_rate_limited_total Requests refused by the "
            "rate limiter, by route class.\n"
            "# TYPE llmsafespace_rate_limited_total counter\n",
            m->auth_failures)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    for (c = 0; c < NGX_HTTP_LLMSAFESPACE_CLASS_N; c++) {
        if (ngx_http_llmsafespace_out(out,
                "llmsafespace_rate_limited_total{class=\"%s\"} %uA\n",
                ngx_http_llmsafespace_class_names[c], m->rate_limited[c])
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    if (ngx_http_llmsafespace_out(out,
            "# HELP llmsafespace_audit_written_total Audit records written "
            "to PostgreSQL.\n"
            "# TYPE llmsafespace_audit_written_total counter\n"
            "llmsafespace_audit_written_total %uA\n"
            "# HELP llmsafespace_audit_dropped_total Audit records dropped "
            "because the buffer was full while PostgreSQL was down.\n"
            "# TYPE llmsafespace_audit_dropped_total counter\n"
            "llmsafespace_audit_dropped_total %uA\n"
            "# HELP llmsafespace_start_time_seconds When the counters were "
            "created (kept across reloads).\n"
            "# TYPE llmsafespace_start_time_seconds gauge\n"
            "llmsafespace_start_time_seconds %uA\n",
            m->audit_written, m->audit_dropped, m->start_time)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (ngx_http_llmsafespace_render_hist(out,
            "llmsafespace_redis_latency_seconds",
            "Round trip of Redis commands.",
            &m->latency[NGX_HTTP_LLMSAFESPACE_LAT_REDIS])
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (ngx_http_llmsafespace_render_hist(out,
            "llmsafespace_postgres_latency_seconds",
            "Round trip of PostgreSQL queries.",
            &m->latency[NGX_HTTP_LLMSAFESPACE_LAT_PG])
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (lmcf->redis.addr
        && ngx_http_llmsafespace_render_gauges(out, "redis", m,
               offsetof(ngx_http_llmsafespace_worker_slot_t, redis))
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (lmcf->pg.conninfo.len
        && ngx_http_llmsafespace_render_gauges(out, "postgres", m,
               offsetof(ngx_http_llmsafespace_worker_slot_t, pg))
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (lmcf->pg.conninfo.len) {
        if (ngx_http_llmsafespace_out(out,
                "# HELP llmsafespace_audit_pending Audit records buffered "
                "in a worker, not yet written.\n"
                "# TYPE llmsafespace_audit_pending gauge\n")
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        for (s = 0; s < NGX_HTTP_LLMSAFESPACE_WORKER_SLOTS; s++) {
            if (m->workers[s].pid == 0) {
                continue;
            }

            if (ngx_http_llmsafespace_out(out,
                    "llmsafespace_audit_pending{worker=\"%ui\"} %uA\n",
                    s, m->workers[s].audit_pending)
                != NGX_OK)
            {
                return NGX_ERROR;
            }
        }
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_llmsafespace_render_hist(ngx_http_llmsafespace_out_t *out,
    const char *name, const char *help, ngx_http_llmsafespace_hist_t *h)
{
    ngx_uint_t         i;
    ngx_atomic_uint_t  cum, sum, count;

    if (ngx_http_llmsafespace_out(out, "# HELP %s %s\n# TYPE %s histogram\n",
                                  name, help, name)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    /*
     * The counters move while we read them: +Inf is made the largest
     * cumulative value seen, so a scrape never shows count < a bucket.
     */

    cum = 0;

    for (i = 0; i < NGX_HTTP_LLMSAFESPACE_BUCKETS_N; i++) {
        cum += h->buckets[i];

        if (ngx_http_llmsafespace_out(out, "%s_bucket{le=\"%s\"} %uA\n",
                                      name, ngx_http_llmsafespace_le[i], cum)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    cum += h->inf;
    sum = h->sum_ms;
    count = h->count;

    if (count < cum) {
        count = cum;
    }

    return ngx_http_llmsafespace_out(out,
               "%s_bucket{le=\"+Inf\"} %uA\n"
               "%s_sum %uA.%03uA\n"
               "%s_count %uA\n",
               name, count, name, sum / 1000, sum % 1000, name, count);
}


static ngx_int_t
ngx_http_llmsafespace_render_gauges(ngx_http_llmsafespace_out_t *out,
    const char *client, ngx_http_llmsafespace_metrics_t *m, size_t offset)
{
    ngx_uint_t                              i, f;
    ngx_atomic_uint_t                       v;
    ngx_http_llmsafespace_client_gauges_t  *g;

    static const char  *fields[][3] = {
        { "up", "gauge",
          "Ready connections of the worker (Redis: 0 or 1)." },
        { "queued", "gauge", "Commands waiting to be sent." },
        { "in_flight", "gauge", "Commands sent, waiting for a reply." },
        { "reconnects_total", "counter",
          "Reconnections since the worker started." },
        { "errors_total", "counter",
          "Failed commands since the worker started." },
        { "timeouts_total", "counter",
          "Timed out commands since the worker started." }
    };

    for (f = 0; f < sizeof(fields) / sizeof(fields[0]); f++) {

        if (ngx_http_llmsafespace_out(out,
                "# HELP llmsafespace_%s_%s %s (per worker)\n"
                "# TYPE llmsafespace_%s_%s %s\n",
                client, fields[f][0], fields[f][2],
                client, fields[f][0], fields[f][1])
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        for (i = 0; i < NGX_HTTP_LLMSAFESPACE_WORKER_SLOTS; i++) {
            if (m->workers[i].pid == 0) {
                continue;
            }

            g = (ngx_http_llmsafespace_client_gauges_t *)
                    ((u_char *) &m->workers[i] + offset);

            switch (f) {
            case 0:
                v = g->up;
                break;
            case 1:
                v = g->queued;
                break;
            case 2:
                v = g->in_flight;
                break;
            case 3:
                v = g->reconnects;
                break;
            case 4:
                v = g->errors;
                break;
            default:
                v = g->timeouts;
                break;
            }

            if (ngx_http_llmsafespace_out(out,
                    "llmsafespace_%s_%s{worker=\"%ui\"} %uA\n",
                    client, fields[f][0], i, v)
                != NGX_OK)
            {
                return NGX_ERROR;
            }
        }
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_llmsafespace_out(ngx_http_llmsafespace_out_t *out,
    const char *fmt, ...)
{
    va_list       args;
    ngx_buf_t    *b;
    ngx_chain_t  *cl;

    b = out->buf;

    if (b == NULL
        || (size_t) (b->end - b->last) < NGX_HTTP_LLMSAFESPACE_LINE_MAX * 4)
    {
        b = ngx_create_temp_buf(out->pool, NGX_HTTP_LLMSAFESPACE_OUT_BUF);
        if (b == NULL) {
            return NGX_ERROR;
        }

        cl = ngx_alloc_chain_link(out->pool);
        if (cl == NULL) {
            return NGX_ERROR;
        }

        cl->buf = b;
        cl->next = NULL;

        *out->last = cl;
        out->last = &cl->next;
        out->buf = b;
    }

    /* bounded by the buffer's end: a long line is cut, never overflows */

    va_start(args, fmt);
    b->last = ngx_vslprintf(b->last, b->end, fmt, args);
    va_end(args);

    return NGX_OK;
}


ngx_int_t
ngx_http_llmsafespace_health_handler(ngx_http_request_t *r)
{
    char                               *text;
    size_t                              len;
    ngx_int_t                           rc;
    ngx_str_t                           type;
    ngx_buf_t                          *b;
    ngx_uint_t                          healthy, redis_up, pg_up;
    ngx_chain_t                         out;
    json_t                             *root;
    ngx_http_llmsafespace_pg_stats_t    ps;
    ngx_http_llmsafespace_main_conf_t  *lmcf;
    ngx_http_llmsafespace_redis_stats_t rs;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    lmcf = ngx_http_get_module_main_conf(r, ngx_http_llmsafespace_module);

    /*
     * The serving worker's own connections decide: a probe reaches a
     * random worker, and each worker depends on its own connections.
     */

    healthy = 1;
    redis_up = 0;
    pg_up = 0;

    if (lmcf->redis.addr) {
        ngx_memzero(&rs, sizeof(rs));
        ngx_http_llmsafespace_redis_stats(&rs);
        redis_up = rs.up ? 1 : 0;
        healthy &= redis_up;
    }

    if (lmcf->pg.conninfo.len) {
        ngx_memzero(&ps, sizeof(ps));
        ngx_http_llmsafespace_pg_stats(&ps);
        pg_up = ps.up ? 1 : 0;
        healthy &= pg_up;
    }

    root = json_pack("{s:s, s:{s:b, s:b}, s:{s:b, s:b}}",
                     "status", healthy ? "ok" : "degraded",
                     "redis",
                         "configured", lmcf->redis.addr != NULL,
                         "up", (int) redis_up,
                     "postgres",
                         "configured", lmcf->pg.conninfo.len != 0,
                         "up", (int) pg_up);
    if (root == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    text = json_dumps(root, JSON_COMPACT);
    json_decref(root);

    if (text == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    len = ngx_strlen(text);

    b = ngx_create_temp_buf(r->pool, len + 1);
    if (b == NULL) {
        free(text);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->last = ngx_cpymem(b->last, text, len);
    *b->last++ = '\n';
    free(text);

    out.buf = b;
    out.next = NULL;

    ngx_str_set(&type, "application/json");

    return ngx_http_llmsafespace_send_body(r,
               healthy ? NGX_HTTP_OK : NGX_HTTP_SERVICE_UNAVAILABLE,
               &type, &out, b->last - b->pos);
}


static ngx_int_t
ngx_http_llmsafespace_send_body(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *type, ngx_chain_t *body, off_t len)
{
    ngx_int_t         rc;
    ngx_chain_t      *cl;
    ngx_table_elt_t  *h;

    r->headers_out.status = status;
    r->headers_out.content_length_n = len;
    r->headers_out.content_type = *type;
    r->headers_out.content_type_len = type->len;
    r->headers_out.content_type_lowcase = NULL;

    /* probes and scrapes must never be answered from a cache */

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "Cache-Control");
    ngx_str_set(&h->value, "no-store");

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only || body == NULL) {
        return rc;
    }

    for (cl = body; cl->next; cl = cl->next) { /* void */ }

    cl->buf->last_buf = (r == r->main) ? 1 : 0;
    cl->buf->last_in_chain = 1;

    return ngx_http_output_filter(r, body);
}
