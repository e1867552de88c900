/*
 * Requests to the API server over one curl multi handle.
 *
 * Why the multi interface and curl_multi_poll: the controller is one
 * thread with one loop, and a watch is a response that never ends.  A
 * blocking curl_easy_perform would stop the loop for as long as the
 * watch lasts; a thread per watch would make the cache shared state.
 * With the multi handle every transfer (watches, lists, writes) advances
 * a little at each lsc_kube_run(), which waits in curl_multi_poll() on
 * curl's sockets, on the loop's own descriptors (extra) and on the
 * nearest timer (curl's, the token bucket's, the informers' backoff).
 * The controller has a handful of connections, so poll()ing them all
 * each time costs nothing; the socket-callback API is for thousands.
 *
 * The multi handle owns the connection cache: a finished request leaves
 * its connection there for the next one (and over HTTP/2, which the API
 * server speaks, watches and requests share one connection), so no call
 * pays for a new TCP and TLS handshake.
 *
 * Every request goes through the QPS/burst bucket; a 429 is retried
 * after its Retry-After (bounded) a few times before the caller sees it.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <curl/curl.h>

#include "lsc.h"
#include "lsc_kube.h"


#define LSC_KUBE_BODY_MAX        (64 << 20)   /* one list page, at most */
#define LSC_KUBE_ERRBODY_MAX     (64 << 10)   /* a Status is small */
#define LSC_KUBE_THROTTLE_TRIES  3
#define LSC_KUBE_RETRY_AFTER_MAX 10           /* seconds we wait, at most */
#define LSC_KUBE_MAX_INFORMERS   32


struct lsc_kube_req_s {
    lsc_kube_t            *kc;
    lsc_kube_req_t        *prev;
    lsc_kube_req_t        *next;
    CURL                  *easy;
    struct curl_slist     *headers;
    char                  *method;
    char                  *path;
    char                  *ctype;
    char                  *payload;
    int                    timeout_ms;
    int                    running;
    int                    tries;
    int64_t                not_before_ms;
    long                   code;
    int                    retry_after;
    int                    overflow;
    char                  *buf;
    size_t                 len;
    size_t                 cap;
    lsc_kube_stream_pt     stream;
    lsc_kube_done_pt       done;
    void                  *data;
    char                   errbuf[CURL_ERROR_SIZE];
};


struct lsc_kube_s {
    lsc_kube_config_t      cf;
    lsc_kube_opts_t        opts;
    CURLM                 *multi;
    lsc_kube_bucket_t      bucket;
    lsc_kube_req_t        *reqs;        /* queued and running */
    int                    in_perform;  /* inside curl: no sync calls */
    lsc_kube_informer_t   *informers[LSC_KUBE_MAX_INFORMERS];
    size_t                 ninformers;
};


static void lsc_kube_req_free(lsc_kube_req_t *req);


/* takes the configuration over (cf is left empty) */
lsc_kube_t *
lsc_kube_new(lsc_kube_config_t *cf, const lsc_kube_opts_t *o)
{
    lsc_kube_t  *kc;

    kc = calloc(1, sizeof(lsc_kube_t));
    if (kc == NULL) {
        return NULL;
    }
    kc->multi = curl_multi_init();
    if (kc->multi == NULL) {
        free(kc);
        return NULL;
    }
    kc->cf = *cf;
    memset(cf, 0, sizeof(*cf));
    if (o != NULL) {
        kc->opts = *o;
    }
    if (kc->opts.qps <= 0) {
        kc->opts.qps = 20;
    }
    if (kc->opts.burst <= 0) {
        kc->opts.burst = 30;
    }
    if (kc->opts.timeout_ms <= 0) {
        kc->opts.timeout_ms = 30000;
    }
    if (kc->opts.connect_timeout_ms <= 0) {
        kc->opts.connect_timeout_ms = 5000;
    }
    if (kc->opts.user_agent == NULL) {
        kc->opts.user_agent = "llmsafespace-controller";
    }
    if (kc->opts.instance == NULL) {
        kc->opts.instance = "llmsafespace-controller";
    }
    lsc_kube_bucket_init(&kc->bucket, kc->opts.qps, kc->opts.burst,
                         lsc_now_ms());
    srand48(lsc_now_ms() ^ (long) getpid());
    return kc;
}


void
lsc_kube_free(lsc_kube_t *kc)
{
    if (kc == NULL) {
        return;
    }
    while (kc->ninformers > 0) {
        /* each one takes itself off the list */
        lsc_kube_informer_free(kc->informers[kc->ninformers - 1]);
    }
    while (kc->reqs != NULL) {
        lsc_kube_cancel(kc, kc->reqs);
    }
    curl_multi_cleanup(kc->multi);
    lsc_kube_config_free(&kc->cf);
    free(kc);
}


const lsc_kube_opts_t *
lsc_kube_options(lsc_kube_t *kc)
{
    return &kc->opts;
}


const char *
lsc_kube_namespace(lsc_kube_t *kc)
{
    return kc->cf.namespace;
}


void
lsc_kube_add_informer(lsc_kube_t *kc, lsc_kube_informer_t *inf)
{
    if (kc->ninformers < LSC_KUBE_MAX_INFORMERS) {
        kc->informers[kc->ninformers++] = inf;
    }
}


void
lsc_kube_remove_informer(lsc_kube_t *kc, lsc_kube_informer_t *inf)
{
    size_t  i;

    for (i = 0; i < kc->ninformers; i++) {
        if (kc->informers[i] == inf) {
            kc->informers[i] = kc->informers[--kc->ninformers];
            return;
        }
    }
}


/*
 * Queues a request; the loop starts it when the bucket allows.  body is
 * serialized now (the caller keeps it).  done is called exactly once,
 * from lsc_kube_run() (never from inside this call), unless the request
 * is cancelled.  stream, when given, gets a 2xx body as it arrives
 * (nonzero: abort); any other answer is buffered for its Status.
 */
lsc_kube_req_t *
lsc_kube_submit(lsc_kube_t *kc, const char *method, const char *path,
    const char *ctype, json_t *body, int timeout_ms,
    lsc_kube_stream_pt stream, lsc_kube_done_pt done, void *data)
{
    lsc_kube_req_t  *req;

    req = calloc(1, sizeof(lsc_kube_req_t));
    if (req == NULL) {
        return NULL;
    }
    req->kc = kc;
    req->method = strdup(method);
    req->path = strdup(path);
    req->ctype = strdup(ctype ? ctype : "application/json");
    if (body != NULL) {
        req->payload = json_dumps(body, JSON_COMPACT);
    }
    if (req->method == NULL || req->path == NULL || req->ctype == NULL
        || (body != NULL && req->payload == NULL))
    {
        lsc_kube_req_free(req);
        return NULL;
    }
    req->timeout_ms = timeout_ms > 0 ? timeout_ms : kc->opts.timeout_ms;
    req->stream = stream;
    req->done = done;
    req->data = data;

    req->next = kc->reqs;
    if (kc->reqs != NULL) {
        kc->reqs->prev = req;
    }
    kc->reqs = req;
    return req;
}


static void
lsc_kube_req_free(lsc_kube_req_t *req)
{
    if (req->easy != NULL) {
        curl_easy_cleanup(req->easy);
    }
    curl_slist_free_all(req->headers);
    free(req->method);
    free(req->path);
    free(req->ctype);
    free(req->payload);
    free(req->buf);
    free(req);
}


static void
lsc_kube_unlink(lsc_kube_t *kc, lsc_kube_req_t *req)
{
    if (req->prev != NULL) {
        req->prev->next = req->next;
    } else {
        kc->reqs = req->next;
    }
    if (req->next != NULL) {
        req->next->prev = req->prev;
    }
    req->prev = NULL;
    req->next = NULL;
}


/* forgets a request: no done callback; not from inside its own stream */
void
lsc_kube_cancel(lsc_kube_t *kc, lsc_kube_req_t *req)
{
    if (req->running) {
        curl_multi_remove_handle(kc->multi, req->easy);
    }
    lsc_kube_unlink(kc, req);
    lsc_kube_req_free(req);
}


static size_t
lsc_kube_on_header(char *p, size_t size, size_t n, void *arg)
{
    lsc_kube_req_t  *req = arg;
    size_t           len;
    long             v;

    len = size * n;
    if (len > 12 && strncasecmp(p, "retry-after:", 12) == 0) {
        v = strtol(p + 12, NULL, 10);
        req->retry_after = v < 0 ? 0 : v > 3600 ? 3600 : (int) v;
    }
    return len;
}


static int
lsc_kube_keep(lsc_kube_req_t *req, const char *p, size_t n, size_t max)
{
    size_t   cap;
    char    *b;

    if (req->len + n > max) {
        req->overflow = 1;
        return -1;
    }
    if (req->len + n + 1 > req->cap) {
        cap = req->cap ? req->cap : 16384;
        while (cap < req->len + n + 1) {
            cap *= 2;
        }
        b = realloc(req->buf, cap);
        if (b == NULL) {
            return -1;
        }
        req->buf = b;
        req->cap = cap;
    }
    memcpy(req->buf + req->len, p, n);
    req->len += n;
    req->buf[req->len] = '\0';
    return 0;
}


static size_t
lsc_kube_on_body(char *p, size_t size, size_t n, void *arg)
{
    lsc_kube_req_t  *req = arg;
    size_t           len;
    long             code;

    len = size * n;
    code = 0;
    curl_easy_getinfo(req->easy, CURLINFO_RESPONSE_CODE, &code);
    if (req->stream != NULL && code >= 200 && code < 300) {
        return req->stream(req->data, p, len) == 0 ? len : 0;
    }
    if (lsc_kube_keep(req, p, len, (code >= 200 && code < 300)
                      ? LSC_KUBE_BODY_MAX : LSC_KUBE_ERRBODY_MAX) != 0)
    {
        return 0;
    }
    return len;
}


static int
lsc_kube_header(lsc_kube_req_t *req, const char *fmt, const char *v)
{
    char                buf[LSC_KUBE_ERRBODY_MAX];
    struct curl_slist  *l;

    if ((size_t) snprintf(buf, sizeof(buf), fmt, v) >= sizeof(buf)) {
        return -1;
    }
    l = curl_slist_append(req->headers, buf);
    if (l == NULL) {
        return -1;
    }
    req->headers = l;
    return 0;
}


/* the easy handle of a request about to start (again) */
static int
lsc_kube_prepare(lsc_kube_t *kc, lsc_kube_req_t *req, int64_t now)
{
    lsc_kube_config_t  *cf = &kc->cf;
    const char         *token;
    char               *url;
    size_t              n;
    CURL               *e;
    struct curl_blob    blob;

    if (req->easy == NULL) {
        req->easy = curl_easy_init();
        if (req->easy == NULL) {
            return -1;
        }
    } else {
        curl_easy_reset(req->easy);
    }
    e = req->easy;
    curl_slist_free_all(req->headers);
    req->headers = NULL;
    req->len = 0;
    req->code = 0;
    req->retry_after = 0;
    req->overflow = 0;
    req->errbuf[0] = '\0';

    token = lsc_kube_config_token(cf, now);
    if (lsc_kube_header(req, "Accept: %s", "application/json") != 0
        || lsc_kube_header(req, "Content-Type: %s", req->ctype) != 0
        || (token != NULL
            && lsc_kube_header(req, "Authorization: Bearer %s", token) != 0))
    {
        return -1;
    }

    n = strlen(cf->server) + strlen(req->path) + 1;
    url = malloc(n);
    if (url == NULL) {
        return -1;
    }
    snprintf(url, n, "%s%s", cf->server, req->path);
    curl_easy_setopt(e, CURLOPT_URL, url);      /* curl keeps a copy */
    free(url);

    curl_easy_setopt(e, CURLOPT_PRIVATE, req);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, req->headers);
    curl_easy_setopt(e, CURLOPT_USERAGENT, kc->opts.user_agent);
    curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "");
    /* a watch on a connection that died silently ends within a minute */
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPIDLE, 20L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPINTVL, 10L);
    /* a request that starts while the first connection is being made
     * waits to share it (HTTP/2) rather than opening another */
    curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                     (long) kc->opts.connect_timeout_ms);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long) req->timeout_ms);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, req->errbuf);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, lsc_kube_on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, req);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, lsc_kube_on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, req);
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, req->method);
    if (req->payload != NULL) {
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, req->payload);
    } else if (strcmp(req->method, "GET") != 0) {
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, 0L);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, "");
    }

    if (cf->ca != NULL) {
        blob.data = cf->ca;
        blob.len = cf->ca_len;
        blob.flags = CURL_BLOB_NOCOPY;
        curl_easy_setopt(e, CURLOPT_CAINFO_BLOB, &blob);
    }
    if (cf->cert != NULL) {
        blob.data = cf->cert;
        blob.len = cf->cert_len;
        blob.flags = CURL_BLOB_NOCOPY;
        curl_easy_setopt(e, CURLOPT_SSLCERT_BLOB, &blob);
        curl_easy_setopt(e, CURLOPT_SSLCERTTYPE, "PEM");
        blob.data = cf->key;
        blob.len = cf->key_len;
        curl_easy_setopt(e, CURLOPT_SSLKEY_BLOB, &blob);
        curl_easy_setopt(e, CURLOPT_SSLKEYTYPE, "PEM");
    }
    if (cf->insecure) {
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
    }
    return 0;
}


/* starts what the bucket allows; returns ms until the next could start */
static int64_t
lsc_kube_pump(lsc_kube_t *kc, int64_t now)
{
    lsc_kube_req_t  *req, *next, *oldest;
    int64_t          wait, t;

    wait = -1;
    for ( ;; ) {
        /* the oldest due request first: the list is newest first */
        oldest = NULL;
        for (req = kc->reqs; req != NULL; req = next) {
            next = req->next;
            if (req->running) {
                continue;
            }
            if (req->not_before_ms > now) {
                t = req->not_before_ms - now;
                wait = (wait < 0 || t < wait) ? t : wait;
                continue;
            }
            oldest = req;
        }
        if (oldest == NULL) {
            return wait;
        }
        t = lsc_kube_bucket_take(&kc->bucket, now);
        if (t > 0) {
            return (wait < 0 || t < wait) ? t : wait;
        }
        if (lsc_kube_prepare(kc, oldest, now) != 0
            || curl_multi_add_handle(kc->multi, oldest->easy) != CURLM_OK)
        {
            /* out of memory: retried on a later turn */
            oldest->not_before_ms = now + 100;
            continue;
        }
        oldest->running = 1;
        oldest->tries++;
    }
}


static void
lsc_kube_finish(lsc_kube_t *kc, lsc_kube_req_t *req, CURLcode cc)
{
    lsc_kube_status_t   st;
    lsc_kube_rc_e       rc;
    json_t             *body;
    json_error_t        err;
    long                code;
    int64_t             delay;

    code = 0;
    curl_easy_getinfo(req->easy, CURLINFO_RESPONSE_CODE, &code);
    curl_multi_remove_handle(kc->multi, req->easy);
    req->running = 0;

    if (code == 429 && req->tries < LSC_KUBE_THROTTLE_TRIES) {
        delay = req->retry_after > 0 ? req->retry_after : 1;
        if (delay > LSC_KUBE_RETRY_AFTER_MAX) {
            delay = LSC_KUBE_RETRY_AFTER_MAX;
        }
        lsc_log("warn", "kube: %s %s: 429, again in %lld s", req->method,
                req->path, (long long) delay);
        req->not_before_ms = lsc_now_ms() + delay * 1000;
        return;
    }

    body = NULL;
    memset(&st, 0, sizeof(st));
    st.code = code;
    rc = LSC_KUBE_OK;
    if (code == 0 || (code >= 200 && code < 300 && cc != CURLE_OK)) {
        /*
         * No (whole) answer: down, refused, TLS, timeout, too large; for
         * a stream, a cut (its normal end, the server's timeout, is OK)
         */
        rc = LSC_KUBE_ETRANSPORT;
        snprintf(st.message, sizeof(st.message), "%s",
                 req->overflow ? "answer too large"
                 : req->errbuf[0] ? req->errbuf : curl_easy_strerror(cc));
    } else if (code >= 200 && code < 300) {
        if (req->stream == NULL && req->len > 0) {
            body = json_loadb(req->buf, req->len, JSON_REJECT_DUPLICATES,
                              &err);
            if (!json_is_object(body)) {
                json_decref(body);
                body = NULL;
                rc = LSC_KUBE_EBADANSWER;
                snprintf(st.message, sizeof(st.message),
                         "not a JSON object: %s", err.text);
            }
        }
    } else {
        /* what arrived of the body, even cut short, may say why */
        rc = lsc_kube_status_decode(code, req->buf, req->len, &st);
        if (st.retry_after == 0) {
            st.retry_after = req->retry_after;
        }
    }

    lsc_kube_unlink(kc, req);
    if (req->done != NULL) {
        req->done(req->data, rc, code, body, &st);
    }
    json_decref(body);
    lsc_kube_req_free(req);
}


/*
 * One turn of the client: starts what may start, waits up to timeout_ms
 * for curl's sockets, extra's descriptors (revents set) or a timer, then
 * moves every transfer on and completes finished requests.
 */
int
lsc_kube_run(lsc_kube_t *kc, struct pollfd *extra, unsigned nextra,
    int timeout_ms)
{
    struct curl_waitfd   wfd[16];
    CURLMsg             *msg;
    lsc_kube_req_t      *req;
    int64_t              now, t;
    unsigned             i;
    long                 ct;
    int                  running, left, nfds;
    size_t               k;

    if (nextra > 16) {
        nextra = 16;
    }
    now = lsc_now_ms();
    for (k = 0; k < kc->ninformers; k++) {
        t = lsc_kube_informer_step(kc->informers[k], now);
        if (t >= 0 && t < timeout_ms) {
            timeout_ms = (int) t;
        }
    }
    t = lsc_kube_pump(kc, now);
    if (t >= 0 && t < timeout_ms) {
        timeout_ms = (int) t;
    }
    ct = -1;
    curl_multi_timeout(kc->multi, &ct);
    if (ct >= 0 && ct < timeout_ms) {
        timeout_ms = (int) ct;
    }

    for (i = 0; i < nextra; i++) {
        wfd[i].fd = extra[i].fd;
        wfd[i].events = 0;
        if (extra[i].events & POLLIN) {
            wfd[i].events |= CURL_WAIT_POLLIN;
        }
        if (extra[i].events & POLLOUT) {
            wfd[i].events |= CURL_WAIT_POLLOUT;
        }
        wfd[i].revents = 0;
    }
    if (curl_multi_poll(kc->multi, wfd, nextra, timeout_ms, &nfds)
        != CURLM_OK)
    {
        return -1;
    }
    for (i = 0; i < nextra; i++) {
        extra[i].revents = 0;
        if (wfd[i].revents & CURL_WAIT_POLLIN) {
            extra[i].revents |= POLLIN;
        }
        if (wfd[i].revents & CURL_WAIT_POLLOUT) {
            extra[i].revents |= POLLOUT;
        }
    }

    kc->in_perform = 1;
    curl_multi_perform(kc->multi, &running);
    kc->in_perform = 0;

    while ((msg = curl_multi_info_read(kc->multi, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE) {
            continue;
        }
        req = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **) &req);
        if (req != NULL) {
            lsc_kube_finish(kc, req, msg->data.result);
        }
    }

    /* what finished may let a relist or a queued request start now */
    now = lsc_now_ms();
    for (k = 0; k < kc->ninformers; k++) {
        lsc_kube_informer_step(kc->informers[k], now);
    }
    lsc_kube_pump(kc, now);
    return 0;
}


typedef struct {
    int                  done;
    lsc_kube_rc_e        rc;
    json_t              *body;
    lsc_kube_status_t   *st;
} lsc_kube_sync_t;


static void
lsc_kube_sync_done(void *data, lsc_kube_rc_e rc, long code, json_t *body,
    lsc_kube_status_t *st)
{
    lsc_kube_sync_t  *s = data;

    (void) code;
    s->done = 1;
    s->rc = rc;
    s->body = json_incref(body);
    if (s->st != NULL) {
        *s->st = *st;
    }
}


/*
 * A request, waited for: the loop's other transfers (watches) move on
 * meanwhile.  *out (if given) gets the answer's object on success.
 */
lsc_kube_rc_e
lsc_kube_call(lsc_kube_t *kc, const char *method, const char *path,
    const char *ctype, json_t *body, json_t **out, lsc_kube_status_t *st)
{
    lsc_kube_sync_t     s;
    lsc_kube_status_t   local;
    lsc_kube_req_t     *req;

    if (out != NULL) {
        *out = NULL;
    }
    memset(&s, 0, sizeof(s));
    s.st = st != NULL ? st : &local;
    memset(s.st, 0, sizeof(*s.st));
    if (kc->in_perform) {
        /* from a watch handler: curl cannot be entered again */
        lsc_log("alert", "kube: %s %s from inside a handler", method, path);
        return LSC_KUBE_EARG;
    }
    req = lsc_kube_submit(kc, method, path, ctype, body, 0, NULL,
                          lsc_kube_sync_done, &s);
    if (req == NULL) {
        snprintf(s.st->message, sizeof(s.st->message), "out of memory");
        return LSC_KUBE_ETRANSPORT;
    }
    while (!s.done) {
        if (lsc_kube_run(kc, NULL, 0, 1000) != 0) {
            /* curl's poll failed: the request still points at s */
            lsc_kube_cancel(kc, req);
            snprintf(s.st->message, sizeof(s.st->message), "poll failed");
            return LSC_KUBE_ETRANSPORT;
        }
    }
    if (out != NULL) {
        *out = s.body;
    } else {
        json_decref(s.body);
    }
    return s.rc;
}
