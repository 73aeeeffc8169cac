"""Shared set-up of the data-plane tests: Multus as the nodes' CNI."""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from typing import Any

from spiderpool_lab.cluster import Lab
from tests.helpers import apply


def use_multus(lab: Lab, cluster_network: dict[str, Any] | Callable[[str], dict[str, Any]] | None = None) -> None:
    """The NetworkAttachmentDefinition CRD, and Multus on every node with ``cluster_network`` (default:
    the lab's macvlan; a function of the node's name for a config per node) as the cluster default
    network."""
    crd = resources.files("spiderpool_lab").joinpath("manifests/network-attachment-definition-crd.yaml").read_text()
    apply(lab, crd)
    lab.kubectl(
        "wait", "--for=condition=Established", "crd/network-attachment-definitions.k8s.cni.cncf.io", "--timeout=60s"
    )
    for node in lab.nodes():
        lab.clear_cni_config(node.name)
        if callable(cluster_network):
            delegate = cluster_network(node.name)
        else:
            delegate = cluster_network if cluster_network is not None else lab.macvlan_conflist(node.name)
        lab.write_cni_config(node.name, "00-multus.conf", lab.multus_conf(node.name, delegate))
