"""`kubectl spiderpool leaks`: the pure finders (records without a live pod, pod addresses without a
record, pool status drift, unrecorded addresses in pod namespaces) and the agent answer's shape."""

from __future__ import annotations

import json
from typing import Any

from spiderpool.agent import debug
from spiderpool.api.objects import new_record
from spiderpool.cli import leaks
from spiderpool.cli.doctor import AGENT_PORT, agent_port
from spiderpool.cli.leaks import Cluster, Finding
from spiderpool.cli.main import parser
from spiderpool.controller.status import pool_status as controller_pool_status
from spiderpool.ipam import gc

#: 2026-12-03T12:00:00Z
NOW = 1796299200.0
OLD = "2026-12-03T11:00:00Z"
FRESH = "2026-12-03T11:59:50Z"
SETTINGS = gc.Settings()


def test_now_is_what_the_stamps_say() -> None:
    assert gc.parse_time("2026-12-03T12:00:00Z") == NOW


def pool(name: str, ips: list[str], **extra: Any) -> dict[str, Any]:
    meta = {"name": name, "creationTimestamp": OLD, "resourceVersion": "7", **extra.pop("metadata", {})}
    out: dict[str, Any] = {"metadata": meta, "spec": {"subnet": "172.18.0.0/16", "ips": ips, **extra}}
    return out


def record(ip: str, pool_name: str = "a", pod: str = "p", ns: str = "ns", **extra: Any) -> dict[str, Any]:
    created = extra.pop("created", OLD)
    spec = {
        "ip": ip, "pool": pool_name, "ipVersion": 4, "namespace": ns, "pod": pod, "podUID": f"uid-{pod}",
        "interface": "eth0", "node": "node1", "ownerKind": "", "ownerName": "", **extra,
    }  # fmt: skip
    return {"metadata": {"name": ip, "creationTimestamp": created, "resourceVersion": "3"}, "spec": spec}


def pod(name: str, ns: str = "ns", ips: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    meta = {"name": name, "namespace": ns, "uid": extra.pop("uid", f"uid-{name}"), "creationTimestamp": OLD}
    meta.update(extra.pop("metadata", {}))
    status: dict[str, Any] = {"phase": extra.pop("phase", "Running")}
    if ips:
        status["podIPs"] = [{"ip": ip} for ip in ips]
    status.update(extra.pop("status", {}))
    return {"metadata": meta, "spec": {"nodeName": "node1", **extra}, "status": status}


def node(name: str = "node1") -> dict[str, Any]:
    return {"metadata": {"name": name}}


def orphans(records: list[dict[str, Any]], pods: list[dict[str, Any]], **kw: Any) -> list[Finding]:
    sts = kw.pop("statefulsets", [])
    return leaks.records_without_pod(records, pods, [node()], sts, {}, NOW, SETTINGS, **kw)


# --- kind 1


def test_a_record_whose_pod_is_gone_is_quarantined_as_gc_would() -> None:
    (f,) = orphans([record("172.18.1.1", pod="gone")], [pod("live")])
    assert (f.kind, f.reason, f.action, f.ip, f.holder, f.node) == (
        leaks.RECORD_WITHOUT_POD,
        "pod_deleted",
        leaks.QUARANTINE,
        "172.18.1.1",
        "ns/gone",
        "node1",
    )
    assert "pod ns/gone is gone" in f.detail
    assert "quarantine" in f.detail


def test_a_young_record_is_no_leak_an_add_may_be_in_flight() -> None:
    assert orphans([record("172.18.1.1", pod="gone", created=FRESH)], []) == []
    assert orphans([record("172.18.1.1", pod="gone", created=FRESH)], [], namespace="ns") == []


def test_a_record_of_a_live_pod_is_no_leak_and_a_recreated_pod_makes_one() -> None:
    assert orphans([record("172.18.1.1", pod="p")], [pod("p")]) == []
    (f,) = orphans([record("172.18.1.1", pod="p")], [pod("p", uid="new")])
    assert f.reason == "pod_recreated"
    assert "uid new" in f.detail


def test_a_statefulset_pod_keeps_its_record_for_its_successor() -> None:
    sts = {"metadata": {"name": "db", "namespace": "ns"}, "spec": {"replicas": 2}}
    kept = record("172.18.1.1", pod="db-1", ownerKind="StatefulSet", ownerName="db")
    scaled = record("172.18.1.2", pod="db-2", ownerKind="StatefulSet", ownerName="db")
    found = orphans([kept, scaled], [], statefulsets=[sts])
    assert [(f.ip, f.reason) for f in found] == [("172.18.1.2", "statefulset_scaled_down")]


def test_a_finished_pod_is_released_at_once() -> None:
    (f,) = orphans([record("172.18.1.1", pod="job")], [pod("job", phase="Succeeded")])
    assert (f.reason, f.action) == ("pod_completed", leaks.RELEASE)


def test_quarantine_is_reported_only_when_gc_should_have_ended_it() -> None:
    waiting = record("172.18.1.1", pod="gone", podUID="", quarantineUntil="2026-12-03T12:05:00Z")
    just_over = record("172.18.1.2", pod="gone", podUID="", quarantineUntil="2026-12-03T11:59:50Z")
    long_over = record("172.18.1.3", pod="gone", podUID="", quarantineUntil=OLD, releaseReason="pod_deleted")
    (f,) = orphans([waiting, just_over, long_over], [])
    assert (f.ip, f.reason, f.action) == ("172.18.1.3", "quarantine_over", leaks.RELEASE)
    assert "pod_deleted" in f.detail


def test_a_terminating_pod_on_a_lost_node() -> None:
    terminating = pod("t", metadata={"deletionTimestamp": OLD})
    found = leaks.records_without_pod(
        [record("172.18.1.1", pod="t")], [terminating], [node()], [], {"node1": 900.0}, NOW, SETTINGS
    )
    assert [(f.reason, f.action) for f in found] == [("node_lost", leaks.QUARANTINE)]
    assert "900s old" in found[0].detail


def test_namespace_limits_the_records_judged() -> None:
    found = orphans([record("172.18.1.1", pod="gone"), record("172.18.1.2", pod="gone", ns="other")], [])
    assert [f.ip for f in found] == ["172.18.1.1", "172.18.1.2"]
    assert [f.ip for f in orphans([record("172.18.1.2", pod="gone", ns="other")], [], namespace="ns")] == []


# --- kind 2


def endpoint(name: str, uid: str, nics: list[dict[str, Any]], ns: str = "ns") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns}, "status": {"current": {"uid": uid, "ips": nics}}}


def test_pod_addresses_come_from_the_endpoint_network_status_and_pod_ips() -> None:
    status = [{"interface": "net1", "ips": ["172.18.2.5"]}, {"interface": "eth0", "ips": ["172.18.1.5"]}]
    p = pod("p", ips=["172.18.1.5", "fd00::0005"], metadata={"annotations": {leaks.NETWORK_STATUS: json.dumps(status)}})
    ep = endpoint("p", "uid-p", [{"interface": "net2", "ipv4": "172.18.3.5/16", "ipv4Pool": "c", "cleanGateway": True}])
    got = {a.ip: a for a in leaks.pod_addresses(p, ep)}
    assert sorted(got) == ["172.18.1.5", "172.18.2.5", "172.18.3.5", "fd00::5"]
    assert (got["172.18.3.5"].interface, got["172.18.3.5"].pool, got["172.18.3.5"].clean_gateway) == ("net2", "c", True)
    assert got["172.18.2.5"].interface == "net1"
    assert got["fd00::5"].interface == "eth0"
    # a predecessor's endpoint (a StatefulSet pod's outlives it) says nothing of this pod
    stale = endpoint("p", "uid-old", [{"interface": "eth0", "ipv4": "172.18.9.9/16"}])
    assert "172.18.9.9" not in {a.ip for a in leaks.pod_addresses(p, stale)}
    broken = pod("b", metadata={"annotations": {leaks.NETWORK_STATUS: "{not json"}})
    assert leaks.pod_addresses(broken, None) == []


def unrecorded(
    pods: list[dict[str, Any]], records: list[dict[str, Any]], pools: list[dict[str, Any]], **kw: Any
) -> list[Finding]:
    endpoints = kw.pop("endpoints", [])
    handed = leaks.handed_out(pools, kw.pop("reserved", []))
    return leaks.ips_without_record(pods, endpoints, records, handed, **kw)


def test_a_pod_address_without_a_record_is_recorded_by_the_fix() -> None:
    pools = [pool("a", ["172.18.1.1-172.18.1.20"])]
    (f,) = unrecorded([pod("p", ips=["172.18.1.5"])], [], pools)
    assert (f.kind, f.reason, f.action, f.ip, f.pool, f.holder, f.record) == (
        leaks.IP_WITHOUT_RECORD,
        "no_record",
        leaks.RECORD,
        "172.18.1.5",
        "a",
        "ns/p",
        "172.18.1.5",
    )


def test_addresses_our_pools_do_not_hand_out_are_another_cnis() -> None:
    pools = [pool("a", ["172.18.1.1-172.18.1.20"], excludeIPs=["172.18.1.20"], gateway="172.18.1.1")]
    reserved = [{"metadata": {"name": "r"}, "spec": {"ips": ["172.18.1.19"]}}]
    pods = [pod("p", ips=["10.244.0.5", "172.18.1.20", "172.18.1.1", "172.18.1.19"])]
    assert unrecorded(pods, [], pools, reserved=reserved) == []


def test_pods_that_hold_nothing_are_skipped() -> None:
    pools = [pool("a", ["172.18.1.1-172.18.1.20"])]
    pods = [
        pod("host", ips=["172.18.1.2"], hostNetwork=True),
        pod("done", ips=["172.18.1.3"], phase="Succeeded"),
        pod("going", ips=["172.18.1.4"], metadata={"deletionTimestamp": OLD}),
        pod("other", ns="elsewhere", ips=["172.18.1.5"]),
    ]
    assert unrecorded(pods, [], pools, namespace="ns") == []


def test_a_record_of_this_pod_is_no_leak_and_of_another_live_pod_is_held_twice() -> None:
    pools = [pool("a", ["172.18.1.1-172.18.1.20"])]
    assert unrecorded([pod("p", ips=["172.18.1.5"])], [record("172.18.1.5", pod="p")], pools) == []
    pods = [pod("p", ips=["172.18.1.5"]), pod("q")]
    (f,) = unrecorded(pods, [record("172.18.1.5", pod="q")], pools)
    assert (f.reason, f.action) == ("held_twice", "")
    assert "two pods hold one address" in f.detail


def test_a_record_of_a_gone_pod_or_in_quarantine_is_adopted() -> None:
    pools = [pool("a", ["172.18.1.1-172.18.1.20"])]
    pods = [pod("p", ips=["172.18.1.5", "172.18.1.6"])]
    records = [
        record("172.18.1.5", pod="gone"),
        record("172.18.1.6", pod="old", podUID="", quarantineUntil="2026-12-03T12:05:00Z"),
    ]
    found = unrecorded(pods, records, pools)
    assert [(f.ip, f.reason, f.action) for f in found] == [
        ("172.18.1.5", "recorded_for_another_pod", leaks.ADOPT),
        ("172.18.1.6", "recorded_for_another_pod", leaks.ADOPT),
    ]
    assert "quarantined from pod ns/old" in found[1].detail
    conflict = record("172.18.1.5", pod="p", podUID="", quarantineUntil="2026-12-03T12:05:00Z")
    conflict["spec"]["releaseReason"] = "ip_conflict"
    (f,) = unrecorded([pod("p", ips=["172.18.1.5"])], [conflict], pools)
    assert (f.reason, f.action) == ("ip_conflict", "")


def test_an_address_in_two_pools_is_only_reported_unless_the_endpoint_names_one() -> None:
    pools = [pool("a", ["172.18.1.1-172.18.1.20"]), pool("b", ["172.18.1.5"])]
    (f,) = unrecorded([pod("p", ips=["172.18.1.5"])], [], pools)
    assert (f.pool, f.action) == ("a,b", "")
    assert "ambiguous" in f.detail
    ep = endpoint("p", "uid-p", [{"interface": "eth0", "ipv4": "172.18.1.5/16", "ipv4Pool": "b"}])
    (f,) = unrecorded([pod("p", ips=["172.18.1.5"])], [], pools, endpoints=[ep])
    assert (f.pool, f.action) == ("b", leaks.RECORD)


def test_adoption_is_the_record_the_pods_agent_would_have_written() -> None:
    owner = {"kind": "ReplicaSet", "name": "web-5d9", "controller": True, "uid": "rs"}
    p = pod("p", ips=["172.18.1.5"], metadata={"ownerReferences": [owner]})
    f = Finding(leaks.IP_WITHOUT_RECORD, "no_record", "", ip="172.18.1.5", pool="a", interface="net1")
    spec = leaks.adoption(p, f)
    assert spec == {
        "ip": "172.18.1.5", "pool": "a", "ipVersion": 4, "namespace": "ns", "pod": "p", "podUID": "uid-p",
        "interface": "net1", "node": "node1", "containerID": "", "cleanGateway": False,
        "ownerKind": "ReplicaSet", "ownerName": "web-5d9",
    }  # fmt: skip
    labels = new_record("172.18.1.5", spec)["metadata"]["labels"]
    assert labels["ipam.spidernet.io/pod-uid"] == "uid-p"


# --- kind 3


def test_the_status_is_derived_as_the_controller_derives_it() -> None:
    p = pool("a", ["172.18.1.1-172.18.1.10"], excludeIPs=["172.18.1.10"])
    records = [record("172.18.1.1"), record("172.18.1.2", pod="q")]
    allocated = {
        "172.18.1.1": {"pod": "ns/p", "podUid": "uid-p"},
        "172.18.1.2": {"pod": "ns/q", "podUid": "uid-q"},
    }
    assert leaks.pool_status(p, records) == controller_pool_status(p, allocated)
    assert leaks.pool_status(p, []) == controller_pool_status(p, {})


def with_status(p: dict[str, Any], records: list[dict[str, Any]], **override: Any) -> dict[str, Any]:
    return {**p, "status": {**leaks.pool_status(p, records), **override}}


def test_status_drift_counts_and_addresses() -> None:
    records = [record("172.18.1.1"), record("172.18.1.2", pod="q")]
    right = with_status(pool("a", ["172.18.1.1-172.18.1.10"]), records)
    counted = with_status(pool("b", ["172.18.1.1-172.18.1.10"]), [], allocatedIPCount=5)
    listed = with_status(pool("c", ["172.18.1.1-172.18.1.10"]), [record("172.18.1.9", "c")])
    total = with_status(pool("d", ["172.18.1.1-172.18.1.10"]), [], totalIPCount=99)
    records += [record("172.18.1.3", "c", pod="r")]
    found = {f.pool: f for f in leaks.status_drift([right, counted, listed, total], records, NOW, 30.0)}
    assert sorted(found) == ["b", "c", "d"]
    assert found["b"].reason == "count_differs"
    assert "status says 5 allocated, the records 0" in found["b"].detail
    assert "lists 172.18.1.9 without a record" in found["c"].detail
    assert "misses 172.18.1.3" in found["c"].detail
    assert found["c"].reason == "status_differs"  # (one each way: the count is right)
    assert "status says 99 in total, the spec 10" in found["d"].detail
    assert all(f.action == leaks.RECOUNT for f in found.values())


def test_status_the_controller_is_about_to_write_is_no_drift() -> None:
    older = [record("172.18.1.1")]
    p = with_status(pool("a", ["172.18.1.1-172.18.1.10"]), older)
    newer = [*older, record("172.18.1.2", pod="q", created=FRESH)]
    assert leaks.status_drift([p], newer, NOW, 30.0) == []
    (f,) = leaks.status_drift([p], newer, NOW, 0.0)
    assert "misses 172.18.1.2" in f.detail
    fresh_pool = pool("n", ["172.18.2.1"], metadata={"creationTimestamp": FRESH})
    assert leaks.status_drift([fresh_pool], [], NOW, 30.0) == []
    (f,) = leaks.status_drift([pool("n", ["172.18.2.1"])], [], NOW, 30.0)
    assert f.reason == "no_status"
    assert "is spiderpool-controller running?" in f.detail


def test_status_patch_is_a_compare_and_swap() -> None:
    p = pool("a", ["172.18.1.1"])
    want = leaks.pool_status(p, [])
    assert leaks.status_patch(p, want) == {"metadata": {"resourceVersion": "7"}, "status": want}
    assert leaks.status_differs(p, want)
    assert not leaks.status_differs({**p, "status": want}, want)


# --- all kinds together


def test_find_reports_an_address_a_live_pod_holds_once_and_scopes_pools_by_namespace() -> None:
    a = pool("a", ["172.18.1.1-172.18.1.20"])
    b = pool("b", ["172.18.5.1-172.18.5.20"])
    records = [record("172.18.1.5", pod="gone"), record("172.18.5.1", "b", ns="other", pod="gone")]
    cluster = Cluster(
        pools=[with_status(a, []), with_status(b, [])],
        records=records,
        pods=[pod("p", ips=["172.18.1.5"])],
        nodes=[node()],
    )
    found = leaks.find(cluster, NOW, SETTINGS, "ns")
    assert [(f.kind, f.ip or f.pool) for f in found] == [
        (leaks.IP_WITHOUT_RECORD, "172.18.1.5"),
        (leaks.POOL_STATUS, "a"),  # (b: no record or pod of ns in it)
    ]
    everywhere = leaks.find(cluster, NOW, SETTINGS)
    assert [(f.kind, f.ip or f.pool) for f in everywhere] == [
        (leaks.RECORD_WITHOUT_POD, "172.18.5.1"),
        (leaks.IP_WITHOUT_RECORD, "172.18.1.5"),
        (leaks.POOL_STATUS, "a"),
        (leaks.POOL_STATUS, "b"),
    ]
    clean = Cluster(pools=[with_status(a, records[:1])], records=[record("172.18.1.5", pod="p")], pods=cluster.pods)
    clean.pools = [with_status(a, clean.records)]
    assert leaks.find(clean, NOW, SETTINGS) == []


def test_holders_elsewhere_are_the_other_namespaces_pods_the_records_name() -> None:
    cluster = Cluster(
        records=[record("172.18.1.5", ns="other", pod="q"), record("172.18.1.6", pod="p")],
        pods=[pod("p", ips=["172.18.1.5", "172.18.1.6"])],
    )
    assert leaks.holders_elsewhere(cluster, "ns") == {("other", "q")}


def test_lease_ages_from_renew_time() -> None:
    leases = [
        {"metadata": {"name": "node1"}, "spec": {"renewTime": "2026-12-03T11:59:00.000000Z"}},
        {"metadata": {"name": "node2"}, "spec": {}},
    ]
    assert leaks.lease_ages(leases, NOW) == {"node1": 60.0}


# --- kind 4: the agent's answer


def test_the_agent_lists_global_addresses_per_interface() -> None:
    entries = [
        ("eth0", "172.18.1.5", 16),
        ("eth0", "fd00::5", 64),
        ("eth0", "fe80::1", 64),
        ("lo", "127.0.0.1", 8),
        ("net1", "169.254.1.1", 16),
        ("net1", "172.18.2.5", 24),
        ("net1", "172.18.2.5", 24),
        ("bad", "not-an-ip", 1),
    ]
    assert debug.interfaces(entries) == [
        {"name": "eth0", "addresses": ["172.18.1.5/16", "fd00::5/64"]},
        {"name": "net1", "addresses": ["172.18.2.5/24"]},
    ]
    body = debug.answer("node1", [("cni-1", entries[:1]), ("cni-2", "timed out after 1.0s")], 3)
    assert body == {
        "node": "node1",
        "namespaces": [
            {"name": "cni-1", "interfaces": [{"name": "eth0", "addresses": ["172.18.1.5/16"]}]},
            {"name": "cni-2", "error": "timed out after 1.0s"},
        ],
        "truncated": 3,
    }


def test_netns_addresses_no_record_holds() -> None:
    handed = leaks.handed_out([pool("a", ["172.18.1.1-172.18.1.20"])], [])
    answer = {
        "node": "node1",
        "namespaces": [
            {
                "name": "cni-1",
                "interfaces": [{"name": "eth0", "addresses": ["172.18.1.5/16", "172.18.1.6/16", "10.0.0.1/8"]}],
            },
            {"name": "cni-2", "interfaces": [{"name": "net1", "addresses": ["172.18.1.7/16", "172.18.1.8/16"]}]},
            {"name": "cni-3", "error": "timed out after 1.0s"},
        ],
        "truncated": 2,
    }
    found, warnings = leaks.netns_addresses(answer, [record("172.18.1.6")], handed, "node1", {"172.18.1.8"})
    assert [(f.kind, f.ip, f.pool, f.interface, f.action) for f in found] == [
        (leaks.NETNS_ADDRESS, "172.18.1.5", "a", "eth0", ""),
        (leaks.NETNS_ADDRESS, "172.18.1.7", "a", "net1", ""),
    ]
    assert "netns cni-1 of node node1" in found[0].detail
    assert warnings == [
        "node node1: 2 pod namespaces were not read (limit or deadline)",
        "node node1: netns cni-3: timed out after 1.0s",
    ]
    _, warnings = leaks.netns_addresses({"error": "cannot list /x: No such file"}, [], handed, "node1")
    assert warnings == ["node node1: cannot list /x: No such file"]


def test_the_agent_pod_is_a_running_one_and_its_metrics_port() -> None:
    old = {"metadata": {"name": "a1", "creationTimestamp": OLD}, "status": {"phase": "Running"}}
    going = {
        "metadata": {"name": "a2", "creationTimestamp": FRESH, "deletionTimestamp": FRESH},
        "status": {"phase": "Running"},
    }
    pending = {"metadata": {"name": "a3", "creationTimestamp": FRESH}, "status": {"phase": "Pending"}}
    assert leaks.agent_pod([pending, going, old]) == old
    assert leaks.agent_pod([]) is None
    ported = {"spec": {"containers": [{"ports": [{"name": "http", "containerPort": 80}]}, {"ports": [
        {"name": "metrics", "containerPort": 6711}]}]}}  # fmt: skip
    # (the port is found as doctor finds it: one rule for both commands)
    assert agent_port(ported) == 6711
    assert agent_port({}) == AGENT_PORT


# --- output


def test_age_summary_and_rows() -> None:
    assert [leaks.age(t, NOW) for t in (FRESH, "2026-12-03T11:45:00Z", OLD, "2026-11-30T12:00:00Z", "")] == [
        "10s",
        "15m",
        "1h",
        "3d",
        "",
    ]
    found = [
        Finding(leaks.RECORD_WITHOUT_POD, "pod_deleted", "d", leaks.QUARANTINE, ip="172.18.1.1", pod="p", since=OLD),
        Finding(leaks.RECORD_WITHOUT_POD, "pod_deleted", "d", leaks.QUARANTINE, ip="172.18.1.2"),
        Finding(leaks.POOL_STATUS, "count_differs", "d", leaks.RECOUNT, pool="a"),
    ]
    assert leaks.summary_line(found) == "3 findings: 2 records without a live pod, 1 pool status unlike its records."
    assert leaks.summary_line([]) == "No leaks found."
    one = leaks.summary_line(found[2:], "namespace ns")
    assert one == "1 finding (namespace ns): 1 pool status unlike its records."
    headers, rows = leaks.table_rows(found[:1], NOW, wide=False)
    assert headers == ["KIND", "IP", "POOL", "POD", "NODE", "AGE", "REASON"]
    assert rows == [[leaks.RECORD_WITHOUT_POD, "172.18.1.1", "", "/p", "", "1h", "pod_deleted"]]
    headers, rows = leaks.table_rows(found[2:], NOW, wide=True)
    assert headers[-4:] == ["INTERFACE", "POD UID", "FIX", "DETAIL"]
    assert rows[0][-2:] == [leaks.RECOUNT, "d"]
    doc = found[0].as_dict()
    assert doc["fix"] == leaks.QUARANTINE
    assert "fixed" not in doc
    found[0].fixed, found[0].result = True, "quarantined"
    assert (found[0].as_dict()["fixed"], found[0].as_dict()["result"]) == (True, "quarantined")


def test_the_leaks_command_line() -> None:
    args = parser().parse_args(["leaks", "--node", "node1", "--fix", "-y", "-o", "json", "--min-age", "0"])
    assert (args.command, args.node, args.fix, args.yes, args.output, args.min_age) == (
        "leaks",
        "node1",
        True,
        True,
        "json",
        0.0,
    )
    defaults = parser().parse_args(["leaks"])
    assert (defaults.namespace, defaults.all_namespaces, defaults.fix, defaults.min_age) == (None, False, False, 30.0)
