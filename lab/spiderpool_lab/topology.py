"""The lab's L2 fabric: a switch namespace with one bridge per underlay, and node namespaces.

Defaults follow the reference walkthrough so its manifests work verbatim: the underlay is
172.18.0.0/16 with the gateway 172.18.0.1 on the switch side, nodes from 172.18.0.2 on, each
node's underlay interface named ``eth0``. An IPv6 prefix sits beside it for dual-stack tests.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from dataclasses import dataclass

from spiderpool_lab import netns

SERVICE_CIDR = "10.96.0.0/16"
#: first address of the service range, the ``kubernetes`` Service
SERVICE_IP = "10.96.0.1"
#: the control plane's address on the first underlay (as kind's control-plane node has one on its
#: LAN): kubelets, pods and webhooks reach the apiserver there, and the apiserver reaches them
CONTROL_PLANE_IP = "172.18.0.250"
APISERVER_PORT = 6443


@dataclass(frozen=True)
class Underlay:
    """One L2 segment: a bridge in the switch namespace, a gateway on it, a NIC on every node."""

    bridge: str
    ipv4: str
    ipv6: str
    #: name of this underlay's interface inside every node namespace
    node_if: str

    @property
    def gateway4(self) -> str:
        return str(ipaddress.ip_network(self.ipv4)[1])

    @property
    def gateway6(self) -> str:
        return str(ipaddress.ip_network(self.ipv6)[1])

    def node_ip4(self, index: int) -> str:
        """Address of node ``index`` (1-based): gateway + index."""
        return str(ipaddress.ip_network(self.ipv4)[1 + index])

    def node_ip6(self, index: int) -> str:
        return str(ipaddress.ip_network(self.ipv6)[1 + index])

    @property
    def prefix4(self) -> int:
        return ipaddress.ip_network(self.ipv4).prefixlen

    @property
    def prefix6(self) -> int:
        return ipaddress.ip_network(self.ipv6).prefixlen


UNDERLAYS: tuple[Underlay, ...] = (
    Underlay(bridge="br0", ipv4="172.18.0.0/16", ipv6="fd00:172:18::/64", node_if="eth0"),
    # a second underlay subnet, for pods with a NIC in each (multi-NIC policy routing)
    Underlay(bridge="br1", ipv4="172.19.0.0/16", ipv6="fd00:172:19::/64", node_if="eth1"),
)

#: pod CIDR for overlay-style test networks (ptp, bridge), beside the underlays
POD_CIDR = "10.244.0.0/16"

#: every lab subnet; the root namespace must never have a route to any of them
LAB_SUBNETS = (*(u.ipv4 for u in UNDERLAYS), *(u.ipv6 for u in UNDERLAYS), SERVICE_CIDR, POD_CIDR)

_QUIET_V6 = {
    # Addresses are static; duplicate address detection would only delay them.
    "net.ipv6.conf.all.accept_dad": "0",
    "net.ipv6.conf.default.accept_dad": "0",
    "net.ipv6.conf.all.accept_ra": "0",
    "net.ipv6.conf.default.accept_ra": "0",
}


def switch_netns(prefix: str) -> str:
    return f"{prefix}-switch"


def node_netns(prefix: str, node: str) -> str:
    return f"{prefix}-{node}"


def node_name(index: int) -> str:
    return f"node{index}"


def control_plane_netns(prefix: str) -> str:
    return f"{prefix}-cp"


def ensure_control_plane(prefix: str) -> str:
    """The control plane's namespace on the first underlay (idempotent); return its name."""
    sw, ns = switch_netns(prefix), control_plane_netns(prefix)
    u = UNDERLAYS[0]
    netns.add(ns)
    netns.sysctl(ns, _QUIET_V6)
    present = {str(link["ifname"]) for link in netns.ip_json(ns, ["link", "show"])}
    peer = "cp-eth0"
    if u.node_if not in present:
        netns.ip(ns, ["link", "add", u.node_if, "type", "veth", "peer", "name", peer, "netns", sw])
    netns.ip_batch(sw, [f"link set {peer} master {u.bridge}", f"link set {peer} up"])
    netns.ip_batch(
        ns,
        [
            f"link set {u.node_if} up",
            f"addr replace {CONTROL_PLANE_IP}/{u.prefix4} dev {u.node_if}",
            f"route replace default via {u.gateway4} dev {u.node_if}",
        ],
    )
    return ns


def ensure_switch(prefix: str) -> None:
    """Create the switch namespace with its bridges and gateway addresses (idempotent)."""
    ns = switch_netns(prefix)
    netns.add(ns)
    netns.sysctl(ns, {**_QUIET_V6, "net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "1"})
    present = {str(link["ifname"]) for link in netns.ip_json(ns, ["link", "show"])}
    cmds = []
    for u in UNDERLAYS:
        if u.bridge not in present:
            cmds.append(f"link add {u.bridge} type bridge")
        cmds += [
            f"link set {u.bridge} up",
            f"addr replace {u.gateway4}/{u.prefix4} dev {u.bridge}",
            f"addr replace {u.gateway6}/{u.prefix6} dev {u.bridge} nodad",
        ]
    netns.ip_batch(ns, cmds)


def ensure_node(prefix: str, index: int) -> str:
    """Create node ``index``'s namespace wired to every underlay; return its namespace name."""
    name = node_name(index)
    sw, ns = switch_netns(prefix), node_netns(prefix, name)
    netns.add(ns)
    netns.sysctl(
        ns,
        {
            **_QUIET_V6,
            "net.ipv4.ip_forward": "1",
            "net.ipv6.conf.all.forwarding": "1",
            # a kubelet host lets its processes ping without raw-socket privileges
            "net.ipv4.ping_group_range": "0 2147483647",
        },
    )
    present = {str(link["ifname"]) for link in netns.ip_json(ns, ["link", "show"])}
    for u in UNDERLAYS:
        peer = f"{name}-{u.node_if}"
        if u.node_if not in present:
            netns.ip(ns, ["link", "add", u.node_if, "type", "veth", "peer", "name", peer, "netns", sw])
        netns.ip_batch(sw, [f"link set {peer} master {u.bridge}", f"link set {peer} up"])
        cmds = [
            f"link set {u.node_if} up",
            f"addr replace {u.node_ip4(index)}/{u.prefix4} dev {u.node_if}",
            f"addr replace {u.node_ip6(index)}/{u.prefix6} dev {u.node_if} nodad",
        ]
        if u is UNDERLAYS[0]:
            cmds += [
                f"route replace default via {u.gateway4} dev {u.node_if}",
                f"route replace ::/0 via {u.gateway6} dev {u.node_if}",
            ]
        netns.ip_batch(ns, cmds)
    return ns


def set_node_cables(prefix: str, node: str, *, up: bool) -> None:
    """Plug a node's cables into the switch, or pull them (its links in the switch namespace go
    down: the node sees no carrier on any underlay, as when its switch port or cable fails)."""
    state = "up" if up else "down"
    netns.ip_batch(switch_netns(prefix), [f"link set {node}-{u.node_if} {state}" for u in UNDERLAYS])


def remove_node(prefix: str, node: str) -> None:
    """Delete a node namespace; its veth peers in the switch go with it."""
    netns.delete(node_netns(prefix, node))


def lab_namespaces(prefix: str) -> list[str]:
    return [n for n in netns.names() if n.startswith(prefix + "-")]


def root_routes_to_lab() -> list[str]:
    """Routes in the root namespace that lead to a lab subnet (must always be empty)."""
    leaks = []
    nets = [ipaddress.ip_network(s) for s in LAB_SUBNETS]
    for family in ("-4", "-6"):
        out = subprocess.run(["ip", family, "-j", "route", "show", "table", "all"], capture_output=True, text=True)
        for route in json.loads(out.stdout or "[]"):
            dst = route.get("dst", "")
            if dst in ("", "default") or route.get("type") in ("local", "broadcast", "multicast"):
                continue
            try:
                net = ipaddress.ip_network(dst, strict=False)
            except ValueError:
                continue
            if any(net.version == n.version and net.overlaps(n) for n in nets):
                leaks.append(f"{dst} {route.get('dev', '')}".strip())
    return leaks
