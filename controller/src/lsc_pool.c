/*
 * Warm pools: their definitions (manifests mirrored into warm_pools, plus
 * rows the REST API writes), and the pool reconciler: keep the desired
 * number of unclaimed warm sandboxes, autoscale it with the claims, and
 * report status.
 */

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lsc.h"


#define LSC_POOL_MAX_SIZE    500
#define LSC_POOLS_RELOAD_MS  2000
#define LSC_SCRIPT_MAX       (64 * 1024)
#define LSC_DELAY_MAX        86400
#define LSC_TTL_MAX          (30 * 86400)
/* the gateway's bound of any quantity in resources, 10T */
#define LSC_STORAGE_MAX      10000000000000LL

/* how a warm sandbox compares with its pool (lsc_pool_stale) */
#define LSC_FRESH            0
#define LSC_STALE            1    /* replace it, then retire it */
#define LSC_STALE_NOW        2    /* retire it, replacement or not */


static int
lsc_valid_package(const char *s)
{
    size_t  i, n;

    n = strlen(s);
    if (n == 0 || n > 100) {
        return 0;
    }
    for (i = 0; i < n; i++) {
        if (!(isalnum((unsigned char) s[i]) || strchr("._-", s[i]))) {
            return 0;
        }
    }
    return 1;
}


/*
 * Seconds: an integer, or a string of digits with an optional unit, "90",
 * "30s", "5m", "2h", "1d".  -1 for anything else, so that a caller can
 * refuse it.
 */
static int64_t
lsc_duration(json_t *v)
{
    const char  *s;
    char        *end;
    long long    n;
    int64_t      unit;

    if (json_is_integer(v)) {
        n = json_integer_value(v);
        return n < 0 ? -1 : (int64_t) n;
    }
    s = json_string_value(v);
    if (s == NULL || !isdigit((unsigned char) s[0])) {
        return -1;
    }
    errno = 0;
    n = strtoll(s, &end, 10);
    /* bounded so that n * unit cannot overflow */
    if (errno != 0 || n > 1000000000LL) {
        return -1;
    }
    if (*end == '\0' || strcmp(end, "s") == 0) {
        unit = 1;
    } else if (strcmp(end, "m") == 0) {
        unit = 60;
    } else if (strcmp(end, "h") == 0) {
        unit = 3600;
    } else if (strcmp(end, "d") == 0) {
        unit = 86400;
    } else {
        return -1;
    }
    return (int64_t) n * unit;
}


/*
 * The pool's resources: cpu (cores), memory and ephemeralStorage (bytes)
 * as a sandbox's are written (lsc_parse_cpu, lsc_parse_memory), but a
 * value out of the bounds a sandbox is clamped to is refused rather than
 * clamped: the pool shows what its sandboxes get.  The result, with the
 * defaults filled in, becomes p->resources, in the numeric form the
 * gateway compares with a create's (sql/controller.sql).
 */
static int
lsc_pool_resources(const char *name, json_t *res, lsc_pool_t *p)
{
    const char  *key;
    json_t      *v, *out;
    int64_t      storage;
    char        *text;
    int          rc;

    p->cpus = LSC_DEF_CPU;
    p->memory = LSC_DEF_MEMORY;
    storage = 0;

    if (res != NULL && !json_is_null(res) && !json_is_object(res)) {
        lsc_log("warn", "warm pool %s: resources must be an object", name);
        return -1;
    }
    json_object_foreach(res, key, v) {
        if (strcmp(key, "cpu") == 0) {
            /* -1: not a quantity; lo 0: a negative one is out of range */
            p->cpus = lsc_parse_cpu(v, -1.0, 0.0, 1e9);
            /* the driver writes millicores (config.json's quota) */
            p->cpus = round(p->cpus * 1000.0) / 1000.0;
            if (p->cpus < LSC_MIN_CPU || p->cpus > LSC_MAX_CPU) {
                lsc_log("warn", "warm pool %s: resources.cpu must be 0.1 to"
                        " 2 cores (a number, or \"500m\")", name);
                return -1;
            }
        } else if (strcmp(key, "memory") == 0) {
            p->memory = lsc_parse_memory(v, -1, 0, INT64_MAX);
            if (p->memory < LSC_MIN_MEMORY || p->memory > LSC_MAX_MEMORY) {
                lsc_log("warn", "warm pool %s: resources.memory must be 64Mi"
                        " to 8Gi (bytes, or \"512Mi\")", name);
                return -1;
            }
        } else if (strcmp(key, "ephemeralStorage") == 0) {
            storage = lsc_parse_memory(v, -1, 0, INT64_MAX);
            if (storage < 1 || storage > LSC_STORAGE_MAX) {
                lsc_log("warn", "warm pool %s: resources.ephemeralStorage "
                        "must be 1 byte to 10T", name);
                return -1;
            }
        } else {
            lsc_log("warn", "warm pool %s: unknown field resources.%s",
                    name, key);
            return -1;
        }
    }

    out = json_object();
    rc = json_object_set_new(out, "cpu", p->cpus == floor(p->cpus)
                                         ? json_integer((json_int_t) p->cpus)
                                         : json_real(p->cpus));
    rc |= json_object_set_new(out, "memory", json_integer(p->memory));
    if (storage > 0) {
        rc |= json_object_set_new(out, "ephemeralStorage",
                                  json_integer(storage));
    }
    /* 15 digits: 0.1 is written "0.1", not its nearest double */
    text = rc == 0 ? json_dumps(out, JSON_COMPACT | JSON_SORT_KEYS
                                     | JSON_REAL_PRECISION(15))
                   : NULL;
    json_decref(out);
    if (text == NULL || strlen(text) >= sizeof(p->resources)) {
        free(text);
        lsc_log("error", "warm pool %s: cannot write its resources", name);
        return -1;
    }
    memcpy(p->resources, text, strlen(text) + 1);
    free(text);
    return 0;
}


static int
lsc_int(json_t *v, int def, int lo, int hi)
{
    json_int_t  n;

    if (!json_is_integer(v)) {
        return def;
    }
    n = json_integer_value(v);
    return n < lo ? lo : (n > hi ? hi : (int) n);
}


/*
 * A pool definition (manifest or row, same shape as the WarmPool spec)
 * into p.  Returns 0, or -1 with the reason logged: an invalid pool is
 * skipped, never half applied.
 */
static int
lsc_pool_parse(lsc_ctx_t *ctx, const char *name, json_t *spec,
    lsc_pool_t *p)
{
    const char  *rt, *lvl, *s;
    json_t      *v, *a, *sc;
    size_t       i, len;
    int64_t      d;

    memset(p, 0, sizeof(*p));
    if (name == NULL || !lsc_valid_name(name, 48) || strchr(name, ':')) {
        lsc_log("warn", "warm pool with an invalid name skipped");
        return -1;
    }
    snprintf(p->name, sizeof(p->name), "%s", name);

    rt = json_string_value(json_object_get(spec, "runtime"));
    if (lsc_runtime_find(ctx, rt) == NULL) {
        lsc_log("warn", "warm pool %s: unknown runtime", name);
        return -1;
    }
    snprintf(p->runtime, sizeof(p->runtime), "%s", rt);

    lvl = json_string_value(json_object_get(spec, "securityLevel"));
    if (lvl == NULL) {
        lvl = "standard";
    }
    if (strcmp(lvl, "standard") != 0 && strcmp(lvl, "high") != 0) {
        lsc_log("warn", "warm pool %s: securityLevel must be standard or "
                "high", name);
        return -1;
    }
    snprintf(p->level, sizeof(p->level), "%s", lvl);

    p->min_size = lsc_int(json_object_get(spec, "minSize"), 0, 0,
                          LSC_POOL_MAX_SIZE);
    p->max_size = lsc_int(json_object_get(spec, "maxSize"), p->min_size, 0,
                          LSC_POOL_MAX_SIZE);
    if (p->max_size < p->min_size) {
        p->max_size = p->min_size;
    }

    a = json_object_get(spec, "autoScaling");
    p->autoscale = json_is_true(json_object_get(a, "enabled"));
    p->target_util = lsc_int(json_object_get(a, "targetUtilization"), 80, 1,
                             100);
    d = lsc_duration(json_object_get(a, "scaleDownDelay"));
    p->scale_down_delay = d < 0 ? 300 : (int) (d > LSC_DELAY_MAX
                                               ? LSC_DELAY_MAX : d);

    if (lsc_pool_resources(name, json_object_get(spec, "resources"), p)
        != 0)
    {
        return -1;
    }

    /* absent or null: no ttl; 0 is refused like garbage (CHECK ttl_s > 0) */
    v = json_object_get(spec, "ttl");
    if (v != NULL && !json_is_null(v)) {
        p->ttl = lsc_duration(v);
        if (p->ttl < 1 || p->ttl > LSC_TTL_MAX) {
            lsc_log("warn", "warm pool %s: ttl must be 1 second to 30 days:"
                    " seconds, or a number and s, m, h or d (\"30m\")",
                    name);
            return -1;
        }
    }

    len = 0;
    json_array_foreach(json_object_get(spec, "preloadPackages"), i, v) {
        s = json_string_value(v);
        if (s == NULL || !lsc_valid_package(s)
            || len + strlen(s) + 2 > sizeof(p->packages))
        {
            lsc_log("warn", "warm pool %s: invalid preloadPackages", name);
            return -1;
        }
        len += snprintf(p->packages + len, sizeof(p->packages) - len,
                        "%s%s", len ? "," : "", s);
    }

    p->scripts = json_array();
    json_array_foreach(json_object_get(spec, "preloadScripts"), i, v) {
        s = json_string_value(json_object_get(v, "name"));
        sc = json_object_get(v, "content");
        if (i >= LSC_MAX_SCRIPTS || s == NULL || !lsc_valid_package(s)
            || !json_is_string(sc)
            || json_string_length(sc) > LSC_SCRIPT_MAX
            || strlen(json_string_value(sc)) != json_string_length(sc))
        {
            lsc_log("warn", "warm pool %s: invalid preloadScripts", name);
            json_decref(p->scripts);
            p->scripts = NULL;
            return -1;
        }
        json_array_append_new(p->scripts,
                              json_pack("{sssO}", "name", s, "content", sc));
    }
    return 0;
}


static int
lsc_manifest_upsert(lsc_ctx_t *ctx, lsc_pool_t *p)
{
    PGresult    *r;
    char         mn[16], mx[16], ttl[24], *scripts, *as, pk[1100];
    const char  *prm[10];
    json_t      *pkgs;
    char        *tok, *save, buf[1024];

    pkgs = json_array();
    snprintf(buf, sizeof(buf), "%s", p->packages);
    for (tok = strtok_r(buf, ",", &save); tok != NULL;
         tok = strtok_r(NULL, ",", &save))
    {
        json_array_append_new(pkgs, json_string(tok));
    }
    scripts = json_dumps(p->scripts, JSON_COMPACT);
    as = NULL;
    {
        json_t  *a;

        a = json_pack("{sbsisi}", "enabled", p->autoscale,
                      "targetUtilization", p->target_util,
                      "scaleDownDelay", p->scale_down_delay);
        as = json_dumps(a, JSON_COMPACT);
        json_decref(a);
    }
    {
        char  *t;

        t = json_dumps(pkgs, JSON_COMPACT);
        snprintf(pk, sizeof(pk), "%s", t ? t : "[]");
        free(t);
    }
    json_decref(pkgs);

    snprintf(mn, sizeof(mn), "%d", p->min_size);
    snprintf(mx, sizeof(mx), "%d", p->max_size);
    prm[0] = p->name;
    prm[1] = p->runtime;
    prm[2] = mn;
    prm[3] = mx;
    prm[4] = p->level;
    prm[5] = pk;
    prm[6] = scripts ? scripts : "[]";
    prm[7] = as ? as : "{}";
    prm[8] = p->resources;
    snprintf(ttl, sizeof(ttl), "%lld", (long long) p->ttl);
    prm[9] = p->ttl ? ttl : NULL;

    /* an API-made pool of the same name is left alone (logged below) */
    r = lsc_pg_query(ctx,
        "INSERT INTO warm_pools (name, runtime, min_size, max_size,"
        " security_level, preload_packages, preload_scripts, auto_scaling,"
        " resources, ttl_s, source) VALUES ($1, $2, $3::int, $4::int, $5,"
        " $6::jsonb, $7::jsonb, $8::jsonb, $9::jsonb, $10::int, 'manifest')"
        " ON CONFLICT (name) DO UPDATE SET runtime = $2, min_size = $3::int,"
        " max_size = $4::int, security_level = $5,"
        " preload_packages = $6::jsonb, preload_scripts = $7::jsonb,"
        " auto_scaling = $8::jsonb, resources = $9::jsonb, ttl_s = $10::int,"
        " updated_at = now()"
        " WHERE warm_pools.source = 'manifest' AND (warm_pools.runtime, "
        " warm_pools.min_size, warm_pools.max_size, warm_pools.security_level,"
        " warm_pools.preload_packages, warm_pools.preload_scripts,"
        " warm_pools.auto_scaling, warm_pools.resources, warm_pools.ttl_s)"
        " IS DISTINCT FROM ($2, $3::int, $4::int, $5, $6::jsonb, $7::jsonb,"
        " $8::jsonb, $9::jsonb, $10::int)", 10, prm);
    free(scripts);
    free(as);
    if (r == NULL) {
        return -1;
    }
    PQclear(r);
    return 0;
}


static int
lsc_manifests_sync(lsc_ctx_t *ctx)
{
    DIR            *d;
    struct dirent  *e;
    char            path[LSC_PATH_LEN + 300];
    json_t         *doc, *spec, *names;
    const char     *name, *prm[1];
    char           *list;
    lsc_pool_t      p;
    size_t          n;
    PGresult       *r;

    names = json_array();
    d = opendir(ctx->pools_dir);
    while (d != NULL && (e = readdir(d)) != NULL) {
        n = strlen(e->d_name);
        if (n < 6 || e->d_name[0] == '.'
            || (strcmp(e->d_name + n - 5, ".yaml") != 0
                && strcmp(e->d_name + n - 4, ".yml") != 0))
        {
            continue;
        }
        snprintf(path, sizeof(path), "%s/%s", ctx->pools_dir, e->d_name);
        doc = lsc_yaml_load(path);
        if (doc == NULL) {
            continue;
        }
        /* a WarmPool custom resource, or its spec with a name beside it */
        spec = json_object_get(doc, "spec");
        if (json_is_object(spec)) {
            name = json_string_value(json_object_get(
                       json_object_get(doc, "metadata"), "name"));
        } else {
            spec = doc;
            name = json_string_value(json_object_get(doc, "name"));
        }
        if (lsc_pool_parse(ctx, name, spec, &p) == 0) {
            if (lsc_manifest_upsert(ctx, &p) == 0) {
                json_array_append_new(names, json_string(p.name));
            }
        }
        json_decref(p.scripts);
        json_decref(doc);
    }
    if (d != NULL) {
        closedir(d);
    }

    /* a manifest removed: its pool goes (its unclaimed pods retire) */
    list = json_dumps(names, JSON_COMPACT);
    json_decref(names);
    prm[0] = list ? list : "[]";
    r = lsc_pg_query(ctx,
        "DELETE FROM warm_pools WHERE source = 'manifest' AND name NOT IN"
        " (SELECT jsonb_array_elements_text($1::jsonb))", 1, prm);
    free(list);
    if (r == NULL) {
        return -1;
    }
    PQclear(r);
    return 0;
}


lsc_pool_t *
lsc_pool_find(lsc_ctx_t *ctx, const char *name)
{
    size_t  i;

    for (i = 0; i < ctx->npools; i++) {
        if (strcmp(ctx->pools[i].name, name) == 0) {
            return &ctx->pools[i];
        }
    }
    return NULL;
}


static int64_t
lsc_parse_time_ms(const char *s)
{
    struct tm  tm;
    char      *end;

    if (s == NULL) {
        return 0;
    }
    memset(&tm, 0, sizeof(tm));
    end = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
    if (end == NULL) {
        return 0;
    }
    return (int64_t) timegm(&tm) * 1000;
}


/* definitions from PostgreSQL, keeping each pool's reconcile state */
int
lsc_pools_load(lsc_ctx_t *ctx)
{
    PGresult    *r;
    int          i, n;
    lsc_pool_t   pools[LSC_MAX_POOLS], *old, *p;
    size_t       np, k;
    json_t      *spec, *st;
    int64_t      now;

    now = lsc_now_ms();
    if (ctx->pools_loaded_ms != 0
        && now - ctx->pools_loaded_ms < LSC_POOLS_RELOAD_MS)
    {
        return 0;
    }

    if (lsc_manifests_sync(ctx) != 0) {
        return -1;
    }
    r = lsc_pg_query(ctx,
        "SELECT name, json_build_object('runtime', runtime, 'minSize',"
        " min_size, 'maxSize', max_size, 'securityLevel', security_level,"
        " 'preloadPackages', preload_packages, 'preloadScripts',"
        " preload_scripts, 'autoScaling', auto_scaling, 'resources',"
        " resources, 'ttl', ttl_s)::text, status::text"
        " FROM warm_pools ORDER BY name LIMIT 64", 0, NULL);
    if (r == NULL) {
        return -1;
    }

    np = 0;
    n = PQntuples(r);
    for (i = 0; i < n && np < LSC_MAX_POOLS; i++) {
        spec = json_loads(PQgetvalue(r, i, 1), 0, NULL);
        p = &pools[np];
        if (spec == NULL
            || lsc_pool_parse(ctx, PQgetvalue(r, i, 0), spec, p) != 0)
        {
            json_decref(spec);
            continue;
        }
        json_decref(spec);
        old = lsc_pool_find(ctx, p->name);
        if (old != NULL) {
            p->last_scale_ms = old->last_scale_ms;
            p->desired = old->desired;
            memcpy(p->status_text, old->status_text,
                   sizeof(p->status_text));
            p->ready = old->ready;
            p->transition_ms = old->transition_ms;
        } else {
            st = json_loads(PQgetvalue(r, i, 2), 0, NULL);
            p->last_scale_ms = lsc_parse_time_ms(json_string_value(
                                   json_object_get(st, "lastScaleTime")));
            json_decref(st);
            p->desired = p->min_size;
        }
        np++;
    }
    PQclear(r);

    for (k = 0; k < ctx->npools; k++) {
        json_decref(ctx->pools[k].scripts);
    }
    memcpy(ctx->pools, pools, np * sizeof(lsc_pool_t));
    ctx->npools = np;
    ctx->pools_loaded_ms = now;
    return 0;
}


static void
lsc_iso(int64_t ms, char *buf, size_t len)
{
    time_t     t;
    struct tm  tm;

    t = (time_t) (ms / 1000);
    gmtime_r(&t, &tm);
    strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}


static void
lsc_pool_status(lsc_ctx_t *ctx, lsc_pool_t *p, int avail, int assigned,
    int pending)
{
    json_t      *st;
    char        *text, ts[32], tt[32];
    const char  *prm[2], *reason, *msg;
    PGresult    *r;
    int          ready;

    ready = avail >= p->desired;
    if (ready) {
        reason = "PoolReady";
        msg = "the desired number of warm sandboxes is ready";
    } else if (pending > 0) {
        reason = "Filling";
        msg = "warm sandboxes are starting";
    } else {
        reason = "Degraded";
        msg = "fewer warm sandboxes than desired and none starting";
    }

    if (ready != p->ready || p->transition_ms == 0) {
        p->ready = ready;
        p->transition_ms = lsc_now_ms();
    }
    lsc_iso(p->last_scale_ms, ts, sizeof(ts));
    lsc_iso(p->transition_ms, tt, sizeof(tt));
    st = json_pack("{sisisisiss*s[{ssssssssss}]}",
                   "availablePods", avail, "assignedPods", assigned,
                   "pendingPods", pending, "desiredPods", p->desired,
                   "lastScaleTime", p->last_scale_ms ? ts : NULL,
                   "conditions",
                   "type", "Ready", "status", ready ? "True" : "False",
                   "reason", reason, "message", msg,
                   "lastTransitionTime", tt);
    text = json_dumps(st, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(st);
    if (text == NULL) {
        lsc_log("error", "pool %s: cannot build its status", p->name);
        return;
    }
    if (strcmp(text, p->status_text) == 0) {
        free(text);
        return;
    }

    prm[0] = p->name;
    prm[1] = text;
    r = lsc_pg_query(ctx, "UPDATE warm_pools SET status = $2::jsonb"
                     " WHERE name = $1", 2, prm);
    if (r != NULL) {
        PQclear(r);
        if (lsc_redis_pool_status(ctx, p->name, text) == 0) {
            snprintf(p->status_text, sizeof(p->status_text), "%s", text);
        }
    }
    free(text);
}


/* an unclaimed running sandbox of the pool, not asked to be deleted */
static int
lsc_pool_idle(lsc_pool_t *p, lsc_sandbox_t *sb)
{
    return strcmp(sb->pool, p->name) == 0 && sb->owner[0] == '\0'
           && !sb->delete_requested && strcmp(sb->phase, "Running") == 0;
}


/*
 * Takes an idle sandbox off its pool's ready list and terminates it: 1,
 * or 0 when a gateway's claim came first (retire.lua) or it failed.
 */
static int
lsc_pool_retire(lsc_ctx_t *ctx, lsc_sandbox_t *sb, const char *reason,
    const char *message)
{
    return lsc_redis_retire(ctx, sb) == 1
           && lsc_terminate(ctx, sb, "Terminated", reason, message) == 0;
}


/*
 * An unclaimed running sandbox against its pool's definition now.  Past
 * the ttl (counted from its record's creation) it is replaced: a fresh
 * one is started and it is retired once that one is ready, so that the
 * pool does not run dry while it renews, or at the latest a ready
 * timeout after the ttl, when its replacement could not start.  Made with
 * other limits than the pool's (the pool was changed), it is replaced the
 * same way if it has at least the pool's, and retired at once if it has
 * less: a create that the pool's resources fit must not get it.
 */
static int
lsc_pool_stale(lsc_ctx_t *ctx, lsc_pool_t *p, lsc_sandbox_t *sb,
    int64_t now, const char **why)
{
    int64_t  age;

    if (sb->memory < p->memory || sb->cpus < p->cpus - 0.0005) {
        *why = "it has less than the pool's resources";
        return LSC_STALE_NOW;
    }

    if (p->ttl > 0) {
        age = now - sb->created_ms;
        if (age >= p->ttl * 1000 + ctx->ready_timeout_ms) {
            *why = "older than the pool's ttl, and not replaced in time";
            return LSC_STALE_NOW;
        }
        if (age >= p->ttl * 1000) {
            *why = "older than the pool's ttl";
            return LSC_STALE;
        }
    }

    if (sb->memory != p->memory || fabs(sb->cpus - p->cpus) > 0.0005) {
        *why = "it has other resources than the pool's";
        return LSC_STALE;
    }

    return LSC_FRESH;
}


/*
 * Per pool: desired = minSize, or with autoscaling the number of warm
 * sandboxes that keeps assigned / (assigned + warm) at or under
 * targetUtilization, within [minSize, maxSize].  Up at once; down only
 * after scaleDownDelay since the last change, and only sandboxes the
 * retire script takes off the ready list before any gateway claims them.
 * Stale sandboxes (lsc_pool_stale) do not count towards desired: they are
 * replaced, then retired by the same script, reason Recycled.
 */
int
lsc_pools_reconcile(lsc_ctx_t *ctx)
{
    size_t          i, k;
    lsc_pool_t     *p;
    lsc_sandbox_t  *sb;
    int             avail, pending, assigned, want, have, surplus, made;
    int             stale, recycle, st;
    int64_t         now;
    const char     *why;

    now = lsc_now_ms();

    for (i = 0; i < ctx->npools; i++) {
        p = &ctx->pools[i];
        avail = pending = assigned = stale = 0;
        for (k = 0; k < ctx->nsb; k++) {
            sb = &ctx->sb[k];
            if (strcmp(sb->pool, p->name) != 0
                || strcmp(sb->phase, "Terminated") == 0
                || strcmp(sb->phase, "Failed") == 0)
            {
                continue;
            }
            if (sb->owner[0] != '\0') {
                if (strcmp(sb->phase, "Running") == 0) {
                    assigned++;
                }
            } else if (sb->delete_requested
                       || strcmp(sb->phase, "Terminating") == 0)
            {
                continue;
            } else if (strcmp(sb->phase, "Running") == 0) {
                avail++;
                stale += lsc_pool_stale(ctx, p, sb, now, &why) != LSC_FRESH;
            } else {
                pending++;
            }
        }

        want = p->min_size;
        if (p->autoscale) {
            want = (int) ceil((double) assigned * (100 - p->target_util)
                              / p->target_util);
            if (want < p->min_size) {
                want = p->min_size;
            }
        }
        if (want > p->max_size) {
            want = p->max_size;
        }

        if (want > p->desired) {
            lsc_log("info", "pool %s: scale up %d -> %d (assigned %d)",
                    p->name, p->desired, want, assigned);
            p->desired = want;
            p->last_scale_ms = now;
        } else if (want < p->desired
                   && (!p->autoscale
                       || now - p->last_scale_ms
                          >= (int64_t) p->scale_down_delay * 1000))
        {
            lsc_log("info", "pool %s: scale down %d -> %d (assigned %d)",
                    p->name, p->desired, want, assigned);
            p->desired = want;
            p->last_scale_ms = now;
        }

        have = avail - stale + pending;
        made = 0;
        while (have < p->desired && made < ctx->max_creates_per_tick) {
            if (lsc_pg_insert_pool_pod(ctx, p) != 0) {
                break;
            }
            have++;
            made++;
            pending++;
            ctx->busy = 1;
        }

        /* surplus: pending first (cheaper), then ready ones */
        surplus = have - p->desired;
        for (k = 0; surplus > 0 && k < ctx->nsb; k++) {
            sb = &ctx->sb[k];
            if (strcmp(sb->pool, p->name) != 0 || sb->owner[0] != '\0'
                || sb->delete_requested
                || (strcmp(sb->phase, "Pending") != 0
                    && strcmp(sb->phase, "Creating") != 0))
            {
                continue;
            }
            if (lsc_terminate(ctx, sb, "Terminated", "ScaledDown", NULL)
                == 0)
            {
                surplus--;
                pending--;
            }
        }
        for (k = 0; surplus > 0 && k < ctx->nsb; k++) {
            sb = &ctx->sb[k];
            if (lsc_pool_idle(p, sb)
                && lsc_pool_stale(ctx, p, sb, now, &why) == LSC_FRESH
                && lsc_pool_retire(ctx, sb, "ScaledDown", NULL))
            {
                surplus--;
                avail--;
            }
        }

        /*
         * Stale ones, oldest first (the records are read in creation
         * order): as many as leave the desired number available, and
         * every one that may not wait.  A claim wins over the retire
         * script, and a claimed sandbox is not the pool's to renew.
         */
        recycle = stale - (p->desired - (avail - stale));
        for (k = 0; stale > 0 && k < ctx->nsb; k++) {
            sb = &ctx->sb[k];
            if (!lsc_pool_idle(p, sb)) {
                continue;
            }
            st = lsc_pool_stale(ctx, p, sb, now, &why);
            if ((st == LSC_STALE_NOW || (st == LSC_STALE && recycle > 0))
                && lsc_pool_retire(ctx, sb, "Recycled", why))
            {
                recycle--;
                stale--;
                avail--;
            }
        }

        lsc_pool_status(ctx, p, avail, assigned, pending);
    }
    return 0;
}
