"""Names shared with upstream Spiderpool: finalizer, labels, annotations."""

from __future__ import annotations

FINALIZER = "spiderpool.spidernet.io"

LABEL_IPPOOL_CIDR = "ipam.spidernet.io/ippool-cidr"
LABEL_SUBNET_CIDR = "ipam.spidernet.io/subnet-cidr"
LABEL_OWNER_SUBNET = "ipam.spidernet.io/owner-spider-subnet"
