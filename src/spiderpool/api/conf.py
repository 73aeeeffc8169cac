"""``conf.yml`` of the ConfigMap ``spiderpool-conf`` (upstream's keys), read by the agent and the
controller at start. Command-line flags given explicitly win over it.

Unknown keys are reported, not fatal (upstream's file carries keys for features not built here);
a known key with a wrong type is an error naming the key."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

#: upstream's chart writes the first; upstream's code reads the second (so its default never
#: applied). Both are read here, the second winning when both are set.
REDUNDANT_KEYS = ("clusterSubnetDefaultFlexibleIPNumber", "clusterSubnetAutoPoolDefaultRedundantIPNumber")
_BOOLS = ("enableIPv4", "enableIPv6", "enableStatefulSet", "enableSpiderSubnet", "enableAutoPoolForApplication")
_STRINGS = ("ipamUnixSocketPath", "clusterNetwork")
#: keys of upstream's file this implementation knows and does not use
_IGNORED = frozenset(
    {
        "enableKubevirtStaticIP",
        "enableIPConflictDetection",
        "enableGatewayDetection",
        "enableCleanOutdatedEndpoint",
        "enableValidatingResourcesDeletedWebhook",
        "tuneSysctlConfig",
        "podResourceInject",
        "iaasNetworkProvider",
        "agent",
    }
)


class ConfError(ValueError):
    pass


@dataclass(frozen=True)
class Conf:
    ipam_socket: str | None = None
    enable_ipv4: bool | None = None
    enable_ipv6: bool | None = None
    enable_statefulset: bool | None = None
    enable_subnet: bool | None = None
    #: auto-pools for applications naming a SpiderSubnet (upstream's chart: ipam.spiderSubnet.autoPool.enable)
    enable_auto_pool: bool | None = None
    auto_pool_extra_ips: int | None = None
    cluster_network: str | None = None
    #: keys neither used nor known (likely typos): the caller logs them
    unknown: tuple[str, ...] = field(default=())


def parse(text: str, source: str = "conf.yml") -> Conf:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfError(f"{source} is not valid YAML: {exc}") from None
    if doc is None:
        return Conf()
    if not isinstance(doc, dict):
        kind = type(doc).__name__
        raise ConfError(f"{source} must be a mapping of upstream's keys (e.g. enableIPv4: true), not {kind}")
    values: dict[str, Any] = {}
    for key in _BOOLS:
        if key in doc and doc[key] is not None:
            if not isinstance(doc[key], bool):
                raise ConfError(f"{source}: {key} must be true or false, not {doc[key]!r}")
            values[key] = doc[key]
    for key in _STRINGS:
        if key in doc and doc[key] is not None:
            if not isinstance(doc[key], str):
                raise ConfError(f"{source}: {key} must be a string, not {doc[key]!r}")
            values[key] = doc[key]
    extra = None
    for key in REDUNDANT_KEYS:
        if key in doc and doc[key] is not None:
            number = doc[key]
            if isinstance(number, bool) or not isinstance(number, int) or number < 0:
                raise ConfError(f"{source}: {key} must be a whole number >= 0, not {number!r}")
            extra = number
    known = set(_BOOLS) | set(_STRINGS) | set(REDUNDANT_KEYS) | _IGNORED
    socket_path = values.get("ipamUnixSocketPath")
    if socket_path is not None and not socket_path.startswith("/"):
        raise ConfError(f"{source}: ipamUnixSocketPath must be an absolute path, not {socket_path!r}")
    return Conf(
        ipam_socket=socket_path,
        enable_ipv4=values.get("enableIPv4"),
        enable_ipv6=values.get("enableIPv6"),
        enable_statefulset=values.get("enableStatefulSet"),
        enable_subnet=values.get("enableSpiderSubnet"),
        enable_auto_pool=values.get("enableAutoPoolForApplication"),
        auto_pool_extra_ips=extra,
        cluster_network=values.get("clusterNetwork"),
        unknown=tuple(sorted(str(k) for k in doc if k not in known)),
    )


def check_supported(conf: Conf, source: str = "conf.yml") -> None:
    """Refuse what upstream allows and this implementation does not do (yet), naming the key."""
    if conf.enable_statefulset is False:
        raise ConfError(f"{source}: enableStatefulSet: false is not supported (StatefulSet pods always keep their IPs)")
    if conf.enable_subnet is False:
        raise ConfError(f"{source}: enableSpiderSubnet: false is not supported (SpiderSubnets are always on)")
    if conf.enable_ipv4 is False and conf.enable_ipv6 is False:
        raise ConfError(f"{source}: enableIPv4 and enableIPv6 are both false: enable at least one IP family")
