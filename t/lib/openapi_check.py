#!/usr/bin/python3
"""Checks one real response against an OpenAPI 3.0 document.

    openapi_check.py SPEC METHOD PATH STATUS BODYFILE
    openapi_check.py SPEC --schema NAME BODYFILE
    openapi_check.py SPEC --lint

The first form finds the operation of METHOD and PATH (the request path as
sent: the servers' base path and the query string are taken off, path
templates match one segment, or the rest of the path for the last one when
nothing else matches), then the response of STATUS (the code, its NXX
range, the document's "x-default-responses" for what the gateway answers on
any route, or "default"), and validates the JSON body in BODYFILE against
its schema.  The second form validates against components/schemas/NAME
(WebSocket messages, for one).  The third checks the document itself:
every $ref resolves, every schema is valid, every path template's
parameters are declared "in: path", operationIds are unique.

Exit status: 0 the body is valid (or the response documents a body that is
not JSON, which is not checked), 1 it is not (each problem on stderr, with
where in the body it is), 2 no operation or no response matches, or the
document itself is broken.

Debian's python3-yaml and python3-jsonschema only.  OpenAPI 3.0 schemas
are JSON Schema draft 4 plus "nullable", which is rewritten into draft 4
before validating; $ref resolves inside the document.
"""

import json
import re
import sys
import urllib.parse

import jsonschema
import yaml


METHODS = ("get", "put", "post", "delete", "options", "head", "patch",
           "trace")


class CannotCheck(Exception):
    """exit 2: nothing to check against"""


def load_spec(path):
    with open(path, encoding="utf-8") as f:
        # libyaml's loader when there is one: a test runs this many times
        spec = yaml.load(f, Loader=getattr(yaml, "CSafeLoader",
                                           yaml.SafeLoader))
    if not isinstance(spec, dict) or not str(spec.get("openapi", "")) \
            .startswith("3.0"):
        raise CannotCheck("%s: not an OpenAPI 3.0 document" % path)
    return spec


def draft4(node):
    """OpenAPI 3.0's "nullable: true" as draft 4 says it."""
    if isinstance(node, list):
        return [draft4(n) for n in node]
    if not isinstance(node, dict):
        return node

    out = {k: draft4(v) for k, v in node.items()}

    if out.pop("nullable", False) is True:
        if "type" in out:
            t = out["type"]
            out["type"] = (t if isinstance(t, list) else [t]) + ["null"]
            if "enum" in out and None not in out["enum"]:
                out["enum"] = out["enum"] + [None]
        else:
            out = {"anyOf": [out, {"type": "null"}]}

    return out


def base_path(spec):
    servers = spec.get("servers") or [{"url": "/"}]
    path = urllib.parse.urlsplit(servers[0].get("url", "/")).path
    return path.rstrip("/")


def template_regex(template, greedy_last):
    parts = template.strip("/").split("/")
    pattern = ""
    literal = 0
    params = [i for i, p in enumerate(parts) if re.fullmatch(r"\{[^}]+\}", p)]
    for i, part in enumerate(parts):
        if i in params:
            last = greedy_last and params and i == params[-1]
            pattern += "/(.+)" if last else "/([^/]+)"
        else:
            pattern += "/" + re.escape(part)
            literal += 1
    return re.compile("^" + pattern + "/?$"), literal


def find_path(spec, path):
    """the path template PATH matches: most literal segments first"""
    paths = spec.get("paths") or {}
    for greedy in (False, True):
        found = []
        for template in paths:
            regex, literal = template_regex(template, greedy)
            if regex.match(path):
                found.append((literal, template))
        if found:
            found.sort(reverse=True)
            return found[0][1]
    return None


def resolve(spec, node):
    seen = 0
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        if not ref.startswith("#/") or seen > 32:
            raise CannotCheck("unresolvable $ref %r" % ref)
        node = spec
        for key in ref[2:].split("/"):
            key = key.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, dict) or key not in node:
                raise CannotCheck("unresolvable $ref %r" % ref)
            node = node[key]
        seen += 1
    return node


def find_response(spec, method, path, status):
    """(what was matched, the response object)"""
    base = base_path(spec)
    path = urllib.parse.urlsplit(path).path
    if base and (path == base or path.startswith(base + "/")):
        path = path[len(base):] or "/"

    defaults = spec.get("x-default-responses") or {}
    template = find_path(spec, path)
    op = None

    if template is not None:
        item = spec["paths"][template]
        op = item.get(method.lower())

    where = "%s %s" % (method.upper(), template or path)

    if op is not None:
        responses = op.get("responses") or {}
        for key in (str(status), "%dXX" % (status // 100)):
            if key in responses:
                return where + " " + key, resolve(spec, responses[key])

    if str(status) in defaults:
        return ("%s %d (x-default-responses)" % (where, status),
                resolve(spec, defaults[str(status)]))

    if op is not None and "default" in (op.get("responses") or {}):
        return where + " default", resolve(spec, op["responses"]["default"])

    if template is None:
        raise CannotCheck("no path of the document matches %s" % path)
    if op is None:
        raise CannotCheck("%s has no %s operation"
                          % (template, method.upper()))
    raise CannotCheck("%s documents no response %d" % (where, status))


def validator(spec, schema):
    converted = draft4(spec)
    resolver = jsonschema.RefResolver("", converted)
    schema = draft4(schema)
    named = (converted.get("components") or {}).get("schemas") or {}
    for name, s in [("(the response's)", schema)] + sorted(named.items()):
        try:
            jsonschema.Draft4Validator.check_schema(s)
        except jsonschema.SchemaError as e:
            raise CannotCheck("schema %s of the document is invalid: %s"
                              % (name, e.message))
    return jsonschema.Draft4Validator(schema, resolver=resolver)


def where_in(error):
    path = "$"
    for p in error.absolute_path:
        path += "[%d]" % p if isinstance(p, int) else "." + str(p)
    return path


def check_body(spec, schema, body, what):
    try:
        value = json.loads(body)
    except ValueError as e:
        print("%s: the body is not JSON: %s" % (what, e), file=sys.stderr)
        return 1

    errors = sorted(validator(spec, schema).iter_errors(value),
                    key=lambda e: list(map(str, e.absolute_path)))
    if not errors:
        return 0

    for e in errors:
        e = explain(e)
        print("%s: at %s: %s" % (what, where_in(e), e.message),
              file=sys.stderr)
    return 1


def explain(error):
    """
    A oneOf/anyOf failure says more through one branch: the one whose
    "type" property (the messages' discriminator) matched, else the best.
    """
    if error.validator not in ("oneOf", "anyOf") or not error.context:
        return error

    branches = {}
    for e in error.context:
        branches.setdefault(e.schema_path[0], []).append(e)

    typed = [errs for errs in branches.values()
             if not any(list(e.relative_path) == ["type"] for e in errs)]
    if not typed and len(branches) > 1:
        return error        # no branch of this "type": say so, whole

    errs = typed[0] if len(typed) == 1 else error.context

    return explain(jsonschema.exceptions.best_match(errs))


def check_response(spec, method, path, status, body):
    what, response = find_response(spec, method, path, status)
    content = response.get("content") or {}

    if not content:
        if body.strip():
            print("%s: a body where the document has none" % what,
                  file=sys.stderr)
            return 1
        return 0

    json_types = [t for t in content if t.split(";")[0].strip()
                  in ("application/json",) or t.endswith("+json")]
    if not json_types:
        # a download: bytes, nothing to check
        return 0

    schema = content[json_types[0]].get("schema")
    if schema is None:
        return 0

    return check_body(spec, schema, body, what)


def lint(spec):
    """the document's own mistakes, one line each"""
    problems = []

    def refs(node, where):
        if isinstance(node, dict):
            if "$ref" in node:
                try:
                    resolve(spec, node)
                except CannotCheck as e:
                    problems.append("%s: %s" % (where, e))
            for k, v in node.items():
                refs(v, where + "/" + str(k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                refs(v, "%s/%d" % (where, i))

    refs(spec, "#")

    try:
        validator(spec, {})
    except CannotCheck as e:
        problems.append(str(e))

    ids = {}
    for template, item in (spec.get("paths") or {}).items():
        wanted = set(re.findall(r"\{([^}]+)\}", template))
        common = item.get("parameters") or []
        for method in METHODS:
            op = item.get(method)
            if op is None:
                continue
            where = "%s %s" % (method.upper(), template)
            declared = set()
            for p in common + (op.get("parameters") or []):
                p = resolve(spec, p)
                if p.get("in") == "path":
                    declared.add(p.get("name"))
            for name in sorted(wanted ^ declared):
                problems.append("%s: path parameter %s %s" % (
                    where, name, "undeclared" if name in wanted
                    else "not in the path"))
            oid = op.get("operationId")
            if oid in ids:
                problems.append("%s: operationId %s also on %s"
                                % (where, oid, ids[oid]))
            ids[oid] = where
            if not op.get("responses"):
                problems.append("%s: no responses" % where)

    for p in problems:
        print("openapi_check: %s" % p, file=sys.stderr)

    return 1 if problems else 0


def main(argv):
    try:
        if len(argv) == 3 and argv[2] == "--lint":
            return lint(load_spec(argv[1]))

        if len(argv) == 5 and argv[2] == "--schema":
            spec = load_spec(argv[1])
            name = argv[3]
            schemas = (spec.get("components") or {}).get("schemas") or {}
            if name not in schemas:
                raise CannotCheck("no schema %s in the document" % name)
            with open(argv[4], encoding="utf-8", errors="replace") as f:
                body = f.read()
            return check_body(spec, {"$ref": "#/components/schemas/" + name},
                              body, "schema " + name)

        if len(argv) != 6 or not argv[4].isdigit():
            print(__doc__.split("\n\n")[1], file=sys.stderr)
            return 2

        spec = load_spec(argv[1])
        with open(argv[5], encoding="utf-8", errors="replace") as f:
            body = f.read()
        return check_response(spec, argv[2], argv[3], int(argv[4]), body)

    except CannotCheck as e:
        print("openapi_check: %s" % e, file=sys.stderr)
        return 2
    except (OSError, yaml.YAMLError) as e:
        print("openapi_check: %s" % e, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
