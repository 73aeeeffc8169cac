"""The pod side of the reply path (``spiderpool.net.replies``) in a real network namespace: the
marking rules, the rule and the table are set, and a repeated ADD adds nothing (the lab tests show
the packets: tests/dataplane/test_local_traffic.py)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator

import pytest
from pyroute2 import IPRoute

from spiderpool.net import fastnl, replies, veth

NS = f"sptest-replies-{os.getpid()}"


def ip(*argv: str) -> str:
    return subprocess.run(["ip", *argv], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def pod_netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("creating a network namespace needs root")
    ip("netns", "add", NS)
    try:
        ip("-n", NS, "link", "add", "veth0", "type", "veth", "peer", "name", "peer0")
        ip("-n", NS, "link", "set", "veth0", "up")
        ip("-n", NS, "link", "set", "peer0", "up")
        yield f"/var/run/netns/{NS}"
    finally:
        ip("netns", "del", NS)


def install(path: str, fresh: bool) -> None:
    def run() -> None:
        index = fastnl.index("veth0")
        assert index is not None
        with IPRoute() as pod:
            replies.install(pod, index, "veth0", {4: "10.250.0.1", 6: "fd00:250::1"}, 500, fresh)

    veth.run_in_netns(path, run)


def test_marks_rule_and_table_once(pod_netns: str) -> None:
    install(pod_netns, fresh=True)
    install(pod_netns, fresh=False)  # a repeated ADD
    for save, rule_family in (("iptables-save", "-4"), ("ip6tables-save", "-6")):
        saved = subprocess.run(["ip", "netns", "exec", NS, save, "-t", "mangle"], capture_output=True, text=True)
        lines = [line for line in saved.stdout.splitlines() if replies.COMMENT in line]
        assert len(lines) == 2, saved.stdout
        assert any("-A PREROUTING -i veth0" in line and "--set-xmark 0x20000/0x20000" in line for line in lines)
        assert any("-A OUTPUT" in line and "--restore-mark" in line for line in lines)
        rules = json.loads(ip("-n", NS, rule_family, "-j", "rule"))
        mine = [r for r in rules if r.get("priority") == replies.REPLY_RULE_PREF]
        assert len(mine) == 1, rules
        assert (mine[0]["fwmark"], mine[0]["fwmask"], str(mine[0]["table"])) == ("0x20000", "0x20000", "500")
    table = json.loads(ip("-n", NS, "-j", "route", "show", "table", "500"))
    assert [(r["dst"], r.get("gateway"), r["dev"]) for r in table] == [
        ("default", "10.250.0.1", "veth0"),
        ("10.250.0.1", None, "veth0"),
    ], table
    table6 = json.loads(ip("-n", NS, "-6", "-j", "route", "show", "table", "500"))
    assert ("default", "fd00:250::1", "veth0") in [(r["dst"], r.get("gateway"), r["dev"]) for r in table6], table6


def test_stale_neighbours_are_flushed_on_every_interface(pod_netns: str) -> None:
    """``spiderpool.net.neighbours.flush`` (run on the node at ADD; here in a namespace of the test's)."""
    from spiderpool.net import neighbours

    for dev in ("veth0", "peer0"):
        ip("-n", NS, "neigh", "replace", "10.250.0.9", "lladdr", "02:00:00:00:00:09", "dev", dev, "nud", "stale")
        ip("-n", NS, "neigh", "replace", "fd00:250::9", "lladdr", "02:00:00:00:00:09", "dev", dev, "nud", "stale")
    ip("-n", NS, "neigh", "replace", "10.250.0.8", "lladdr", "02:00:00:00:00:08", "dev", "veth0", "nud", "stale")
    removed = veth.run_in_netns(pod_netns, lambda: neighbours.flush(["10.250.0.9", "fd00:250::9"]))
    assert len(removed) == 4, removed
    left = json.loads(ip("-n", NS, "-j", "neigh", "show"))
    assert [(n["dst"], n["dev"]) for n in left] == [("10.250.0.8", "veth0")], left
