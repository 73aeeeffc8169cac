"""IP conflict and gateway detection (veth plugin, detectIPConflict / detectGateway): an address another
host answers for is not used (and is held for nobody a while), and a pool whose gateway does not answer
fails the pod with an event that says so."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from spiderpool.lab import netns, procs, topology
from spiderpool.lab.cluster import Lab
from tests.dataplane.test_veth import conflist
from tests.helpers import get_json, in_netns, pods, pool_manifest, pool_pod, wait_gone, wait_running
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


def events(lab: Lab, name: str) -> list[str]:
    items: list[dict[str, Any]] = get_json(lab, "events", "-n", NS, "--field-selector", f"involvedObject.name={name}")[
        "items"
    ]
    return [str(e.get("message")) for e in items]


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
        scraped = in_netns(lab, "node1", "curl", "-s", "http://127.0.0.1:5711/metrics").stdout
        counter = r'^spiderpool_ipam_released_ip_counts_total\{reason="ip_conflict"\} ([0-9.]+)$'
        found = re.search(counter, scraped, re.M)
        assert found, "no ip_conflict release counted"
        assert float(found.group(1)) >= 1

        lab.kubectl("apply", "-f", "-", input_text=pod("stranded", "p-nogw"))
        procs.wait_for(
            lambda: any("gateway 172.18.0.254 does not answer ARP" in m for m in events(lab, "stranded")),
            timeout=60,
            what="the unreachable gateway to be reported on the pod",
        )
        (stranded,) = pods(lab, NS, "app=stranded")
        assert not stranded["status"].get("podIP")
    finally:
        lab.kubectl("delete", "namespace", NS, "--wait=false")
    wait_gone(lab, NS, "app=lucky")
    wait_gone(lab, NS, "app=stranded")
    wait_no_records(lab, NS, timeout=120)
    procs.wait_for(
        lambda: not [r for r in records(lab) if r["spec"]["pool"] in ("p-det", "p-nogw")],
        timeout=60,
        what="the quarantined address to be freed",
    )
    for pool in ("p-det", "p-nogw"):
        lab.kubectl("delete", "spiderippool", pool, "--wait=true", "--timeout=60s")
