"""What users install into a cluster, installed the way they install it: Multus by its own DaemonSet
manifest, spiderpool by its CRDs and ``deploy/spiderpool.yaml`` (the Helm chart comes next)."""

from __future__ import annotations

import json
from typing import Any

from spiderpool.api import crds
from spiderpool_lab import paths, procs
from spiderpool_lab.cluster import Lab

SPIDERPOOL_MANIFEST = "deploy/spiderpool.yaml"
MULTUS_LABEL = "app=multus"


def _pods(lab: Lab, namespace: str, selector: str) -> list[dict[str, Any]]:
    out = lab.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json")
    items: list[dict[str, Any]] = json.loads(out.stdout)["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def _ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _every_node(lab: Lab, namespace: str, selector: str) -> bool:
    nodes = {n.name for n in lab.nodes()}
    return {p["spec"].get("nodeName") for p in _pods(lab, namespace, selector) if _ready(p)} >= nodes


def multus_conf(lab: Lab, node: str) -> list[str]:
    """The configuration Multus generated on a node: ``00-multus.conf``, or ``00-multus.conflist``
    when the network it delegates to is a conflist."""
    return sorted(p.name for p in lab.node(node).cni_conf_dir.glob("00-multus.conf*"))


def multus(lab: Lab) -> str:
    """Apply Multus' DaemonSet; wait for a Running pod and its configuration on every node. Returns
    kubectl's output. A Multus already there is removed first: its pods write the configuration once
    as they start, and would not write it again over a node's reset configuration."""
    remove_multus(lab)
    out = lab.kubectl("apply", "-f", "-", input_text=lab.multus_daemonset()).stdout
    procs.wait_for(
        lambda: _every_node(lab, "kube-system", MULTUS_LABEL) and all(multus_conf(lab, n.name) for n in lab.nodes()),
        timeout=120,
        what="a Multus pod and its 00-multus.conf on every node",
        detail=lambda: lab.kubectl("get", "pods,events", "-n", "kube-system", "-o", "wide", check=False).stdout,
    )
    return out


def remove_multus(lab: Lab) -> None:
    """Delete Multus' DaemonSet and the configuration it generated on the nodes."""
    # (only the DaemonSet: its CRD stays, with the NetworkAttachmentDefinitions users made)
    lab.kubectl("delete", "daemonset", "-n", "kube-system", "kube-multus-ds", "--ignore-not-found", "--wait=true")
    procs.wait_for(lambda: not _pods(lab, "kube-system", MULTUS_LABEL), timeout=60, what="Multus' pods to go")
    for node in lab.nodes():
        for generated in node.cni_conf_dir.glob("00-multus.conf*"):
            generated.unlink()
        multus_d = node.cni_conf_dir / "multus.d"
        if multus_d.is_dir():
            for f in multus_d.iterdir():
                f.unlink()
            multus_d.rmdir()


def spiderpool_crds(lab: Lab) -> str:
    out = []
    for text in crds.render_all().values():
        out.append(lab.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input_text=text).stdout)
    for crd in crds.CRDS:
        lab.kubectl("wait", "--for=condition=Established", f"crd/{crd.name}", "--timeout=60s")
    return "".join(out)


def spiderpool(lab: Lab, manifest: str | None = None) -> str:
    """Apply spiderpool's manifests (``deploy/spiderpool.yaml`` unless given); wait for the controller
    replicas and an agent on every node. Returns kubectl's output."""
    text = manifest if manifest is not None else (paths.repo_root() / SPIDERPOOL_MANIFEST).read_text()
    out = lab.kubectl("apply", "-f", "-", input_text=text).stdout

    def up() -> bool:
        controllers = _pods(lab, "kube-system", "app.kubernetes.io/name=spiderpool-controller")
        return (
            bool(controllers)
            and all(_ready(p) for p in controllers)
            and _every_node(lab, "kube-system", "app.kubernetes.io/name=spiderpool-agent")
        )

    procs.wait_for(
        up,
        timeout=180,
        what="spiderpool-controller and an agent on every node ready",
        detail=lambda: lab.kubectl("get", "pods,events", "-n", "kube-system", "-o", "wide", check=False).stdout,
    )
    return out
