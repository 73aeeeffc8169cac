"""The IPAM result for one NIC: addresses with the pool's prefix, gateway, and routes. Pure."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from spiderpool.api.annotations import Route


@dataclass(frozen=True)
class Assigned:
    """One address given to a NIC."""

    interface: str
    family: int
    ip: str
    prefix: int
    pool: str
    gateway: str | None
    pool_routes: tuple[Route, ...] = ()

    @property
    def cidr(self) -> str:
        return f"{self.ip}/{self.prefix}"


def routes_for(assigned: Iterable[Assigned], extra: Iterable[Route], *, clean_gateway: bool) -> list[Route]:
    """Default route via each family's gateway (unless cleaned), pool routes, and the annotation routes
    whose next hop lies in one of this NIC's subnets."""
    out: list[Route] = []
    nets = []
    for a in assigned:
        net = ipaddress.ip_network(a.cidr, strict=False)
        nets.append(net)
        if a.gateway and not clean_gateway:
            out.append(Route("0.0.0.0/0" if a.family == 4 else "::/0", a.gateway))
        out.extend(a.pool_routes)
    for r in extra:
        gw = ipaddress.ip_address(r.gw)
        if any(gw.version == n.version and gw in n for n in nets):
            out.append(r)
    return list(dict.fromkeys(out))


def cni_result(
    assigned: list[Assigned], routes: list[Route], cni_version: str, dns: dict[str, Any] | None = None
) -> dict[str, Any]:
    """An IPAM plugin result (no interfaces, as the spec wants from IPAM) in the requested version."""
    old = cni_version in ("0.3.0", "0.3.1", "0.4.0")
    ips = []
    for a in assigned:
        entry: dict[str, Any] = {"address": a.cidr}
        if a.gateway:
            entry["gateway"] = a.gateway
        if old:
            entry["version"] = str(a.family)
        ips.append(entry)
    return {
        "cniVersion": cni_version,
        "ips": ips,
        "routes": [{"dst": r.dst, "gw": r.gw} for r in routes],
        "dns": dns or {},
    }
