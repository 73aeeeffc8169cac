"""The node-side work of the ``veth`` plugin, over netlink (pyroute2), run by the agent.

For the pod's first underlay NIC (eth0, macvlan): a veth pair, ``veth0`` in the pod and
``veth<first 11 of the container ID>`` on the node, so the node reaches its own macvlan pods (which
macvlan forbids on the parent NIC) and the pod reaches the node's Services:
- in the pod: ``<node IP> dev veth0 scope link`` and each hijacked CIDR (service, cluster, extra)
  ``via <node IP> dev veth0 src <pod IP>``, a permanent neighbour for the node IP;
- on the node: ``<pod IP> dev veth<id> scope link`` in table ``hostRuleTable`` (500), reached by the
  rule ``from all lookup 500`` (pref 1000) so it stays out of the main table, and a permanent
  neighbour for the pod IP. Deleting the host veth removes its routes and neighbours; the rule goes
  with the table's last route.
For a further NIC (net1, ...): its routes move from the main table into a table of its own, with a
rule ``from <its IP> lookup <table>``, so replies leave by the NIC the request came in on.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from spiderpool.net import arp, fastnl, ndp, replies
from spiderpool.net.vethconf import VethConfig, mac_for

T = TypeVar("T")

POD_VETH = "veth0"
RULE_PREF = 1000
NUD_PERMANENT = 0x80
SCOPE_LINK = 253
CLONE_NEWNET = 0x40000000
#: interfaces whose addresses are not the node's (upstream's list, plus our own veths)
_NOT_NODE = ("docker", "cbr", "dummy", "virbr", "lxcbr", "veth", "lo", "cali", "flannel", "kube-ipvs", "cni", "cilium")
_lock = threading.Lock()  # the shared host rule: added by the first pod, removed with the last


class NetError(Exception):
    """The pod's network cannot be set up as asked (a message for the CNI error)."""


@dataclass(frozen=True)
class PodIP:
    address: str
    prefix: int
    interface: str
    gateway: str | None = None

    @property
    def family(self) -> int:
        return ipaddress.ip_address(self.address).version


def host_veth_name(container_id: str) -> str:
    return f"veth{container_id[:11]}"


def run_in_netns(path: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a fresh thread that has entered the network namespace at ``path`` (for sysctls)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(path, os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {path}")
            finally:
                os.close(fd)
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="netns")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


#: where procfs is writable: a container that is not privileged has /proc/sys read-only, so the
#: agent mounts the host's procfs (``--proc-dir``); /proc/sys/net shows the caller's namespace either way
PROC_DIR = "/proc"


def _sysctl(key: str, value: int) -> None:
    with open(f"{PROC_DIR}/sys/{key.replace('.', '/')}", "w") as f:
        f.write(str(value))


def node_ips() -> list[str]:
    """The node's global addresses, except those of upstream's list of virtual interfaces."""
    out = []
    for ifindex, address in fastnl.global_addresses():
        try:
            name = socket.if_indextoname(ifindex)
        except OSError:
            name = ""
        if not any(name.startswith(p) for p in _NOT_NODE):
            out.append(address)
    return out


@contextlib.contextmanager
def _unless(*codes: int) -> Iterator[None]:
    """Let these netlink errors pass (e.g. EEXIST on a repeated ADD)."""
    try:
        yield
    except NetlinkError as exc:
        if exc.code not in codes:
            raise


def _exists() -> contextlib.AbstractContextManager[None]:
    return _unless(errno.EEXIST)


def _gone() -> contextlib.AbstractContextManager[None]:
    return _unless(errno.ENOENT, errno.ESRCH, errno.ENODEV, errno.EADDRNOTAVAIL)


def _in_pod(netns: str, fn: Callable[[IPRoute], T]) -> T:
    """Run ``fn`` with a netlink socket opened inside the pod's namespace (from a thread that entered
    it: pyroute2's own ``netns=`` forks a child process, which must not happen inside the agent)."""

    def run() -> T:
        with IPRoute() as pod:
            return fn(pod)

    return run_in_netns(netns, run)


def setup_first_nic(netns: str, container_id: str, ips: list[PodIP], cfg: VethConfig) -> list[dict[str, str]]:
    """Create (or find again: ADD is idempotent) the veth pair and its routes; return the result's
    interfaces to add (host side, pod side)."""
    host_name = host_veth_name(container_id)
    tmp = f"tmp{container_id[:11]}"
    with IPRoute() as host:
        host_index = fastnl.index(host_name)
        # A pair's ends live and die together, so only a repeated ADD needs to look inside the pod.
        if host_index is not None and not run_in_netns(netns, lambda: fastnl.index(POD_VETH) is not None):
            host.link("del", index=host_index)
            host_index = None
        fresh = host_index is None
        if host_index is None:
            # The pod's end is born in the pod's namespace: moving a link between namespaces afterwards
            # costs the kernel an unregister/register cycle (a third of this ADD, measured).
            fd = os.open(netns, os.O_RDONLY)
            try:
                host.link("add", ifname=host_name, kind="veth", peer={"ifname": tmp, "net_ns_fd": fd})
            finally:
                os.close(fd)
            host_index = fastnl.index(host_name)
            assert host_index is not None
            host.link("set", index=host_index, mtu=cfg.veth_mtu)
        host.link("set", index=host_index, state="up")
        host_mac = fastnl.hwaddr(host_name)
        nodes = node_ips()

        def pod_side(pod: IPRoute) -> str:
            peer = fastnl.index(POD_VETH)
            if peer is None:
                peer = fastnl.index(tmp)
                if peer is None:
                    raise NetError(f"the pod end of {host_name} did not arrive in {netns}")
                pod.link("set", index=peer, ifname=POD_VETH, mtu=cfg.veth_mtu)
            pod.link("set", index=peer, state="up")
            if cfg.mac_prefix:
                first = next((ip for ip in ips if ip.family == 4), ips[0] if ips else None)
                eth = fastnl.index(first.interface) if first else None
                if first and eth is not None:
                    pod.link("set", index=eth, state="down")
                    pod.link("set", index=eth, address=mac_for(cfg.mac_prefix, first.address))
                    pod.link("set", index=eth, state="up")
            for family in (4, 6):
                mine = [ip for ip in ips if ip.family == family]
                theirs = [n for n in nodes if ipaddress.ip_address(n).version == family]
                if not mine or not theirs:
                    continue
                full = 32 if family == 4 else 128
                for node in theirs:
                    with _exists():
                        pod.route("add", dst=node, dst_len=full, oif=peer, scope=SCOPE_LINK)
                    with _exists():
                        pod.neigh("add", dst=node, lladdr=host_mac, ifindex=peer, state=NUD_PERMANENT)
                for cidr in cfg.hijack:
                    net = ipaddress.ip_network(cidr)
                    if net.version != family:
                        continue
                    with _exists():
                        pod.route(
                            "add",
                            dst=str(net.network_address),
                            dst_len=net.prefixlen,
                            gateway=theirs[0],
                            oif=peer,
                            prefsrc=mine[0].address,
                        )
            gateways: dict[int, str] = {}
            for node in nodes:  # (the first node address of each family the pod has: as the hijack routes)
                family = ipaddress.ip_address(node).version
                if family not in gateways and any(ip.family == family for ip in ips):
                    gateways[family] = node
            replies.install(pod, peer, POD_VETH, gateways, cfg.host_rule_table, fresh)
            if cfg.veth_link_address:
                with _exists():
                    pod.addr("add", index=peer, address=cfg.veth_link_address, prefixlen=32)
            for name in sorted({ip.interface for ip in ips}):
                nic = fastnl.index(name)
                if nic is not None:
                    _tune_nic(pod, nic, ips, cfg, table=254)
            if cfg.rp_filter is not None:
                for scope in ("all", "default", POD_VETH, *{ip.interface for ip in ips}):
                    with contextlib.suppress(FileNotFoundError):
                        _sysctl(f"net.ipv4.conf.{scope}.rp_filter", cfg.rp_filter)
            return fastnl.hwaddr(POD_VETH)

        pod_mac = _in_pod(netns, pod_side)
        for family in (4, 6):
            mine = [ip for ip in ips if ip.family == family]
            if not mine:
                continue
            for ip in mine:
                host_route(host, ip, host_index, pod_mac, cfg.host_rule_table)
    return [{"name": host_name, "mac": host_mac}, {"name": POD_VETH, "mac": pod_mac, "sandbox": netns}]


def _tune_nic(pod: IPRoute, index: int, ips: list[PodIP], cfg: VethConfig, table: int) -> None:
    """The NIC's transmit queue length and its ``policyRoutes`` (those of its addresses' families),
    in ``table``."""
    if cfg.tx_queue_len:
        pod.link("set", index=index, txqlen=cfg.tx_queue_len)
    families = {ip.family for ip in ips if index == fastnl.index(ip.interface)}
    for dst, gw in cfg.policy_routes:
        net = ipaddress.ip_network(dst)
        if net.version not in families:
            continue
        with _exists():
            pod.route(
                "add",
                family=_af(net.version),
                dst=str(net.network_address),
                dst_len=net.prefixlen,
                gateway=gw,
                oif=index,
                table=table,
            )


def tune_nic(netns: str, ifname: str, ips: list[PodIP], cfg: VethConfig) -> None:
    """Only ``txQueueLen`` and ``policyRoutes`` (main table) for a NIC whose routes are not tuned."""

    def pod_side(pod: IPRoute) -> None:
        index = fastnl.index(ifname)
        if index is None:
            raise NetError(f"interface {ifname} is not in the pod")
        _tune_nic(pod, index, ips, cfg, table=254)

    _in_pod(netns, pod_side)


def _copy_routes(pod: IPRoute, oif: int, table: int) -> list[Any]:
    """Copy the main table's routes through ``oif`` into ``table``; return the routes copied."""
    copied = []
    for route in pod.route("dump", table=254):
        if route.get("RTA_OIF") != oif:
            continue
        attrs: dict[str, Any] = {
            "dst_len": route["dst_len"],
            "oif": oif,
            "table": table,
            "scope": route["scope"],
            "family": route["family"],
        }
        for key, attr in (("dst", "RTA_DST"), ("gateway", "RTA_GATEWAY"), ("prefsrc", "RTA_PREFSRC")):
            value = route.get(attr)
            if value:
                attrs[key] = value
        with _exists():
            pod.route("add", **attrs)
        copied.append(route)
    return copied


def _del_default(pod: IPRoute, route: Any, oif: int) -> None:
    """Delete one default route through ``oif`` from the main table (as dumped: its gateway too)."""
    family = route["family"]
    default = "0.0.0.0" if family == socket.AF_INET else "::"
    attrs: dict[str, Any] = {"dst": default, "dst_len": 0, "oif": oif, "family": family, "table": 254}
    if route.get("RTA_GATEWAY"):
        attrs["gateway"] = route.get("RTA_GATEWAY")
    with _gone():
        pod.route("del", **attrs)


def setup_extra_nic(netns: str, ifname: str, ips: list[PodIP], table: int, cfg: VethConfig) -> None:
    """Policy routing for a further NIC: its routes (and its ``policyRoutes``) in a table of its own,
    chosen by source address."""

    def pod_side(pod: IPRoute) -> None:
        index = fastnl.index(ifname)
        if index is None:
            raise NetError(f"interface {ifname} is not in the pod")
        for route in _copy_routes(pod, index, table):
            if route["dst_len"] == 0:
                # The main table's default route stays on the pod's default NIC (eth0, unless
                # default-route-nic says otherwise): this NIC's default is in its own table only.
                _del_default(pod, route, index)
        for ip in ips:
            full = 32 if ip.family == 4 else 128
            if ip.gateway:
                default = "0.0.0.0" if ip.family == 4 else "::"
                with _exists():
                    pod.route("add", dst=default, dst_len=0, gateway=ip.gateway, oif=index, table=table)
            with _exists():
                pod.rule("add", family=_af(ip.family), src=ip.address, src_len=full, table=table, priority=RULE_PREF)
        _tune_nic(pod, index, ips, cfg, table=table)

    _in_pod(netns, pod_side)


def teardown(container_id: str, host_rule_table: int) -> None:
    """Remove the host end (its routes and neighbours go with it); drop the shared rule with the last pod."""
    with IPRoute() as host:
        index = fastnl.index(host_veth_name(container_id))
        if index is not None:
            with _gone():
                host.link("del", index=index)
        drop_rule_if_empty(host, host_rule_table)


def host_route(host: IPRoute, ip: PodIP, oif: int, mac: str, table: int, prefsrc: str | None = None) -> None:
    """The node's route to a pod address through ``oif`` in ``table`` (under the shared rule ``from
    all lookup <table>``, added with the first route), and a permanent neighbour for it."""
    extra = {"prefsrc": prefsrc} if prefsrc else {}
    with _lock:
        if not _has_rule(host, ip.family, table):
            with _exists():
                host.rule("add", family=_af(ip.family), table=table, priority=RULE_PREF)
        with _exists():
            host.route(
                "add",
                dst=ip.address,
                dst_len=32 if ip.family == 4 else 128,
                oif=oif,
                scope=SCOPE_LINK,
                table=table,
                **extra,
            )
        with _exists():
            host.neigh("add", dst=ip.address, lladdr=mac, ifindex=oif, state=NUD_PERMANENT)


def drop_rule_if_empty(host: IPRoute, table: int) -> None:
    """The shared rule goes with the table's last route."""
    with _lock:
        for family in (4, 6):
            if not fastnl.table_has_routes(family, table):
                while _has_rule(host, family, table):
                    with _gone():
                        host.rule("del", family=_af(family), table=table, priority=RULE_PREF)


def _af(family: int) -> int:
    return socket.AF_INET if family == 4 else socket.AF_INET6


def _has_rule(host: IPRoute, family: int, table: int) -> bool:
    for rule in host.rule("dump", family=_af(family)):
        if (rule.get("FRA_TABLE") or rule.get("table")) == table and rule.get("FRA_PRIORITY") == RULE_PREF:
            return True
    return False


def present(netns: str, container_id: str) -> bool:
    """Both ends of the pod's veth pair exist (for CHECK)."""
    if fastnl.index(host_veth_name(container_id)) is None:
        return False
    return run_in_netns(netns, lambda: fastnl.index(POD_VETH) is not None)


def make_default_nic(netns: str, ifname: str, ips: list[PodIP], previous: str, table: int, cfg: VethConfig) -> None:
    """``ifname`` takes the main table's default route (its ``policyRoutes`` go in the main table too);
    the previous default NIC's routes move to ``table``, chosen by its source addresses (upstream's
    podDefaultRouteNIC)."""

    def pod_side(pod: IPRoute) -> None:
        index, old = fastnl.index(ifname), fastnl.index(previous)
        if index is None or old is None:
            raise NetError(f"interface {ifname if index is None else previous} is not in the pod")
        for route in _copy_routes(pod, old, table):
            if route["dst_len"] == 0:  # the default route leaves the main table
                _del_default(pod, route, old)
        for addr in pod.addr("dump", index=old):
            if addr["scope"] != 0:
                continue
            family = 4 if addr["family"] == socket.AF_INET else 6
            with _exists():
                pod.rule(
                    "add",
                    family=addr["family"],
                    src=addr.get("IFA_ADDRESS"),
                    src_len=32 if family == 4 else 128,
                    table=table,
                    priority=RULE_PREF,
                )
        for ip in ips:
            if ip.gateway:
                default = "0.0.0.0" if ip.family == 4 else "::"
                with _exists():
                    pod.route("add", dst=default, dst_len=0, gateway=ip.gateway, oif=index)
        _tune_nic(pod, index, ips, cfg, table=254)

    _in_pod(netns, pod_side)


IFA_F_DADFAILED, IFA_F_TENTATIVE = 0x08, 0x40
#: how long the kernel's duplicate address detection may take (1 probe, 1 s retransmit by default)
DAD_WAIT = 5.0


def _v6_flags(pod: IPRoute, index: int) -> dict[str, int]:
    out = {}
    for addr in pod.addr("dump", index=index, family=socket.AF_INET6):
        out[str(addr.get("IFA_ADDRESS"))] = int(addr.get("IFA_FLAGS") or addr["flags"])
    return out


def dad_failed(netns: str, ifname: str) -> list[str]:
    """The pod NIC's IPv6 addresses the kernel's duplicate address detection refused (someone else on
    the LAN has them); [] when the namespace or the NIC is gone."""

    def read(pod: IPRoute) -> list[str]:
        index = fastnl.index(ifname)
        if index is None:
            return []
        return [ip for ip, flags in _v6_flags(pod, index).items() if flags & IFA_F_DADFAILED]

    try:
        return _in_pod(netns, read)
    except OSError:
        return []


def _settled_v6(pod: IPRoute, index: int, address: str) -> int:
    """The address's flags once the kernel's DAD is over (or DAD_WAIT has passed)."""
    deadline = time.monotonic() + DAD_WAIT
    while True:
        flags = _v6_flags(pod, index).get(address, 0)
        if flags & IFA_F_DADFAILED or not flags & IFA_F_TENTATIVE or time.monotonic() > deadline:
            return flags
        time.sleep(0.05)  # polling the kernel's own timer: netlink has no "DAD done" event per address


def detect(netns: str, ips: list[PodIP], cfg: VethConfig) -> tuple[str, str, str] | None:
    """Conflict and gateway checks on the pod's NIC; (kind, ip, message) of the first problem. IPv4:
    ARP probes (RFC 5227). IPv6: the kernel's duplicate address detection, and a Neighbor
    Solicitation to the gateway."""

    def probe(pod: IPRoute) -> tuple[str, str, str] | None:
        for ip in ips:
            index = fastnl.index(ip.interface)
            if index is None:
                continue
            pod.link("set", index=index, state="up")
            mac = fastnl.hwaddr(ip.interface)
            if ip.family == 4:
                if cfg.detect_ip_conflict:
                    other = arp.who_has(ip.interface, mac, ip.address)
                    if other is not None:
                        return "conflict", ip.address, f"IP conflict: {ip.address} is already in use by {other}"
                gateway = ip.gateway if cfg.detect_gateway else None
                if gateway and arp.who_has(ip.interface, mac, gateway, sender_ip=ip.address) is None:
                    return "gateway", ip.address, f"gateway {gateway} does not answer ARP on {ip.interface}"
                continue
            if cfg.detect_ip_conflict and _settled_v6(pod, index, ip.address) & IFA_F_DADFAILED:
                other = ndp.who_has(ip.interface, mac, ip.address, source="::")
                owner = f"in use by {other}" if other else "refused by duplicate address detection"
                return "conflict", ip.address, f"IP conflict: {ip.address} is already {owner}"
            gateway = ip.gateway if cfg.detect_gateway else None
            if gateway:
                _settled_v6(pod, index, ip.address)  # a tentative address cannot send yet
                if ndp.who_has(ip.interface, mac, gateway, source=ip.address) is None:
                    return "gateway", ip.address, f"gateway {gateway} does not answer NDP on {ip.interface}"
        return None

    return _in_pod(netns, probe)
