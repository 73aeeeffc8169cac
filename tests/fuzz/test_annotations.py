"""Every annotation spiderpool reads, generated and put where users put it: on pods (read by the
agent at ADD), on namespaces (default pools, read by the agent) and on applications' pod templates
(read by the controller's auto-pool reconciler). The agent answers with an allocation or an error
naming the annotation; the controller with an Event naming it; neither fails on a bug."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from spiderpool.api import annotations as ann
from spiderpool_lab import procs
from spiderpool_lab.cluster import Lab
from tests.fuzz import strategies as fz
from tests.fuzz.conftest import LAB, NODE, NS, POOL, FuzzAgent, assert_cni_error, count
from tests.helpers import get_json
from tests.stack import Controllers

_POOLISH = st.just(json.dumps({"ipv4": [POOL]}))
#: pod annotations, with the ippool one mostly naming the fuzz pool so allocations get far
POD = fz.annotations(
    {
        **fz.POD_ANNOTATIONS,
        ann.IPPOOL: st.one_of(_POOLISH, fz.POD_ANNOTATIONS[ann.IPPOOL]),
        ann.ROUTES: st.one_of(st.just('[{"dst": "10.9.0.0/16", "gw": "172.18.0.1"}]'), fz.POD_ANNOTATIONS[ann.ROUTES]),
    }
)


def _allocate(agent: FuzzAgent, pod: dict[str, Any], ifname: str = "eth0") -> tuple[int, Any]:
    meta = pod["metadata"]
    body = {
        "containerID": f"fz-{meta['uid'][:12]}",
        "ifName": ifname,
        "netNamespace": "/var/run/netns/fuzz-absent",
        "podNamespace": meta["namespace"],
        "podName": meta["name"],
        "podUID": meta["uid"],
        "defaultIPv4IPPool": [POOL],
    }
    return agent.request("POST", "/v1/ipam/ip", body)


def _release(agent: FuzzAgent, pod: dict[str, Any], ifname: str = "eth0") -> None:
    meta = pod["metadata"]
    body = {"containerID": f"fz-{meta['uid'][:12]}", "ifName": ifname, "podNamespace": meta["namespace"]}
    agent.request("DELETE", "/v1/ipam/ip", {**body, "podName": meta["name"], "podUID": meta["uid"]})


def _create_pod(agent: FuzzAgent, name: str, annotations: dict[str, str]) -> dict[str, Any] | None:
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "annotations": annotations},
        "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "registry.invalid/app:1"}]},
    }
    code, created = agent.lab.api("POST", f"/api/v1/namespaces/{NS}/pods", body)
    if code == 422:  # the apiserver's own limits (annotation size): nothing of ours is asked
        return None
    assert code == 201, (code, created)
    return dict(created)


def _delete(lab: Lab, pod: dict[str, Any]) -> None:
    """Gone at once (no kubelet runs fuzz-node's pods to confirm a graceful end)."""
    body = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0}
    lab.api("DELETE", f"/api/v1/namespaces/{NS}/pods/{pod['metadata']['name']}", body)


def _judge(status: int, reply: Any, keys: set[str]) -> bool:
    """True when the ADD succeeded; else the error must name an annotation or what it pointed at."""
    if status == 200:
        return True
    assert status in (400, 404, 409, 503), (status, reply)
    assert_cni_error(reply)
    msg = str(reply.get("msg"))
    named = any(f"annotation {k}" in msg for k in keys)
    # a well-formed annotation may point at pools or subnets that are not there, or not for this pod
    pointed = any(w in msg for w in ("pool", "Pool", "subnet", "Subnet", "interface", "route", "gateway"))
    assert named or pointed, reply
    return False


_serial = iter(range(10**6))


@settings(LAB, max_examples=150)
@given(POD)
def test_pod_annotations_allocate_or_name_the_annotation(fuzz_agent: FuzzAgent, annotations: dict[str, str]) -> None:
    count("pod annotations (through the agent)")
    pod = _create_pod(fuzz_agent, f"fz-ann-{next(_serial)}", annotations)
    if pod is None:
        return
    try:
        status, reply = _allocate(fuzz_agent, pod)
        if _judge(status, reply, set(annotations)):
            fuzz_agent.holders.add((pod["metadata"]["uid"], "eth0"))
    finally:
        _release(fuzz_agent, pod)
        _delete(fuzz_agent.lab, pod)


@settings(LAB, max_examples=50)
@given(fz.annotations(fz.NAMESPACE_ANNOTATIONS))
def test_namespace_annotations_allocate_or_name_the_annotation(
    fuzz_agent: FuzzAgent, annotations: dict[str, str]
) -> None:
    """A pod with no annotation of its own in a namespace with generated default pools (the agent's
    namespace cache may or may not have seen the change yet: either answer must be a clean one)."""
    count("namespace annotations (through the agent)")
    lab = fuzz_agent.lab
    current = get_json(lab, "namespace", NS)["metadata"].get("annotations") or {}
    patch = {k: annotations.get(k) for k in fz.NAMESPACE_ANNOTATIONS if k in annotations or k in current}
    lab.kubectl("patch", "namespace", NS, "--type=merge", "-p", json.dumps({"metadata": {"annotations": patch}}))
    pod = _create_pod(fuzz_agent, f"fz-ns-{next(_serial)}", {})
    assert pod is not None
    try:
        status, reply = _allocate(fuzz_agent, pod)
        if _judge(status, reply, set(fz.NAMESPACE_ANNOTATIONS)):
            fuzz_agent.holders.add((pod["metadata"]["uid"], "eth0"))
    finally:
        _release(fuzz_agent, pod)
        _delete(lab, pod)


def _reconcile_errors(controllers: Controllers) -> int:
    total = 0
    for name in controllers.names():
        for line in controllers.scrape(name).splitlines():
            if line.startswith("spiderpool_controller_reconcile_errors_total{") and 'queue="apps"' in line:
                total += int(float(line.rsplit(" ", 1)[1]))
    return total


def test_application_annotations_make_pools_or_events_naming_them(
    fuzz_agent: FuzzAgent, controllers: Controllers
) -> None:
    """40 Deployments (no replicas: no pod is made) whose pod templates carry generated auto-pool
    annotations: each malformed one gets an InvalidAnnotation Event naming the annotation, and the
    reconciler raises on none of them."""
    lab = fuzz_agent.lab
    restarts = {p["metadata"]["name"]: p["status"]["containerStatuses"][0]["restartCount"] for p in controllers.pods()}
    errors_before = _reconcile_errors(controllers)
    generated: list[dict[str, str]] = []

    @settings(LAB, max_examples=40)
    @given(fz.annotations(fz.APP_ANNOTATIONS))
    def collect(values: dict[str, str]) -> None:
        generated.append(values)

    collect()
    bad: dict[str, str] = {}
    for i, values in enumerate(generated):
        count("application annotations (through the controller)")
        name = f"fz-app-{i}"
        deployment = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": NS},
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}, "annotations": values},
                    "spec": {"containers": [{"name": "c", "image": "registry.invalid/app:1"}]},
                },
            },
        }
        code, answer = lab.api("POST", f"/apis/apps/v1/namespaces/{NS}/deployments", deployment)
        if code == 422:
            continue
        assert code == 201, (code, answer)
        try:
            ann.parse_pod(values)
            if ann.IP_NUMBER in values:
                ann.parse_ip_number(values[ann.IP_NUMBER])
            if ann.RECLAIM in values:
                ann.parse_reclaim(values[ann.RECLAIM])
        except ann.AnnotationError as err:
            bad[name] = err.key

    def events_name_them() -> bool:
        events = get_json(lab, "events", "-n", NS)["items"]
        said = {e["involvedObject"]["name"]: e["message"] for e in events if e.get("reason") == "InvalidAnnotation"}
        return all(name in said and key in said[name] for name, key in bad.items())

    try:
        procs.wait_for(events_name_them, timeout=60, what=f"InvalidAnnotation events for {sorted(bad)}")
        assert _reconcile_errors(controllers) == errors_before
        now = {p["metadata"]["name"]: p["status"]["containerStatuses"][0]["restartCount"] for p in controllers.pods()}
        assert now == restarts, (restarts, now)
        print(f"application annotations: {len(generated)} Deployments, {len(bad)} refused with an Event")
    finally:
        lab.kubectl("delete", "deployments", "--all", "-n", NS, "--wait=true", check=False)
