/*
 * GET /stream: the WebSocket protocol of api.md.  libmicrohttpd does the
 * HTTP upgrade and hands over the socket; wslay does all the framing
 * (fragments, control frames, limits, close handshake).  One thread per
 * socket drives wslay; each execution runs in its own thread and queues
 * its messages through a lock, so several executions share a socket and
 * each one's messages stay in order.
 */

#include "lss_http.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <sys/socket.h>
#include <wslay/wslay.h>

#define LSS_WS_GUID       "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define LSS_WS_QUEUE_MAX  (4 * 1024 * 1024)

typedef struct lss_ws_s  lss_ws_t;

typedef struct lss_ws_exec_s {
    lss_exec_t              *ex;
    lss_ws_t                *ws;
    u_char                   carry[2][4];
    size_t                   ncarry[2];
    struct lss_ws_exec_s    *next;
} lss_ws_exec_t;

struct lss_ws_s {
    pthread_mutex_t          lock;
    pthread_cond_t           idle;
    wslay_event_context_ptr  ctx;
    int                      fd;
    int                      wake[2];
    int                      closed;
    int                      nexecs;
    lss_ws_exec_t           *execs;
    char                    *extra;
    size_t                   nextra;
    struct MHD_UpgradeResponseHandle  *urh;
};


static void
lss_ws_wake(lss_ws_t *ws)
{
    (void) !write(ws->wake[1], "w", 1);
}


/* queue a JSON message; takes the reference */
static void
lss_ws_send(lss_ws_t *ws, json_t *msg)
{
    char                          *s;
    struct wslay_event_msg         m;

    s = msg ? json_dumps(msg, JSON_COMPACT) : NULL;
    json_decref(msg);
    if (s == NULL) {
        return;
    }

    pthread_mutex_lock(&ws->lock);
    if (!ws->closed) {
        m.opcode = WSLAY_TEXT_FRAME;
        m.msg = (const uint8_t *) s;
        m.msg_length = strlen(s);
        wslay_event_queue_msg(ws->ctx, &m);
    }
    pthread_mutex_unlock(&ws->lock);

    free(s);
    lss_ws_wake(ws);
}


static void
lss_ws_error(lss_ws_t *ws, const char *code, const char *message,
    const char *id)
{
    json_t  *m;

    m = json_pack("{sssssssI}", "type", "error", "code", code,
                  "message", message, "timestamp",
                  (json_int_t) lss_now_ms());
    if (m != NULL && id != NULL) {
        json_object_set_new(m, "executionId", json_string(id));
    }
    lss_ws_send(ws, m);
}


/* a client that does not read slows its executions, never our memory */
static void
lss_ws_backpressure(lss_ws_exec_t *we)
{
    size_t    queued;
    int64_t   deadline;
    lss_ws_t *ws;

    ws = we->ws;
    deadline = we->ex->started_ms + (int64_t) we->ex->timeout * 1000;

    for ( ;; ) {
        pthread_mutex_lock(&ws->lock);
        queued = ws->closed ? 0 : wslay_event_get_queued_msg_length(ws->ctx);
        pthread_mutex_unlock(&ws->lock);

        if (queued < LSS_WS_QUEUE_MAX || lss_now_ms() > deadline) {
            return;
        }
        usleep(2000);
    }
}


static void
lss_ws_output_send(lss_ws_exec_t *we, int s, const u_char *p, size_t n)
{
    lss_ws_send(we->ws,
                json_pack("{sssssssosI}", "type", "output",
                          "executionId", we->ex->id,
                          "stream", s == 0 ? "stdout" : "stderr",
                          "content", lss_utf8_json(p, n),
                          "timestamp", (json_int_t) lss_now_ms()));
}


static void
lss_ws_output(lss_exec_t *ex, int s, const u_char *p, size_t n)
{
    size_t          k, total;
    u_char         *buf;
    lss_ws_exec_t  *we;

    we = ex->data;

    lss_ws_backpressure(we);

    total = we->ncarry[s] + n;
    buf = malloc(total);
    if (buf == NULL) {
        return;
    }
    memcpy(buf, we->carry[s], we->ncarry[s]);
    memcpy(buf + we->ncarry[s], p, n);

    /* a UTF-8 sequence cut by a read waits for its end */
    k = lss_utf8_complete(buf, total);
    if (total - k > 3) {
        k = total;
    }
    if (k > 0) {
        lss_ws_output_send(we, s, buf, k);
    }
    we->ncarry[s] = total - k;
    memcpy(we->carry[s], buf + k, we->ncarry[s]);

    free(buf);
}


static lss_ws_exec_t *
lss_ws_find(lss_ws_t *ws, const char *id)
{
    lss_ws_exec_t  *we;

    for (we = ws->execs; we != NULL; we = we->next) {
        if (strcmp(we->ex->id, id) == 0) {
            return we;
        }
    }

    return NULL;
}


static void *
lss_ws_exec_thread(void *arg)
{
    int              s;
    lss_ws_t        *ws;
    lss_ws_exec_t   *we, **pp;
    lss_exec_t      *ex;
    json_t          *m;

    we = arg;
    ws = we->ws;
    ex = we->ex;

    lss_ws_send(ws, json_pack("{sssssI}", "type", "execution_start",
                              "executionId", ex->id, "timestamp",
                              (json_int_t) lss_now_ms()));

    lss_exec_run(ex);
    lss_exec_slot_put();

    for (s = 0; s < 2; s++) {
        if (we->ncarry[s] > 0) {
            lss_ws_output_send(we, s, we->carry[s], we->ncarry[s]);
        }
    }

    if (ex->refused || (ex->end == LSS_END_INTERNAL && ex->exit_code == -1))
    {
        lss_ws_error(ws, "invalid_request",
                     ex->error ? ex->error : "execution failed", ex->id);
    }
    if (ex->end == LSS_END_TIMEOUT) {
        lss_ws_error(ws, "execution_timeout", "execution timed out", ex->id);
    }
    if (ex->end == LSS_END_MEMORY) {
        lss_ws_error(ws, "memory_limit", ex->error, ex->id);
    }
    if (ex->end == LSS_END_CANCELLED) {
        lss_ws_send(ws, json_pack("{sssssI}", "type", "execution_cancelled",
                                  "executionId", ex->id, "timestamp",
                                  (json_int_t) lss_now_ms()));
    }

    m = json_pack("{sssssisIsssbso*}", "type", "execution_complete",
                  "executionId", ex->id, "exitCode", ex->exit_code,
                  "timestamp", (json_int_t) lss_now_ms(),
                  "status", lss_exec_status(ex),
                  "truncated", ex->truncated,
                  "usage", lss_exec_usage(ex));
    lss_ws_send(ws, m);

    /* the spare this execution took is replaced once its answer is out */
    lss_zygotes_refill();

    pthread_mutex_lock(&ws->lock);
    for (pp = &ws->execs; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == we) {
            *pp = we->next;
            break;
        }
    }
    ws->nexecs--;
    pthread_cond_broadcast(&ws->idle);
    pthread_mutex_unlock(&ws->lock);

    lss_exec_free(ex);
    free(we);

    return NULL;
}


static int
lss_ws_id_ok(const char *s)
{
    size_t  n;

    n = strlen(s);
    if (n == 0 || n > 63) {
        return 0;
    }
    for ( ; *s; s++) {
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z')
              || (*s >= '0' && *s <= '9') || strchr("_-.:", *s)))
        {
            return 0;
        }
    }
    return 1;
}


/* called by wslay with ws->lock held (the lock is recursive) */
static void
lss_ws_message(lss_ws_t *ws, json_t *msg)
{
    int             st;
    char            err[160];
    json_t         *v;
    pthread_t       t;
    lss_exec_t     *ex;
    lss_ws_exec_t  *we;
    const char     *type, *id, *field;

    type = json_string_value(json_object_get(msg, "type"));
    if (type == NULL) {
        lss_ws_error(ws, "invalid_message", "type is missing", NULL);
        return;
    }

    if (strcmp(type, "ping") == 0) {
        v = json_object_get(msg, "timestamp");
        lss_ws_send(ws, json_pack("{sssO?sI}", "type", "pong",
                                  "timestamp", v,
                                  "serverTime", (json_int_t) lss_now_ms()));
        return;
    }

    if (strcmp(type, "execute") != 0 && strcmp(type, "stdin") != 0
        && strcmp(type, "cancel") != 0)
    {
        lss_ws_error(ws, "unknown_message_type", "unknown message type",
                     NULL);
        return;
    }

    id = json_string_value(json_object_get(msg, "executionId"));
    if (id == NULL || !lss_ws_id_ok(id)) {
        lss_ws_error(ws, "invalid_request",
                     "executionId must be 1-63 chars of [A-Za-z0-9_.:-]",
                     NULL);
        return;
    }

    we = lss_ws_find(ws, id);

    if (strcmp(type, "stdin") == 0) {
        v = json_object_get(msg, "content");
        if (we == NULL || (v != NULL && !json_is_string(v))) {
            lss_ws_error(ws, "invalid_request",
                         "no such running execution", id);
            return;
        }
        if (lss_exec_stdin(we->ex, v ? json_string_value(v) : "",
                           v ? json_string_length(v) : 0,
                           json_is_true(json_object_get(msg, "eof"))) != 0)
        {
            lss_ws_error(ws, "invalid_request", "stdin is closed or full",
                         id);
        }
        return;
    }

    if (strcmp(type, "cancel") == 0) {
        if (we == NULL) {
            lss_ws_error(ws, "invalid_request",
                         "no such running execution", id);
            return;
        }
        lss_exec_cancel(we->ex, LSS_END_CANCELLED);
        return;
    }

    if (we != NULL) {
        lss_ws_error(ws, "invalid_request", "executionId already running",
                     id);
        return;
    }

    ex = lss_exec_new();
    we = calloc(1, sizeof(lss_ws_exec_t));
    if (ex == NULL || we == NULL) {
        lss_exec_free(ex);
        free(we);
        lss_ws_error(ws, "internal", "out of memory", id);
        return;
    }

    st = lss_exec_parse(ex, msg, 1, err, sizeof(err), &field);
    if (st != 0) {
        lss_exec_free(ex);
        free(we);
        lss_ws_error(ws, "invalid_request", err, id);
        return;
    }

    if (lss_exec_slot_get() != 0) {
        lss_exec_free(ex);
        free(we);
        lss_ws_error(ws, "invalid_request",
                     "too many concurrent executions", id);
        return;
    }

    snprintf(ex->id, sizeof(ex->id), "%s", id);
    ex->stdin_open = 1;
    ex->on_output = lss_ws_output;
    ex->data = we;
    we->ex = ex;
    we->ws = ws;

    we->next = ws->execs;
    ws->execs = we;
    ws->nexecs++;

    if (pthread_create(&t, NULL, lss_ws_exec_thread, we) != 0) {
        ws->execs = we->next;
        ws->nexecs--;
        lss_exec_slot_put();
        lss_exec_free(ex);
        free(we);
        lss_ws_error(ws, "internal", "cannot start the execution", id);
        return;
    }
    pthread_detach(t);
}


static ssize_t
lss_ws_recv_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len,
    int flags, void *user_data)
{
    ssize_t    n;
    lss_ws_t  *ws;

    (void) flags;
    ws = user_data;

    if (ws->nextra > 0) {
        n = (ssize_t) (len < ws->nextra ? len : ws->nextra);
        memcpy(buf, ws->extra, (size_t) n);
        memmove(ws->extra, ws->extra + n, ws->nextra - (size_t) n);
        ws->nextra -= (size_t) n;
        return n;
    }

    n = recv(ws->fd, buf, len, 0);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
            wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        } else {
            wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        }
        return -1;
    }
    if (n == 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }

    return n;
}


static ssize_t
lss_ws_send_cb(wslay_event_context_ptr ctx, const uint8_t *data, size_t len,
    int flags, void *user_data)
{
    ssize_t    n;
    lss_ws_t  *ws;

    (void) flags;
    ws = user_data;

    n = send(ws->fd, data, len, MSG_NOSIGNAL);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
            wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        } else {
            wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        }
        return -1;
    }

    return n;
}


static void
lss_ws_msg_cb(wslay_event_context_ptr ctx,
    const struct wslay_event_on_msg_recv_arg *arg, void *user_data)
{
    json_t        *msg;
    lss_ws_t      *ws;
    json_error_t   jerr;

    (void) ctx;
    ws = user_data;

    if (arg->opcode == WSLAY_BINARY_FRAME) {
        lss_ws_error(ws, "invalid_message", "binary frames are not accepted",
                     NULL);
        return;
    }

    if (arg->opcode != WSLAY_TEXT_FRAME) {
        return;
    }

    msg = json_loadb((const char *) arg->msg, arg->msg_length, 0, &jerr);
    if (!json_is_object(msg)) {
        json_decref(msg);
        lss_ws_error(ws, "invalid_message", "messages are JSON objects",
                     NULL);
        return;
    }

    lss_ws_message(ws, msg);
    json_decref(msg);
}


static void *
lss_ws_thread(void *arg)
{
    int                           rc, want_r, want_w;
    char                          buf[64];
    lss_ws_t                     *ws;
    lss_ws_exec_t                *we;
    struct pollfd                 pfd[2];
    struct wslay_event_callbacks  cb;

    ws = arg;

    memset(&cb, 0, sizeof(cb));
    cb.recv_callback = lss_ws_recv_cb;
    cb.send_callback = lss_ws_send_cb;
    cb.on_msg_recv_callback = lss_ws_msg_cb;

    if (wslay_event_context_server_init(&ws->ctx, &cb, ws) != 0) {
        goto done;
    }
    wslay_event_config_set_max_recv_msg_length(ws->ctx, lss_conf.max_request);

    for ( ;; ) {
        pthread_mutex_lock(&ws->lock);
        want_r = wslay_event_want_read(ws->ctx);
        want_w = wslay_event_want_write(ws->ctx);
        pthread_mutex_unlock(&ws->lock);

        if (!want_r && !want_w) {
            break;
        }

        pfd[0].fd = ws->fd;
        pfd[0].events = (short) ((want_r ? POLLIN : 0)
                                 | (want_w ? POLLOUT : 0));
        pfd[1].fd = ws->wake[0];
        pfd[1].events = POLLIN;

        if (ws->nextra > 0) {
            pfd[0].revents = POLLIN;
            pfd[1].revents = 0;
        } else if (poll(pfd, 2, -1) < 0) {
            if (errno == EINTR) {
                continue;
            }
            break;
        }

        if (pfd[1].revents & POLLIN) {
            while (read(ws->wake[0], buf, sizeof(buf)) > 0) {
                /* drain */
            }
        }

        rc = 0;
        pthread_mutex_lock(&ws->lock);
        if (pfd[0].revents & (POLLIN | POLLHUP | POLLERR)) {
            rc = wslay_event_recv(ws->ctx);
        }
        if (rc == 0 && wslay_event_want_write(ws->ctx)) {
            rc = wslay_event_send(ws->ctx);
        }
        pthread_mutex_unlock(&ws->lock);

        if (rc != 0) {
            break;
        }
    }

done:

    /* the client is gone: its executions are cancelled and awaited */
    pthread_mutex_lock(&ws->lock);
    ws->closed = 1;
    for (we = ws->execs; we != NULL; we = we->next) {
        lss_exec_cancel(we->ex, LSS_END_CANCELLED);
    }
    while (ws->nexecs > 0) {
        pthread_cond_wait(&ws->idle, &ws->lock);
    }
    pthread_mutex_unlock(&ws->lock);

    if (ws->ctx != NULL) {
        wslay_event_context_free(ws->ctx);
    }
    MHD_upgrade_action(ws->urh, MHD_UPGRADE_ACTION_CLOSE);
    close(ws->wake[0]);
    close(ws->wake[1]);
    free(ws->extra);
    pthread_cond_destroy(&ws->idle);
    pthread_mutex_destroy(&ws->lock);
    free(ws);

    return NULL;
}


static void
lss_ws_upgraded(void *cls, struct MHD_Connection *c, void *con_cls,
    const char *extra_in, size_t extra_in_size, MHD_socket sock,
    struct MHD_UpgradeResponseHandle *urh)
{
    lss_ws_t             *ws;
    pthread_t             t;
    pthread_mutexattr_t   ma;

    (void) cls;
    (void) c;
    (void) con_cls;

    ws = calloc(1, sizeof(lss_ws_t));
    if (ws == NULL) {
        MHD_upgrade_action(urh, MHD_UPGRADE_ACTION_CLOSE);
        return;
    }

    ws->fd = sock;
    ws->urh = urh;
    ws->wake[0] = ws->wake[1] = -1;

    if (extra_in_size > 0) {
        ws->extra = malloc(extra_in_size);
        if (ws->extra != NULL) {
            memcpy(ws->extra, extra_in, extra_in_size);
            ws->nextra = extra_in_size;
        }
    }

    pthread_mutexattr_init(&ma);
    pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&ws->lock, &ma);
    pthread_mutexattr_destroy(&ma);
    pthread_cond_init(&ws->idle, NULL);

    if (pipe2(ws->wake, O_CLOEXEC | O_NONBLOCK) != 0
        || fcntl(sock, F_SETFL, fcntl(sock, F_GETFL) | O_NONBLOCK) != 0
        || pthread_create(&t, NULL, lss_ws_thread, ws) != 0)
    {
        if (ws->wake[0] >= 0) {
            close(ws->wake[0]);
            close(ws->wake[1]);
        }
        MHD_upgrade_action(urh, MHD_UPGRADE_ACTION_CLOSE);
        free(ws->extra);
        pthread_mutex_destroy(&ws->lock);
        pthread_cond_destroy(&ws->idle);
        free(ws);
        return;
    }
    pthread_detach(t);
}


enum MHD_Result
lss_stream_upgrade(struct MHD_Connection *c, lss_req_t *r)
{
    char                  in[256], accept[64];
    u_char                sha[SHA_DIGEST_LENGTH];
    const char           *key, *upgrade, *version;
    enum MHD_Result       rc;
    struct MHD_Response  *resp;

    upgrade = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Upgrade");
    key = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                      "Sec-WebSocket-Key");
    version = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                          "Sec-WebSocket-Version");

    if (upgrade == NULL || strcasecmp(upgrade, "websocket") != 0
        || key == NULL || strlen(key) > 64 || version == NULL
        || strcmp(version, "13") != 0)
    {
        return lss_http_error(c, r, 400, "bad_request",
                              "a WebSocket upgrade is required", NULL);
    }

    /* RFC 6455 4.2.2: the accept value wslay leaves to the server */
    snprintf(in, sizeof(in), "%s%s", key, LSS_WS_GUID);
    SHA1((const u_char *) in, strlen(in), sha);
    EVP_EncodeBlock((u_char *) accept, sha, SHA_DIGEST_LENGTH);

    resp = MHD_create_response_for_upgrade(lss_ws_upgraded, NULL);
    if (resp == NULL) {
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Upgrade", "websocket");
    MHD_add_response_header(resp, "Sec-WebSocket-Accept", accept);

    r->status = 101;
    rc = MHD_queue_response(c, MHD_HTTP_SWITCHING_PROTOCOLS, resp);
    MHD_destroy_response(resp);

    return rc;
}
