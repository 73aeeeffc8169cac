"""The ``spiderpool.spidernet.io/v2beta1`` API, field-compatible with upstream Spiderpool.

These dataclasses are the single source of truth for the CRD schemas (``spiderpool.api.crds``
renders them). Rules that concern one object live here as schema facts and CEL rules, so the
apiserver enforces them even while spiderpool-controller is down; rules that need other objects
live in the controller's admission webhooks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from spiderpool.api.schema import F, Rule

GROUP = "spiderpool.spidernet.io"
VERSION = "v2beta1"
API_VERSION = f"{GROUP}/{VERSION}"

# --------------------------------------------------------------- field kinds
_IP_RANGE_RULE = Rule(
    "isIP(self) || (self.split('-').size() == 2 && isIP(self.split('-')[0]) && isIP(self.split('-')[1])"
    " && ip(self.split('-')[0]).family() == ip(self.split('-')[1]).family())",
    "{} must be an IP address or a range 'first-last' of one family, e.g. 172.18.30.131-172.18.30.140",
    values=("self",),
)
IPRanges = Annotated[
    list[str],
    F(max_items=512, items=F(max_length=96, rules=(_IP_RANGE_RULE,))),
]
CIDR = Annotated[
    str,
    F(
        max_length=64,
        rules=(
            Rule("isCIDR(self)", "{} must be a CIDR with a prefix length, e.g. 172.18.0.0/16", values=("self",)),
            Rule(
                "!isCIDR(self) || cidr(self) == cidr(self).masked()",
                "{} must be a network address (host bits zero), e.g. 172.18.0.0/16 rather than 172.18.1.0/16",
                values=("self",),
            ),
        ),
    ),
]
IP = Annotated[
    str, F(max_length=64, rules=(Rule("isIP(self)", "{} must be an IP address, e.g. 172.18.0.1", values=("self",)),))
]
IPVersion = Annotated[int, F(enum=(4, 6), description="IP family: 4 or 6. Defaulted from subnet.")]
Names = Annotated[list[str], F(max_items=256, items=F(max_length=253))]
# (values are shown as written: CEL's string() has no size bound, and the apiserver's cost estimate
# refuses a messageExpression whose output it cannot bound)
_IMMUTABLE = Rule(
    "self == oldSelf",
    "is immutable[ (it was {}, now {})]: delete and re-create the object to change it",
    values=("oldSelf", "self"),
)
_IMMUTABLE_VERSION = Rule(
    "self == oldSelf",
    "is immutable[ (it was IPv{}, now IPv{})]: delete and re-create the object to change it",
    values=("(oldSelf == 4 ? '4' : '6')", "(self == 4 ? '4' : '6')"),
)


@dataclass
class LabelSelectorRequirement:
    key: Annotated[str, F(max_length=317)]
    operator: Annotated[str, F(enum=("In", "NotIn", "Exists", "DoesNotExist"))]
    values: Names | None = None


@dataclass
class LabelSelector:
    """A label selector (matchLabels and matchExpressions are ANDed)."""

    matchLabels: dict[str, str] | None = None
    matchExpressions: Annotated[list[LabelSelectorRequirement], F(max_items=64)] | None = None


_NON_EMPTY_SELECTOR = Rule(
    "(has(self.matchLabels) && size(self.matchLabels) > 0) ||"
    " (has(self.matchExpressions) && size(self.matchExpressions) > 0)",
    "an empty selector is not allowed: give matchLabels or matchExpressions, or omit the field",
)
Selector = Annotated[LabelSelector, F(rules=(_NON_EMPTY_SELECTOR,))]


@dataclass
class Route:
    dst: Annotated[
        str,
        F(
            max_length=64,
            rules=(
                Rule("isCIDR(self)", "{} must be a destination CIDR, e.g. 10.10.0.0/16", values=("self",)),
                Rule(
                    "!isCIDR(self) || cidr(self).prefixLength() != 0",
                    "a default route is not allowed in routes: set the gateway field instead",
                ),
            ),
        ),
    ]
    gw: IP


Routes = Annotated[
    list[Route],
    F(
        max_items=64,
        rules=(
            Rule(
                "self.all(r, self.exists_one(o, o.dst == r.dst))",
                "must not repeat a dst: one route per dst",
            ),
        ),
    ),
]


def _family_rules(kind: str) -> tuple[Rule, ...]:
    """Rules tying ipVersion, gateway, ips and routes to the subnet (IPPool and Subnet share them)."""
    outside = "!r.split('-').all(a, !isIP(a) || cidr(self.subnet).containsIP(a))"
    inside = "!isCIDR(self.subnet) || !self.{f}.exists(r, " + outside + ")"
    return (
        Rule(
            "!has(self.ipVersion) || !isCIDR(self.subnet) || cidr(self.subnet).ip().family() == self.ipVersion",
            f"{kind}: spec.ipVersion {{}} does not match the family of spec.subnet {{}}; fix ipVersion or omit it",
            field_path=".ipVersion",
            values=("(self.ipVersion == 4 ? '4' : '6')", "self.subnet"),
        ),
        Rule(
            "!has(self.gateway) || !isCIDR(self.subnet) || !isIP(self.gateway)"
            " || cidr(self.subnet).containsIP(self.gateway)",
            f"{kind}: spec.gateway {{}} is outside spec.subnet {{}}; use an address inside the subnet",
            field_path=".gateway",
            values=("self.gateway", "self.subnet"),
        ),
        Rule(
            "!has(self.ips) || " + inside.format(f="ips"),
            f"{kind}: spec.ips has addresses outside spec.subnet {{}}[ (such as {{}})]; keep every range inside"
            " the subnet",
            field_path=".ips",
            values=("self.subnet", f"self.ips.filter(r, {outside})[0]"),
        ),
        Rule(
            "!has(self.excludeIPs) || " + inside.format(f="excludeIPs"),
            f"{kind}: spec.excludeIPs has addresses outside spec.subnet {{}}[ (such as {{}})]; keep every range"
            " inside the subnet",
            field_path=".excludeIPs",
            values=("self.subnet", f"self.excludeIPs.filter(r, {outside})[0]"),
        ),
        Rule(
            "!has(self.routes) || !isCIDR(self.subnet) ||"
            " self.routes.all(r, !isIP(r.gw) || cidr(self.subnet).containsIP(r.gw))",
            f"{kind}: a route gw is outside spec.subnet {{}}; routes must go via a next hop inside the subnet",
            field_path=".routes",
            values=("self.subnet",),
        ),
    )


# ------------------------------------------------------- IPPool and Subnet
@dataclass
class AddressingSpec:
    """The addressing fields SpiderIPPool and SpiderSubnet share."""

    subnet: Annotated[CIDR, F(rules=(_IMMUTABLE,))]
    ipVersion: Annotated[IPVersion, F(rules=(_IMMUTABLE_VERSION,))] | None = None
    ips: IPRanges | None = None
    excludeIPs: IPRanges | None = None
    gateway: IP | None = None
    vlan: Annotated[int, F(minimum=0, maximum=4094, description="Accepted for older manifests; unused.")] | None = None
    routes: Routes | None = None


@dataclass
class IPPoolSpec(AddressingSpec):
    """Desired state of a SpiderIPPool."""

    __rules__ = _family_rules("SpiderIPPool")

    podAffinity: Selector | None = None
    namespaceAffinity: Selector | None = None
    namespaceName: Names | None = None
    nodeAffinity: Selector | None = None
    nodeName: Names | None = None
    multusName: (
        Annotated[
            list[str],
            F(
                max_items=64,
                items=F(
                    max_length=317,
                    pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?/)?[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
                ),
            ),
        ]
        | None
    ) = None
    default: Annotated[bool, F(default=False, description="Use this pool when no other rule picks one.")] | None = None
    disable: Annotated[bool, F(default=False, description="A disabled pool hands out no new IPs.")] | None = None


@dataclass
class IPPoolStatus:
    allocatedIPs: Annotated[str, F(description="JSON map of IP to its holder")] | None = None
    allocatedIPCount: Annotated[int, F(minimum=0)] | None = None
    totalIPCount: Annotated[int, F(minimum=0)] | None = None


@dataclass
class SubnetSpec(AddressingSpec):
    """Desired state of a SpiderSubnet."""

    __rules__ = _family_rules("SpiderSubnet")


@dataclass
class SubnetStatus:
    controlledIPPools: Annotated[str, F(description="JSON map of pool name to the IPs it holds")] | None = None
    allocatedIPCount: Annotated[int, F(minimum=0)] | None = None
    totalIPCount: Annotated[int, F(minimum=0)] | None = None


# -------------------------------------------------------------- ReservedIP
@dataclass
class ReservedIPSpec:
    """IPs that no pool hands out, cluster-wide."""

    __rules__ = (
        Rule(
            "!has(self.ipVersion) ||"
            " self.ips.all(r, r.split('-').all(a, !isIP(a) || ip(a).family() == self.ipVersion))",
            "SpiderReservedIP: spec.ips must all be of the family given by spec.ipVersion {}[ (not {})]",
            field_path=".ips",
            values=(
                "(self.ipVersion == 4 ? '4' : '6')",
                "self.ips.filter(r, !r.split('-').all(a, !isIP(a) || ip(a).family() == self.ipVersion))[0]",
            ),
        ),
        Rule(
            "!isIP(self.ips[0].split('-')[0]) || self.ips.all(r, r.split('-').all(a, !isIP(a)"
            " || ip(a).family() == ip(self.ips[0].split('-')[0]).family()))",
            "SpiderReservedIP: spec.ips mixes IPv4 and IPv6; use one SpiderReservedIP per family",
            field_path=".ips",
        ),
    )

    ips: Annotated[IPRanges, F(min_items=1, max_items=128)]
    ipVersion: Annotated[IPVersion, F(rules=(_IMMUTABLE_VERSION,))] | None = None


# ---------------------------------------------------------------- Endpoint
@dataclass
class RecordedRoute:
    """A route as recorded for a pod (already validated where it came from)."""

    dst: str
    gw: str


@dataclass
class IPAllocationDetail:
    interface: Annotated[str, F(max_length=15)]
    ipv4: str | None = None
    ipv6: str | None = None
    ipv4Pool: str | None = None
    ipv6Pool: str | None = None
    vlan: Annotated[int, F(minimum=0, maximum=4094)] | None = None
    ipv4Gateway: str | None = None
    ipv6Gateway: str | None = None
    cleanGateway: bool | None = None
    routes: Annotated[list[RecordedRoute], F(max_items=64)] | None = None
    mac: str | None = None


@dataclass
class PodIPAllocation:
    uid: str
    node: str | None = None
    ips: list[IPAllocationDetail] | None = None


@dataclass
class EndpointStatus:
    current: PodIPAllocation
    ownerControllerType: str | None = None
    ownerControllerName: str | None = None


# ------------------------------------------------------------ IPAllocation
@dataclass
class IPAllocationSpec:
    """One allocated address. The object is named after the IP, so the apiserver guarantees that an
    address is held at most once: creating the object *is* the allocation."""

    ip: Annotated[str, F(max_length=64)]
    pool: Annotated[str, F(max_length=253)]
    ipVersion: Annotated[int, F(enum=(4, 6))]
    namespace: Annotated[str, F(max_length=63)]
    pod: Annotated[str, F(max_length=253)]
    podUID: Annotated[str, F(max_length=64)]
    interface: Annotated[str, F(max_length=15)]
    node: Annotated[str, F(max_length=253)] | None = None
    containerID: Annotated[str, F(max_length=128)] | None = None
    cleanGateway: bool | None = None
    ownerKind: str | None = None
    ownerName: str | None = None
    #: set when the IP was taken back from a pod that may still run (garbage collection): the record
    #: then holds the IP for no pod until this time (RFC 3339), so nobody else gets it meanwhile
    quarantineUntil: Annotated[str, F(max_length=64)] | None = None
    #: why the IP was taken back (with quarantineUntil)
    releaseReason: Annotated[str, F(max_length=64)] | None = None


# ------------------------------------------------------------- Coordinator
_CIDR_OR_IP = Rule(
    "isCIDR(self) || isIP(self)", "{} must be a CIDR or an IP address, e.g. 169.254.0.0/16", values=("self",)
)


_SAME_FAMILY = (
    "!isIP(r.gw) || !(isCIDR(r.dst) || isIP(r.dst))"
    " || ip(r.gw).family() == (isCIDR(r.dst) ? cidr(r.dst).ip().family() : ip(r.dst).family())"
)


@dataclass
class PolicyRoute:
    dst: Annotated[str, F(max_length=64, rules=(_CIDR_OR_IP,))]
    gw: IP


@dataclass
class CoordinatorSpec:
    """Defaults for the coordinator (veth) plugin on every node."""

    __rules__ = (
        Rule(
            "!has(self.policyRoutes) || self.policyRoutes.all(r, " + _SAME_FAMILY + ")",
            # (no values: the cost the apiserver estimates for picking the offending route out is too high)
            "SpiderCoordinator: a policyRoutes gw must be of the same family as its dst",
            field_path=".policyRoutes",
        ),
    )

    mode: Annotated[str, F(enum=("auto", "underlay", "overlay", "disabled"), default="auto", max_length=16)] | None = (
        None
    )
    podCIDRType: Annotated[str, F(enum=("auto", "cluster", "calico", "cilium", "none"), max_length=16)] | None = None
    hijackCIDR: Annotated[list[str], F(max_items=64, items=F(max_length=64, rules=(_CIDR_OR_IP,)))] | None = None
    policyRoutes: Annotated[list[PolicyRoute], F(max_items=64)] | None = None
    podMACPrefix: (
        Annotated[
            str,
            F(
                pattern=r"^([0-9a-fA-F][02468aceACE]:[0-9a-fA-F]{2})?$",
                description="Two bytes, e.g. 0a:1b; the first byte must be unicast (even).",
            ),
        ]
        | None
    ) = None
    tunePodRoutes: Annotated[bool, F(default=True)] | None = None
    podDefaultRouteNIC: Annotated[str, F(max_length=15)] | None = None
    hostRuleTable: (
        Annotated[
            int,
            F(
                minimum=1,
                maximum=2147483647,
                default=500,
                rules=(
                    Rule(
                        "!(self in [253, 254, 255])",
                        "must not be a kernel table (253 default, 254 main, 255 local); e.g. 500",
                    ),
                ),
            ),
        ]
        | None
    ) = None
    podRPFilter: Annotated[int, F(minimum=-1, maximum=2, default=0, description="-1 leaves it unchanged")] | None = None
    txQueueLen: Annotated[int, F(minimum=0, default=0)] | None = None
    vethLinkAddress: (
        Annotated[
            str,
            F(
                max_length=15,
                rules=(
                    Rule(
                        "self == '' || (isIP(self) && ip(self).family() == 4 && ip(self).isLinkLocalUnicast())",
                        "{} must be an IPv4 link-local address (169.254.0.0/16) or empty",
                        values=("self",),
                    ),
                ),
            ),
        ]
        | None
    ) = None
    vethMTU: Annotated[int, F(minimum=576, maximum=65535, default=1500)] | None = None
    detectGateway: Annotated[bool, F(description="Legacy; ignored.")] | None = None
    detectIPConflict: Annotated[bool, F(description="Legacy; ignored.")] | None = None
    hostRPFilter: Annotated[int, F(description="Legacy; ignored.")] | None = None


@dataclass
class CoordinatorStatus:
    phase: Annotated[str, F(enum=("Synced", "NotReady"))] | None = None
    reason: str | None = None
    overlayPodCIDR: list[str] | None = None
    serviceCIDR: list[str] | None = None


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
