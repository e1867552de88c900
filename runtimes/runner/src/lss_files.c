/*
 * The file API and /reset's cleaning.  Every operation is fd-relative
 * below the workspace (lss_path.c) and runs with the exec uid's fs
 * identity; downloads are streamed from the fd, uploads are streamed to
 * a temporary file beside the target and renamed into place only when
 * complete, so a broken upload leaves nothing partial.
 */

#include "lss_http.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/random.h>
#include <sys/stat.h>

#define LSS_REL_MAX  4200


static enum MHD_Result
lss_errno_response(struct MHD_Connection *c, lss_req_t *r, int err)
{
    switch (err) {
    case ENOENT:
        return lss_http_error(c, r, 404, "not_found", "no such file", NULL);
    case ELOOP:
    case EXDEV:
        return lss_http_error(c, r, 400, "bad_request",
                              "symbolic links are not followed", "path");
    case ENOTDIR:
        return lss_http_error(c, r, 400, "bad_request",
                              "not a directory", "path");
    case EISDIR:
        return lss_http_error(c, r, 400, "bad_request",
                              "is a directory", "path");
    case EEXIST:
    case ENOTEMPTY:
        return lss_http_error(c, r, 409, "conflict", strerror(err), "path");
    case EACCES:
    case EPERM:
        return lss_http_error(c, r, 403, "forbidden", strerror(err), "path");
    case ENAMETOOLONG:
        return lss_http_error(c, r, 400, "bad_request", "name too long",
                              "path");
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
        return lss_http_error(c, r, 507, "insufficient_storage",
                              strerror(err), NULL);
    default:
        return lss_http_error(c, r, 500, "internal", strerror(err), NULL);
    }
}


static int
lss_flag(struct MHD_Connection *c, const char *name)
{
    const char  *v;

    v = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, name);

    return v != NULL && (strcmp(v, "1") == 0 || strcmp(v, "true") == 0);
}


static json_t *
lss_entry(const char *dir, const char *name, struct stat *st)
{
    char    *path, t[40];
    json_t  *e;

    if (strcmp(dir, ".") == 0) {
        path = strdup(name);
    } else if (asprintf(&path, "%s/%s", dir, name) < 0) {
        path = NULL;
    }
    if (path == NULL) {
        return NULL;
    }

    lss_iso_time((int64_t) st->st_mtim.tv_sec * 1000
                 + st->st_mtim.tv_nsec / 1000000, t, sizeof(t));

    e = json_pack("{sosssIsisssb}",
                  "name", lss_utf8_json((const u_char *) name, strlen(name)),
                  "path", path,
                  "size", (json_int_t) st->st_size,
                  "mode", (int) (st->st_mode & 07777),
                  "modTime", t,
                  "isDir", S_ISDIR(st->st_mode));
    if (e != NULL && S_ISLNK(st->st_mode)) {
        json_object_set_new(e, "isSymlink", json_true());
    }
    free(path);

    return e;
}


enum MHD_Result
lss_files_list(struct MHD_Connection *c, lss_req_t *r)
{
    int             fd;
    DIR            *d;
    char            rel[LSS_REL_MAX];
    json_t         *list, *e;
    struct stat     st;
    struct dirent  *de;
    const char     *raw;

    raw = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "path");
    if (lss_path_clean(raw ? raw : ".", 1, rel, sizeof(rel)) != 0) {
        return lss_http_error(c, r, 400, "bad_request", "invalid path",
                              "path");
    }

    fd = lss_fsop_open(rel, O_RDONLY | O_DIRECTORY, 0);
    if (fd < 0) {
        return lss_errno_response(c, r, errno);
    }

    if (fstat(fd, &st) != 0 || !S_ISDIR(st.st_mode)) {
        close(fd);
        return lss_errno_response(c, r, ENOTDIR);
    }

    d = fdopendir(fd);
    list = json_array();
    if (d == NULL || list == NULL) {
        if (d != NULL) {
            closedir(d);
        } else {
            close(fd);
        }
        json_decref(list);
        return lss_http_error(c, r, 500, "internal", "out of memory", NULL);
    }

    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) {
            continue;
        }
        if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
            continue;
        }
        e = lss_entry(rel, de->d_name, &st);
        if (e != NULL) {
            json_array_append_new(list, e);
        }
        if (json_array_size(list) >= 100000) {
            break;
        }
    }
    closedir(d);

    return lss_http_json(c, r, 200, list);
}


static enum MHD_Result
lss_download(struct MHD_Connection *c, lss_req_t *r, const char *rel)
{
    int                   fd;
    struct stat           st;
    enum MHD_Result       rc;
    struct MHD_Response  *resp;

    fd = lss_fsop_open(rel, O_RDONLY | O_NONBLOCK, 0);
    if (fd < 0) {
        return lss_errno_response(c, r, errno);
    }

    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return lss_http_error(c, r, 400, "bad_request",
                              "not a regular file", "path");
    }

    /* a hard link may name a file the sandbox should not hand out */
    if (st.st_nlink > 1) {
        close(fd);
        return lss_http_error(c, r, 409, "conflict",
                              "file has several hard links", "path");
    }

    fcntl(fd, F_SETFL, 0);

    resp = MHD_create_response_from_fd((size_t) st.st_size, fd);
    if (resp == NULL) {
        close(fd);
        return lss_http_error(c, r, 500, "internal", "out of memory", NULL);
    }
    MHD_add_response_header(resp, "Content-Type",
                            "application/octet-stream");

    r->status = 200;
    rc = MHD_queue_response(c, 200, resp);
    MHD_destroy_response(resp);

    return rc;
}


static enum MHD_Result
lss_delete(struct MHD_Connection *c, lss_req_t *r, const char *rel)
{
    if (strcmp(rel, ".") == 0) {
        return lss_http_error(c, r, 400, "bad_request",
                              "refusing to delete the workspace", "path");
    }

    if (lss_fsop_delete(rel, lss_flag(c, "recursive")) != 0) {
        return lss_errno_response(c, r, errno);
    }

    return lss_http_json(c, r, 200, json_pack("{ss}", "deleted", rel));
}


static enum MHD_Result
lss_mkdir(struct MHD_Connection *c, lss_req_t *r, const char *rel)
{
    if (lss_fsop_mkdir(rel) != 0) {
        return lss_errno_response(c, r, errno);
    }

    return lss_http_json(c, r, 201, json_pack("{ss}", "path", rel));
}


enum MHD_Result
lss_files_mkdir_json(struct MHD_Connection *c, lss_req_t *r, json_t *body)
{
    char         rel[LSS_REL_MAX];
    const char  *p;

    p = json_string_value(json_object_get(body, "path"));
    if (p == NULL || strlen(p) != json_string_length(json_object_get(body,
                                                                     "path"))
        || lss_path_clean(p, 0, rel, sizeof(rel)) != 0)
    {
        json_decref(body);
        return lss_http_error(c, r, 400, "bad_request", "invalid path",
                              "path");
    }
    json_decref(body);

    return lss_mkdir(c, r, rel);
}


enum MHD_Result
lss_files_handle(struct MHD_Connection *c, lss_req_t *r, const char *method,
    const char *path)
{
    char  rel[LSS_REL_MAX];

    if (lss_path_clean(path, 1, rel, sizeof(rel)) != 0) {
        return lss_http_error(c, r, 400, "bad_request", "invalid path",
                              "path");
    }

    if (strcmp(method, "GET") == 0) {
        if (strcmp(rel, ".") == 0) {
            return lss_files_list(c, r);
        }
        return lss_download(c, r, rel);
    }

    if (strcmp(method, "DELETE") == 0) {
        return lss_delete(c, r, rel);
    }

    if (strcmp(method, "POST") == 0 && lss_flag(c, "mkdir")) {
        return lss_mkdir(c, r, rel);
    }

    return lss_http_error(c, r, 405, "method_not_allowed",
                          "use GET, PUT, DELETE or POST ?mkdir=1", NULL);
}


static int
lss_upload_refuse(lss_req_t *r, unsigned status, const char *code,
    const char *message, const char *field)
{
    r->err_status = status;
    r->err_code = code;
    r->err_message = message;
    r->err_field = field;

    return -1;
}


static int
lss_upload_refuse_errno(lss_req_t *r, int err)
{
    switch (err) {
    case ENOENT:
        return lss_upload_refuse(r, 404, "not_found", "no such directory",
                                 "path");
    case ELOOP:
    case EXDEV:
        return lss_upload_refuse(r, 400, "bad_request",
                                 "symbolic links are not followed", "path");
    case ENOTDIR:
        return lss_upload_refuse(r, 400, "bad_request", "not a directory",
                                 "path");
    case EACCES:
    case EPERM:
        return lss_upload_refuse(r, 403, "forbidden", "permission denied",
                                 "path");
    default:
        return lss_upload_refuse(r, 500, "internal", "cannot create file",
                                 NULL);
    }
}


int
lss_upload_begin(struct MHD_Connection *c, lss_req_t *r, const char *path)
{
    char         rel[LSS_REL_MAX];
    const char  *cl;

    if (lss_path_clean(path, 1, rel, sizeof(rel)) != 0
        || strcmp(rel, ".") == 0)
    {
        return lss_upload_refuse(r, 400, "bad_request", "invalid path",
                                 "path");
    }

    cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
    if (cl != NULL && strtoull(cl, NULL, 10) > lss_conf.max_upload) {
        lss_http_error(c, r, 413, "payload_too_large",
                       "upload larger than the limit", NULL);
        return -2;
    }

    r->up_fd = lss_fsop_create_tmp(rel, r->up_tmp, sizeof(r->up_tmp));
    if (r->up_fd < 0) {
        return lss_upload_refuse_errno(r, errno);
    }

    r->up_name = strdup(rel);
    if (r->up_name == NULL) {
        lss_upload_abort(r);
        return lss_upload_refuse(r, 500, "internal", "out of memory", NULL);
    }

    return 0;
}


void
lss_upload_data(lss_req_t *r, const char *data, size_t len)
{
    ssize_t  n;

    if (r->up_fd < 0 || r->up_error) {
        return;
    }

    if (r->up_size + len > lss_conf.max_upload) {
        r->up_error = EFBIG;
        return;
    }

    while (len > 0) {
        n = write(r->up_fd, data, len);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            r->up_error = errno;
            return;
        }
        data += n;
        len -= (size_t) n;
        r->up_size += (uint64_t) n;
    }
}


enum MHD_Result
lss_upload_finish(struct MHD_Connection *c, lss_req_t *r)
{
    int          err, rc;
    char         t[40];

    if (r->up_error == EFBIG) {
        lss_upload_abort(r);
        return lss_http_error(c, r, 413, "payload_too_large",
                              "upload larger than the limit", NULL);
    }
    if (r->up_error) {
        err = r->up_error;
        lss_upload_abort(r);
        return lss_errno_response(c, r, err);
    }

    rc = 0;
    if (fsync(r->up_fd) != 0) {
        rc = errno;
    }
    if (rc == 0 && lss_fsop_commit(r->up_name, r->up_tmp) != 0) {
        rc = errno;
    }

    if (rc != 0) {
        lss_upload_abort(r);
        if (rc == EEXIST) {
            return lss_http_error(c, r, 409, "conflict",
                                  "target has several hard links", "path");
        }
        return lss_errno_response(c, r, rc);
    }

    r->up_done = 1;
    close(r->up_fd);
    r->up_fd = -1;

    lss_iso_time(lss_now_ms(), t, sizeof(t));

    return lss_http_json(c, r, 201,
                         json_pack("{sssIss}",
                                   "path", r->up_name,
                                   "size", (json_int_t) r->up_size,
                                   "createdAt", t));
}


void
lss_upload_abort(lss_req_t *r)
{
    if (r->up_fd >= 0) {
        close(r->up_fd);
        r->up_fd = -1;
    }

    if (r->up_name != NULL && r->up_tmp[0] != '\0' && !r->up_done) {
        lss_fsop_unlink_tmp(r->up_name, r->up_tmp);
    }
    r->up_tmp[0] = '\0';

    free(r->up_name);
    r->up_name = NULL;
}


/* POST /reset: no execution, no context, an empty workspace and tmp */
enum MHD_Result
lss_reset(struct MHD_Connection *c, lss_req_t *r)
{
    int  removed, failed;

    lss_exec_cancel_all();
    lss_context_delete_all();

    /* nothing may still be writing while the workspace is emptied */
    lss_exec_wait_idle(3000);

    lss_fsop_reset(&removed, &failed);

    return lss_http_json(c, r, 200,
                         json_pack("{sssisi}", "status", "reset",
                                   "removed", removed, "failed", failed));
}
