
/*
 * Copyright (C) LLMSafeSpace
 *
 * JSON responses, the API's error body, rate-limit headers, and the filter
 * that turns nginx's own error pages (413 from the core, 502 from a proxy,
 * ...) into the JSON error body in locations with JSON errors on.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_llmsafespace.h"


typedef struct {
    ngx_uint_t   status;
    const char  *code;
    const char  *message;
} ngx_http_llmsafespace_status_t;


static ngx_int_t ngx_http_llmsafespace_error_header_filter(
    ngx_http_request_t *r);
static ngx_int_t ngx_http_llmsafespace_error_body_filter(
    ngx_http_request_t *r, ngx_chain_t *in);
static ngx_buf_t *ngx_http_llmsafespace_error_body(ngx_http_request_t *r,
    const char *code, ngx_str_t *message, json_t *details);
static ngx_buf_t *ngx_http_llmsafespace_json_buf(ngx_http_request_t *r,
    json_t *json);
static ngx_int_t ngx_http_llmsafespace_send_buffer(ngx_http_request_t *r,
    ngx_uint_t status, ngx_buf_t *b);
static ngx_int_t ngx_http_llmsafespace_add_header(ngx_http_request_t *r,
    const char *name, ngx_uint_t value);


static ngx_http_output_header_filter_pt  ngx_http_next_header_filter;
static ngx_http_output_body_filter_pt    ngx_http_next_body_filter;


static ngx_http_llmsafespace_status_t  ngx_http_llmsafespace_statuses[] = {
    { 400, "bad_request", "malformed request" },
    { 401, "unauthorized", "authentication required" },
    { 403, "forbidden", "forbidden" },
    { 404, "not_found", "not found" },
    { 405, "method_not_allowed", "method not allowed" },
    { 408, "request_timeout", "request timed out" },
    { 409, "conflict", "conflict" },
    { 411, "length_required", "length required" },
    { 413, "payload_too_large", "request body too large" },
    { 414, "uri_too_long", "request URI too long" },
    { 415, "unsupported_media_type", "unsupported media type" },
    { 422, "validation_error", "validation failed" },
    { 429, "rate_limited", "rate limit exceeded" },
    { 431, "headers_too_large", "request headers too large" },
    { 494, "headers_too_large", "request headers too large" },
    { 500, "internal", "internal error" },
    { 501, "not_implemented", "not implemented" },
    { 502, "unavailable", "the sandbox did not answer" },
    { 503, "unavailable", "service unavailable" },
    { 504, "timeout", "the sandbox did not answer in time" },
    { 0, NULL, NULL }
};


const char *
ngx_http_llmsafespace_error_code(ngx_uint_t status)
{
    ngx_http_llmsafespace_status_t  *s;

    for (s = ngx_http_llmsafespace_statuses; s->status; s++) {
        if (s->status == status) {
            return s->code;
        }
    }

    return status >= 500 ? "internal" : "bad_request";
}


static const char *
ngx_http_llmsafespace_error_message(ngx_uint_t status)
{
    ngx_http_llmsafespace_status_t  *s;

    for (s = ngx_http_llmsafespace_statuses; s->status; s++) {
        if (s->status == status) {
            return s->message;
        }
    }

    return "error";
}


/* takes the reference: a NULL object (a failed json_pack()) is a 500 */

ngx_int_t
ngx_http_llmsafespace_send_object(ngx_http_request_t *r, ngx_uint_t status,
    json_t *json)
{
    ngx_int_t  rc;

    if (json == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_llmsafespace_send_json(r, status, json);
    json_decref(json);

    return rc;
}


ngx_int_t
ngx_http_llmsafespace_send_json(ngx_http_request_t *r, ngx_uint_t status,
    json_t *json)
{
    ngx_buf_t  *b;

    b = ngx_http_llmsafespace_json_buf(r, json);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_llmsafespace_send_buffer(r, status, b);
}


ngx_int_t
ngx_http_llmsafespace_send_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *code, const char *fmt, ...)
{
    u_char     *last;
    u_char      buf[1024];
    va_list     args;
    ngx_str_t   message;
    ngx_buf_t  *b;

    va_start(args, fmt);
    last = ngx_vslprintf(buf, buf + sizeof(buf), fmt, args);
    va_end(args);

    message.data = buf;
    message.len = last - buf;

    if (code == NULL) {
        code = ngx_http_llmsafespace_error_code(status);
    }

    b = ngx_http_llmsafespace_error_body(r, code, &message, NULL);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_llmsafespace_send_buffer(r, status, b);
}


/* a refused field is named in "details" so a client can point at it */

ngx_int_t
ngx_http_llmsafespace_send_field_error(ngx_http_request_t *r,
    ngx_uint_t status, const char *field, ngx_str_t *message)
{
    json_t  *details;

    details = field ? json_pack("{s:s}", "field", field) : NULL;

    return ngx_http_llmsafespace_send_error_details(r, status,
                                    ngx_http_llmsafespace_error_code(status),
                                    message, details);
}


/* "details" is taken over (NULL: an empty object) */

ngx_int_t
ngx_http_llmsafespace_send_error_details(ngx_http_request_t *r,
    ngx_uint_t status, const char *code, ngx_str_t *message, json_t *details)
{
    ngx_buf_t  *b;

    b = ngx_http_llmsafespace_error_body(r, code, message, details);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_llmsafespace_send_buffer(r, status, b);
}


/* a whole JSON body in one buffer */

static ngx_int_t
ngx_http_llmsafespace_send_buffer(ngx_http_request_t *r,
    ngx_uint_t status, ngx_buf_t *b)
{
    ngx_int_t    rc;
    ngx_chain_t  out;

    r->headers_out.status = status;
    r->headers_out.content_length_n = b->last - b->pos;
    ngx_str_set(&r->headers_out.content_type, "application/json");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;

    if (r->method == NGX_HTTP_HEAD) {
        r->header_only = 1;
    }

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


/* {"error":{"code":"...","message":"...","details":{}}} */

static ngx_buf_t *
ngx_http_llmsafespace_error_body(ngx_http_request_t *r, const char *code,
    ngx_str_t *message, json_t *details)
{
    json_t     *json;
    ngx_buf_t  *b;

    if (details == NULL) {
        details = json_object();
    }

    /* "o" steals the reference to details, even when packing fails */

    json = json_pack("{s:{s:s, s:s%, s:o}}", "error", "code", code,
                     "message", message->data, message->len,
                     "details", details);
    if (json == NULL) {
        return NULL;
    }

    b = ngx_http_llmsafespace_json_buf(r, json);
    json_decref(json);

    return b;
}


/* the compact text of a JSON value and a newline, as the last buffer */

static ngx_buf_t *
ngx_http_llmsafespace_json_buf(ngx_http_request_t *r, json_t *json)
{
    char       *text;
    size_t      len;
    ngx_buf_t  *b;

    text = json_dumps(json, JSON_COMPACT | JSON_ENSURE_ASCII);
    if (text == NULL) {
        return NULL;
    }

    len = ngx_strlen(text);

    b = ngx_create_temp_buf(r->pool, len + 1);
    if (b == NULL) {
        free(text);
        return NULL;
    }

    b->last = ngx_cpymem(b->last, text, len);
    *b->last++ = '\n';
    free(text);

    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    return b;
}


ngx_int_t
ngx_http_llmsafespace_set_limit_headers(ngx_http_request_t *r,
    ngx_http_llmsafespace_limit_result_t *limit, ngx_uint_t denied)
{
    static const char  *names[] = {
        "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset",
        "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"
    };

    ngx_uint_t  i, values[3];

    values[0] = limit->limit;
    values[1] = limit->remaining;
    values[2] = limit->reset;

    for (i = 0; i < 6; i++) {
        if (ngx_http_llmsafespace_add_header(r, names[i], values[i % 3])
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    if (denied) {
        return ngx_http_llmsafespace_add_header(r, "Retry-After",
                                                limit->retry_after
                                                ? limit->retry_after : 1);
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_llmsafespace_add_header(ngx_http_request_t *r, const char *name,
    ngx_uint_t value)
{
    u_char           *p;
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    p = ngx_pnalloc(r->pool, NGX_INT_T_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    h->key.data = (u_char *) name;
    h->key.len = ngx_strlen(name);
    h->value.data = p;
    h->value.len = ngx_sprintf(p, "%ui", value) - p;

    return NGX_OK;
}


ngx_int_t
ngx_http_llmsafespace_error_filter_init(ngx_conf_t *cf)
{
    ngx_http_next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = ngx_http_llmsafespace_error_header_filter;

    ngx_http_next_body_filter = ngx_http_top_body_filter;
    ngx_http_top_body_filter = ngx_http_llmsafespace_error_body_filter;

    return NGX_OK;
}


/*
 * nginx marks the pages it generates itself with r->err_status (see
 * ngx_http_special_response_handler()); in JSON locations such a page is
 * replaced by the JSON error body with the same status.
 */

static ngx_int_t
ngx_http_llmsafespace_error_header_filter(ngx_http_request_t *r)
{
    ngx_str_t                          message;
    ngx_buf_t                         *b;
    ngx_http_llmsafespace_ctx_t       *ctx;
    ngx_http_llmsafespace_loc_conf_t  *llcf;

    if (r->err_status < NGX_HTTP_BAD_REQUEST || r != r->main) {
        return ngx_http_next_header_filter(r);
    }

    llcf = ngx_http_get_module_loc_conf(r, ngx_http_llmsafespace_module);

    if (llcf == NULL || !llcf->json_errors) {
        return ngx_http_next_header_filter(r);
    }

    ctx = ngx_http_llmsafespace_get_ctx(r);
    if (ctx == NULL) {
        return NGX_ERROR;
    }

    message.data = (u_char *) ngx_http_llmsafespace_error_message(
                                                            r->err_status);
    message.len = ngx_strlen(message.data);

    b = ngx_http_llmsafespace_error_body(r,
                              ngx_http_llmsafespace_error_code(r->err_status),
                              &message, NULL);
    if (b == NULL) {
        return NGX_ERROR;
    }

    ctx->json_error = 1;
    ctx->error_body = b;

    ngx_str_set(&r->headers_out.content_type, "application/json");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;
    r->headers_out.content_length_n = b->last - b->pos;

    if (r->headers_out.content_length) {
        r->headers_out.content_length->hash = 0;
        r->headers_out.content_length = NULL;
    }

    ngx_http_clear_accept_ranges(r);
    ngx_http_clear_last_modified(r);
    ngx_http_clear_etag(r);

    /* nginx's own limit_req says 429 without saying when to come back */

    if (r->err_status == NGX_HTTP_TOO_MANY_REQUESTS
        && ngx_http_llmsafespace_add_header(r, "Retry-After", 1) != NGX_OK)
    {
        return NGX_ERROR;
    }

    return ngx_http_next_header_filter(r);
}


static ngx_int_t
ngx_http_llmsafespace_error_body_filter(ngx_http_request_t *r,
    ngx_chain_t *in)
{
    ngx_chain_t                   out, *cl;
    ngx_http_llmsafespace_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_llmsafespace_module);

    if (ctx == NULL || !ctx->json_error || in == NULL) {
        return ngx_http_next_body_filter(r, in);
    }

    /* the HTML page is dropped; the JSON body goes once, with last_buf */

    for (cl = in; cl; cl = cl->next) {
        cl->buf->pos = cl->buf->last;

        if (cl->buf->in_file) {
            cl->buf->file_pos = cl->buf->file_last;
        }

        if (cl->buf->last_buf || cl->buf->last_in_chain) {
            if (ctx->error_body == NULL) {
                return ngx_http_next_body_filter(r, in);
            }

            out.buf = ctx->error_body;
            out.next = NULL;
            ctx->error_body = NULL;

            return ngx_http_next_body_filter(r, &out);
        }
    }

    return NGX_OK;
}
