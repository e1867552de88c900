
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
    unsigned                        revoked:1;
} ngx_http_llmsafespace_inflight_t;


static void ngx_http_llmsafespace_inflight_cleanup(void *data);
static void ngx_http_llmsafespace_inflight_end(ngx_event_t *ev);


/* per worker */
static ngx_queue_t  ngx_http_llmsafespace_inflight;
static ngx_event_t  ngx_http_llmsafespace_inflight_ev;


ngx_int_t
ngx_http_llmsafespace_inflight_add(ngx_http_request_t *r, ngx_str_t *key_id)
{
    ngx_pool_cleanup_t                *cln;
    ngx_http_llmsafespace_inflight_t  *in;

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
    ngx_memcpy(in->key_id, key_id->data, NGX_HTTP_LLMSAFESPACE_KEY_ID_LEN);

    ngx_queue_insert_tail(&ngx_http_llmsafespace_inflight, &in->queue);

    cln->handler = ngx_http_llmsafespace_inflight_cleanup;

    return NGX_OK;
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
}
