/*
 * YAML manifests (the .yaml files of conf/warmpools) into jansson values, so a pool
 * from a file and a pool from PostgreSQL (jsonb) go through the same
 * validation.  libyaml parses; this file only maps its document nodes
 * (plain scalars typed the YAML 1.2 core way: int, bool, null, string).
 */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "lsc.h"


#define LSC_YAML_DEPTH  32


static json_t *
lsc_scalar(yaml_node_t *n)
{
    const char  *s;
    char        *end;
    long long    v;

    s = (const char *) n->data.scalar.value;
    if (n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) {
        return json_string(s);
    }
    if (strcmp(s, "true") == 0 || strcmp(s, "True") == 0) {
        return json_true();
    }
    if (strcmp(s, "false") == 0 || strcmp(s, "False") == 0) {
        return json_false();
    }
    if (strcmp(s, "null") == 0 || strcmp(s, "~") == 0 || s[0] == '\0') {
        return json_null();
    }
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno == 0 && end != s && *end == '\0') {
        return json_integer(v);
    }
    return json_string(s);
}


static json_t *
lsc_node(yaml_document_t *doc, yaml_node_t *n, int depth)
{
    json_t             *out, *k, *v;
    yaml_node_item_t   *item;
    yaml_node_pair_t   *pair;

    if (n == NULL || depth > LSC_YAML_DEPTH) {
        return NULL;
    }

    switch (n->type) {

    case YAML_SCALAR_NODE:
        return lsc_scalar(n);

    case YAML_SEQUENCE_NODE:
        out = json_array();
        for (item = n->data.sequence.items.start;
             item < n->data.sequence.items.top; item++)
        {
            v = lsc_node(doc, yaml_document_get_node(doc, *item), depth + 1);
            if (v == NULL) {
                json_decref(out);
                return NULL;
            }
            json_array_append_new(out, v);
        }
        return out;

    case YAML_MAPPING_NODE:
        out = json_object();
        for (pair = n->data.mapping.pairs.start;
             pair < n->data.mapping.pairs.top; pair++)
        {
            k = lsc_node(doc, yaml_document_get_node(doc, pair->key),
                         depth + 1);
            v = lsc_node(doc, yaml_document_get_node(doc, pair->value),
                         depth + 1);
            if (k == NULL || v == NULL || !json_is_string(k)) {
                json_decref(k);
                json_decref(v);
                json_decref(out);
                return NULL;
            }
            json_object_set_new(out, json_string_value(k), v);
            json_decref(k);
        }
        return out;

    default:
        return NULL;
    }
}


/* the first document of a file, or NULL (logged) */
json_t *
lsc_yaml_load(const char *path)
{
    FILE             *f;
    yaml_parser_t     parser;
    yaml_document_t   doc;
    json_t           *out;

    f = fopen(path, "re");
    if (f == NULL) {
        lsc_log("error", "%s: %s", path, strerror(errno));
        return NULL;
    }
    if (!yaml_parser_initialize(&parser)) {
        fclose(f);
        return NULL;
    }
    yaml_parser_set_input_file(&parser, f);
    if (!yaml_parser_load(&parser, &doc)) {
        lsc_log("error", "%s: line %zu: %s", path,
                parser.problem_mark.line + 1,
                parser.problem ? parser.problem : "YAML error");
        yaml_parser_delete(&parser);
        fclose(f);
        return NULL;
    }
    out = lsc_node(&doc, yaml_document_get_root_node(&doc), 0);
    if (out == NULL) {
        lsc_log("error", "%s: unsupported YAML", path);
    }
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    fclose(f);
    return out;
}
