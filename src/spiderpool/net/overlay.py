"""The coordinator's overlay mode: eth0 comes from the cluster's CNI (Calico, Cilium, Flannel, a
bridge), and an underlay NIC (macvlan as ``net1``) is added beside it.

In the pod:
- eth0 keeps the main table's default route (unless net1 is the default-route NIC); the overlay pod
  CIDRs, the service CIDRs, the hijack CIDRs and the node's own addresses go ``via <eth0's gateway>``
  in the main table, so they never leave by the underlay NIC whatever its routes say;
- eth0's default route is also in table 100, chosen by ``from <eth0 IP>``: answers to what came in on
  eth0 leave by eth0;
- net1's routes are copied into its own table (101 for net1, chosen by ``from <net1 IP>``) and its
  default route leaves the main table; the node's addresses are in that table too, ``via <eth0's
  gateway>``, because the node reaches net1's address through eth0 (below) and its answers must go
  back that way. The underlay subnet itself stays reachable from the main table through net1;
- when net1 is the default-route NIC instead, eth0's routes move to table 100 (with its rules) and
  net1 takes the main table's default route.

On the node: ``<net1 IP> dev <eth0's host end> table 500`` and a permanent neighbour (a node cannot
reach its own macvlan children through their parent NIC), under the shared rule ``from all lookup
500``. ADD records the routes (a file per pod NIC in the agent's state directory) and DEL removes
them: at DEL the pod's namespace may be gone, and the routes last until eth0's host end does.
Only families eth0 has a gateway of are routed this way (an IPv4-only overlay routes no IPv6).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import socket
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from spiderpool.net import fastnl
from spiderpool.net.veth import (
    POD_VETH,
    RULE_PREF,
    SCOPE_LINK,
    NetError,
    PodIP,
    _af,
    _copy_routes,
    _del_default,
    _exists,
    _gone,
    _in_pod,
    _tune_nic,
    drop_rule_if_empty,
    host_route,
    node_ips,
)
from spiderpool.net.vethconf import VethConfig

MAIN = 254


def _family(address: str) -> int:
    return ipaddress.ip_address(address).version


def _gateways(pod: IPRoute, oif: int) -> dict[int, str]:
    """The main table's default gateway through ``oif``, per family."""
    out: dict[int, str] = {}
    for route in pod.route("dump", table=MAIN):
        if route.get("RTA_OIF") == oif and route["dst_len"] == 0 and route.get("RTA_GATEWAY"):
            out.setdefault(4 if route["family"] == socket.AF_INET else 6, str(route.get("RTA_GATEWAY")))
    return out


def _addresses(pod: IPRoute, index: int) -> list[str]:
    return [str(a.get("IFA_ADDRESS")) for a in pod.addr("dump", index=index) if a["scope"] == 0]


def _via(pod: IPRoute, dst: str, gateway: str, oif: int, table: int) -> None:
    net = ipaddress.ip_network(dst, strict=False)
    with _exists():
        pod.route(
            "add",
            family=_af(net.version),
            dst=str(net.network_address),
            dst_len=net.prefixlen,
            gateway=gateway,
            oif=oif,
            table=table,
        )


def _rules(pod: IPRoute, addresses: list[str], table: int) -> None:
    for address in addresses:
        family = _family(address)
        with _exists():
            pod.rule(
                "add",
                family=_af(family),
                src=address,
                src_len=32 if family == 4 else 128,
                table=table,
                priority=RULE_PREF,
            )


def setup(
    netns: str,
    ifname: str,
    ips: list[PodIP],
    table: int,
    cfg: VethConfig,
    *,
    default_nic: bool,
    first: str = "eth0",
    first_table: int = 100,
    record: Path | None = None,
) -> None:
    """Route ``ifname`` (an underlay NIC) beside the cluster CNI's ``first`` NIC; see the module.
    The node's routes made are written to ``record`` (JSON), for DEL: at DEL the pod's namespace
    may already be gone, while the routes stay until the cluster CNI deletes eth0's host end."""
    nodes = node_ips()

    def pod_side(pod: IPRoute) -> tuple[int, str, set[int]]:
        eth, nic = fastnl.index(first), fastnl.index(ifname)
        if eth is None:
            raise NetError(f"overlay mode: the pod has no {first} (the cluster CNI's NIC)")
        if nic is None:
            raise NetError(f"interface {ifname} is not in the pod")
        if fastnl.index(POD_VETH) is not None:
            raise NetError(
                f"overlay mode: the pod has {POD_VETH}, so {first} is an underlay NIC; use mode underlay or auto"
            )
        (link,) = pod.link("get", index=eth)
        info = link.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
        if kind != "veth":
            raise NetError(
                f"overlay mode: {first} is a {kind or 'device'} link, not the cluster CNI's veth; if {first} is an"
                " underlay NIC, chain the coordinator to it as well (underlay mode)"
            )
        peer = link.get_attr("IFLA_LINK")
        if not peer:
            raise NetError(f"overlay mode: {first} is not a veth, so the node has no end of it to route through")
        gateways = _gateways(pod, eth)
        eth_addresses = _addresses(pod, eth)
        if default_nic:
            for route in _copy_routes(pod, eth, first_table):
                if route["dst_len"] == 0:
                    _del_default(pod, route, eth)
            for ip in ips:
                if ip.gateway:
                    default = "0.0.0.0" if ip.family == 4 else "::"
                    with _exists():
                        pod.route("add", dst=default, dst_len=0, gateway=ip.gateway, oif=nic)
        else:
            for route in _copy_routes(pod, nic, table):
                if route["dst_len"] == 0:
                    _del_default(pod, route, nic)
            for ip in ips:
                if ip.gateway:
                    default = "0.0.0.0" if ip.family == 4 else "::"
                    with _exists():
                        pod.route("add", dst=default, dst_len=0, gateway=ip.gateway, oif=nic, table=table)
            for family, gateway in gateways.items():
                _via(pod, "0.0.0.0/0" if family == 4 else "::/0", gateway, eth, first_table)
            _rules(pod, [ip.address for ip in ips], table)
        _rules(pod, eth_addresses, first_table)
        for family, gateway in gateways.items():
            for cidr in cfg.hijack:
                if ipaddress.ip_network(cidr).version == family:
                    _via(pod, cidr, gateway, eth, MAIN)
            for node in nodes:
                if _family(node) == family:
                    _via(pod, node, gateway, eth, MAIN)
                    if not default_nic:
                        _via(pod, node, gateway, eth, table)
        # txQueueLen and policyRoutes for the underlay NIC, in the table its routes are in
        _tune_nic(pod, nic, ips, cfg, table=MAIN if default_nic else table)
        return int(peer), fastnl.hwaddr(first), set(gateways)

    peer, mac, families = _in_pod(netns, pod_side)
    made = [{"dst": ip.address, "family": ip.family, "oif": peer} for ip in ips if ip.family in families]
    if record is not None and made:
        record.parent.mkdir(parents=True, exist_ok=True)
        tmp = record.with_suffix(".tmp")
        tmp.write_text(json.dumps(made))
        tmp.replace(record)
    with IPRoute() as host:
        for ip in ips:
            if ip.family not in families:
                continue
            mine = [n for n in nodes if _family(n) == ip.family]
            prefsrc = None
            if mine:  # the node answers from an address the pod routes back through eth0
                subnet = ipaddress.ip_network(f"{ip.address}/{ip.prefix}", strict=False)
                prefsrc = ([n for n in mine if ipaddress.ip_address(n) in subnet] or mine)[0]
            host_route(host, ip, peer, mac, cfg.host_rule_table, prefsrc)


def _forget(host: IPRoute, made: list[dict[str, Any]], table: int) -> None:
    for route in made:
        family, dst, oif = int(route["family"]), str(route["dst"]), int(route["oif"])
        with _gone():
            # (the scope must be the route's: the kernel matches it on delete)
            host.route(
                "del",
                family=_af(family),
                dst=dst,
                dst_len=32 if family == 4 else 128,
                oif=oif,
                table=table,
                scope=SCOPE_LINK,
            )
        with _gone():
            host.neigh("del", dst=dst, ifindex=oif)


def teardown(host_rule_table: int, record: Path | None) -> int:
    """Remove the node's routes to the pod's underlay addresses, as ``setup`` recorded them (the
    pod's namespace may be gone by DEL, the routes stay until the cluster CNI deletes eth0's host
    end); drop the shared rule with the table's last route. Returns the routes removed."""
    made: list[dict[str, Any]] = []
    if record is not None:
        with contextlib.suppress(OSError, ValueError):
            made = list(json.loads(record.read_text()))
    with IPRoute() as host:
        _forget(host, made, host_rule_table)
        drop_rule_if_empty(host, host_rule_table)
    if record is not None:
        record.unlink(missing_ok=True)
    return len(made)
