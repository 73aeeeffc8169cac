"""What users install into a cluster, installed the way they install it: Multus by its own DaemonSet
manifest, spiderpool by its Helm chart (from the lab's chart repository, as the walkthrough does,
or from the checkout), and Whereabouts (the peer the benchmarks compare with) by its CRDs and
DaemonSet manifest."""

from __future__ import annotations

import json
from typing import Any

from spiderpool.api import crds
from spiderpool_lab import build, helm, images, procs
from spiderpool_lab.cluster import Lab

MULTUS_LABEL = "app=multus"
WHEREABOUTS_LABEL = "app=whereabouts"
WHEREABOUTS_CRDS = (
    "whereabouts.cni.cncf.io_ippools.yaml",
    "whereabouts.cni.cncf.io_overlappingrangeipreservations.yaml",
    "whereabouts.cni.cncf.io_nodeslicepools.yaml",
)
#: where Whereabouts' DaemonSet writes its kubeconfig on each node (its docs' default)
WHEREABOUTS_KUBECONFIG = "/etc/cni/net.d/whereabouts.d/whereabouts.kubeconfig"
RELEASE = "spiderpool"
NAMESPACE = "kube-system"
#: the walkthrough's flags (the older chart's spelling, still accepted)
WALKTHROUGH_FLAGS = ("--set", "feature.enableIPv4=true", "--set", "feature.enableIPv6=false")


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


def whereabouts_daemonset() -> str:
    """Whereabouts' install manifest from its module, with only the image changed to the lab's build."""
    text = build.module_file("whereabouts", "daemonset-install.yaml").read_text()
    upstream = "ghcr.io/k8snetworkplumbingwg/whereabouts:latest"
    if upstream not in text:
        raise RuntimeError(f"Whereabouts' DaemonSet manifest no longer names {upstream}: update the lab")
    return text.replace(upstream, images.WHEREABOUTS_IMAGE)


def whereabouts(lab: Lab) -> str:
    """Apply Whereabouts' CRDs and DaemonSet as its README says; wait until every node has a Ready pod,
    the plugin in its CNI bin dir and the kubeconfig the plugin uses."""
    out = []
    for crd in WHEREABOUTS_CRDS:
        text = build.module_file("whereabouts", crd).read_text()
        out.append(lab.kubectl("apply", "--server-side", "-f", "-", input_text=text).stdout)
    out.append(lab.kubectl("apply", "-f", "-", input_text=whereabouts_daemonset()).stdout)

    def installed() -> bool:
        return _every_node(lab, NAMESPACE, WHEREABOUTS_LABEL) and all(
            (n.cni_bin_dir / "whereabouts").exists()
            and (n.cni_conf_dir / "whereabouts.d" / "whereabouts.kubeconfig").exists()
            for n in lab.nodes()
        )

    procs.wait_for(
        installed,
        timeout=120,
        what="a Whereabouts pod, its plugin and its kubeconfig on every node",
        detail=lambda: lab.kubectl("get", "pods,events", "-n", NAMESPACE, "-o", "wide", check=False).stdout,
    )
    return "".join(out)


def remove_whereabouts(lab: Lab) -> None:
    """Delete Whereabouts' DaemonSet and what it wrote on the nodes (its CRDs and pools stay, as
    deleting the DaemonSet leaves them for its users)."""
    lab.kubectl("delete", "daemonset", "-n", NAMESPACE, "whereabouts", "--ignore-not-found", "--wait=true")
    procs.wait_for(lambda: not _pods(lab, NAMESPACE, WHEREABOUTS_LABEL), timeout=60, what="Whereabouts' pods to go")
    for node in lab.nodes():
        (node.cni_bin_dir / "whereabouts").unlink(missing_ok=True)
        wd = node.cni_conf_dir / "whereabouts.d"
        if wd.is_dir():
            for f in wd.iterdir():
                f.unlink()
            wd.rmdir()


def spiderpool_crds(lab: Lab) -> str:
    out = []
    for text in crds.render_all().values():
        out.append(lab.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input_text=text).stdout)
    for crd in crds.CRDS:
        lab.kubectl("wait", "--for=condition=Established", f"crd/{crd.name}", "--timeout=60s")
    return "".join(out)


def wait_spiderpool(lab: Lab, timeout: float = 180) -> None:
    """The controller replicas and an agent on every node ready."""

    def up() -> bool:
        controllers = _pods(lab, NAMESPACE, "app.kubernetes.io/name=spiderpool-controller")
        return (
            bool(controllers)
            and all(_ready(p) for p in controllers)
            and _every_node(lab, NAMESPACE, "app.kubernetes.io/name=spiderpool-agent")
        )

    procs.wait_for(
        up,
        timeout=timeout,
        what="spiderpool-controller and an agent on every node ready",
        detail=lambda: lab.kubectl("get", "pods,events", "-n", NAMESPACE, "-o", "wide", check=False).stdout,
    )


def spiderpool(lab: Lab, *flags: str) -> str:
    """``helm upgrade --install`` of the checkout's chart (with ``flags``); wait until it is up.
    Returns Helm's output."""
    out = helm.run(lab, "upgrade", "--install", RELEASE, str(helm.chart_path()), "--namespace", NAMESPACE, *flags)
    wait_spiderpool(lab)
    return out.stdout


def uninstall_spiderpool(lab: Lab) -> str:
    """``helm uninstall`` (what it leaves behind: docs/helm.md); '' when there was no release."""
    if helm.run(lab, "status", RELEASE, "--namespace", NAMESPACE, check=False).returncode != 0:
        return ""
    out = helm.run(lab, "uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", "--timeout", "3m").stdout
    procs.wait_for(
        lambda: not _pods(lab, NAMESPACE, "app.kubernetes.io/part-of=spiderpool"),
        timeout=120,
        what="spiderpool's pods to go",
    )
    return out


def spiderpool_from_repo(lab: Lab) -> list[tuple[str, str]]:
    """The walkthrough's commands, verbatim but for the URL (and ``helm repo update``, which it
    misspells): the lab's chart repository, then ``helm install`` with its flags. Returns each
    command with its output. A release of an earlier run is uninstalled first."""
    url = helm.serve_repo(lab)
    uninstall_spiderpool(lab)
    helm.run(lab, "repo", "remove", "spiderpool", check=False)  # an earlier run's entry
    steps = []
    for args in (
        ["repo", "add", "spiderpool", url],
        ["repo", "update", "spiderpool"],
        ["install", RELEASE, "spiderpool/spiderpool", "--namespace", NAMESPACE, *WALKTHROUGH_FLAGS],
    ):
        out = helm.run(lab, *args)
        steps.append(("helm " + " ".join(args), out.stdout + out.stderr))
    wait_spiderpool(lab)
    return steps
