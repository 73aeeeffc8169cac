"""A SpiderMultusConfig rendered as the Multus NetworkAttachmentDefinition it stands for. Pure.

The NAD is named after the SMC (or its ``multus.spidernet.io/cr-name`` annotation), in the SMC's
namespace, controlled by it (an owner reference with ``controller: true``). Its ``spec.config`` is a
conflist: the main plugin (with spiderpool IPAM unless ``disableIPAM``), the ``chainCNIJsonData``
plugins in order, then the coordinator unless ``enableCoordinator`` is false. ``cniType: custom``
takes ``customCNI`` exactly as written (a conflist or a single config): its cniVersion and name are
not rewritten, and neither chain plugins nor the coordinator are added (the webhook refuses them).

A master that needs setting up first (a VLAN sub-interface, a bond of several masters) is made by
the ``ifacer`` plugin, put first in the list as upstream does. Spiderpool here does not ship ifacer:
such NADs work only on nodes where it is installed. Neither are the sriov, ovs, ib-sriov, ipoib,
rdma or tuning plugins shipped; their NADs need them on the nodes.

The output is a function of the SMC alone, with a fixed key order (annotations and labels sorted,
JSON compact), so a live NAD compared with the rendering is equal exactly when nothing drifted.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

from spiderpool.api.v2beta1 import API_VERSION, CoordinatorSpec

NAD_API_VERSION = "k8s.cni.cncf.io/v1"
NAD_KIND = "NetworkAttachmentDefinition"
SMC_KIND = "SpiderMultusConfig"

#: the NAD's name, when not the SMC's
CR_NAME = "multus.spidernet.io/cr-name"
#: the conflist's cniVersion
CNI_VERSION = "multus.spidernet.io/cni-version"
#: the conflist's name, when not the NAD's
CNICONFIG_NAME = "cni.spidernet.io/cniconfig-name"
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
#: the device plugin resource a pod of this network needs (read by Multus and the resources injector)
RESOURCE_NAME = "k8s.v1.cni.cncf.io/resourceName"
#: SMC annotations that say how to render, not what to copy
NOT_COPIED = frozenset({CR_NAME, CNI_VERSION, CNICONFIG_NAME, LAST_APPLIED})

CNI_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
DEFAULT_CNI_VERSION = "0.3.1"

#: an object name (DNS-1123 subdomain), as the apiserver checks a NAD's
NAME_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
NAME_MAX = 253
#: a CNI network name, as libcni checks it
CNI_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*")

#: coordinator fields that go into the plugin's config (podCIDRType is how the cluster-wide
#: SpiderCoordinator finds pod CIDRs; the plugin has no such key)
COORDINATOR_KEYS = tuple(f.name for f in dataclasses.fields(CoordinatorSpec) if f.name != "podCIDRType")

Obj = dict[str, Any]


class RenderError(ValueError):
    """The SMC cannot be rendered; ``str()`` names the field (the webhook refuses all of these)."""


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _sorted(mapping: dict[str, Any]) -> dict[str, Any]:
    return {k: mapping[k] for k in sorted(mapping)}


def nad_name(smc: Obj) -> str:
    meta = smc.get("metadata") or {}
    return str((meta.get("annotations") or {}).get(CR_NAME) or meta.get("name", ""))


def owner_reference(smc: Obj) -> Obj:
    meta = smc.get("metadata") or {}
    return {
        "apiVersion": API_VERSION,
        "kind": SMC_KIND,
        "name": str(meta.get("name", "")),
        "uid": str(meta.get("uid", "")),
        "controller": True,
        "blockOwnerDeletion": True,
    }


def controller_of(obj: Obj) -> Obj | None:
    """The owner reference with ``controller: true``, if any."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if isinstance(ref, dict) and ref.get("controller") is True:
            return ref
    return None


def render(smc: Obj) -> Obj:
    """The NetworkAttachmentDefinition ``smc`` stands for; raises ``RenderError``."""
    meta = smc.get("metadata") or {}
    spec = smc.get("spec") or {}
    annotations = {str(k): str(v) for k, v in (meta.get("annotations") or {}).items()}
    name = nad_name(smc)
    nad_annotations = {k: v for k, v in annotations.items() if k not in NOT_COPIED}
    cni_type = str(spec.get("cniType") or "custom")
    if cni_type == "custom":
        custom = spec.get("customCNI")
        if not isinstance(custom, str) or not custom.strip():
            raise RenderError("spec.customCNI is required with cniType custom")
        config = custom
    else:
        plugins, resource = _plugins(cni_type, spec)
        for i, item in enumerate(spec.get("chainCNIJsonData") or []):
            plugins.append(_chained(i, item))
        if spec.get("enableCoordinator", True) is not False:
            plugins.append(_coordinator(spec.get("coordinator") or {}))
        if resource:
            nad_annotations[RESOURCE_NAME] = resource
        conf = {
            "cniVersion": annotations.get(CNI_VERSION) or DEFAULT_CNI_VERSION,
            "name": annotations.get(CNICONFIG_NAME) or name,
            "plugins": plugins,
        }
        config = _compact(conf)
    out_meta: Obj = {"name": name, "namespace": str(meta.get("namespace", ""))}
    labels = meta.get("labels") or {}
    if labels:
        out_meta["labels"] = _sorted({str(k): str(v) for k, v in labels.items()})
    if nad_annotations:
        out_meta["annotations"] = _sorted(nad_annotations)
    out_meta["ownerReferences"] = [owner_reference(smc)]
    return {"apiVersion": NAD_API_VERSION, "kind": NAD_KIND, "metadata": out_meta, "spec": {"config": config}}


# ------------------------------------------------------------------ plugins
def _sub(spec: Obj, field: str, cni_type: str) -> Obj:
    cfg = spec.get(field)
    if not isinstance(cfg, dict):
        raise RenderError(f"spec.{field} is required with cniType {cni_type}")
    return cfg


def _plugins(cni_type: str, spec: Obj) -> tuple[list[Obj], str]:
    """The plugins before the chained ones, and the device plugin resource (or "")."""
    if cni_type in ("macvlan", "ipvlan"):
        cfg = _sub(spec, cni_type, cni_type)
        ifacer, master = _master(cni_type, cfg, vlan_in_name=True)
        main: Obj = {"type": cni_type, "master": master, "mode": "bridge" if cni_type == "macvlan" else "l2"}
        _mtu(main, cfg)
        _ipam(main, spec, cfg)
        return [*ifacer, main], str(cfg.get("rdmaResourceName") or "")
    if cni_type == "vlan":
        cfg = _sub(spec, "vlan", "vlan")
        # (the vlan plugin makes the VLAN sub-interface itself: ifacer only bonds)
        ifacer, master = _master("vlan", cfg, vlan_in_name=False)
        main = {"type": "vlan", "master": master, "vlanId": int(cfg.get("vlanID") or 0)}
        _mtu(main, cfg)
        _ipam(main, spec, cfg)
        return [*ifacer, main], str(cfg.get("rdmaResourceName") or "")
    if cni_type == "sriov":
        cfg = _sub(spec, "sriov", "sriov")
        main = {"type": "sriov", "vlan": int(cfg.get("vlanID") or 0)}
        if cfg.get("minTxRateMbps") is not None:
            main["min_tx_rate"] = int(cfg["minTxRateMbps"])
        if cfg.get("maxTxRateMbps") is not None:
            main["max_tx_rate"] = int(cfg["maxTxRateMbps"])
        _ipam(main, spec, cfg)
        plugins = [main]
        if cfg.get("mtu"):  # sriov-cni leaves the VF's MTU alone: tuning sets it
            plugins.append({"type": "tuning", "mtu": int(cfg["mtu"])})
        if cfg.get("rdmaIsolation"):
            plugins.append({"type": "rdma"})
        return plugins, str(cfg.get("resourceName") or "")
    if cni_type == "ovs":
        cfg = _sub(spec, "ovs", "ovs")
        main = {"type": "ovs", "bridge": cfg.get("bridge")}
        for key in ("vlan", "trunk", "mtu", "deviceID"):
            if cfg.get(key) is not None:
                main[key] = cfg[key]
        _ipam(main, spec, cfg)
        return [main], ""
    if cni_type == "ib-sriov":
        cfg = _sub(spec, "ibsriov", "ib-sriov")
        main = {"type": "ib-sriov"}
        for key, conf_key in (
            ("pkey", "pkey"),
            ("linkState", "link_state"),
            ("rdmaIsolation", "rdmaIsolation"),
            ("ibKubernetesEnabled", "ibKubernetesEnabled"),
        ):
            if cfg.get(key) is not None:
                main[conf_key] = cfg[key]
        _ipam(main, spec, cfg)
        return [main], str(cfg.get("resourceName") or "")
    if cni_type == "ipoib":
        cfg = _sub(spec, "ipoib", "ipoib")
        main = {"type": "ipoib", "master": cfg.get("master")}
        _ipam(main, spec, cfg)
        return [main], ""
    raise RenderError(f"spec.cniType {cni_type!r} is not a known CNI type")


def _master(field: str, cfg: Obj, *, vlan_in_name: bool) -> tuple[list[Obj], str]:
    """(the ifacer plugin, if one is needed; the master the main plugin uses)."""
    masters = [str(m) for m in cfg.get("master") or []]
    if not masters:
        raise RenderError(f"spec.{field}.master needs at least one interface")
    bond = cfg.get("bond")
    if len(masters) > 1 and not isinstance(bond, dict):
        raise RenderError(f"spec.{field}.bond is required with two or more masters")
    vlan = int(cfg.get("vlanID") or 0)
    base = str(bond["name"]) if isinstance(bond, dict) else masters[0]
    if not isinstance(bond, dict) and not (vlan and vlan_in_name):
        return [], base
    ifacer: Obj = {"type": "ifacer", "interfaces": masters, "vlanID": vlan if vlan_in_name else 0}
    if isinstance(bond, dict):
        ifacer["bond"] = {"name": str(bond["name"]), "mode": int(bond.get("mode") or 0)}
        if bond.get("options"):
            ifacer["bond"]["options"] = str(bond["options"])
    return [ifacer], f"{base}.{vlan}" if vlan and vlan_in_name else base


def _mtu(main: Obj, cfg: Obj) -> None:
    if cfg.get("mtu"):  # (0: the master's)
        main["mtu"] = int(cfg["mtu"])


def _ipam(main: Obj, spec: Obj, cfg: Obj) -> None:
    if spec.get("disableIPAM"):
        return
    ipam: Obj = {"type": "spiderpool"}
    pools = cfg.get("ippools") or {}
    if isinstance(pools, dict):
        for family in ("ipv4", "ipv6"):
            if pools.get(family):
                ipam[f"default_{family}_ippool"] = [str(p) for p in pools[family]]
        if pools.get("matchMasterSubnet"):
            ipam["match_master_subnet"] = True
    main["ipam"] = ipam


def _chained(i: int, item: Any) -> Obj:
    try:
        plugin = json.loads(item) if isinstance(item, str) else None
    except ValueError:
        plugin = None
    if not isinstance(plugin, dict) or not isinstance(plugin.get("type"), str):
        raise RenderError(f"spec.chainCNIJsonData[{i}] is not a plugin config with a type")
    return plugin


def _coordinator(coordinator: Obj) -> Obj:
    out: Obj = {"type": "coordinator"}
    for key in COORDINATOR_KEYS:
        if coordinator.get(key) is not None:
            out[key] = coordinator[key]
    return out
