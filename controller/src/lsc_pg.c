/*
 * PostgreSQL: the sandbox records and their history (sql/controller.sql).
 * Synchronous libpq: the controller is its own daemon with one loop, and
 * every statement here is a single indexed row or the live set.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lsc.h"


#define LSC_DEF_PIDS    256

#define LSC_MAX_TIMEOUT 86400
#define LSC_DEF_TIMEOUT 1800


/* NOTICEs of the idempotent schema ("already exists, skipping") */
static void
lsc_pg_notice(void *arg, const char *message)
{
    (void) arg;
    (void) message;
}


int
lsc_pg_connect(lsc_ctx_t *ctx)
{
    if (ctx->pg != NULL && PQstatus(ctx->pg) == CONNECTION_OK) {
        return 0;
    }
    if (ctx->pg != NULL) {
        PQfinish(ctx->pg);
    }
    ctx->pg = PQconnectdb(ctx->pg_conninfo);
    if (PQstatus(ctx->pg) != CONNECTION_OK) {
        lsc_log("error", "postgresql: %s", PQerrorMessage(ctx->pg));
        PQfinish(ctx->pg);
        ctx->pg = NULL;
        return -1;
    }
    PQsetNoticeProcessor(ctx->pg, lsc_pg_notice, NULL);
    return 0;
}


PGresult *
lsc_pg_query(lsc_ctx_t *ctx, const char *sql, int n,
    const char *const *params)
{
    PGresult        *r;
    ExecStatusType   st;

    if (lsc_pg_connect(ctx) != 0) {
        return NULL;
    }
    r = PQexecParams(ctx->pg, sql, n, NULL, params, NULL, NULL, 0);
    st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        lsc_log("error", "postgresql: %s", PQresultErrorMessage(r));
        PQclear(r);
        return NULL;
    }
    return r;
}


int
lsc_pg_apply_schema(lsc_ctx_t *ctx)
{
    char      *sql;
    PGresult  *r;
    int        rc;

    sql = lsc_read_file(ctx->schema_file, 1 << 20);
    if (sql == NULL) {
        lsc_log("error", "cannot read %s", ctx->schema_file);
        return -1;
    }
    if (lsc_pg_connect(ctx) != 0) {
        free(sql);
        return -1;
    }
    /* several controllers may start together: serialise the DDL */
    r = PQexec(ctx->pg, "SELECT pg_advisory_lock(7321001)");
    PQclear(r);
    r = PQexec(ctx->pg, sql);
    rc = PQresultStatus(r) == PGRES_COMMAND_OK ? 0 : -1;
    if (rc != 0) {
        lsc_log("error", "schema: %s", PQresultErrorMessage(r));
    }
    PQclear(r);
    r = PQexec(ctx->pg, "SELECT pg_advisory_unlock(7321001)");
    PQclear(r);
    free(sql);
    return rc;
}


static void
lsc_copy(char *dst, size_t len, const char *src)
{
    snprintf(dst, len, "%s", src != NULL ? src : "");
}


int
lsc_pg_load_sandboxes(lsc_ctx_t *ctx)
{
    PGresult       *r;
    int             i, n;
    lsc_sandbox_t  *sb;
    json_t         *res;

    r = lsc_pg_query(ctx,
        "SELECT id, coalesce(owner, ''), runtime, security_level,"
        " coalesce(pool, ''), phase, coalesce(final_phase, ''),"
        " coalesce(reason, ''), coalesce(slot, -1), attempts,"
        " delete_requested_at IS NOT NULL,"
        " (extract(epoch FROM created_at) * 1000)::bigint,"
        " coalesce((extract(epoch FROM started_at) * 1000)::bigint, 0),"
        " coalesce((extract(epoch FROM coalesce(expires_at,"
        "   CASE WHEN pool IS NULL THEN created_at"
        "        + make_interval(secs => timeout_s) END)) * 1000)::bigint,"
        "   0),"
        " resources::text"
        " FROM sandboxes WHERE phase NOT IN ('Terminated', 'Failed')"
        " ORDER BY created_at, id LIMIT 4096", 0, NULL);
    if (r == NULL) {
        return -1;
    }

    n = PQntuples(r);
    free(ctx->sb);
    ctx->nsb = 0;
    ctx->sb = calloc(n > 0 ? n : 1, sizeof(lsc_sandbox_t));
    if (ctx->sb == NULL) {
        PQclear(r);
        return -1;
    }

    for (i = 0; i < n; i++) {
        sb = &ctx->sb[ctx->nsb];
        lsc_copy(sb->id, sizeof(sb->id), PQgetvalue(r, i, 0));
        if (!lsc_valid_id(sb->id)) {
            continue;
        }
        lsc_copy(sb->owner, sizeof(sb->owner), PQgetvalue(r, i, 1));
        lsc_copy(sb->runtime, sizeof(sb->runtime), PQgetvalue(r, i, 2));
        lsc_copy(sb->level, sizeof(sb->level), PQgetvalue(r, i, 3));
        lsc_copy(sb->pool, sizeof(sb->pool), PQgetvalue(r, i, 4));
        lsc_copy(sb->phase, sizeof(sb->phase), PQgetvalue(r, i, 5));
        lsc_copy(sb->final_phase, sizeof(sb->final_phase),
                 PQgetvalue(r, i, 6));
        lsc_copy(sb->reason, sizeof(sb->reason), PQgetvalue(r, i, 7));
        sb->slot = atoi(PQgetvalue(r, i, 8));
        sb->attempts = atoi(PQgetvalue(r, i, 9));
        sb->delete_requested = PQgetvalue(r, i, 10)[0] == 't';
        sb->created_ms = strtoll(PQgetvalue(r, i, 11), NULL, 10);
        sb->started_ms = strtoll(PQgetvalue(r, i, 12), NULL, 10);
        sb->expires_ms = strtoll(PQgetvalue(r, i, 13), NULL, 10);

        res = json_loads(PQgetvalue(r, i, 14), 0, NULL);
        sb->memory = lsc_parse_memory(json_object_get(res, "memory"),
                                      LSC_DEF_MEMORY, LSC_MIN_MEMORY,
                                      LSC_MAX_MEMORY);
        sb->cpus = lsc_parse_cpu(json_object_get(res, "cpu"), LSC_DEF_CPU,
                                 LSC_MIN_CPU, LSC_MAX_CPU);
        sb->pids = LSC_DEF_PIDS;
        json_decref(res);
        ctx->nsb++;
    }

    PQclear(r);
    return 0;
}


/*
 * One phase change and its history row, in one statement: the record and
 * sandbox_events never disagree.
 */
int
lsc_pg_set_phase(lsc_ctx_t *ctx, lsc_sandbox_t *sb, const char *phase,
    const char *final_phase, const char *reason, const char *message)
{
    PGresult    *r;
    const char  *p[5];

    p[0] = sb->id;
    p[1] = phase;
    p[2] = final_phase;
    p[3] = reason;
    p[4] = message;

    r = lsc_pg_query(ctx,
        "WITH u AS (UPDATE sandboxes SET phase = $2, final_phase = $3,"
        "  reason = $4, message = $5, updated_at = now(),"
        "  started_at = CASE WHEN $2 = 'Creating' THEN now()"
        "               ELSE started_at END,"
        "  attempts = attempts + CASE WHEN $2 = 'Creating' THEN 1 ELSE 0 END,"
        "  ready_at = CASE WHEN $2 = 'Running' THEN now() ELSE ready_at END,"
        "  terminated_at = CASE WHEN $2 IN ('Terminated', 'Failed')"
        "                  THEN now() ELSE terminated_at END"
        "  WHERE id = $1 RETURNING id)"
        " INSERT INTO sandbox_events (sandbox_id, phase, reason, message)"
        " SELECT id, $2, $4, $5 FROM u", 5, p);
    if (r == NULL) {
        return -1;
    }
    PQclear(r);

    snprintf(sb->phase, sizeof(sb->phase), "%s", phase);
    snprintf(sb->final_phase, sizeof(sb->final_phase), "%s",
             final_phase ? final_phase : "");
    snprintf(sb->reason, sizeof(sb->reason), "%s", reason ? reason : "");
    if (strcmp(phase, "Creating") == 0) {
        sb->attempts++;
        sb->started_ms = lsc_now_ms();
    }
    return 0;
}


int
lsc_pg_set_slot(lsc_ctx_t *ctx, lsc_sandbox_t *sb)
{
    PGresult    *r;
    char         slot[16];
    const char  *p[2];

    snprintf(slot, sizeof(slot), "%d", sb->slot);
    p[0] = sb->id;
    p[1] = slot;
    r = lsc_pg_query(ctx, "UPDATE sandboxes SET slot = $2 WHERE id = $1",
                     2, p);
    if (r == NULL) {
        return -1;
    }
    PQclear(r);
    return 0;
}


int
lsc_pg_event(lsc_ctx_t *ctx, const char *id, const char *phase,
    const char *reason, const char *message)
{
    PGresult    *r;
    const char  *p[4];

    p[0] = id;
    p[1] = phase;
    p[2] = reason;
    p[3] = message;
    r = lsc_pg_query(ctx,
        "INSERT INTO sandbox_events (sandbox_id, phase, reason, message)"
        " VALUES ($1, $2, $3, $4)", 4, p);
    if (r == NULL) {
        return -1;
    }
    PQclear(r);
    return 0;
}


int
lsc_pg_insert_pool_pod(lsc_ctx_t *ctx, lsc_pool_t *pool)
{
    PGresult    *r;
    char         id[LSC_ID_LEN];
    const char  *p[5];

    if (lsc_random_id(id, sizeof(id)) != 0) {
        return -1;
    }
    p[0] = id;
    p[1] = pool->runtime;
    p[2] = pool->level;
    p[3] = pool->name;
    /* the pool's limits become the record's, which the driver applies */
    p[4] = pool->resources;
    r = lsc_pg_query(ctx,
        "WITH i AS (INSERT INTO sandboxes (id, runtime, security_level, pool,"
        "  resources, phase, reason) VALUES ($1, $2, $3, $4, $5::jsonb,"
        "  'Pending', 'PoolFill') RETURNING id)"
        " INSERT INTO sandbox_events (sandbox_id, phase, reason)"
        " SELECT id, 'Pending', 'PoolFill' FROM i", 5, p);
    if (r == NULL) {
        return -1;
    }
    PQclear(r);
    return 0;
}


static const char *
lsc_field(json_t *req, const char *name)
{
    return json_string_value(json_object_get(req, name));
}


/* a JSON object given as a string field; "" or absent: {} */
static char *
lsc_json_field(json_t *req, const char *name, int *bad)
{
    const char  *s;
    json_t      *v;
    char        *out;

    s = lsc_field(req, name);
    if (s == NULL || s[0] == '\0') {
        return strdup("{}");
    }
    v = json_loads(s, JSON_REJECT_DUPLICATES, NULL);
    if (!json_is_object(v)) {
        json_decref(v);
        *bad = 1;
        return strdup("{}");
    }
    out = json_dumps(v, JSON_COMPACT);
    json_decref(v);
    return out;
}


/*
 * A create request from the gateway (lss:requests).  Every field is
 * checked here: the stream is written by another program, and what is
 * stored becomes a path, a key and container limits.  Idempotent by id.
 */
int
lsc_pg_insert_request(lsc_ctx_t *ctx, json_t *req)
{
    PGresult    *r;
    const char  *id, *owner, *runtime, *level, *ts, *why;
    char        *res, *net, *labels, tbuf[16];
    char        *end;
    long         timeout;
    int          bad, rc;
    const char  *p[10];

    id = lsc_field(req, "id");
    owner = lsc_field(req, "owner");
    runtime = lsc_field(req, "runtime");
    level = lsc_field(req, "securityLevel");
    ts = lsc_field(req, "timeout");

    if (!lsc_valid_id(id)) {
        lsc_log("warn", "create request with an invalid id: dropped");
        return 1;
    }

    bad = 0;
    why = NULL;
    res = lsc_json_field(req, "resources", &bad);
    net = lsc_json_field(req, "networkAccess", &bad);
    labels = lsc_json_field(req, "labels", &bad);

    timeout = LSC_DEF_TIMEOUT;
    if (ts != NULL && ts[0] != '\0') {
        timeout = strtol(ts, &end, 10);
        if (*end != '\0' || timeout < 1 || timeout > LSC_MAX_TIMEOUT) {
            why = "invalid timeout";
        }
    }
    if (level == NULL || level[0] == '\0') {
        level = "standard";
    }
    if (!lsc_valid_owner(owner)) {
        why = "invalid owner";
        owner = "";
    }
    if (lsc_runtime_find(ctx, runtime) == NULL) {
        why = "unknown runtime";
        runtime = "unknown";
    }
    if (strcmp(level, "standard") != 0 && strcmp(level, "high") != 0) {
        why = "unsupported securityLevel";
        level = "standard";
    }
    if (bad) {
        why = "resources, networkAccess and labels must be JSON objects";
    }
    if (res == NULL || net == NULL || labels == NULL) {
        free(res);
        free(net);
        free(labels);
        return -1;
    }

    snprintf(tbuf, sizeof(tbuf), "%ld", timeout);
    p[0] = id;
    p[1] = owner[0] ? owner : NULL;
    p[2] = runtime;
    p[3] = level;
    p[4] = tbuf;
    p[5] = res;
    p[6] = net;
    p[7] = labels;
    /* an invalid request is recorded as Failed, so the caller sees why */
    p[8] = why ? "Failed" : "Pending";
    p[9] = why ? why : "Requested";

    r = lsc_pg_query(ctx,
        "WITH i AS (INSERT INTO sandboxes (id, owner, runtime,"
        "  security_level, timeout_s, resources, network_access, labels,"
        "  phase, reason, expires_at, terminated_at)"
        "  VALUES ($1, $2, $3, $4, $5::int, $6::jsonb, $7::jsonb, $8::jsonb,"
        "  $9, $10, now() + make_interval(secs => $5::int),"
        "  CASE WHEN $9 = 'Failed' THEN now() END)"
        "  ON CONFLICT (id) DO NOTHING RETURNING id)"
        " INSERT INTO sandbox_events (sandbox_id, phase, reason)"
        " SELECT id, $9, $10 FROM i", 10, p);
    rc = r != NULL ? 0 : -1;
    if (r != NULL) {
        PQclear(r);
    }
    if (why != NULL) {
        lsc_log("warn", "create %s refused: %s", id, why);
        lsc_redis_event(ctx, "failed", id, NULL, why);
    }
    free(res);
    free(net);
    free(labels);
    return rc;
}


/*
 * The record as it is now, for a decision the tick's snapshot is too old
 * for: 1 and the owner copied when it is still Running and not asked to
 * be deleted, 0 when not, -1 when PostgreSQL cannot say.
 */
int
lsc_pg_fresh(lsc_ctx_t *ctx, lsc_sandbox_t *sb)
{
    PGresult    *r;
    const char  *p[1];
    int          rc;

    p[0] = sb->id;
    r = lsc_pg_query(ctx,
        "SELECT coalesce(owner, '') FROM sandboxes WHERE id = $1"
        " AND phase = 'Running' AND delete_requested_at IS NULL", 1, p);
    if (r == NULL) {
        return -1;
    }
    rc = PQntuples(r) == 1;
    if (rc) {
        lsc_copy(sb->owner, sizeof(sb->owner), PQgetvalue(r, 0, 0));
    }
    PQclear(r);
    return rc;
}


int
lsc_pg_request_delete(lsc_ctx_t *ctx, const char *id)
{
    PGresult    *r;
    const char  *p[1];

    if (!lsc_valid_id(id)) {
        return 1;
    }
    p[0] = id;
    r = lsc_pg_query(ctx,
        "UPDATE sandboxes SET delete_requested_at ="
        " coalesce(delete_requested_at, now()), updated_at = now()"
        " WHERE id = $1 AND phase NOT IN ('Terminated', 'Failed')", 1, p);
    if (r == NULL) {
        return -1;
    }
    PQclear(r);
    return 0;
}


int
lsc_pg_record_claim(lsc_ctx_t *ctx, lsc_sandbox_t *sb, const char *owner,
    int64_t expires_ms)
{
    PGresult    *r;
    char         exp[32];
    const char  *p[3];

    snprintf(exp, sizeof(exp), "%lld", (long long) expires_ms);
    p[0] = sb->id;
    p[1] = owner;
    p[2] = exp;
    r = lsc_pg_query(ctx,
        "WITH u AS (UPDATE sandboxes SET owner = $2, claimed_at = now(),"
        "  expires_at = to_timestamp($3::bigint / 1000.0),"
        "  reason = 'Claimed', updated_at = now()"
        "  WHERE id = $1 AND owner IS NULL RETURNING id)"
        " INSERT INTO sandbox_events (sandbox_id, phase, reason, message)"
        " SELECT id, 'Running', 'Claimed', $2 FROM u", 3, p);
    if (r == NULL) {
        return -1;
    }
    PQclear(r);
    snprintf(sb->owner, sizeof(sb->owner), "%s", owner);
    sb->expires_ms = expires_ms;
    return 0;
}
