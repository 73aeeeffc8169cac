"""The SpiderCoordinator status decision (``controller/cidrs.py``): reading kubeadm-config and
kube-controller-manager's flags, ``podCIDRType: auto`` from a CNI configuration directory, and the
phase/reason/CIDRs table. Pure (no apiserver); plus the directory reader on a temp directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from spiderpool.controller import cidrs
from spiderpool.controller.cidrs import Auto, Inputs, Source, decide
from spiderpool.controller.coordinator import read_cni_dir

KUBEADM_DUAL = """\
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
kubernetesVersion: v1.33.0
networking:
  dnsDomain: cluster.local
  podSubnet: 10.244.0.0/16,fd00:10:244::/56
  serviceSubnet: "fd00:10:96::/112, 10.96.0.0/12"
"""
NEITHER = (
    "neither the kube-system/kubeadm-config ConfigMap nor a kube-system pod labelled"
    " component=kube-controller-manager exists"
)


def kubeadm(text: str) -> Source:
    return cidrs.parse_kubeadm({"ClusterConfiguration": text})


# ------------------------------------------------------------ normalisation
def test_cidrs_are_normalised_deduplicated_and_ipv4_first() -> None:
    got = cidrs.normalize(["fd00::1/64", "10.244.1.7/16", "10.244.0.0/16", " 10.1.0.0/24", "FD00::/64", "x", ""])
    assert got == ["10.1.0.0/24", "10.244.0.0/16", "fd00::/64"]
    assert cidrs.normalize(["10.0.0.0/8", "10.0.0.0/16", "9.0.0.0/8"]) == ["9.0.0.0/8", "10.0.0.0/8", "10.0.0.0/16"]
    assert cidrs.split_cidrs("10.0.0.0/8, ,nope,fd00::/8") == (["10.0.0.0/8", "fd00::/8"], ["nope"])


# ------------------------------------------------------------ kubeadm-config
def test_kubeadm_single_stack() -> None:
    src = kubeadm("networking:\n  podSubnet: 10.244.0.0/16\n  serviceSubnet: 10.96.0.0/12\n")
    assert (src.service, src.pod, src.problem) == (("10.96.0.0/12",), ("10.244.0.0/16",), "")


def test_kubeadm_dual_stack_lists_with_spaces() -> None:
    src = kubeadm(KUBEADM_DUAL)
    assert src.service == ("10.96.0.0/12", "fd00:10:96::/112")
    assert src.pod == ("10.244.0.0/16", "fd00:10:244::/56")


def test_kubeadm_missing_keys_say_nothing() -> None:
    assert kubeadm("networking:\n  serviceSubnet: 10.96.0.0/12\n") == Source(service=("10.96.0.0/12",))
    assert kubeadm("kind: ClusterConfiguration\n") == Source()
    assert kubeadm("networking: null\n") == Source()
    assert kubeadm('networking: {podSubnet: ""}\n') == Source()


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (None, "has no ClusterConfiguration key"),
        ({}, "has no ClusterConfiguration key"),
        ({"ClusterConfiguration": "  "}, "has no ClusterConfiguration key"),
        ({"ClusterConfiguration": "networking: [unclosed"}, "has a ClusterConfiguration that is not valid YAML"),
        ({"ClusterConfiguration": "- a\n- b\n"}, "has a ClusterConfiguration that is not a YAML mapping"),
        ({"ClusterConfiguration": "just text"}, "has a ClusterConfiguration that is not a YAML mapping"),
    ],
)
def test_kubeadm_garbage_is_a_problem_not_a_crash(data: dict[str, Any] | None, problem: str) -> None:
    assert cidrs.parse_kubeadm(data) == Source(problem=problem)


def test_kubeadm_values_that_are_not_cidrs_are_named() -> None:
    src = kubeadm("networking:\n  podSubnet: garbage,10.244.0.0/16\n  serviceSubnet: 12\n")
    assert src.pod == ("10.244.0.0/16",)
    assert src.service == ()  # (12 is no CIDR, and YAML made it an int)
    assert src.invalid == {"pod": ("garbage",), "service": ("12",)}


# ------------------------------------------------------------ kube-controller-manager
def test_kcm_flags_in_both_forms_and_the_last_wins() -> None:
    argv = [
        "kube-controller-manager",
        "--allocate-node-cidrs=true",
        "--cluster-cidr=10.1.0.0/16",
        "--cluster-cidr=10.244.0.0/16,fd00:10:244::/56",
        "--service-cluster-ip-range",
        "10.96.0.0/12",
        "--cluster-cidr-extra",  # (another flag that merely starts alike)
    ]
    src = cidrs.parse_kcm([argv])
    assert src.pod == ("10.244.0.0/16", "fd00:10:244::/56")
    assert src.service == ("10.96.0.0/12",)
    assert cidrs.flag_values(["--cluster-cidr"], "--cluster-cidr") is None  # a flag with no value after it


def test_kcm_command_and_args_of_every_container_and_the_first_pod_that_says() -> None:
    pod = {
        "spec": {
            "containers": [
                {"name": "kcm", "command": ["kube-controller-manager"], "args": ["--cluster-cidr=10.244.0.0/16"]},
                {"name": "side", "args": ["--service-cluster-ip-range", "10.96.0.0/12"]},
            ]
        }
    }
    assert cidrs.pod_argv(pod) == [
        "kube-controller-manager",
        "--cluster-cidr=10.244.0.0/16",
        "--service-cluster-ip-range",
        "10.96.0.0/12",
    ]
    src = cidrs.parse_kcm([["kcm"], ["kcm", "--cluster-cidr=bad"], cidrs.pod_argv(pod), ["--cluster-cidr=10.9.0.0/16"]])
    assert (src.pod, src.service, src.invalid) == (("10.244.0.0/16",), ("10.96.0.0/12",), {})
    bad = cidrs.parse_kcm([["--cluster-cidr=bad"]])
    assert (bad.pod, bad.invalid) == ((), {"pod": ("bad",)})


# ------------------------------------------------------------ podCIDRType auto
CALICO = {
    "name": "k8s-pod-network",
    "cniVersion": "0.3.1",
    "plugins": [{"type": "calico", "ipam": {"type": "calico-ipam"}}, {"type": "portmap"}],
}
CILIUM = {"name": "cilium", "cniVersion": "0.3.1", "plugins": [{"type": "cilium-cni"}]}
FLANNEL = {
    "name": "cbr0",
    "plugins": [{"type": "flannel", "delegate": {"isDefaultGateway": True}}, {"type": "portmap"}],
}
BRIDGE = {"name": "lab", "type": "bridge", "ipam": {"type": "host-local"}}
MACVLAN = {"name": "macvlan", "plugins": [{"type": "macvlan", "ipam": {"type": "spiderpool"}}, {"type": "coordinator"}]}


@pytest.mark.parametrize(
    ("files", "kind"),
    [
        ({"10-calico.conflist": CALICO}, "calico"),
        ({"10-calico.conflist": {"name": "k8s-pod-network", "plugins": [{"type": "other"}]}}, "calico"),
        ({"05-cilium.conflist": CILIUM}, "cilium"),
        ({"10-flannel.conflist": FLANNEL}, "cluster"),
        ({"10-bridge.conf": BRIDGE}, "cluster"),
        ({"10-kindnet.conflist": {"name": "kindnet", "plugins": [{"type": "ptp"}]}}, "cluster"),
        ({"10-macvlan.conflist": MACVLAN}, "none"),
        ({"10-ipvlan.conf": {"type": "ipvlan", "ipam": {"type": "host-local"}}}, "none"),
        ({"10-x.conf": {"type": "bridge", "ipam": {"type": "spiderpool"}}}, "none"),
        ({"10-sriov.json": {"type": "sriov"}}, "none"),
        # the lexically first file decides
        ({"20-calico.conflist": CALICO, "10-flannel.conflist": FLANNEL}, "cluster"),
        # an unreadable file, and what is not a CNI configuration, are passed over
        ({"00-broken.conf": None, "01-list.json": [1], "10-calico.conflist": CALICO, "00-notes.txt": {}}, "calico"),
    ],
)
def test_auto_from_the_first_cni_configuration(files: dict[str, Any], kind: str) -> None:
    assert cidrs.resolve_auto(files).type == kind


def test_auto_names_its_source() -> None:
    assert cidrs.resolve_auto({"10-flannel.conflist": FLANNEL}) == Auto(
        "cluster", "10-flannel.conflist: plugin flannel"
    )


def test_auto_without_a_readable_configuration_is_none() -> None:
    assert cidrs.resolve_auto({}) == Auto("none", "no readable CNI configuration")
    assert cidrs.resolve_auto({"00-x.conf": None}).type == "none"


def multus(**extra: Any) -> dict[str, Any]:
    return {"cniVersion": "0.3.1", "name": "multus-cni-network", "type": "multus", "kubeconfig": "/k", **extra}


@pytest.mark.parametrize(
    ("files", "kind", "source"),
    [
        # thin Multus' auto configuration: the cluster network inlined as the first delegate
        ({"00-multus.conf": multus(delegates=[CALICO, MACVLAN])}, "calico", "00-multus.conf (first delegate)"),
        ({"00-multus.conf": multus(delegates=[FLANNEL])}, "cluster", "00-multus.conf (first delegate)"),
        ({"00-multus.conf": multus(clusterNetwork=CILIUM)}, "cilium", "00-multus.conf (clusterNetwork)"),
        # clusterNetwork naming a file of the directory, or a network of one
        (
            {
                "00-multus.conf": multus(clusterNetwork="/host/etc/cni/net.d/30-calico.conflist"),
                "30-calico.conflist": CALICO,
            },
            "calico",
            "00-multus.conf (clusterNetwork /host/etc/cni/net.d/30-calico.conflist: 30-calico.conflist)",
        ),
        (
            {"00-multus.conf": multus(clusterNetwork="cbr0"), "10-aaa.conf": BRIDGE, "20-flannel.conflist": FLANNEL},
            "cluster",
            "00-multus.conf (clusterNetwork cbr0: 20-flannel.conflist)",
        ),
        # thick Multus' shim names nothing: the next file is what it delegates to
        (
            {"00-multus.conf": multus(type="multus-shim"), "10-calico.conflist": CALICO},
            "calico",
            "00-multus.conf (Multus; the next file, 10-calico.conflist): plugin calico",
        ),
        ({"00-multus.conf": multus()}, "none", "00-multus.conf (Multus, with no cluster network found)"),
    ],
)
def test_auto_looks_through_multus(files: dict[str, Any], kind: str, source: str) -> None:
    auto = cidrs.resolve_auto(files)
    assert auto.type == kind
    assert auto.source.startswith(source)


def test_the_directory_reader(tmp_path: Path) -> None:
    (tmp_path / "10-flannel.conflist").write_text(json.dumps(FLANNEL))
    (tmp_path / "05-broken.conf").write_text("{not json")
    (tmp_path / "README").write_text("not a config")
    (tmp_path / "99-big.json").write_bytes(b" " * (2 << 20))
    files = read_cni_dir(tmp_path)
    assert files == {"05-broken.conf": None, "10-flannel.conflist": FLANNEL, "99-big.json": None}
    assert cidrs.resolve_auto(files).type == "cluster"
    assert read_cni_dir(tmp_path / "missing") == {}


# ------------------------------------------------------------ the decision
KA = kubeadm(KUBEADM_DUAL)
KCM = cidrs.parse_kcm([["--cluster-cidr=10.32.0.0/16", "--service-cluster-ip-range=10.33.0.0/24"]])
SVC = ("10.0.0.0/24",)


def test_synced_from_kubeadm_config() -> None:
    d = decide(Inputs(pod_cidr_type="cluster", kubeadm=KA, service_cidrs=None))
    assert d.status() == {
        "phase": "Synced",
        "serviceCIDR": ["10.96.0.0/12", "fd00:10:96::/112"],
        "overlayPodCIDR": ["10.244.0.0/16", "fd00:10:244::/56"],
    }


def test_service_cidr_objects_override_and_kcm_fills_in() -> None:
    d = decide(Inputs(pod_cidr_type="cluster", kubeadm=KA, kcm=KCM, service_cidrs=("fd00::/108", *SVC)))
    assert (d.phase, d.service, d.overlay) == ("Synced", ["10.0.0.0/24", "fd00::/108"], list(KA.pod))
    # no live ServiceCIDR (all being deleted): back to the cluster's own
    assert decide(Inputs(pod_cidr_type="cluster", kubeadm=KA, service_cidrs=())).service == list(KA.service)
    # kubeadm-config without a podSubnet: kube-controller-manager's --cluster-cidr
    partial = Source(service=KA.service)
    d = decide(Inputs(pod_cidr_type="cluster", kubeadm=partial, kcm=KCM))
    assert (d.phase, d.service, d.overlay) == ("Synced", list(KA.service), ["10.32.0.0/16"])
    d = decide(Inputs(pod_cidr_type="cluster", kcm=KCM))
    assert (d.phase, d.service, d.overlay) == ("Synced", ["10.33.0.0/24"], ["10.32.0.0/16"])


def test_nothing_to_read_is_not_ready_naming_both() -> None:
    d = decide(Inputs(pod_cidr_type="cluster"))
    assert d.status() == {"phase": "NotReady", "reason": d.reason, "serviceCIDR": [], "overlayPodCIDR": []}
    assert d.reason == (
        f"no service and pod CIDRs found: {NEITHER}; set networking.serviceSubnet and networking.podSubnet in the"
        " ClusterConfiguration of the kube-system/kubeadm-config ConfigMap (as kubeadm writes it), or set the"
        " SpiderCoordinator's spec.podCIDRType (now cluster) to calico, cilium or none to match the cluster's CNI"
    )


def test_service_cidr_objects_but_no_pod_cidr_is_not_ready_naming_the_pod_cidr() -> None:
    auto = Auto("cluster", "10-flannel.conflist: plugin flannel")
    d = decide(Inputs(auto=auto, service_cidrs=SVC))
    assert (d.phase, d.service, d.overlay, d.pod_cidr_type) == ("NotReady", ["10.0.0.0/24"], [], "cluster")
    assert d.reason == (
        f"no pod CIDR found: {NEITHER}; set networking.podSubnet in the ClusterConfiguration of the"
        " kube-system/kubeadm-config ConfigMap (as kubeadm writes it), or set the SpiderCoordinator's"
        " spec.podCIDRType (now cluster, chosen by auto from 10-flannel.conflist: plugin flannel) to calico,"
        " cilium or none to match the cluster's CNI"
    )


def test_a_source_that_exists_but_lacks_the_key_is_named() -> None:
    d = decide(Inputs(pod_cidr_type="cluster", kubeadm=Source(service=KA.service), kcm=cidrs.parse_kcm([["kcm"]])))
    assert d.reason.startswith(
        "no pod CIDR found: the kube-system/kubeadm-config ConfigMap has no networking.podSubnet, and no"
        " kube-system pod labelled component=kube-controller-manager has a --cluster-cidr flag;"
    )
    d = decide(Inputs(pod_cidr_type="none", kubeadm=kubeadm("networking: {}"), service_cidrs=()))
    assert d.reason.startswith(
        "no service CIDR found: the kube-system/kubeadm-config ConfigMap has no networking.serviceSubnet, and no"
        " kube-system pod labelled component=kube-controller-manager exists, and no networking.k8s.io/v1"
        " ServiceCIDR exists; set networking.serviceSubnet in the ClusterConfiguration of the"
        " kube-system/kubeadm-config ConfigMap (as kubeadm writes it), or create a ServiceCIDR for the service CIDR"
    )
    d = decide(Inputs(pod_cidr_type="cluster", kubeadm=kubeadm("networking: {podSubnet: nope}"), service_cidrs=SVC))
    assert d.reason.startswith(
        "no pod CIDR found: the networking.podSubnet 'nope' of the kube-system/kubeadm-config ConfigMap is not a"
        " CIDR, and no kube-system pod labelled component=kube-controller-manager exists;"
    )
    d = decide(Inputs(pod_cidr_type="cluster", kubeadm=cidrs.parse_kubeadm({}), service_cidrs=SVC))
    assert "the kube-system/kubeadm-config ConfigMap has no ClusterConfiguration key, and no" in d.reason


def test_only_the_service_cidr_missing_with_service_cidr_objects_is_fine() -> None:
    d = decide(Inputs(pod_cidr_type="cluster", kubeadm=Source(pod=KA.pod), service_cidrs=SVC))
    assert (d.phase, d.reason, d.service) == ("Synced", "", ["10.0.0.0/24"])


def test_none_needs_no_pod_cidr() -> None:
    d = decide(Inputs(pod_cidr_type="none", service_cidrs=SVC))
    assert d.status() == {"phase": "Synced", "serviceCIDR": ["10.0.0.0/24"], "overlayPodCIDR": []}
    # (and ignores the cluster's pod CIDR)
    assert decide(Inputs(pod_cidr_type="none", kubeadm=KA)).overlay == []
    # auto unresolved (no CNI configuration): none
    assert (
        decide(Inputs(pod_cidr_type="auto", auto=Auto("none", "no readable CNI configuration"), kcm=KCM)).overlay == []
    )


def test_calico() -> None:
    d = decide(Inputs(pod_cidr_type="calico", service_cidrs=SVC, calico_pools=("10.233.64.0/18", "fd85::/80")))
    assert (d.phase, d.overlay) == ("Synced", ["10.233.64.0/18", "fd85::/80"])
    d = decide(Inputs(pod_cidr_type="calico", service_cidrs=SVC, calico_pools=()))
    assert (d.phase, d.overlay) == ("NotReady", [])
    assert d.reason == (
        "no Calico IPPool found: no enabled crd.projectcalico.org/v1 IPPool exists; create one, or set the"
        " SpiderCoordinator's spec.podCIDRType (now calico) to cluster, cilium or none to match the cluster's CNI"
    )
    d = decide(Inputs(auto=Auto("calico", "10-calico.conflist: plugin calico"), service_cidrs=SVC))
    assert d.reason == (
        "no Calico IPPool found: the crd.projectcalico.org/v1 ippools API is not served; install Calico, or set"
        " the SpiderCoordinator's spec.podCIDRType (now calico, chosen by auto from 10-calico.conflist: plugin"
        " calico) to cluster, cilium or none to match the cluster's CNI"
    )


def test_cilium() -> None:
    d = decide(Inputs(pod_cidr_type="cilium", service_cidrs=SVC, cilium_config=("10.0.8.0/21",), cilium_pools=None))
    assert (d.phase, d.overlay) == ("Synced", ["10.0.8.0/21"])
    d = decide(Inputs(pod_cidr_type="cilium", service_cidrs=SVC, cilium_config=(), cilium_pools=("10.20.0.0/16",)))
    assert (d.phase, d.overlay) == ("Synced", ["10.20.0.0/16"])
    d = decide(Inputs(pod_cidr_type="cilium", service_cidrs=SVC))
    assert d.phase == "NotReady"
    assert d.reason == (
        "no Cilium pod CIDR found: the kube-system/cilium-config ConfigMap does not exist, and the"
        " cilium.io/v2alpha1 ciliumpodippools API is not served; set cluster-pool-ipv4-cidr or"
        " cluster-pool-ipv6-cidr in the kube-system/cilium-config ConfigMap or create a CiliumPodIPPool, or set"
        " the SpiderCoordinator's spec.podCIDRType (now cilium) to cluster, calico or none to match the"
        " cluster's CNI"
    )
    d = decide(Inputs(pod_cidr_type="cilium", service_cidrs=SVC, cilium_config=(), cilium_pools=()))
    assert "has neither cluster-pool-ipv4-cidr nor cluster-pool-ipv6-cidr, and no cilium.io/v2alpha1" in d.reason


def test_two_problems_are_both_said() -> None:
    d = decide(Inputs(pod_cidr_type="calico"))
    assert d.reason.startswith(f"no service CIDR found: {NEITHER}; ")
    assert "; no Calico IPPool found: " in d.reason


# ------------------------------------------------------------ reading the objects
def meta(**m: Any) -> dict[str, Any]:
    return {"name": "x", **m}


def test_object_readers() -> None:
    scidrs = [
        {"metadata": meta(), "spec": {"cidrs": ["10.0.0.0/24", "fd00::/108"]}},
        {"metadata": meta(deletionTimestamp="2025-01-01T00:00:00Z"), "spec": {"cidrs": ["10.9.0.0/24"]}},
        {"metadata": meta(), "spec": {}},
    ]
    assert cidrs.live_service_cidrs(scidrs) == ("10.0.0.0/24", "fd00::/108")
    pools = [
        {"metadata": meta(), "spec": {"cidr": "10.233.64.0/18"}},
        {"metadata": meta(), "spec": {"cidr": "10.1.0.0/16", "disabled": True}},
        {"metadata": meta(), "spec": {"cidr": "fd85::/80", "disabled": False}},
        {"metadata": meta(), "spec": {}},
    ]
    assert cidrs.calico_cidrs(pools) == ("10.233.64.0/18", "fd85::/80")
    config = {"cluster-pool-ipv4-cidr": "10.0.0.0/16 10.1.0.0/16", "cluster-pool-ipv6-cidr": "fd00::/104"}
    assert cidrs.cilium_config_cidrs(config) == ("10.0.0.0/16", "10.1.0.0/16", "fd00::/104")
    assert cidrs.cilium_config_cidrs(None) == ()
    cpools = [{"metadata": meta(), "spec": {"ipv4": {"cidrs": ["10.20.0.0/16"]}, "ipv6": {"cidrs": ["fd20::/96"]}}}]
    assert cidrs.cilium_pool_cidrs(cpools) == ("10.20.0.0/16", "fd20::/96")
