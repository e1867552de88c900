/*
 * lsc-kubectl-lite: the controller's Kubernetes client as a command, so
 * that tests drive it against an API server.  Every answer is one JSON
 * line on stdout: {"rc": "ok", "object": ...} or {"rc": "conflict",
 * "code": 409, "reason": ..., "message": ..., "causes": [...]}; exit 0
 * on "ok", 1 otherwise, 2 on usage.
 *
 *   lsc-kubectl-lite [--kubeconfig F | --in-cluster DIR] [-n NS]
 *       [--qps Q --burst B] RESOURCE VERB [ARGS]
 *
 *   --in-cluster DIR  the service account mounted at DIR (token, ca.crt,
 *                     namespace) with KUBERNETES_SERVICE_HOST and _PORT
 *
 *   RESOURCE  [GROUP/]VERSION/PLURAL/KIND, e.g. v1/configmaps/ConfigMap;
 *             --cluster-scoped for a kind without namespaces
 *   get NAME | list [--selector S] [--limit N] | create JSON
 *   update NAME JSON [--sub status] | patch NAME JSON [--sub status]
 *   delete NAME [--uid U] [--rv RV] [--propagation P]
 *   event NAME TYPE REASON ACTION NOTE
 *   repeat N NAME      N gets, one after the other: {"ms": elapsed}
 *   watch [--selector S] [--seconds N] [--start-rv RV]
 *       one line per notification {"event", "key", "rv"}, {"synced"}
 *       once listed, {"stats"} when they change, {"final", "cache"} at
 *       the end (after N seconds, SIGTERM, or "stop" on a piped stdin:
 *       stdin is one of the loop's own descriptors, as the controller's
 *       Redis connection would be, and must wake it at once)
 */

#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <curl/curl.h>

#include "../../src/lsc.h"
#include "../../src/lsc_kube.h"


static volatile sig_atomic_t  stop;


static void
on_signal(int signo)
{
    (void) signo;
    stop = 1;
}


static void
emit(json_t *line)
{
    char  *s;

    s = json_dumps(line, JSON_COMPACT);
    if (s != NULL) {
        printf("%s\n", s);
        fflush(stdout);
        free(s);
    }
    json_decref(line);
}


static int
answer(lsc_kube_rc_e rc, json_t *obj, lsc_kube_status_t *st)
{
    json_t  *out, *causes;
    size_t   i;

    out = json_pack("{s:s}", "rc", lsc_kube_strerror(rc));
    if (rc == LSC_KUBE_OK) {
        json_object_set(out, "object", obj ? obj : json_null());
    } else {
        causes = json_array();
        for (i = 0; i < st->ncauses; i++) {
            json_array_append_new(causes, json_pack("{s:s, s:s, s:s}",
                                  "reason", st->causes[i].reason,
                                  "field", st->causes[i].field,
                                  "message", st->causes[i].message));
        }
        json_object_set_new(out, "code", json_integer(st->code));
        json_object_set_new(out, "reason", json_string(st->reason));
        json_object_set_new(out, "message", json_string(st->message));
        json_object_set_new(out, "kind", json_string(st->kind));
        json_object_set_new(out, "name", json_string(st->name));
        json_object_set_new(out, "retryAfter",
                            json_integer(st->retry_after));
        json_object_set_new(out, "causes", causes);
    }
    emit(out);
    return rc == LSC_KUBE_OK ? 0 : 1;
}


/* [GROUP/]VERSION/PLURAL/KIND into gvr; the strings point into buf */
static int
parse_gvr(char *buf, lsc_kube_gvr_t *gvr, int namespaced)
{
    char    *part[4];
    int      n;

    n = 0;
    part[n++] = buf;
    for (; *buf != '\0'; buf++) {
        if (*buf == '/') {
            if (n == 4) {
                return -1;
            }
            *buf = '\0';
            part[n++] = buf + 1;
        }
    }
    if (n == 3) {
        gvr->group = "";
        gvr->version = part[0];
        gvr->plural = part[1];
        gvr->kind = part[2];
    } else if (n == 4) {
        gvr->group = part[0];
        gvr->version = part[1];
        gvr->plural = part[2];
        gvr->kind = part[3];
    } else {
        return -1;
    }
    gvr->namespaced = namespaced;
    return 0;
}


static json_t *
parse_json(const char *s)
{
    json_error_t  err;
    json_t       *v;

    v = json_loads(s, 0, &err);
    if (!json_is_object(v)) {
        fprintf(stderr, "lsc-kubectl-lite: not a JSON object: %s\n",
                err.text);
        json_decref(v);
        return NULL;
    }
    return v;
}


typedef struct {
    lsc_kube_informer_t  *inf;
} watch_t;


static void
on_change(void *data, int type, json_t *obj, json_t *old)
{
    static const char  *names[] = { "", "ADDED", "MODIFIED", "DELETED" };
    json_t             *meta;
    char                key[320];
    const char         *ns;

    (void) data;
    (void) old;
    meta = json_object_get(obj, "metadata");
    ns = json_string_value(json_object_get(meta, "namespace"));
    snprintf(key, sizeof(key), "%s%s%s", ns ? ns : "", ns ? "/" : "",
             json_string_value(json_object_get(meta, "name")));
    emit(json_pack("{s:s, s:s, s:s?}", "event", names[type], "key", key,
                   "rv", json_string_value(json_object_get(meta,
                                           "resourceVersion"))));
}


static json_t *
stats_json(lsc_kube_informer_t *inf)
{
    lsc_kube_informer_stats_t  s;

    lsc_kube_informer_stats(inf, &s);
    return json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:s}",
                     "lists", (json_int_t) s.lists,
                     "listFailures", (json_int_t) s.list_failures,
                     "watches", (json_int_t) s.watches,
                     "relistsGone", (json_int_t) s.relists_gone,
                     "events", (json_int_t) s.events,
                     "bookmarks", (json_int_t) s.bookmarks,
                     "skipped", (json_int_t) s.skipped,
                     "resourceVersion", s.resource_version);
}


static int
watch(lsc_kube_t *kc, const lsc_kube_gvr_t *gvr, const char *ns,
    const char *selector, int seconds, const char *start_rv)
{
    lsc_kube_informer_t  *inf;
    json_t               *stats, *last, *cache, *obj;
    const char           *key;
    int64_t               end;
    int                   synced, piped;
    struct pollfd         in;
    struct stat           sb;
    char                  buf[64];
    ssize_t               n;

    inf = lsc_kube_informer_new(kc, gvr, ns, selector, on_change, NULL);
    if (inf == NULL) {
        return 2;
    }
    if (start_rv != NULL && lsc_kube_informer_start_at(inf, start_rv) != 0)
    {
        lsc_kube_informer_free(inf);
        return 2;
    }
    end = lsc_now_ms() + (int64_t) seconds * 1000;
    synced = 0;
    last = NULL;
    piped = fstat(0, &sb) == 0 && S_ISFIFO(sb.st_mode);
    while (!stop && lsc_now_ms() < end) {
        in.fd = 0;
        in.events = POLLIN;
        in.revents = 0;
        /* long turns: only curl, stdin or a signal should end them early */
        lsc_kube_run(kc, &in, piped, 3000);
        if (piped && (in.revents & POLLIN)) {
            n = read(0, buf, sizeof(buf) - 1);
            if (n <= 0 || strncmp(buf, "stop", 4) == 0) {
                break;
            }
        }
        if (!synced && lsc_kube_informer_synced(inf)) {
            synced = 1;
            emit(json_pack("{s:b, s:I}", "synced", 1, "count",
                 (json_int_t) json_object_size(
                     lsc_kube_informer_cache(inf))));
        }
        stats = stats_json(inf);
        if (last == NULL || !json_equal(stats, last)) {
            emit(json_pack("{s:O}", "stats", stats));
        }
        json_decref(last);
        last = stats;
    }
    json_decref(last);

    cache = json_object();
    json_object_foreach(lsc_kube_informer_cache(inf), key, obj) {
        json_object_set_new(cache, key, json_incref(json_object_get(
                            json_object_get(obj, "metadata"),
                            "resourceVersion")));
    }
    emit(json_pack("{s:b, s:o, s:o}", "final", 1, "cache", cache,
                   "stats", stats_json(inf)));
    lsc_kube_informer_free(inf);
    return 0;
}


static int
list_all(lsc_kube_t *kc, const lsc_kube_gvr_t *gvr, const char *ns,
    const char *selector, int limit)
{
    lsc_kube_status_t   st;
    lsc_kube_rc_e       rc;
    json_t             *page, *names, *item, *out;
    char               *cont;
    const char         *c;
    size_t              i;
    int                 pages;

    names = json_array();
    cont = NULL;
    pages = 0;
    for ( ;; ) {
        rc = lsc_kube_list(kc, gvr, ns, selector, limit, cont, &page, &st);
        free(cont);
        cont = NULL;
        if (rc != LSC_KUBE_OK) {
            json_decref(names);
            return answer(rc, NULL, &st);
        }
        pages++;
        json_array_foreach(json_object_get(page, "items"), i, item) {
            json_array_append(names, json_object_get(
                              json_object_get(item, "metadata"), "name"));
        }
        c = json_string_value(json_object_get(json_object_get(page,
                              "metadata"), "continue"));
        if (c != NULL && *c != '\0') {
            cont = strdup(c);
        }
        if (cont == NULL) {
            out = json_pack("{s:o, s:i, s:O?}", "names", names,
                            "pages", pages, "resourceVersion",
                            json_object_get(json_object_get(page,
                                            "metadata"), "resourceVersion"));
            json_decref(page);
            rc = answer(LSC_KUBE_OK, out, &st);
            json_decref(out);
            return rc;
        }
        json_decref(page);
    }
}


static void
usage(void)
{
    fprintf(stderr, "usage: lsc-kubectl-lite [--kubeconfig F] [-n NS] "
            "[--qps Q] [--burst B] [--cluster-scoped] RESOURCE VERB ...\n");
}


/* the verb and its arguments; the exit status */
static int
verb_run(lsc_kube_t *kc, const lsc_kube_gvr_t *gvr, const char *ns,
    const char *verb, int argc, char **argv, const char *selector, int limit,
    const char *sub, const lsc_kube_delete_opts_t *del, int seconds,
    const char *start_rv)
{
    lsc_kube_status_t   st;
    lsc_kube_rc_e       rc;
    json_t             *obj, *out;
    int                 status, i, n;
    int64_t             t0;

    obj = NULL;
    status = 2;
    memset(&st, 0, sizeof(st));
    if (strcmp(verb, "get") == 0 && argc == 1) {
        rc = lsc_kube_get(kc, gvr, ns, argv[0], &obj, &st);
        status = answer(rc, obj, &st);
    } else if (strcmp(verb, "list") == 0 && argc == 0) {
        status = list_all(kc, gvr, ns, selector, limit);
    } else if (strcmp(verb, "create") == 0 && argc == 1) {
        out = parse_json(argv[0]);
        if (out != NULL) {
            rc = lsc_kube_create(kc, gvr, ns, out, &obj, &st);
            status = answer(rc, obj, &st);
            json_decref(out);
        }
    } else if ((strcmp(verb, "update") == 0 || strcmp(verb, "patch") == 0)
               && argc == 2)
    {
        out = parse_json(argv[1]);
        if (out != NULL) {
            rc = verb[0] == 'u'
                 ? lsc_kube_update(kc, gvr, ns, argv[0], sub, out, &obj,
                                   &st)
                 : lsc_kube_merge_patch(kc, gvr, ns, argv[0], sub, out,
                                        &obj, &st);
            status = answer(rc, obj, &st);
            json_decref(out);
        }
    } else if (strcmp(verb, "delete") == 0 && argc == 1) {
        rc = lsc_kube_delete(kc, gvr, ns, argv[0], del, &st);
        status = answer(rc, NULL, &st);
    } else if (strcmp(verb, "event") == 0 && argc == 5) {
        rc = lsc_kube_get(kc, gvr, ns, argv[0], &obj, &st);
        if (rc == LSC_KUBE_OK) {
            rc = lsc_kube_event(kc, obj, argv[1], argv[2], argv[3], argv[4],
                                &st);
        }
        status = answer(rc, NULL, &st);
    } else if (strcmp(verb, "repeat") == 0 && argc == 2) {
        n = atoi(argv[0]);
        t0 = lsc_now_ms();
        rc = LSC_KUBE_OK;
        for (i = 0; i < n && rc == LSC_KUBE_OK; i++) {
            json_decref(obj);
            obj = NULL;
            rc = lsc_kube_get(kc, gvr, ns, argv[1], &obj, &st);
        }
        out = json_pack("{s:I, s:i}", "ms", (json_int_t) (lsc_now_ms() - t0),
                        "done", i);
        status = answer(rc, out, &st);
        json_decref(out);
    } else if (strcmp(verb, "watch") == 0 && argc == 0) {
        status = watch(kc, gvr, ns, selector, seconds, start_rv);
    } else {
        usage();
    }

    json_decref(obj);
    return status;
}


int
main(int argc, char **argv)
{
    static const struct option  opts[] = {
        { "kubeconfig", required_argument, NULL, 'k' },
        { "in-cluster", required_argument, NULL, 'I' },
        { "namespace", required_argument, NULL, 'n' },
        { "qps", required_argument, NULL, 'q' },
        { "burst", required_argument, NULL, 'b' },
        { "cluster-scoped", no_argument, NULL, 'C' },
        { "selector", required_argument, NULL, 'l' },
        { "limit", required_argument, NULL, 'L' },
        { "sub", required_argument, NULL, 's' },
        { "uid", required_argument, NULL, 'u' },
        { "rv", required_argument, NULL, 'r' },
        { "propagation", required_argument, NULL, 'p' },
        { "seconds", required_argument, NULL, 'S' },
        { "start-rv", required_argument, NULL, 'R' },
        { NULL, 0, NULL, 0 }
    };
    const char               *kubeconfig, *ns, *selector, *sub, *verb,
                             *start_rv, *sa_dir;
    lsc_kube_config_t         cf;
    lsc_kube_opts_t           ko;
    lsc_kube_t               *kc;
    lsc_kube_gvr_t            gvr;
    lsc_kube_delete_opts_t    del;
    char                     *res;
    int                       c, namespaced, limit, seconds, status;
    struct sigaction          sa;

    kubeconfig = NULL;
    sa_dir = NULL;
    ns = NULL;
    selector = NULL;
    sub = NULL;
    start_rv = NULL;
    namespaced = 1;
    limit = 0;
    seconds = 10;
    memset(&ko, 0, sizeof(ko));
    memset(&del, 0, sizeof(del));
    ko.instance = "lsc-kubectl-lite";
    ko.user_agent = "lsc-kubectl-lite";

    while ((c = getopt_long(argc, argv, "+n:", opts, NULL)) != -1) {
        switch (c) {
        case 'k': kubeconfig = optarg; break;
        case 'I': sa_dir = optarg; break;
        case 'n': ns = optarg; break;
        case 'q': ko.qps = atof(optarg); break;
        case 'b': ko.burst = atoi(optarg); break;
        case 'C': namespaced = 0; break;
        case 'l': selector = optarg; break;
        case 'L': limit = atoi(optarg); break;
        case 's': sub = optarg; break;
        case 'u': del.uid = optarg; break;
        case 'r': del.resource_version = optarg; break;
        case 'p': del.propagation = optarg; break;
        case 'S': seconds = atoi(optarg); break;
        case 'R': start_rv = optarg; break;
        default:
            usage();
            return 2;
        }
    }
    /* options may also follow the verb: permute once more after it */
    if (argc - optind < 2) {
        usage();
        return 2;
    }
    res = strdup(argv[optind]);
    verb = argv[optind + 1];
    argv += optind + 1;
    argc -= optind + 1;
    /* 0, not 1: glibc's getopt forgets the "+" of the first scan */
    optind = 0;
    while ((c = getopt_long(argc, argv, "n:", opts, NULL)) != -1) {
        switch (c) {
        case 'l': selector = optarg; break;
        case 'L': limit = atoi(optarg); break;
        case 's': sub = optarg; break;
        case 'u': del.uid = optarg; break;
        case 'r': del.resource_version = optarg; break;
        case 'p': del.propagation = optarg; break;
        case 'S': seconds = atoi(optarg); break;
        case 'R': start_rv = optarg; break;
        case 'n': ns = optarg; break;
        default:
            free(res);
            usage();
            return 2;
        }
    }
    argv += optind;
    argc -= optind;

    if (res == NULL || parse_gvr(res, &gvr, namespaced) != 0) {
        free(res);
        usage();
        return 2;
    }

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_DEFAULT);

    if ((sa_dir != NULL ? lsc_kube_config_in_cluster(&cf, sa_dir)
                        : lsc_kube_config_load(&cf, kubeconfig)) != 0)
    {
        free(res);
        curl_global_cleanup();
        return 2;
    }
    kc = lsc_kube_new(&cf, &ko);
    if (kc == NULL) {
        lsc_kube_config_free(&cf);
        free(res);
        curl_global_cleanup();
        return 2;
    }
    if (ns == NULL && namespaced) {
        ns = lsc_kube_namespace(kc);
    }
    if (!namespaced) {
        ns = NULL;
    }

    status = verb_run(kc, &gvr, ns, verb, argc, argv, selector, limit, sub,
                      &del, seconds, start_rv);
    lsc_kube_free(kc);
    free(res);
    curl_global_cleanup();
    return status;
}
