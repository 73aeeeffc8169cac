"""Admission logic for Spiderpool objects: defaults and normalisation (mutate), cross-object rules
(validate). Pure functions over plain dicts; the webhook server feeds them the request and a
snapshot of the other objects it watches.

Rules that need only the object itself are in the CRD schema (see ``spiderpool.api.v2beta1``) and
are not repeated here, except where the webhook must parse a field anyway.
"""

from __future__ import annotations

import contextlib
import copy
import ipaddress
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from spiderpool.api import constants as c
from spiderpool.api.v2beta1 import API_VERSION
from spiderpool.controller import nad
from spiderpool.ipam.autopool import owner_of
from spiderpool.ipam.ranges import IPSet, RangeError, cidr_label, parse_cidr, parse_ip, parse_range

Obj = dict[str, Any]


@dataclass
class Snapshot:
    """The other Spiderpool objects the webhook knows of (from its watch caches), by name."""

    pools: dict[str, Obj] = field(default_factory=dict)
    subnets: dict[str, Obj] = field(default_factory=dict)
    #: pool name -> allocated IP -> holder ({"pod": "ns/name", "podUid": ...}), from the allocation records
    allocated: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)


@dataclass(frozen=True)
class Settings:
    enable_ipv4: bool = True
    enable_ipv6: bool = True
    #: the users spiderpool-controller writes as (its own identity): the only ones that may change an
    #: auto-pool's addressing. Empty: not known, so nobody is refused.
    controller_users: frozenset[str] = frozenset()


# ------------------------------------------------------------------ helpers
def _spec(obj: Obj) -> Obj:
    spec = obj.get("spec")
    return spec if isinstance(spec, dict) else {}


def _name(obj: Obj) -> str:
    return str(obj.get("metadata", {}).get("name", ""))


def _family_of(spec: Obj) -> int | None:
    try:
        return parse_cidr(str(spec.get("subnet", ""))).version
    except RangeError:
        return None


def _canonical_ranges(family: int, ranges: Any) -> list[str] | None:
    if not isinstance(ranges, list):
        return None
    try:
        return IPSet.parse(family, [str(r) for r in ranges]).to_ranges()
    except RangeError:
        return None


def pool_sets(spec: Obj) -> tuple[IPSet, IPSet] | None:
    """(ips, usable) of a pool or subnet spec, or None if it does not parse."""
    family = _family_of(spec)
    if family is None:
        return None
    try:
        ips = IPSet.parse(family, [str(r) for r in spec.get("ips") or []])
        exclude = IPSet.parse(family, [str(r) for r in spec.get("excludeIPs") or []])
    except RangeError:
        return None
    return ips, ips.difference(exclude)


def _short(s: IPSet, limit: int = 3) -> str:
    ranges = s.to_ranges()
    more = f" and {len(ranges) - limit} more" if len(ranges) > limit else ""
    return ", ".join(ranges[:limit]) + more


def _owning_subnet(spec: Obj, snapshot: Snapshot) -> Obj | None:
    """The SpiderSubnet whose CIDR equals the pool's, if any."""
    try:
        net = parse_cidr(str(spec.get("subnet", "")))
    except RangeError:
        return None
    for sub in snapshot.subnets.values():
        try:
            if parse_cidr(str(_spec(sub).get("subnet", ""))) == net:
                return sub
        except RangeError:
            continue
    return None


# ------------------------------------------------------------------- mutate
def _normalise_addressing(spec: Obj) -> None:
    """Canonical CIDR/IP text, ipVersion from subnet, ranges merged and sorted."""
    try:
        net = parse_cidr(str(spec.get("subnet", "")))
    except RangeError:
        return  # the schema reports it with a precise message
    spec["subnet"] = str(net)
    spec.setdefault("ipVersion", net.version)
    for key in ("ips", "excludeIPs"):
        merged = _canonical_ranges(net.version, spec.get(key))
        if merged is not None and key in spec:
            spec[key] = merged
    gw = spec.get("gateway")
    if isinstance(gw, str):
        with contextlib.suppress(RangeError):
            spec["gateway"] = str(parse_ip(gw))
    for route in spec.get("routes") or []:
        if isinstance(route, dict):
            try:
                route["dst"] = str(parse_cidr(str(route.get("dst")), strict=False))
                route["gw"] = str(parse_ip(str(route.get("gw"))))
            except RangeError:
                pass


def _add_finalizer(obj: Obj) -> None:
    meta = obj.setdefault("metadata", {})
    if meta.get("deletionTimestamp"):
        return
    finalizers = meta.setdefault("finalizers", [])
    if c.FINALIZER not in finalizers:
        finalizers.append(c.FINALIZER)


def mutate(kind: str, obj: Obj, snapshot: Snapshot) -> Obj:
    """Return the object with defaults applied and fields normalised (never raises)."""
    out = copy.deepcopy(obj)
    if out.get("metadata", {}).get("deletionTimestamp"):
        return out
    spec = out.get("spec")
    if not isinstance(spec, dict):
        return out
    labels = out.setdefault("metadata", {}).setdefault("labels", {})
    if kind in ("SpiderIPPool", "SpiderSubnet"):
        _normalise_addressing(spec)
        _add_finalizer(out)
        if _family_of(spec) is not None:
            key = c.LABEL_IPPOOL_CIDR if kind == "SpiderIPPool" else c.LABEL_SUBNET_CIDR
            labels[key] = cidr_label(str(spec["subnet"]))
    if kind == "SpiderIPPool":
        owner = _owning_subnet(spec, snapshot)
        if owner is not None:
            link_to_subnet(out, spec, owner)
    elif kind == "SpiderReservedIP":
        ips = spec.get("ips")
        if isinstance(ips, list) and ips:
            try:
                family, _ = parse_range(str(ips[0]))
            except RangeError:
                return out
            spec.setdefault("ipVersion", family)
            merged = _canonical_ranges(family, ips)
            if merged is not None:
                spec["ips"] = merged
    elif kind == "SpiderCoordinator":
        hijack = spec.get("hijackCIDR")
        if isinstance(hijack, list):
            spec["hijackCIDR"] = [_as_cidr(str(h)) for h in hijack]
        for route in spec.get("policyRoutes") or []:
            if isinstance(route, dict) and "dst" in route:
                route["dst"] = _as_cidr(str(route["dst"]))
    if not labels:
        out["metadata"].pop("labels")
    return out


def _as_cidr(text: str) -> str:
    """A bare IP becomes a host route CIDR (/32 or /128); a CIDR is canonicalised."""
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        return text


def link_to_subnet(pool: Obj, spec: Obj, subnet: Obj) -> None:
    meta = pool["metadata"]
    sub_name = _name(subnet)
    meta.setdefault("labels", {})[c.LABEL_OWNER_SUBNET] = c.name_label(sub_name)
    uid = subnet.get("metadata", {}).get("uid")
    if uid:
        refs = [r for r in meta.get("ownerReferences", []) if r.get("kind") != "SpiderSubnet"]
        refs.append(
            {
                "apiVersion": API_VERSION,
                "kind": "SpiderSubnet",
                "name": sub_name,
                "uid": uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        )
        meta["ownerReferences"] = refs
    sub_spec = _spec(subnet)
    # A pool of a subnet inherits its gateway and routes unless it sets its own (upstream behaviour).
    if "gateway" not in spec and sub_spec.get("gateway"):
        spec["gateway"] = sub_spec["gateway"]
    if "routes" not in spec and sub_spec.get("routes"):
        spec["routes"] = copy.deepcopy(sub_spec["routes"])


# ----------------------------------------------------------------- validate
def validate(
    kind: str,
    operation: str,
    obj: Obj,
    old: Obj | None,
    snapshot: Snapshot,
    settings: Settings,
    user: str = "",
) -> list[str]:
    """Errors as ``"<field>: <problem>; <fix>"``; empty when the object is acceptable. ``user`` is
    who writes (the admission request's userInfo.username)."""
    if operation not in ("CREATE", "UPDATE"):
        return []
    if obj.get("metadata", {}).get("deletionTimestamp"):
        return []  # only finalizer removal is left to do; never block it
    spec = _spec(obj)
    if kind == "SpiderIPPool":
        hand_edit = _hand_edit_of_auto_pool(obj, old, settings, user)
        return hand_edit or _validate_pool(obj, spec, old, snapshot, settings)
    if kind == "SpiderSubnet":
        return _validate_subnet(obj, spec, old, snapshot, settings)
    if kind == "SpiderReservedIP":
        return _validate_ranges(spec, ("ips",)) + _validate_family_enabled(spec.get("ipVersion"), settings)
    if kind == "SpiderMultusConfig":
        return _validate_multus(obj)
    return []


#: what spiderpool-controller decides for an auto-pool (it sizes and places it for the application)
_AUTO_POOL_FIELDS = ("ips", "excludeIPs", "subnet", "podAffinity")


def _hand_edit_of_auto_pool(obj: Obj, old: Obj | None, settings: Settings, user: str) -> list[str]:
    """An auto-pool's addresses belong to spiderpool-controller: anyone else changing them would
    shrink the application's pool under its pods, and the controller would undo it (upstream refuses
    it too)."""
    if old is None or not settings.controller_users or user in settings.controller_users:
        return []
    owner = owner_of(old)
    if owner is None:
        return []
    changed = [f for f in _AUTO_POOL_FIELDS if _spec(obj).get(f) != _spec(old).get(f)]
    if not changed:
        return []
    kind, ns, name = owner
    return [
        f"spec.{changed[0]}: SpiderIPPool {_name(obj)!r} is the auto-pool of {kind} {ns}/{name}, and"
        " spiderpool-controller sizes it to the application, so its addresses cannot be edited by hand"
        f" (by {user or 'an unknown user'}); change the application's replicas or its"
        " ipam.spidernet.io/ippool-ip-number annotation instead, or give the application a pool of its own"
    ]


def _validate_family_enabled(version: Any, settings: Settings) -> list[str]:
    if version == 4 and not settings.enable_ipv4:
        return ["spec.ipVersion: IPv4 is disabled in this cluster (enableIPv4=false); use IPv6 or enable IPv4"]
    if version == 6 and not settings.enable_ipv6:
        return ["spec.ipVersion: IPv6 is disabled in this cluster (enableIPv6=false); use IPv4 or enable IPv6"]
    return []


def _validate_ranges(spec: Obj, keys: Iterable[str]) -> list[str]:
    errors = []
    for key in keys:
        value = spec.get(key) or []
        if not isinstance(value, list):  # (the schema refuses it first; the webhook must not crash on it)
            errors.append(f"spec.{key}: must be a list of IPs or ranges")
            continue
        for i, text in enumerate(value):
            try:
                parse_range(str(text))
            except RangeError as exc:
                errors.append(f"spec.{key}[{i}]: {exc}")
    return errors


def _validate_addressing(spec: Obj, settings: Settings) -> tuple[list[str], tuple[IPSet, IPSet] | None]:
    family = _family_of(spec)
    errors = _validate_family_enabled(family, settings)
    errors += _validate_ranges(spec, ("ips", "excludeIPs"))
    sets = pool_sets(spec) if not errors else None
    gw = spec.get("gateway")
    if sets is not None and isinstance(gw, str):
        try:
            if parse_ip(gw) in sets[1]:
                errors.append(
                    f"spec.gateway: {gw} is one of the usable IPs in spec.ips, so it could be given to a pod;"
                    " remove it from ips or add it to excludeIPs"
                )
        except RangeError:
            pass
    return errors, sets


def _validate_pool(obj: Obj, spec: Obj, old: Obj | None, snap: Snapshot, settings: Settings) -> list[str]:
    errors, sets = _validate_addressing(spec, settings)
    if sets is None:
        return errors
    ips, usable = sets
    net = parse_cidr(str(spec["subnet"]))
    me = _name(obj)
    for other in snap.pools.values():
        name = _name(other)
        if name == me or other.get("metadata", {}).get("deletionTimestamp"):
            continue
        ospec = _spec(other)
        try:
            onet = parse_cidr(str(ospec.get("subnet", "")))
        except RangeError:
            continue
        if onet.version != net.version:
            continue
        if onet == net:
            other_sets = pool_sets(ospec)
            if other_sets is not None and ips.overlaps(other_sets[0]):
                errors.append(
                    f'spec.ips: {_short(ips.intersection(other_sets[0]))} already belong to SpiderIPPool "{name}";'
                    " pools of one subnet must not share IPs, so remove them from one of the pools"
                )
        elif onet.overlaps(net):
            errors.append(
                f'spec.subnet: {net} overlaps SpiderIPPool "{name}" whose subnet is {onet};'
                f" pools of overlapping subnets must use the same CIDR (use {onet} or a disjoint subnet)"
            )
    owner = _owning_subnet(spec, snap)
    if owner is not None:
        sub_sets = pool_sets(_spec(owner))
        if sub_sets is not None and not ips.issubset(sub_sets[1]):
            errors.append(
                f"spec.ips: {_short(ips.difference(sub_sets[1]))} are not offered by SpiderSubnet"
                f' "{_name(owner)}" ({_short(sub_sets[1])}); add them to the subnet\'s ips or remove them from the pool'
            )
    else:
        for sub in snap.subnets.values():
            try:
                snet = parse_cidr(str(_spec(sub).get("subnet", "")))
            except RangeError:
                continue
            if snet.version == net.version and snet.overlaps(net):
                errors.append(
                    f'spec.subnet: {net} overlaps SpiderSubnet "{_name(sub)}" ({snet}); a pool inside a'
                    f" SpiderSubnet must use exactly its CIDR ({snet})"
                )
    held = snap.allocated.get(me, {})
    if old is not None and held:
        gone = sorted(ip for ip in held if ip not in usable)
        if gone:
            pod = held[gone[0]].get("pod", "?")
            errors.append(
                f"spec.ips: {', '.join(gone[:3])} still allocated (e.g. to pod {pod}); delete the pod"
                " (or wait for its release) before removing or excluding the IP"
            )
    return errors


def _validate_subnet(obj: Obj, spec: Obj, old: Obj | None, snap: Snapshot, settings: Settings) -> list[str]:
    errors, sets = _validate_addressing(spec, settings)
    if sets is None:
        return errors
    _, usable = sets
    net = parse_cidr(str(spec["subnet"]))
    me = _name(obj)
    for other in snap.subnets.values():
        name = _name(other)
        if name == me:
            continue
        try:
            onet = parse_cidr(str(_spec(other).get("subnet", "")))
        except RangeError:
            continue
        if onet.version == net.version and onet.overlaps(net):
            errors.append(
                f'spec.subnet: {net} overlaps SpiderSubnet "{name}" ({onet}); subnets must not overlap, so use a'
                " disjoint CIDR or add the IPs to that subnet"
            )
    for pool in snap.pools.values():
        pspec = _spec(pool)
        try:
            pnet = parse_cidr(str(pspec.get("subnet", "")))
        except RangeError:
            continue
        if pnet.version != net.version:
            continue
        if pnet == net:
            psets = pool_sets(pspec)
            if psets is not None and not psets[0].issubset(usable):
                errors.append(
                    f'spec.ips: SpiderIPPool "{_name(pool)}" holds {_short(psets[0].difference(usable))} which'
                    " this subnet would not offer; keep them in ips (not in excludeIPs) or shrink that pool first"
                )
        elif pnet.overlaps(net):
            errors.append(
                f'spec.subnet: {net} overlaps SpiderIPPool "{_name(pool)}" with subnet {pnet}; use the pool\'s'
                f" CIDR ({pnet}) for this subnet or move the pool"
            )
    return errors


# What the SMC schema cannot say: its annotations (the schema sees no metadata but the name), JSON
# inside strings, and the sub-configs the CRD keeps schemaless (ovs, ibsriov, ipoib).
_CUSTOM_EXAMPLE = '{"cniVersion":"0.3.1","name":"net1","plugins":[{"type":"macvlan","master":"eth0"}]}'
_IB_LINK_STATES = ("auto", "enable", "disable")


def _validate_multus(obj: Obj) -> list[str]:
    """SpiderMultusConfig rules beyond its schema; ``obj`` is the whole object (annotations)."""
    spec = _spec(obj)
    annotations = obj.get("metadata", {}).get("annotations") or {}
    errors = _multus_annotations(annotations if isinstance(annotations, dict) else {})
    cni_type = spec.get("cniType") or "custom"
    if cni_type == "custom":
        errors += _custom_cni(spec.get("customCNI"))
        if spec.get("chainCNIJsonData"):
            errors.append(
                "spec.chainCNIJsonData: not used with cniType custom, whose customCNI is taken as written;"
                " add the plugins to customCNI's plugins list instead"
            )
        if spec.get("coordinator"):
            errors.append(
                "spec.coordinator: not used with cniType custom, whose customCNI is taken as written;"
                ' add a {"type":"coordinator"} plugin to customCNI\'s plugins list instead'
            )
    for i, item in enumerate(spec.get("chainCNIJsonData") or []):
        where = f"spec.chainCNIJsonData[{i}]"
        try:
            plugin = json.loads(item)
        except ValueError as exc:
            errors.append(
                f'{where}: not JSON ({exc}); give one plugin config as a JSON object, e.g. {{"type":"tuning"}}'
            )
            continue
        if not isinstance(plugin, dict):
            errors.append(f'{where}: not a JSON object; give one plugin config, e.g. {{"type":"tuning"}}')
        elif not isinstance(plugin.get("type"), str) or not plugin["type"]:
            errors.append(
                f'{where}: a plugin config needs a "type" (the plugin to run); e.g. {{"type":"tuning","mtu":1400}}'
            )
    for sub, check in (("ovs", _ovs), ("ibsriov", _ibsriov), ("ipoib", _ipoib)):
        cfg = spec.get(sub)
        if cfg is None:
            continue
        if not isinstance(cfg, dict):
            errors.append(f"spec.{sub}: must be an object")
            continue
        errors += check(cfg)
        errors += _pools_of(f"spec.{sub}.ippools", cfg.get("ippools"))
        if spec.get("disableIPAM") and cfg.get("ippools"):
            errors.append(
                f"spec.{sub}.ippools: set but spec.disableIPAM is true, so no IPAM would use them;"
                " remove ippools or set disableIPAM to false"
            )
    return errors


def _multus_annotations(annotations: dict[str, Any]) -> list[str]:
    errors = []
    where = f"metadata.annotations[{nad.CR_NAME}]"
    cr_name = annotations.get(nad.CR_NAME)
    if cr_name is not None:
        cr_name = str(cr_name)
        if len(cr_name) > nad.NAME_MAX:
            errors.append(
                f"{where}: {cr_name[:40]}... is {len(cr_name)} characters, but a NetworkAttachmentDefinition"
                f" name has at most {nad.NAME_MAX}; use a shorter name"
            )
        elif not nad.NAME_RE.fullmatch(cr_name):
            errors.append(
                f"{where}: {cr_name!r} is not a valid NetworkAttachmentDefinition name (RFC 1123: lowercase"
                " letters, digits, '-' and '.', starting and ending with a letter or digit); e.g. macvlan-net1,"
                " or remove the annotation to use the SpiderMultusConfig's name"
            )
    version = annotations.get(nad.CNI_VERSION)
    if version is not None and version not in nad.CNI_VERSIONS:
        errors.append(
            f"metadata.annotations[{nad.CNI_VERSION}]: {version!r} is not a CNI version; use one of"
            f" {', '.join(nad.CNI_VERSIONS)}, or remove the annotation for {nad.DEFAULT_CNI_VERSION}"
        )
    conf_name = annotations.get(nad.CNICONFIG_NAME)
    if conf_name is not None and not nad.CNI_NAME_RE.fullmatch(str(conf_name)):
        errors.append(
            f"metadata.annotations[{nad.CNICONFIG_NAME}]: {conf_name!r} is not a CNI network name (letters,"
            " digits, '_', '.' and '-', starting with a letter or digit); e.g. macvlan-net1"
        )
    return errors


def _custom_cni(text: Any) -> list[str]:
    if not isinstance(text, str) or not text:
        return []  # required by the schema
    try:
        conf = json.loads(text)
    except ValueError as exc:
        return [
            f"spec.customCNI: not JSON ({exc}); give a CNI config or conflist as a JSON object, e.g. {_CUSTOM_EXAMPLE}"
        ]
    if not isinstance(conf, dict):
        return [f"spec.customCNI: not a JSON object; give a CNI config or conflist, e.g. {_CUSTOM_EXAMPLE}"]
    if "plugins" in conf:
        plugins = conf["plugins"]
        if not isinstance(plugins, list) or not plugins:
            return [f"spec.customCNI: plugins must be a non-empty list of plugin configs, e.g. {_CUSTOM_EXAMPLE}"]
        for i, plugin in enumerate(plugins):
            if not isinstance(plugin, dict) or not isinstance(plugin.get("type"), str) or not plugin["type"]:
                return [f'spec.customCNI: plugins[{i}] needs a "type" (the plugin to run), e.g. {_CUSTOM_EXAMPLE}']
        return []
    if not isinstance(conf.get("type"), str) or not conf["type"]:
        return [
            'spec.customCNI: neither "type" (a single plugin config) nor "plugins" (a conflist) is given;'
            f" e.g. {_CUSTOM_EXAMPLE}"
        ]
    return []


def _pools_of(where: str, pools: Any) -> list[str]:
    if pools is None:
        return []
    if not isinstance(pools, dict):
        return [f'{where}: must be an object with ipv4 and/or ipv6 pool names, e.g. {{"ipv4": ["pool-v4"]}}']
    errors = []
    for family in ("ipv4", "ipv6"):
        names = pools.get(family)
        if names is None:
            continue
        if not isinstance(names, list):
            errors.append(f'{where}.{family}: must be a list of SpiderIPPool names, e.g. ["pool-v4"]')
            continue
        for i, name in enumerate(names):
            if not isinstance(name, str) or len(name) > nad.NAME_MAX or not nad.NAME_RE.fullmatch(name):
                errors.append(
                    f"{where}.{family}[{i}]: {name!r} is not a SpiderIPPool name: lowercase letters, digits, '-'"
                    " and '.', starting and ending with a letter or digit, e.g. pool-v4"
                )
    return errors


def _whole(value: Any, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def _text(cfg: Obj, key: str) -> bool:
    return isinstance(cfg.get(key), str) and bool(cfg[key])


def _ovs(cfg: Obj) -> list[str]:
    errors = []
    if not _text(cfg, "bridge"):
        errors.append("spec.ovs.bridge: required with cniType ovs; name the OVS bridge on the nodes, e.g. br1")
    if cfg.get("vlan") is not None and not _whole(cfg["vlan"], 0, 4094):
        errors.append(f"spec.ovs.vlan: {cfg['vlan']!r} is not a VLAN ID; use a whole number from 0 to 4094")
    if cfg.get("trunk") is not None and not isinstance(cfg["trunk"], list):
        errors.append('spec.ovs.trunk: must be a list of VLAN ranges, e.g. [{"minID": 100, "maxID": 200}]')
    return errors


def _ibsriov(cfg: Obj) -> list[str]:
    errors = []
    if not _text(cfg, "resourceName"):
        errors.append(
            "spec.ibsriov.resourceName: required with cniType ib-sriov; give the device plugin's resource,"
            " e.g. spidernet.io/mellanox_ib"
        )
    if cfg.get("linkState") is not None and cfg["linkState"] not in _IB_LINK_STATES:
        errors.append(f"spec.ibsriov.linkState: {cfg['linkState']!r} is not one of {', '.join(_IB_LINK_STATES)}")
    for key in ("rdmaIsolation", "ibKubernetesEnabled"):
        if cfg.get(key) is not None and not isinstance(cfg[key], bool):
            errors.append(f"spec.ibsriov.{key}: must be true or false")
    return errors


def _ipoib(cfg: Obj) -> list[str]:
    master = cfg.get("master")
    if not isinstance(master, str) or not 0 < len(master) <= 15 or any(ch in master for ch in "/: "):
        return [
            f"spec.ipoib.master: {master!r} is not an interface name; name the IPoIB parent interface"
            " (up to 15 characters), e.g. ib0"
        ]
    return []
