/*
 * The HTTP side of the runner: request state kept by libmicrohttpd
 * between calls of the access handler, and the helpers handlers share.
 */

#ifndef LSS_HTTP_H
#define LSS_HTTP_H

#include "lss_runner.h"

#include <microhttpd.h>

typedef enum {
    LSS_ROUTE_NONE = 0,
    LSS_ROUTE_JSON,          /* handlers that take a JSON body */
    LSS_ROUTE_UPLOAD,
    LSS_ROUTE_OTHER,
    LSS_ROUTE_UNAUTH,
    LSS_ROUTE_DISCARD        /* error decided, body read and dropped */
} lss_route_t;

typedef struct {
    lss_route_t   route;
    int           status;
    int64_t       start_ms;
    char          line[160];
    char         *body;
    size_t        len;
    size_t        cap;
    int           too_large;

    /* PUT /files/{path} */
    int           up_fd;
    char          up_tmp[64];
    char         *up_name;     /* the clean relative path of the target */
    uint64_t      up_size;
    int           up_error;
    int           up_done;

    /* an execution, freed (its shepherd let go) once the answer is out */
    lss_exec_t   *ex;

    /* the error answered once the body is consumed */
    unsigned      err_status;
    const char   *err_code;
    const char   *err_message;
    const char   *err_field;
} lss_req_t;

enum MHD_Result lss_http_error(struct MHD_Connection *c, lss_req_t *r,
    unsigned status, const char *code, const char *message,
    const char *field);
enum MHD_Result lss_http_json(struct MHD_Connection *c, lss_req_t *r,
    unsigned status, json_t *body);

/* lss_files.c */
enum MHD_Result lss_files_handle(struct MHD_Connection *c, lss_req_t *r,
    const char *method, const char *path);
enum MHD_Result lss_files_list(struct MHD_Connection *c, lss_req_t *r);
enum MHD_Result lss_files_mkdir_json(struct MHD_Connection *c,
    lss_req_t *r, json_t *body);
int lss_upload_begin(struct MHD_Connection *c, lss_req_t *r,
    const char *path);
void lss_upload_data(lss_req_t *r, const char *data, size_t len);
enum MHD_Result lss_upload_finish(struct MHD_Connection *c, lss_req_t *r);
void lss_upload_abort(lss_req_t *r);
enum MHD_Result lss_reset(struct MHD_Connection *c, lss_req_t *r);

/* lss_stream.c */
enum MHD_Result lss_stream_upgrade(struct MHD_Connection *c, lss_req_t *r);

/* lss_execute.c */
enum MHD_Result lss_execute(struct MHD_Connection *c, lss_req_t *r,
    json_t *body);
enum MHD_Result lss_packages(struct MHD_Connection *c, lss_req_t *r,
    json_t *body);
void lss_exec_id(char *buf, size_t len);

#endif /* LSS_HTTP_H */
