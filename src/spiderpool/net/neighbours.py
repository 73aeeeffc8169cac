"""Stale neighbour entries on the node for a pod's addresses, removed at ADD.

A pod that starts with an address another pod (or host) had a moment ago meets neighbour entries
that still map the address to the old MAC: on the node's LAN NICs (eth0, eth1, ...), where they
stay until the kernel's timers age them, and in the meantime the node sends the pod's traffic to a
MAC nobody answers for. Upstream's coordinator removes them at ADD; so does the agent, on the node
(its own network namespace), leaving the permanent entries the veth plugin adds on the host veth.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from collections.abc import Iterable

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

log = logging.getLogger(__name__)


def flush(addresses: Iterable[str], keep_ifindex: int | None = None) -> list[tuple[str, int]]:
    """Delete the node's neighbour entries for ``addresses`` on every interface but ``keep_ifindex``
    (called before the node's own entries for the pod are added); return what was deleted, as
    (address, interface index)."""
    wanted: dict[int, set[str]] = {}
    for a in addresses:
        ip = ipaddress.ip_address(a)
        wanted.setdefault(ip.version, set()).add(str(ip))
    removed: list[tuple[str, int]] = []
    if not wanted:
        return removed
    with IPRoute() as host:
        for family, ips in wanted.items():
            af = socket.AF_INET if family == 4 else socket.AF_INET6
            for entry in host.neigh("dump", family=af):
                dst = entry.get_attr("NDA_DST")
                index = int(entry["ifindex"])
                if dst is None or index == keep_ifindex:
                    continue
                if str(ipaddress.ip_address(dst)) not in ips:
                    continue
                try:
                    host.neigh("del", family=af, dst=dst, ifindex=index)
                except NetlinkError as exc:
                    if exc.code not in (errno.ENOENT, errno.ESRCH, errno.ENODEV):
                        raise
                    continue
                removed.append((str(dst), index))
    if removed:
        log.info("stale neighbour entries removed entries=%s", ",".join(f"{a}@{i}" for a, i in removed))
    return removed
