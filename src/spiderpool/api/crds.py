"""Render the CustomResourceDefinitions from the typed models (the one source of truth).

``python -m spiderpool.api.crds DIR`` writes one YAML file per CRD; the Helm chart ships those
files, and a test fails if they drift from what this module renders.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from spiderpool.api import v2beta1 as api
from spiderpool.api.schema import object_schema
from spiderpool.api.v2beta1_multus import MultusConfigSpec


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    path: str
    priority: int = 0
    description: str = ""

    def render(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type, "jsonPath": self.path}
        if self.priority:
            out["priority"] = self.priority
        if self.description:
            out["description"] = self.description
        return out


@dataclass(frozen=True)
class CRD:
    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    scope: str
    spec: type | None
    status: type | None
    status_subresource: bool
    columns: tuple[Column, ...] = ()
    description: str = ""
    extra_properties: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.plural}.{api.GROUP}"

    def render(self) -> dict[str, Any]:
        props: dict[str, Any] = {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
        }
        if self.spec is not None:
            props["spec"] = object_schema(self.spec)
        if self.status is not None:
            props["status"] = object_schema(self.status)
        schema: dict[str, Any] = {"type": "object", "properties": props}
        if self.description:
            schema["description"] = self.description
        if self.spec is not None and "required" in props["spec"]:
            schema["required"] = ["spec"]
        version: dict[str, Any] = {
            "name": api.VERSION,
            "served": True,
            "storage": True,
            "schema": {"openAPIV3Schema": schema},
        }
        if self.columns:
            version["additionalPrinterColumns"] = [c.render() for c in self.columns]
        if self.status_subresource:
            version["subresources"] = {"status": {}}
        return {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": self.name, "labels": {"app.kubernetes.io/part-of": "spiderpool"}},
            "spec": {
                "group": api.GROUP,
                "scope": self.scope,
                "names": {
                    "kind": self.kind,
                    "listKind": f"{self.kind}List",
                    "plural": self.plural,
                    "singular": self.singular,
                    "shortNames": list(self.short_names),
                    "categories": ["spiderpool"],
                },
                "versions": [version],
            },
        }


_AGE = Column("AGE", "date", ".metadata.creationTimestamp")

CRDS: tuple[CRD, ...] = (
    CRD(
        kind="SpiderIPPool",
        plural="spiderippools",
        singular="spiderippool",
        short_names=("sp",),
        scope="Cluster",
        spec=api.IPPoolSpec,
        status=api.IPPoolStatus,
        status_subresource=True,
        description="A pool of underlay IPs of one subnet, with the rules saying which pods may use it.",
        columns=(
            Column("VERSION", "integer", ".spec.ipVersion", description="IP family"),
            Column("SUBNET", "string", ".spec.subnet"),
            Column("ALLOCATED-IP-COUNT", "integer", ".status.allocatedIPCount"),
            Column("TOTAL-IP-COUNT", "integer", ".status.totalIPCount"),
            Column("DEFAULT", "boolean", ".spec.default"),
            Column("DISABLE", "boolean", ".spec.disable"),
            Column("NODENAME", "string", ".spec.nodeName", priority=10),
            Column("MULTUSNAME", "string", ".spec.multusName", priority=10),
            Column(
                "APP-NAMESPACE",
                "string",
                ".spec.podAffinity.matchLabels['ipam\\.spidernet\\.io/app-namespace']",
                priority=10,
            ),
            _AGE,
        ),
    ),
    CRD(
        kind="SpiderSubnet",
        plural="spidersubnets",
        singular="spidersubnet",
        short_names=("ss",),
        scope="Cluster",
        spec=api.SubnetSpec,
        status=api.SubnetStatus,
        status_subresource=True,
        description="An underlay subnet and the IPs of it that pools (manual or automatic) may take.",
        columns=(
            Column("VERSION", "integer", ".spec.ipVersion"),
            Column("SUBNET", "string", ".spec.subnet"),
            Column("ALLOCATED-IP-COUNT", "integer", ".status.allocatedIPCount"),
            Column("TOTAL-IP-COUNT", "integer", ".status.totalIPCount"),
            _AGE,
        ),
    ),
    CRD(
        kind="SpiderReservedIP",
        plural="spiderreservedips",
        singular="spiderreservedip",
        short_names=("sr",),
        scope="Cluster",
        spec=api.ReservedIPSpec,
        status=None,
        status_subresource=False,
        description="IPs that no pool hands out, cluster-wide.",
        columns=(Column("VERSION", "integer", ".spec.ipVersion"), _AGE),
    ),
    CRD(
        kind="SpiderEndpoint",
        plural="spiderendpoints",
        singular="spiderendpoint",
        short_names=("se",),
        scope="Namespaced",
        spec=None,
        status=api.EndpointStatus,
        status_subresource=False,
        description="The IPs a pod holds, per interface (named after the pod).",
        columns=(
            Column("INTERFACE", "string", ".status.current.ips[0].interface"),
            Column("IPV4POOL", "string", ".status.current.ips[0].ipv4Pool"),
            Column("IPV4", "string", ".status.current.ips[0].ipv4"),
            Column("IPV6POOL", "string", ".status.current.ips[0].ipv6Pool"),
            Column("IPV6", "string", ".status.current.ips[0].ipv6"),
            Column("NODE", "string", ".status.current.node"),
        ),
    ),
    CRD(
        kind="SpiderIPAllocation",
        plural="spideripallocations",
        singular="spideripallocation",
        short_names=("sia",),
        scope="Cluster",
        spec=api.IPAllocationSpec,
        status=None,
        status_subresource=False,
        description="One allocated IP, named after it: creating it is the allocation (the apiserver's uniqueness"
        " is the lock), deleting it the release.",
        columns=(
            Column("IP", "string", ".spec.ip"),
            Column("POOL", "string", ".spec.pool"),
            Column("NAMESPACE", "string", ".spec.namespace"),
            Column("POD", "string", ".spec.pod"),
            Column("INTERFACE", "string", ".spec.interface"),
            Column("NODE", "string", ".spec.node"),
            _AGE,
        ),
    ),
    CRD(
        kind="SpiderCoordinator",
        plural="spidercoordinators",
        singular="spidercoordinator",
        short_names=("scc",),
        scope="Cluster",
        spec=api.CoordinatorSpec,
        status=api.CoordinatorStatus,
        status_subresource=True,
        description="Cluster-wide defaults of the coordinator (veth) plugin; the singleton is named 'default'.",
        columns=(
            Column("MODE", "string", ".spec.mode"),
            Column("PHASE", "string", ".status.phase"),
            _AGE,
        ),
    ),
    CRD(
        kind="SpiderMultusConfig",
        plural="spidermultusconfigs",
        singular="spidermultusconfig",
        short_names=("smc",),
        scope="Namespaced",
        spec=MultusConfigSpec,
        status=None,
        status_subresource=False,
        description="Generates a Multus NetworkAttachmentDefinition of the same name and namespace.",
        columns=(Column("CNI-TYPE", "string", ".spec.cniType"), _AGE),
    ),
)


def render_all() -> dict[str, str]:
    """File name -> YAML text, for every CRD."""
    out = {}
    for crd in CRDS:
        text = yaml.safe_dump(crd.render(), sort_keys=False, width=120)
        out[f"{api.GROUP}_{crd.plural}.yaml"] = "# Generated by `python -m spiderpool.api.crds`; do not edit.\n" + text
    return out


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_all().items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written


def main() -> None:
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("charts/spiderpool/crds")
    for path in write(target):
        print(path)


if __name__ == "__main__":
    main()
