"""A StatefulSet moved to another pool gets its addresses from that pool (docs/api.md, "StatefulSet
pods"): through its SpiderMultusConfig's ``ippools``, the pod template's ``ipam.spidernet.io/ippool``,
and ``ippools`` with and without interface names. Each move releases the old address, says so in an
event on the pod, and ``kubectl spiderpool why`` explains an address from a pool no longer named;
without a move, the pod keeps its address."""

from __future__ import annotations

import json
from typing import Any

from spiderpool_lab import procs
from spiderpool_lab.cluster import Lab
from tests.dataplane.conftest import use_multus
from tests.helpers import event_messages, get_json, pods, pool_manifest, spiderpool_json, wait_gone
from tests.ipam.conftest import records, wait_no_records
from tests.stack import Agents

NS = "mv"
POOLS = {"p-mv-a": "172.18.111.1-172.18.111.9", "p-mv-b": "172.18.111.11-172.18.111.19"}
POOLS["p-mv-c"] = "172.18.111.21-172.18.111.29"


def statefulset(annotations: dict[str, str]) -> str:
    return json.dumps(
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": "mv", "namespace": NS},
            "spec": {
                "replicas": 1,
                "serviceName": "mv",
                "selector": {"matchLabels": {"app": "mv"}},
                "template": {
                    "metadata": {
                        "labels": {"app": "mv"},
                        "annotations": {"v1.multus-cni.io/default-network": f"{NS}/mv-net", **annotations},
                    },
                    "spec": {"containers": [{"name": "c", "image": "registry.invalid/app:1"}]},
                },
            },
        }
    )


def smc(pool: str) -> str:
    """The SpiderMultusConfig ``mv-net``: macvlan on eth0 with ``pool`` (and the coordinator it appends)."""
    spec = {"cniType": "macvlan", "macvlan": {"master": ["eth0"], "ippools": {"ipv4": [pool]}}}
    meta = {"name": "mv-net", "namespace": NS}
    return json.dumps(
        {"apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderMultusConfig", "metadata": meta, "spec": spec}
    )


def nad_config(lab: Lab) -> str:
    out = lab.kubectl("get", "network-attachment-definition", "-n", NS, "mv-net", "-o", "json", check=False)
    return str(json.loads(out.stdout)["spec"]["config"]) if out.returncode == 0 else ""


def pool_of(ip: str) -> str:
    last = int(ip.rsplit(".", 1)[1])
    return "p-mv-a" if last < 10 else "p-mv-b" if last < 20 else "p-mv-c"


def held(lab: Lab) -> dict[str, str]:
    """pool -> address, of every record the StatefulSet's pod holds."""
    return {r["spec"]["pool"]: r["spec"]["ip"] for r in records(lab) if r["spec"]["namespace"] == NS}


def current(lab: Lab) -> dict[str, Any]:
    return dict(get_json(lab, "pod", "-n", NS, "mv-0"))


def next_pod(lab: Lab, old_uid: str, pool: str) -> dict[str, Any]:
    """The StatefulSet's pod after ``old_uid``, with an address of ``pool``, and the records: only that one."""
    found: dict[str, Any] = {}

    def there() -> bool:
        nonlocal found
        now = [p for p in pods(lab, NS, "app=mv") if p["metadata"]["uid"] != old_uid and p["status"].get("podIP")]
        if not now:
            return False
        found = now[0]
        return pool_of(found["status"]["podIP"]) == pool

    procs.wait_for(
        there,
        timeout=150,
        what=f"mv-0 re-created with an address of {pool}",
        detail=lambda: json.dumps([found.get("status", {}).get("podIP"), held(lab)]),
    )
    procs.wait_for(
        lambda: held(lab) == {pool: found["status"]["podIP"]},
        timeout=30,
        what=f"the old address released, only {pool}'s held",
        detail=lambda: json.dumps(held(lab)),
    )
    return found


def moved_event(lab: Lab, pod: dict[str, Any], old_pool: str) -> str:
    """The IPPoolChanged event on ``pod`` that names ``old_pool``."""
    uid = pod["metadata"]["uid"]
    found = ""

    def posted() -> bool:
        nonlocal found
        messages = event_messages(lab, NS, uid=uid, reason="IPPoolChanged")
        found = next((m for m in messages if old_pool in m), "")
        return bool(found)

    procs.wait_for(posted, timeout=30, what=f"an IPPoolChanged event on {pod['metadata']['name']} naming {old_pool}")
    return found


def test_a_statefulset_moved_to_another_pool_gets_its_addresses(agents: Agents) -> None:
    lab = agents.lab
    use_multus(lab)
    lab.kubectl("create", "namespace", NS)
    for name, block in POOLS.items():
        lab.kubectl("apply", "-f", "-", input_text=pool_manifest(name, "172.18.0.0/16", [block]))
    try:
        lab.kubectl("apply", "-f", "-", input_text=smc("p-mv-a"))
        procs.wait_for(lambda: "p-mv-a" in nad_config(lab), timeout=30, what="the NAD of SMC mv-net")
        lab.kubectl("apply", "-f", "-", input_text=statefulset({}))
        first = next_pod(lab, "", "p-mv-a")

        # 1. The SpiderMultusConfig's ippools: A -> B. Until the pod is re-created, `why` says why it
        # still has A's address.
        lab.kubectl("apply", "-f", "-", input_text=smc("p-mv-b"))
        procs.wait_for(lambda: "p-mv-b" in nad_config(lab), timeout=30, what="the NAD updated to p-mv-b")
        (nic,) = spiderpool_json(lab, "why", f"{NS}/mv-0")["nics"]
        assert [i["pool"] for i in nic["ips"]] == ["p-mv-a"], nic
        assert len(nic["moves"]) == 1, nic
        assert "came from pool p-mv-a, which the pod no longer names" in nic["moves"][0], nic
        assert "p-mv-b" in nic["moves"][0], nic
        lab.kubectl("delete", "pod", "-n", NS, "mv-0")
        second = next_pod(lab, first["metadata"]["uid"], "p-mv-b")
        text = moved_event(lab, second, "p-mv-a")
        assert first["status"]["podIP"] in text, text
        (nic,) = spiderpool_json(lab, "why", f"{NS}/mv-0")["nics"]
        assert (nic["moves"], [i["pool"] for i in nic["ips"]]) == ([], ["p-mv-b"]), nic

        # 2. The template's ipam.spidernet.io/ippool: B -> C (the rolling update re-creates the pod)
        lab.kubectl("apply", "-f", "-", input_text=statefulset({"ipam.spidernet.io/ippool": '{"ipv4": ["p-mv-c"]}'}))
        third = next_pod(lab, second["metadata"]["uid"], "p-mv-c")
        moved_event(lab, third, "p-mv-b")

        # 3. ipam.spidernet.io/ippools naming the interface: C -> A
        choice = json.dumps([{"interface": "eth0", "ipv4": ["p-mv-a"]}])
        lab.kubectl("apply", "-f", "-", input_text=statefulset({"ipam.spidernet.io/ippools": choice}))
        fourth = next_pod(lab, third["metadata"]["uid"], "p-mv-a")
        moved_event(lab, fourth, "p-mv-c")

        # 4. ippools without interface names (the first item is eth0's): A -> B
        choice = json.dumps([{"ipv4": ["p-mv-b"]}])
        lab.kubectl("apply", "-f", "-", input_text=statefulset({"ipam.spidernet.io/ippools": choice}))
        fifth = next_pod(lab, fourth["metadata"]["uid"], "p-mv-b")
        moved_event(lab, fifth, "p-mv-a")

        # 5. No move: the re-created pod keeps its address
        lab.kubectl("delete", "pod", "-n", NS, "mv-0")
        sixth = next_pod(lab, fifth["metadata"]["uid"], "p-mv-b")
        assert sixth["status"]["podIP"] == fifth["status"]["podIP"]
    finally:
        lab.kubectl("delete", "namespace", NS, "--wait=false")
        wait_gone(lab, NS, "app=mv")
        wait_no_records(lab, NS, timeout=120)
        lab.kubectl("delete", "spiderippool", *POOLS, "--wait=true", "--timeout=60s")
        lab.reset_cni_config()
