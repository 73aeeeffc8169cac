"""The ``veth``/``coordinator`` plugin's network-config keys: the reference walkthrough's (``service_cidr``,
``cluster_cidr``, ``additional_cidr``, ``hardware_prefix``, ``only_hardware``, ``rp_filter``,
``move_routes``) and the modern coordinator's where they mean the same. Pure; every error names its key.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

#: keys every CNI config may carry
_CNI_KEYS = {"cniVersion", "name", "type", "prevResult", "runtimeConfig", "capabilities", "args", "cniVersions"}
#: accepted for compatibility and ignored, as upstream does
_IGNORED = {"detectOptions", "logOptions", "only_hardware"}
#: upstream's modes; its plugin spells the last one ``disable`` while its CRD says ``disabled``: both work
MODES = ("auto", "underlay", "overlay", "disabled", "disable")


class ConfigError(ValueError):
    def __init__(self, key: str, problem: str, example: str) -> None:
        self.key = key
        super().__init__(f"{key}: {problem}; expected e.g. {example}")


@dataclass(frozen=True)
class VethConfig:
    #: routed to the host through veth0 (service, cluster, additional and hijack CIDRs)
    hijack: tuple[str, ...] = ()
    mac_prefix: str | None = None
    rp_filter: int | None = None
    move_routes: bool = True
    tune_pod_routes: bool = True
    default_route_nic: str | None = None
    host_rule_table: int = 500
    veth_mtu: int = 1500
    detect_ip_conflict: bool = False
    detect_gateway: bool = False
    #: (dst CIDR, gateway): routes for the NIC (main table for eth0, the NIC's own table for the others)
    policy_routes: tuple[tuple[str, str], ...] = ()
    #: the pod NIC's transmit queue length; 0 leaves the kernel's
    tx_queue_len: int = 0
    #: an IPv4 link-local address for veth0 (for sidecars such as Istio's that need one)
    veth_link_address: str | None = None
    #: auto (underlay when the NIC is eth0 or veth0 exists, else overlay), underlay, overlay, disabled
    mode: str = "auto"


def _cidrs(key: str, value: Any) -> tuple[str, ...]:
    example = '["10.96.0.0/12"]'
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise ConfigError(key, "must be a list of CIDRs", example)
    out = []
    for item in value:
        try:
            out.append(str(ipaddress.ip_network(str(item), strict=False)))
        except ValueError:
            raise ConfigError(key, f"{item!r} is not a CIDR", example) from None
    return tuple(out)


def _policy_routes(key: str, value: Any) -> tuple[tuple[str, str], ...]:
    example = '[{"dst": "10.20.0.0/16", "gw": "172.18.0.1"}]'
    if not isinstance(value, list):
        raise ConfigError(key, "must be a list of {dst, gw} objects", example)
    out = []
    for i, item in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(item, dict) or set(item) != {"dst", "gw"}:
            raise ConfigError(where, "must be an object with exactly dst and gw", example)
        try:
            dst = ipaddress.ip_network(str(item["dst"]), strict=False)  # a bare IP becomes a /32 or /128
        except ValueError:
            raise ConfigError(f"{where}.dst", f"{item['dst']!r} is not a CIDR", example) from None
        try:
            gw = ipaddress.ip_address(str(item["gw"]))
        except ValueError:
            raise ConfigError(f"{where}.gw", f"{item['gw']!r} is not an IP address", example) from None
        if gw.version != dst.version:
            raise ConfigError(f"{where}.gw", f"{gw} is not of the family of {dst}", example)
        out.append((str(dst), str(gw)))
    return tuple(out)


def _link_address(key: str, value: Any) -> str | None:
    if value in ("", None):
        return None
    try:
        ip = ipaddress.ip_address(str(value))
    except ValueError:
        ip = None
    if ip is None or ip.version != 4 or not ip.is_link_local:
        raise ConfigError(key, f"{value!r} is not an IPv4 link-local address", '"169.254.100.1"')
    return str(ip)


def _mac_prefix(key: str, value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-fA-F]{2}:[0-9a-fA-F]{2}", value):
        raise ConfigError(key, f"{value!r} is not two hex bytes", '"0a:1b"')
    if int(value[:2], 16) & 1:
        raise ConfigError(key, f"{value!r} is a multicast prefix (its first byte is odd)", '"0a:1b"')
    return value.lower()


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, "must be true or false", "true")
    return value


def _int(key: str, value: Any, lo: int, hi: int, example: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ConfigError(key, f"must be a whole number from {lo} to {hi}", example)
    return value


def parse(conf: dict[str, Any]) -> VethConfig:
    hijack: list[str] = []
    out: dict[str, Any] = {}
    for key, value in conf.items():
        if key in _CNI_KEYS or key in _IGNORED:
            continue
        if key in ("service_cidr", "cluster_cidr", "additional_cidr", "serviceCIDR", "hijackCIDR", "overlayPodCIDR"):
            hijack += _cidrs(key, value)
        elif key in ("hardware_prefix", "podMACPrefix"):
            if value:
                out["mac_prefix"] = _mac_prefix(key, value)
        elif key == "rp_filter":
            if not isinstance(value, dict) or set(value) - {"enabled", "value"}:
                raise ConfigError(key, "must be an object with enabled and value", '{"enabled": true, "value": 2}')
            if _bool("rp_filter.enabled", value.get("enabled", False)):
                out["rp_filter"] = _int("rp_filter.value", value.get("value", 0), 0, 2, "2")
        elif key == "podRPFilter":  # -1: leave the pod's rp_filter as the kernel set it
            rp = _int(key, value, -1, 2, "0")
            out["rp_filter"] = None if rp == -1 else rp
        elif key == "move_routes":
            out["move_routes"] = _bool(key, value)
        elif key == "tunePodRoutes":
            out["tune_pod_routes"] = _bool(key, value)
        elif key in ("podDefaultRouteNIC", "podDefaultRouteNic"):
            if not isinstance(value, str):
                raise ConfigError(key, "must be an interface name", '"net1"')
            out["default_route_nic"] = value or None
        elif key == "hostRuleTable":
            out["host_rule_table"] = _int(key, value, 1, 2**31 - 1, "500")
        elif key == "detectIPConflict":
            out["detect_ip_conflict"] = _bool(key, value)
        elif key == "detectGateway":
            out["detect_gateway"] = _bool(key, value)
        elif key == "vethMTU":
            out["veth_mtu"] = _int(key, value, 576, 65535, "1500")
        elif key == "policyRoutes":
            out["policy_routes"] = _policy_routes(key, value)
        elif key == "txQueueLen":
            out["tx_queue_len"] = _int(key, value, 0, 2**31 - 1, "1000")
        elif key == "vethLinkAddress":
            out["veth_link_address"] = _link_address(key, value)
        elif key == "mode":
            if value not in MODES:
                raise ConfigError(key, f"{value!r} is not a mode", "one of auto, underlay, overlay, disabled")
            out["mode"] = "disabled" if value == "disable" else value
        elif key in ("podDefaultCniNic", "hostRPFilter"):
            continue  # eth0 is the first NIC here; the node's rp_filter is the admin's
        else:
            known = sorted(
                {"service_cidr", "cluster_cidr", "additional_cidr", "hardware_prefix", "rp_filter", "move_routes"}
                | {"serviceCIDR", "hijackCIDR", "podMACPrefix", "podRPFilter", "tunePodRoutes", "podDefaultRouteNIC"}
                | {"hostRuleTable", "vethMTU", "detectIPConflict", "detectGateway", "policyRoutes", "txQueueLen"}
                | {"vethLinkAddress", "mode", "overlayPodCIDR", "cluster_cidr", "additional_cidr"}
            )
            raise ConfigError(key, "is not a key of the veth plugin", f"one of {', '.join(known)}")
    return VethConfig(hijack=tuple(dict.fromkeys(hijack)), **out)


def mac_for(prefix: str, ip: str) -> str:
    """``<prefix>:<the IPv4's 4 bytes>`` (IPv6: its last 4 bytes), as upstream makes pod MACs."""
    packed = ipaddress.ip_address(ip).packed[-4:]
    return prefix + ":" + ":".join(f"{b:02x}" for b in packed)


#: SpiderCoordinator spec fields that are defaults for the plugin's keys of the same name
_COORDINATOR_DEFAULTS = (
    "hijackCIDR",
    "podMACPrefix",
    "tunePodRoutes",
    "podDefaultRouteNIC",
    "hostRuleTable",
    "podRPFilter",
    "vethMTU",
    "detectGateway",
    "detectIPConflict",
    "policyRoutes",
    "txQueueLen",
    "vethLinkAddress",
)


#: status fields of the SpiderCoordinator -> the config keys (either spelling) that, when set, win over them
_STATUS_DEFAULTS = {
    "serviceCIDR": ("service_cidr", "serviceCIDR"),
    "overlayPodCIDR": ("cluster_cidr", "overlayPodCIDR"),
}


def with_defaults(
    conf: dict[str, Any], coordinator_spec: dict[str, Any] | None, coordinator_status: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The network config with the SpiderCoordinator's values under it: a key the config sets wins.
    The status gives the discovered service and pod CIDRs, so a config without ``service_cidr``
    still routes Services through the host."""
    merged: dict[str, Any] = {}
    for key in (*_COORDINATOR_DEFAULTS, "mode"):
        value = (coordinator_spec or {}).get(key)
        if value is None or value == "" or (key == "podRPFilter" and value == -1):
            continue
        merged[key] = value
    for key, spellings in _STATUS_DEFAULTS.items():
        value = (coordinator_status or {}).get(key)
        if value and not any(conf.get(k) not in (None, "", []) for k in spellings):
            merged[key] = value
    return {**merged, **conf}
