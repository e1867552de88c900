/*
 * The sandbox reconciler.  Level based: every tick compares the records
 * (PostgreSQL), the routes (Redis) and what the driver reports, and moves
 * each sandbox one step toward its desired state.  Nothing depends on
 * having seen an earlier tick, so a restart (even after kill -9 in the
 * middle of any step) resumes from what is there: it adopts containers
 * that belong to a record, finishes or rolls back half-done work, and
 * removes whatever belongs to no live record.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lsc.h"


#define LSC_MAX_CREATING  8


static void
lsc_event_for(lsc_ctx_t *ctx, lsc_sandbox_t *sb, const char *type,
    const char *reason)
{
    if (lsc_redis_event(ctx, type, sb->id, sb->pool, reason) != 0) {
        lsc_log("warn", "%s: cannot add the %s event", sb->id, type);
    }
}


/*
 * Route first (no request may reach a sandbox being removed), then the
 * container and its artifacts, then the terminal record.  A failure
 * leaves the record Terminating: the next tick repeats the rest.
 */
int
lsc_terminate(lsc_ctx_t *ctx, lsc_sandbox_t *sb, const char *final,
    const char *reason, const char *message)
{
    char  fin[16], why[64];

    if (strcmp(sb->phase, "Terminating") != 0) {
        if (lsc_pg_set_phase(ctx, sb, "Terminating", final, reason, message)
            != 0)
        {
            return -1;
        }
        lsc_event_for(ctx, sb, "terminating", reason);
    }
    /* copies: set_phase below rewrites the record's fields */
    snprintf(fin, sizeof(fin), "%s",
             sb->final_phase[0] ? sb->final_phase : "Terminated");
    snprintf(why, sizeof(why), "%s", sb->reason);

    if (lsc_redis_unpublish(ctx, sb) != 0) {
        return -1;
    }
    if (ctx->driver->destroy(ctx, sb->id) != 0) {
        return -1;
    }
    if (lsc_pg_set_phase(ctx, sb, fin, NULL, why, message) != 0) {
        return -1;
    }
    lsc_event_for(ctx, sb, strcmp(fin, "Failed") == 0
                           ? "failed" : "terminated", why);
    lsc_log("info", "%s: %s (%s)", sb->id, fin, why);
    return 0;
}


static int
lsc_slot_alloc(lsc_ctx_t *ctx, lsc_sandbox_t *sb)
{
    unsigned char  *used;
    size_t          i;
    int             s;

    used = calloc(LSC_MAX_SANDBOXES, 1);
    if (used == NULL) {
        return -1;
    }
    for (i = 0; i < ctx->nsb; i++) {
        s = ctx->sb[i].slot;
        if (s >= 0 && s < LSC_MAX_SANDBOXES && &ctx->sb[i] != sb) {
            used[s] = 1;
        }
    }
    for (s = 0; s < LSC_MAX_SANDBOXES && used[s]; s++) {
        /* void */
    }
    free(used);
    if (s == LSC_MAX_SANDBOXES) {
        return -1;
    }
    sb->slot = s;
    return lsc_pg_set_slot(ctx, sb);
}


static int
lsc_start(lsc_ctx_t *ctx, lsc_sandbox_t *sb)
{
    lsc_pool_t  *pool;

    pool = sb->pool[0] ? lsc_pool_find(ctx, sb->pool) : NULL;
    if (sb->pool[0] && pool == NULL) {
        return lsc_terminate(ctx, sb, "Terminated", "PoolRemoved", NULL);
    }
    if (sb->attempts >= ctx->max_attempts) {
        return lsc_terminate(ctx, sb, "Failed", "CreateFailed",
                             sb->why[0] ? sb->why
                                        : "the container did not start");
    }
    if (sb->slot < 0 && lsc_slot_alloc(ctx, sb) != 0) {
        lsc_log("error", "%s: no free slot", sb->id);
        return -1;
    }

    /* the record says Creating before anything exists: a crash from
     * here on leaves a record that names what to clean or adopt */
    if (lsc_pg_set_phase(ctx, sb, "Creating", NULL,
                         sb->attempts ? "Retry" : "Starting",
                         sb->why[0] ? sb->why : NULL) != 0)
    {
        return -1;
    }
    ctx->driver->destroy(ctx, sb->id);
    ctx->busy = 1;

    if (ctx->driver->create(ctx, sb, pool) != 0) {
        ctx->driver->diagnose(ctx, sb->id, sb->why, sizeof(sb->why));
        ctx->driver->destroy(ctx, sb->id);
        if (sb->attempts >= ctx->max_attempts) {
            return lsc_terminate(ctx, sb, "Failed", "CreateFailed",
                                 sb->why[0] ? sb->why
                                            : "the container did not start");
        }
        return -1;
    }
    sb->cstate = LSC_C_RUNNING;
    lsc_log("info", "%s: container started (%s, %s, slot %d)", sb->id,
            sb->runtime, sb->level, sb->slot);
    return 0;
}


static void
lsc_creating(lsc_ctx_t *ctx, lsc_sandbox_t *sb, int64_t now, int *budget)
{
    int  r;

    if (sb->cstate != LSC_C_RUNNING) {
        /* died while starting, or a start a crash interrupted */
        ctx->driver->diagnose(ctx, sb->id, sb->why, sizeof(sb->why));
        lsc_log("warn", "%s: container gone while starting: %s", sb->id,
                sb->why);
        if (*budget > 0) {
            (*budget)--;
            lsc_start(ctx, sb);
        }
        return;
    }

    r = ctx->driver->inspect(ctx, sb);
    if (r == 1) {
        if (lsc_redis_publish(ctx, sb, 1) < 0) {
            return;
        }
        if (lsc_pg_set_phase(ctx, sb, "Running", NULL, "Ready", NULL) == 0) {
            lsc_log("info", "%s: ready in %lld ms", sb->id,
                    (long long) (now - sb->started_ms));
        }
        return;
    }

    ctx->busy = 1;
    if (now - sb->started_ms > ctx->ready_timeout_ms) {
        lsc_log("warn", "%s: runner not ready after %d ms", sb->id,
                ctx->ready_timeout_ms);
        lsc_terminate(ctx, sb, "Failed", "ReadyTimeout",
                      "the runner did not become ready");
    }
}


/* what the gateway did to the route since the last tick */
static void
lsc_routes(lsc_ctx_t *ctx, int64_t now)
{
    lsc_sandbox_t   **run;
    char            (*owners)[LSC_OWNER_LEN];
    int64_t          *exp;
    int              *exists, rc;
    size_t            i, n;
    lsc_sandbox_t    *sb;

    run = calloc(ctx->nsb + 1, sizeof(*run));
    owners = calloc(ctx->nsb + 1, sizeof(*owners));
    exp = calloc(ctx->nsb + 1, sizeof(*exp));
    exists = calloc(ctx->nsb + 1, sizeof(*exists));
    if (run == NULL || owners == NULL || exp == NULL || exists == NULL) {
        goto done;
    }

    n = 0;
    for (i = 0; i < ctx->nsb; i++) {
        if (strcmp(ctx->sb[i].phase, "Running") == 0
            && ctx->sb[i].cstate == LSC_C_RUNNING
            && !ctx->sb[i].delete_requested)
        {
            run[n++] = &ctx->sb[i];
        }
    }
    if (n == 0 || lsc_redis_routes(ctx, run, n, owners, exp, exists) != 0) {
        goto done;
    }

    for (i = 0; i < n; i++) {
        sb = run[i];
        if (!exists[i] || (owners[i][0] == '\0' && sb->owner[0] != '\0')) {
            /*
             * Redis lost it (restart, flush) or a crash came between
             * the container's readiness and its record: restore.  But
             * the records were read before the routes: the gateway may
             * have claimed the sandbox and deleted it since, and it
             * writes PostgreSQL before it removes a route.  Read the
             * record again, after the route was seen missing, so a
             * deleted sandbox is never listed as ready again (it would
             * be handed to the next claimer, whoever that is).
             */
            if (lsc_pg_fresh(ctx, sb) != 1) {
                continue;
            }
            rc = lsc_redis_publish(ctx, sb, 0);
            if (rc == 1) {
                lsc_log("info", "%s: route restored", sb->id);
            }
            continue;
        }
        if (owners[i][0] == '\0' || strcmp(owners[i], sb->owner) == 0) {
            continue;
        }
        if (sb->owner[0] != '\0' || sb->pool[0] == '\0'
            || !lsc_valid_owner(owners[i]))
        {
            /* an owner nobody may have set: never serve it */
            lsc_log("warn", "%s: route owner changed: terminated", sb->id);
            lsc_terminate(ctx, sb, "Failed", "OwnerConflict",
                          "the route's owner changed");
            continue;
        }
        if (exp[i] <= now) {
            exp[i] = now + 1800 * 1000LL;
        }
        if (lsc_pg_record_claim(ctx, sb, owners[i], exp[i]) == 0) {
            lsc_log("info", "%s: claimed from pool %s", sb->id, sb->pool);
        }
    }

done:
    free(run);
    free(owners);
    free(exp);
    free(exists);
}


static int
lsc_has_record(lsc_ctx_t *ctx, const char *id)
{
    size_t  i;

    for (i = 0; i < ctx->nsb; i++) {
        if (strcmp(ctx->sb[i].id, id) == 0) {
            return 1;
        }
    }
    return 0;
}


/* containers and artifacts that belong to no live record */
static void
lsc_orphans(lsc_ctx_t *ctx, lsc_container_t *cs, size_t nc)
{
    size_t   i;
    char   **ids;
    size_t   nids;

    for (i = 0; i < nc; i++) {
        if (!lsc_has_record(ctx, cs[i].id + 4)) {
            lsc_log("info", "orphan container %s removed", cs[i].id);
            ctx->driver->destroy(ctx, cs[i].id + 4);
        }
    }
    if (ctx->driver->artifacts(ctx, &ids, &nids) != 0) {
        return;
    }
    for (i = 0; i < nids; i++) {
        if (!lsc_has_record(ctx, ids[i])) {
            lsc_log("info", "orphan artifacts of %s removed", ids[i]);
            ctx->driver->destroy(ctx, ids[i]);
        }
        free(ids[i]);
    }
    free(ids);
}


/*
 * Between full reconciles, while sandboxes are starting: probe only those
 * the last reconcile saw Creating with a running container, and publish
 * the ready ones.  No PostgreSQL read, no runtime list: cheap enough to run
 * every few milliseconds, so readiness is noticed soon after it happens.
 * Everything else (deaths, deadlines) stays with the full reconcile.
 */
int
lsc_ready_pass(lsc_ctx_t *ctx)
{
    size_t          i;
    lsc_sandbox_t  *sb;
    int             pending;

    pending = 0;
    for (i = 0; i < ctx->nsb; i++) {
        sb = &ctx->sb[i];
        if (strcmp(sb->phase, "Creating") != 0
            || sb->cstate != LSC_C_RUNNING || sb->delete_requested)
        {
            continue;
        }
        if (ctx->driver->inspect(ctx, sb) != 1) {
            pending++;
            continue;
        }
        if (lsc_redis_publish(ctx, sb, 1) < 0) {
            continue;
        }
        if (lsc_pg_set_phase(ctx, sb, "Running", NULL, "Ready", NULL) == 0) {
            lsc_log("info", "%s: ready in %lld ms", sb->id,
                    (long long) (lsc_now_ms() - sb->started_ms));
        }
    }
    return pending;
}


int
lsc_reconcile(lsc_ctx_t *ctx)
{
    lsc_container_t  *cs;
    size_t            nc, i, k;
    lsc_sandbox_t    *sb;
    int64_t           now;
    int               budget, creating;

    ctx->busy = 0;
    if (lsc_pg_load_sandboxes(ctx) != 0) {
        return -1;
    }
    if (lsc_pools_load(ctx) != 0) {
        return -1;
    }
    /* without a trustworthy view of the containers, change nothing */
    if (ctx->driver->list(ctx, &cs, &nc) != 0) {
        return -1;
    }

    creating = 0;
    for (i = 0; i < ctx->nsb; i++) {
        sb = &ctx->sb[i];
        sb->cstate = LSC_C_ABSENT;
        for (k = 0; k < nc; k++) {
            if (strcmp(cs[k].id + 4, sb->id) == 0) {
                sb->cstate = cs[k].state;
                break;
            }
        }
        if (strcmp(sb->phase, "Creating") == 0) {
            creating++;
        }
    }

    /* a truncated record set must not make live containers orphans */
    if (ctx->nsb < LSC_MAX_SANDBOXES) {
        lsc_orphans(ctx, cs, nc);
    }
    free(cs);

    now = lsc_now_ms();
    lsc_routes(ctx, now);

    budget = ctx->max_creates_per_tick;
    for (i = 0; i < ctx->nsb; i++) {
        sb = &ctx->sb[i];

        if (strcmp(sb->phase, "Terminating") == 0) {
            lsc_terminate(ctx, sb, NULL, sb->reason, NULL);
            continue;
        }
        if (sb->delete_requested) {
            lsc_terminate(ctx, sb, "Terminated", "Deleted", NULL);
            continue;
        }

        if (strcmp(sb->phase, "Pending") == 0) {
            if (budget > 0 && creating < LSC_MAX_CREATING) {
                budget--;
                if (lsc_start(ctx, sb) == 0) {
                    creating++;
                }
            } else {
                ctx->busy = 1;
            }

        } else if (strcmp(sb->phase, "Creating") == 0) {
            lsc_creating(ctx, sb, now, &budget);

        } else if (strcmp(sb->phase, "Running") == 0) {
            if (sb->cstate != LSC_C_RUNNING) {
                lsc_log("warn", "%s: container exited", sb->id);
                lsc_terminate(ctx, sb, "Failed", "ContainerExited",
                              "the sandbox's container stopped");
            } else if (sb->expires_ms != 0 && now >= sb->expires_ms) {
                lsc_terminate(ctx, sb, "Terminated", "Expired", NULL);

            } else if (sb->pool[0] != '\0' && sb->owner[0] == '\0'
                       && lsc_pool_find(ctx, sb->pool) == NULL
                       && lsc_redis_retire(ctx, sb) == 1)
            {
                /* its pool is gone; a claimed one stays with its owner */
                lsc_terminate(ctx, sb, "Terminated", "PoolRemoved", NULL);

            } else {
                ctx->driver->tidy(ctx, sb->id);
            }
        }
    }

    lsc_fairshare(ctx);

    return lsc_pools_reconcile(ctx);
}


/*
 * --terminate-all: for a stack stopped as a whole (make stop), so that no
 * sandbox outlives the gateway that served it.  Every live record, warm
 * or claimed, goes the usual way (route first, then the container, then
 * Terminated/Shutdown); then whatever is left under this controller's
 * roots, which no live record names any more.  Pools refill at the next
 * start.  Returns -1 if anything is still there.
 */
int
lsc_terminate_all(lsc_ctx_t *ctx)
{
    lsc_container_t  *cs;
    size_t            nc, i, nids;
    char            **ids;
    int               failed, round;

    /* a load is capped at LSC_MAX_SANDBOXES records: until none is left */
    for (round = 0; round < 64; round++) {
        if (lsc_pg_load_sandboxes(ctx) != 0) {
            return -1;
        }
        if (ctx->nsb == 0) {
            break;
        }
        failed = 0;
        for (i = 0; i < ctx->nsb; i++) {
            if (lsc_terminate(ctx, &ctx->sb[i], "Terminated", "Shutdown",
                              "every sandbox was terminated "
                              "(llmsafespace-controller --terminate-all)")
                != 0)
            {
                failed++;
            }
        }
        if (failed) {
            lsc_log("error", "%d sandboxes could not be terminated",
                    failed);
            return -1;
        }
    }
    if (ctx->nsb != 0) {
        return -1;
    }

    /* no live record: everything under our roots is an orphan now */
    if (ctx->driver->list(ctx, &cs, &nc) != 0) {
        return -1;
    }
    lsc_orphans(ctx, cs, nc);
    free(cs);

    /* what is still there could not be removed */
    if (ctx->driver->list(ctx, &cs, &nc) != 0) {
        return -1;
    }
    free(cs);
    if (ctx->driver->artifacts(ctx, &ids, &nids) != 0) {
        return -1;
    }
    for (i = 0; i < nids; i++) {
        free(ids[i]);
    }
    free(ids);
    if (nc + nids != 0) {
        lsc_log("error", "%zu containers and %zu artifacts remain", nc,
                nids);
        return -1;
    }
    return 0;
}
