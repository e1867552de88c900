/*
 * libFuzzer harness: a watch stream from the API server, as bytes.
 *
 * What it drives is what an API server (or anything between it and the
 * controller) can send: the newline splitter (lsc_kube_split.c) cut at a
 * place the input chooses, each line into an informer of ConfigMaps
 * (lsc_kube_watch.c: events, bookmarks, ERROR, objects of any shape), and
 * the whole input as a Status body (lsc_kube_status.c).  Any crash, leak
 * or undefined behaviour is a finding; the informer's own answers are not
 * judged here (the unit and cluster tests do that).
 *
 *   make -C controller fuzz-watch [FUZZ_SECONDS=N]
 */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/lsc.h"
#include "../../src/lsc_kube.h"


/*
 * The informer logs every line it skips (lsc_log, through stdio's
 * stderr): millions of them in a run.  libFuzzer and the sanitizers keep
 * writing to descriptor 2 and to the stream they took at start, so only
 * the controller's own log goes quiet.
 */
int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    FILE  *null;

    (void) argc;
    (void) argv;
    null = fopen("/dev/null", "w");
    if (null != NULL) {
        stderr = null;
    }
    return 0;
}


static void
lsc_fuzz_hear(void *data, int type, json_t *obj, json_t *old)
{
    size_t  *n = data;

    /* touch what a handler reads */
    (void) json_object_get(json_object_get(obj, "metadata"), "name");
    (void) old;
    *n += (size_t) type;
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t               cut, heard;
    lsc_kube_split_t     sp;
    lsc_kube_status_t    st;
    lsc_kube_informer_t *inf;

    heard = 0;
    inf = lsc_kube_informer_detached(&lsc_kube_configmaps, lsc_fuzz_hear,
                                     &heard);
    if (inf == NULL) {
        return 0;
    }

    /* the first byte says where the stream is cut in two reads */
    cut = size > 0 ? data[0] % (size + 1) : 0;

    lsc_kube_split_init(&sp, 4096);
    (void) lsc_kube_split_feed(&sp, (const char *) data, cut,
                               lsc_kube_informer_line, inf);
    (void) lsc_kube_split_feed(&sp, (const char *) data + cut, size - cut,
                               lsc_kube_informer_line, inf);
    lsc_kube_split_free(&sp);
    lsc_kube_informer_free(inf);

    memset(&st, 0, sizeof(st));
    (void) lsc_kube_status_decode(422, (const char *) data, size, &st);

    return 0;
}
