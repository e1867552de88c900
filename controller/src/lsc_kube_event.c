/*
 * events.k8s.io/v1 Events about our objects ("kubectl describe" and
 * "kubectl events" show them).  An Event is best effort: a failure is
 * returned for the log, never retried, and never blocks a reconcile.
 */

#include <stdio.h>
#include <string.h>
#include <time.h>
#include <sys/random.h>

#include "lsc.h"
#include "lsc_kube.h"


#define LSC_KUBE_CONTROLLER  "llmsafespace.dev/controller"
/* the API server's limits on an Event's fields */
#define LSC_KUBE_NOTE_MAX    1024
#define LSC_KUBE_REASON_MAX  128


/* a prefix of at most max bytes that does not cut a UTF-8 sequence */
static json_t *
lsc_kube_bounded(const char *s, size_t max)
{
    size_t  n;

    n = strlen(s);
    if (n > max) {
        n = max;
        while (n > 0 && ((unsigned char) s[n] & 0xc0) == 0x80) {
            n--;
        }
    }
    return json_stringn(s, n);
}


static const char *
lsc_kube_meta(json_t *obj, const char *key)
{
    json_t  *v;

    v = json_object_get(json_object_get(obj, "metadata"), key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}


/*
 * The Event for an object (which carries apiVersion, kind and metadata
 * name, namespace, uid), or NULL if it does not.  type: "Normal" or
 * "Warning".
 */
json_t *
lsc_kube_event_build(json_t *regarding, const char *type,
    const char *reason, const char *action, const char *note,
    const char *controller, const char *instance, int64_t now_ms)
{
    const char     *name, *ns, *uid, *api, *kind, *rv;
    char            ename[254], when[40], stamp[24];
    unsigned char   r[8];
    struct tm       tm;
    time_t          sec;
    json_t         *ev, *ref;

    name = lsc_kube_meta(regarding, "name");
    ns = lsc_kube_meta(regarding, "namespace");
    uid = lsc_kube_meta(regarding, "uid");
    rv = lsc_kube_meta(regarding, "resourceVersion");
    api = json_string_value(json_object_get(regarding, "apiVersion"));
    kind = json_string_value(json_object_get(regarding, "kind"));
    if (name == NULL || api == NULL || kind == NULL || type == NULL
        || reason == NULL || action == NULL
        || (strcmp(type, "Normal") != 0 && strcmp(type, "Warning") != 0))
    {
        return NULL;
    }
    if (getrandom(r, sizeof(r), 0) != (ssize_t) sizeof(r)) {
        return NULL;
    }
    /* a unique name under the object's, as client-go makes them */
    snprintf(ename, sizeof(ename), "%.200s.%02x%02x%02x%02x%02x%02x%02x%02x",
             name, r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]);

    sec = (time_t) (now_ms / 1000);
    gmtime_r(&sec, &tm);
    strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(when, sizeof(when), "%s.%06dZ", stamp,
             (int) (now_ms % 1000) * 1000);

    ref = json_pack("{s:s, s:s, s:s}", "apiVersion", api, "kind", kind,
                    "name", name);
    if (ref == NULL) {
        return NULL;
    }
    if (ns != NULL) {
        json_object_set_new(ref, "namespace", json_string(ns));
    }
    if (uid != NULL) {
        json_object_set_new(ref, "uid", json_string(uid));
    }
    if (rv != NULL) {
        json_object_set_new(ref, "resourceVersion", json_string(rv));
    }

    ev = json_pack("{s:s, s:s, s:{s:s, s:s}, s:s, s:s, s:s, s:o, s:o, s:o,"
                   " s:o}",
                   "apiVersion", "events.k8s.io/v1", "kind", "Event",
                   "metadata", "name", ename,
                   "namespace", ns ? ns : "default",
                   "eventTime", when,
                   "type", type,
                   "reportingController", controller ? controller
                                                     : LSC_KUBE_CONTROLLER,
                   "reportingInstance",
                   lsc_kube_bounded(instance ? instance : "", 128),
                   "reason", lsc_kube_bounded(reason, LSC_KUBE_REASON_MAX),
                   "action", lsc_kube_bounded(action, LSC_KUBE_REASON_MAX),
                   "regarding", ref);
    if (ev == NULL) {
        return NULL;
    }
    if (note != NULL) {
        json_object_set_new(ev, "note",
                            lsc_kube_bounded(note, LSC_KUBE_NOTE_MAX));
    }
    return ev;
}


lsc_kube_rc_e
lsc_kube_event(lsc_kube_t *kc, json_t *regarding, const char *type,
    const char *reason, const char *action, const char *note,
    lsc_kube_status_t *st)
{
    json_t         *ev;
    const char     *ns;
    lsc_kube_rc_e   rc;

    ev = lsc_kube_event_build(regarding, type, reason, action, note, NULL,
                              lsc_kube_options(kc)->instance, lsc_now_ms());
    if (ev == NULL) {
        if (st != NULL) {
            memset(st, 0, sizeof(*st));
            snprintf(st->message, sizeof(st->message),
                     "no Event for an object without apiVersion, kind, "
                     "name");
        }
        return LSC_KUBE_EARG;
    }
    ns = lsc_kube_meta(ev, "namespace");
    rc = lsc_kube_create(kc, &lsc_kube_events, ns, ev, NULL, st);
    json_decref(ev);
    return rc;
}
