"""A pod that starts with an address its node still maps to another MAC (the address's last holder)
gets the node's stale neighbour entries removed at ADD, on every NIC of the node, for each of its
NICs' addresses; the node's own permanent entry for the pod (on its veth) is there."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

import pytest

from spiderpool_lab import netns
from spiderpool_lab.cluster import Lab
from tests.dataplane.conftest import use_multus
from tests.dataplane.test_local_traffic import pod
from tests.dataplane.test_multinic import net1_nad
from tests.dataplane.test_veth import conflist
from tests.helpers import in_netns, pool_manifest, wait_gone, wait_running
from tests.ipam.conftest import wait_no_records
from tests.stack import Agents

NS = "nb"
OLD_MAC = "02:00:00:de:ad:01"
DEVS = ("eth0", "eth1")
IP0, IP6, IP1 = "172.18.112.1", "fd00:172:18::112:1", "172.19.112.1"
POOLS = {
    "p-nb4": pool_manifest("p-nb4", "172.18.0.0/16", [IP0]),
    "p-nb6": pool_manifest("p-nb6", "fd00:172:18::/64", [IP6]),
    "p-nb1": pool_manifest("p-nb1", "172.19.0.0/16", [IP1], gateway="172.19.0.1"),
}


@pytest.fixture
def multus(agents: Agents) -> Iterator[Agents]:
    use_multus(agents.lab, conflist())
    yield agents
    agents.lab.reset_cni_config()


def entries(lab: Lab, ip: str) -> list[dict[str, object]]:
    found: list[dict[str, object]] = netns.ip_json(lab.node("node1").netns, ["neigh", "show", "to", ip])
    return found


def test_stale_neighbours_of_the_pods_addresses_are_removed(multus: Agents) -> None:
    lab = multus.lab
    node = lab.node("node1")
    for manifest in POOLS.values():
        lab.kubectl("apply", "-f", "-", input_text=manifest)
    lab.kubectl("create", "namespace", NS)
    try:
        # the addresses' last holders' MACs, as a node that talked to them remembers them
        plant = [f"neigh replace {ip} lladdr {OLD_MAC} dev {dev} nud stale" for ip in (IP0, IP6, IP1) for dev in DEVS]
        netns.ip_batch(node.netns, plant)
        assert len(entries(lab, IP0)) == 2
        nad = json.loads(net1_nad())
        nad["metadata"]["namespace"] = NS
        lab.kubectl("apply", "-f", "-", input_text=json.dumps(nad))
        body = pod("two-nic", True, ("p-nb4", "p-nb6", "p-nb1"), NS)
        lab.kubectl("apply", "-f", "-", input_text=json.dumps(body))
        (p,) = wait_running(lab, NS, "app=two-nic", 1)
        assert sorted(x["ip"] for x in p["status"]["podIPs"]) == sorted([IP0, IP6])
        for ip in (IP0, IP6, IP1):
            stale = [e for e in entries(lab, ip) if e.get("lladdr") == OLD_MAC]
            assert stale == [], f"{ip}: {stale}"
        # the node's own way to the pod is there, and works
        (mine,) = entries(lab, IP0)
        assert str(mine["dev"]).startswith("veth"), mine
        assert "PERMANENT" in (mine.get("state") or []), mine
        ping = in_netns(lab, "node1", "ping", "-c", "1", "-W", "2", IP0)
        assert " 0% packet loss" in ping.stdout, ping.stdout + ping.stderr
    finally:
        for ip in (IP0, IP6, IP1):  # (what the test planted, where the pod did not remove it)
            for dev in DEVS:
                with contextlib.suppress(Exception):
                    netns.ip_batch(node.netns, [f"neigh del {ip} dev {dev}"])
        lab.kubectl("delete", "namespace", NS, "--wait=false")
    wait_gone(lab, NS, "app=two-nic")
    wait_no_records(lab, NS, timeout=120)
    for name in POOLS:
        lab.kubectl("delete", "spiderippool", name, "--wait=true", "--timeout=60s")
