"""The custom resource definitions in crds/: they parse, are structural
schemas of group llmsafespace.dev v1 with status subresources and printer
columns, carry the fields of the API (design api.md), and the warm pool
manifests in conf/warmpools validate against the WarmPool schema."""

import glob
import os
import re

import pytest
import yaml

from conftest import TOP

CRDS = os.path.join(TOP, "crds")
KINDS = {"Sandbox": "Namespaced", "WarmPool": "Namespaced",
         "WarmPod": "Namespaced", "RuntimeEnvironment": "Cluster",
         "SandboxProfile": "Namespaced"}


def load():
    out = {}
    for path in sorted(glob.glob(os.path.join(CRDS, "*.yaml"))):
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                out[doc["spec"]["names"]["kind"]] = doc
    return out


def schema(kind):
    v = load()[kind]["spec"]["versions"][0]
    return v["schema"]["openAPIV3Schema"]


def structural(node, path):
    """The structural-schema rules a v1 CRD must follow (the subset that
    applies to what we write): every node typed, properties only on
    objects, items on every array."""
    if node.get("x-kubernetes-int-or-string"):
        assert "type" not in node, path
        assert [a["type"] for a in node["anyOf"]] == ["integer", "string"]
        return
    assert "type" in node, path
    if node["type"] == "object":
        for k, v in node.get("properties", {}).items():
            structural(v, path + "." + k)
        for r in node.get("required", []):
            assert r in node.get("properties", {}), (path, r)
    else:
        assert "properties" not in node, path
    if node["type"] == "array":
        structural(node["items"], path + "[]")


def resolve(root, path):
    """The schema node at a JSONPath such as .spec.minSize."""
    node = root
    for key in path.lstrip(".").split("."):
        node = node["properties"][key]
    return node


def validate(node, value, path="$"):
    """A small validator for the manifests: type, enum, bounds, pattern,
    required (an int-or-string's bounds and pattern apply to the integer
    and the string respectively, as on the API server)."""
    if node.get("x-kubernetes-int-or-string"):
        assert isinstance(value, (int, str)), path
        if isinstance(value, str) and "pattern" in node:
            assert re.search(node["pattern"], value), (path, value)
        if isinstance(value, int):
            assert node.get("minimum", value) <= value, path
            assert value <= node.get("maximum", value), path
        return
    t = node["type"]
    py = {"object": dict, "array": list, "string": str, "boolean": bool,
          "integer": int}[t]
    assert isinstance(value, py), (path, value)
    if "enum" in node:
        assert value in node["enum"], path
    if "minimum" in node:
        assert value >= node["minimum"], path
    if "maximum" in node:
        assert value <= node["maximum"], path
    if "pattern" in node:
        assert re.search(node["pattern"], value), (path, value)
    if t == "object":
        for r in node.get("required", []):
            assert r in value, (path, r)
        props = node.get("properties")
        if props is not None:
            for k, v in value.items():
                assert k in props, (path, "unknown field", k)
                validate(props[k], v, path + "." + k)
    if t == "array":
        for i, v in enumerate(value):
            validate(node["items"], v, "%s[%d]" % (path, i))


def test_every_kind_is_defined_once_with_its_scope():
    crds = load()
    assert set(crds) == set(KINDS)
    for kind, doc in crds.items():
        assert doc["apiVersion"] == "apiextensions.k8s.io/v1"
        assert doc["kind"] == "CustomResourceDefinition"
        spec = doc["spec"]
        assert spec["group"] == "llmsafespace.dev"
        assert spec["scope"] == KINDS[kind]
        assert doc["metadata"]["name"] == "%s.llmsafespace.dev" % \
            spec["names"]["plural"]
        (v,) = spec["versions"]
        assert v["name"] == "v1" and v["served"] and v["storage"]
        assert v["subresources"]["status"] == {}
        assert ("scale" in v["subresources"]) == (kind == "WarmPool")
        assert "llmsafespace" in spec["names"]["categories"]
        assert spec["names"]["shortNames"]
        cols = v["additionalPrinterColumns"]
        assert cols and all(c["jsonPath"].startswith(".") for c in cols)
        root = v["schema"]["openAPIV3Schema"]
        structural(root, kind)
        assert {"spec", "status"} <= set(root["properties"])


@pytest.mark.parametrize("kind,fields", [
    ("Sandbox", ["runtime", "resources", "timeout", "user", "securityLevel",
                 "securityContext", "useWarmPool", "networkAccess",
                 "filesystem", "storage", "profileRef"]),
    ("WarmPool", ["runtime", "minSize", "maxSize", "securityLevel", "ttl",
                  "resources", "preloadPackages", "preloadScripts",
                  "autoScaling"]),
    ("WarmPod", ["poolRef"]),
])
def test_spec_fields_of_the_api(kind, fields):
    assert set(fields) <= set(schema(kind)["properties"]["spec"]
                              ["properties"])


@pytest.mark.parametrize("kind,fields", [
    ("Sandbox", ["phase", "conditions", "podName", "podNamespace",
                 "startTime", "endpoint", "warmPodRef"]),
    ("WarmPool", ["availablePods", "assignedPods", "pendingPods",
                  "lastScaleTime", "conditions"]),
    ("WarmPod", ["phase", "podName", "assignedTo", "assignedAt"]),
])
def test_status_fields_of_the_api(kind, fields):
    assert set(fields) <= set(schema(kind)["properties"]["status"]
                              ["properties"])


def test_phases_match_the_api():
    st = schema("Sandbox")["properties"]["status"]["properties"]
    assert st["phase"]["enum"] == ["Pending", "Creating", "Running",
                                   "Terminating", "Terminated", "Failed"]
    wp = schema("WarmPod")["properties"]["status"]["properties"]
    assert wp["phase"]["enum"] == ["Pending", "Ready", "Assigned",
                                   "Terminating"]


def test_pool_manifests_are_valid_warm_pools():
    spec = schema("WarmPool")["properties"]["spec"]
    paths = glob.glob(os.path.join(TOP, "conf", "warmpools", "*.yaml"))
    assert paths
    for path in paths:
        with open(path) as f:
            doc = yaml.safe_load(f)
        assert doc["apiVersion"] == "llmsafespace.dev/v1"
        assert doc["kind"] == "WarmPool"
        validate(spec, doc["spec"])
    with pytest.raises(AssertionError):
        validate(spec, {"runtime": "python", "minSize": -1})
    with pytest.raises(AssertionError):
        validate(spec, {"runtime": "python", "minSize": 1, "bogus": 1})
    for bad in ({"ttl": "-5m"}, {"ttl": 0}, {"resources": {"cpu": "1Gi"}},
                {"preloadPackages": ["numpy==1.0"]}):
        with pytest.raises(AssertionError):
            validate(spec, dict({"runtime": "python", "minSize": 1}, **bad))


def test_warm_pool_scale_subresource_points_at_its_fields():
    (v,) = load()["WarmPool"]["spec"]["versions"]
    scale, root = v["subresources"]["scale"], v["schema"]["openAPIV3Schema"]
    assert scale["specReplicasPath"] == ".spec.minSize"
    assert resolve(root, scale["specReplicasPath"])["type"] == "integer"
    assert resolve(root, scale["statusReplicasPath"])["type"] == "integer"
    assert resolve(root, scale["labelSelectorPath"])["type"] == "string"


def test_printer_columns_name_schema_fields():
    for kind, doc in load().items():
        (v,) = doc["spec"]["versions"]
        root = v["schema"]["openAPIV3Schema"]
        for col in v["additionalPrinterColumns"]:
            if col["jsonPath"].startswith(".metadata."):
                continue
            assert resolve(root, col["jsonPath"]), (kind, col)
