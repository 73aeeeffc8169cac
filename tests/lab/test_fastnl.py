"""The stdlib netlink look-ups of the veth hot path agree with iproute2, inside a lab node."""

from __future__ import annotations

import json
import subprocess
import sys

from spiderpool_lab import netns
from spiderpool_lab.cluster import Lab

PROBE = """
import json, socket
from spiderpool.net import fastnl
print(json.dumps({
    "addresses": sorted(a for _, a in fastnl.global_addresses()),
    "eth0": [fastnl.index("eth0"), fastnl.hwaddr("eth0")],
    "missing": fastnl.index("nosuchlink0"),
    "t4": fastnl.table_has_routes(4, 4242),
    "t6": fastnl.table_has_routes(6, 4242),
    "main": fastnl.table_has_routes(4, 254),
}))
"""


def probe(lab: Lab) -> dict[str, object]:
    out = subprocess.run(
        lab.exec_argv("node1", [sys.executable, "-c", PROBE]), capture_output=True, text=True, timeout=60, check=True
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_fastnl_matches_iproute2(lab: Lab) -> None:
    node = lab.node("node1")
    links = {str(x["ifname"]): x for x in netns.ip_json(node.netns, ["link"])}
    addrs = netns.ip_json(node.netns, ["addr", "show", "scope", "global"])
    expected = sorted(str(a["local"]) for link in addrs for a in link["addr_info"] if "local" in a)  # type: ignore[attr-defined]
    netns.ip(node.netns, ["route", "add", "10.99.0.0/24", "dev", "eth0", "table", "4242"])
    try:
        found = probe(lab)
    finally:
        netns.ip(node.netns, ["route", "del", "10.99.0.0/24", "dev", "eth0", "table", "4242"])
    assert found["addresses"] == expected
    assert found["eth0"] == [links["eth0"]["ifindex"], links["eth0"]["address"]]
    assert found["missing"] is None
    assert (found["t4"], found["t6"], found["main"]) == (True, False, True)
    assert probe(lab)["t4"] is False  # the route is gone: the table is empty again
