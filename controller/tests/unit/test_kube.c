/*
 * Unit tests of the Kubernetes client's parts that need no API server:
 * the watch-stream splitter, the informer's handling of watch lines and
 * relists, Status decoding, kubeconfig and service-account
 * configuration, base64, the token bucket, backoff, Event bodies, paths.
 *
 *   make -C controller test-kube-unit    (under valgrind: no leaks)
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "../../src/lsc.h"
#include "../../src/lsc_kube.h"


static int  failures;
static int  checks;

#define CHECK(c)                                                           \
    do {                                                                   \
        checks++;                                                          \
        if (!(c)) {                                                        \
            failures++;                                                    \
            fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #c);   \
        }                                                                  \
    } while (0)


/* the splitter */

typedef struct {
    char        lines[64][256];
    size_t      n;
    size_t      longest;
    int         stop_at;      /* stop after this many lines; 0: never */
} lines_t;


static int
collect(void *data, const char *line, size_t len)
{
    lines_t  *l = data;

    if (len > l->longest) {
        l->longest = len;
    }
    if (l->n < 64) {
        snprintf(l->lines[l->n], 256, "%.*s", (int) (len > 255 ? 255 : len),
                 line);
    }
    l->n++;
    return (l->stop_at != 0 && l->n == (size_t) l->stop_at) ? 7 : 0;
}


static void
test_split(void)
{
    static const char  *stream = "{\"a\":1}\n\n{\"b\":2}\r\n{\"c\":3}\nxy";
    lsc_kube_split_t    sp;
    lines_t             l;
    size_t              chunk, i, n, big;
    char               *huge;

    /* every chunk size gives the same lines; the tail is kept for later */
    for (chunk = 1; chunk <= strlen(stream); chunk++) {
        memset(&l, 0, sizeof(l));
        lsc_kube_split_init(&sp, 64);
        for (i = 0; i < strlen(stream); i += chunk) {
            n = strlen(stream) - i < chunk ? strlen(stream) - i : chunk;
            CHECK(lsc_kube_split_feed(&sp, stream + i, n, collect, &l) == 0);
        }
        CHECK(l.n == 3);
        CHECK(strcmp(l.lines[0], "{\"a\":1}") == 0);
        CHECK(strcmp(l.lines[1], "{\"b\":2}") == 0);
        CHECK(strcmp(l.lines[2], "{\"c\":3}") == 0);
        CHECK(sp.len == 2);
        CHECK(lsc_kube_split_feed(&sp, "z\n", 2, collect, &l) == 0);
        CHECK(l.n == 4 && strcmp(l.lines[3], "xyz") == 0);
        lsc_kube_split_free(&sp);
    }

    /* a line over max is dropped whole, in one piece or in many */
    big = 100000;
    huge = malloc(big + 16);
    memset(huge, 'x', big);
    memcpy(huge + big, "\nok\n", 5);
    for (chunk = 1; chunk <= big + 4; chunk = chunk * 7 + 3) {
        memset(&l, 0, sizeof(l));
        lsc_kube_split_init(&sp, 1000);
        CHECK(lsc_kube_split_feed(&sp, "a\n", 2, collect, &l) == 0);
        for (i = 0; i < big + 4; i += chunk) {
            n = big + 4 - i < chunk ? big + 4 - i : chunk;
            CHECK(lsc_kube_split_feed(&sp, huge + i, n, collect, &l) == 0);
        }
        CHECK(l.n == 2 && strcmp(l.lines[1], "ok") == 0);
        CHECK(sp.dropped == 1);
        CHECK(sp.cap <= 1001);
        CHECK(l.longest <= 1000);
        lsc_kube_split_free(&sp);
    }

    /* exactly max is a line; max + 1 is not */
    memset(&l, 0, sizeof(l));
    lsc_kube_split_init(&sp, 1000);
    huge[1000] = '\n';
    CHECK(lsc_kube_split_feed(&sp, huge, 1001, collect, &l) == 0);
    CHECK(l.n == 1 && l.longest == 1000);
    huge[1000] = 'x';
    huge[1001] = '\n';
    CHECK(lsc_kube_split_feed(&sp, huge, 1002, collect, &l) == 0);
    CHECK(l.n == 1 && sp.dropped == 1);
    lsc_kube_split_free(&sp);

    /* a handler's stop ends the feed with its value */
    memset(&l, 0, sizeof(l));
    l.stop_at = 2;
    lsc_kube_split_init(&sp, 64);
    CHECK(lsc_kube_split_feed(&sp, "1\n2\n3\n", 6, collect, &l) == 7);
    CHECK(l.n == 2);
    lsc_kube_split_reset(&sp);
    lsc_kube_split_free(&sp);

    /* NUL bytes and binary garbage pass through as lines, no crash */
    memset(&l, 0, sizeof(l));
    lsc_kube_split_init(&sp, 64);
    CHECK(lsc_kube_split_feed(&sp, "\0\xff\xfe\n\0\n", 6, collect, &l) == 0);
    CHECK(l.n == 2);
    lsc_kube_split_free(&sp);
    free(huge);
}


/* the informer: lines of a watch and relists */

typedef struct {
    int         added, modified, deleted;
    char        last[128];
} heard_t;


static void
hear(void *data, int type, json_t *obj, json_t *old)
{
    heard_t     *h = data;
    json_t      *name;

    name = json_object_get(json_object_get(obj, "metadata"), "name");
    snprintf(h->last, sizeof(h->last), "%d %s", type,
             json_string_value(name));
    if (type == LSC_KUBE_ADDED) {
        h->added++;
        CHECK(old == NULL);
    } else if (type == LSC_KUBE_MODIFIED) {
        h->modified++;
        CHECK(old != NULL);
    } else {
        h->deleted++;
        CHECK(old != NULL);
    }
}


static int
line(lsc_kube_informer_t *inf, const char *s)
{
    return lsc_kube_informer_line(inf, s, strlen(s));
}


#define CM(type, name, rv)                                                 \
    "{\"type\":\"" type "\",\"object\":{\"kind\":\"ConfigMap\","          \
    "\"apiVersion\":\"v1\",\"metadata\":{\"name\":\"" name "\","          \
    "\"namespace\":\"ns\",\"resourceVersion\":\"" rv "\"}}}"


static void
test_informer_lines(void)
{
    lsc_kube_informer_t        *inf;
    lsc_kube_informer_stats_t   s;
    heard_t                     h;
    char                       *big;
    size_t                      n;

    static const char  *nonsense[] = {
        "not json",
        "[1,2]",
        "{}",
        "{\"type\":5,\"object\":{}}",
        "{\"type\":\"ADDED\",\"object\":\"x\"}",
        "{\"type\":\"EXPLODED\",\"object\":{}}",
        "{\"type\":\"ADDED\",\"object\":{\"metadata\":{\"name\":7,"
            "\"namespace\":\"ns\",\"resourceVersion\":\"1\"}}}",
        CM("ADDED", "../etc", "5"),
        CM("ADDED", "a b", "5"),
        CM("ADDED", "x", ""),
        CM("ADDED", "x", "5\\n6"),
        "{\"type\":\"ADDED\",\"object\":{\"kind\":\"Secret\",\"metadata\":"
            "{\"name\":\"s\",\"namespace\":\"ns\",\"resourceVersion\":\"1\"}}}",
        "{\"type\":\"ADDED\",\"object\":{\"metadata\":{\"name\":\"x\","
            "\"resourceVersion\":\"1\"}}}",
        "{\"type\":\"ADDED\",\"object\":{\"metadata\":{\"name\":\"x\","
            "\"namespace\":[],\"resourceVersion\":\"1\"}}}",
        "{\"type\":\"ADDED\",\"type\":\"DELETED\",\"object\":{}}",
        "{\"type\":\"BOOKMARK\",\"object\":{\"metadata\":{}}}",
        "{\"type\":\"ADDED\",\"object\":{\"metadata\":{\"name\":\"x\","
            "\"namespace\":\"ns\",\"resourceVersion\":\"1\"}}",
        "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
        NULL
    };
    const char **p;

    memset(&h, 0, sizeof(h));
    inf = lsc_kube_informer_detached(&lsc_kube_configmaps, hear, &h);
    CHECK(inf != NULL);

    CHECK(line(inf, CM("ADDED", "a", "10")) == 0);
    CHECK(h.added == 1 && strcmp(h.last, "1 a") == 0);
    CHECK(lsc_kube_informer_get(inf, "ns", "a") != NULL);
    CHECK(line(inf, CM("MODIFIED", "a", "11")) == 0);
    CHECK(h.modified == 1);
    /* the same version again (a resumed watch) is nothing new */
    CHECK(line(inf, CM("MODIFIED", "a", "11")) == 0);
    CHECK(h.modified == 1);
    /* ADDED of a known object is a change, MODIFIED of an unknown one new */
    CHECK(line(inf, CM("ADDED", "a", "12")) == 0);
    CHECK(h.modified == 2 && h.added == 1);
    CHECK(line(inf, CM("MODIFIED", "b", "13")) == 0);
    CHECK(h.added == 2);
    CHECK(line(inf, CM("DELETED", "b", "14")) == 0);
    CHECK(h.deleted == 1 && strcmp(h.last, "3 b") == 0);
    CHECK(lsc_kube_informer_get(inf, "ns", "b") == NULL);
    /* a DELETED of what we never had: nothing to tell */
    CHECK(line(inf, CM("DELETED", "zz", "15")) == 0);
    CHECK(h.deleted == 1);
    CHECK(line(inf, "{\"type\":\"BOOKMARK\",\"object\":{\"kind\":"
               "\"ConfigMap\",\"metadata\":{\"resourceVersion\":\"99\"}}}")
          == 0);
    lsc_kube_informer_stats(inf, &s);
    CHECK(strcmp(s.resource_version, "99") == 0);
    CHECK(s.bookmarks == 1 && s.events == 7 && s.skipped == 0);

    /* nonsense: skipped, counted, the cache and version untouched */
    for (p = nonsense; *p != NULL; p++) {
        CHECK(line(inf, *p) == 0);
    }
    n = 4 << 20;
    big = malloc(n + 200);
    n = snprintf(big, 200, "{\"type\":\"ADDED\",\"object\":{\"metadata\":"
                 "{\"namespace\":\"ns\",\"resourceVersion\":\"1\","
                 "\"name\":\"");
    memset(big + n, 'a', 4 << 20);
    strcpy(big + n + (4 << 20), "\"}}}");
    CHECK(line(inf, big) == 0);
    free(big);
    lsc_kube_informer_stats(inf, &s);
    CHECK(s.skipped == sizeof(nonsense) / sizeof(nonsense[0]));
    CHECK(strcmp(s.resource_version, "99") == 0);
    CHECK(json_object_size(lsc_kube_informer_cache(inf)) == 1);
    CHECK(h.added == 2 && h.modified == 2 && h.deleted == 1);

    /* ERROR: 410 asks for a relist, others only end the stream */
    CHECK(line(inf, "{\"type\":\"ERROR\",\"object\":{\"kind\":\"Status\","
               "\"code\":500,\"message\":\"boom\"}}") == 1);
    CHECK(!lsc_kube_informer_gone(inf));
    CHECK(line(inf, "{\"type\":\"ERROR\",\"object\":{\"kind\":\"Status\","
               "\"apiVersion\":\"v1\",\"status\":\"Failure\",\"message\":"
               "\"too old resource version: 1 (50)\",\"reason\":"
               "\"Expired\",\"code\":410}}") == 1);
    CHECK(lsc_kube_informer_gone(inf));
    CHECK(json_object_size(lsc_kube_informer_cache(inf)) == 1);

    lsc_kube_informer_free(inf);
}


static json_t *
cm(const char *name, const char *rv)
{
    return json_pack("{s:s, s:{s:s, s:s, s:s}}", "kind", "ConfigMap",
                     "metadata", "name", name, "namespace", "ns",
                     "resourceVersion", rv);
}


static void
test_informer_relist(void)
{
    lsc_kube_informer_t  *inf;
    heard_t               h;
    json_t               *items;

    memset(&h, 0, sizeof(h));
    inf = lsc_kube_informer_detached(&lsc_kube_configmaps, hear, &h);
    CHECK(!lsc_kube_informer_synced(inf));

    items = json_pack("{s:o, s:o, s:o}", "ns/a", cm("a", "1"),
                      "ns/b", cm("b", "2"), "ns/c", cm("c", "3"));
    CHECK(lsc_kube_informer_replace(inf, items, "3", 0) == 0);
    CHECK(h.added == 3 && lsc_kube_informer_synced(inf));

    /* a later list: a gone, b the same, c changed, d new */
    items = json_pack("{s:o, s:o, s:o}", "ns/b", cm("b", "2"),
                      "ns/c", cm("c", "7"), "ns/d", cm("d", "8"));
    CHECK(lsc_kube_informer_replace(inf, items, "8", 0) == 0);
    CHECK(h.added == 4 && h.modified == 1 && h.deleted == 1);
    CHECK(lsc_kube_informer_get(inf, "ns", "a") == NULL);
    CHECK(lsc_kube_informer_get(inf, "ns", "d") != NULL);
    CHECK(json_object_size(lsc_kube_informer_cache(inf)) == 3);

    /* a list that had nonsense in it: changes yes, deletions no */
    items = json_pack("{s:o}", "ns/b", cm("b", "9"));
    CHECK(lsc_kube_informer_replace(inf, items, "9", 1) == 0);
    CHECK(h.modified == 2 && h.deleted == 1);
    CHECK(json_object_size(lsc_kube_informer_cache(inf)) == 3);
    lsc_kube_informer_free(inf);
}


/* a kind without namespaces: keyed by name, a namespace is nonsense */
static void
test_informer_cluster_scoped(void)
{
    static const lsc_kube_gvr_t  rt = {
        "llmsafespace.dev", "v1", "runtimeenvironments",
        "RuntimeEnvironment", 0
    };
    lsc_kube_informer_t        *inf;
    lsc_kube_informer_stats_t   s;
    heard_t                     h;

    memset(&h, 0, sizeof(h));
    inf = lsc_kube_informer_detached(&rt, hear, &h);
    CHECK(line(inf, "{\"type\":\"ADDED\",\"object\":{\"kind\":"
               "\"RuntimeEnvironment\",\"metadata\":{\"name\":\"python\","
               "\"resourceVersion\":\"3\"}}}") == 0);
    CHECK(lsc_kube_informer_get(inf, NULL, "python") != NULL);
    CHECK(line(inf, "{\"type\":\"ADDED\",\"object\":{\"kind\":"
               "\"RuntimeEnvironment\",\"metadata\":{\"name\":\"node\","
               "\"namespace\":\"\",\"resourceVersion\":\"4\"}}}") == 0);
    CHECK(line(inf, "{\"type\":\"ADDED\",\"object\":{\"kind\":"
               "\"RuntimeEnvironment\",\"metadata\":{\"name\":\"x\","
               "\"namespace\":\"ns\",\"resourceVersion\":\"5\"}}}") == 0);
    lsc_kube_informer_stats(inf, &s);
    CHECK(h.added == 2 && s.skipped == 1);
    CHECK(lsc_kube_informer_get(inf, NULL, "node") != NULL);
    CHECK(lsc_kube_informer_get(inf, "ns", "x") == NULL);
    lsc_kube_informer_free(inf);
}


/* Status bodies */

static void
test_status(void)
{
    lsc_kube_status_t   st;
    char               *big;
    size_t              n;
    const char         *body;

    body = "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},"
           "\"status\":\"Failure\",\"message\":\"ConfigMap \\\"x\\\" is "
           "invalid: data: Invalid value\",\"reason\":\"Invalid\","
           "\"details\":{\"name\":\"x\",\"kind\":\"ConfigMap\",\"causes\":"
           "[{\"reason\":\"FieldValueInvalid\",\"message\":\"Invalid "
           "value: \\\"a b\\\"\",\"field\":\"data\"},{\"reason\":"
           "\"FieldValueRequired\",\"message\":\"Required value\","
           "\"field\":\"metadata.name\"}]},\"code\":422}";
    CHECK(lsc_kube_status_decode(422, body, strlen(body), &st)
          == LSC_KUBE_EINVALID);
    CHECK(st.code == 422);
    CHECK(strcmp(st.reason, "Invalid") == 0);
    CHECK(strcmp(st.kind, "ConfigMap") == 0 && strcmp(st.name, "x") == 0);
    CHECK(st.ncauses == 2);
    CHECK(strcmp(st.causes[0].field, "data") == 0);
    CHECK(strcmp(st.causes[0].reason, "FieldValueInvalid") == 0);
    CHECK(strcmp(st.causes[1].field, "metadata.name") == 0);
    CHECK(strcmp(st.causes[1].message, "Required value") == 0);

    body = "{\"kind\":\"Status\",\"status\":\"Failure\",\"message\":"
           "\"Operation cannot be fulfilled on configmaps \\\"x\\\": the "
           "object has been modified\",\"reason\":\"Conflict\",\"code\":409}";
    CHECK(lsc_kube_status_decode(409, body, strlen(body), &st)
          == LSC_KUBE_ECONFLICT);
    CHECK(strcmp(st.reason, "Conflict") == 0 && st.ncauses == 0);

    body = "{\"kind\":\"Status\",\"reason\":\"TooManyRequests\",\"details\":"
           "{\"retryAfterSeconds\":4},\"code\":429}";
    CHECK(lsc_kube_status_decode(429, body, strlen(body), &st)
          == LSC_KUBE_ETHROTTLED);
    CHECK(st.retry_after == 4);

    /* the HTTP code wins over the body's, but for 200 (ERROR events) */
    body = "{\"kind\":\"Status\",\"code\":200,\"reason\":\"NotFound\"}";
    CHECK(lsc_kube_status_decode(404, body, strlen(body), &st)
          == LSC_KUBE_ENOTFOUND);
    CHECK(st.code == 404);
    body = "{\"kind\":\"Status\",\"code\":410,\"reason\":\"Expired\"}";
    CHECK(lsc_kube_status_decode(200, body, strlen(body), &st)
          == LSC_KUBE_EGONE);
    body = "{\"kind\":\"Status\",\"code\":99999}";
    CHECK(lsc_kube_status_decode(200, body, strlen(body), &st)
          == LSC_KUBE_ESERVER);

    /* not a Status: a proxy's page keeps a printable prefix */
    body = "<html>\r\n<h1>502 Bad Gateway</h1>\x01</html>";
    CHECK(lsc_kube_status_decode(502, body, strlen(body), &st)
          == LSC_KUBE_ESERVER);
    CHECK(st.code == 502 && strncmp(st.message, "<html>  <h1>", 12) == 0);
    CHECK(strchr(st.message, '\x01') == NULL);
    CHECK(lsc_kube_status_decode(503, NULL, 0, &st) == LSC_KUBE_ESERVER);
    CHECK(lsc_kube_status_decode(0, NULL, 0, &st) == LSC_KUBE_ETRANSPORT);
    CHECK(lsc_kube_status_decode(403, "{", 1, &st) == LSC_KUBE_EREFUSED);
    CHECK(lsc_kube_status_decode(415, "[]", 2, &st) == LSC_KUBE_EREFUSED);

    /* wrong types are ignored, not trusted */
    body = "{\"kind\":\"Status\",\"reason\":7,\"message\":[],\"details\":"
           "{\"causes\":\"no\",\"kind\":{},\"retryAfterSeconds\":-3},"
           "\"code\":\"422\"}";
    CHECK(lsc_kube_status_decode(422, body, strlen(body), &st)
          == LSC_KUBE_EINVALID);
    CHECK(st.reason[0] == '\0' && st.message[0] == '\0' && st.ncauses == 0);
    CHECK(st.retry_after == 0 && st.kind[0] == '\0');
    body = "{\"kind\":\"Status\",\"details\":{\"causes\":[1,\"x\",{\"field\":"
           "5},{},{},{},{},{},{},{},{},{},{}]}}";
    CHECK(lsc_kube_status_decode(422, body, strlen(body), &st)
          == LSC_KUBE_EINVALID);
    CHECK(st.ncauses == LSC_KUBE_MAX_CAUSES);
    CHECK(st.causes[0].field[0] == '\0');

    /* a huge message is cut to the field */
    n = 1 << 20;
    big = malloc(n + 100);
    n = snprintf(big, 100, "{\"kind\":\"Status\",\"message\":\"");
    memset(big + n, 'm', 1 << 20);
    strcpy(big + n + (1 << 20), "\"}");
    CHECK(lsc_kube_status_decode(500, big, strlen(big), &st)
          == LSC_KUBE_ESERVER);
    CHECK(strlen(st.message) == sizeof(st.message) - 1);
    /* cut where a character would be split: before it */
    memcpy(big + n + sizeof(st.message) - 3, "\xe2\x82\xac", 3);
    CHECK(lsc_kube_status_decode(500, big, strlen(big), &st)
          == LSC_KUBE_ESERVER);
    CHECK(strlen(st.message) == sizeof(st.message) - 3);
    free(big);

    CHECK(lsc_kube_rc(201) == LSC_KUBE_OK);
    CHECK(lsc_kube_rc(410) == LSC_KUBE_EGONE);
    CHECK(strcmp(lsc_kube_strerror(LSC_KUBE_ECONFLICT), "conflict") == 0);
}


/* configuration */

static char  tmpdir[] = "/tmp/lsc-kube-unit-XXXXXX";


static void
put(const char *name, const char *text)
{
    char   path[512];
    FILE  *f;

    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
}


static char *
at(const char *name)
{
    static char  path[512];

    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    return path;
}


#define CA_PEM    "-----BEGIN CERTIFICATE-----\nCA\n" \
                  "-----END CERTIFICATE-----\n"
#define CERT_PEM  "-----BEGIN CERTIFICATE-----\nME\n" \
                  "-----END CERTIFICATE-----\n"
#define KEY_PEM   "-----BEGIN PRIVATE KEY-----\nK\n" \
                  "-----END PRIVATE KEY-----\n"
/* base64 of the three above */
#define CA_B64    "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCkNBCi0tLS0tRU5E" \
                  "IENFUlRJRklDQVRFLS0tLS0K"
#define CERT_B64  "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1FCi0tLS0tRU5E" \
                  "IENFUlRJRklDQVRFLS0tLS0K"
#define KEY_B64   "LS0tLS1CRUdJTiBQUklWQVRFIEtFWS0tLS0tCksKLS0tLS1FTkQg" \
                  "UFJJVkFURSBLRVktLS0tLQo="


static void
test_config(void)
{
    lsc_kube_config_t   cf;
    const char         *tok;

    CHECK(mkdtemp(tmpdir) != NULL);

    /* inline data, the current context of two */
    put("inline.yaml",
        "apiVersion: v1\nkind: Config\ncurrent-context: dev\n"
        "clusters:\n"
        "- name: other\n  cluster:\n    server: https://10.0.0.1\n"
        "- name: c1\n  cluster:\n    server: https://127.0.0.1:6443/\n"
        "    certificate-authority-data: " CA_B64 "\n"
        "contexts:\n"
        "- name: dev\n  context:\n    cluster: c1\n    user: u1\n"
        "    namespace: team-a\n"
        "- name: tok\n  context:\n    cluster: other\n    user: u2\n"
        "users:\n"
        "- name: u1\n  user:\n    client-certificate-data: " CERT_B64 "\n"
        "    client-key-data: " KEY_B64 "\n"
        "- name: u2\n  user:\n    token: abc.def\n");
    CHECK(lsc_kube_config_kubeconfig(&cf, at("inline.yaml"), NULL) == 0);
    CHECK(cf.server && strcmp(cf.server, "https://127.0.0.1:6443") == 0);
    CHECK(cf.namespace && strcmp(cf.namespace, "team-a") == 0);
    CHECK(cf.ca && strcmp(cf.ca, CA_PEM) == 0 && cf.ca_len == strlen(CA_PEM));
    CHECK(cf.cert && strcmp(cf.cert, CERT_PEM) == 0);
    CHECK(cf.key && strcmp(cf.key, KEY_PEM) == 0);
    CHECK(cf.token == NULL && !cf.insecure);
    lsc_kube_config_free(&cf);

    /* another context by name: a token, the default namespace */
    CHECK(lsc_kube_config_kubeconfig(&cf, at("inline.yaml"), "tok") == 0);
    CHECK(cf.token && strcmp(cf.token, "abc.def") == 0);
    CHECK(strcmp(cf.server, "https://10.0.0.1") == 0);
    CHECK(strcmp(cf.namespace, "default") == 0);
    CHECK(cf.ca == NULL && cf.cert == NULL);
    lsc_kube_config_free(&cf);
    CHECK(lsc_kube_config_kubeconfig(&cf, at("inline.yaml"), "nope") == -1);

    /* files, relative to the kubeconfig */
    put("ca.crt", CA_PEM);
    put("me.crt", CERT_PEM);
    put("me.key", KEY_PEM);
    put("files.yaml",
        "current-context: x\n"
        "clusters:\n- name: c\n  cluster:\n    server: https://h:1\n"
        "    certificate-authority: ca.crt\n"
        "    insecure-skip-tls-verify: true\n"
        "contexts:\n- name: x\n  context: {cluster: c, user: u}\n"
        "users:\n- name: u\n  user:\n    client-certificate: me.crt\n");
    /* a certificate without its key is refused */
    CHECK(lsc_kube_config_kubeconfig(&cf, at("files.yaml"), NULL) == -1);
    CHECK(cf.server == NULL);
    put("files.yaml",
        "current-context: x\n"
        "clusters:\n- name: c\n  cluster:\n    server: https://h:1\n"
        "    certificate-authority: ca.crt\n"
        "    insecure-skip-tls-verify: true\n"
        "contexts:\n- name: x\n  context: {cluster: c, user: u}\n"
        "users:\n- name: u\n  user:\n    client-certificate: me.crt\n"
        "    client-key: me.key\n");
    CHECK(lsc_kube_config_kubeconfig(&cf, at("files.yaml"), NULL) == 0);
    CHECK(cf.ca && strcmp(cf.ca, CA_PEM) == 0);
    CHECK(cf.cert && strcmp(cf.cert, CERT_PEM) == 0);
    CHECK(cf.key && strcmp(cf.key, KEY_PEM) == 0);
    CHECK(cf.insecure == 1);
    lsc_kube_config_free(&cf);

    /* refused: no current context, bad base64, missing file, no server */
    put("bad1.yaml", "clusters: []\n");
    CHECK(lsc_kube_config_kubeconfig(&cf, at("bad1.yaml"), NULL) == -1);
    put("bad2.yaml",
        "current-context: x\n"
        "clusters:\n- name: c\n  cluster:\n    server: https://h\n"
        "    certificate-authority-data: \"@@not base64@@\"\n"
        "contexts:\n- name: x\n  context: {cluster: c, user: u}\n");
    CHECK(lsc_kube_config_kubeconfig(&cf, at("bad2.yaml"), NULL) == -1);
    put("bad3.yaml",
        "current-context: x\n"
        "clusters:\n- name: c\n  cluster:\n    server: https://h\n"
        "    certificate-authority: /nonexistent/ca.crt\n"
        "contexts:\n- name: x\n  context: {cluster: c, user: u}\n");
    CHECK(lsc_kube_config_kubeconfig(&cf, at("bad3.yaml"), NULL) == -1);
    put("bad4.yaml",
        "current-context: x\n"
        "clusters:\n- name: c\n  cluster:\n    server: ftp://h\n"
        "contexts:\n- name: x\n  context: {cluster: c, user: u}\n");
    CHECK(lsc_kube_config_kubeconfig(&cf, at("bad4.yaml"), NULL) == -1);
    put("bad5.yaml", "- [unclosed\n");
    CHECK(lsc_kube_config_kubeconfig(&cf, at("bad5.yaml"), NULL) == -1);
    CHECK(lsc_kube_config_kubeconfig(&cf, at("absent.yaml"), NULL) == -1);

    /* the service account; the token is re-read after a minute */
    put("ca.crt", CA_PEM);
    put("token", "first-token\n");
    put("namespace", "sandboxes");
    unsetenv("KUBERNETES_SERVICE_HOST");
    CHECK(lsc_kube_config_in_cluster(&cf, tmpdir) == -1);
    setenv("KUBERNETES_SERVICE_HOST", "fd00::1", 1);
    setenv("KUBERNETES_SERVICE_PORT", "443", 1);
    CHECK(lsc_kube_config_in_cluster(&cf, tmpdir) == 0);
    CHECK(strcmp(cf.server, "https://[fd00::1]:443") == 0);
    CHECK(strcmp(cf.namespace, "sandboxes") == 0);
    CHECK(cf.ca && strcmp(cf.ca, CA_PEM) == 0);
    tok = lsc_kube_config_token(&cf, cf.token_read_ms);
    CHECK(tok && strcmp(tok, "first-token") == 0);
    put("token", "second-token");
    tok = lsc_kube_config_token(&cf, cf.token_read_ms + 1000);
    CHECK(tok && strcmp(tok, "first-token") == 0);
    tok = lsc_kube_config_token(&cf, cf.token_read_ms + 60000);
    CHECK(tok && strcmp(tok, "second-token") == 0);
    /* a token file gone keeps the last good token */
    unlink(at("token"));
    tok = lsc_kube_config_token(&cf, cf.token_read_ms + 60000);
    CHECK(tok && strcmp(tok, "second-token") == 0);
    lsc_kube_config_free(&cf);
    setenv("KUBERNETES_SERVICE_PORT", "443; rm", 1);
    CHECK(lsc_kube_config_in_cluster(&cf, tmpdir) == -1);
    unsetenv("KUBERNETES_SERVICE_HOST");
    unsetenv("KUBERNETES_SERVICE_PORT");

    unlink(at("inline.yaml"));
    unlink(at("files.yaml"));
    unlink(at("bad1.yaml"));
    unlink(at("bad2.yaml"));
    unlink(at("bad3.yaml"));
    unlink(at("bad4.yaml"));
    unlink(at("bad5.yaml"));
    unlink(at("ca.crt"));
    unlink(at("me.crt"));
    unlink(at("me.key"));
    unlink(at("namespace"));
    rmdir(tmpdir);
}


static void
test_base64(void)
{
    static const struct {
        const char  *in;
        const char  *out;
    } ok[] = {
        { "", "" }, { "Zg==", "f" }, { "Zm8=", "fo" }, { "Zm9v", "foo" },
        { "Zm9v\nYmFy\n", "foobar" }, { " Zm9vYg== ", "foob" }
    };
    static const char  *bad[] = {
        "Zg", "Zg=", "Z===", "Zm9v!", "Zg==Zg==", "Zh==", "Z", "=Zm9v",
        "Zm9-"
    };
    char    *out;
    size_t   i, len;

    for (i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        out = NULL;
        CHECK(lsc_kube_base64_decode(ok[i].in, &out, &len) == 0);
        CHECK(out && len == strlen(ok[i].out)
              && strcmp(out, ok[i].out) == 0);
        free(out);
    }
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        out = NULL;
        CHECK(lsc_kube_base64_decode(bad[i], &out, &len) == -1);
        CHECK(out == NULL);
    }
}


static void
test_bucket(void)
{
    lsc_kube_bucket_t  b;
    int64_t            w, d, lo, hi;
    int                i, a;

    lsc_kube_bucket_init(&b, 10, 3, 1000);
    CHECK(lsc_kube_bucket_take(&b, 1000) == 0);
    CHECK(lsc_kube_bucket_take(&b, 1000) == 0);
    CHECK(lsc_kube_bucket_take(&b, 1000) == 0);
    w = lsc_kube_bucket_take(&b, 1000);
    CHECK(w > 90 && w <= 101);
    CHECK(lsc_kube_bucket_take(&b, 1050) > 0);
    CHECK(lsc_kube_bucket_take(&b, 1101) == 0);
    CHECK(lsc_kube_bucket_take(&b, 1101) > 0);
    /* an hour idle refills to the burst, no more */
    for (i = 0; i < 3; i++) {
        CHECK(lsc_kube_bucket_take(&b, 3601000) == 0);
    }
    CHECK(lsc_kube_bucket_take(&b, 3601000) > 0);
    /* a clock going back gives nothing */
    CHECK(lsc_kube_bucket_take(&b, 1000) > 0);

    /* sustained: 10 qps over 10 s is ~100 + the burst */
    lsc_kube_bucket_init(&b, 10, 3, 0);
    for (i = 0, a = 0; i <= 10000; i++) {
        if (lsc_kube_bucket_take(&b, i) == 0) {
            a++;
        }
    }
    CHECK(a >= 100 && a <= 104);

    for (i = 0; i < 30; i++) {
        d = lsc_kube_backoff(i, 500, 30000);
        hi = 500LL << (i > 10 ? 10 : i);
        hi = hi > 30000 ? 30000 : hi;
        lo = hi / 2;
        CHECK(d >= lo && d <= hi);
    }
}


static void
test_event(void)
{
    json_t      *obj, *ev;
    const char  *name;
    char         note[3000];

    obj = json_pack("{s:s, s:s, s:{s:s, s:s, s:s, s:s}}",
                    "apiVersion", "llmsafespace.dev/v1", "kind", "Sandbox",
                    "metadata", "name", "sb-1", "namespace", "ns",
                    "uid", "u-1", "resourceVersion", "42");
    memset(note, 'n', sizeof(note) - 1);
    /* a 3-byte UTF-8 character across the 1024th byte */
    memcpy(note + 1022, "\xe2\x82\xac", 3);
    note[sizeof(note) - 1] = '\0';
    ev = lsc_kube_event_build(obj, "Normal", "Started", "Start", note, NULL,
                              "ctl-0", 1764992800123LL);
    CHECK(ev != NULL);
    name = json_string_value(json_object_get(json_object_get(ev,
                                             "metadata"), "name"));
    CHECK(name && strncmp(name, "sb-1.", 5) == 0 && strlen(name) == 21);
    CHECK(strcmp(json_string_value(json_object_get(json_object_get(ev,
                 "metadata"), "namespace")), "ns") == 0);
    CHECK(strcmp(json_string_value(json_object_get(ev, "eventTime")),
                 "2025-12-06T03:46:40.123000Z") == 0);
    CHECK(json_string_length(json_object_get(ev, "note")) == 1022);
    CHECK(strcmp(json_string_value(json_object_get(json_object_get(ev,
                 "regarding"), "uid")), "u-1") == 0);
    CHECK(strcmp(json_string_value(json_object_get(ev,
                 "reportingController")), "llmsafespace.dev/controller")
          == 0);
    json_decref(ev);
    CHECK(lsc_kube_event_build(obj, "Fatal", "x", "y", NULL, NULL, NULL, 0)
          == NULL);
    json_object_del(obj, "kind");
    CHECK(lsc_kube_event_build(obj, "Normal", "x", "y", NULL, NULL, NULL, 0)
          == NULL);
    json_decref(obj);
}


static void
test_path(void)
{
    static const lsc_kube_gvr_t  sb = {
        "llmsafespace.dev", "v1", "sandboxes", "Sandbox", 1
    };
    static const lsc_kube_gvr_t  rt = {
        "llmsafespace.dev", "v1", "runtimeenvironments",
        "RuntimeEnvironment", 0
    };
    char  p[256];

    CHECK(lsc_kube_path(p, sizeof(p), &lsc_kube_configmaps, "ns", "a", NULL)
          == 0 && strcmp(p, "/api/v1/namespaces/ns/configmaps/a") == 0);
    CHECK(lsc_kube_path(p, sizeof(p), &lsc_kube_configmaps, NULL, NULL, NULL)
          == 0 && strcmp(p, "/api/v1/configmaps") == 0);
    CHECK(lsc_kube_path(p, sizeof(p), &sb, "ns", "s.1", "status") == 0
          && strcmp(p, "/apis/llmsafespace.dev/v1/namespaces/ns/sandboxes/"
                    "s.1/status") == 0);
    CHECK(lsc_kube_path(p, sizeof(p), &rt, NULL, "python", NULL) == 0
          && strcmp(p, "/apis/llmsafespace.dev/v1/runtimeenvironments/"
                    "python") == 0);
    CHECK(lsc_kube_path(p, sizeof(p), &rt, "ns", "python", NULL) == -1);
    CHECK(lsc_kube_path(p, sizeof(p), &sb, "ns", "..", NULL) == -1);
    CHECK(lsc_kube_path(p, sizeof(p), &sb, "ns", "a/b", NULL) == -1);
    CHECK(lsc_kube_path(p, sizeof(p), &sb, "ns", "a?watch=1", NULL) == -1);
    CHECK(lsc_kube_path(p, sizeof(p), &sb, "n s", "a", NULL) == -1);
    CHECK(lsc_kube_path(p, sizeof(p), &sb, "ns", NULL, "status") == -1);
    CHECK(lsc_kube_path(p, 20, &sb, "ns", "a", NULL) == -1);
}


int
main(void)
{
    test_split();
    test_informer_lines();
    test_informer_relist();
    test_informer_cluster_scoped();
    test_status();
    test_config();
    test_base64();
    test_bucket();
    test_event();
    test_path();

    printf("%d checks, %d failed\n", checks, failures);
    return failures == 0 ? 0 : 1;
}
