"""Which pools may serve a pod's NIC: the source precedence, the filters, the order. Pure logic.

Precedence (first tier that names pools wins; lower tiers are not consulted):
1. pod ``ipam.spidernet.io/ippools`` (the item for this NIC), then ``ipam.spidernet.io/ippool``;
2. namespace ``default-ipv4-ippool`` / ``default-ipv6-ippool``;
3. the CNI config's ``default_ipv4_ippool`` / ``default_ipv6_ippool``;
4. cluster default pools (``spec.default: true``).
(The ``subnet``/``subnets`` auto-pool annotations sit above tier 1; they are handled where auto-pools are.)

Every rejected pool keeps its reason, so a failed allocation can say which pools were tried and why.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from spiderpool.api.annotations import PodAnnotations, PoolChoice
from spiderpool.ipam.autopool import owner_of
from spiderpool.ipam.ranges import RangeError, parse_cidr

Pool = Mapping[str, Any]


@dataclass(frozen=True)
class PodContext:
    namespace: str
    name: str
    labels: Mapping[str, str]
    node: str
    node_labels: Mapping[str, str]
    namespace_labels: Mapping[str, str]
    annotations: PodAnnotations
    namespace_defaults: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
    #: Multus network (``ns/name``) attached on each interface, for ``multusName``
    networks: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class NetconfDefaults:
    ipv4: tuple[str, ...] = ()
    ipv6: tuple[str, ...] = ()
    clean_gateway: bool = False


@dataclass(frozen=True)
class Candidates:
    """Ordered pool names for one NIC and family, and why the others were dropped."""

    family: int
    source: str
    pools: tuple[str, ...]
    rejected: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class NicPlan:
    interface: str
    source: str
    clean_gateway: bool
    families: tuple[Candidates, ...]


class SelectionError(ValueError):
    """No pool for a NIC. ``candidates``: what was tried, each rejected pool with its reason (for
    ``kubectl spiderpool why``)."""

    def __init__(self, message: str, candidates: tuple[Candidates, ...] = ()) -> None:
        super().__init__(message)
        self.candidates = candidates


def matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels and matchExpressions, ANDed)."""
    if not selector:
        return True
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        has = key in labels
        if (
            (op == "In" and (not has or labels[key] not in values))
            or (op == "NotIn" and has and labels[key] in values)
            or (op == "Exists" and not has)
            or (op == "DoesNotExist" and has)
        ):
            return False
    return True


def pool_family(pool: Pool) -> int | None:
    spec = pool.get("spec", {})
    version = spec.get("ipVersion")
    if version in (4, 6):
        return int(version)
    try:
        return parse_cidr(str(spec.get("subnet", ""))).version
    except RangeError:
        return None


def _expand(names: tuple[str, ...], family: int, pools: Mapping[str, Pool]) -> list[str]:
    """Pool names with wildcards (``*``, ``?``, ``[..]``) expanded over pools of the family, in order."""
    out: list[str] = []
    for name in names:
        if any(ch in name for ch in "*?["):
            out += sorted(p for p in pools if fnmatch.fnmatchcase(p, name) and pool_family(pools[p]) == family)
        else:
            out.append(name)
    return list(dict.fromkeys(out))


def _sources(ctx: PodContext, ifname: str, netconf: NetconfDefaults) -> tuple[str, PoolChoice] | None:
    ann = ctx.annotations
    for item in ann.auto_pools:
        if item.interface == ifname:
            return "auto-pool of the application (ipam.spidernet.io/subnet)", item
    if ann.ippools:
        for item in ann.ippools:
            if item.interface == ifname:
                return "pod annotation ipam.spidernet.io/ippools", item
        return None  # the annotation exists but names other NICs: this NIC is not Spiderpool's to serve
    if ann.ippool is not None:
        return "pod annotation ipam.spidernet.io/ippool", ann.ippool
    v4, v6 = ctx.namespace_defaults
    if v4 or v6:
        return "namespace default pools", PoolChoice(ifname, v4, v6)
    if netconf.ipv4 or netconf.ipv6:
        return "CNI config default pools", PoolChoice(ifname, netconf.ipv4, netconf.ipv6)
    return None


def _reject_reason(name: str, pool: Pool | None, family: int, ctx: PodContext, ifname: str) -> str | None:
    if pool is None:
        return "no such SpiderIPPool"
    meta, spec = pool.get("metadata", {}), pool.get("spec", {})
    if meta.get("deletionTimestamp"):
        return "being deleted"
    if spec.get("disable"):
        return "disabled"
    if pool_family(pool) != family:
        return f"not an IPv{family} pool"
    nodes = spec.get("nodeName") or []
    # (upstream's words first, for the scripts that grep them; then which rule and which node)
    if nodes and ctx.node not in nodes:
        return f"unmatched Node name of IPPool {name}: its nodeName does not include node {ctx.node}"
    if not nodes and spec.get("nodeAffinity") and not matches(spec["nodeAffinity"], ctx.node_labels):
        return f"unmatched Node name of IPPool {name}: its nodeAffinity does not match node {ctx.node}"
    namespaces = spec.get("namespaceName") or []
    if namespaces and ctx.namespace not in namespaces:
        return f"namespaceName does not include namespace {ctx.namespace}"
    if (
        not namespaces
        and spec.get("namespaceAffinity")
        and not matches(spec["namespaceAffinity"], ctx.namespace_labels)
    ):
        return f"namespaceAffinity does not match namespace {ctx.namespace}"
    if spec.get("podAffinity") and not matches(spec["podAffinity"], ctx.labels):
        owner = owner_of(pool)
        if owner is not None:
            kind, app_ns, app_name = owner
            return (
                f"it is the auto-pool of application {kind}/{app_ns}/{app_name}, and only that application's pods"
                " may use it; give this pod a pool of its own, or a SpiderSubnet (ipam.spidernet.io/subnet)"
            )
        return "podAffinity does not match the pod's labels"
    multus = spec.get("multusName") or []
    if multus:
        network = ctx.networks.get(ifname)
        if network is None or network not in multus:
            # (upstream's words, which users' alerts match; then what this interface has)
            return (
                f"the spec.multusName [{' '.join(multus)}] in the IPPool {name} used by the Pod interface {ifname}"
                f" is not matched: this interface's network is {network or 'none'}"
            )
    return None


def _priority(pool: Pool) -> tuple[int, ...]:
    """Upstream's ordering: pools with narrower affinity first (stable, so ties keep the given order)."""
    spec = pool.get("spec", {})
    return tuple(
        0 if spec.get(k) else 1
        for k in ("podAffinity", "nodeName", "nodeAffinity", "namespaceName", "namespaceAffinity", "multusName")
    )


def plan_nic(
    ctx: PodContext,
    ifname: str,
    pools: Mapping[str, Pool],
    *,
    netconf: NetconfDefaults,
    families: tuple[int, ...] = (4,),
) -> NicPlan:
    """The candidate pools for one NIC, per enabled family. Raises :class:`SelectionError`."""
    found = _sources(ctx, ifname, netconf)
    clean = netconf.clean_gateway
    if found is None:
        source = "cluster default pools"
        choice = PoolChoice(
            ifname,
            tuple(sorted(n for n, p in pools.items() if p.get("spec", {}).get("default") and pool_family(p) == 4)),
            tuple(sorted(n for n, p in pools.items() if p.get("spec", {}).get("default") and pool_family(p) == 6)),
        )
        if ctx.annotations.ippools:
            raise SelectionError(
                f"interface {ifname} is not listed in the pod's ipam.spidernet.io/ippools annotation;"
                " add an item for it"
            )
    else:
        source, choice = found
    if choice.clean_gateway is not None:
        clean = choice.clean_gateway
    out = []
    for family in families:
        names = _expand(choice.ipv4 if family == 4 else choice.ipv6, family, pools)
        if not names:
            continue
        ok: list[str] = []
        rejected: list[tuple[str, str]] = []
        for name in names:
            reason = _reject_reason(name, pools.get(name), family, ctx, ifname)
            if reason is None:
                ok.append(name)
            else:
                rejected.append((name, reason))
        ok.sort(key=lambda n: _priority(pools[n]))
        out.append(Candidates(family, source, tuple(ok), tuple(rejected)))
    if not out:
        raise SelectionError(
            f"no pool is specified for interface {ifname} of pod {ctx.namespace}/{ctx.name}: annotate the pod with"
            " ipam.spidernet.io/ippool, give the namespace default pools, set default_ipv4_ippool in the CNI config,"
            " or mark a pool spec.default: true"
        )
    for cand in out:
        if not cand.pools:
            tried = "; ".join(f"{n}: {r}" for n, r in cand.rejected)
            raise SelectionError(
                f"no usable IPv{cand.family} pool for interface {ifname} of pod {ctx.namespace}/{ctx.name}"
                f" (from {cand.source}): {tried}",
                tuple(out),
            )
    return NicPlan(ifname, source, clean, tuple(out))
