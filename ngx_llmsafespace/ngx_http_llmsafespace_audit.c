
/*
 * Copyright (C) LLMSafeSpace
 *
 * The audit log: one record per authenticated mutating request, held in a
 * bounded per-worker buffer and written to PostgreSQL in multi-row INSERTs,
 * one batch at a time.  While PostgreSQL is away records wait and are
 * retried; a full buffer refuses the newest record and counts it.
 */


#include "ngx_http_llmsafespace.h"


#define NGX_HTTP_LLMSAFESPACE_AUDIT_FIELDS   9
#define NGX_HTTP_LLMSAFESPACE_AUDIT_BATCH    100
#define NGX_HTTP_LLMSAFESPACE_AUDIT_RETRY    1000   /* ms */
#define NGX_HTTP_LLMSAFESPACE_AUDIT_MAX_LEN  256    /* per field */

/* the longest  ($NNNNN::timestamptz,...)  of one row, generously */
#define NGX_HTTP_LLMSAFESPACE_AUDIT_ROW_LEN  128


enum {
    NGX_HTTP_LLMSAFESPACE_AUDIT_F_AT = 0,
    NGX_HTTP_LLMSAFESPACE_AUDIT_F_KEY_ID,
    NGX_HTTP_LLMSAFESPACE_AUDIT_F_USER_ID,
    NGX_HTTP_LLMSAFESPACE_AUDIT_F_METHOD,
    NGX_HTTP_LLMSAFESPACE_AUDIT_F_ACTION,
    NGX_HTTP_LLMSAFESPACE_AUDIT_F_OBJECT,
    NGX_HTTP_LLMSAFESPACE_AUDIT_F_STATUS,
    NGX_HTTP_LLMSAFESPACE_AUDIT_F_REQUEST_ID,
    NGX_HTTP_LLMSAFESPACE_AUDIT_F_REMOTE_ADDR
};


typedef struct {
    ngx_queue_t                         queue;
    char                  *field[NGX_HTTP_LLMSAFESPACE_AUDIT_FIELDS];
} ngx_http_llmsafespace_audit_rec_t;


typedef struct {
    ngx_queue_t                         records;
    ngx_uint_t                          count;
    ngx_uint_t                          max;
    ngx_uint_t                          in_flight;  /* the oldest ones */
    ngx_http_llmsafespace_pg_query_t   *query;
    ngx_event_t                         retry;
    ngx_log_t                          *log;
    unsigned                            active:1;
    unsigned                            pg:1;       /* else: error log */
    unsigned                            failing:1;
    unsigned                            dropping:1;
} ngx_http_llmsafespace_audit_t;


static size_t ngx_http_llmsafespace_audit_clean(u_char *dst, u_char *src,
    size_t len);
static void ngx_http_llmsafespace_audit_log(
    ngx_http_llmsafespace_audit_rec_t *rec);
static void ngx_http_llmsafespace_audit_flush(void);
static void ngx_http_llmsafespace_audit_done(void *data, PGresult *res,
    ngx_int_t rc);
static void ngx_http_llmsafespace_audit_retry(ngx_event_t *ev);


static ngx_http_llmsafespace_audit_t  ngx_http_llmsafespace_audit_state;

static ngx_str_t  ngx_http_llmsafespace_audit_rid_var =
    ngx_string("request_id");

static const char  ngx_http_llmsafespace_audit_insert[] =
    "INSERT INTO audit_log (at, key_id, user_id, method, action, object, "
    "status, request_id, remote_addr) VALUES ";


ngx_int_t
ngx_http_llmsafespace_audit_init_process(ngx_cycle_t *cycle)
{
    ngx_http_llmsafespace_audit_t      *au;
    ngx_http_llmsafespace_main_conf_t  *lmcf;

    au = &ngx_http_llmsafespace_audit_state;

    lmcf = ngx_http_cycle_get_module_main_conf(cycle,
                                               ngx_http_llmsafespace_module);
    if (lmcf == NULL) {
        return NGX_OK;
    }

    ngx_memzero(au, sizeof(ngx_http_llmsafespace_audit_t));

    ngx_queue_init(&au->records);

    au->log = cycle->log;
    au->max = lmcf->audit_buffer;
    if (au->max == 0 || au->max == NGX_CONF_UNSET_UINT) {
        au->max = 10000;
    }

    au->pg = (lmcf->pg.conninfo.len != 0);

    au->retry.handler = ngx_http_llmsafespace_audit_retry;
    au->retry.data = au;
    au->retry.log = cycle->log;

    /* records still waiting for PostgreSQL do not hold up a graceful quit */
    au->retry.cancelable = 1;

    au->active = 1;

    return NGX_OK;
}


void
ngx_http_llmsafespace_audit_exit_process(ngx_cycle_t *cycle)
{
    ngx_uint_t                          dropped;
    ngx_queue_t                        *q;
    ngx_http_llmsafespace_audit_t      *au;
    ngx_http_llmsafespace_audit_rec_t  *rec;

    au = &ngx_http_llmsafespace_audit_state;

    if (!au->active) {
        return;
    }

    au->active = 0;

    if (au->query) {
        ngx_http_llmsafespace_pg_cancel(au->query);
        au->query = NULL;
    }

    if (au->retry.timer_set) {
        ngx_del_timer(&au->retry);
    }

    dropped = 0;

    while (!ngx_queue_empty(&au->records)) {
        q = ngx_queue_head(&au->records);
        rec = ngx_queue_data(q, ngx_http_llmsafespace_audit_rec_t, queue);

        ngx_queue_remove(q);
        ngx_free(rec);

        ngx_http_llmsafespace_metrics_audit_dropped();
        dropped++;
    }

    au->count = 0;
    au->in_flight = 0;

    if (dropped) {
        ngx_log_error(NGX_LOG_WARN, cycle->log, 0,
                      "llmsafespace audit: %ui records not written to "
                      "PostgreSQL before exit, dropped", dropped);
    }
}


ngx_uint_t
ngx_http_llmsafespace_audit_pending(void)
{
    return ngx_http_llmsafespace_audit_state.count;
}


void
ngx_http_llmsafespace_audit(ngx_http_request_t *r, const char *action,
    ngx_str_t *object, ngx_uint_t status)
{
    u_char                       *p;
    size_t                        size;
    ngx_tm_t                      tm;
    ngx_str_t                     src[NGX_HTTP_LLMSAFESPACE_AUDIT_FIELDS];
    ngx_uint_t                    i, key;
    ngx_time_t                   *tp;
    ngx_http_variable_value_t    *vv;
    ngx_http_llmsafespace_ctx_t  *ctx;
    ngx_http_llmsafespace_audit_t      *au;
    ngx_http_llmsafespace_audit_rec_t  *rec;
    u_char                        at[sizeof("1970-01-01 00:00:00.000+00")];
    u_char                        st[NGX_INT_T_LEN];

    au = &ngx_http_llmsafespace_audit_state;

    if (!au->active) {
        return;
    }

    if (au->count >= au->max) {
        if (!au->dropping) {
            ngx_log_error(NGX_LOG_WARN, au->log, 0,
                          "llmsafespace audit: buffer of %ui records full, "
                          "dropping new records", au->max);
            au->dropping = 1;
        }

        ngx_http_llmsafespace_metrics_audit_dropped();
        return;
    }

    ctx = ngx_http_llmsafespace_get_ctx(r);

    ngx_memzero(src, sizeof(src));

    tp = ngx_timeofday();
    ngx_gmtime(tp->sec, &tm);

    src[NGX_HTTP_LLMSAFESPACE_AUDIT_F_AT].data = at;
    src[NGX_HTTP_LLMSAFESPACE_AUDIT_F_AT].len =
        ngx_sprintf(at, "%4d-%02d-%02d %02d:%02d:%02d.%03M+00",
                    tm.ngx_tm_year, tm.ngx_tm_mon, tm.ngx_tm_mday,
                    tm.ngx_tm_hour, tm.ngx_tm_min, tm.ngx_tm_sec,
                    tp->msec)
        - at;

    if (ctx) {
        src[NGX_HTTP_LLMSAFESPACE_AUDIT_F_KEY_ID] = ctx->identity.key_id;
        src[NGX_HTTP_LLMSAFESPACE_AUDIT_F_USER_ID] = ctx->identity.user_id;
    }

    src[NGX_HTTP_LLMSAFESPACE_AUDIT_F_METHOD] = r->method_name;

    if (action) {
        src[NGX_HTTP_LLMSAFESPACE_AUDIT_F_ACTION].data = (u_char *) action;
        src[NGX_HTTP_LLMSAFESPACE_AUDIT_F_ACTION].len = ngx_strlen(action);
    }

    if (object) {
        src[NGX_HTTP_LLMSAFESPACE_AUDIT_F_OBJECT] = *object;
    }

    src[NGX_HTTP_LLMSAFESPACE_AUDIT_F_STATUS].data = st;
    src[NGX_HTTP_LLMSAFESPACE_AUDIT_F_STATUS].len =
        ngx_sprintf(st, "%ui", status) - st;

    key = ngx_hash_key(ngx_http_llmsafespace_audit_rid_var.data,
                       ngx_http_llmsafespace_audit_rid_var.len);
    vv = ngx_http_get_variable(r, &ngx_http_llmsafespace_audit_rid_var,
                               key);
    if (vv && !vv->not_found) {
        src[NGX_HTTP_LLMSAFESPACE_AUDIT_F_REQUEST_ID].data = vv->data;
        src[NGX_HTTP_LLMSAFESPACE_AUDIT_F_REQUEST_ID].len = vv->len;
    }

    src[NGX_HTTP_LLMSAFESPACE_AUDIT_F_REMOTE_ADDR] = r->connection->addr_text;

    size = sizeof(ngx_http_llmsafespace_audit_rec_t);

    for (i = 0; i < NGX_HTTP_LLMSAFESPACE_AUDIT_FIELDS; i++) {
        size += ngx_min(src[i].len, NGX_HTTP_LLMSAFESPACE_AUDIT_MAX_LEN) + 1;
    }

    rec = ngx_alloc(size, au->log);
    if (rec == NULL) {
        ngx_http_llmsafespace_metrics_audit_dropped();
        return;
    }

    p = (u_char *) rec + sizeof(ngx_http_llmsafespace_audit_rec_t);

    for (i = 0; i < NGX_HTTP_LLMSAFESPACE_AUDIT_FIELDS; i++) {

        /* an absent value is SQL NULL, not an empty string */
        if (src[i].len == 0) {
            rec->field[i] = NULL;
            continue;
        }

        rec->field[i] = (char *) p;
        p += ngx_http_llmsafespace_audit_clean(p, src[i].data, src[i].len);
        *p++ = '\0';
    }

    if (!au->pg) {
        ngx_http_llmsafespace_audit_log(rec);
        ngx_free(rec);
        ngx_http_llmsafespace_metrics_audit_written();
        return;
    }

    ngx_queue_insert_tail(&au->records, &rec->queue);
    au->count++;

    ngx_http_llmsafespace_audit_flush();
}


/*
 * Copies at most NGX_HTTP_LLMSAFESPACE_AUDIT_MAX_LEN bytes, each byte that
 * is not printable ASCII as '?': the values come from clients, and one
 * invalid UTF-8 byte would make PostgreSQL refuse the whole batch forever.
 */

static size_t
ngx_http_llmsafespace_audit_clean(u_char *dst, u_char *src, size_t len)
{
    size_t  i;

    len = ngx_min(len, NGX_HTTP_LLMSAFESPACE_AUDIT_MAX_LEN);

    for (i = 0; i < len; i++) {
        dst[i] = (src[i] >= 0x20 && src[i] < 0x7f) ? src[i] : '?';
    }

    return len;
}


/* without PostgreSQL the record goes to the error log, not nowhere */

static void
ngx_http_llmsafespace_audit_log(ngx_http_llmsafespace_audit_rec_t *rec)
{
    ngx_uint_t   i;
    const char  *f[NGX_HTTP_LLMSAFESPACE_AUDIT_FIELDS];

    for (i = 0; i < NGX_HTTP_LLMSAFESPACE_AUDIT_FIELDS; i++) {
        f[i] = rec->field[i] ? rec->field[i] : "-";
    }

    ngx_log_error(NGX_LOG_NOTICE, ngx_http_llmsafespace_audit_state.log, 0,
                  "llmsafespace audit: at=\"%s\" key=%s user=%s method=%s "
                  "action=%s object=\"%s\" status=%s request=%s addr=%s",
                  f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8]);
}


/* sends the oldest records, one batch at a time */

static void
ngx_http_llmsafespace_audit_flush(void)
{
    u_char                             *sql, *p;
    ngx_uint_t                          n, i, j, k;
    ngx_queue_t                        *q;
    const char                        **values;
    ngx_http_llmsafespace_audit_t      *au;
    ngx_http_llmsafespace_audit_rec_t  *rec;

    au = &ngx_http_llmsafespace_audit_state;

    if (!au->active || au->query || au->retry.timer_set || au->count == 0) {
        return;
    }

    n = ngx_min(au->count, NGX_HTTP_LLMSAFESPACE_AUDIT_BATCH);

    sql = ngx_alloc(sizeof(ngx_http_llmsafespace_audit_insert)
                    + n * NGX_HTTP_LLMSAFESPACE_AUDIT_ROW_LEN, au->log);
    values = ngx_alloc(n * NGX_HTTP_LLMSAFESPACE_AUDIT_FIELDS
                       * sizeof(char *), au->log);

    if (sql == NULL || values == NULL) {
        goto retry;
    }

    p = ngx_cpymem(sql, ngx_http_llmsafespace_audit_insert,
                   sizeof(ngx_http_llmsafespace_audit_insert) - 1);

    k = 0;
    q = ngx_queue_head(&au->records);

    for (i = 0; i < n; i++) {
        rec = ngx_queue_data(q, ngx_http_llmsafespace_audit_rec_t, queue);

        for (j = 0; j < NGX_HTTP_LLMSAFESPACE_AUDIT_FIELDS; j++) {
            values[k + j] = rec->field[j];
        }

        p = ngx_sprintf(p, "%s($%ui::timestamptz,$%ui,$%ui,$%ui,$%ui,$%ui,"
                        "$%ui::integer,$%ui,$%ui)",
                        i ? "," : "", k + 1, k + 2, k + 3, k + 4, k + 5,
                        k + 6, k + 7, k + 8, k + 9);

        k += NGX_HTTP_LLMSAFESPACE_AUDIT_FIELDS;
        q = ngx_queue_next(q);
    }

    *p = '\0';

    /* the client copies the statement and the values */
    au->query = ngx_http_llmsafespace_pg_query((char *) sql, (int) k,
                                               values,
                                               ngx_http_llmsafespace_audit_done,
                                               au);

    ngx_free(sql);
    ngx_free(values);

    if (au->query) {
        au->in_flight = n;
        return;
    }

    sql = NULL;
    values = NULL;

retry:

    if (sql) {
        ngx_free(sql);
    }

    if (values) {
        ngx_free(values);
    }

    if (!au->failing) {
        ngx_log_error(NGX_LOG_WARN, au->log, 0,
                      "llmsafespace audit: PostgreSQL unavailable, keeping "
                      "%ui records until it returns", au->count);
        au->failing = 1;
    }

    ngx_add_timer(&au->retry, NGX_HTTP_LLMSAFESPACE_AUDIT_RETRY);
}


static void
ngx_http_llmsafespace_audit_done(void *data, PGresult *res, ngx_int_t rc)
{
    size_t                              len;
    char                               *err;
    ngx_uint_t                          n;
    ngx_queue_t                        *q;
    ngx_http_llmsafespace_audit_t      *au;
    ngx_http_llmsafespace_audit_rec_t  *rec;

    au = data;

    au->query = NULL;
    n = au->in_flight;
    au->in_flight = 0;

    if (rc == NGX_OK && PQresultStatus(res) == PGRES_COMMAND_OK) {

        while (n--) {
            q = ngx_queue_head(&au->records);
            rec = ngx_queue_data(q, ngx_http_llmsafespace_audit_rec_t, queue);

            ngx_queue_remove(q);
            ngx_free(rec);
            au->count--;

            ngx_http_llmsafespace_metrics_audit_written();
        }

        if (au->failing) {
            ngx_log_error(NGX_LOG_NOTICE, au->log, 0,
                          "llmsafespace audit: writing to PostgreSQL again");
            au->failing = 0;
        }

        if (au->count < au->max) {
            au->dropping = 0;
        }

        ngx_http_llmsafespace_audit_flush();
        return;
    }

    if (!au->active) {
        return;
    }

    /* one message per outage, not one per retry */
    if (!au->failing) {
        if (rc == NGX_OK) {
            err = PQresultErrorMessage(res);
            len = ngx_strlen(err);
            while (len && (err[len - 1] == '\n' || err[len - 1] == ' ')) {
                len--;
            }

            ngx_log_error(NGX_LOG_ERR, au->log, 0,
                          "llmsafespace audit: INSERT failed, keeping %ui "
                          "records: %*s", au->count, len, err);

        } else {
            ngx_log_error(NGX_LOG_WARN, au->log, 0,
                          "llmsafespace audit: PostgreSQL %s, keeping %ui "
                          "records until it returns",
                          rc == NGX_HTTP_LLMSAFESPACE_PG_TIMEDOUT
                          ? "timed out" : "unavailable", au->count);
        }

        au->failing = 1;
    }

    if (!au->retry.timer_set) {
        ngx_add_timer(&au->retry, NGX_HTTP_LLMSAFESPACE_AUDIT_RETRY);
    }
}


static void
ngx_http_llmsafespace_audit_retry(ngx_event_t *ev)
{
    ngx_http_llmsafespace_audit_flush();
}
