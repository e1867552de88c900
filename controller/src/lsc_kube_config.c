/*
 * Where the API server is and how to prove who we are: the in-cluster
 * service account, or a kubeconfig for development.  Credentials are
 * kept in memory (curl takes PEM blobs), so inline *-data never touches
 * the disk.
 */

#include <ctype.h>
#include <errno.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lsc.h"
#include "lsc_kube.h"


#define LSC_KUBE_SA_DIR       "/var/run/secrets/kubernetes.io/serviceaccount"
#define LSC_KUBE_FILE_MAX     (1 << 20)
#define LSC_KUBE_TOKEN_MAX    (64 << 10)
/* a projected token rotates; kubelet refreshes the file well before */
#define LSC_KUBE_TOKEN_REREAD_MS  60000


static int
lsc_b64_value(int c)
{
    if (c >= 'A' && c <= 'Z') {
        return c - 'A';
    }
    if (c >= 'a' && c <= 'z') {
        return c - 'a' + 26;
    }
    if (c >= '0' && c <= '9') {
        return c - '0' + 52;
    }
    if (c == '+') {
        return 62;
    }
    if (c == '/') {
        return 63;
    }
    return -1;
}


/*
 * Standard base64 with padding; whitespace (line breaks in a pasted
 * value) is ignored, anything else that is not the alphabet is refused.
 * The result is NUL-terminated (PEM is text) and len excludes the NUL.
 */
int
lsc_kube_base64_decode(const char *in, char **out, size_t *len)
{
    const char  *p;
    char        *buf;
    size_t       n;
    uint32_t     acc;
    int          bits, v, pad;

    buf = malloc(strlen(in) / 4 * 3 + 4);
    if (buf == NULL) {
        return -1;
    }
    n = 0;
    acc = 0;
    bits = 0;
    pad = 0;
    for (p = in; *p != '\0'; p++) {
        if (isspace((unsigned char) *p)) {
            continue;
        }
        if (*p == '=') {
            pad++;
            continue;
        }
        v = lsc_b64_value((unsigned char) *p);
        if (v < 0 || pad > 0) {
            goto failed;
        }
        acc = (acc << 6) | (uint32_t) v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            buf[n++] = (char) ((acc >> bits) & 0xff);
        }
    }
    /* what is left must be the zero bits of a final group, padded */
    if (pad > 2 || (bits == 6) || (bits > 0 && (acc & ((1u << bits) - 1)))
        || (bits == 4 && pad != 2) || (bits == 2 && pad != 1)
        || (bits == 0 && pad != 0))
    {
        goto failed;
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return 0;

failed:
    free(buf);
    return -1;
}


static int
lsc_slurp(const char *path, char **out, size_t *len)
{
    char    *buf;
    size_t   n;

    buf = lsc_read_file(path, LSC_KUBE_FILE_MAX);
    if (buf == NULL) {
        lsc_log("error", "kube: %s: %s", path, strerror(errno));
        return -1;
    }
    n = strlen(buf);
    if (n == 0 || n >= LSC_KUBE_FILE_MAX) {
        lsc_log("error", "kube: %s: empty or too large", path);
        free(buf);
        return -1;
    }
    *out = buf;
    *len = n;
    return 0;
}


static int
lsc_token_read(lsc_kube_config_t *cf, int64_t now_ms)
{
    char    *buf;
    size_t   n;

    buf = lsc_read_file(cf->token_file, LSC_KUBE_TOKEN_MAX);
    if (buf == NULL) {
        lsc_log("error", "kube: token %s: %s", cf->token_file,
                strerror(errno));
        return -1;
    }
    n = strlen(buf);
    while (n > 0 && isspace((unsigned char) buf[n - 1])) {
        buf[--n] = '\0';
    }
    if (n == 0 || n >= LSC_KUBE_TOKEN_MAX - 1 || strpbrk(buf, "\r\n")) {
        lsc_log("error", "kube: token %s: empty, too long or not one line",
                cf->token_file);
        free(buf);
        return -1;
    }
    free(cf->token);
    cf->token = buf;
    cf->token_read_ms = now_ms;
    return 0;
}


/* the bearer token to send now; a file is re-read once a minute */
const char *
lsc_kube_config_token(lsc_kube_config_t *cf, int64_t now_ms)
{
    if (cf->token_file != NULL
        && (cf->token == NULL
            || now_ms - cf->token_read_ms >= LSC_KUBE_TOKEN_REREAD_MS))
    {
        /* a failed re-read keeps the token we had: it may still be good */
        if (lsc_token_read(cf, now_ms) != 0) {
            cf->token_read_ms = now_ms;
        }
    }
    return cf->token;
}


void
lsc_kube_config_free(lsc_kube_config_t *cf)
{
    free(cf->server);
    free(cf->namespace);
    free(cf->ca);
    free(cf->cert);
    free(cf->key);
    free(cf->token);
    free(cf->token_file);
    memset(cf, 0, sizeof(*cf));
}


static int
lsc_in_cluster_dir(lsc_kube_config_t *cf, const char *dir)
{
    const char  *host, *port;
    char         path[LSC_PATH_LEN], *ns;
    size_t       n;
    int          len;

    memset(cf, 0, sizeof(*cf));
    host = getenv("KUBERNETES_SERVICE_HOST");
    port = getenv("KUBERNETES_SERVICE_PORT");
    if (host == NULL || port == NULL || *host == '\0' || *port == '\0'
        || strlen(host) > 253 || strspn(port, "0123456789") != strlen(port)
        || strlen(port) > 5)
    {
        lsc_log("error", "kube: not in a cluster (KUBERNETES_SERVICE_HOST "
                "and _PORT)");
        return -1;
    }
    len = strlen(host) + strlen(port) + 16;
    cf->server = malloc(len);
    if (cf->server == NULL) {
        return -1;
    }
    /* an IPv6 service address goes in brackets */
    snprintf(cf->server, len, strchr(host, ':') ? "https://[%s]:%s"
             : "https://%s:%s", host, port);

    snprintf(path, sizeof(path), "%s/ca.crt", dir);
    if (lsc_slurp(path, &cf->ca, &cf->ca_len) != 0) {
        goto failed;
    }
    snprintf(path, sizeof(path), "%s/token", dir);
    cf->token_file = strdup(path);
    if (cf->token_file == NULL
        || lsc_kube_config_token(cf, lsc_now_ms()) == NULL)
    {
        goto failed;
    }
    snprintf(path, sizeof(path), "%s/namespace", dir);
    ns = lsc_read_file(path, 256);
    if (ns != NULL) {
        n = strcspn(ns, " \t\r\n");
        ns[n] = '\0';
        if (lsc_kube_valid_name(ns, 64)) {
            cf->namespace = ns;
            ns = NULL;
        }
        free(ns);
    }
    if (cf->namespace == NULL && (cf->namespace = strdup("default")) == NULL)
    {
        goto failed;
    }
    return 0;

failed:
    lsc_kube_config_free(cf);
    return -1;
}


/* dir: where the service account is mounted; NULL: its usual place */
int
lsc_kube_config_in_cluster(lsc_kube_config_t *cf, const char *dir)
{
    return lsc_in_cluster_dir(cf, dir ? dir : LSC_KUBE_SA_DIR);
}


/* the entry of a kubeconfig list (clusters, users, contexts) by name */
static json_t *
lsc_named(json_t *doc, const char *list, const char *item,
    const char *name)
{
    json_t  *arr, *e, *v;
    size_t   i;

    arr = json_object_get(doc, list);
    if (!json_is_array(arr)) {
        return NULL;
    }
    json_array_foreach(arr, i, e) {
        v = json_object_get(e, "name");
        if (json_is_string(v) && strcmp(json_string_value(v), name) == 0) {
            v = json_object_get(e, item);
            return json_is_object(v) ? v : NULL;
        }
    }
    return NULL;
}


static const char *
lsc_str(json_t *obj, const char *key)
{
    json_t  *v;

    v = json_object_get(obj, key);
    if (json_is_string(v) && json_string_length(v) > 0) {
        return json_string_value(v);
    }
    return NULL;
}


/*
 * One credential or CA: "<key>-data" (base64, inline) wins over "<key>"
 * (a file, relative to the kubeconfig's directory), as kubectl has it.
 * Absent: 0 and *out untouched.
 */
static int
lsc_pem(json_t *obj, const char *key, const char *dir, char **out,
    size_t *len)
{
    char         k[64], path[LSC_PATH_LEN];
    const char  *v;

    snprintf(k, sizeof(k), "%s-data", key);
    v = lsc_str(obj, k);
    if (v != NULL) {
        if (lsc_kube_base64_decode(v, out, len) != 0 || *len == 0) {
            lsc_log("error", "kube: kubeconfig: %s is not base64", k);
            return -1;
        }
        return 0;
    }
    v = lsc_str(obj, key);
    if (v == NULL) {
        return 0;
    }
    if (v[0] == '/') {
        snprintf(path, sizeof(path), "%s", v);
    } else {
        snprintf(path, sizeof(path), "%s/%s", dir, v);
    }
    return lsc_slurp(path, out, len);
}


static int
lsc_set(char **dst, const char *src)
{
    *dst = strdup(src);
    return *dst == NULL ? -1 : 0;
}


/*
 * A kubeconfig's context (NULL: current-context).  Exec plugins and
 * auth providers are not supported: a development cluster gives a
 * client certificate or a token.
 */
int
lsc_kube_config_kubeconfig(lsc_kube_config_t *cf, const char *path,
    const char *context)
{
    json_t      *doc, *ctx, *cluster, *user, *v;
    const char  *s, *cname, *uname;
    char         dir[LSC_PATH_LEN], tmp[LSC_PATH_LEN];
    size_t       n;

    memset(cf, 0, sizeof(*cf));
    doc = lsc_yaml_load(path);
    if (doc == NULL) {
        return -1;
    }
    snprintf(tmp, sizeof(tmp), "%s", path);
    snprintf(dir, sizeof(dir), "%s", dirname(tmp));

    if (context == NULL) {
        context = lsc_str(doc, "current-context");
    }
    if (context == NULL) {
        lsc_log("error", "kube: %s: no current-context", path);
        goto failed;
    }
    ctx = lsc_named(doc, "contexts", "context", context);
    cname = ctx ? lsc_str(ctx, "cluster") : NULL;
    uname = ctx ? lsc_str(ctx, "user") : NULL;
    cluster = cname ? lsc_named(doc, "clusters", "cluster", cname) : NULL;
    if (cluster == NULL || (s = lsc_str(cluster, "server")) == NULL
        || (strncmp(s, "https://", 8) != 0 && strncmp(s, "http://", 7) != 0))
    {
        lsc_log("error", "kube: %s: context \"%s\" names no cluster with "
                "an http(s) server", path, context);
        goto failed;
    }
    if (lsc_set(&cf->server, s) != 0) {
        goto failed;
    }
    n = strlen(cf->server);
    while (n > 0 && cf->server[n - 1] == '/') {
        cf->server[--n] = '\0';
    }
    s = lsc_str(ctx, "namespace");
    if (s != NULL && !lsc_kube_valid_name(s, 64)) {
        lsc_log("error", "kube: %s: invalid namespace", path);
        goto failed;
    }
    if (lsc_set(&cf->namespace, s ? s : "default") != 0) {
        goto failed;
    }
    v = json_object_get(cluster, "insecure-skip-tls-verify");
    cf->insecure = json_is_true(v)
                   || (json_is_string(v)
                       && strcmp(json_string_value(v), "true") == 0);
    if (lsc_pem(cluster, "certificate-authority", dir, &cf->ca, &cf->ca_len)
        != 0)
    {
        goto failed;
    }

    user = uname ? lsc_named(doc, "users", "user", uname) : NULL;
    if (user != NULL) {
        if (lsc_pem(user, "client-certificate", dir, &cf->cert,
                    &cf->cert_len) != 0
            || lsc_pem(user, "client-key", dir, &cf->key, &cf->key_len) != 0)
        {
            goto failed;
        }
        if ((cf->cert == NULL) != (cf->key == NULL)) {
            lsc_log("error", "kube: %s: a client certificate needs its key",
                    path);
            goto failed;
        }
        s = lsc_str(user, "token");
        if (s != NULL && (strpbrk(s, "\r\n") || lsc_set(&cf->token, s)))
        {
            goto failed;
        }
        s = lsc_str(user, "tokenFile");
        if (s != NULL && cf->token == NULL) {
            if (lsc_set(&cf->token_file, s) != 0
                || lsc_kube_config_token(cf, lsc_now_ms()) == NULL)
            {
                goto failed;
            }
        }
        if (json_object_get(user, "exec") != NULL
            || json_object_get(user, "auth-provider") != NULL)
        {
            lsc_log("warn", "kube: %s: exec and auth-provider users are "
                    "not supported", path);
        }
    }
    json_decref(doc);
    return 0;

failed:
    json_decref(doc);
    lsc_kube_config_free(cf);
    return -1;
}


/*
 * The controller's choice: an explicit kubeconfig, else the service
 * account when running in a Pod, else $KUBECONFIG (its first file) or
 * ~/.kube/config.
 */
int
lsc_kube_config_load(lsc_kube_config_t *cf, const char *kubeconfig)
{
    const char  *env, *home;
    char         path[LSC_PATH_LEN];
    size_t       n;

    if (kubeconfig != NULL && *kubeconfig != '\0') {
        return lsc_kube_config_kubeconfig(cf, kubeconfig, NULL);
    }
    if (getenv("KUBERNETES_SERVICE_HOST") != NULL) {
        return lsc_kube_config_in_cluster(cf, NULL);
    }
    env = getenv("KUBECONFIG");
    if (env != NULL && *env != '\0') {
        n = strcspn(env, ":");
        snprintf(path, sizeof(path), "%.*s", (int) n, env);
        return lsc_kube_config_kubeconfig(cf, path, NULL);
    }
    home = getenv("HOME");
    snprintf(path, sizeof(path), "%s/.kube/config", home ? home : "");
    return lsc_kube_config_kubeconfig(cf, path, NULL);
}

