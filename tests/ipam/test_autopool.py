"""The walkthrough's headline: a SpiderSubnet, and a Deployment that names it, get an auto-created pool
sized to the Deployment, which grows, shrinks and goes with it."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from spiderpool_lab import demo, procs
from spiderpool_lab.cluster import Lab
from tests.helpers import delete_walkthrough_subnet, event_messages, get_json, pods, wait_running
from tests.ipam.conftest import assert_consistent, wait_no_records
from tests.stack import Agents, helm_install

NS = "walk"
NS2 = "apps"
APP = "custom-ippool-deploy"
FIRST, LAST = ipaddress.ip_address("172.18.30.131"), ipaddress.ip_address("172.18.30.140")

# The walkthrough's SpiderSubnet and Deployment, verbatim (applied in namespace "walk"; the lab pulls no image).
SUBNET, DEPLOYMENT = demo.SUBNET, demo.DEPLOYMENT


def auto_pools(lab: Lab) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = get_json(
        lab, "spiderippool", "-l", f"ipam.spidernet.io/owner-application-name={APP}"
    )["items"]
    return items


def pool_size(lab: Lab) -> int:
    found = auto_pools(lab)
    if len(found) != 1:
        return -1
    total = 0
    for r in found[0]["spec"].get("ips") or []:
        a, _, b = r.partition("-")
        total += int(ipaddress.ip_address(b or a)) - int(ipaddress.ip_address(a)) + 1
    return total


def events(lab: Lab, reason: str) -> list[str]:
    items = get_json(lab, "events", "-n", NS, "--field-selector", f"involvedObject.name={APP}")["items"]
    return [e["message"] for e in items if e.get("reason") == reason]


def scale(lab: Lab, replicas: int, pool_ips: int) -> list[dict[str, Any]]:
    lab.kubectl("scale", "-n", NS, f"deployment/{APP}", f"--replicas={replicas}")
    procs.wait_for(
        lambda: pool_size(lab) == pool_ips,
        timeout=60,
        what=f"the auto-pool to hold {pool_ips} IPs",
        detail=lambda: json.dumps([p["spec"] for p in auto_pools(lab)]),
    )
    return wait_running(lab, NS, f"app={APP}", replicas, timeout=180)


def test_walkthrough_subnet_gives_the_deployment_an_auto_pool(stack: Agents) -> None:
    lab = stack.lab
    lab.kubectl("apply", "-f", "-", input_text=SUBNET)
    lab.kubectl("create", "namespace", NS)
    try:
        lab.kubectl("apply", "-n", NS, "-f", "-", input_text=DEPLOYMENT)
        running = wait_running(lab, NS, f"app={APP}", 2, timeout=180)
        for pod in running:
            assert FIRST <= ipaddress.ip_address(pod["status"]["podIP"]) <= LAST
        (pool,) = auto_pools(lab)
        uid = get_json(lab, "deployment", "-n", NS, APP)["metadata"]["uid"]
        assert pool["metadata"]["name"] == f"auto4-{APP}-eth0-{uid.split('-')[-1][:5]}"
        assert pool_size(lab) == 3  # 2 replicas + 1
        assert pool["spec"]["gateway"] == "172.18.0.1"
        assert pool["metadata"]["labels"]["ipam.spidernet.io/owner-spider-subnet"] == "subnet-test"
        # the annotation names a subnet where a pool is expected: served, and explained once
        procs.wait_for(lambda: events(lab, "SubnetInIPPoolAnnotation"), timeout=30, what="the hint event")
        assert "ipam.spidernet.io/subnet" in events(lab, "SubnetInIPPoolAnnotation")[0]

        scale(lab, 5, 6)
        assert_consistent(lab)
        scale(lab, 1, 2)
        assert_consistent(lab)
        # 12 replicas want 13 IPs; the subnet has 10: ten pods run, two wait, and the Deployment says why
        lab.kubectl("scale", "-n", NS, f"deployment/{APP}", "--replicas=12")
        procs.wait_for(lambda: pool_size(lab) == 10, timeout=60, what="the auto-pool to take the whole subnet")

        def ten_running_two_waiting() -> bool:
            items = pods(lab, NS, f"app={APP}")
            with_ip = [p for p in items if p["status"].get("podIP")]
            return len(items) == 12 and len(with_ip) == 10

        procs.wait_for(ten_running_two_waiting, timeout=240, what="10 pods running and 2 waiting for an IP")
        waiting = [p for p in pods(lab, NS, f"app={APP}") if not p["status"].get("podIP")]
        assert all(p["status"]["phase"] == "Pending" for p in waiting)
        exhausted = events(lab, "SubnetExhausted")
        assert exhausted, "the Deployment carries a subnet-exhausted event"
        assert "SpiderSubnet subnet-test is exhausted" in exhausted[-1]
        subnet = get_json(lab, "spidersubnet", "subnet-test")["status"]
        assert (subnet["allocatedIPCount"], subnet["totalIPCount"]) == (10, 10)

        lab.kubectl("delete", "deployment", "-n", NS, APP, "--wait=true")
        procs.wait_for(lambda: not auto_pools(lab), timeout=120, what="the auto-pool to go with the Deployment")
        procs.wait_for(
            lambda: get_json(lab, "spidersubnet", "subnet-test")["status"].get("allocatedIPCount") == 0,
            timeout=60,
            what="every IP back in the subnet",
        )
    finally:
        lab.kubectl("delete", "namespace", NS, "--wait=false")
        wait_no_records(lab, NS, timeout=120)
        delete_walkthrough_subnet(lab)


def _app(kind: str, name: str, annotations: dict[str, str]) -> str:
    template = {
        "metadata": {"labels": {"app": name}, "annotations": annotations},
        "spec": {"containers": [{"name": "c", "image": "registry.invalid/app:1"}]},
    }
    spec: dict[str, Any] = {"selector": {"matchLabels": {"app": name}}, "template": template}
    if kind == "Deployment":
        spec["replicas"] = 1
    meta = {"name": name, "namespace": NS2}
    return json.dumps({"apiVersion": "apps/v1", "kind": kind, "metadata": meta, "spec": spec})


def _pools_of(lab: Lab, name: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = get_json(
        lab, "spiderippool", "-l", f"ipam.spidernet.io/owner-application-name={name}"
    )["items"]
    return items


def test_kept_pool_is_adopted_and_daemonsets_get_one_ip_per_node(stack: Agents) -> None:
    lab = stack.lab
    lab.kubectl("apply", "-f", "-", input_text=SUBNET)
    lab.kubectl("create", "namespace", NS2)
    subnet = {"ipam.spidernet.io/subnet": json.dumps({"ipv4": ["subnet-test"]})}
    try:
        # reclaim "false": the pool outlives its Deployment and comes back to the next one of that name
        keep = {**subnet, "ipam.spidernet.io/ippool-reclaim": "false", "ipam.spidernet.io/ippool-ip-number": "2"}
        lab.kubectl("apply", "-f", "-", input_text=_app("Deployment", "keeper", keep))
        (first,) = wait_running(lab, NS2, "app=keeper", 1)
        (pool,) = _pools_of(lab, "keeper")
        lab.kubectl("delete", "deployment", "-n", NS2, "keeper", "--wait=true")
        wait_no_records(lab, NS2, timeout=60)
        (kept,) = _pools_of(lab, "keeper")
        assert kept["metadata"]["uid"] == pool["metadata"]["uid"]
        lab.kubectl("apply", "-f", "-", input_text=_app("Deployment", "keeper", keep))
        (again,) = wait_running(lab, NS2, "app=keeper", 1)
        new_uid = get_json(lab, "deployment", "-n", NS2, "keeper")["metadata"]["uid"]
        procs.wait_for(
            lambda: (
                _pools_of(lab, "keeper")[0]["metadata"]["labels"]["ipam.spidernet.io/owner-application-uid"] == new_uid
            ),
            timeout=30,
            what="the kept pool to be adopted by the new Deployment",
        )
        (adopted,) = _pools_of(lab, "keeper")
        assert adopted["metadata"]["uid"] == pool["metadata"]["uid"]
        assert again["status"]["podIP"] in _pool_ips(adopted)

        # a DaemonSet: one pod per node, a pool of nodes + 1
        lab.kubectl("apply", "-f", "-", input_text=_app("DaemonSet", "agentd", subnet))
        running = wait_running(lab, NS2, "app=agentd", len(lab.nodes()), timeout=120)
        (ds_pool,) = _pools_of(lab, "agentd")
        assert len(_pool_ips(ds_pool)) == len(lab.nodes()) + 1
        assert all(p["status"]["podIP"] in _pool_ips(ds_pool) for p in running)
        assert_consistent(lab)
        lab.kubectl("delete", "daemonset", "-n", NS2, "agentd", "--wait=true")
        procs.wait_for(lambda: not _pools_of(lab, "agentd"), timeout=60, what="the DaemonSet's pool to go")
        assert first["status"]["podIP"]
    finally:
        lab.kubectl("delete", "namespace", NS2, "--wait=false")
        wait_no_records(lab, NS2, timeout=120)
        for p in _pools_of(lab, "keeper"):
            lab.kubectl("delete", "spiderippool", p["metadata"]["name"], "--wait=true", "--timeout=60s")
        delete_walkthrough_subnet(lab)


def _pool_ips(pool: dict[str, Any]) -> list[str]:
    out = []
    for r in pool["spec"].get("ips") or []:
        a, _, b = r.partition("-")
        first, last = ipaddress.ip_address(a), ipaddress.ip_address(b or a)
        out += [str(ipaddress.ip_address(v)) for v in range(int(first), int(last) + 1)]
    return out


def test_auto_pools_can_be_turned_off(stack: Agents) -> None:
    """``ipam.spiderSubnet.autoPool.enable: false`` (conf.yml ``enableAutoPoolForApplication: false``):
    no auto-pool is made, and the application's pods are refused with upstream's reason, in an event;
    turned on again, the same pods start with an auto-pool."""
    lab = stack.lab
    ns = "walk-off"
    lab.kubectl("apply", "-f", "-", input_text=SUBNET)
    lab.kubectl("create", "namespace", ns)
    try:
        helm_install(lab, {"ipam": {"spiderSubnet": {"autoPool": {"enable": False}}}})
        stack.wait_all()
        conf = get_json(lab, "configmap", "-n", "kube-system", "spiderpool-conf")["data"]["conf.yml"]
        assert "enableAutoPoolForApplication: false" in conf, conf
        lab.kubectl("apply", "-n", ns, "-f", "-", input_text=DEPLOYMENT)
        refusal = "cannot be used while the auto-pool feature is disabled"
        procs.wait_for(
            lambda: any(refusal in m for m in event_messages(lab, ns, reason="IPAllocationFailed")),
            timeout=120,
            what="the pods refused with an event",
            detail=lambda: json.dumps(event_messages(lab, ns, reason="IPAllocationFailed")),
        )
        assert "ipam.spiderSubnet.autoPool.enable" in event_messages(lab, ns, reason="IPAllocationFailed")[0]
        assert not auto_pools(lab)
        assert not [p for p in pods(lab, ns, f"app={APP}") if p["status"].get("podIP")]

        helm_install(lab)  # on again: the kubelet's next try gets an address from a new auto-pool
        stack.wait_all()
        for pod in wait_running(lab, ns, f"app={APP}", 2, timeout=180):
            assert FIRST <= ipaddress.ip_address(pod["status"]["podIP"]) <= LAST
        assert len(auto_pools(lab)) == 1
    finally:
        helm_install(lab)
        lab.kubectl("delete", "namespace", ns, "--wait=false")
        wait_no_records(lab, ns, timeout=120)
        procs.wait_for(lambda: not auto_pools(lab), timeout=120, what="the auto-pool to go with its Deployment")
        delete_walkthrough_subnet(lab)
