"""Parse Spiderpool's pod and namespace annotations, with errors that name the key and the fix.

Shapes follow upstream:
- ``ipam.spidernet.io/ippool``: ``{"ipv4": [...], "ipv6": [...]}`` (pool lists for the NIC being added)
- ``ipam.spidernet.io/ippools``: ``[{"interface": "eth0", "ipv4": [...], "ipv6": [...], "cleangateway": false}]``
  (per NIC; either every item names its interface or none does, then order maps to eth0, net1, ...)
- ``ipam.spidernet.io/routes``: ``[{"dst": "10.0.0.0/16", "gw": "192.168.1.1"}]``
- namespace ``ipam.spidernet.io/default-ipv4-ippool`` / ``default-ipv6-ippool``: ``["a", "b"]``

Keys inside these objects are matched the way upstream's Go decoder matches them: the exact
spelling first, else ignoring case (``cleanGateway`` is ``cleangateway``, ``IPv4`` is ``ipv4``), so
manifests written for upstream work unchanged. A key that matches nothing is ignored, as upstream
ignores it, but not silently: it is returned in ``PodAnnotations.warnings`` (with the closest known
key), and the agent posts it as a Warning event on the pod.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from typing import Any

from spiderpool.api.addresses import RangeError, parse_cidr, parse_ip

IPPOOL = "ipam.spidernet.io/ippool"
IPPOOLS = "ipam.spidernet.io/ippools"
ROUTES = "ipam.spidernet.io/routes"
SUBNET = "ipam.spidernet.io/subnet"
SUBNETS = "ipam.spidernet.io/subnets"
IP_NUMBER = "ipam.spidernet.io/ippool-ip-number"
RECLAIM = "ipam.spidernet.io/ippool-reclaim"
NS_DEFAULT_V4 = "ipam.spidernet.io/default-ipv4-ippool"
NS_DEFAULT_V6 = "ipam.spidernet.io/default-ipv6-ippool"
DEFAULT_ROUTE_NIC = "ipam.spidernet.io/default-route-nic"
MULTUS_DEFAULT_NETWORK = "v1.multus-cni.io/default-network"
MULTUS_NETWORKS = "k8s.v1.cni.cncf.io/networks"


class AnnotationError(ValueError):
    """A malformed annotation; ``str()`` names the key, what is wrong and an example of right."""

    def __init__(self, key: str, problem: str, example: str) -> None:
        self.key = key
        super().__init__(f"annotation {key}: {problem}; expected e.g. {example}")


@dataclass(frozen=True)
class PoolChoice:
    """Pool names for one NIC, per family, from an annotation or a config."""

    interface: str | None
    ipv4: tuple[str, ...] = ()
    ipv6: tuple[str, ...] = ()
    clean_gateway: bool | None = None


@dataclass(frozen=True)
class Route:
    dst: str
    gw: str


@dataclass(frozen=True)
class PodAnnotations:
    ippool: PoolChoice | None = None
    ippools: tuple[PoolChoice, ...] = ()
    routes: tuple[Route, ...] = ()
    #: auto-pool subnets per NIC (``subnets``, else ``subnet``); names are SpiderSubnets
    subnets: tuple[PoolChoice, ...] = ()
    #: the auto-pools the agent resolved those to (set by the agent, not parsed)
    auto_pools: tuple[PoolChoice, ...] = ()
    extra: dict[str, str] = field(default_factory=dict)
    #: keys that matched nothing and were ignored: "annotation <key>: <where> has unknown key ..."
    warnings: tuple[str, ...] = ()


def _load(key: str, raw: str, example: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise AnnotationError(key, f"not valid JSON ({exc.args[0].split(':')[0]})", example) from None
    except RecursionError:  # the decoder recurses once per nesting level
        raise AnnotationError(key, "not valid JSON (nested too deeply)", example) from None


def _names(key: str, value: Any, where: str, example: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise AnnotationError(key, f"{where} must be a list of pool names", example)
    return tuple(value)


_IPPOOL_EXAMPLE = '{"ipv4": ["pool-v4"], "ipv6": ["pool-v6"]}'
_IPPOOLS_EXAMPLE = '[{"interface": "eth0", "ipv4": ["pool-a"]}, {"interface": "net1", "ipv4": ["pool-b"]}]'
_ROUTES_EXAMPLE = '[{"dst": "10.20.0.0/16", "gw": "172.18.0.1"}]'
_KNOWN_ITEM_KEYS = ("interface", "ipv4", "ipv6", "cleangateway")
_ROUTE_KEYS = ("dst", "gw")


def _fold(key: str, item: dict[str, Any], known: tuple[str, ...], where: str, warnings: list[str]) -> dict[str, Any]:
    """The object with its keys spelled as ``known`` spells them, matched as Go's encoding/json does
    (exact, else case-insensitive; a later key wins over an earlier one for the same field). Keys
    that match nothing are left out, each with a warning naming the closest known key."""
    out: dict[str, Any] = {}
    folded = {k.casefold(): k for k in known}
    for name, value in item.items():
        canonical = name if name in known else folded.get(name.casefold())
        if canonical is not None:
            out[canonical] = value
            continue
        close = difflib.get_close_matches(name.casefold(), list(known), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
        warnings.append(f"annotation {key}: {where} has unknown key {name!r}, which is ignored{hint}")
    return out


def _choice(key: str, item: Any, where: str, example: str, warnings: list[str] | None = None) -> PoolChoice:
    if not isinstance(item, dict):
        raise AnnotationError(key, f"{where} must be an object", example)
    item = _fold(key, item, _KNOWN_ITEM_KEYS, where, [] if warnings is None else warnings)
    iface = item.get("interface")
    if iface is not None and (not isinstance(iface, str) or not iface):
        raise AnnotationError(key, f"{where}.interface must be a non-empty string", example)
    clean = item.get("cleangateway")
    if clean is not None and not isinstance(clean, bool):
        raise AnnotationError(key, f"{where}.cleangateway must be true or false", example)
    choice = PoolChoice(
        interface=iface,
        ipv4=_names(key, item.get("ipv4"), f"{where}.ipv4", example),
        ipv6=_names(key, item.get("ipv6"), f"{where}.ipv6", example),
        clean_gateway=clean,
    )
    if not choice.ipv4 and not choice.ipv6:
        raise AnnotationError(key, f"{where} names no pool (give ipv4, ipv6 or both)", example)
    return choice


def parse_ippool(raw: str, warnings: list[str] | None = None) -> PoolChoice:
    return _choice(IPPOOL, _load(IPPOOL, raw, _IPPOOL_EXAMPLE), "the value", _IPPOOL_EXAMPLE, warnings)


def parse_ippools(raw: str, warnings: list[str] | None = None) -> tuple[PoolChoice, ...]:
    data = _load(IPPOOLS, raw, _IPPOOLS_EXAMPLE)
    if not isinstance(data, list) or not data:
        raise AnnotationError(IPPOOLS, "must be a non-empty list, one item per interface", _IPPOOLS_EXAMPLE)
    items = tuple(_choice(IPPOOLS, item, f"item {i}", _IPPOOLS_EXAMPLE, warnings) for i, item in enumerate(data))
    named = [c.interface is not None for c in items]
    if any(named) and not all(named):
        raise AnnotationError(
            IPPOOLS,
            "some items name their interface and some do not; name it in every item or in none",
            _IPPOOLS_EXAMPLE,
        )
    seen = [c.interface for c in items if c.interface]
    dupes = sorted({i for i in seen if seen.count(i) > 1})
    if dupes:
        raise AnnotationError(IPPOOLS, f"interface {dupes[0]!r} appears more than once", _IPPOOLS_EXAMPLE)
    if not any(named):
        # Unnamed items map to interfaces by order: eth0, net1, net2, ... (Multus' default names).
        items = tuple(
            PoolChoice("eth0" if i == 0 else f"net{i}", c.ipv4, c.ipv6, c.clean_gateway) for i, c in enumerate(items)
        )
    return items


_SUBNET_EXAMPLE = '{"ipv4": ["subnet-v4"], "ipv6": ["subnet-v6"]}'
_SUBNETS_EXAMPLE = '[{"interface": "eth0", "ipv4": ["subnet-a"]}, {"interface": "net1", "ipv4": ["subnet-b"]}]'
_IP_NUMBER_EXAMPLE = '"2" (a fixed number) or "+1" (replicas plus one)'


def _one_subnet(key: str, choice: PoolChoice, default_iface: str | None) -> PoolChoice:
    example = _SUBNET_EXAMPLE if key == SUBNET else _SUBNETS_EXAMPLE
    # Upstream uses only the first subnet per family; say so instead of silently ignoring the rest.
    for family, names in (("ipv4", choice.ipv4), ("ipv6", choice.ipv6)):
        if len(names) > 1:
            raise AnnotationError(key, f"{family} names {len(names)} subnets; an auto-pool comes from one", example)
        if names and any(ch in names[0] for ch in "*?["):
            raise AnnotationError(key, f"{family}: subnet names take no wildcards ({names[0]!r})", example)
    if choice.clean_gateway is not None:
        raise AnnotationError(key, "cleangateway belongs in ipam.spidernet.io/ippool(s), not here", example)
    return PoolChoice(choice.interface or default_iface, choice.ipv4, choice.ipv6)


def parse_subnet(raw: str, warnings: list[str] | None = None) -> PoolChoice:
    """``ipam.spidernet.io/subnet``: one NIC (``eth0`` unless it names one), one subnet per family."""
    choice = _choice(SUBNET, _load(SUBNET, raw, _SUBNET_EXAMPLE), "the value", _SUBNET_EXAMPLE, warnings)
    return _one_subnet(SUBNET, choice, "eth0")


def parse_subnets(raw: str, warnings: list[str] | None = None) -> tuple[PoolChoice, ...]:
    """``ipam.spidernet.io/subnets``: one item per NIC, each naming its interface."""
    data = _load(SUBNETS, raw, _SUBNETS_EXAMPLE)
    if not isinstance(data, list) or not data:
        raise AnnotationError(SUBNETS, "must be a non-empty list, one item per interface", _SUBNETS_EXAMPLE)
    items = []
    for i, item in enumerate(data):
        choice = _choice(SUBNETS, item, f"item {i}", _SUBNETS_EXAMPLE, warnings)
        if choice.interface is None:
            raise AnnotationError(SUBNETS, f"item {i} must name its interface", _SUBNETS_EXAMPLE)
        items.append(_one_subnet(SUBNETS, choice, None))
    seen = [c.interface for c in items]
    dupes = sorted({str(i) for i in seen if seen.count(i) > 1})
    if dupes:
        raise AnnotationError(SUBNETS, f"interface {dupes[0]!r} appears more than once", _SUBNETS_EXAMPLE)
    used = [n for c in items for n in (*c.ipv4, *c.ipv6)]
    shared = sorted({n for n in used if used.count(n) > 1})
    if shared:
        raise AnnotationError(
            SUBNETS, f"subnet {shared[0]!r} serves two interfaces; give each its own", _SUBNETS_EXAMPLE
        )
    return tuple(items)


def parse_ip_number(raw: str) -> tuple[bool, int]:
    """``ipam.spidernet.io/ippool-ip-number``: (flexible, n); ``"+N"`` is replicas plus N, ``"N"`` is N."""
    text = raw.strip()
    flexible = text.startswith("+")
    digits = text[1:] if flexible else text
    # (str.isdigit() is true for "²" and other digits int() refuses; a pool past 10^6 IPs is a typo)
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 6:
        raise AnnotationError(IP_NUMBER, f"{raw[:40]!r} is not a number of IPs", _IP_NUMBER_EXAMPLE)
    n = int(digits)
    if not flexible and n == 0:
        raise AnnotationError(IP_NUMBER, "a fixed size of 0 leaves no IP for any pod", _IP_NUMBER_EXAMPLE)
    return flexible, n


def parse_reclaim(raw: str) -> bool:
    text = raw.strip().lower()
    if text not in ("true", "false"):
        raise AnnotationError(RECLAIM, f"{raw!r} is neither true nor false", '"false" (keep the pool)')
    return text == "true"


def parse_routes(raw: str, warnings: list[str] | None = None) -> tuple[Route, ...]:
    data = _load(ROUTES, raw, _ROUTES_EXAMPLE)
    if not isinstance(data, list):
        raise AnnotationError(ROUTES, "must be a list of routes", _ROUTES_EXAMPLE)
    out = []
    for i, item in enumerate(data):
        if isinstance(item, dict):
            item = _fold(ROUTES, item, _ROUTE_KEYS, f"item {i}", [] if warnings is None else warnings)
        if not isinstance(item, dict) or set(item) != {"dst", "gw"}:
            raise AnnotationError(ROUTES, f"item {i} must have both 'dst' and 'gw'", _ROUTES_EXAMPLE)
        try:
            dst = parse_cidr(str(item["dst"]), strict=False)
            gw = parse_ip(str(item["gw"]))
        except RangeError as exc:
            raise AnnotationError(ROUTES, f"item {i}: {exc}", _ROUTES_EXAMPLE) from None
        if dst.version != gw.version:
            raise AnnotationError(ROUTES, f"item {i}: dst and gw are of different IP families", _ROUTES_EXAMPLE)
        if dst.prefixlen == 0:
            raise AnnotationError(
                ROUTES, f"item {i}: a default route is not allowed; the pool gateway provides it", _ROUTES_EXAMPLE
            )
        out.append(Route(str(dst), str(gw)))
    return tuple(out)


def parse_pod(annotations: dict[str, str] | None) -> PodAnnotations:
    """All IPAM annotations of a pod; raises :class:`AnnotationError` on the first malformed one."""
    ann = annotations or {}
    warnings: list[str] = []
    return PodAnnotations(
        ippool=parse_ippool(ann[IPPOOL], warnings) if IPPOOL in ann else None,
        ippools=parse_ippools(ann[IPPOOLS], warnings) if IPPOOLS in ann else (),
        routes=parse_routes(ann[ROUTES], warnings) if ROUTES in ann else (),
        subnets=_subnets(ann, warnings),
        warnings=tuple(warnings),
    )


def _subnets(ann: dict[str, str], warnings: list[str]) -> tuple[PoolChoice, ...]:
    if SUBNETS in ann:  # upstream: subnets wins over subnet
        return parse_subnets(ann[SUBNETS], warnings)
    return (parse_subnet(ann[SUBNET], warnings),) if SUBNET in ann else ()


def parse_namespace_defaults(annotations: dict[str, str] | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The namespace's default v4 and v6 pool lists."""
    ann = annotations or {}
    out: list[tuple[str, ...]] = []
    for key in (NS_DEFAULT_V4, NS_DEFAULT_V6):
        if key not in ann:
            out.append(())
            continue
        example = '["pool-a", "pool-b"]'
        out.append(_names(key, _load(key, ann[key], example), "the value", example))
    return out[0], out[1]


def multus_networks(annotations: dict[str, str] | None, namespace: str, cluster_network: str = "") -> dict[str, str]:
    """Interface -> Multus network (``ns/name``) for a pod: eth0 from the default-network annotation (or the
    cluster network), net1.. from ``k8s.v1.cni.cncf.io/networks`` (by position unless named ``@if``).
    Malformed values are ignored here: Multus itself rejects them before IPAM runs."""
    ann = annotations or {}
    out: dict[str, str] = {}

    def qualify(ref: Any, ns: Any = None) -> str:
        if not isinstance(ref, str) or (ns is not None and not isinstance(ns, str)):
            raise TypeError("a network reference is a string")
        ref = ref.strip()
        return ref if "/" in ref else f"{ns or namespace}/{ref}"

    default = ann.get(MULTUS_DEFAULT_NETWORK, "").strip()
    if default.startswith("["):
        try:
            first = json.loads(default)[0]
            default = qualify(first["name"], first.get("namespace"))
        except (ValueError, LookupError, TypeError, AttributeError, RecursionError):
            default = ""
    if default or cluster_network:
        out["eth0"] = qualify(default) if default else cluster_network
    raw = ann.get(MULTUS_NETWORKS, "").strip()
    entries: list[tuple[str, str | None]] = []
    if raw.startswith("["):
        try:
            for item in json.loads(raw):
                iface = item.get("interface")
                entries.append(
                    (qualify(item["name"], item.get("namespace")), iface if isinstance(iface, str) else None)
                )
        except (ValueError, LookupError, TypeError, AttributeError, RecursionError):
            entries = []
    elif raw:
        for part in raw.split(","):
            ref, _, named = part.strip().partition("@")
            entries.append((qualify(ref), named or None))
    for i, (ref, iface) in enumerate(entries, 1):
        out[iface or f"net{i}"] = ref
    return out
