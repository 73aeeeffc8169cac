"""The IPAM result for one NIC: addresses with the pool's prefix, gateway, and routes. Pure."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from spiderpool.api.annotations import Route
from spiderpool.ipam.allocate import prefix_of


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


def assigned_from(pool: Mapping[str, Any] | None, record: Mapping[str, Any]) -> Assigned:
    """The address of a record (its ``spec``) with its pool's prefix, gateway and routes; a pool
    that is gone leaves a host prefix and no gateway."""
    spec = (pool or {}).get("spec", {})
    routes = tuple(Route(r["dst"], r["gw"]) for r in spec.get("routes") or [])
    prefix = prefix_of(dict(pool)) if pool else (32 if int(record["ipVersion"]) == 4 else 128)
    return Assigned(
        str(record["interface"]),
        int(record["ipVersion"]),
        str(record["ip"]),
        prefix,
        str(record["pool"]),
        spec.get("gateway"),
        routes,
    )


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
