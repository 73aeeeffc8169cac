"""The fault matrix's checker judges what it reads correctly (tests/faults/invariants.py): a test of
the test, because a checker that cannot see a duplicate would make every row pass."""

from __future__ import annotations

from typing import Any

from tests.faults import invariants as inv

NET = "172.18.0.0/16"


def pod(name: str, ip: str | None, *, uid: str = "", phase: str = "Running", deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "uid": uid or f"u-{name}"}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-02T00:00:00Z"
    status: dict[str, Any] = {"phase": phase, "conditions": [{"type": "Ready", "status": "True"}]}
    if ip:
        status |= {"podIP": ip, "podIPs": [{"ip": ip}]}
    return {"metadata": meta, "status": status}


def record(ip: str, name: str, uid: str = "", nic: str = "eth0") -> dict[str, Any]:
    return {"spec": {"ip": ip, "pod": name, "podUID": uid or f"u-{name}", "interface": nic}}


def test_a_consistent_storm_has_no_problem_and_converges() -> None:
    s = inv.Sample(
        0, [pod("a", "172.18.60.1"), pod("b", "172.18.60.2")], [record("172.18.60.1", "a"), record("172.18.60.2", "b")]
    )
    s.netns = {"node1": {"cni-1": {"172.18.60.1"}}, "node2": {"cni-2": {"172.18.60.2", "10.0.0.1"}}}
    assert inv.problems(s, NET) == set()
    assert inv.converged(s, 2)
    assert not inv.converged(s, 3)


def test_every_kind_of_duplicate_is_seen() -> None:
    s = inv.Sample(0, [pod("a", "172.18.60.1"), pod("b", "172.18.60.1")], [record("172.18.60.1", "a")])
    assert any(p.startswith("duplicate: 172.18.60.1 on live pods") for p in inv.problems(s, NET))
    # a terminating pod still showing its old address is not a duplicate
    s = inv.Sample(0, [pod("a", "172.18.60.1", deleting=True), pod("b", "172.18.60.1")], [record("172.18.60.1", "b")])
    assert inv.duplicates(inv.problems(s, NET)) == set()
    # one pod holding two records for one NIC
    s = inv.Sample(0, [pod("a", "172.18.60.1")], [record("172.18.60.1", "a"), record("172.18.60.9", "a")])
    assert any("holds 2 records for eth0" in p for p in inv.problems(s, NET))
    # the same address configured in two pods' network namespaces (on the wire)
    s = inv.Sample(0, [], [], {"node1": {"cni-1": {"172.18.60.5"}}, "node2": {"cni-9": {"172.18.60.5"}}})
    assert inv.duplicates(inv.problems(s, NET)) == {
        "duplicate: 172.18.60.5 configured in ['node1/cni-1', 'node2/cni-9']"
    }


def test_a_running_pod_must_hold_the_record_of_its_address() -> None:
    s = inv.Sample(0, [pod("a", "172.18.60.1")], [])
    assert inv.problems(s, NET) == {"unrecorded: Running pod a has 172.18.60.1, which no record holds"}
    assert not inv.converged(s, 1)
    s = inv.Sample(0, [pod("a", "172.18.60.1")], [record("172.18.60.1", "b")])
    assert any(p.startswith("misrecorded:") for p in inv.problems(s, NET))
    s = inv.Sample(0, [pod("a", "172.18.60.1")], [record("172.18.60.1", "a"), record("172.18.60.7", "a", nic="net1")])
    assert inv.problems(s, NET) == {"mismatch: record 172.18.60.7 names pod a, which has ['172.18.60.1']"}


def test_records_of_gone_pods_are_orphans_and_the_netns_listing_parses() -> None:
    s = inv.Sample(0, [pod("a", "172.18.60.1")], [record("172.18.60.1", "a"), record("172.18.60.3", "gone")])
    assert inv.orphans(s) == ["172.18.60.3"]
    text = (
        "netns: cni-aa\n2: eth0    inet 172.18.60.4/16 brd 172.18.255.255 scope global eth0\\  valid_lft forever\n"
        "\nnetns: cni-bb\n1: lo    inet 127.0.0.1/8 scope host lo\n"
    )
    assert inv.parse_netns_addresses(text) == {"cni-aa": {"172.18.60.4"}, "cni-bb": {"127.0.0.1"}}
