"""`kubectl spiderpool why POD`: for each NIC of a pod, the pool sources in precedence order, every
candidate pool with its verdict, the address taken, and for a pod without one, the last failure.

Recomputed, not remembered: the agent keeps no per-pod decision (that would be a write on every
allocation). The same pure functions the agent runs (``ipam.selection``) are run here on the same
objects, read from the API a moment later; the records say what was actually taken, and the
agent's last ``IPAllocationFailed`` event what went wrong. Pure: objects in, an answer out."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from spiderpool.api import annotations as ann
from spiderpool.cli.usage import usable_ips
from spiderpool.ipam.autopool import L_APP_UID, App, owned_by
from spiderpool.ipam.moves import move_reason, split_predecessors
from spiderpool.ipam.selection import NetconfDefaults, PodContext, SelectionError, plan_nic, pool_family

Obj = Mapping[str, Any]


@dataclass
class Verdict:
    family: int
    pool: str
    verdict: str  # chosen | usable | rejected: <reason>


@dataclass
class NicAnswer:
    interface: str
    network: str | None
    #: each source in precedence order: (what, what it names or "not set"); the first that names pools wins
    sources: list[tuple[str, str]] = field(default_factory=list)
    source: str = ""
    verdicts: list[Verdict] = field(default_factory=list)
    #: (family, ip, pool) held by the pod on this NIC
    ips: list[tuple[int, str, str]] = field(default_factory=list)
    auto_pool: str | None = None
    error: str | None = None
    #: addresses the pod holds from pools it no longer names, each with why (ipam.moves)
    moves: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "interface": self.interface,
            "network": self.network,
            "sources": [{"source": s, "value": v} for s, v in self.sources],
            "chosenSource": self.source or None,
            "pools": [{"ipVersion": v.family, "pool": v.pool, "verdict": v.verdict} for v in self.verdicts],
            "ips": [{"ipVersion": f, "ip": ip, "pool": p} for f, ip, p in self.ips],
            "autoPool": self.auto_pool,
            "error": self.error,
            "moves": self.moves,
        }


def netconf_of(nad: Obj | None) -> NetconfDefaults | None:
    """The spiderpool IPAM section's defaults in a NetworkAttachmentDefinition's config (None: the
    NAD does not use spiderpool IPAM, or cannot be read)."""
    if nad is None:
        return None
    try:
        conf = json.loads((nad.get("spec") or {}).get("config") or "{}")
    except ValueError:
        return None
    plugins = conf.get("plugins") if isinstance(conf.get("plugins"), list) else [conf]
    for plugin in plugins:
        ipam = plugin.get("ipam") if isinstance(plugin, dict) else None
        if isinstance(ipam, dict) and ipam.get("type") == "spiderpool":
            return NetconfDefaults(
                ipv4=tuple(ipam.get("default_ipv4_ippool") or ()),
                ipv6=tuple(ipam.get("default_ipv6_ippool") or ()),
                clean_gateway=bool(ipam.get("clean_gateway")),
            )
    return None


def _names(v4: Iterable[str], v6: Iterable[str]) -> str:
    parts = [f"IPv4 {list(v4)}" if v4 else "", f"IPv6 {list(v6)}" if v6 else ""]
    return ", ".join(p for p in parts if p) or "not set"


def _choice_text(choice: ann.PoolChoice | None) -> str:
    return "not set" if choice is None else _names(choice.ipv4, choice.ipv6)


def _usage(pool: Obj) -> tuple[int, int]:
    """(allocated, total) as the controller counts them in the pool's status (total: from the spec
    when no status was written yet)."""
    status = pool.get("status") or {}
    total = status.get("totalIPCount")
    if total is None:
        ips = usable_ips(pool)
        total = ips.count() if ips is not None else 0
    return int(status.get("allocatedIPCount") or 0), int(total)


def _auto_pool(pools: Mapping[str, Obj], app: App | None, iface: str, family: int) -> str | None:
    """The application's auto-pool for this NIC and family, matched as the agent matches it."""
    if app is None:
        return None
    for name, pool in sorted(pools.items()):
        labels = pool["metadata"].get("labels") or {}
        if owned_by(pool, app, iface, family) and labels.get(L_APP_UID) == app.uid:
            return name
    return None


def explain(
    pod: Obj,
    namespace: Obj,
    node: Obj | None,
    pools: Mapping[str, Obj],
    records: Iterable[Obj],
    nads: Mapping[str, Obj],
    *,
    app: App | None = None,
    cluster_network: str = "",
    families: tuple[int, ...] = (4, 6),
    subnets: Collection[str] = (),
) -> list[NicAnswer]:
    """One answer per NIC of ``pod``: eth0, and each Multus network it attaches. ``records``: the
    pod's (matched by UID; a pool's usage is its status). ``nads``: by ``ns/name``.
    ``app``: the pod's application (Deployment, StatefulSet, ...), for its auto-pool. ``subnets``:
    the SpiderSubnets' names (an ``ippool`` annotation naming subnets, not pools, is served as the
    ``subnet`` annotation, as the agent serves it: the reference walkthrough's form)."""
    meta = pod["metadata"]
    pod_ns, pod_name, uid = str(meta["namespace"]), str(meta["name"]), str(meta.get("uid") or "")
    mine = [r for r in records if (r.get("spec") or {}).get("podUID") == uid]
    networks = ann.multus_networks(meta.get("annotations"), pod_ns, cluster_network)
    interfaces = ["eth0", *sorted((i for i in networks if i != "eth0"), key=lambda i: (len(i), i))]
    try:
        pod_ann = ann.parse_pod(meta.get("annotations"))
        ns_defaults = ann.parse_namespace_defaults((namespace.get("metadata") or {}).get("annotations"))
    except ann.AnnotationError as exc:
        return [NicAnswer(interface="eth0", network=networks.get("eth0"), error=str(exc))]
    labels = dict(meta.get("labels") or {})
    if app is not None:  # an auto-pool's podAffinity names the application, as the agent matches it
        labels.update(app.pod_labels())
    answers = []
    for iface in interfaces:
        network = networks.get(iface)
        nad = nads.get(network or "")
        answer = NicAnswer(interface=iface, network=network)
        if nad is not None and netconf_of(nad) is None:
            # another IPAM (host-local, DHCP, ...) serves this network: not ours to explain
            if iface == "eth0":
                answer.error = f"network {network} does not use spiderpool IPAM"
                answers.append(answer)
            continue
        netconf = netconf_of(nad) or NetconfDefaults()
        answer.ips = sorted(
            (int(r["spec"].get("ipVersion") or 4), str(r["spec"]["ip"]), str(r["spec"]["pool"]))
            for r in mine
            if r["spec"].get("interface") == iface
        )
        subnet_choice = next((c for c in pod_ann.subnets if c.interface == iface), None)
        annotated_subnet = subnet_choice
        via_ippool = ""
        if not pod_ann.subnets and pod_ann.ippool is not None:
            named = [*pod_ann.ippool.ipv4, *pod_ann.ippool.ipv6]
            if named and all(n in subnets and n not in pools for n in named):
                subnet_choice = ann.PoolChoice(iface, pod_ann.ippool.ipv4[:1], pod_ann.ippool.ipv6[:1])
                via_ippool = (
                    f"pod annotation ipam.spidernet.io/ippool, naming SpiderSubnet {', '.join(named)}: an auto-pool"
                )
        one = pod_ann.ippool if not pod_ann.ippools else None
        many = next((c for c in pod_ann.ippools if c.interface == iface), None)
        defaults = {
            f: [n for n, p in sorted(pools.items()) if (p.get("spec") or {}).get("default") and pool_family(p) == f]
            for f in (4, 6)
        }
        answer.sources = [
            ("pod annotation ipam.spidernet.io/subnet(s): an auto-pool", _choice_text(annotated_subnet)),
            ("pod annotation ipam.spidernet.io/ippools", _choice_text(many)),
            (
                "pod annotation ipam.spidernet.io/ippool",
                _choice_text(one) + (" (SpiderSubnets: served as the subnet annotation)" if via_ippool else ""),
            ),
            ("namespace default pools", _names(*ns_defaults)),
            (f"CNI config default pools ({network or 'the node default network'})", _names(netconf.ipv4, netconf.ipv6)),
            ("cluster default pools (spec.default: true)", _names(defaults[4], defaults[6])),
        ]
        pod_ann_nic = pod_ann
        if subnet_choice is not None:
            # the agent resolves the subnet to the application's auto-pool; so do we
            autos = {f: _auto_pool(pools, app, iface, f) for f in families}
            answer.auto_pool = ", ".join(p for p in autos.values() if p) or None
            if answer.auto_pool is None:
                of = app.describe() if app is not None else "the pod's application (it has none: a bare pod)"
                answer.source = via_ippool or "pod annotation ipam.spidernet.io/subnet(s): an auto-pool"
                answer.error = (
                    f"no auto-pool of {of} for {iface} from SpiderSubnet {_choice_text(subnet_choice)} exists yet;"
                    " spiderpool-controller makes it: is it running? See the application's events"
                )
                answers.append(answer)
                continue
            pod_ann_nic = _with_auto(pod_ann, iface, autos)
        ctx = PodContext(
            namespace=pod_ns,
            name=pod_name,
            labels=labels,
            node=str((pod.get("spec") or {}).get("nodeName") or ""),
            node_labels=dict(((node or {}).get("metadata") or {}).get("labels") or {}),
            namespace_labels=dict((namespace.get("metadata") or {}).get("labels") or {}),
            annotations=pod_ann_nic,
            namespace_defaults=ns_defaults,
            networks=networks,
        )
        present_families = tuple(f for f in families if f in (4, 6))
        try:
            plan = plan_nic(ctx, iface, pools, netconf=netconf, families=present_families)
        except SelectionError as exc:
            answer.error = str(exc)
            answer.source = exc.candidates[0].source if exc.candidates else _source_of(answer.sources)
            for cand in exc.candidates:
                answer.verdicts += [Verdict(cand.family, n, f"rejected: {why}") for n, why in cand.rejected]
            answers.append(answer)
            continue
        answer.source = via_ippool or plan.source
        held = [r for r in mine if r["spec"].get("interface") == iface]
        for r in split_predecessors(plan, held)[1]:
            answer.moves.append(
                f"{move_reason(plan, r['spec'])}: the pod keeps it while it runs; when the pod is re-created"
                " (a StatefulSet's too), it is released and the new pod takes one from the pools named now"
            )
        taken = {p for _, _, p in answer.ips}
        for cand in plan.families:
            for name in cand.pools:
                used, total = _usage(pools[name])
                if name in taken:
                    verdict = "chosen"
                elif used >= total:
                    verdict = f"rejected: exhausted {used}/{total}"
                else:
                    verdict = f"usable ({total - used} free), not needed" if taken else f"usable ({total - used} free)"
                answer.verdicts.append(Verdict(cand.family, name, verdict))
            answer.verdicts += [Verdict(cand.family, n, f"rejected: {why}") for n, why in cand.rejected]
        answers.append(answer)
    return answers


def _source_of(sources: list[tuple[str, str]]) -> str:
    return next((s for s, v in sources if v != "not set"), "")


def _with_auto(pod_ann: ann.PodAnnotations, iface: str, autos: Mapping[int, str | None]) -> ann.PodAnnotations:
    v4, v6 = autos.get(4), autos.get(6)
    choice = ann.PoolChoice(iface, (v4,) if v4 else (), (v6,) if v6 else ())
    return replace(pod_ann, ippool=None, ippools=(), auto_pools=(choice,))
