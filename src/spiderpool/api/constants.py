"""Names shared with upstream Spiderpool: finalizer, labels, annotations; and the one rule for
putting an object's name into a label."""

from __future__ import annotations

import hashlib

FINALIZER = "spiderpool.spidernet.io"

LABEL_IPPOOL_CIDR = "ipam.spidernet.io/ippool-cidr"
LABEL_SUBNET_CIDR = "ipam.spidernet.io/subnet-cidr"
LABEL_OWNER_SUBNET = "ipam.spidernet.io/owner-spider-subnet"
#: on a SpiderIPAllocation: the pool it was taken from, the pod holding it (its uid, and
#: ``<namespace>.<name>`` as ``name_label`` puts it) and that pod's node
LABEL_RECORD_POOL = "ipam.spidernet.io/ippool"
LABEL_RECORD_POD_UID = "ipam.spidernet.io/pod-uid"
LABEL_RECORD_POD = "ipam.spidernet.io/pod"
LABEL_RECORD_NODE = "ipam.spidernet.io/node"

#: the longest label value the API accepts
LABEL_VALUE_MAX = 63
_HASH_CHARS = 10


def name_label(name: str) -> str:
    """``name`` as a label value, for every name the API accepts (up to 253 characters).

    A name that fits (63 characters) is the label itself, so selectors written for upstream keep
    working. A longer one keeps its first 52 characters (for the eye) and ends with 10 hex digits of
    its SHA-256 (for uniqueness): ``<first 52>-<hash>``. The full name stays in the object's spec,
    which is what our own code matches on; the label is for selecting.
    """
    if len(name) <= LABEL_VALUE_MAX:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:_HASH_CHARS]
    head = name[: LABEL_VALUE_MAX - _HASH_CHARS - 1].rstrip("-_.")
    return f"{head}-{digest}"


#: seconds an address another host turned out to use is held for nobody (detectIPConflict)
IP_CONFLICT_QUARANTINE = 600.0
#: seconds a deleted SpiderIPPool must hold no IP before its finalizer comes off
POOL_FINALIZER_GRACE = 10.0


def pod_label(namespace: str, name: str) -> str:
    """A pod as one label value: ``<namespace>.<name>`` (a namespace has no dot, so it splits)."""
    return name_label(f"{namespace}.{name}")


#: the chart's workloads: upstream's component labels (``spiderpool-controller``, ``spiderpool-agent``),
#: and this chart's earlier ones (``controller``, ``agent``), so the CLI finds either install
CONTROLLER_SELECTOR = (
    "app.kubernetes.io/part-of=spiderpool,app.kubernetes.io/component in (controller,spiderpool-controller)"
)
AGENT_SELECTOR = "app.kubernetes.io/part-of=spiderpool,app.kubernetes.io/component in (agent,spiderpool-agent)"
