/*
 * Warm pools: their definitions (manifests mirrored into warm_pools, plus
 * rows the REST API writes), and the pool reconciler: keep the desired
 * number of unclaimed warm sandboxes, autoscale it with the claims, and
 * report status.
 */

#include <ctype.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lsc.h"


#define LSC_POOL_MAX_SIZE    500
#define LSC_POOLS_RELOAD_MS  2000
#define LSC_SCRIPT_MAX       (64 * 1024)


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


/* seconds, or "30s", "5m", "1h" */
static int
lsc_duration(json_t *v, int def)
{
    const char  *s;
    char        *end;
    long         n;

    if (json_is_integer(v)) {
        n = (long) json_integer_value(v);
        return n < 0 ? 0 : (n > 86400 ? 86400 : (int) n);
    }
    if (!json_is_string(v)) {
        return def;
    }
    s = json_string_value(v);
    n = strtol(s, &end, 10);
    if (end == s || n < 0) {
        return def;
    }
    if (strcmp(end, "m") == 0) {
        n *= 60;
    } else if (strcmp(end, "h") == 0) {
        n *= 3600;
    } else if (strcmp(end, "s") != 0 && *end != '\0') {
        return def;
    }
    return n > 86400 ? 86400 : (int) n;
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
    p->scale_down_delay = lsc_duration(json_object_get(a, "scaleDownDelay"),
                                       300);

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
    char         mn[16], mx[16], *scripts, *as, pk[1100];
    const char  *prm[9];
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

    /* an API-made pool of the same name is left alone (logged below) */
    r = lsc_pg_query(ctx,
        "INSERT INTO warm_pools (name, runtime, min_size, max_size,"
        " security_level, preload_packages, preload_scripts, auto_scaling,"
        " source) VALUES ($1, $2, $3::int, $4::int, $5, $6::jsonb, $7::jsonb,"
        " $8::jsonb, 'manifest')"
        " ON CONFLICT (name) DO UPDATE SET runtime = $2, min_size = $3::int,"
        " max_size = $4::int, security_level = $5,"
        " preload_packages = $6::jsonb, preload_scripts = $7::jsonb,"
        " auto_scaling = $8::jsonb, updated_at = now()"
        " WHERE warm_pools.source = 'manifest' AND (warm_pools.runtime, "
        " warm_pools.min_size, warm_pools.max_size, warm_pools.security_level,"
        " warm_pools.preload_packages, warm_pools.preload_scripts,"
        " warm_pools.auto_scaling) IS DISTINCT FROM ($2, $3::int, $4::int,"
        " $5, $6::jsonb, $7::jsonb, $8::jsonb)", 8, prm);
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
        " preload_scripts, 'autoScaling', auto_scaling)::text, status::text"
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


/*
 * Per pool: desired = minSize, or with autoscaling the number of warm
 * sandboxes that keeps assigned / (assigned + warm) at or under
 * targetUtilization, within [minSize, maxSize].  Up at once; down only
 * after scaleDownDelay since the last change, and only sandboxes the
 * retire script takes off the ready list before any gateway claims them.
 */
int
lsc_pools_reconcile(lsc_ctx_t *ctx)
{
    size_t          i, k;
    lsc_pool_t     *p;
    lsc_sandbox_t  *sb;
    int             avail, pending, assigned, want, have, surplus, made;
    int64_t         now;

    now = lsc_now_ms();

    for (i = 0; i < ctx->npools; i++) {
        p = &ctx->pools[i];
        avail = pending = assigned = 0;
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

        have = avail + pending;
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
            if (strcmp(sb->pool, p->name) != 0 || sb->owner[0] != '\0'
                || sb->delete_requested
                || strcmp(sb->phase, "Running") != 0)
            {
                continue;
            }
            if (lsc_redis_retire(ctx, sb) == 1
                && lsc_terminate(ctx, sb, "Terminated", "ScaledDown", NULL)
                   == 0)
            {
                surplus--;
                avail--;
            }
        }

        lsc_pool_status(ctx, p, avail, assigned, pending);
    }
    return 0;
}
