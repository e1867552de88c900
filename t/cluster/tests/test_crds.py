"""The custom resources of crds/ served by the real API server: kubectl
applies them, lists them with their printer columns, accepts valid objects
(with the schema's defaults), refuses invalid ones with 422 naming the
field, and scales a WarmPool through the scale subresource."""

import json
import re

import pytest

from conftest import CRDS, TOP

KINDS = {"sandboxes": "Sandbox", "warmpools": "WarmPool",
         "warmpods": "WarmPod", "runtimeenvironments": "RuntimeEnvironment",
         "sandboxprofiles": "SandboxProfile"}


def sandbox(name, **spec):
    return {"apiVersion": "llmsafespace.dev/v1", "kind": "Sandbox",
            "metadata": {"name": name},
            "spec": dict({"runtime": "python:3.11"}, **spec)}


def warmpool(name, **spec):
    return {"apiVersion": "llmsafespace.dev/v1", "kind": "WarmPool",
            "metadata": {"name": name},
            "spec": dict({"runtime": "python:3.11", "minSize": 2,
                          "maxSize": 10}, **spec)}


def test_apply_crds_creates_every_kind(cluster, crds):
    for plural in KINDS:
        assert "%s.llmsafespace.dev created" % plural in crds
    out = cluster.kubectl("api-resources", "--api-group=llmsafespace.dev",
                          "-o", "wide").stdout
    for plural, kind in KINDS.items():
        (row,) = [r for r in out.splitlines() if r.startswith(plural + " ")]
        assert kind in row and "llmsafespace" in row
    # applying again changes nothing
    again = cluster.kubectl("apply", "-f", CRDS).stdout
    assert again.count("unchanged") == len(KINDS)


def test_get_wide_shows_printer_columns(cluster, ns):
    cluster.apply(sandbox("sb-one", securityLevel="high"), "-n", ns)
    cluster.apply(warmpool("py", minSize=3, maxSize=7), "-n", ns)
    out = cluster.kubectl("get", "sandboxes,warmpools", "-o", "wide",
                          "-n", ns).stdout
    lines = out.splitlines()
    heads = [l.split() for l in lines if l.startswith("NAME")]
    assert ["NAME", "RUNTIME", "LEVEL", "PHASE", "POD", "ENDPOINT",
            "AGE"] in heads
    assert ["NAME", "RUNTIME", "MIN", "MAX", "AVAILABLE", "ASSIGNED",
            "PENDING", "LEVEL", "AGE"] in heads
    (sb,) = [l.split() for l in lines if l.startswith("sandbox.")]
    assert sb[:3] == ["sandbox.llmsafespace.dev/sb-one", "python:3.11",
                      "high"]
    (wp,) = [l.split() for l in lines if l.startswith("warmpool.")]
    assert wp[:4] == ["warmpool.llmsafespace.dev/py", "python:3.11", "3",
                      "7"]
    # short names and the category reach the same objects
    names = cluster.kubectl("get", "sb,wp", "-n", ns, "-o", "name").stdout
    assert names.split() == ["sandbox.llmsafespace.dev/sb-one",
                             "warmpool.llmsafespace.dev/py"]
    cat = cluster.kubectl("get", "llmsafespace", "-n", ns, "-o",
                          "name").stdout
    assert set(cat.split()) == set(names.split())


def test_valid_objects_are_stored_with_defaults(cluster, ns):
    cluster.apply(sandbox("sb-def", resources={"cpu": "500m",
                                               "memory": "1Gi"},
                          networkAccess={"egress": [
                              {"domain": "pypi.org",
                               "ports": [{"port": 443}]}]}), "-n", ns)
    spec = cluster.json("get", "sandbox/sb-def", "-n", ns)["spec"]
    assert spec["securityLevel"] == "standard"
    assert spec["timeout"] == 1800
    assert spec["useWarmPool"] is True
    assert spec["networkAccess"]["egress"][0]["ports"] == \
        [{"port": 443, "protocol": "TCP"}]
    cluster.apply(warmpool("pool", ttl="30m",
                           autoScaling={"enabled": True}), "-n", ns)
    spec = cluster.json("get", "warmpool/pool", "-n", ns)["spec"]
    assert spec["ttl"] == "30m" and spec["securityLevel"] == "standard"
    assert spec["autoScaling"] == {"enabled": True, "targetUtilization": 80,
                                   "scaleDownDelay": 300}
    # the pool manifest of the local stack is a valid WarmPool too
    cluster.kubectl("apply", "-n", ns, "-f",
                    TOP + "/conf/warmpools/python.yaml")
    for kind, obj in [
            ("WarmPod", {"spec": {"poolRef": {"name": "pool"}}}),
            ("SandboxProfile", {"spec": {"securityLevel": "custom",
                                         "networkPolicies": [{
                                             "type": "egress",
                                             "rules": [{"cidr":
                                                        "192.0.2.0/24"}]}]}}),
    ]:
        obj.update({"apiVersion": "llmsafespace.dev/v1", "kind": kind,
                    "metadata": {"name": "x"}})
        cluster.apply(obj, "-n", ns)
    cluster.apply({"apiVersion": "llmsafespace.dev/v1",
                   "kind": "RuntimeEnvironment",
                   "metadata": {"name": "python-3-11-" + ns},
                   "spec": {"image": "llmsafespace/runtime-python:3.11",
                            "language": "python"}})
    cluster.kubectl("delete", "rte", "python-3-11-" + ns)


def refused(cluster, ns, obj, verb="create"):
    """Sends obj with kubectl at -v=6, which logs the response code; returns
    kubectl's error text after checking it was a 422."""
    p = cluster.kubectl(verb, "-f", "-", "-n", ns, "-v=6",
                        input=json.dumps(obj), check=False)
    assert p.returncode != 0, p.stdout
    assert "422 Unprocessable Entity" in p.stderr, p.stderr[-2000:]
    # the message, without the -v=6 log lines (klog's "I1206 ..." form)
    lines = [l for l in p.stderr.splitlines()
             if not re.match(r"[IWE]\d{4} ", l)]
    err = "\n".join(lines)
    assert re.search(r'The \w+ "[^"]+" is invalid: ', err), err
    return err


@pytest.mark.parametrize("obj,field,why", [
    (sandbox("bad", timeout=0), "spec.timeout", "greater than or equal to 1"),
    (sandbox("bad", securityLevel="low"), "spec.securityLevel",
     'Unsupported value: "low"'),
    (sandbox("bad", securityLevel="custom"), "spec.profileRef",
     "securityLevel custom needs a profileRef"),
    (sandbox("bad", runtime=""), "spec.runtime", "at least 1 chars"),
    (sandbox("bad", resources={"memory": "lots"}), "spec.resources.memory",
     "should match"),
    (sandbox("bad", networkAccess={"egress": [{"domain": "*.example.com"}]}),
     "spec.networkAccess.egress[0].domain", "should match"),
    (sandbox("bad", networkAccess={"egress": [
        {"domain": "pypi.org", "ports": [{"port": 70000}]}]}),
     "spec.networkAccess.egress[0].ports[0].port",
     "less than or equal to 65535"),
    (sandbox("bad", securityContext={"seccompProfile": {"type": "Localhost"}}),
     "spec.securityContext.seccompProfile.localhostProfile",
     "exactly when type is Localhost"),
    (warmpool("bad", minSize=5, maxSize=2), "spec.minSize",
     "minSize must not exceed maxSize"),
    (warmpool("bad", minSize=501, maxSize=600), "spec.minSize",
     "less than or equal to 500"),
    (warmpool("bad", ttl="-5m"), "spec.ttl", "should match"),
    (warmpool("bad", ttl=0), "spec.ttl", "greater than or equal to 1"),
    (warmpool("bad", preloadPackages=["numpy==2"]),
     "spec.preloadPackages[0]", "should match"),
    (warmpool("a" * 48), "metadata.name", "at most 47 characters"),
    ({"apiVersion": "llmsafespace.dev/v1", "kind": "WarmPool",
      "metadata": {"name": "bad"}, "spec": {"runtime": "python"}},
     "spec.minSize", "Required value"),
])
def test_invalid_object_is_refused_naming_the_field(cluster, ns, obj, field,
                                                    why):
    err = refused(cluster, ns, obj)
    assert field + ":" in err or field + " " in err, err
    assert why in err, err
    kind = obj["kind"].lower()
    gone = cluster.kubectl("get", kind, obj["metadata"]["name"], "-n", ns,
                           check=False)
    assert "NotFound" in gone.stderr


def test_immutable_fields_are_refused_on_update(cluster, ns):
    cluster.apply(sandbox("fixed"), "-n", ns)
    err = refused(cluster, ns, sandbox("fixed", runtime="nodejs:18"),
                  "apply")
    assert "spec.runtime" in err and "runtime is immutable" in err
    assert cluster.json("get", "sandbox/fixed", "-n", ns)["spec"][
        "runtime"] == "python:3.11"


def test_unknown_fields_are_refused_by_kubectl_and_pruned_by_the_server(
        cluster, ns):
    obj = sandbox("extra", bogus=1)
    p = cluster.kubectl("create", "-f", "-", "-n", ns,
                        input=json.dumps(obj), check=False)
    assert p.returncode != 0 and 'unknown field "spec.bogus"' in p.stderr
    cluster.kubectl("create", "-f", "-", "-n", ns, "--validate=false",
                    input=json.dumps(obj))
    assert "bogus" not in cluster.json("get", "sandbox/extra", "-n",
                                       ns)["spec"]


def test_status_is_a_subresource(cluster, ns):
    obj = sandbox("st")
    obj["status"] = {"phase": "Running"}
    cluster.apply(obj, "-n", ns)
    got = cluster.json("get", "sandbox/st", "-n", ns)
    assert "status" not in got or "phase" not in got["status"]
    gen = got["metadata"]["generation"]
    cluster.kubectl("patch", "sandbox/st", "-n", ns, "--subresource=status",
                    "--type=merge", "-p",
                    json.dumps({"status": {"phase": "Running",
                                           "podName": "sb-st"},
                                "spec": {"timeout": 5}}))
    got = cluster.json("get", "sandbox/st", "-n", ns)
    assert got["status"] == {"phase": "Running", "podName": "sb-st"}
    assert got["spec"]["timeout"] == 1800
    assert got["metadata"]["generation"] == gen
    # status is validated too
    p = cluster.kubectl("patch", "sandbox/st", "-n", ns,
                        "--subresource=status", "--type=merge", "-p",
                        '{"status": {"phase": "Sleeping"}}', check=False)
    assert p.returncode != 0 and "status.phase" in p.stderr


def test_scale_warm_pool(cluster, ns):
    cluster.apply(warmpool("scaled", minSize=1, maxSize=10), "-n", ns)
    out = cluster.kubectl("scale", "warmpool/scaled", "--replicas=4",
                          "-n", ns).stdout
    assert "warmpool.llmsafespace.dev/scaled scaled" in out
    assert cluster.json("get", "warmpool/scaled", "-n",
                        ns)["spec"]["minSize"] == 4
    cluster.kubectl("patch", "warmpool/scaled", "-n", ns,
                    "--subresource=status", "--type=merge", "-p",
                    json.dumps({"status": {
                        "availablePods": 3,
                        "selector": "llmsafespace.dev/pool=scaled"}}))
    scale = json.loads(cluster.kubectl(
        "get", "--raw", "/apis/llmsafespace.dev/v1/namespaces/%s/warmpools/"
        "scaled/scale" % ns).stdout)
    assert scale["kind"] == "Scale"
    assert scale["spec"] == {"replicas": 4}
    assert scale["status"] == {"replicas": 3,
                               "selector": "llmsafespace.dev/pool=scaled"}
    # past maxSize: the object's own rule refuses it
    p = cluster.kubectl("scale", "warmpool/scaled", "--replicas=11",
                        "-n", ns, check=False)
    assert p.returncode != 0 and "minSize must not exceed maxSize" in p.stderr
    assert cluster.json("get", "warmpool/scaled", "-n",
                        ns)["spec"]["minSize"] == 4


def test_api_semantics_the_controller_relies_on(cluster, ns):
    """What a home-made fake gets wrong: a write with a stale
    resourceVersion is 409, strategic merge patch is 415 on a custom
    resource (JSON merge patch works), generation moves with spec only."""
    cluster.apply(sandbox("sem"), "-n", ns)
    old = cluster.json("get", "sandbox/sem", "-n", ns)
    cluster.kubectl("patch", "sandbox/sem", "-n", ns, "--type=merge", "-p",
                    '{"spec": {"timeout": 60}}')
    old["spec"]["timeout"] = 120
    p = cluster.kubectl("replace", "-f", "-", "-n", ns, "-v=6",
                        input=json.dumps(old), check=False)
    assert p.returncode != 0 and "409 Conflict" in p.stderr
    assert "the object has been modified" in p.stderr
    got = cluster.json("get", "sandbox/sem", "-n", ns)
    assert got["spec"]["timeout"] == 60
    assert got["metadata"]["generation"] == old["metadata"]["generation"] + 1
    p = cluster.kubectl("patch", "sandbox/sem", "-n", ns, "--type=strategic",
                        "-p", '{"spec": {"timeout": 30}}', "-v=6",
                        check=False)
    assert p.returncode != 0 and "415 Unsupported Media Type" in p.stderr
