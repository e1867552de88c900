/*
 * The HTTP server: libmicrohttpd with a thread per connection (an
 * execution blocks its connection's thread, nothing else), the token
 * check on every request, routing, JSON errors and the request log.
 */

#include "lss_http.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

static struct MHD_Daemon  *lss_daemon;


enum MHD_Result
lss_http_json(struct MHD_Connection *c, lss_req_t *r, unsigned status,
    json_t *body)
{
    char                 *s;
    enum MHD_Result       rc;
    struct MHD_Response  *resp;

    s = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    if (s == NULL) {
        s = strdup("{\"error\":{\"code\":\"internal\","
                   "\"message\":\"out of memory\",\"details\":{}}}");
        status = 500;
        if (s == NULL) {
            return MHD_NO;
        }
    }

    resp = MHD_create_response_from_buffer(strlen(s), s,
                                           MHD_RESPMEM_MUST_FREE);
    if (resp == NULL) {
        free(s);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", "application/json");

    r->status = (int) status;
    rc = MHD_queue_response(c, status, resp);
    MHD_destroy_response(resp);

    return rc;
}


enum MHD_Result
lss_http_error(struct MHD_Connection *c, lss_req_t *r, unsigned status,
    const char *code, const char *message, const char *field)
{
    json_t  *details;

    details = json_object();
    if (field != NULL) {
        json_object_set_new(details, "field", json_string(field));
    }

    return lss_http_json(c, r, status,
                         json_pack("{s{ssssso}}", "error", "code", code,
                                   "message", message, "details", details));
}


/* compare digests so that neither content nor length leaks by timing */
static int
lss_token_ok(const char *got)
{
    u_char  a[SHA256_DIGEST_LENGTH], b[SHA256_DIGEST_LENGTH];

    if (got == NULL) {
        return 0;
    }

    SHA256((const u_char *) got, strlen(got), a);
    SHA256((const u_char *) lss_conf.token, lss_conf.token_len, b);

    return CRYPTO_memcmp(a, b, sizeof(a)) == 0;
}


/* keep URLs and arguments as sent: paths are decoded (and checked) by us */
static size_t
lss_unescape(void *cls, struct MHD_Connection *c, char *s)
{
    (void) cls;
    (void) c;

    return strlen(s);
}


static enum MHD_Result
lss_dispatch(struct MHD_Connection *c, lss_req_t *r, const char *url,
    const char *method)
{
    json_t        *body;
    json_error_t   jerr;

    if (strcmp(url, "/healthz") == 0) {
        return lss_http_json(c, r, 200, json_pack("{ss}", "status", "ok"));
    }

    if (strcmp(url, "/readyz") == 0) {
        if (lss_zygotes_ready()) {
            return lss_http_json(c, r, 200,
                                 json_pack("{ss}", "status", "ready"));
        }
        return lss_http_error(c, r, 503, "unavailable",
                              "zygotes are starting", NULL);
    }

    if (strcmp(url, "/stream") == 0) {
        return lss_stream_upgrade(c, r);
    }

    if (r->route == LSS_ROUTE_UPLOAD) {
        return lss_upload_finish(c, r);
    }

    if (strcmp(url, "/files") == 0 || strcmp(url, "/files/") == 0) {
        if (strcmp(method, "GET") != 0) {
            return lss_http_error(c, r, 405, "method_not_allowed",
                                  "use GET /files?path=DIR", NULL);
        }
        return lss_files_list(c, r);
    }

    if (strncmp(url, "/files/", 7) == 0) {
        return lss_files_handle(c, r, method, url + 7);
    }

    if (strncmp(url, "/contexts/", 10) == 0) {
        if (strcmp(method, "DELETE") != 0) {
            return lss_http_error(c, r, 405, "method_not_allowed",
                                  "use DELETE", NULL);
        }
        if (lss_context_delete(url + 10) != 0) {
            return lss_http_error(c, r, 404, "not_found",
                                  "no such context", NULL);
        }
        return lss_http_json(c, r, 200,
                             json_pack("{ss}", "deleted", url + 10));
    }

    if (strcmp(method, "POST") != 0
        || (strcmp(url, "/execute") != 0 && strcmp(url, "/packages") != 0
            && strcmp(url, "/reset") != 0 && strcmp(url, "/mkdir") != 0))
    {
        return lss_http_error(c, r, 404, "not_found", "no such endpoint",
                              NULL);
    }

    if (r->too_large) {
        return lss_http_error(c, r, 413, "payload_too_large",
                              "request body too large", NULL);
    }

    if (strcmp(url, "/reset") == 0) {
        return lss_reset(c, r);
    }

    body = json_loadb(r->body ? r->body : "", r->len, 0, &jerr);
    if (body == NULL) {
        return lss_http_error(c, r, 400, "bad_request", "malformed JSON",
                              NULL);
    }

    if (strcmp(url, "/execute") == 0) {
        return lss_execute(c, r, body);
    }
    if (strcmp(url, "/mkdir") == 0) {
        return lss_files_mkdir_json(c, r, body);
    }
    return lss_packages(c, r, body);
}


static enum MHD_Result
lss_handler(void *cls, struct MHD_Connection *c, const char *url,
    const char *method, const char *version, const char *upload_data,
    size_t *upload_data_size, void **con_cls)
{
    char       *nb;
    size_t      ncap;
    lss_req_t  *r;

    (void) cls;
    (void) version;

    r = *con_cls;

    if (r == NULL) {
        r = calloc(1, sizeof(lss_req_t));
        if (r == NULL) {
            return MHD_NO;
        }
        r->up_fd = -1;
        r->start_ms = lss_now_ms();
        snprintf(r->line, sizeof(r->line), "%s %s", method, url);
        /* one line per request: nothing a client sends may break it */
        for (nb = r->line; *nb != '\0'; nb++) {
            if ((u_char) *nb < 0x20 || (u_char) *nb == 0x7f) {
                *nb = '?';
            }
        }
        *con_cls = r;

        if (!lss_token_ok(MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                                      LSS_TOKEN_HEADER)))
        {
            /* answered once the (bounded) body is read: clean for clients */
            r->route = LSS_ROUTE_UNAUTH;
            return MHD_YES;
        }

        if (strcmp(method, "PUT") == 0 && strncmp(url, "/files/", 7) == 0) {
            r->route = LSS_ROUTE_UPLOAD;
            switch (lss_upload_begin(c, r, url + 7)) {
            case 0:
                break;
            case -1:
                r->route = LSS_ROUTE_DISCARD;
                break;
            default:
                /* declared too large: answered now, the body is not read */
                r->route = LSS_ROUTE_OTHER;
            }
            return MHD_YES;
        }

        r->route = LSS_ROUTE_JSON;
        return MHD_YES;
    }

    if (r->route == LSS_ROUTE_UNAUTH) {
        r->len += *upload_data_size;
        if (*upload_data_size == 0 || r->len > lss_conf.max_request) {
            *upload_data_size = 0;
            r->route = LSS_ROUTE_OTHER;
            return lss_http_error(c, r, 401, "unauthorized",
                                  "missing or wrong runner token", NULL);
        }
        *upload_data_size = 0;
        return MHD_YES;
    }

    if (r->route == LSS_ROUTE_DISCARD) {
        r->len += *upload_data_size;
        if (*upload_data_size == 0 || r->len > lss_conf.max_upload) {
            *upload_data_size = 0;
            r->route = LSS_ROUTE_OTHER;
            return lss_http_error(c, r, r->err_status, r->err_code,
                                  r->err_message, r->err_field);
        }
        *upload_data_size = 0;
        return MHD_YES;
    }

    if (*upload_data_size > 0) {
        if (r->route == LSS_ROUTE_UPLOAD) {
            lss_upload_data(r, upload_data, *upload_data_size);

        } else if (r->route == LSS_ROUTE_JSON && !r->too_large) {
            if (r->len + *upload_data_size > lss_conf.max_request) {
                r->too_large = 1;
            } else {
                if (r->len + *upload_data_size + 1 > r->cap) {
                    ncap = (r->len + *upload_data_size + 1) * 2;
                    if (ncap > lss_conf.max_request + 1) {
                        ncap = lss_conf.max_request + 1;
                    }
                    nb = realloc(r->body, ncap);
                    if (nb == NULL) {
                        r->too_large = 1;
                        *upload_data_size = 0;
                        return MHD_YES;
                    }
                    r->body = nb;
                    r->cap = ncap;
                }
                memcpy(r->body + r->len, upload_data, *upload_data_size);
                r->len += *upload_data_size;
            }
        }
        *upload_data_size = 0;
        return MHD_YES;
    }

    if (r->route == LSS_ROUTE_OTHER && r->status != 0) {
        return MHD_YES;
    }

    return lss_dispatch(c, r, url, method);
}


static void
lss_completed(void *cls, struct MHD_Connection *c, void **con_cls,
    enum MHD_RequestTerminationCode toe)
{
    lss_req_t  *r;

    (void) cls;
    (void) c;

    r = *con_cls;
    if (r == NULL) {
        return;
    }

    lss_upload_abort(r);

    /* the URL only: the token lives in a header and is never logged */
    lss_log("%s %d %lldms%s", r->line, r->status,
            (long long) (lss_now_ms() - r->start_ms),
            toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "" : " aborted");

    lss_exec_free(r->ex);
    free(r->body);
    free(r);
    *con_cls = NULL;

    /*
     * The answer is out: now the execution's shepherd may exit and the
     * zygotes replace the spares this request took (an execution, a
     * context, the fs helper) without slowing the answer down.
     */
    lss_zygotes_refill();
}


static void *
lss_uri_log(void *cls, const char *uri, struct MHD_Connection *c)
{
    (void) cls;
    (void) c;
    (void) uri;

    return NULL;
}


static int
lss_listen_socket(void)
{
    int                  fd, one, port;
    char                *host, *colon;
    const char          *path;
    struct sockaddr_in   sin;
    struct sockaddr_un   sun;

    if (strncmp(lss_conf.listen, "unix:", 5) == 0) {
        path = lss_conf.listen + 5;
        if (strlen(path) >= sizeof(sun.sun_path)) {
            errno = ENAMETOOLONG;
            return -1;
        }

        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            return -1;
        }
        memset(&sun, 0, sizeof(sun));
        sun.sun_family = AF_UNIX;
        strcpy(sun.sun_path, path);
        unlink(path);

        if (bind(fd, (struct sockaddr *) &sun, sizeof(sun)) != 0
            || chmod(path, lss_conf.socket_mode) != 0
            || listen(fd, 128) != 0)
        {
            close(fd);
            return -1;
        }
        return fd;
    }

    if (strncmp(lss_conf.listen, "tcp:", 4) == 0) {
        host = strdup(lss_conf.listen + 4);
        if (host == NULL) {
            return -1;
        }
        colon = strrchr(host, ':');
        if (colon == NULL) {
            free(host);
            errno = EINVAL;
            return -1;
        }
        *colon = '\0';
        port = atoi(colon + 1);

        memset(&sin, 0, sizeof(sin));
        sin.sin_family = AF_INET;
        sin.sin_port = htons((uint16_t) port);
        if (inet_pton(AF_INET, host, &sin.sin_addr) != 1) {
            free(host);
            errno = EINVAL;
            return -1;
        }
        free(host);

        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            return -1;
        }
        one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, (struct sockaddr *) &sin, sizeof(sin)) != 0
            || listen(fd, 128) != 0)
        {
            close(fd);
            return -1;
        }
        return fd;
    }

    errno = EINVAL;
    return -1;
}


int
lss_http_start(void)
{
    int  fd;

    fd = lss_listen_socket();
    if (fd < 0) {
        lss_log("listen %s: %s", lss_conf.listen, strerror(errno));
        return -1;
    }

    lss_daemon = MHD_start_daemon(
        MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD
        | MHD_ALLOW_UPGRADE | MHD_USE_ERROR_LOG | MHD_USE_POLL,
        0, NULL, NULL, lss_handler, NULL,
        MHD_OPTION_LISTEN_SOCKET, fd,
        MHD_OPTION_NOTIFY_COMPLETED, lss_completed, NULL,
        MHD_OPTION_UNESCAPE_CALLBACK, lss_unescape, NULL,
        MHD_OPTION_URI_LOG_CALLBACK, lss_uri_log, NULL,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned) 512,
        /* idle keep-alive connections go; an execution is not idle */
        MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned) (lss_conf.max_timeout > 240 ? lss_conf.max_timeout + 60
                                               : 300),
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t) 256 * 1024,
        MHD_OPTION_END);

    if (lss_daemon == NULL) {
        close(fd);
        lss_log("cannot start the HTTP server");
        return -1;
    }

    lss_log("listening on %s", lss_conf.listen);
    return 0;
}


void
lss_http_stop(void)
{
    if (lss_daemon != NULL) {
        MHD_stop_daemon(lss_daemon);
        lss_daemon = NULL;
    }
}
