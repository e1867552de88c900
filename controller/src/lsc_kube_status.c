/*
 * metav1.Status bodies into lsc_kube_status_t.  The body is untrusted:
 * every field is checked for its type and copied truncated, so a
 * nonsense answer still yields the HTTP code and a readable message.
 */

#include <stdio.h>
#include <string.h>

#include "lsc_kube.h"


/*
 * Copies a printable prefix (a message may reach a log line), cut on a
 * UTF-8 character boundary so that the copy is still valid text.
 */
static void
lsc_copy_raw(char *dst, size_t len, const char *s, size_t n)
{
    size_t  i;

    for (i = 0; i + 1 < len && i < n && s[i] != '\0'; i++) {
        dst[i] = ((unsigned char) s[i] < 0x20 || s[i] == 0x7f) ? ' ' : s[i];
    }
    if (i < n && s[i] != '\0') {
        while (i > 0 && ((unsigned char) s[i] & 0xc0) == 0x80) {
            i--;
        }
    }
    dst[i] = '\0';
}


static void
lsc_copy(char *dst, size_t len, json_t *v)
{
    dst[0] = '\0';
    if (json_is_string(v)) {
        lsc_copy_raw(dst, len, json_string_value(v), json_string_length(v));
    }
}


lsc_kube_rc_e
lsc_kube_rc(long code)
{
    if (code >= 200 && code < 300) {
        return LSC_KUBE_OK;
    }
    switch (code) {
    case 0:
        return LSC_KUBE_ETRANSPORT;
    case 404:
        return LSC_KUBE_ENOTFOUND;
    case 409:
        return LSC_KUBE_ECONFLICT;
    case 410:
        return LSC_KUBE_EGONE;
    case 422:
        return LSC_KUBE_EINVALID;
    case 429:
        return LSC_KUBE_ETHROTTLED;
    }
    return code >= 500 ? LSC_KUBE_ESERVER : LSC_KUBE_EREFUSED;
}


const char *
lsc_kube_strerror(lsc_kube_rc_e rc)
{
    static const char  *names[] = {
        "ok", "no answer", "not found", "conflict", "gone", "invalid",
        "throttled", "server error", "refused", "bad answer",
        "bad argument"
    };

    if ((unsigned) rc < sizeof(names) / sizeof(names[0])) {
        return names[rc];
    }
    return "?";
}


/*
 * code: the HTTP status.  A Status body's own code is believed only
 * when the HTTP status is 200 (a watch ERROR event carries its Status
 * as an object; the caller passes 200 for it).
 */
lsc_kube_rc_e
lsc_kube_status_decode(long code, const char *body, size_t len,
    lsc_kube_status_t *st)
{
    json_t        *doc, *v, *details, *causes, *c;
    json_error_t   err;
    size_t         i;
    json_int_t     n;

    memset(st, 0, sizeof(*st));
    st->code = code;
    doc = NULL;
    if (body != NULL && len > 0) {
        doc = json_loadb(body, len, JSON_REJECT_DUPLICATES, &err);
    }
    if (!json_is_object(doc)
        || !json_is_string(json_object_get(doc, "kind"))
        || strcmp(json_string_value(json_object_get(doc, "kind")), "Status")
           != 0)
    {
        /* a proxy's page, or nothing: keep a printable prefix of it */
        if (body != NULL && code != 200) {
            lsc_copy_raw(st->message, 200, body, len);
        }
        json_decref(doc);
        return lsc_kube_rc(code);
    }

    v = json_object_get(doc, "code");
    if (code == 200 && json_is_integer(v)) {
        n = json_integer_value(v);
        st->code = (n >= 100 && n <= 599) ? (long) n : 500;
    }
    lsc_copy(st->reason, sizeof(st->reason), json_object_get(doc, "reason"));
    lsc_copy(st->message, sizeof(st->message),
             json_object_get(doc, "message"));

    details = json_object_get(doc, "details");
    if (json_is_object(details)) {
        lsc_copy(st->kind, sizeof(st->kind),
                 json_object_get(details, "kind"));
        lsc_copy(st->name, sizeof(st->name),
                 json_object_get(details, "name"));
        v = json_object_get(details, "retryAfterSeconds");
        if (json_is_integer(v) && json_integer_value(v) > 0) {
            n = json_integer_value(v);
            st->retry_after = n > 3600 ? 3600 : (int) n;
        }
        causes = json_object_get(details, "causes");
        if (json_is_array(causes)) {
            json_array_foreach(causes, i, c) {
                if (st->ncauses == LSC_KUBE_MAX_CAUSES) {
                    break;
                }
                if (!json_is_object(c)) {
                    continue;
                }
                lsc_copy(st->causes[st->ncauses].reason,
                         sizeof(st->causes[0].reason),
                         json_object_get(c, "reason"));
                lsc_copy(st->causes[st->ncauses].field,
                         sizeof(st->causes[0].field),
                         json_object_get(c, "field"));
                lsc_copy(st->causes[st->ncauses].message,
                         sizeof(st->causes[0].message),
                         json_object_get(c, "message"));
                st->ncauses++;
            }
        }
    }
    json_decref(doc);
    return lsc_kube_rc(st->code);
}
