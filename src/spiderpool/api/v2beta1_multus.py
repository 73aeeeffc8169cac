"""``SpiderMultusConfig`` of the ``spiderpool.spidernet.io/v2beta1`` API (see ``v2beta1``): the
CNI sub-configs it generates a NetworkAttachmentDefinition from, and the rules between them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from spiderpool.api.schema import F, Rule
from spiderpool.api.v2beta1 import CoordinatorSpec

# ------------------------------------------------------------ MultusConfig
_POOL_NAME = Rule(
    "self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')",
    "{} is not a SpiderIPPool name: lowercase letters, digits, '-' and '.', starting and ending with a letter"
    " or digit, e.g. pool-v4",
    values=("self",),
)
PoolNames = Annotated[list[str], F(max_items=64, items=F(max_length=253, rules=(_POOL_NAME,)))]


@dataclass
class IPPoolsSelection:
    """The pools the NetworkAttachmentDefinition names (the IPAM config's default_ipv4_ippool and
    default_ipv6_ippool)."""

    ipv4: PoolNames | None = None
    ipv6: PoolNames | None = None
    matchMasterSubnet: bool | None = None


# (no regex: the kernel's rule is short, and CEL's cost estimate of a regex is high)
_IFACE_NAME = Rule(
    "size(self) > 0 && self != '.' && self != '..' && !self.contains('/') && !self.contains(':')"
    " && !self.contains(' ')",
    "{} is not an interface name: up to 15 characters, none of '/', ':' or ' ', e.g. eth0",
    values=("self",),
)
IfaceName = Annotated[str, F(max_length=15, rules=(_IFACE_NAME,))]


@dataclass
class BondConfig:
    name: IfaceName
    mode: Annotated[int, F(minimum=0, maximum=6, description="Linux bonding mode, 0 (balance-rr) to 6 (balance-alb)")]
    options: Annotated[str, F(max_length=1024)] | None = None


_BOND_NEEDED = Rule(
    "size(self.master) < 2 || has(self.bond)",
    "with two or more master interfaces, bond is required: name the bond and its mode",
    field_path=".bond",
)
Masters = Annotated[list[IfaceName], F(min_items=1, max_items=8)]
VlanID = Annotated[int, F(minimum=0, maximum=4094, description="0: untagged")]
MTU = Annotated[int, F(minimum=0, maximum=65535, description="0: the master's")]


@dataclass
class MacvlanConfig:
    __rules__ = (_BOND_NEEDED,)

    master: Masters
    vlanID: VlanID | None = None
    mtu: MTU | None = None
    bond: BondConfig | None = None
    rdmaResourceName: Annotated[str, F(max_length=253)] | None = None
    ippools: IPPoolsSelection | None = None


@dataclass
class VlanConfig:
    __rules__ = (
        _BOND_NEEDED,
        Rule(
            "has(self.vlanID) && self.vlanID > 0",
            "vlanID is required with cniType vlan: the VLAN the vlan plugin tags, 1 to 4094",
            field_path=".vlanID",
        ),
    )

    master: Masters
    vlanID: VlanID | None = None
    vlanMode: Annotated[str, F(enum=("manual", "auto"))] | None = None
    mtu: MTU | None = None
    bond: BondConfig | None = None
    rdmaResourceName: Annotated[str, F(max_length=253)] | None = None
    ippools: IPPoolsSelection | None = None


@dataclass
class SriovConfig:
    __rules__ = (
        Rule(
            "!has(self.minTxRateMbps) || !has(self.maxTxRateMbps) || self.maxTxRateMbps == 0"
            " || self.minTxRateMbps <= self.maxTxRateMbps",
            "minTxRateMbps must not exceed maxTxRateMbps (0: no limit)",
            field_path=".minTxRateMbps",
        ),
    )

    resourceName: Annotated[
        str,
        F(
            max_length=253,
            rules=(
                Rule(
                    "size(self) > 0",
                    "must name the SR-IOV device plugin's resource, e.g. spidernet.io/sriov_netdevice",
                ),
            ),
        ),
    ]
    vlanID: VlanID | None = None
    mtu: MTU | None = None
    minTxRateMbps: Annotated[int, F(minimum=0)] | None = None
    maxTxRateMbps: Annotated[int, F(minimum=0)] | None = None
    rdmaIsolation: bool | None = None
    ippools: IPPoolsSelection | None = None


_CNI_TYPES = ("macvlan", "ipvlan", "vlan", "sriov", "ovs", "ib-sriov", "ipoib", "custom")
#: what each cniType's sub-config must at least give
_NEEDS = {
    "macvlan": "give its master interface(s)",
    "ipvlan": "give its master interface(s)",
    "vlan": "give its master interface(s) and vlanID",
    "sriov": "give the SR-IOV resourceName",
    "ovs": "give the OVS bridge",
    "ib-sriov": "give the InfiniBand SR-IOV resourceName",
    "ipoib": "give the IPoIB master interface",
    "custom": "give the CNI config or conflist as JSON (custom is the default cniType)",
}


def _required_for(field: str, cni_type: str) -> Rule:
    return Rule(
        f"!has(self.cniType) || self.cniType != '{cni_type}' || has(self.{field})",
        f"SpiderMultusConfig: spec.{field} is required when spec.cniType is '{cni_type}'; {_NEEDS[cni_type]}",
        field_path=f".{field}",
    )


def _only_matching(field: str, cni_type: str) -> Rule:
    return Rule(
        f"!has(self.{field}) || self.cniType == '{cni_type}'",
        f"SpiderMultusConfig: spec.{field} is set but spec.cniType is not '{cni_type}'; set one matching sub-config",
        field_path=f".{field}",
    )


def _no_pools_without_ipam(field: str) -> Rule:
    return Rule(
        f"!has(self.disableIPAM) || !self.disableIPAM || !has(self.{field}) || !has(self.{field}.ippools)",
        f"SpiderMultusConfig: spec.{field}.ippools is set but spec.disableIPAM is true, so no IPAM would use them;"
        " remove ippools or set disableIPAM to false",
        field_path=f".{field}.ippools",
    )


_SUB_CONFIGS = (
    ("macvlan", "macvlan"),
    ("ipvlan", "ipvlan"),
    ("vlan", "vlan"),
    ("sriov", "sriov"),
    ("ovs", "ovs"),
    ("ibsriov", "ib-sriov"),
    ("ipoib", "ipoib"),
    ("customCNI", "custom"),
)


@dataclass
class MultusConfigSpec:
    """Generates a Multus NetworkAttachmentDefinition of the same name (or the
    multus.spidernet.io/cr-name annotation's) and namespace."""

    __rules__ = (
        *(_only_matching(f, t) for f, t in _SUB_CONFIGS),
        *(_required_for(f, t) for f, t in _SUB_CONFIGS),
        *(_no_pools_without_ipam(f) for f in ("macvlan", "ipvlan", "vlan", "sriov")),
        Rule(
            # (charAt, not a regex: the field has no length bound for the cost estimate to use)
            "!has(self.coordinator) || !has(self.coordinator.podMACPrefix) || self.coordinator.podMACPrefix.size() < 2"
            " || !(self.coordinator.podMACPrefix.charAt(1) in"
            " ['1', '3', '5', '7', '9', 'b', 'd', 'f', 'B', 'D', 'F'])",
            "SpiderMultusConfig: spec.coordinator.podMACPrefix is a multicast prefix (its first byte is odd);"
            " use an even first byte, e.g. 0a:1b",
            field_path=".coordinator.podMACPrefix",
        ),
    )

    cniType: Annotated[str, F(enum=_CNI_TYPES, default="custom", max_length=16)] | None = None
    macvlan: MacvlanConfig | None = None
    ipvlan: MacvlanConfig | None = None
    vlan: VlanConfig | None = None
    sriov: SriovConfig | None = None
    ovs: Annotated[Any, F(preserve_unknown=True)] | None = None
    ibsriov: Annotated[Any, F(preserve_unknown=True)] | None = None
    ipoib: Annotated[Any, F(preserve_unknown=True)] | None = None
    enableCoordinator: Annotated[bool, F(default=True)] | None = None
    disableIPAM: Annotated[bool, F(default=False)] | None = None
    #: (no defaults: a field the SMC leaves out keeps the SpiderCoordinator's cluster-wide value)
    coordinator: Annotated[CoordinatorSpec, F(no_defaults=True)] | None = None
    chainCNIJsonData: Annotated[list[Annotated[str, F(max_length=65536)]], F(max_items=16)] | None = None
    customCNI: Annotated[str, F(max_length=65536)] | None = None
