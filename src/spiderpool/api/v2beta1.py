"""The ``spiderpool.spidernet.io/v2beta1`` API, field-compatible with upstream Spiderpool.

These dataclasses are the single source of truth for the CRD schemas (``spiderpool.api.crds``
renders them). Rules that concern one object live here as schema facts and CEL rules, so the
apiserver enforces them even while spiderpool-controller is down; rules that need other objects
live in the controller's admission webhooks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

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
