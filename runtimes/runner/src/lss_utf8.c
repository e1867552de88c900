/*
 * Output of executed code is arbitrary bytes; JSON strings must be valid
 * UTF-8 (jansson rejects anything else).  Invalid sequences are replaced
 * by U+FFFD, the way Python's errors="replace" does; NUL and control
 * characters are escaped by jansson itself.  Written by hand because
 * jansson only validates, it does not repair.
 */

#include "lss_runner.h"

#include <stdlib.h>
#include <string.h>


/* length of the valid sequence at p, or 0 if invalid, -1 if cut short */
static int
lss_utf8_seq(const u_char *p, size_t len)
{
    int     n, i;
    u_char  c;

    c = p[0];

    if (c < 0x80) {
        return 1;
    }

    if (c >= 0xc2 && c <= 0xdf) {
        n = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
    } else {
        return 0;
    }

    for (i = 1; i < n; i++) {
        if ((size_t) i >= len) {
            return -1;
        }
        if ((p[i] & 0xc0) != 0x80) {
            return 0;
        }
        /* overlongs, surrogates and values above U+10FFFF */
        if (i == 1) {
            if ((c == 0xe0 && p[1] < 0xa0) || (c == 0xed && p[1] > 0x9f)
                || (c == 0xf0 && p[1] < 0x90) || (c == 0xf4 && p[1] > 0x8f))
            {
                return 0;
            }
        }
    }

    return n;
}


/*
 * How many leading bytes of the chunk can be converted now: a sequence
 * cut at the end of a read is kept for the next read.
 */
size_t
lss_utf8_complete(const u_char *p, size_t len)
{
    size_t  i;
    int     n;

    i = len > 3 ? len - 3 : 0;

    while (i < len) {
        n = lss_utf8_seq(p + i, len - i);
        if (n < 0) {
            return i;
        }
        i += n > 0 ? (size_t) n : 1;
    }

    return len;
}


json_t *
lss_utf8_json(const u_char *p, size_t len)
{
    size_t   i, o;
    int      n;
    u_char  *out;
    json_t  *s;

    out = malloc(len * 3 + 1);
    if (out == NULL) {
        return NULL;
    }

    o = 0;
    i = 0;

    while (i < len) {
        n = lss_utf8_seq(p + i, len - i);
        if (n > 0) {
            memcpy(out + o, p + i, (size_t) n);
            o += (size_t) n;
            i += (size_t) n;
            continue;
        }
        out[o++] = 0xef;
        out[o++] = 0xbf;
        out[o++] = 0xbd;
        i++;
    }

    s = json_stringn_nocheck((const char *) out, o);
    free(out);

    return s;
}
