"""The kubectl plugin's pure parts: usage rows and warnings, who-has verdicts, rendering, completion."""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest
import yaml

from spiderpool.cli import render
from spiderpool.cli.main import complete, parser
from spiderpool.cli.usage import bar, pool_rows, subnet_rows
from spiderpool.cli.whohas import who_has
from spiderpool.cli.why import explain
from spiderpool.ipam.autopool import App, pool_labels, pool_name

NOW = datetime.datetime(2026, 12, 3, 12, 0, tzinfo=datetime.UTC)


def pool(name: str, ips: list[str], *, subnet: str = "172.18.0.0/16", **extra: Any) -> dict[str, Any]:
    meta = extra.pop("metadata", {})
    status = extra.pop("status", None)
    out: dict[str, Any] = {"metadata": {"name": name, **meta}, "spec": {"subnet": subnet, "ips": ips, **extra}}
    if status is not None:
        out["status"] = status
    return out


def record(ip: str, pool_name: str, pod: str = "p", **extra: Any) -> dict[str, Any]:
    spec = {"ip": ip, "pool": pool_name, "namespace": "ns", "pod": pod, "podUID": f"uid-{pod}", "node": "node1"}
    spec["interface"] = "eth0"
    return {"metadata": {"name": ip, "creationTimestamp": "2026-12-03T11:00:00Z"}, "spec": {**spec, **extra}}


def test_bar_shows_share_and_counts() -> None:
    assert bar(40, 60, width=6) == "▇▇▇▇▁▁ 40/60"
    assert bar(0, 10) == "▁" * 10 + " 0/10"
    assert bar(1, 1000) == "▇" + "▁" * 9 + " 1/1000"  # one used never looks like none
    assert bar(5, 0) == "▇" * 10 + " 5/0"  # more held than the pool has: full


def test_pool_rows_count_records_and_warn() -> None:
    pools = [
        pool("a", ["172.18.1.1-172.18.1.10"], excludeIPs=["172.18.1.10"], status={"allocatedIPCount": 8}),
        pool("b", ["172.18.1.5-172.18.1.6"]),
        pool(
            "c", ["172.18.2.1-172.18.2.4"], metadata={"deletionTimestamp": "2026-12-03T11:00:00Z", "finalizers": ["x"]}
        ),
        pool("d", ["not-an-ip"]),
    ]
    records = [record(f"172.18.1.{i}", "a", pod=f"p{i}") for i in range(1, 9)]
    records.append(record("172.18.1.9", "a", pod="q", podUID="", quarantineUntil="2026-12-03T13:00:00Z"))
    rows = {r.name: r for r in pool_rows(pools, records, NOW)}
    a = rows["a"]
    assert (a.used, a.total, a.free, a.quarantined) == (9, 9, 0, 1)
    assert "over 90% used" in a.warnings
    assert "overlaps b" in a.warnings
    assert "overlaps a" in rows["b"].warnings
    assert "status says 8 allocated, the records 9" in a.warnings
    assert any(w.startswith("stale finalizer: deleted 3600s ago") for w in rows["c"].warnings)
    assert rows["d"].warnings == ["spec does not parse: check ips, excludeIPs and subnet"]
    assert rows["b"].as_dict()["free"] == 2


def test_auto_pool_row_names_its_application_and_size() -> None:
    labels = {
        "ipam.spidernet.io/owner-application-kind": "Deployment",
        "ipam.spidernet.io/owner-application-namespace": "default",
        "ipam.spidernet.io/owner-application-name": "web",
    }
    auto = pool(
        "auto4-web-eth0-1",
        ["172.18.30.131-172.18.30.132"],
        metadata={"labels": labels, "annotations": {"ipam.spidernet.io/auto-pool-desired-ip-number": "2"}},
    )
    (row,) = pool_rows([auto], [], NOW)
    assert (row.application, row.desired, row.warnings) == ("Deployment/default/web", "2", [])


def test_subnet_rows_count_what_pools_took() -> None:
    subnets = [pool("s", ["172.18.30.131-172.18.30.140"])]
    pools = [pool("p", ["172.18.30.131-172.18.30.139"]), pool("other", ["10.0.0.1"], subnet="10.0.0.0/24")]
    (row,) = subnet_rows(subnets, pools)
    assert (row.in_pools, row.total, row.pools) == (9, 10, 1)
    assert row.warnings == []
    (full,) = subnet_rows(subnets, [pool("p", ["172.18.30.131-172.18.30.140"])])
    assert full.warnings == ["over 90% given to pools"]


@pytest.mark.parametrize(
    ("ip", "state", "words"),
    [
        ("172.18.1.1", "allocated", "held by pod ns/p1 on node node1"),
        ("172.18.1.9", "quarantined", "taken back from pod ns/q (pod gone); held for nobody until"),
        ("172.18.1.3", "free", "free in SpiderIPPool a"),
        ("172.18.1.10", "excluded", "in spec.excludeIPs of SpiderIPPool a"),
        ("172.18.1.4", "reserved", "reserved by SpiderReservedIP r"),
        ("172.18.30.135", "unpooled", "offered by SpiderSubnet s but in no SpiderIPPool yet"),
        ("192.0.2.1", "unpooled", "in no SpiderIPPool and no SpiderSubnet"),
    ],
)
def test_who_has_says_who_or_why_nobody(ip: str, state: str, words: str) -> None:
    pools = [pool("a", ["172.18.1.1-172.18.1.10"], excludeIPs=["172.18.1.10"])]
    subnets = [pool("s", ["172.18.30.131-172.18.30.140"])]
    reserved = [{"metadata": {"name": "r"}, "spec": {"ips": ["172.18.1.4"]}}]
    records = {
        "172.18.1.1": record("172.18.1.1", "a", pod="p1"),
        "172.18.1.9": record(
            "172.18.1.9", "a", pod="q", podUID="", quarantineUntil="2026-12-03T13:00:00Z", releaseReason="pod gone"
        ),
    }
    answer = who_has(ip, records.get(ip), pools, subnets, reserved, pod_uid="uid-p1")
    assert answer["state"] == state
    assert words in answer["explanation"]


def test_who_has_flags_a_record_that_outlived_its_pod() -> None:
    answer = who_has("172.18.1.1", record("172.18.1.1", "a", pod="p1"), [], [], [], pod_uid=None)
    assert answer["podAlive"] is False
    assert "that pod is gone" in answer["explanation"]


def test_render_table_json_yaml_and_fields() -> None:
    text = render.table(["NAME", "USAGE"], [["a", "▇▁ 1/2"], ["longer-name", None]])
    assert text.splitlines() == ["NAME          USAGE", "a             ▇▁ 1/2", "longer-name   -"]
    assert json.loads(render.structured({"a": [1]}, "json")) == {"a": [1]}
    assert yaml.safe_load(render.structured({"a": "▇"}, "yaml")) == {"a": "▇"}
    assert render.fields([("IP", "1.2.3.4"), ("Pod", None), ("In pools", ["a", "b"])]) == (
        "IP:        1.2.3.4\nIn pools:  a, b"
    )


def test_options_go_before_or_after_the_command() -> None:
    before = parser().parse_args(["-n", "x", "-o", "json", "--context", "c", "pools"])
    after = parser().parse_args(["pools", "-n", "x", "-o", "json", "--context", "c"])
    for args in (before, after):
        assert (args.namespace, args.output, args.context, args.command) == ("x", "json", "c", "pools")
    assert parser().parse_args(["who-has", "10.0.0.1", "-A"]).all_namespaces is True
    with pytest.raises(SystemExit):
        parser().parse_args(["pools", "-o", "xml"])


def test_completion_offers_commands_flags_and_formats() -> None:
    assert complete(["p"]) == ["pools"]
    assert complete(["pools", "-o", ""]) == ["table", "wide", "json", "yaml"]
    assert "--context" in complete(["pools", "--c"])
    # each command's own flags, read from its parser
    assert complete(["leaks", "--f"]) == ["--fix"]
    assert complete(["doctor", "--s"]) == ["--spiderpool-namespace"]
    assert "--fix" not in complete(["pools", "--"])


def _nad(name: str, ipam: dict[str, Any]) -> dict[str, Any]:
    config = {"cniVersion": "0.3.1", "plugins": [{"type": "macvlan", "master": "eth1", "ipam": ipam}]}
    return {"metadata": {"name": name, "namespace": "kube-system"}, "spec": {"config": json.dumps(config)}}


def test_why_explains_each_spiderpool_nic_and_skips_other_ipams() -> None:
    pods_pools = {
        "v4-node1": pool("v4-node1", ["172.18.40.10-172.18.40.11"], nodeName=["node1"]),
        "v4-net2": pool("v4-net2", ["172.19.40.10"], subnet="172.19.0.0/16"),
    }
    nads = {
        "kube-system/macvlan-eth0": _nad("macvlan-eth0", {"type": "spiderpool"}),
        "kube-system/net2": _nad("net2", {"type": "spiderpool", "default_ipv4_ippool": ["v4-net2"]}),
        "kube-system/other": _nad("other", {"type": "host-local", "subnet": "10.9.0.0/24"}),
    }
    networks = json.dumps([{"name": "net2", "namespace": "kube-system"}, {"name": "other", "namespace": "kube-system"}])
    pod = {
        "metadata": {
            "name": "p",
            "namespace": "ns",
            "uid": "uid-p",
            "annotations": {
                "k8s.v1.cni.cncf.io/networks": networks,
                "ipam.spidernet.io/ippools": json.dumps(
                    [{"interface": "eth0", "ipv4": ["v4-node1"]}, {"interface": "net1", "ipv4": ["v4-net2"]}]
                ),
            },
        },
        "spec": {"nodeName": "node2"},
    }
    answers = explain(
        pod,
        {"metadata": {"name": "ns"}},
        {"metadata": {"name": "node2", "labels": {}}},
        pods_pools,
        [record("172.19.40.10", "v4-net2", interface="net1")],
        nads,
        cluster_network="kube-system/macvlan-eth0",
        families=(4,),
    )
    assert [a.interface for a in answers] == ["eth0", "net1"]  # net2 (host-local) is not ours
    eth0, net1 = answers
    assert eth0.source.startswith("pod annotation ipam.spidernet.io/ippools")
    assert eth0.verdicts[0].pool == "v4-node1"
    assert "does not include node node2" in eth0.verdicts[0].verdict
    assert eth0.ips == []
    assert net1.network == "kube-system/net2"
    assert net1.source == eth0.source
    assert [(v.pool, v.verdict) for v in net1.verdicts] == [("v4-net2", "chosen")]
    assert net1.ips == [(4, "172.19.40.10", "v4-net2")]


def test_why_serves_an_ippool_annotation_naming_a_subnet_as_the_agent_does() -> None:
    """The reference walkthrough's form: ``ipam.spidernet.io/ippool`` names the SpiderSubnet; the
    agent serves it as the subnet annotation (the application's auto-pool), and so does why."""
    app = App("Deployment", "ns", "web", "uid-web")
    name = pool_name(4, app, "eth0")
    labels = pool_labels(app, "subnet-test", "eth0", 4, True, "172-18-0-0-16")
    auto = pool(name, ["172.18.30.131-172.18.30.133"], metadata={"labels": labels}, podAffinity=None)
    auto["spec"]["podAffinity"] = {"matchLabels": app.pod_labels()}
    pod = {
        "metadata": {
            "name": "web-1",
            "namespace": "ns",
            "uid": "uid-p",
            "annotations": {"ipam.spidernet.io/ippool": json.dumps({"ipv4": ["subnet-test"]})},
        },
        "spec": {"nodeName": "node1"},
    }
    (eth0,) = explain(
        pod,
        {"metadata": {"name": "ns"}},
        {"metadata": {"name": "node1"}},
        {name: auto},
        [record("172.18.30.131", name)],
        {},
        app=app,
        families=(4,),
        subnets={"subnet-test"},
    )
    assert eth0.source == "pod annotation ipam.spidernet.io/ippool, naming SpiderSubnet subnet-test: an auto-pool"
    assert eth0.auto_pool == name
    assert [(v.pool, v.verdict) for v in eth0.verdicts] == [(name, "chosen")]
    assert eth0.ips == [(4, "172.18.30.131", name)]
    # without the subnet (or with a pool of that name) the annotation names pools, as before
    (plain,) = explain(pod, {"metadata": {"name": "ns"}}, None, {name: auto}, [], {}, app=app, families=(4,))
    assert plain.source == "pod annotation ipam.spidernet.io/ippool"
    # the listing says which annotation is set, and that the ippool one named subnets
    sources = dict(eth0.sources)
    assert sources["pod annotation ipam.spidernet.io/subnet(s): an auto-pool"] == "not set"
    assert sources["pod annotation ipam.spidernet.io/ippool"].endswith(
        "(SpiderSubnets: served as the subnet annotation)"
    )
