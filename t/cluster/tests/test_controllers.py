"""What kube-controller-manager and kube-scheduler do, seen through
kubectl: a new namespace gets its default ServiceAccount (and a token can
be requested for it) and the cluster CA ConfigMap; deleting a namespace
removes the custom resources in it; an owner's deletion garbage-collects
its children, in the background and in the foreground; a Pod is
considered by the scheduler (and found no node)."""

import json

from conftest import poll


def exists(cluster, *args):
    return cluster.kubectl("get", *args, check=False).returncode == 0


def test_new_namespace_gets_default_service_account(cluster, ns):
    poll("default ServiceAccount in " + ns,
         lambda: exists(cluster, "serviceaccount/default", "-n", ns), 30)
    poll("kube-root-ca.crt in " + ns,
         lambda: exists(cluster, "configmap/kube-root-ca.crt", "-n", ns), 30)
    token = cluster.kubectl("create", "token", "default", "-n", ns).stdout
    assert token.count(".") == 2  # a signed JWT


def test_namespace_deletion_removes_its_objects(cluster, crds):
    cluster.kubectl("create", "namespace", "doomed")
    for kind, spec in [("Sandbox", {"runtime": "python:3.11"}),
                       ("WarmPool", {"runtime": "python:3.11",
                                     "minSize": 1})]:
        cluster.apply({"apiVersion": "llmsafespace.dev/v1", "kind": kind,
                       "metadata": {"name": "x", "namespace": "doomed"},
                       "spec": spec})
    cluster.kubectl("create", "configmap", "c", "-n", "doomed")
    cluster.kubectl("delete", "namespace", "doomed", "--timeout=90s",
                    timeout=100)
    assert not exists(cluster, "namespace", "doomed")
    out = cluster.kubectl("get", "sandboxes,warmpools,configmaps", "-A",
                          "-o", "json").stdout
    assert not [o for o in json.loads(out)["items"]
                if o["metadata"]["namespace"] == "doomed"]


def child_of(cluster, ns, owner_kind, owner, name):
    """A ConfigMap owned by the object owner (its uid)."""
    uid = cluster.json("get", owner_kind + "/" + owner, "-n",
                       ns)["metadata"]["uid"]
    cluster.apply({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": name, "ownerReferences": [{
                       "apiVersion": "llmsafespace.dev/v1",
                       "kind": owner_kind, "name": owner, "uid": uid,
                       "blockOwnerDeletion": True}]},
                   "data": {"k": "v"}}, "-n", ns)


def test_garbage_collection_deletes_children_of_a_deleted_owner(cluster, ns):
    cluster.apply({"apiVersion": "llmsafespace.dev/v1", "kind": "Sandbox",
                   "metadata": {"name": "owner"},
                   "spec": {"runtime": "python:3.11"}}, "-n", ns)
    child_of(cluster, ns, "Sandbox", "owner", "child")
    cluster.kubectl("create", "configmap", "bystander", "-n", ns)
    cluster.kubectl("delete", "sandbox/owner", "-n", ns)
    poll("garbage collection of the child",
         lambda: not exists(cluster, "configmap/child", "-n", ns), 60)
    assert exists(cluster, "configmap/bystander", "-n", ns)


def test_foreground_deletion_waits_for_children(cluster, ns):
    cluster.apply({"apiVersion": "llmsafespace.dev/v1", "kind": "WarmPool",
                   "metadata": {"name": "owner"},
                   "spec": {"runtime": "python:3.11", "minSize": 1}},
                  "-n", ns)
    child_of(cluster, ns, "WarmPool", "owner", "child")
    # the child holds a finalizer: the owner stays while the child does
    cluster.kubectl("patch", "configmap/child", "-n", ns, "--type=merge",
                    "-p", '{"metadata": {"finalizers": ["test/hold"]}}')
    cluster.kubectl("delete", "warmpool/owner", "-n", ns,
                    "--cascade=foreground", "--wait=false")
    pool = poll("the owner marked for foreground deletion", lambda: (
        lambda o: o if "deletionTimestamp" in o["metadata"] else None)(
        cluster.json("get", "warmpool/owner", "-n", ns)), 30)
    assert "foregroundDeletion" in pool["metadata"]["finalizers"]
    poll("the child marked deleted", lambda: "deletionTimestamp" in cluster.json(
        "get", "configmap/child", "-n", ns)["metadata"], 60)
    assert exists(cluster, "warmpool/owner", "-n", ns)
    cluster.kubectl("patch", "configmap/child", "-n", ns, "--type=merge",
                    "-p", '{"metadata": {"finalizers": null}}')
    poll("the owner gone after its child",
         lambda: not exists(cluster, "warmpool/owner", "-n", ns), 60)


def test_scheduler_considers_a_pod(cluster, ns):
    poll("default ServiceAccount in " + ns,
         lambda: exists(cluster, "serviceaccount/default", "-n", ns), 30)
    cluster.kubectl("run", "p", "-n", ns, "--image=llmsafespace/none",
                    "--restart=Never")
    jp = '{.status.conditions[?(@.type=="PodScheduled")].reason}'
    poll("the scheduler's verdict", lambda: cluster.kubectl(
        "get", "pod/p", "-n", ns, "-o", "jsonpath=" + jp).stdout ==
        "Unschedulable", 60)
    events = cluster.kubectl("get", "events", "-n", ns,
                             "--field-selector=involvedObject.name=p").stdout
    assert "FailedScheduling" in events
    assert "no nodes available to schedule pods" in events
