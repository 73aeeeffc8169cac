"""A pod with a NIC in each of two underlay subnets (Multus + macvlan + spiderpool + veth): it answers
on both addresses, and each reply leaves by the NIC its request came in on (policy routing)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from spiderpool_lab import netns, procs, topology
from spiderpool_lab.cluster import Lab
from tests.dataplane.conftest import use_multus
from tests.dataplane.test_veth import conflist
from tests.helpers import in_netns, pool_manifest, spiderpool_cli, spiderpool_json, wait_gone, wait_running
from tests.ipam.conftest import wait_no_records
from tests.stack import Agents

NS = "mn"
OPT_NS = "mn-opt"  # a namespace of its own: the other test's may still be terminating
# Clients beyond each subnet's gateway (addresses on the switch's loopback): a reply reaches them only
# through the gateway of the NIC it leaves by.
CLIENT0, CLIENT1 = "10.41.0.1", "10.42.0.1"


def net1_nad() -> str:
    config = {
        "cniVersion": "0.3.1",
        "name": "macvlan-net1",
        "plugins": [
            {"type": "macvlan", "master": "eth1", "mode": "bridge", "ipam": {"type": "spiderpool"}},
            {"type": "veth"},
        ],
    }
    return json.dumps(
        {
            "apiVersion": "k8s.cni.cncf.io/v1",
            "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": "macvlan-net1", "namespace": NS},
            "spec": {"config": json.dumps(config)},
        }
    )


def pod(name: str, default_nic: str | None = None) -> str:
    extra = {"ipam.spidernet.io/default-route-nic": default_nic} if default_nic else {}
    return json.dumps(_pod(name, extra))


def _pod(name: str, extra: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {"app": name},
            "annotations": {
                **extra,
                "k8s.v1.cni.cncf.io/networks": "macvlan-net1",
                "ipam.spidernet.io/ippools": json.dumps(
                    [
                        {"interface": "eth0", "ipv4": ["p-mn0"]},
                        {"interface": "net1", "ipv4": ["p-mn1"], "cleangateway": True},
                    ]
                ),
            },
        },
        "spec": {
            "nodeName": "node1",
            "containers": [{"name": "c", "image": "registry.invalid/app:1", "ports": [{"containerPort": 80}]}],
        },
    }


@pytest.fixture
def multus(agents: Agents) -> Iterator[Agents]:
    lab = agents.lab
    use_multus(lab, conflist())
    switch = topology.switch_netns(lab.prefix)
    netns.ip_batch(switch, [f"addr replace {CLIENT0}/32 dev lo", f"addr replace {CLIENT1}/32 dev lo"])
    yield agents
    netns.ip_batch(switch, [f"addr del {CLIENT0}/32 dev lo", f"addr del {CLIENT1}/32 dev lo"])
    lab.reset_cni_config()


def tx_packets(lab: Lab, target: str) -> dict[str, int]:
    links = json.loads(in_netns(lab, target, "ip", "-s", "-j", "link").stdout)
    return {str(x["ifname"]): int(x["stats64"]["tx"]["packets"]) for x in links}


def from_switch(lab: Lab, argv: list[str]) -> subprocess.CompletedProcess[str]:
    switch = topology.switch_netns(lab.prefix)
    return subprocess.run(netns.exec_argv(switch, argv), capture_output=True, text=True, timeout=60)


def test_replies_leave_by_the_nic_the_request_came_in_on(multus: Agents) -> None:
    lab = multus.lab
    lab.kubectl("apply", "-f", "-", input_text=pool_manifest("p-mn0", "172.18.0.0/16", ["172.18.75.1-172.18.75.9"]))
    pool1 = pool_manifest("p-mn1", "172.19.0.0/16", ["172.19.75.1-172.19.75.9"], gateway="172.19.0.1")
    lab.kubectl("apply", "-f", "-", input_text=pool1)
    lab.kubectl("create", "namespace", NS)
    try:
        lab.kubectl("apply", "-f", "-", input_text=net1_nad())
        lab.kubectl("apply", "-f", "-", input_text=pod("two-subnets"))
        # the same, with the default route on net1 (ipam.spidernet.io/default-route-nic)
        lab.kubectl("apply", "-f", "-", input_text=pod("net1-default", "net1"))
        for name, default_nic, gateway, moved_nic, table in (
            ("two-subnets", "eth0", "172.18.0.1", "net1", "101"),
            ("net1-default", "net1", "172.19.0.1", "eth0", "100"),
        ):
            wait_running(lab, NS, f"app={name}", 1)
            target = f"{NS}/{name}"
            addrs: dict[str, Any] = {
                str(i["ifname"]): [a["local"] for a in i["addr_info"] if a["family"] == "inet"]
                for i in json.loads(in_netns(lab, target, "ip", "-j", "addr").stdout)
            }
            (ip0,), (ip1,) = addrs["eth0"], addrs["net1"]
            assert ip0.startswith("172.18.75.")
            assert ip1.startswith("172.19.75.")
            # `kubectl spiderpool why`: a section per NIC, each with the pool it took and the pod's address
            why = spiderpool_json(lab, "why", target)
            assert [(n["interface"], [i["ip"] for i in n["ips"]]) for n in why["nics"]] == [
                ("eth0", [ip0]),
                ("net1", [ip1]),
            ], why
            assert [[(p["pool"], p["verdict"]) for p in n["pools"]] for n in why["nics"]] == [
                [("p-mn0", "chosen")],
                [("p-mn1", "chosen")],
            ], why
            assert why["nics"][1]["network"] == f"{NS}/macvlan-net1", why
            text = spiderpool_cli(lab, "why", target).stdout
            assert "NIC eth0" in text, text
            assert f"NIC net1 (network {NS}/macvlan-net1)" in text, text
            routes = json.loads(in_netns(lab, target, "ip", "-j", "route").stdout)
            (default,) = [r for r in routes if r["dst"] == "default"]
            assert (default["gateway"], default["dev"]) == (gateway, default_nic), routes
            moved_ip = ip1 if moved_nic == "net1" else ip0
            rules = json.loads(in_netns(lab, target, "ip", "-j", "rule").stdout)
            assert [r for r in rules if r.get("src") == moved_ip and str(r.get("table")) == table], rules

            for client, ip, nic, other in ((CLIENT0, ip0, "eth0", "net1"), (CLIENT1, ip1, "net1", "eth0")):
                url = f"http://{ip}/"
                procs.wait_for(  # the pod's server may start a moment after the pod reports Running
                    lambda client=client, url=url: (
                        from_switch(lab, ["curl", "-sS", "--max-time", "5", "--interface", client, url]).returncode == 0
                    ),
                    timeout=30,
                    what=f"{client} -> {url}",
                )
                http = from_switch(lab, ["curl", "-sS", "--max-time", "5", "--interface", client, url])
                assert json.loads(http.stdout)["client"] == client
                before = tx_packets(lab, target)
                ping = from_switch(lab, ["ping", "-c", "20", "-i", "0.05", "-W", "2", "-I", client, ip])
                assert " 0% packet loss" in ping.stdout, ping.stdout + ping.stderr
                after = tx_packets(lab, target)
                sent = {k: after[k] - before[k] for k in (nic, other)}
                assert sent[nic] >= 20, f"{name}: replies to {client} did not leave by {nic}: {sent}"
                # (a few packets of background chatter, ARP and neighbour discovery, are allowed)
                assert sent[other] < 10, f"{name}: replies to {client} leaked out of {other}: {sent}"
    finally:
        lab.kubectl("delete", "namespace", NS, "--wait=false")
    for name in ("two-subnets", "net1-default"):
        wait_gone(lab, NS, f"app={name}")
    wait_no_records(lab, NS, timeout=120)
    for pool in ("p-mn0", "p-mn1"):
        lab.kubectl("delete", "spiderippool", pool, "--wait=true", "--timeout=60s")


def test_a_second_nic_does_not_take_the_default_route(multus: Agents) -> None:
    """Upstream's multi-NIC layout as its users write it: a NAD on the second underlay (macvlan on
    eth1 + spiderpool + veth), ``ipam.spidernet.io/ippools`` in its order-based form and no
    cleangateway. The main table's default route stays on eth0; net1's is in net1's table."""
    lab = multus.lab
    ns = "mn-order"
    lab.kubectl("apply", "-f", "-", input_text=pool_manifest("p-ord0", "172.18.0.0/16", ["172.18.89.1-172.18.89.9"]))
    pool1 = pool_manifest("p-ord1", "172.19.0.0/16", ["172.19.89.1-172.19.89.9"], gateway="172.19.0.1")
    lab.kubectl("apply", "-f", "-", input_text=pool1)
    lab.kubectl("create", "namespace", ns)
    try:
        nad = json.loads(net1_nad())
        nad["metadata"]["namespace"] = ns
        lab.kubectl("apply", "-f", "-", input_text=json.dumps(nad))
        body = _pod("ordered", {})
        body["metadata"]["namespace"] = ns
        body["metadata"]["annotations"]["ipam.spidernet.io/ippools"] = json.dumps(
            [{"ipv4": ["p-ord0"]}, {"ipv4": ["p-ord1"]}]
        )
        lab.kubectl("apply", "-f", "-", input_text=json.dumps(body))
        wait_running(lab, ns, "app=ordered", 1)
        target = f"{ns}/ordered"
        main = json.loads(in_netns(lab, target, "ip", "-j", "route").stdout)
        assert [(r.get("gateway"), r["dev"]) for r in main if r["dst"] == "default"] == [("172.18.0.1", "eth0")], main
        assert " dev eth0 " in in_netns(lab, target, "ip", "route", "get", "8.8.8.8").stdout
        table = json.loads(in_netns(lab, target, "ip", "-j", "route", "show", "table", "101").stdout)
        assert [(r.get("gateway"), r["dev"]) for r in table if r["dst"] == "default"] == [("172.19.0.1", "net1")]
        links = json.loads(in_netns(lab, target, "ip", "-j", "addr", "show", "net1").stdout)
        (ip1,) = [a["local"] for a in links[0]["addr_info"] if a["family"] == "inet"]
        assert ip1.startswith("172.19.89.")
        # a reply from net1's address still leaves by net1 (net1's table), to a client beyond its gateway
        assert " dev net1 " in in_netns(lab, target, "ip", "route", "get", CLIENT1, "from", ip1).stdout
        ping = in_netns(lab, target, "ping", "-c", "2", "-W", "2", "-I", ip1, CLIENT1)
        assert " 0% packet loss" in ping.stdout, ping.stdout + ping.stderr
        ping = in_netns(lab, target, "ping", "-c", "2", "-W", "2", CLIENT0)  # the default route: eth0
        assert " 0% packet loss" in ping.stdout, ping.stdout + ping.stderr
    finally:
        lab.kubectl("delete", "namespace", ns, "--wait=false")
    wait_gone(lab, ns, "app=ordered")
    wait_no_records(lab, ns, timeout=120)
    for pool in ("p-ord0", "p-ord1"):
        lab.kubectl("delete", "spiderippool", pool, "--wait=true", "--timeout=60s")


def _nad(name: str, master: str, veth: dict[str, Any]) -> dict[str, Any]:
    return {
        "cniVersion": "0.3.1",
        "name": name,
        "plugins": [
            {"type": "macvlan", "master": master, "mode": "bridge", "ipam": {"type": "spiderpool"}},
            {"type": "veth", **veth},
        ],
    }


def test_policy_routes_tx_queue_and_link_address(agents: Agents) -> None:
    """``policyRoutes`` (main table for eth0, the NIC's own table for net1), ``txQueueLen`` and
    ``vethLinkAddress``: pools without a gateway, so a client beyond the router is reached only
    through the policy routes."""
    lab = agents.lab
    eth0 = _nad(
        "macvlan-conf",
        "eth0",
        {
            "service_cidr": [topology.SERVICE_CIDR],
            "policyRoutes": [{"dst": "10.41.0.0/16", "gw": "172.18.0.1"}],
            "txQueueLen": 2000,
            "vethLinkAddress": "169.254.100.1",
        },
    )
    net1 = _nad(
        "macvlan-net1", "eth1", {"policyRoutes": [{"dst": "10.42.0.0/16", "gw": "172.19.0.1"}], "txQueueLen": 3000}
    )
    use_multus(lab, eth0)
    switch = topology.switch_netns(lab.prefix)
    netns.ip_batch(switch, [f"addr replace {CLIENT0}/32 dev lo", f"addr replace {CLIENT1}/32 dev lo"])
    for name, subnet, ips in (
        ("p-opt0", "172.18.0.0/16", "172.18.76.1-172.18.76.9"),
        ("p-opt1", "172.19.0.0/16", "172.19.76.1-172.19.76.9"),
    ):
        manifest = json.loads(pool_manifest(name, subnet, [ips]))
        manifest["spec"].pop("gateway", None)
        lab.kubectl("apply", "-f", "-", input_text=json.dumps(manifest))
    lab.kubectl("create", "namespace", OPT_NS)
    try:
        nad = {
            "apiVersion": "k8s.cni.cncf.io/v1",
            "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": "macvlan-net1", "namespace": OPT_NS},
            "spec": {"config": json.dumps(net1)},
        }
        lab.kubectl("apply", "-f", "-", input_text=json.dumps(nad))
        # the same NIC with tunePodRoutes off: its routes, policy routes included, stay in the main table
        flat = _nad("macvlan-flat", "eth1", {**net1["plugins"][1], "tunePodRoutes": False, "txQueueLen": 4000})
        nad_flat = {**nad, "metadata": {"name": "macvlan-flat", "namespace": OPT_NS}}
        nad_flat["spec"] = {"config": json.dumps(flat)}
        lab.kubectl("apply", "-f", "-", input_text=json.dumps(nad_flat))
        body = _pod("tuned", {})
        body["metadata"]["namespace"] = OPT_NS
        body["metadata"]["annotations"]["ipam.spidernet.io/ippools"] = json.dumps(
            [{"interface": "eth0", "ipv4": ["p-opt0"]}, {"interface": "net1", "ipv4": ["p-opt1"]}]
        )
        lab.kubectl("apply", "-f", "-", input_text=json.dumps(body))
        wait_running(lab, OPT_NS, "app=tuned", 1)
        target = f"{OPT_NS}/tuned"
        links = {str(x["ifname"]): x for x in json.loads(in_netns(lab, target, "ip", "-j", "addr").stdout)}
        assert (links["eth0"]["txqlen"], links["net1"]["txqlen"]) == (2000, 3000)
        assert [f"{a['local']}/{a['prefixlen']}" for a in links["veth0"]["addr_info"] if a["family"] == "inet"] == [
            "169.254.100.1/32"
        ]
        (ip1,) = [a["local"] for a in links["net1"]["addr_info"] if a["family"] == "inet"]

        main = json.loads(in_netns(lab, target, "ip", "-j", "route").stdout)
        assert not [r for r in main if r["dst"] == "default"], main
        assert [
            r for r in main if r["dst"] == "10.41.0.0/16" and (r.get("gateway"), r["dev"]) == ("172.18.0.1", "eth0")
        ]
        assert not [r for r in main if r["dst"] == "10.42.0.0/16"], "net1's policy route leaked into the main table"
        table = json.loads(in_netns(lab, target, "ip", "-j", "route", "show", "table", "101").stdout)
        assert [
            r for r in table if r["dst"] == "10.42.0.0/16" and (r.get("gateway"), r["dev"]) == ("172.19.0.1", "net1")
        ]

        # Real packets: beyond the routers only through the policy routes.
        ping = in_netns(lab, target, "ping", "-c", "2", "-W", "2", CLIENT0)
        assert " 0% packet loss" in ping.stdout, ping.stdout + ping.stderr
        ping = in_netns(lab, target, "ping", "-c", "2", "-W", "2", "-I", ip1, CLIENT1)
        assert " 0% packet loss" in ping.stdout, ping.stdout + ping.stderr
        unrouted = in_netns(lab, target, "ping", "-c", "1", "-W", "2", CLIENT1)
        assert unrouted.returncode != 0, unrouted.stdout
        assert "unreachable" in unrouted.stderr.lower(), unrouted.stdout + unrouted.stderr

        flat_pod = _pod("flat", {})
        flat_pod["metadata"]["namespace"] = OPT_NS
        flat_pod["metadata"]["annotations"].update(
            {
                "k8s.v1.cni.cncf.io/networks": "macvlan-flat",
                "ipam.spidernet.io/ippools": json.dumps(
                    [{"interface": "eth0", "ipv4": ["p-opt0"]}, {"interface": "net1", "ipv4": ["p-opt1"]}]
                ),
            }
        )
        lab.kubectl("apply", "-f", "-", input_text=json.dumps(flat_pod))
        wait_running(lab, OPT_NS, "app=flat", 1)
        flat_links = json.loads(in_netns(lab, f"{OPT_NS}/flat", "ip", "-j", "addr").stdout)
        assert [x["txqlen"] for x in flat_links if x["ifname"] == "net1"] == [4000]
        flat_main = json.loads(in_netns(lab, f"{OPT_NS}/flat", "ip", "-j", "route").stdout)
        assert [r for r in flat_main if r["dst"] == "10.42.0.0/16" and r["dev"] == "net1"], flat_main
        # no table of its own: nothing routed there (a table that was never filled does not even exist)
        assert in_netns(lab, f"{OPT_NS}/flat", "ip", "route", "show", "table", "101").stdout.strip() == ""
        ping = in_netns(lab, f"{OPT_NS}/flat", "ping", "-c", "2", "-W", "2", CLIENT1)  # no -I: the main table
        assert " 0% packet loss" in ping.stdout, ping.stdout + ping.stderr
    finally:
        lab.kubectl("delete", "namespace", OPT_NS, "--wait=false")
        netns.ip_batch(switch, [f"addr del {CLIENT0}/32 dev lo", f"addr del {CLIENT1}/32 dev lo"])
        lab.reset_cni_config()
    wait_gone(lab, OPT_NS, "app=tuned")
    wait_gone(lab, OPT_NS, "app=flat")
    wait_no_records(lab, OPT_NS, timeout=120)
    for pool in ("p-opt0", "p-opt1"):
        lab.kubectl("delete", "spiderippool", pool, "--wait=true", "--timeout=60s")
