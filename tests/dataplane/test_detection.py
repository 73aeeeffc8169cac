"""IP conflict and gateway detection (veth plugin, detectIPConflict / detectGateway): an address another
host answers for is not used (and is held for nobody a while), and a pool whose gateway does not answer
fails the pod with an event that says so."""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterator

import pytest

from spiderpool_lab import netns, procs, topology
from spiderpool_lab.cluster import Lab
from tests.dataplane.test_veth import conflist
from tests.helpers import event_messages, get_json, in_netns, pods, pool_manifest, pool_pod, wait_gone, wait_running
from tests.ipam.conftest import records, use_cni, wait_no_records
from tests.stack import Agents

NS = "det"
ROGUE = "172.18.77.5"  # another host on the LAN already uses it


@pytest.fixture
def detecting(agents: Agents) -> Iterator[Agents]:
    conf = conflist()
    conf["plugins"][1].update(
        {
            "detectIPConflict": True,
            "detectGateway": True,
            # and the walkthrough's other pod-side knobs
            "hardware_prefix": "0a:1b",
            "rp_filter": {"enabled": True, "value": 2},
        }
    )
    use_cni(agents.lab, conf)
    switch = topology.switch_netns(agents.lab.prefix)
    netns.ip(switch, ["addr", "replace", f"{ROGUE}/16", "dev", "br0"])
    yield agents
    netns.ip(switch, ["addr", "del", f"{ROGUE}/16", "dev", "br0"], check=False)
    agents.lab.reset_cni_config()


def pod(name: str, pool: str) -> str:
    return pool_pod(name, NS, pool, "node1")


def events(lab: Lab, name: str, namespace: str = NS) -> list[str]:
    return event_messages(lab, namespace, name=name)


def pod_events(lab: Lab, name: str, reason: str, namespace: str = NS) -> list[str]:
    return event_messages(lab, namespace, name=name, reason=reason)


def ip_conflicts(lab: Lab) -> float:
    """Addresses node1's agent quarantined because another host uses them."""
    scraped = in_netns(lab, "node1", "curl", "-s", "http://127.0.0.1:5711/metrics").stdout
    counter = r'^spiderpool_ipam_released_ip_counts_total\{reason="ip_conflict"\} ([0-9.]+)$'
    found = re.search(counter, scraped, re.M)
    return float(found.group(1)) if found else 0.0


def test_conflicting_ip_is_skipped_and_unreachable_gateway_fails(detecting: Agents) -> None:
    lab = detecting.lab
    lab.kubectl("apply", "-f", "-", input_text=pool_manifest("p-det", "172.18.0.0/16", [f"{ROGUE}-172.18.77.6"]))
    nogw = pool_manifest("p-nogw", "172.18.0.0/16", ["172.18.78.1-172.18.78.2"], gateway="172.18.0.254")
    lab.kubectl("apply", "-f", "-", input_text=nogw)
    lab.kubectl("create", "namespace", NS)
    try:
        lab.kubectl("apply", "-f", "-", input_text=pod("lucky", "p-det"))
        (lucky,) = wait_running(lab, NS, "app=lucky", 1)
        assert lucky["status"]["podIP"] == "172.18.77.6"
        (eth0,) = json.loads(in_netns(lab, f"{NS}/lucky", "ip", "-j", "link", "show", "eth0").stdout)
        assert eth0["address"] == "0a:1b:ac:12:4d:06"  # the prefix, then 172.18.77.6
        for nic in ("all", "eth0", "veth0"):
            value = in_netns(lab, f"{NS}/lucky", "cat", f"/proc/sys/net/ipv4/conf/{nic}/rp_filter").stdout
            assert value.strip() == "2", nic
        procs.wait_for(
            lambda: any(f"IP conflict: {ROGUE} is already in use" in m for m in events(lab, "lucky")),
            timeout=30,
            what="the conflict to be reported on the pod",
        )
        # the address was quarantined (not simply freed), as node1's agent counts
        assert ip_conflicts(lab) >= 1, "no ip_conflict release counted"
        # spiderpool's own event names the address and who answered for it
        ours = [m for m in pod_events(lab, "lucky", "IPConflict") if ROGUE in m]
        assert ours, events(lab, "lucky")
        assert re.search(r"in use by ([0-9a-f]{2}:){5}[0-9a-f]{2}", ours[0]), ours
        assert "held for nobody" in ours[0], ours
        # the quarantined address is nobody's in the pool's status
        status = get_json(lab, "spiderippool", "p-det")["status"]
        assert ROGUE not in json.loads(status.get("allocatedIPs") or "{}"), status
        # the pool is used up: the failure names the quarantined address
        lab.kubectl("apply", "-f", "-", input_text=pod("unlucky", "p-det"))
        procs.wait_for(
            lambda: any(f"quarantined: {ROGUE} (ip_conflict, until " in m for m in events(lab, "unlucky")),
            timeout=60,
            what="the used-up failure to name the quarantined address",
            detail=lambda: "\n".join(events(lab, "unlucky")),
        )

        assert_stranded(lab, NS, "stranded", pod("stranded", "p-nogw"), "gateway 172.18.0.254 does not answer ARP")
    finally:
        lab.kubectl("delete", "namespace", NS, "--wait=false")
    for name in ("lucky", "unlucky", "stranded"):
        wait_gone(lab, NS, f"app={name}")
    wait_no_records(lab, NS, timeout=120)
    # (a quarantined address does not keep its deleted pool Terminating: its record outlives the
    # pool and keeps the address out of circulation until the quarantine ends)
    for pool in ("p-det", "p-nogw"):
        lab.kubectl("delete", "spiderippool", pool, "--wait=true", "--timeout=60s")
    procs.wait_for(
        lambda: not [r for r in records(lab) if r["spec"]["pool"] in ("p-det", "p-nogw")],
        timeout=120,
        what="the quarantined address to be freed",
    )


NS6 = "det6"
ROGUE6 = "fd00:172:18::77:5"  # caught by the kernel's DAD while macvlan waits for it (pool with a gateway)
ROGUE6B = "fd00:172:18::78:5"  # caught by the veth plugin's check (pool without a gateway: macvlan does not wait)


def dual_pod(name: str, v6_pool: str) -> str:
    return pool_pod(name, NS6, "p-d6v4", "node1", v6_pool)


def assert_stranded(lab: Lab, namespace: str, name: str, manifest: str, message: str) -> None:
    """The pod never gets an address, and its events say why."""
    lab.kubectl("apply", "-f", "-", input_text=manifest)
    procs.wait_for(
        lambda: any(message in m for m in events(lab, name, namespace)),
        timeout=60,
        what=f"{message!r} to be reported on pod {name}",
    )
    (stranded,) = pods(lab, namespace, f"app={name}")
    assert not stranded["status"].get("podIP")


def test_ipv6_conflicts_and_unreachable_gateway(detecting: Agents) -> None:
    lab = detecting.lab
    switch = topology.switch_netns(lab.prefix)
    netns.ip_batch(switch, [f"addr replace {ip}/64 dev br0 nodad" for ip in (ROGUE6, ROGUE6B)])
    v6b = json.loads(pool_manifest("p-d6b", "fd00:172:18::/64", [f"{ROGUE6B}-fd00:172:18::78:6"]))
    v6b["spec"].pop("gateway")
    for manifest in (
        pool_manifest("p-d6v4", "172.18.0.0/16", ["172.18.79.1-172.18.79.9"]),
        pool_manifest("p-d6", "fd00:172:18::/64", [f"{ROGUE6}-fd00:172:18::77:6"]),
        json.dumps(v6b),
        pool_manifest("p-d6nogw", "fd00:172:18::/64", ["fd00:172:18::79:1"], gateway="fd00:172:18::254"),
    ):
        lab.kubectl("apply", "-f", "-", input_text=manifest)
    lab.kubectl("create", "namespace", NS6)
    try:
        before = ip_conflicts(lab)
        for n, (name, pool, good) in enumerate(
            (("dad", "p-d6", "fd00:172:18::77:6"), ("probe", "p-d6b", "fd00:172:18::78:6")), start=1
        ):
            lab.kubectl("apply", "-f", "-", input_text=dual_pod(name, pool))
            (running,) = wait_running(lab, NS6, f"app={name}", 1)
            have = {ipaddress.ip_address(p["ip"]) for p in running["status"]["podIPs"]}
            assert [ip for ip in have if ip.version == 6] == [ipaddress.ip_address(good)], have
            # the refused address was quarantined (held for nobody a while: the tests' setting is 30 s)
            assert ip_conflicts(lab) >= before + n, "no ip_conflict quarantine counted"
            # the pod's failed attempts and its IPv4 sibling left nothing else behind
            mine = [
                r
                for r in records(lab)
                if r["spec"]["pod"] == name and r["spec"]["namespace"] == NS6 and r["spec"]["podUID"]
            ]
            assert {ipaddress.ip_address(r["spec"]["ip"]) for r in mine} == have
        assert any("DADFAILED" in m for m in events(lab, "dad", NS6)), events(lab, "dad", NS6)
        assert any(f"IP conflict: {ROGUE6B} is already in use by" in m for m in events(lab, "probe", NS6))

        message = "gateway fd00:172:18::254 does not answer NDP"
        assert_stranded(lab, NS6, "stranded6", dual_pod("stranded6", "p-d6nogw"), message)
    finally:
        lab.kubectl("delete", "namespace", NS6, "--wait=false")
        netns.ip_batch(switch, [f"addr del {ip}/64 dev br0" for ip in (ROGUE6, ROGUE6B)])
    for name in ("dad", "probe", "stranded6"):
        wait_gone(lab, NS6, f"app={name}")
    wait_no_records(lab, NS6, timeout=120)
    pools = ("p-d6v4", "p-d6", "p-d6b", "p-d6nogw")
    procs.wait_for(
        lambda: not [r for r in records(lab) if r["spec"]["pool"] in pools],
        timeout=120,
        what="the quarantined addresses to be freed",
    )
    for pool in pools:
        lab.kubectl("delete", "spiderippool", pool, "--wait=true", "--timeout=60s")


NS_STS = "det-sts"
ROGUE_STS = "172.18.77.7"  # the StatefulSet's fixed address, which another host takes for a while


def statefulset() -> str:
    template = {
        "metadata": {
            "labels": {"app": "db"},
            "annotations": {"ipam.spidernet.io/ippool": json.dumps({"ipv4": ["p-det-sts"]})},
        },
        "spec": {"nodeName": "node1", "containers": [{"name": "c", "image": "registry.invalid/app:1"}]},
    }
    spec = {"replicas": 1, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}}, "template": template}
    meta = {"name": "db", "namespace": NS_STS}
    return json.dumps({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": meta, "spec": spec})


def test_a_statefulset_waits_for_its_address(detecting: Agents) -> None:
    """A StatefulSet's address is its identity: while another host answers for it the pod does not
    start (an event says why, every time), the address stays the pod's and is not quarantined; once
    it is free, the pod starts with it."""
    lab = detecting.lab
    switch = topology.switch_netns(lab.prefix)
    pool = pool_manifest("p-det-sts", "172.18.0.0/16", [f"{ROGUE_STS}-172.18.77.8"])
    lab.kubectl("apply", "-f", "-", input_text=pool)
    lab.kubectl("create", "namespace", NS_STS)
    rogue = True
    try:
        lab.kubectl("apply", "-f", "-", input_text=statefulset())
        (first,) = wait_running(lab, NS_STS, "app=db", 1)
        assert first["status"]["podIP"] == ROGUE_STS
        # another host takes the address; the pod is re-created
        netns.ip(switch, ["addr", "replace", f"{ROGUE_STS}/16", "dev", "br0"])
        lab.kubectl("delete", "pod", "-n", NS_STS, "db-0")
        procs.wait_for(
            lambda: any(ROGUE_STS in m for m in pod_events(lab, "db-0", "IPConflict", NS_STS)),
            timeout=90,
            what="the conflict reported on the StatefulSet's pod",
        )
        message = pod_events(lab, "db-0", "IPConflict", NS_STS)[0]
        assert "StatefulSet's pod keeps its address" in message, message
        assert re.search(r"in use by ([0-9a-f]{2}:){5}[0-9a-f]{2}", message), message
        (waiting,) = pods(lab, NS_STS, "app=db")
        assert not waiting["status"].get("podIP"), waiting["status"]
        # the address is still the pod's (not quarantined), and the other one was not taken
        (held,) = [r["spec"] for r in records(lab) if r["spec"]["pool"] == "p-det-sts"]
        uid = waiting["metadata"]["uid"]
        assert (held["ip"], held["podUID"], held.get("quarantineUntil")) == (ROGUE_STS, uid, None)
        # the other host lets go: the pod starts with its own address
        netns.ip(switch, ["addr", "del", f"{ROGUE_STS}/16", "dev", "br0"])
        rogue = False
        (back,) = wait_running(lab, NS_STS, "app=db", 1, timeout=180)
        assert back["status"]["podIP"] == ROGUE_STS
    finally:
        if rogue:
            netns.ip(switch, ["addr", "del", f"{ROGUE_STS}/16", "dev", "br0"], check=False)
        lab.kubectl("delete", "namespace", NS_STS, "--wait=false")
    wait_gone(lab, NS_STS, "app=db")
    wait_no_records(lab, NS_STS, timeout=120)
    lab.kubectl("delete", "spiderippool", "p-det-sts", "--wait=true", "--timeout=60s")
