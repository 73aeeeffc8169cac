"""What the SpiderCoordinator's status says, decided from what the cluster shows (pure: no I/O).

The reconciler (``controller/coordinator.py``) gathers the inputs: the kube-system/kubeadm-config
ConfigMap, the kube-controller-manager pods' flags, the ServiceCIDR objects, Calico's and
Cilium's pools, and the node's CNI configuration (for ``podCIDRType: auto``). Here they become
``status.phase``, ``reason``, ``serviceCIDR`` and ``overlayPodCIDR``:

- service CIDR: the live ServiceCIDR objects when there are any (Kubernetes >= 1.33 always has
  ``kubernetes``, made from the apiserver's own flag), else kubeadm-config's
  ``networking.serviceSubnet``, else kube-controller-manager's ``--service-cluster-ip-range``;
- overlay pod CIDR by ``podCIDRType``: ``cluster`` kubeadm-config's ``networking.podSubnet``, else
  kube-controller-manager's ``--cluster-cidr``; ``calico`` the enabled Calico IPPools; ``cilium``
  cilium-config's cluster pools and the CiliumPodIPPools; ``none`` nothing;
- NotReady, with a reason naming what is missing and how to fix it, when a CIDR that is needed has
  no source.

CIDR lists are normalised (host bits cleared), deduplicated and sorted: IPv4 first, then by
address and prefix length, so the status does not flap with the order the sources list them in.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

SYNCED, NOT_READY = "Synced", "NotReady"
POD_CIDR_TYPES = ("cluster", "calico", "cilium", "none")

KUBEADM = "the kube-system/kubeadm-config ConfigMap"
KCM_LABEL = "component=kube-controller-manager"
CILIUM_CONFIG = "the kube-system/cilium-config ConfigMap"

#: (kubeadm ClusterConfiguration key, kube-controller-manager flag) per CIDR
_KEYS = {
    "service": ("networking.serviceSubnet", "--service-cluster-ip-range"),
    "pod": ("networking.podSubnet", "--cluster-cidr"),
}
#: main plugins of underlay CNIs: their pods have no overlay CIDR to route
UNDERLAY_PLUGINS = frozenset({"macvlan", "ipvlan", "sriov", "ovs", "ib-sriov", "ipoib", "vlan"})
MULTUS_PLUGINS = frozenset({"multus", "multus-shim"})
CNI_SUFFIXES = (".conf", ".conflist", ".json")


def normalize(cidrs: Iterable[str]) -> list[str]:
    """Valid CIDRs (a bare IP is its /32 or /128), host bits cleared, deduplicated, IPv4 first,
    then by address and prefix length. What is not a CIDR is left out."""
    nets: set[ipaddress.IPv4Network | ipaddress.IPv6Network] = set()
    for text in cidrs:
        try:
            nets.add(ipaddress.ip_network(str(text).strip(), strict=False))
        except ValueError:
            continue
    return [str(n) for n in sorted(nets, key=lambda n: (n.version, int(n.network_address), n.prefixlen))]


def split_cidrs(text: str) -> tuple[list[str], list[str]]:
    """A comma-separated list (dual stack: ``10.244.0.0/16,fd00::/56``) -> (CIDRs, entries that
    are not CIDRs)."""
    good: list[str] = []
    bad: list[str] = []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        if normalize([part]):
            good.append(part)
        else:
            bad.append(part)
    return normalize(good), bad


@dataclass(frozen=True)
class Source:
    """What one source (kubeadm-config, the kube-controller-manager pods) says; an empty tuple is
    "does not say"."""

    service: tuple[str, ...] = ()
    pod: tuple[str, ...] = ()
    #: why it could not be read at all, phrased after the source's name ("has no ... key")
    problem: str = ""
    #: entries that are not CIDRs, per CIDR ("service", "pod")
    invalid: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def get(self, which: str) -> tuple[str, ...]:
        return self.service if which == "service" else self.pod


def parse_kubeadm(data: Mapping[str, Any] | None) -> Source:
    """The ``data`` of kube-system/kubeadm-config: its ``ClusterConfiguration`` YAML's
    ``networking.serviceSubnet`` and ``networking.podSubnet`` (each maybe a dual-stack list)."""
    text = (data or {}).get("ClusterConfiguration")
    if not isinstance(text, str) or not text.strip():
        return Source(problem="has no ClusterConfiguration key")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        return Source(problem="has a ClusterConfiguration that is not valid YAML")
    if not isinstance(doc, dict):
        return Source(problem="has a ClusterConfiguration that is not a YAML mapping")
    networking = doc.get("networking")
    if not isinstance(networking, dict):
        networking = {}
    found: dict[str, tuple[str, ...]] = {}
    invalid: dict[str, tuple[str, ...]] = {}
    for which, key in (("service", "serviceSubnet"), ("pod", "podSubnet")):
        value = networking.get(key)
        if value is None or value == "":
            continue
        good, bad = split_cidrs(str(value))
        found[which] = tuple(good)
        if bad:
            invalid[which] = tuple(bad)
    return Source(service=found.get("service", ()), pod=found.get("pod", ()), invalid=invalid)


def flag_values(argv: Sequence[str], flag: str) -> str | None:
    """The value of ``--flag=value`` or ``--flag value`` in ``argv``; the last one wins, as Go's
    flag parsing has it."""
    value: str | None = None
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(flag + "="):
            value = arg[len(flag) + 1 :]
    return value


def pod_argv(pod: Mapping[str, Any]) -> list[str]:
    """``command`` + ``args`` of every container of a pod, in order."""
    argv: list[str] = []
    for container in (pod.get("spec") or {}).get("containers") or []:
        if isinstance(container, dict):
            argv += [str(a) for a in (container.get("command") or [])]
            argv += [str(a) for a in (container.get("args") or [])]
    return argv


def parse_kcm(argvs: Iterable[Sequence[str]]) -> Source:
    """kube-controller-manager's ``--service-cluster-ip-range`` and ``--cluster-cidr``, from the
    argv of each of its pods (HA control planes run several: the first that says wins)."""
    found: dict[str, tuple[str, ...]] = {}
    invalid: dict[str, tuple[str, ...]] = {}
    for argv in argvs:
        for which, (_, flag) in _KEYS.items():
            value = flag_values(argv, flag)
            if which in found or value is None:
                continue
            good, bad = split_cidrs(value)
            if good:
                found[which] = tuple(good)
                invalid.pop(which, None)
            elif bad:
                invalid.setdefault(which, tuple(bad))
    return Source(service=found.get("service", ()), pod=found.get("pod", ()), invalid=invalid)


# ------------------------------------------------------------ podCIDRType auto
@dataclass(frozen=True)
class Auto:
    """What ``podCIDRType: auto`` resolved to, and from what (for the reason and the log)."""

    type: str
    source: str


def _plugins(conf: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    plugins = conf.get("plugins")
    if isinstance(plugins, list):
        return [p for p in plugins if isinstance(p, dict)]
    return [conf]


def _main_type(conf: Mapping[str, Any]) -> str:
    plugins = _plugins(conf)
    return str(plugins[0].get("type") or "") if plugins else ""


def cidr_type_of(conf: Mapping[str, Any]) -> tuple[str, str]:
    """(podCIDRType, why) for a CNI network configuration (a .conf or a .conflist), judged by its
    main (first) plugin. Calico's conflist is named ``k8s-pod-network``. Unlike upstream, which
    maps only flannel to ``cluster``, every CNI that is neither Calico, Cilium nor an underlay
    (flannel, bridge, ptp, kindnet, ...) maps to ``cluster``: those use the nodes' pod CIDRs, which
    come from the cluster's pod CIDR."""
    name = str(conf.get("name") or "")
    plugins = _plugins(conf)
    main = plugins[0] if plugins else {}
    kind = str(main.get("type") or "")
    ipam = main.get("ipam")
    ipam_type = str(ipam.get("type") or "") if isinstance(ipam, dict) else ""
    if kind == "calico" or name == "k8s-pod-network":
        return "calico", f"plugin {kind or name}"
    if kind in ("cilium-cni", "cilium"):
        return "cilium", f"plugin {kind}"
    if kind in UNDERLAY_PLUGINS:
        return "none", f"underlay plugin {kind}"
    if ipam_type == "spiderpool":
        return "none", f"plugin {kind} with ipam spiderpool"
    return "cluster", f"plugin {kind or '(no type)'}"


def _cluster_network(
    multus: Mapping[str, Any], name: str, files: Mapping[str, Any]
) -> tuple[str, Mapping[str, Any]] | None:
    """Multus' cluster network: its first delegate, its ``clusterNetwork`` (inline, a file of the
    directory, or a network named in one), else the next file of the directory that is not Multus'
    (what Multus' own auto-configuration delegates to)."""
    delegates = multus.get("delegates")
    if isinstance(delegates, list) and delegates and isinstance(delegates[0], dict):
        return f"{name} (first delegate)", delegates[0]
    cluster = multus.get("clusterNetwork")
    if isinstance(cluster, dict):
        return f"{name} (clusterNetwork)", cluster
    if isinstance(cluster, str) and cluster:
        base = cluster.rstrip("/").rsplit("/", 1)[-1]
        for other, conf in sorted(files.items()):
            if isinstance(conf, dict) and (other == base or conf.get("name") == cluster):
                return f"{name} (clusterNetwork {cluster}: {other})", conf
    for other, conf in sorted(files.items()):
        if other > name and isinstance(conf, dict) and _main_type(conf) not in MULTUS_PLUGINS:
            return f"{name} (Multus; the next file, {other})", conf
    return None


def resolve_auto(files: Mapping[str, Any]) -> Auto:
    """``podCIDRType: auto`` from a CNI configuration directory: file name -> its parsed JSON (None
    when unreadable). The lexically first readable configuration decides, as container runtimes
    pick it; no readable one resolves to ``none``."""
    names = sorted(n for n in files if n.endswith(CNI_SUFFIXES))
    for name in names:
        conf = files[name]
        if not isinstance(conf, dict):
            continue
        source = name
        if _main_type(conf) in MULTUS_PLUGINS:
            multus = _plugins(conf)[0]
            found = _cluster_network(multus, name, files)
            if found is None:
                return Auto("none", f"{name} (Multus, with no cluster network found)")
            source, conf = found
        kind, why = cidr_type_of(conf)
        return Auto(kind, f"{source}: {why}")
    return Auto("none", "no readable CNI configuration")


# ------------------------------------------------------------ the decision
@dataclass(frozen=True)
class Inputs:
    #: the SpiderCoordinator's ``spec.podCIDRType`` ("" or "auto": resolved by ``auto``)
    pod_cidr_type: str = ""
    #: podCIDRType auto resolved (from the CNI configuration); None: not needed or unknown
    auto: Auto | None = None
    #: kube-system/kubeadm-config parsed; None: the ConfigMap does not exist
    kubeadm: Source | None = None
    #: kube-controller-manager pods parsed; None: no such pod
    kcm: Source | None = None
    #: CIDRs of the live ServiceCIDR objects; None: the API is not served
    service_cidrs: tuple[str, ...] | None = None
    #: CIDRs of the enabled Calico IPPools; None: the API is not served
    calico_pools: tuple[str, ...] | None = None
    #: kube-system/cilium-config's cluster pools; None: the ConfigMap does not exist
    cilium_config: tuple[str, ...] | None = None
    #: CIDRs of the CiliumPodIPPools; None: the API is not served
    cilium_pools: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Decision:
    phase: str
    reason: str
    service: list[str]
    overlay: list[str]
    #: the effective podCIDRType (auto resolved)
    pod_cidr_type: str

    def status(self) -> dict[str, Any]:
        """The status subresource's content: ``reason`` only while NotReady."""
        out: dict[str, Any] = {"phase": self.phase, "serviceCIDR": self.service, "overlayPodCIDR": self.overlay}
        if self.reason:
            out["reason"] = self.reason
        return out


def effective_type(inputs: Inputs) -> str:
    kind = inputs.pod_cidr_type or "auto"
    if kind == "auto":
        return inputs.auto.type if inputs.auto else "none"
    return kind if kind in POD_CIDR_TYPES else "none"


def _type_note(inputs: Inputs, kind: str) -> str:
    if (inputs.pod_cidr_type or "auto") == "auto" and inputs.auto is not None:
        return f"{kind}, chosen by auto from {inputs.auto.source}"
    return kind


def _source_clause(src: Source | None, missing: list[str], *, kcm: bool) -> str:
    """Why ``src`` (kubeadm-config, or the kube-controller-manager pods) gives none of the
    ``missing`` CIDRs."""
    if src is None:
        return f"no kube-system pod labelled {KCM_LABEL} exists" if kcm else f"{KUBEADM} does not exist"
    if src.problem:
        return f"{KUBEADM} {src.problem}"
    parts: list[str] = []
    absent: list[str] = []
    for which in missing:
        key = _KEYS[which][1 if kcm else 0]
        bad = src.invalid.get(which)
        if bad and kcm:
            parts.append(f"kube-controller-manager's {key} {','.join(bad)!r} is not a CIDR")
        elif bad:
            parts.append(f"the {key} {','.join(bad)!r} of {KUBEADM} is not a CIDR")
        else:
            absent.append(key)
    if kcm and absent:
        flags = " or ".join(absent)
        parts.insert(0, f"no kube-system pod labelled {KCM_LABEL} has a {flags} flag")
    elif absent:
        keys = f"neither {absent[0]} nor {absent[1]}" if len(absent) == 2 else f"no {absent[0]}"
        parts.insert(0, f"{KUBEADM} has {keys}")
    return " and ".join(parts)


def _cluster_reason(inputs: Inputs, missing: list[str], kind: str) -> str:
    what = "service and pod CIDRs" if len(missing) == 2 else f"{missing[0]} CIDR"
    if inputs.kubeadm is None and inputs.kcm is None:
        why = f"neither {KUBEADM} nor a kube-system pod labelled {KCM_LABEL} exists"
    else:
        why = (
            f"{_source_clause(inputs.kubeadm, missing, kcm=False)}, and {_source_clause(inputs.kcm, missing, kcm=True)}"
        )
    if "service" in missing and inputs.service_cidrs is not None:
        why += ", and no networking.k8s.io/v1 ServiceCIDR exists"
    keys = " and ".join(_KEYS[w][0] for w in missing)
    fix = f"set {keys} in the ClusterConfiguration of {KUBEADM} (as kubeadm writes it)"
    if "service" in missing and inputs.service_cidrs is not None:
        fix += ", or create a ServiceCIDR for the service CIDR"
    if "pod" in missing:
        fix += f", or {_retype(inputs, kind, 'calico, cilium or none')}"
    return f"no {what} found: {why}; {fix}"


def _retype(inputs: Inputs, kind: str, others: str) -> str:
    now = _type_note(inputs, kind)
    return f"set the SpiderCoordinator's spec.podCIDRType (now {now}) to {others} to match the cluster's CNI"


def _calico_reason(inputs: Inputs, kind: str) -> str:
    if inputs.calico_pools is None:
        why, fix = "the crd.projectcalico.org/v1 ippools API is not served", "install Calico"
    else:
        why, fix = "no enabled crd.projectcalico.org/v1 IPPool exists", "create one"
    return f"no Calico IPPool found: {why}; {fix}, or {_retype(inputs, kind, 'cluster, cilium or none')}"


def _cilium_reason(inputs: Inputs, kind: str) -> str:
    if inputs.cilium_config is None:
        config = f"{CILIUM_CONFIG} does not exist"
    else:
        config = f"{CILIUM_CONFIG} has neither cluster-pool-ipv4-cidr nor cluster-pool-ipv6-cidr"
    if inputs.cilium_pools is None:
        pools = "the cilium.io/v2alpha1 ciliumpodippools API is not served"
    else:
        pools = "no cilium.io/v2alpha1 CiliumPodIPPool exists"
    return (
        f"no Cilium pod CIDR found: {config}, and {pools}; set cluster-pool-ipv4-cidr or cluster-pool-ipv6-cidr"
        f" in {CILIUM_CONFIG} or create a CiliumPodIPPool, or {_retype(inputs, kind, 'cluster, calico or none')}"
    )


def decide(inputs: Inputs) -> Decision:
    kind = effective_type(inputs)
    kubeadm, kcm = inputs.kubeadm or Source(), inputs.kcm or Source()
    # per CIDR: kubeadm-config first, kube-controller-manager's flags where it says nothing
    cluster_service = kubeadm.service or kcm.service
    cluster_pod = kubeadm.pod or kcm.pod

    service = normalize(inputs.service_cidrs or ()) or normalize(cluster_service)
    missing = [] if service else ["service"]
    overlay: list[str] = []
    reasons: list[str] = []
    if kind == "cluster":
        overlay = normalize(cluster_pod)
        if not overlay:
            missing.append("pod")
    if missing:
        reasons.append(_cluster_reason(inputs, missing, kind))
    if kind == "calico":
        overlay = normalize(inputs.calico_pools or ())
        if not overlay:
            reasons.append(_calico_reason(inputs, kind))
    elif kind == "cilium":
        overlay = normalize([*(inputs.cilium_config or ()), *(inputs.cilium_pools or ())])
        if not overlay:
            reasons.append(_cilium_reason(inputs, kind))
    phase = NOT_READY if reasons else SYNCED
    return Decision(phase, "; ".join(reasons), service, overlay, kind)


# ------------------------------------------------------------ reading the objects
def live_service_cidrs(objs: Iterable[Mapping[str, Any]]) -> tuple[str, ...]:
    """The CIDRs of ServiceCIDR objects, leaving out those being deleted."""
    out: list[str] = []
    for obj in objs:
        if (obj.get("metadata") or {}).get("deletionTimestamp"):
            continue
        out += [str(c) for c in (obj.get("spec") or {}).get("cidrs") or []]
    return tuple(normalize(out))


def calico_cidrs(pools: Iterable[Mapping[str, Any]]) -> tuple[str, ...]:
    """``spec.cidr`` of the Calico IPPools that are not disabled (nor being deleted)."""
    out: list[str] = []
    for pool in pools:
        spec = pool.get("spec") or {}
        if spec.get("disabled") is True or (pool.get("metadata") or {}).get("deletionTimestamp"):
            continue
        if spec.get("cidr"):
            out.append(str(spec["cidr"]))
    return tuple(normalize(out))


def cilium_config_cidrs(data: Mapping[str, Any] | None) -> tuple[str, ...]:
    """cilium-config's ``cluster-pool-ipv4-cidr`` and ``cluster-pool-ipv6-cidr`` (each a list,
    separated by commas or spaces)."""
    out: list[str] = []
    for key in ("cluster-pool-ipv4-cidr", "cluster-pool-ipv6-cidr"):
        value = (data or {}).get(key)
        if isinstance(value, str):
            out += split_cidrs(value.replace(" ", ","))[0]
    return tuple(normalize(out))


def cilium_pool_cidrs(pools: Iterable[Mapping[str, Any]]) -> tuple[str, ...]:
    """``spec.ipv4.cidrs`` and ``spec.ipv6.cidrs`` of CiliumPodIPPools."""
    out: list[str] = []
    for pool in pools:
        if (pool.get("metadata") or {}).get("deletionTimestamp"):
            continue
        spec = pool.get("spec") or {}
        for family in ("ipv4", "ipv6"):
            fam = spec.get(family)
            if isinstance(fam, dict):
                out += [str(c) for c in fam.get("cidrs") or []]
    return tuple(normalize(out))
