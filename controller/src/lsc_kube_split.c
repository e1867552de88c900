/*
 * The watch stream is newline-delimited JSON (one event per line) in
 * chunks of any size.  This splitter hands out whole lines and trusts no
 * size: a line longer than max is dropped whole (counted, not kept, its
 * bytes skipped up to the next newline), so a broken or hostile stream
 * costs at most max bytes of memory.
 */

#include <stdlib.h>
#include <string.h>

#include "lsc_kube.h"


#define LSC_KUBE_SPLIT_INITIAL  (16 << 10)


void
lsc_kube_split_init(lsc_kube_split_t *sp, size_t max)
{
    memset(sp, 0, sizeof(*sp));
    sp->max = max;
}


/* a cut stream's partial line is no event: start clean */
void
lsc_kube_split_reset(lsc_kube_split_t *sp)
{
    sp->len = 0;
    sp->skipping = 0;
}


void
lsc_kube_split_free(lsc_kube_split_t *sp)
{
    free(sp->buf);
    sp->buf = NULL;
    sp->len = 0;
    sp->cap = 0;
}


static int
lsc_reserve(lsc_kube_split_t *sp, size_t need)
{
    size_t   cap;
    char    *p;

    if (need <= sp->cap) {
        return 0;
    }
    cap = sp->cap ? sp->cap : LSC_KUBE_SPLIT_INITIAL;
    while (cap < need) {
        cap *= 2;
    }
    if (cap > sp->max + 1) {
        cap = sp->max + 1;
    }
    p = realloc(sp->buf, cap);
    if (p == NULL) {
        return -1;
    }
    sp->buf = p;
    sp->cap = cap;
    return 0;
}


/*
 * Feeds n bytes; handler gets each complete line without its newline
 * (and without a CR before it), empty lines never.  A handler's nonzero
 * return stops the feed and is returned (the rest of data is not kept).
 * -1: out of memory.
 */
int
lsc_kube_split_feed(lsc_kube_split_t *sp, const char *data, size_t n,
    lsc_kube_line_pt handler, void *hdata)
{
    const char  *nl, *line;
    size_t       chunk, llen;
    int          rc;

    while (n > 0) {
        nl = memchr(data, '\n', n);
        chunk = nl ? (size_t) (nl - data) : n;

        if (sp->skipping) {
            if (nl != NULL) {
                sp->skipping = 0;
            }
        } else if (sp->len + chunk > sp->max) {
            /* too long: drop what we kept and the rest of the line */
            sp->len = 0;
            sp->dropped++;
            sp->skipping = (nl == NULL);
        } else if (nl == NULL) {
            if (lsc_reserve(sp, sp->len + chunk) != 0) {
                return -1;
            }
            memcpy(sp->buf + sp->len, data, chunk);
            sp->len += chunk;
        } else {
            /* a whole line: straight from data when nothing is kept */
            if (sp->len > 0) {
                if (lsc_reserve(sp, sp->len + chunk) != 0) {
                    return -1;
                }
                memcpy(sp->buf + sp->len, data, chunk);
                sp->len += chunk;
                line = sp->buf;
                llen = sp->len;
            } else {
                line = data;
                llen = chunk;
            }
            sp->len = 0;
            if (llen > 0 && line[llen - 1] == '\r') {
                llen--;
            }
            if (llen > 0) {
                rc = handler(hdata, line, llen);
                if (rc != 0) {
                    return rc;
                }
            }
        }

        if (nl == NULL) {
            break;
        }
        data = nl + 1;
        n -= chunk + 1;
    }
    return 0;
}
