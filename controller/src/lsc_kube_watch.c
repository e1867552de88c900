/*
 * List+watch informers: a local cache of one kind's objects, keyed by
 * namespace/name, kept current by a list and then a watch from the
 * list's resourceVersion (with bookmarks, so a quiet kind's version stays
 * fresh).  Handlers hear ADDED, MODIFIED and DELETED.
 *
 * Level-based: a watch that is cut resumes from the last version seen;
 * one that is too old (410 Gone, as an HTTP answer or as an ERROR event)
 * leads to a relist, and the relist is compared with the cache, so
 * whatever happened meanwhile is heard as it is now.  The cache only
 * loses an object to a DELETED event of a working stream or to a
 * complete, successful list without it: an API server that is down or
 * answers 5xx changes nothing (no list, no deletion), we retry with
 * exponential backoff and jitter.
 *
 * What the server sends is checked, never trusted: lines longer than
 * LSC_KUBE_LINE_MAX are dropped by the splitter, and lines that are not
 * JSON, events of unknown types and objects without a valid name,
 * namespace, kind or resourceVersion are logged and skipped.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <curl/curl.h>

#include "lsc.h"
#include "lsc_kube.h"


#define LSC_KUBE_LINE_MAX        (8 << 20)    /* one event; objects < 1.5M */
#define LSC_KUBE_PAGE            500
#define LSC_KUBE_BACKOFF_BASE    500
#define LSC_KUBE_BACKOFF_CAP     30000
/* a watch that lasted this long was healthy: the backoff starts over */
#define LSC_KUBE_HEALTHY_MS      10000
#define LSC_KUBE_RV_LEN          64
#define LSC_KUBE_LOG_SKIPS       20           /* then one line per 1000 */


struct lsc_kube_informer_s {
    lsc_kube_t                 *kc;
    const lsc_kube_gvr_t       *gvr;
    char                       *ns;
    char                       *selector;
    lsc_kube_handler_pt         handler;
    void                       *data;

    json_t                     *cache;      /* key -> object */
    json_t                     *pending;    /* a list's pages so far */
    int                         pending_bad;  /* items skipped in them */
    char                       *cont;       /* the next page's token */
    char                        rv[LSC_KUBE_RV_LEN];

    int                         synced;
    int                         relist;
    int                         gone;       /* ERROR 410 in the stream */
    int                         attempt;
    int                         gone_attempt;  /* 410s right after lists */
    int64_t                     next_ms;
    int64_t                     watch_ms;   /* when this watch began */
    uint64_t                    watch_events;
    lsc_kube_req_t             *req;
    lsc_kube_split_t            split;
    lsc_kube_informer_stats_t   stats;
};


static int lsc_kube_valid_rv(json_t *v);


static void
lsc_kube_skip(lsc_kube_informer_t *inf, const char *why, const char *line,
    size_t len)
{
    inf->stats.skipped++;
    if (inf->stats.skipped <= LSC_KUBE_LOG_SKIPS
        || inf->stats.skipped % 1000 == 0)
    {
        lsc_log("warn", "kube: %s: skipped (%llu so far): %s: %.*s",
                inf->gvr->plural, (unsigned long long) inf->stats.skipped,
                why, (int) (len > 120 ? 120 : len), line ? line : "");
    }
}


static lsc_kube_informer_t *
lsc_kube_informer_alloc(lsc_kube_t *kc, const lsc_kube_gvr_t *gvr,
    const char *ns, const char *selector, lsc_kube_handler_pt handler,
    void *data)
{
    lsc_kube_informer_t  *inf;

    inf = calloc(1, sizeof(lsc_kube_informer_t));
    if (inf == NULL) {
        return NULL;
    }
    inf->kc = kc;
    inf->gvr = gvr;
    inf->handler = handler;
    inf->data = data;
    inf->relist = 1;
    inf->cache = json_object();
    if (ns != NULL && *ns != '\0') {
        inf->ns = strdup(ns);
    }
    if (selector != NULL && *selector != '\0') {
        inf->selector = strdup(selector);
    }
    if (inf->cache == NULL
        || (ns != NULL && *ns != '\0' && inf->ns == NULL)
        || (selector != NULL && *selector != '\0' && inf->selector == NULL))
    {
        json_decref(inf->cache);
        free(inf->ns);
        free(inf->selector);
        free(inf);
        return NULL;
    }
    lsc_kube_split_init(&inf->split, LSC_KUBE_LINE_MAX);
    return inf;
}


/*
 * Starts listing at the next lsc_kube_run().  ns NULL: every namespace
 * (the client's credentials permitting).
 */
lsc_kube_informer_t *
lsc_kube_informer_new(lsc_kube_t *kc, const lsc_kube_gvr_t *gvr,
    const char *ns, const char *selector, lsc_kube_handler_pt handler,
    void *data)
{
    lsc_kube_informer_t  *inf;
    char                  path[LSC_PATH_LEN];

    if (lsc_kube_path(path, sizeof(path), gvr, ns, NULL, NULL) != 0) {
        return NULL;
    }
    inf = lsc_kube_informer_alloc(kc, gvr, ns, selector, handler, data);
    if (inf != NULL) {
        lsc_kube_add_informer(kc, inf);
    }
    return inf;
}


/* an informer fed by hand (lsc_kube_informer_line, _replace): tests */
lsc_kube_informer_t *
lsc_kube_informer_detached(const lsc_kube_gvr_t *gvr,
    lsc_kube_handler_pt handler, void *data)
{
    return lsc_kube_informer_alloc(NULL, gvr, NULL, NULL, handler, data);
}


/* not from inside the informer's own handler */
void
lsc_kube_informer_free(lsc_kube_informer_t *inf)
{
    if (inf == NULL) {
        return;
    }
    if (inf->kc != NULL) {
        if (inf->req != NULL) {
            lsc_kube_cancel(inf->kc, inf->req);
        }
        lsc_kube_remove_informer(inf->kc, inf);
    }
    json_decref(inf->cache);
    json_decref(inf->pending);
    free(inf->cont);
    free(inf->ns);
    free(inf->selector);
    lsc_kube_split_free(&inf->split);
    free(inf);
}


/*
 * Begin with a watch from rv instead of a list (a restart that kept its
 * version); a version the server no longer has is a 410, then a relist.
 * The cache holds only what arrives until that list.
 */
int
lsc_kube_informer_start_at(lsc_kube_informer_t *inf, const char *rv)
{
    json_t  *v;
    int      ok;

    v = json_string(rv);
    ok = lsc_kube_valid_rv(v);
    json_decref(v);
    if (!ok || inf->req != NULL) {
        return -1;
    }
    snprintf(inf->rv, sizeof(inf->rv), "%s", rv);
    inf->relist = 0;
    return 0;
}


int
lsc_kube_informer_synced(lsc_kube_informer_t *inf)
{
    return inf->synced;
}


/* the cache: borrowed, read-only, keys "namespace/name" (or "name") */
json_t *
lsc_kube_informer_cache(lsc_kube_informer_t *inf)
{
    return inf->cache;
}


json_t *
lsc_kube_informer_get(lsc_kube_informer_t *inf, const char *ns,
    const char *name)
{
    char  key[320];

    if (ns != NULL && *ns != '\0') {
        snprintf(key, sizeof(key), "%s/%s", ns, name);
    } else {
        snprintf(key, sizeof(key), "%s", name);
    }
    return json_object_get(inf->cache, key);
}


void
lsc_kube_informer_stats(lsc_kube_informer_t *inf,
    lsc_kube_informer_stats_t *s)
{
    *s = inf->stats;
    snprintf(s->resource_version, sizeof(s->resource_version), "%s",
             inf->rv);
}


int
lsc_kube_informer_gone(lsc_kube_informer_t *inf)
{
    return inf->gone;
}


static int
lsc_kube_valid_rv(json_t *v)
{
    return json_is_string(v) && json_string_length(v) > 0
           && json_string_length(v) < LSC_KUBE_RV_LEN
           && strspn(json_string_value(v), "0123456789abcdefABCDEF-_.")
              == json_string_length(v);
}


/*
 * The cache key of an object that makes sense for this informer, or -1:
 * metadata.name valid, namespace present exactly when the kind is
 * namespaced (and ours when we watch one), a resourceVersion, and the
 * kind ours when it says one.
 */
static int
lsc_kube_key(lsc_kube_informer_t *inf, json_t *obj, char *key, size_t len,
    const char **why)
{
    json_t       *meta, *name, *ns, *kind;
    const char   *n;

    meta = json_object_get(obj, "metadata");
    name = json_object_get(meta, "name");
    ns = json_object_get(meta, "namespace");
    kind = json_object_get(obj, "kind");
    *why = "not an object with metadata";
    if (!json_is_object(obj) || !json_is_object(meta)) {
        return -1;
    }
    *why = "invalid metadata.name";
    if (!json_is_string(name)
        || !lsc_kube_valid_name(json_string_value(name), 254))
    {
        return -1;
    }
    *why = "invalid metadata.namespace";
    if (inf->gvr->namespaced) {
        if (!json_is_string(ns)
            || !lsc_kube_valid_name(json_string_value(ns), 64)
            || (inf->ns != NULL
                && strcmp(inf->ns, json_string_value(ns)) != 0))
        {
            return -1;
        }
    } else if (ns != NULL && !(json_is_string(ns)
                               && json_string_length(ns) == 0))
    {
        return -1;
    }
    *why = "invalid metadata.resourceVersion";
    if (!lsc_kube_valid_rv(json_object_get(meta, "resourceVersion"))) {
        return -1;
    }
    *why = "another kind";
    if (kind != NULL && (!json_is_string(kind)
                         || strcmp(json_string_value(kind), inf->gvr->kind)
                            != 0))
    {
        return -1;
    }
    n = json_string_value(name);
    if (inf->gvr->namespaced) {
        snprintf(key, len, "%s/%s", json_string_value(ns), n);
    } else {
        snprintf(key, len, "%s", n);
    }
    return 0;
}


static const char *
lsc_kube_rv_of(json_t *obj)
{
    return json_string_value(json_object_get(json_object_get(obj,
                                             "metadata"), "resourceVersion"));
}


static void
lsc_kube_notify(lsc_kube_informer_t *inf, int type, json_t *obj,
    json_t *old)
{
    if (inf->handler != NULL) {
        inf->handler(inf->data, type, obj, old);
    }
}


/* an object into the cache, heard as ADDED or MODIFIED (or not at all) */
static void
lsc_kube_upsert(lsc_kube_informer_t *inf, const char *key, json_t *obj)
{
    json_t      *old;
    const char  *a, *b;

    old = json_incref(json_object_get(inf->cache, key));
    json_object_set(inf->cache, key, obj);
    if (old == NULL) {
        lsc_kube_notify(inf, LSC_KUBE_ADDED, obj, NULL);
    } else {
        a = lsc_kube_rv_of(old);
        b = lsc_kube_rv_of(obj);
        if (a == NULL || b == NULL || strcmp(a, b) != 0) {
            lsc_kube_notify(inf, LSC_KUBE_MODIFIED, obj, old);
        }
    }
    json_decref(old);
}


/* obj: the object as the DELETED event gave it; NULL: our last copy */
static void
lsc_kube_remove(lsc_kube_informer_t *inf, const char *key, json_t *obj)
{
    json_t  *old;

    old = json_incref(json_object_get(inf->cache, key));
    if (old != NULL) {
        json_object_del(inf->cache, key);
        lsc_kube_notify(inf, LSC_KUBE_DELETED, obj ? obj : old, old);
        json_decref(old);
    }
}


/*
 * A complete list (items: key -> object) replaces the cache: what is
 * gone from it is DELETED (unless keep_missing: the list had items that
 * made no sense, which may be some of ours), what is new ADDED, what
 * changed MODIFIED.  Takes items.
 */
int
lsc_kube_informer_replace(lsc_kube_informer_t *inf, json_t *items,
    const char *rv, int keep_missing)
{
    json_t      *obj, *gone;
    const char  *key;
    void        *tmp;
    size_t       i;

    gone = json_array();
    if (gone == NULL) {
        json_decref(items);
        return -1;
    }
    json_object_foreach(inf->cache, key, obj) {
        if (json_object_get(items, key) == NULL) {
            if (keep_missing) {
                json_object_set(items, key, obj);
            } else {
                json_array_append_new(gone, json_string(key));
            }
        }
    }
    for (i = 0; i < json_array_size(gone); i++) {
        lsc_kube_remove(inf, json_string_value(json_array_get(gone, i)),
                        NULL);
    }
    json_decref(gone);
    json_object_foreach_safe(items, tmp, key, obj) {
        lsc_kube_upsert(inf, key, obj);
    }
    json_decref(items);
    snprintf(inf->rv, sizeof(inf->rv), "%s", rv);
    inf->synced = 1;
    inf->stats.lists++;
    return 0;
}


static int
lsc_kube_error_event(lsc_kube_informer_t *inf, json_t *obj)
{
    json_t      *code, *msg;

    code = json_object_get(obj, "code");
    msg = json_object_get(obj, "message");
    if (json_is_integer(code) && json_integer_value(code) == 410) {
        /* our version is older than the server keeps: relist */
        inf->gone = 1;
        lsc_log("info", "kube: %s: watch: 410 Gone, relisting",
                inf->gvr->plural);
    } else {
        lsc_log("warn", "kube: %s: watch ERROR %lld: %.200s",
                inf->gvr->plural,
                json_is_integer(code) ? (long long) json_integer_value(code)
                                      : 0LL,
                json_is_string(msg) ? json_string_value(msg) : "");
    }
    /* either way this stream is over: stop reading it */
    return 1;
}


/*
 * One line of a watch stream.  0: go on reading; 1: stop this stream
 * (an ERROR event).  The informer is passed as void * so the splitter
 * can call it.
 */
int
lsc_kube_informer_line(void *arg, const char *line, size_t len)
{
    lsc_kube_informer_t  *inf = arg;
    json_t               *ev, *type, *obj, *rv;
    json_error_t          err;
    const char           *t, *why;
    char                  key[320];
    int                   rc;

    ev = json_loadb(line, len, JSON_REJECT_DUPLICATES, &err);
    if (!json_is_object(ev)) {
        json_decref(ev);
        lsc_kube_skip(inf, "not a JSON object", line, len);
        return 0;
    }
    type = json_object_get(ev, "type");
    obj = json_object_get(ev, "object");
    if (!json_is_string(type) || !json_is_object(obj)) {
        lsc_kube_skip(inf, "no type or object", line, len);
        json_decref(ev);
        return 0;
    }
    t = json_string_value(type);

    if (strcmp(t, "ERROR") == 0) {
        rc = lsc_kube_error_event(inf, obj);
        json_decref(ev);
        return rc;
    }

    if (strcmp(t, "BOOKMARK") == 0) {
        rv = json_object_get(json_object_get(obj, "metadata"),
                             "resourceVersion");
        if (!lsc_kube_valid_rv(rv)) {
            lsc_kube_skip(inf, "bookmark without version", line, len);
        } else {
            snprintf(inf->rv, sizeof(inf->rv), "%s", json_string_value(rv));
            inf->stats.bookmarks++;
            inf->watch_events++;
        }
        json_decref(ev);
        return 0;
    }

    if (strcmp(t, "ADDED") != 0 && strcmp(t, "MODIFIED") != 0
        && strcmp(t, "DELETED") != 0)
    {
        lsc_kube_skip(inf, "unknown event type", line, len);
        json_decref(ev);
        return 0;
    }
    if (lsc_kube_key(inf, obj, key, sizeof(key), &why) != 0) {
        lsc_kube_skip(inf, why, line, len);
        json_decref(ev);
        return 0;
    }

    /* ADDED of a known key or MODIFIED of an unknown one: level, not edge */
    if (t[0] == 'D') {
        lsc_kube_remove(inf, key, obj);
    } else {
        lsc_kube_upsert(inf, key, obj);
    }
    snprintf(inf->rv, sizeof(inf->rv), "%s", lsc_kube_rv_of(obj));
    inf->stats.events++;
    inf->watch_events++;
    json_decref(ev);
    return 0;
}


static void lsc_kube_list_done(void *data, lsc_kube_rc_e rc, long code,
    json_t *body, lsc_kube_status_t *st);
static void lsc_kube_watch_done(void *data, lsc_kube_rc_e rc, long code,
    json_t *body, lsc_kube_status_t *st);


static void
lsc_kube_retry_later(lsc_kube_informer_t *inf, int64_t now)
{
    inf->next_ms = now + lsc_kube_backoff(inf->attempt,
                                          LSC_KUBE_BACKOFF_BASE,
                                          LSC_KUBE_BACKOFF_CAP);
    if (inf->attempt < 16) {
        inf->attempt++;
    }
}


static void
lsc_kube_list_failed(lsc_kube_informer_t *inf)
{
    json_decref(inf->pending);
    inf->pending = NULL;
    inf->pending_bad = 0;
    free(inf->cont);
    inf->cont = NULL;
    inf->stats.list_failures++;
    lsc_kube_retry_later(inf, lsc_now_ms());
}


static void
lsc_kube_list_done(void *data, lsc_kube_rc_e rc, long code, json_t *body,
    lsc_kube_status_t *st)
{
    lsc_kube_informer_t  *inf = data;
    json_t               *items, *item, *meta, *cont;
    const char           *why, *rv;
    char                  key[320], api[128];
    size_t                i;

    inf->req = NULL;

    if (rc == LSC_KUBE_EGONE && inf->cont != NULL) {
        /* the continue token expired between pages: start over */
        lsc_log("info", "kube: %s: list continue expired, listing again",
                inf->gvr->plural);
        lsc_kube_list_failed(inf);
        return;
    }
    if (rc != LSC_KUBE_OK) {
        /* nothing is concluded from a failed list: the cache stays */
        lsc_log("warn", "kube: %s: list: %ld %s: %s (cache kept, %llu "
                "objects)", inf->gvr->plural, code, lsc_kube_strerror(rc),
                st->message,
                (unsigned long long) json_object_size(inf->cache));
        lsc_kube_list_failed(inf);
        return;
    }
    items = json_object_get(body, "items");
    meta = json_object_get(body, "metadata");
    if (!json_is_array(items) || !json_is_object(meta)
        || !lsc_kube_valid_rv(json_object_get(meta, "resourceVersion")))
    {
        lsc_log("warn", "kube: %s: list: not a list, cache kept",
                inf->gvr->plural);
        lsc_kube_list_failed(inf);
        return;
    }
    if (inf->pending == NULL && (inf->pending = json_object()) == NULL) {
        lsc_kube_list_failed(inf);
        return;
    }
    if (inf->gvr->group[0] == '\0') {
        snprintf(api, sizeof(api), "%s", inf->gvr->version);
    } else {
        snprintf(api, sizeof(api), "%s/%s", inf->gvr->group,
                 inf->gvr->version);
    }
    json_array_foreach(items, i, item) {
        /* list items carry no kind: give them ours, as a watch's have */
        if (json_is_object(item) && json_object_get(item, "kind") == NULL) {
            json_object_set_new(item, "kind", json_string(inf->gvr->kind));
            json_object_set_new(item, "apiVersion", json_string(api));
        }
        if (lsc_kube_key(inf, item, key, sizeof(key), &why) != 0) {
            lsc_kube_skip(inf, why, "list item", 9);
            inf->pending_bad++;
            continue;
        }
        json_object_set(inf->pending, key, item);
    }

    free(inf->cont);
    inf->cont = NULL;
    cont = json_object_get(meta, "continue");
    if (json_is_string(cont) && json_string_length(cont) > 0) {
        inf->cont = strdup(json_string_value(cont));
        if (inf->cont == NULL) {
            lsc_kube_list_failed(inf);
            return;
        }
        /* the next page at once */
        inf->next_ms = 0;
        return;
    }

    rv = json_string_value(json_object_get(meta, "resourceVersion"));
    lsc_log("info", "kube: %s: listed %zu objects at %s", inf->gvr->plural,
            json_object_size(inf->pending), rv);
    /* a skipped item may be one we hold: then nothing goes from the cache */
    lsc_kube_informer_replace(inf, inf->pending, rv, inf->pending_bad > 0);
    inf->pending = NULL;
    inf->pending_bad = 0;
    inf->relist = 0;
    inf->gone = 0;
    inf->attempt = 0;
    inf->next_ms = 0;
}


static int
lsc_kube_watch_bytes(void *data, const char *p, size_t n)
{
    lsc_kube_informer_t  *inf = data;
    uint64_t              dropped;
    int                   rc;

    dropped = inf->split.dropped;
    rc = lsc_kube_split_feed(&inf->split, p, n, lsc_kube_informer_line, inf);
    if (inf->split.dropped != dropped) {
        lsc_kube_skip(inf, "line too long", "", 0);
    }
    return rc;
}


static void
lsc_kube_watch_done(void *data, lsc_kube_rc_e rc, long code, json_t *body,
    lsc_kube_status_t *st)
{
    lsc_kube_informer_t  *inf = data;
    int64_t               now;
    int                   healthy;

    (void) body;
    inf->req = NULL;
    lsc_kube_split_reset(&inf->split);
    now = lsc_now_ms();

    /*
     * A watch that delivered something or lasted is healthy: the backoff
     * starts over.  One that ends at once, whatever the reason, backs off,
     * so a server that closes or answers 410 at once is not hammered.
     */
    healthy = inf->watch_events > 0
              || now - inf->watch_ms >= LSC_KUBE_HEALTHY_MS;
    if (healthy) {
        inf->attempt = 0;
        inf->gone_attempt = 0;
    }
    if (inf->gone || rc == LSC_KUBE_EGONE) {
        inf->stats.relists_gone++;
        if (rc == LSC_KUBE_EGONE) {
            lsc_log("info", "kube: %s: watch from %s: 410 Gone, relisting",
                    inf->gvr->plural, inf->rv);
        }
        inf->gone = 0;
        inf->relist = 1;
        /* a list resets the backoff, so 410s in a row keep their own */
        inf->next_ms = now;
        if (!healthy) {
            inf->next_ms += lsc_kube_backoff(inf->gone_attempt,
                                             LSC_KUBE_BACKOFF_BASE,
                                             LSC_KUBE_BACKOFF_CAP);
            if (inf->gone_attempt < 16) {
                inf->gone_attempt++;
            }
        }
        return;
    }
    if (rc == LSC_KUBE_OK && (healthy || now - inf->watch_ms >= 1000)) {
        /* the server's timeoutSeconds: resume where we are, at once */
        inf->next_ms = now;
        return;
    }
    if (rc != LSC_KUBE_OK) {
        /* cut, refused, 5xx, throttled: resume from our version, later */
        lsc_log("warn", "kube: %s: watch: %ld %s: %s", inf->gvr->plural,
                code, lsc_kube_strerror(rc), st->message);
    }
    lsc_kube_retry_later(inf, now);
}


/* a random 5-10 minutes, so that many watches do not end together */
static int
lsc_kube_watch_timeout(void)
{
    return 300 + (int) (drand48() * 300);
}


static int
lsc_kube_start(lsc_kube_informer_t *inf, int watch)
{
    char    path[4096], *esc;
    size_t  n;
    int     timeout, rc;

    if (lsc_kube_path(path, sizeof(path), inf->gvr, inf->ns, NULL, NULL)
        != 0)
    {
        return -1;
    }
    n = strlen(path);
    timeout = 0;
    if (watch) {
        timeout = lsc_kube_watch_timeout();
        rc = snprintf(path + n, sizeof(path) - n, "?watch=1&"
                      "allowWatchBookmarks=true&timeoutSeconds=%d&"
                      "resourceVersion=%s", timeout, inf->rv);
    } else {
        rc = snprintf(path + n, sizeof(path) - n, "?limit=%d",
                      LSC_KUBE_PAGE);
    }
    if (rc < 0 || (size_t) rc >= sizeof(path) - n) {
        return -1;
    }
    n += rc;
    if (!watch && inf->cont != NULL) {
        esc = curl_easy_escape(NULL, inf->cont, 0);
        if (esc == NULL) {
            return -1;
        }
        rc = snprintf(path + n, sizeof(path) - n, "&continue=%s", esc);
        curl_free(esc);
        if (rc < 0 || (size_t) rc >= sizeof(path) - n) {
            return -1;
        }
        n += rc;
    }
    if (inf->selector != NULL) {
        esc = curl_easy_escape(NULL, inf->selector, 0);
        if (esc == NULL) {
            return -1;
        }
        rc = snprintf(path + n, sizeof(path) - n, "&labelSelector=%s", esc);
        curl_free(esc);
        if (rc < 0 || (size_t) rc >= sizeof(path) - n) {
            return -1;
        }
    }

    if (watch) {
        /* curl's own limit only backs up the server's timeoutSeconds */
        inf->req = lsc_kube_submit(inf->kc, "GET", path, NULL, NULL,
                                   (timeout + 60) * 1000,
                                   lsc_kube_watch_bytes,
                                   lsc_kube_watch_done, inf);
        inf->watch_ms = lsc_now_ms();
        inf->watch_events = 0;
        inf->stats.watches++;
    } else {
        inf->req = lsc_kube_submit(inf->kc, "GET", path, NULL, NULL, 0, NULL,
                                   lsc_kube_list_done, inf);
    }
    return inf->req == NULL ? -1 : 0;
}


/*
 * Called by lsc_kube_run(): starts the list or watch that is due.
 * Returns ms until this informer next needs a turn, -1: not before a
 * request of its ends.
 */
int64_t
lsc_kube_informer_step(lsc_kube_informer_t *inf, int64_t now_ms)
{
    if (inf->kc == NULL || inf->req != NULL) {
        return -1;
    }
    if (now_ms < inf->next_ms) {
        return inf->next_ms - now_ms;
    }
    if (lsc_kube_start(inf, !inf->relist) != 0) {
        lsc_log("error", "kube: %s: cannot start a request",
                inf->gvr->plural);
        lsc_kube_retry_later(inf, now_ms);
        return inf->next_ms - now_ms;
    }
    return -1;
}
