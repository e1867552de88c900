
/*
 * Copyright (C) LLMSafeSpace
 *
 * Requests that outlive the check of their key: WebSocket streams, long
 * executions and file transfers, carried to a runner for as long as they
 * last.  Each worker lists its own by key id.  When a key is revoked,
 * through this gateway's API (a key revoked, a user deleted) or in the
 * revocation stream every worker of every gateway reads each second, the
 * worker ends the requests of that key: a revoked key stops working for
 * what is already open too, not only for what comes next.
 *
 * Every second the worker also reads the revocations noted in the shared
 * key cache zone by any worker of this gateway: that is how a worker
 * finishing its requests after a reload, which reads Redis no more, still
 * learns of them.  Revocations nobody announces (made in the database
 * directly, or while Redis was down) are caught by checking each key in
 * use again every key cache "ttl", as a new request would be.
 *
 * A WebSocket is past HTTP: it cannot get an error answer, and a close
 * frame cannot be slipped between the runner's frames without parsing
 * them, so the connection is closed; a client that comes back with the
 * key gets 401 "API key revoked".
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_llmsafespace.h"
#include "ngx_http_llmsafespace_auth.h"


typedef struct {
    ngx_queue_t                     queue;
    ngx_http_request_t             *request;
    u_char                          key_id[NGX_HTTP_LLMSAFESPACE_KEY_ID_LEN];
    ngx_uint_t                      round;        /* last rechecked in */
    unsigned                        revoked:1;
} ngx_http_llmsafespace_inflight_t;


static void ngx_http_llmsafespace_inflight_cleanup(void *data);
static void ngx_http_llmsafespace_inflight_end(ngx_event_t *ev);
static void ngx_http_llmsafespace_inflight_recheck(ngx_event_t *ev);
static void ngx_http_llmsafespace_inflight_read(ngx_event_t *ev);


/* per worker */
static ngx_queue_t  ngx_http_llmsafespace_inflight;
static ngx_event_t  ngx_http_llmsafespace_inflight_ev;
static ngx_event_t  ngx_http_llmsafespace_recheck_ev;
static ngx_event_t  ngx_http_llmsafespace_read_ev;
static ngx_uint_t   ngx_http_llmsafespace_round;


ngx_int_t
ngx_http_llmsafespace_inflight_add(ngx_http_request_t *r, ngx_str_t *key_id)
{
    ngx_pool_cleanup_t                 *cln;
    ngx_http_llmsafespace_inflight_t   *in;
    ngx_http_llmsafespace_main_conf_t  *lmcf;

    if (key_id->len != NGX_HTTP_LLMSAFESPACE_KEY_ID_LEN) {
        return NGX_OK;
    }

    cln = ngx_pool_cleanup_add(r->pool,
                               sizeof(ngx_http_llmsafespace_inflight_t));
    if (cln == NULL) {
        return NGX_ERROR;
    }

    if (ngx_http_llmsafespace_inflight.next == NULL) {
        ngx_queue_init(&ngx_http_llmsafespace_inflight);
    }

    in = cln->data;
    in->request = r;
    in->revoked = 0;
    in->round = ngx_http_llmsafespace_round;
    ngx_memcpy(in->key_id, key_id->data, NGX_HTTP_LLMSAFESPACE_KEY_ID_LEN);

    ngx_queue_insert_tail(&ngx_http_llmsafespace_inflight, &in->queue);

    cln->handler = ngx_http_llmsafespace_inflight_cleanup;

    if (!ngx_http_llmsafespace_recheck_ev.timer_set) {
        lmcf = ngx_http_get_module_main_conf(r, ngx_http_llmsafespace_module);

        ngx_http_llmsafespace_recheck_ev.handler =
                                    ngx_http_llmsafespace_inflight_recheck;
        ngx_http_llmsafespace_recheck_ev.log = ngx_cycle->log;
        ngx_http_llmsafespace_recheck_ev.data = lmcf;
        ngx_http_llmsafespace_recheck_ev.cancelable = 1;

        ngx_add_timer(&ngx_http_llmsafespace_recheck_ev,
                      (ngx_msec_t) lmcf->key_ttl * 1000);
    }

    if (!ngx_http_llmsafespace_read_ev.timer_set) {
        ngx_http_llmsafespace_read_ev.handler =
                                    ngx_http_llmsafespace_inflight_read;
        ngx_http_llmsafespace_read_ev.log = ngx_cycle->log;
        ngx_http_llmsafespace_read_ev.cancelable = 1;

        ngx_add_timer(&ngx_http_llmsafespace_read_ev, 1000);
    }

    return NGX_OK;
}


/* the revocations noted by every worker, each second while any is listed */

static void
ngx_http_llmsafespace_inflight_read(ngx_event_t *ev)
{
    if (ngx_queue_empty(&ngx_http_llmsafespace_inflight)) {
        return;
    }

    ngx_http_llmsafespace_key_revocations();

    ngx_add_timer(ev, 1000);
}


/* each key in use once per round; runs while some request is listed */

static void
ngx_http_llmsafespace_inflight_recheck(ngx_event_t *ev)
{
    ngx_str_t                           key_id;
    ngx_queue_t                        *q, *k;
    ngx_http_llmsafespace_inflight_t   *in, *other;
    ngx_http_llmsafespace_main_conf_t  *lmcf;

    lmcf = ev->data;

    if (ngx_queue_empty(&ngx_http_llmsafespace_inflight)) {
        return;
    }

    ngx_http_llmsafespace_round++;

    for (q = ngx_queue_head(&ngx_http_llmsafespace_inflight);
         q != ngx_queue_sentinel(&ngx_http_llmsafespace_inflight);
         q = ngx_queue_next(q))
    {
        in = ngx_queue_data(q, ngx_http_llmsafespace_inflight_t, queue);

        if (in->round == ngx_http_llmsafespace_round) {
            continue;
        }

        for (k = q;
             k != ngx_queue_sentinel(&ngx_http_llmsafespace_inflight);
             k = ngx_queue_next(k))
        {
            other = ngx_queue_data(k, ngx_http_llmsafespace_inflight_t,
                                   queue);

            if (ngx_memcmp(other->key_id, in->key_id,
                           NGX_HTTP_LLMSAFESPACE_KEY_ID_LEN)
                == 0)
            {
                other->round = ngx_http_llmsafespace_round;
            }
        }

        key_id.data = in->key_id;
        key_id.len = NGX_HTTP_LLMSAFESPACE_KEY_ID_LEN;

        /* may only mark entries: ending them is a posted event's */
        ngx_http_llmsafespace_key_recheck(&key_id);
    }

    ngx_add_timer(ev, (ngx_msec_t) lmcf->key_ttl * 1000);
}


static void
ngx_http_llmsafespace_inflight_cleanup(void *data)
{
    ngx_http_llmsafespace_inflight_t  *in = data;

    ngx_queue_remove(&in->queue);
}


/*
 * Called from Redis and PostgreSQL callbacks, maybe of a request of this
 * very list: the requests are only marked here, and ended from a posted
 * event, where ending one cannot pull anything from under a caller.
 */

void
ngx_http_llmsafespace_inflight_revoked(ngx_str_t *key_id)
{
    ngx_uint_t                         n;
    ngx_queue_t                       *q;
    ngx_http_llmsafespace_inflight_t  *in;

    if (key_id->len != NGX_HTTP_LLMSAFESPACE_KEY_ID_LEN
        || ngx_http_llmsafespace_inflight.next == NULL)
    {
        return;
    }

    n = 0;

    for (q = ngx_queue_head(&ngx_http_llmsafespace_inflight);
         q != ngx_queue_sentinel(&ngx_http_llmsafespace_inflight);
         q = ngx_queue_next(q))
    {
        in = ngx_queue_data(q, ngx_http_llmsafespace_inflight_t, queue);

        if (ngx_memcmp(in->key_id, key_id->data, key_id->len) == 0) {
            in->revoked = 1;
            n++;
        }
    }

    if (n == 0 || ngx_http_llmsafespace_inflight_ev.posted) {
        return;
    }

    ngx_http_llmsafespace_inflight_ev.handler =
                                        ngx_http_llmsafespace_inflight_end;
    ngx_http_llmsafespace_inflight_ev.log = ngx_cycle->log;

    ngx_post_event(&ngx_http_llmsafespace_inflight_ev, &ngx_posted_events);
}


/*
 * Hangs up on the clients of the marked requests and lets nginx notice,
 * as it does for any client that goes away: the upgraded connection, the
 * upstream waiting for a runner's answer or the transfer in progress each
 * end on their usual path (and close the runner's side too), which also
 * unlinks the entry.  Ending them from here instead would race with the
 * upstream's own finalization.
 */

static void
ngx_http_llmsafespace_inflight_end(ngx_event_t *ev)
{
    ngx_queue_t                       *q;
    ngx_connection_t                  *c;
    ngx_http_llmsafespace_inflight_t  *in;

    for (q = ngx_queue_head(&ngx_http_llmsafespace_inflight);
         q != ngx_queue_sentinel(&ngx_http_llmsafespace_inflight);
         q = ngx_queue_next(q))
    {
        in = ngx_queue_data(q, ngx_http_llmsafespace_inflight_t, queue);

        if (!in->revoked) {
            continue;
        }

        in->revoked = 0;
        c = in->request->connection;

#if (NGX_HTTP_V2)
        if (in->request->stream) {
            /* a stream shares its socket with others: not hung up on */
            ngx_log_error(NGX_LOG_WARN, c->log, 0,
                          "llmsafespace: API key %*s revoked, but its "
                          "HTTP/2 request to a runner is left to finish",
                          (size_t) NGX_HTTP_LLMSAFESPACE_KEY_ID_LEN,
                          in->key_id);
            continue;
        }
#endif

        ngx_log_error(NGX_LOG_INFO, c->log, 0,
                      "llmsafespace: API key %*s revoked, closing its "
                      "request to a runner",
                      (size_t) NGX_HTTP_LLMSAFESPACE_KEY_ID_LEN, in->key_id);

        if (ngx_shutdown_socket(c->fd, SHUT_RDWR) == -1) {
            ngx_connection_error(c, ngx_socket_errno,
                                 ngx_shutdown_socket_n " failed");
        }

        c->read->ready = 1;
        ngx_post_event(c->read, &ngx_posted_events);
    }
}


void
ngx_http_llmsafespace_inflight_exit_process(ngx_cycle_t *cycle)
{
    if (ngx_http_llmsafespace_inflight_ev.posted) {
        ngx_delete_posted_event(&ngx_http_llmsafespace_inflight_ev);
    }

    if (ngx_http_llmsafespace_recheck_ev.timer_set) {
        ngx_del_timer(&ngx_http_llmsafespace_recheck_ev);
    }

    if (ngx_http_llmsafespace_read_ev.timer_set) {
        ngx_del_timer(&ngx_http_llmsafespace_read_ev);
    }
}
