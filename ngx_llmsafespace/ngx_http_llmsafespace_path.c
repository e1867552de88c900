
/*
 * Copyright (C) LLMSafeSpace
 *
 * The path as the client sent it.  Before any phase runs, nginx decodes
 * "%XX" in r->uri and resolves "." and ".." segments (its complex URI
 * parsing, "%2e%2e" and "%2f" included), so that
 * "DELETE /api/v1/sandboxes/ID/files/a/../../" reaches the router as
 * "DELETE /api/v1/sandboxes/ID/": a file path became another route.
 * Segments are what our routes are made of, so in a server with an API
 * location a path whose raw form holds a dot segment, in any encoding,
 * or that is not UTF-8 once decoded, is refused here, at post-read,
 * before nginx's result chooses a location or our router a route.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_llmsafespace.h"


static ngx_uint_t ngx_http_llmsafespace_path_api_server(
    ngx_http_request_t *r);
static ngx_int_t ngx_http_llmsafespace_path_dots(u_char *p, u_char *last);
static ngx_uint_t ngx_http_llmsafespace_path_utf8(u_char *p, u_char *last);
static ngx_int_t ngx_http_llmsafespace_path_refuse(ngx_http_request_t *r,
    const char *message);


ngx_int_t
ngx_http_llmsafespace_path_handler(ngx_http_request_t *r)
{
    u_char     *p, *last, *dec, *d;
    ngx_int_t   c, n;

    if (r != r->main || r->unparsed_uri.len == 0
        || !ngx_http_llmsafespace_path_api_server(r))
    {
        return NGX_DECLINED;
    }

    p = r->unparsed_uri.data;
    last = ngx_strlchr(p, p + r->unparsed_uri.len, '?');

    if (last == NULL) {
        last = p + r->unparsed_uri.len;
    }

    /*
     * Decoded once, as nginx and the runner decode: "%252e" is the
     * name "%2e", no dot.  An invalid escape stays as it is (nginx
     * refuses the request itself).
     */

    dec = ngx_pnalloc(r->pool, last - p);
    if (dec == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    for (d = dec; p < last; p++) {

        if (*p == '%' && last - p >= 3) {
            c = ngx_hextoi(p + 1, 1);
            n = ngx_hextoi(p + 2, 1);

            if (c != NGX_ERROR && n != NGX_ERROR) {
                *d++ = (u_char) (c * 16 + n);
                p += 2;
                continue;
            }
        }

        *d++ = *p;
    }

    if (ngx_http_llmsafespace_path_dots(dec, d) != NGX_OK) {
        return ngx_http_llmsafespace_path_refuse(r, "the path has a \".\" "
                                    "or \"..\" segment (also encoded, or "
                                    "next to a backslash): refused, never "
                                    "resolved");
    }

    if (ngx_strlchr(dec, d, '\0') != NULL) {
        return ngx_http_llmsafespace_path_refuse(r, "the path holds NUL");
    }

    if (!ngx_http_llmsafespace_path_utf8(dec, d)) {
        return ngx_http_llmsafespace_path_refuse(r, "the path is not "
                                                 "valid UTF-8");
    }

    return NGX_DECLINED;
}


/* the request's server has an "llmsafespace_api" location */

static ngx_uint_t
ngx_http_llmsafespace_path_api_server(ngx_http_request_t *r)
{
    ngx_uint_t                          i;
    ngx_http_core_srv_conf_t           *cscf, **servers;
    ngx_http_llmsafespace_main_conf_t  *lmcf;

    lmcf = ngx_http_get_module_main_conf(r, ngx_http_llmsafespace_module);

    if (lmcf->api_servers == NULL) {
        return 0;
    }

    cscf = ngx_http_get_module_srv_conf(r, ngx_http_core_module);
    servers = lmcf->api_servers->elts;

    for (i = 0; i < lmcf->api_servers->nelts; i++) {
        if (servers[i] == cscf) {
            return 1;
        }
    }

    return 0;
}


/*
 * Segments end at "/" and, as the runner refuses them and Windows
 * clients send them, at "\": "." and ".." are refused.
 */

static ngx_int_t
ngx_http_llmsafespace_path_dots(u_char *p, u_char *last)
{
    u_char  *start;

    while (p < last) {
        start = p;

        while (p < last && *p != '/' && *p != '\\') {
            p++;
        }

        if ((p - start == 1 && start[0] == '.')
            || (p - start == 2 && start[0] == '.' && start[1] == '.'))
        {
            return NGX_DECLINED;
        }

        p++;
    }

    return NGX_OK;
}


/*
 * Names reach JSON answers, which must be UTF-8 (RFC 3629): no overlong
 * form ("%C0%AE" for "."), no surrogate, nothing past U+10FFFF.
 */

static ngx_uint_t
ngx_http_llmsafespace_path_utf8(u_char *p, u_char *last)
{
    u_char      c;
    ngx_uint_t  n, i;

    while (p < last) {
        c = *p;

        if (c < 0x80) {
            p++;
            continue;
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

        if ((ngx_uint_t) (last - p) < n) {
            return 0;
        }

        for (i = 1; i < n; i++) {
            if ((p[i] & 0xc0) != 0x80) {
                return 0;
            }
        }

        if ((c == 0xe0 && p[1] < 0xa0) || (c == 0xed && p[1] > 0x9f)
            || (c == 0xf0 && p[1] < 0x90) || (c == 0xf4 && p[1] > 0x8f))
        {
            return 0;
        }

        p += n;
    }

    return 1;
}


/* post-read runs before a location is chosen: answer and end here */

static ngx_int_t
ngx_http_llmsafespace_path_refuse(ngx_http_request_t *r,
    const char *message)
{
    ngx_int_t  rc;
    ngx_str_t  msg;

    rc = ngx_http_discard_request_body(r);

    if (rc == NGX_OK) {
        msg.data = (u_char *) message;
        msg.len = ngx_strlen(message);

        rc = ngx_http_llmsafespace_send_field_error(r, NGX_HTTP_BAD_REQUEST,
                                                    "path", &msg);
    }

    ngx_http_finalize_request(r, rc);

    return NGX_DONE;
}
