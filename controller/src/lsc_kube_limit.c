/*
 * Client-side pacing: a QPS/burst token bucket (so a relist storm or a
 * busy reconcile cannot flood the API server; it answers 429 to clients
 * that do) and the backoff of reconnects, with jitter so that many
 * controllers cut at once do not come back at once.
 */

#include <stdlib.h>

#include "lsc_kube.h"


void
lsc_kube_bucket_init(lsc_kube_bucket_t *b, double qps, int burst,
    int64_t now_ms)
{
    b->qps = qps > 0 ? qps : 1;
    b->burst = burst > 0 ? burst : 1;
    b->tokens = b->burst;
    b->last_ms = now_ms;
}


/* 0: a token taken; else the milliseconds until one will be there */
int64_t
lsc_kube_bucket_take(lsc_kube_bucket_t *b, int64_t now_ms)
{
    int64_t  wait;

    /* a clock that went back refills nothing, and takes nothing away */
    if (now_ms > b->last_ms) {
        b->tokens += (double) (now_ms - b->last_ms) * b->qps / 1000.0;
        if (b->tokens > b->burst) {
            b->tokens = b->burst;
        }
    }
    b->last_ms = now_ms;
    if (b->tokens >= 1.0) {
        b->tokens -= 1.0;
        return 0;
    }
    wait = (int64_t) ((1.0 - b->tokens) * 1000.0 / b->qps) + 1;
    return wait;
}


/*
 * attempt 0, 1, ...: base * 2^attempt capped, then a random point in its
 * upper half ("equal jitter"): never zero, never more than the cap.
 */
int64_t
lsc_kube_backoff(int attempt, int64_t base_ms, int64_t cap_ms)
{
    int64_t  d;

    d = base_ms;
    while (attempt-- > 0 && d < cap_ms) {
        d *= 2;
    }
    if (d > cap_ms) {
        d = cap_ms;
    }
    return d / 2 + (int64_t) (drand48() * (double) (d - d / 2));
}
