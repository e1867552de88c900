/*
 * Named contexts: a long-lived Python worker forked from the zygote and
 * confined like any other, that keeps its globals between executions
 * (a notebook kernel).  Each execution hands it fresh stdio over its
 * context socket; its reply is read as untrusted.  A timeout or cancel
 * kills the whole context: state that was interrupted mid-way is not
 * worth keeping, and killing is the only sure stop.
 */

#include "lss_runner.h"
#include "lss_proto.h"
#include "lss_fdpass.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/socket.h>

struct lss_context_s {
    char             name[72];
    int              sock;
    int              ctl;
    int              busy;
    int              dead;
    lss_context_t   *next;
};

static pthread_mutex_t  lss_ctx_lock = PTHREAD_MUTEX_INITIALIZER;
static lss_context_t   *lss_ctxs;
static int              lss_nctx;


static lss_context_t *
lss_context_create(lss_exec_t *ex)
{
    int             sv[2], ctl[2], zfds[LSS_FD_MAX], i, devnull, rc;
    char           *s;
    json_t         *req;
    ssize_t         n;
    lss_context_t  *ctx;

    sv[0] = sv[1] = ctl[0] = ctl[1] = -1;
    for (i = 0; i < LSS_FD_MAX; i++) {
        zfds[i] = -1;
    }
    rc = -1;

    ctx = calloc(1, sizeof(lss_context_t));
    req = lss_exec_zygote_request(ex, 1);
    s = req ? json_dumps(req, JSON_COMPACT) : NULL;
    devnull = open("/dev/null", O_RDWR | O_CLOEXEC);

    if (ctx == NULL || s == NULL || devnull < 0
        || socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0
        || socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, ctl) != 0)
    {
        goto done;
    }

    zfds[LSS_FD_REQ] = memfd_create("lss-req", MFD_CLOEXEC);
    if (zfds[LSS_FD_REQ] < 0) {
        goto done;
    }
    n = write(zfds[LSS_FD_REQ], s, strlen(s));
    if (n != (ssize_t) strlen(s)) {
        goto done;
    }

    zfds[LSS_FD_STDIN] = devnull;
    zfds[LSS_FD_STDOUT] = devnull;
    zfds[LSS_FD_STDERR] = devnull;
    zfds[LSS_FD_CTL] = ctl[1];
    zfds[LSS_FD_EXTRA] = sv[1];

    if (lss_zygote_send(LSS_ZYGOTE_PYTHON, zfds, LSS_FD_MAX) != 0) {
        goto done;
    }

    snprintf(ctx->name, sizeof(ctx->name), "%s", ex->context);
    ctx->sock = sv[0];
    ctx->ctl = ctl[0];
    sv[0] = ctl[0] = -1;
    rc = 0;

done:

    if (zfds[LSS_FD_REQ] >= 0) close(zfds[LSS_FD_REQ]);
    if (devnull >= 0) close(devnull);
    if (sv[0] >= 0) close(sv[0]);
    if (sv[1] >= 0) close(sv[1]);
    if (ctl[0] >= 0) close(ctl[0]);
    if (ctl[1] >= 0) close(ctl[1]);
    free(s);
    json_decref(req);

    if (rc != 0) {
        free(ctx);
        return NULL;
    }

    return ctx;
}


/*
 * Hand the execution to its context (created on first use).  On success
 * fds[4] is where the reply comes and fds[5] where a kill goes; both
 * stay owned by the context.
 */
int
lss_context_run(lss_exec_t *ex, int *fds)
{
    lss_context_t  *ctx;

    pthread_mutex_lock(&lss_ctx_lock);

    for (ctx = lss_ctxs; ctx != NULL; ctx = ctx->next) {
        if (strcmp(ctx->name, ex->context) == 0 && !ctx->dead) {
            break;
        }
    }

    if (ctx == NULL) {
        if (lss_nctx >= lss_conf.max_contexts) {
            pthread_mutex_unlock(&lss_ctx_lock);
            ex->refused = 429;
            ex->error = strdup("too many contexts");
            return -1;
        }

        ctx = lss_context_create(ex);
        if (ctx == NULL) {
            pthread_mutex_unlock(&lss_ctx_lock);
            ex->error = strdup("the context could not be created");
            return -1;
        }
        ctx->next = lss_ctxs;
        lss_ctxs = ctx;
        lss_nctx++;
    }

    if (ctx->busy) {
        pthread_mutex_unlock(&lss_ctx_lock);
        ex->refused = 409;
        ex->error = strdup("the context is running another execution");
        return -1;
    }

    ctx->busy = 1;
    ex->ctx = ctx;
    fds[4] = ctx->sock;
    fds[5] = ctx->ctl;

    pthread_mutex_unlock(&lss_ctx_lock);

    if (lss_fd_send(ctx->sock, fds, 4) != 0) {
        lss_context_done(ex, 1);
        ex->error = strdup("the context is gone");
        fds[4] = fds[5] = -1;
        return -1;
    }

    fds[4] = ctx->sock;
    fds[5] = ctx->ctl;

    return 0;
}


/* with the lock held */
static void
lss_context_unlink(lss_context_t *ctx)
{
    lss_context_t  **pp;

    for (pp = &lss_ctxs; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == ctx) {
            *pp = ctx->next;
            lss_nctx--;
            break;
        }
    }

    /* EOF on the control socket: the shepherd kills the whole tree */
    close(ctx->ctl);
    close(ctx->sock);
    free(ctx);
}


void
lss_context_done(lss_exec_t *ex, int killed)
{
    lss_context_t  *ctx;

    ctx = ex->ctx;
    if (ctx == NULL) {
        return;
    }

    pthread_mutex_lock(&lss_ctx_lock);
    ctx->busy = 0;
    if (killed || ctx->dead || ex->end != LSS_END_EXITED) {
        lss_context_unlink(ctx);
    }
    ex->ctx = NULL;
    pthread_mutex_unlock(&lss_ctx_lock);
}


static void
lss_context_kill(lss_context_t *ctx)
{
    if (ctx->busy) {
        /* the running execution sees the context die and frees it */
        ctx->dead = 1;
        (void) !send(ctx->ctl, "k", 1, MSG_NOSIGNAL | MSG_DONTWAIT);
        return;
    }

    lss_context_unlink(ctx);
}


int
lss_context_delete(const char *name)
{
    lss_context_t  *ctx;

    pthread_mutex_lock(&lss_ctx_lock);
    for (ctx = lss_ctxs; ctx != NULL; ctx = ctx->next) {
        if (strcmp(ctx->name, name) == 0 && !ctx->dead) {
            break;
        }
    }
    if (ctx != NULL) {
        lss_context_kill(ctx);
    }
    pthread_mutex_unlock(&lss_ctx_lock);

    return ctx != NULL ? 0 : -1;
}


void
lss_context_delete_all(void)
{
    lss_context_t  *ctx, *next;

    pthread_mutex_lock(&lss_ctx_lock);
    for (ctx = lss_ctxs; ctx != NULL; ctx = next) {
        next = ctx->next;
        if (!ctx->dead) {
            lss_context_kill(ctx);
        }
    }
    pthread_mutex_unlock(&lss_ctx_lock);
}
