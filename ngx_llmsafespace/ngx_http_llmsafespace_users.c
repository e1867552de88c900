
/*
 * Copyright (C) LLMSafeSpace
 *
 * Users and API keys: GET /user, /user/apikeys (list, create, revoke) and,
 * for admins, /users (list, create, get, delete).  Everything but "who am
 * I" lives in PostgreSQL; with a keys file instead, those routes answer
 * 501 not_implemented.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <openssl/rand.h>

#include "ngx_http_llmsafespace.h"
#include "ngx_http_llmsafespace_api.h"
#include "ngx_http_llmsafespace_auth.h"


#define NGX_HTTP_LLMSAFESPACE_TS(col)                                         \
    "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"

#define NGX_HTTP_LLMSAFESPACE_NO_PG                                           \
    "users and API keys are managed in the keys file"

#define NGX_HTTP_LLMSAFESPACE_USER_ID_LEN  (4 + 16)


static json_t *ngx_http_llmsafespace_key_json(PGresult *res, int row);
static json_t *ngx_http_llmsafespace_user_json(PGresult *res, int row);
static ngx_int_t ngx_http_llmsafespace_apikeys_listed(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, PGresult *res);
static ngx_int_t ngx_http_llmsafespace_apikeys_created(
    ngx_http_request_t *r, ngx_http_llmsafespace_ctx_t *ctx, PGresult *res);
static ngx_int_t ngx_http_llmsafespace_apikeys_revoked(
    ngx_http_request_t *r, ngx_http_llmsafespace_ctx_t *ctx, PGresult *res);
static ngx_int_t ngx_http_llmsafespace_users_listed(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, PGresult *res);
static ngx_int_t ngx_http_llmsafespace_users_created(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, PGresult *res);
static ngx_int_t ngx_http_llmsafespace_users_got(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, PGresult *res);
static ngx_int_t ngx_http_llmsafespace_users_deleted(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, PGresult *res);
static ngx_int_t ngx_http_llmsafespace_users_unsandboxed(
    ngx_http_request_t *r, ngx_http_llmsafespace_ctx_t *ctx, PGresult *res);
static json_t *ngx_http_llmsafespace_users_deleted_json(
    ngx_http_llmsafespace_ctx_t *ctx);
static ngx_int_t ngx_http_llmsafespace_name_valid(const char *name);


static const char  ngx_http_llmsafespace_keys_list_sql[] =
    "SELECT id, name, " NGX_HTTP_LLMSAFESPACE_TS("created_at") ", "
    NGX_HTTP_LLMSAFESPACE_TS("last_used_at") ", "
    NGX_HTTP_LLMSAFESPACE_TS("revoked_at") " "
    "FROM api_keys WHERE user_id = $1 ORDER BY created_at, id";

/*
 * Within the cap on a user's active keys ($5, 0: none), counted under the
 * user's lock in the same statement (lss_live_keys() in sql/schema.sql),
 * so concurrent creates cannot pass it together.  One row: the key's
 * columns, NULL when none was made, then the active keys counted.
 */
static const char  ngx_http_llmsafespace_keys_create_sql[] =
    "WITH q AS MATERIALIZED (SELECT CASE WHEN $5::int = 0 THEN 0 "
    "ELSE lss_live_keys($4) END AS live), "
    "k AS (INSERT INTO api_keys (id, user_id, secret_hash, name) "
    "SELECT $1, id, $2, $3 FROM users, q WHERE id = $4 "
    "AND deleted_at IS NULL AND ($5::int = 0 OR q.live < $5::int) "
    "RETURNING id, name, " NGX_HTTP_LLMSAFESPACE_TS("created_at") " AS c, "
    NGX_HTTP_LLMSAFESPACE_TS("last_used_at") " AS u, "
    NGX_HTTP_LLMSAFESPACE_TS("revoked_at") " AS r) "
    "SELECT k.*, q.live FROM q LEFT JOIN k ON true";

/* users may revoke their own keys, admins anybody's ($3 = 't') */
static const char  ngx_http_llmsafespace_keys_revoke_sql[] =
    "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) "
    "WHERE id = $1 AND (user_id = $2 OR $3 = 't') "
    "RETURNING id, name, " NGX_HTTP_LLMSAFESPACE_TS("created_at") ", "
    NGX_HTTP_LLMSAFESPACE_TS("last_used_at") ", "
    NGX_HTTP_LLMSAFESPACE_TS("revoked_at");

static const char  ngx_http_llmsafespace_users_list_sql[] =
    "SELECT id, name, role, " NGX_HTTP_LLMSAFESPACE_TS("created_at") " "
    "FROM users WHERE deleted_at IS NULL ORDER BY created_at, id "
    "LIMIT $1 OFFSET $2";

static const char  ngx_http_llmsafespace_users_get_sql[] =
    "SELECT id, name, role, " NGX_HTTP_LLMSAFESPACE_TS("created_at") " "
    "FROM users WHERE id = $1 AND deleted_at IS NULL";

/* a user and its first key in one statement: both or neither */
static const char  ngx_http_llmsafespace_users_create_sql[] =
    "WITH u AS (INSERT INTO users (id, name, role) VALUES ($1, $2, $3) "
    "RETURNING id, name, role, created_at), "
    "k AS (INSERT INTO api_keys (id, user_id, secret_hash, name) "
    "SELECT $4, id, $5, 'initial' FROM u RETURNING id, name, created_at) "
    "SELECT u.id, u.name, u.role, " NGX_HTTP_LLMSAFESPACE_TS("u.created_at")
    ", k.id, k.name, " NGX_HTTP_LLMSAFESPACE_TS("k.created_at") " "
    "FROM u, k";

/* one row per revoked key, or one with a NULL key; none: no such user */
static const char  ngx_http_llmsafespace_users_delete_sql[] =
    "WITH u AS (UPDATE users SET deleted_at = now() "
    "WHERE id = $1 AND deleted_at IS NULL RETURNING id), "
    "k AS (UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) "
    "WHERE user_id IN (SELECT id FROM u) RETURNING id) "
    "SELECT u.id, k.id FROM u LEFT JOIN k ON true";

/* with the sandbox API: the controller terminates what is marked */
static const char  ngx_http_llmsafespace_users_sandboxes_sql[] =
    "UPDATE sandboxes SET delete_requested_at = "
    "coalesce(delete_requested_at, now()), updated_at = now() "
    "WHERE owner = $1 AND phase NOT IN ('Terminated', 'Failed') "
    "RETURNING id";


ngx_int_t
ngx_http_llmsafespace_user_get(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_str_t *id)
{
    json_t  *json;

    json = json_pack("{s:s%, s:s%, s:s, s:s%}",
                     "id", ctx->identity.user_id.data,
                     ctx->identity.user_id.len,
                     "name", ctx->identity.user_name.data,
                     ctx->identity.user_name.len,
                     "role", ctx->identity.role
                             == NGX_HTTP_LLMSAFESPACE_ROLE_ADMIN
                             ? "admin" : "user",
                     "keyId", ctx->identity.key_id.data,
                     ctx->identity.key_id.len);
    return ngx_http_llmsafespace_send_object(r, NGX_HTTP_OK, json);
}


ngx_int_t
ngx_http_llmsafespace_apikeys_list(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_str_t *id)
{
    u_char      *user;
    const char  *values[1];

    if (!ngx_http_llmsafespace_api_have_pg(r)) {
        return ngx_http_llmsafespace_api_no_pg(r,
                                          NGX_HTTP_LLMSAFESPACE_NO_PG);
    }

    user = ngx_http_llmsafespace_api_cstr(r, ctx->identity.user_id.data,
                                      ctx->identity.user_id.len);
    if (user == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    values[0] = (const char *) user;

    return ngx_http_llmsafespace_api_query(r, ctx,
                                     ngx_http_llmsafespace_keys_list_sql, 1,
                                     values,
                                     ngx_http_llmsafespace_apikeys_listed);
}


static ngx_int_t
ngx_http_llmsafespace_apikeys_listed(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, PGresult *res)
{
    return ngx_http_llmsafespace_api_send_list(r, res, "apiKeys",
                                           ngx_http_llmsafespace_key_json);
}


ngx_int_t
ngx_http_llmsafespace_apikeys_create(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_str_t *id)
{
    u_char                             *user, *key_id, *hash, *cap;
    const char                         *name, *values[5];
    ngx_http_llmsafespace_new_key_t    *key;
    ngx_http_llmsafespace_main_conf_t  *lmcf;

    static const char  *fields[] = { "name", NULL };

    if (!ngx_http_llmsafespace_api_have_pg(r)) {
        return ngx_http_llmsafespace_api_no_pg(r,
                                          NGX_HTTP_LLMSAFESPACE_NO_PG);
    }

    if (ngx_http_llmsafespace_api_only(r, ctx, fields) != NGX_OK
        || ngx_http_llmsafespace_api_string(r, ctx, "name", 0, 64, &name)
           != NGX_OK)
    {
        return ngx_http_llmsafespace_api_reject(r, ctx);
    }

    key = ngx_pcalloc(r->pool, sizeof(ngx_http_llmsafespace_new_key_t));
    user = ngx_pnalloc(r->pool, ctx->identity.user_id.len + 1);
    key_id = ngx_pnalloc(r->pool, NGX_HTTP_LLMSAFESPACE_KEY_ID_LEN + 1);
    hash = ngx_pnalloc(r->pool, NGX_HTTP_LLMSAFESPACE_HASH_HEX_LEN + 1);
    cap = ngx_pnalloc(r->pool, NGX_INT_T_LEN + 1);

    if (key == NULL || user == NULL || key_id == NULL || hash == NULL
        || cap == NULL || ngx_http_llmsafespace_key_generate(key) != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    lmcf = ngx_http_get_module_main_conf(r, ngx_http_llmsafespace_module);
    *ngx_sprintf(cap, "%ui", lmcf->keys_per_user) = '\0';

    *ngx_cpymem(user, ctx->identity.user_id.data,
                ctx->identity.user_id.len) = '\0';
    *ngx_cpymem(key_id, key->key_id, NGX_HTTP_LLMSAFESPACE_KEY_ID_LEN) = '\0';
    *ngx_cpymem(hash, key->hash_hex, NGX_HTTP_LLMSAFESPACE_HASH_HEX_LEN) =
                                                                         '\0';

    ctx->new_key = key;

    values[0] = (const char *) key_id;
    values[1] = (const char *) hash;
    values[2] = name;
    values[3] = (const char *) user;
    values[4] = (const char *) cap;

    return ngx_http_llmsafespace_api_query(r, ctx,
                                    ngx_http_llmsafespace_keys_create_sql, 5,
                                    values,
                                    ngx_http_llmsafespace_apikeys_created);
}


static ngx_int_t
ngx_http_llmsafespace_apikeys_created(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, PGresult *res)
{
    json_t                             *json;
    ngx_int_t                           live;
    ngx_http_llmsafespace_new_key_t    *key;
    ngx_http_llmsafespace_main_conf_t  *lmcf;

    key = ctx->new_key;
    lmcf = ngx_http_get_module_main_conf(r, ngx_http_llmsafespace_module);

    if (PQntuples(res) == 1 && PQgetisnull(res, 0, 0)) {
        live = ngx_atoi((u_char *) PQgetvalue(res, 0, 5),
                        PQgetlength(res, 0, 5));

        if (lmcf->keys_per_user && live >= (ngx_int_t) lmcf->keys_per_user)
        {
            return ngx_http_llmsafespace_send_error_details(r,
                       NGX_HTTP_FORBIDDEN, "quota_exceeded",
                       &(ngx_str_t) ngx_string("too many active API keys: "
                                               "revoke one first (DELETE "
                                               "/user/apikeys/{id})"),
                       json_pack("{s:i, s:i}", "limit",
                                 (int) lmcf->keys_per_user,
                                 "current", (int) live));
        }
    }

    if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0)) {
        /* the user was deleted while its key was in use */
        return ngx_http_llmsafespace_send_error(r, NGX_HTTP_UNAUTHORIZED,
                                                "unauthorized",
                                                "API key revoked");
    }

    json = ngx_http_llmsafespace_key_json(res, 0);
    if (json == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* the secret is shown once, here, and never stored */

    if (json_object_set_new(json, "key",
                            json_stringn((char *) key->key,
                                         NGX_HTTP_LLMSAFESPACE_KEY_LEN))
        != 0)
    {
        json_decref(json);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->audit_object.data = key->key_id;
    ctx->audit_object.len = NGX_HTTP_LLMSAFESPACE_KEY_ID_LEN;

    return ngx_http_llmsafespace_send_object(r, NGX_HTTP_CREATED, json);
}


ngx_int_t
ngx_http_llmsafespace_apikeys_delete(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_str_t *id)
{
    u_char      *key_id, *user;
    const char  *values[3];

    if (!ngx_http_llmsafespace_api_have_pg(r)) {
        return ngx_http_llmsafespace_api_no_pg(r,
                                          NGX_HTTP_LLMSAFESPACE_NO_PG);
    }

    ctx->audit_object = *id;

    key_id = ngx_http_llmsafespace_api_cstr(r, id->data, id->len);
    user = ngx_http_llmsafespace_api_cstr(r, ctx->identity.user_id.data,
                                      ctx->identity.user_id.len);

    if (key_id == NULL || user == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    values[0] = (const char *) key_id;
    values[1] = (const char *) user;
    values[2] = ctx->identity.role == NGX_HTTP_LLMSAFESPACE_ROLE_ADMIN
                ? "t" : "f";

    return ngx_http_llmsafespace_api_query(r, ctx,
                                    ngx_http_llmsafespace_keys_revoke_sql, 3,
                                    values,
                                    ngx_http_llmsafespace_apikeys_revoked);
}


static ngx_int_t
ngx_http_llmsafespace_apikeys_revoked(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, PGresult *res)
{
    json_t  *json;

    if (PQntuples(res) != 1) {
        return ngx_http_llmsafespace_send_error(r, NGX_HTTP_NOT_FOUND,
                                                "not_found",
                                                "API key %V not found",
                                                &ctx->audit_object);
    }

    ngx_http_llmsafespace_key_revoked(&ctx->audit_object);

    json = ngx_http_llmsafespace_key_json(res, 0);
    return ngx_http_llmsafespace_send_object(r, NGX_HTTP_OK, json);
}


ngx_int_t
ngx_http_llmsafespace_users_list(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_str_t *id)
{
    u_char      *limit, *offset;
    const char  *values[2];

    if (!ngx_http_llmsafespace_api_have_pg(r)) {
        return ngx_http_llmsafespace_api_no_pg(r,
                                          NGX_HTTP_LLMSAFESPACE_NO_PG);
    }

    limit = ngx_pnalloc(r->pool, 2 * NGX_INT_T_LEN);
    if (limit == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    offset = limit + NGX_INT_T_LEN;

    if (ngx_http_llmsafespace_api_page(r, ctx, limit, offset) != NGX_OK) {
        return ngx_http_llmsafespace_api_reject(r, ctx);
    }

    values[0] = (const char *) limit;
    values[1] = (const char *) offset;

    return ngx_http_llmsafespace_api_query(r, ctx,
                                     ngx_http_llmsafespace_users_list_sql, 2,
                                     values,
                                     ngx_http_llmsafespace_users_listed);
}


/* ?limit=N&offset=N, limit 1..1000 (default 100) */

static ngx_int_t
ngx_http_llmsafespace_users_listed(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, PGresult *res)
{
    return ngx_http_llmsafespace_api_send_list(r, res, "users",
                                           ngx_http_llmsafespace_user_json);
}


ngx_int_t
ngx_http_llmsafespace_users_create(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_str_t *id)
{
    u_char                           *p, *user_id, *key_id, *hash;
    u_char                            random[16];
    const char                       *name, *role, *values[5];
    ngx_uint_t                        i;
    ngx_http_llmsafespace_new_key_t  *key;

    static const char  *fields[] = { "name", "role", NULL };

    if (!ngx_http_llmsafespace_api_have_pg(r)) {
        return ngx_http_llmsafespace_api_no_pg(r,
                                          NGX_HTTP_LLMSAFESPACE_NO_PG);
    }

    if (ngx_http_llmsafespace_api_only(r, ctx, fields) != NGX_OK
        || ngx_http_llmsafespace_api_string(r, ctx, "name", 1,
                                            NGX_HTTP_LLMSAFESPACE_NAME_LEN,
                                            &name)
           != NGX_OK
        || ngx_http_llmsafespace_api_string(r, ctx, "role", 0, 5, &role)
           != NGX_OK)
    {
        return ngx_http_llmsafespace_api_reject(r, ctx);
    }

    if (ngx_http_llmsafespace_name_valid(name) != NGX_OK) {
        ngx_http_llmsafespace_api_invalid(r, ctx, 422, "name",
                                  "\"name\" may hold only letters, digits "
                                  "and . _ @ -");
        return ngx_http_llmsafespace_api_reject(r, ctx);
    }

    if (role == NULL) {
        role = "user";

    } else if (ngx_strcmp(role, "user") != 0
               && ngx_strcmp(role, "admin") != 0)
    {
        ngx_http_llmsafespace_api_invalid(r, ctx, 422, "role",
                                          "\"role\" must be \"admin\" or "
                                          "\"user\"");
        return ngx_http_llmsafespace_api_reject(r, ctx);
    }

    key = ngx_pcalloc(r->pool, sizeof(ngx_http_llmsafespace_new_key_t));
    user_id = ngx_pnalloc(r->pool, NGX_HTTP_LLMSAFESPACE_USER_ID_LEN + 1);
    key_id = ngx_pnalloc(r->pool, NGX_HTTP_LLMSAFESPACE_KEY_ID_LEN + 1);
    hash = ngx_pnalloc(r->pool, NGX_HTTP_LLMSAFESPACE_HASH_HEX_LEN + 1);

    if (key == NULL || user_id == NULL || key_id == NULL || hash == NULL
        || ngx_http_llmsafespace_key_generate(key) != NGX_OK
        || RAND_bytes(random, sizeof(random)) != 1)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_cpymem(user_id, "usr-", 4);

    for (i = 0; i < sizeof(random); i++) {
        *p++ = "0123456789abcdefghijklmnopqrstuvwxyz"[random[i] % 36];
    }

    *p = '\0';

    *ngx_cpymem(key_id, key->key_id, NGX_HTTP_LLMSAFESPACE_KEY_ID_LEN) = '\0';
    *ngx_cpymem(hash, key->hash_hex, NGX_HTTP_LLMSAFESPACE_HASH_HEX_LEN) =
                                                                         '\0';

    ctx->new_key = key;
    ctx->audit_object.data = user_id;
    ctx->audit_object.len = NGX_HTTP_LLMSAFESPACE_USER_ID_LEN;

    values[0] = (const char *) user_id;
    values[1] = name;
    values[2] = role;
    values[3] = (const char *) key_id;
    values[4] = (const char *) hash;

    return ngx_http_llmsafespace_api_query(r, ctx,
                                   ngx_http_llmsafespace_users_create_sql, 5,
                                   values,
                                   ngx_http_llmsafespace_users_created);
}


static ngx_int_t
ngx_http_llmsafespace_users_created(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, PGresult *res)
{
    json_t  *json;

    if (PQntuples(res) != 1) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    json = json_pack("{s:o, s:{s:o, s:o, s:s%, s:o}}",
                     "user", ngx_http_llmsafespace_user_json(res, 0),
                     "apiKey",
                     "id", ngx_http_llmsafespace_api_value(res, 0, 4),
                     "name", ngx_http_llmsafespace_api_value(res, 0, 5),
                     "key", ctx->new_key->key,
                     (size_t) NGX_HTTP_LLMSAFESPACE_KEY_LEN,
                     "createdAt", ngx_http_llmsafespace_api_value(res, 0, 6));

    return ngx_http_llmsafespace_send_object(r, NGX_HTTP_CREATED, json);
}


ngx_int_t
ngx_http_llmsafespace_users_get(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_str_t *id)
{
    return ngx_http_llmsafespace_api_query_id(r, ctx, id,
                                        ngx_http_llmsafespace_users_get_sql,
                                        ngx_http_llmsafespace_users_got,
                                        NGX_HTTP_LLMSAFESPACE_NO_PG);
}


static ngx_int_t
ngx_http_llmsafespace_users_got(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, PGresult *res)
{
    json_t  *json;

    if (PQntuples(res) != 1) {
        return ngx_http_llmsafespace_send_error(r, NGX_HTTP_NOT_FOUND,
                                                "not_found",
                                                "user %V not found",
                                                &ctx->audit_object);
    }

    json = ngx_http_llmsafespace_user_json(res, 0);
    return ngx_http_llmsafespace_send_object(r, NGX_HTTP_OK, json);
}


ngx_int_t
ngx_http_llmsafespace_users_delete(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_str_t *id)
{
    if (id->len == ctx->identity.user_id.len
        && ngx_strncmp(id->data, ctx->identity.user_id.data, id->len) == 0)
    {
        ctx->audit_object = *id;

        return ngx_http_llmsafespace_send_error(r, NGX_HTTP_CONFLICT,
                                                "conflict",
                                                "an admin cannot delete "
                                                "their own user");
    }

    return ngx_http_llmsafespace_api_query_id(r, ctx, id,
                                        ngx_http_llmsafespace_users_delete_sql,
                                        ngx_http_llmsafespace_users_deleted,
                                        NGX_HTTP_LLMSAFESPACE_NO_PG);
}


static ngx_int_t
ngx_http_llmsafespace_users_deleted(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, PGresult *res)
{
    int                                 i, revoked;
    ngx_str_t                           key_id;
    const char                         *values[1];
    ngx_http_llmsafespace_main_conf_t  *lmcf;

    if (PQntuples(res) == 0) {
        return ngx_http_llmsafespace_send_error(r, NGX_HTTP_NOT_FOUND,
                                                "not_found",
                                                "user %V not found",
                                                &ctx->audit_object);
    }

    revoked = 0;

    for (i = 0; i < PQntuples(res); i++) {
        if (PQgetisnull(res, i, 1)) {
            continue;
        }

        key_id.data = (u_char *) PQgetvalue(res, i, 1);
        key_id.len = PQgetlength(res, i, 1);

        ngx_http_llmsafespace_key_revoked(&key_id);
        revoked++;
    }

    ctx->revoked_keys = revoked;

    lmcf = ngx_http_get_module_main_conf(r, ngx_http_llmsafespace_module);

    if (lmcf->claim_script.len == 0) {
        /* no sandbox API on this gateway, hence no sandboxes table */
        return ngx_http_llmsafespace_send_object(r, NGX_HTTP_OK,
                              ngx_http_llmsafespace_users_deleted_json(ctx));
    }

    values[0] = (const char *) ngx_http_llmsafespace_api_cstr(r,
                                                    ctx->audit_object.data,
                                                    ctx->audit_object.len);
    if (values[0] == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_llmsafespace_api_query(r, ctx,
                                   ngx_http_llmsafespace_users_sandboxes_sql,
                                   1, values,
                                   ngx_http_llmsafespace_users_unsandboxed);
}


static ngx_int_t
ngx_http_llmsafespace_users_unsandboxed(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, PGresult *res)
{
    json_t  *json;

    json = ngx_http_llmsafespace_users_deleted_json(ctx);

    if (json == NULL
        || json_object_set_new(json, "terminatedSandboxes",
                               json_integer(PQntuples(res)))
           != 0)
    {
        json_decref(json);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_llmsafespace_send_object(r, NGX_HTTP_OK, json);
}


static json_t *
ngx_http_llmsafespace_users_deleted_json(ngx_http_llmsafespace_ctx_t *ctx)
{
    return json_pack("{s:s%, s:b, s:i}",
                     "id", ctx->audit_object.data, ctx->audit_object.len,
                     "deleted", 1, "revokedKeys", (int) ctx->revoked_keys);
}


/* id, name, created, last used, revoked */

static json_t *
ngx_http_llmsafespace_key_json(PGresult *res, int row)
{
    return json_pack("{s:o, s:o, s:o, s:o, s:o}",
                     "id", ngx_http_llmsafespace_api_value(res, row, 0),
                     "name", ngx_http_llmsafespace_api_value(res, row, 1),
                     "createdAt", ngx_http_llmsafespace_api_value(res, row, 2),
                     "lastUsedAt", ngx_http_llmsafespace_api_value(res, row, 3),
                     "revokedAt", ngx_http_llmsafespace_api_value(res, row, 4));
}


/* id, name, role, created */

static json_t *
ngx_http_llmsafespace_user_json(PGresult *res, int row)
{
    return json_pack("{s:o, s:o, s:o, s:o}",
                     "id", ngx_http_llmsafespace_api_value(res, row, 0),
                     "name", ngx_http_llmsafespace_api_value(res, row, 1),
                     "role", ngx_http_llmsafespace_api_value(res, row, 2),
                     "createdAt", ngx_http_llmsafespace_api_value(res, row, 3));
}


static ngx_int_t
ngx_http_llmsafespace_name_valid(const char *name)
{
    const u_char  *p;

    for (p = (const u_char *) name; *p; p++) {
        if (!(isalnum(*p) || *p == '.' || *p == '_' || *p == '@'
              || *p == '-'))
        {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}
