/*
 * CPU shared fairly between users, not between sandboxes.
 *
 * Every sandbox's cpu cgroup is a sibling of every other's, and CFS
 * divides a busy CPU by the siblings' shares: a user with four spinning
 * sandboxes took four shares to another user's one (measured: the other
 * user's execute p99 went up about 4.5x).  So, once per tick, the
 * sandboxes of one owner that used CPU since the last tick split one
 * user's share (LSC_USER_SHARES) between them, and each of that owner's
 * idle sandboxes gets the same part, ready for when it wakes.  Shares
 * only matter under contention: a user alone on the host still gets all
 * of it, and each sandbox's own CPU quota still applies.  Unclaimed warm
 * sandboxes belong to no user and keep a whole share (they are idle).
 *
 * Why not a cgroup per user with the sandboxes below: a warm sandbox's
 * cgroup is made before anyone claims it, and moving a running
 * container's tasks into another cgroup on claim races its forks; a
 * weight written in place does not.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lsc.h"


#define LSC_USER_SHARES  1024
#define LSC_MIN_SHARES   2
/* CPU time in a tick that makes a sandbox busy: more than a runner's
 * idle housekeeping, less than any execution */
#define LSC_BUSY_NS      (5 * 1000000ULL)


typedef struct {
    char      id[LSC_ID_LEN];
    uint64_t  usage;             /* ns at the last tick */
    int       shares;            /* last written, 0: not yet */
    int       busy;
    int       seen;
} lsc_share_t;


/* an owned, running sandbox and its entry (an index: entries move) */
typedef struct {
    lsc_sandbox_t  *sb;
    size_t          share;
} lsc_owned_t;


static lsc_share_t  *lsc_shares;       /* sorted by id up to lsc_nsorted */
static size_t        lsc_nshares;
static size_t        lsc_nsorted;
static size_t        lsc_shares_cap;


static int
lsc_share_cmp(const void *a, const void *b)
{
    return strcmp(((const lsc_share_t *) a)->id,
                  ((const lsc_share_t *) b)->id);
}


/* the entry of this id, made if new (appended: sorted at the tick's end) */
static lsc_share_t *
lsc_share_get(const char *id)
{
    lsc_share_t   key, *s;

    snprintf(key.id, sizeof(key.id), "%s", id);
    s = bsearch(&key, lsc_shares, lsc_nsorted, sizeof(*s), lsc_share_cmp);
    if (s != NULL) {
        return s;
    }

    if (lsc_nshares == lsc_shares_cap) {
        s = realloc(lsc_shares, (lsc_shares_cap * 2 + 16) * sizeof(*s));
        if (s == NULL) {
            return NULL;
        }
        lsc_shares = s;
        lsc_shares_cap = lsc_shares_cap * 2 + 16;
    }

    s = &lsc_shares[lsc_nshares++];
    memset(s, 0, sizeof(*s));
    snprintf(s->id, sizeof(s->id), "%s", id);
    return s;
}


static int
lsc_owned_running(const lsc_sandbox_t *sb)
{
    return sb->owner[0] != '\0' && sb->cstate == LSC_C_RUNNING
           && strcmp(sb->phase, "Running") == 0;
}


static int
lsc_owner_cmp(const void *a, const void *b)
{
    return strcmp(((const lsc_owned_t *) a)->sb->owner,
                  ((const lsc_owned_t *) b)->sb->owner);
}


void
lsc_fairshare(lsc_ctx_t *ctx)
{
    size_t          i, k, j, n, nown;
    int             busy, shares;
    uint64_t        usage;
    lsc_share_t    *s;
    lsc_sandbox_t  *sb;
    lsc_owned_t    *own;

    if (!ctx->fair_share || ctx->driver->cpu_usage == NULL
        || ctx->driver->cpu_weight == NULL || ctx->nsb == 0)
    {
        return;
    }

    own = calloc(ctx->nsb, sizeof(*own));
    if (own == NULL) {
        return;
    }
    for (i = 0; i < lsc_nshares; i++) {
        lsc_shares[i].seen = 0;
    }

    /* what each owned sandbox used since the last tick */
    nown = 0;
    for (i = 0; i < ctx->nsb; i++) {
        sb = &ctx->sb[i];
        if (!lsc_owned_running(sb)
            || ctx->driver->cpu_usage(ctx, sb, &usage) != 0)
        {
            continue;
        }
        s = lsc_share_get(sb->id);
        if (s == NULL) {
            continue;
        }
        s->busy = s->usage != 0 && usage > s->usage
                  && usage - s->usage >= LSC_BUSY_NS;
        s->usage = usage;
        s->seen = 1;
        own[nown].sb = sb;
        own[nown].share = (size_t) (s - lsc_shares);
        nown++;
    }

    /* one user's share split between its busy sandboxes */
    qsort(own, nown, sizeof(*own), lsc_owner_cmp);
    for (i = 0; i < nown; i = k) {
        busy = 0;
        for (k = i;
             k < nown && strcmp(own[k].sb->owner, own[i].sb->owner) == 0;
             k++)
        {
            busy += lsc_shares[own[k].share].busy;
        }
        shares = LSC_USER_SHARES / (busy > 0 ? busy : 1);
        if (shares < LSC_MIN_SHARES) {
            shares = LSC_MIN_SHARES;
        }
        for (j = i; j < k; j++) {
            s = &lsc_shares[own[j].share];
            if (shares != s->shares
                && ctx->driver->cpu_weight(ctx, own[j].sb, shares) == 0)
            {
                s->shares = shares;
            }
        }
    }

    /* forget sandboxes that are gone (or no longer owned and running) */
    for (i = 0, n = 0; i < lsc_nshares; i++) {
        if (lsc_shares[i].seen) {
            lsc_shares[n++] = lsc_shares[i];
        }
    }
    lsc_nshares = n;
    qsort(lsc_shares, lsc_nshares, sizeof(*lsc_shares), lsc_share_cmp);
    lsc_nsorted = lsc_nshares;

    free(own);
}
