"""Pure pieces of the lab: CNI config loading and result parsing (the benchmarks' runner), build naming,
image names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spiderpool_lab import build, images
from spiderpool_lab import cniexec as cni


def test_single_plugin_conf_becomes_a_list_of_one() -> None:
    net = cni.NetworkList.from_dict({"cniVersion": "0.3.1", "name": "n", "type": "macvlan", "master": "eth0"}, "x")
    assert net.plugins == [{"type": "macvlan", "master": "eth0"}]
    assert net.cni_version == "0.3.1"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "n"}, "neither 'plugins' nor 'type'"),
        ({"name": "n", "plugins": []}, "non-empty list"),
        ({"plugins": [{"type": "x"}]}, "'name' is required"),
        ({"name": "n", "plugins": [{"master": "eth0"}]}, "string 'type'"),
    ],
)
def test_bad_network_config_is_rejected_with_the_reason(data: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cni.NetworkList.from_dict(data, "f.conflist")


def test_default_network_is_first_loadable_file_by_name(tmp_path: Path) -> None:
    (tmp_path / "00-broken.conflist").write_text("{not json")
    (tmp_path / "10-b.conflist").write_text(json.dumps({"name": "b", "plugins": [{"type": "bridge"}]}))
    (tmp_path / "20-a.conf").write_text(json.dumps({"name": "a", "type": "macvlan"}))
    (tmp_path / "05-ignored.txt").write_text("{}")
    net = cni.load_default(tmp_path)
    assert net is not None
    assert net.name == "b"
    assert cni.load_default(tmp_path / "missing") is None


def test_pod_ips_are_those_of_the_sandbox_eth0_v4_first() -> None:
    result = {
        "interfaces": [
            {"name": "eth0", "sandbox": ""},
            {"name": "eth0", "sandbox": "/run/netns/p"},
            {"name": "net1", "sandbox": "/run/netns/p"},
        ],
        "ips": [
            {"address": "fd00::5/64", "interface": 1},
            {"address": "172.18.0.9/16", "interface": 0},
            {"address": "172.18.101.5/16", "interface": 1},
            {"address": "172.19.0.5/16", "interface": 2},
        ],
    }
    assert cni.pod_ips(result, "eth0") == ["172.18.101.5", "fd00::5"]
    # An IPAM-style result without interfaces: every address counts.
    assert cni.pod_ips({"ips": [{"address": "10.0.0.2/24"}]}, "eth0") == ["10.0.0.2"]


def test_runtime_env_carries_the_k8s_args() -> None:
    rt = cni.Runtime("cid", "/run/netns/p", "eth0", (("K8S_POD_NAME", "web"),), ("/opt/cni/bin",), Path("/x"))
    env = rt.env("ADD")
    assert env["CNI_COMMAND"] == "ADD"
    assert env["CNI_ARGS"] == "IgnoreUnknown=1;K8S_POD_NAME=web"
    assert rt.cache_file("net") == Path("/x/results/net-cid-eth0")


def test_image_names_are_what_the_kubelet_asks_for() -> None:
    assert images.qualified("spiderpool-python:0.1.0") == "docker.io/library/spiderpool-python:0.1.0"
    assert images.qualified("foo/bar:1") == "docker.io/foo/bar:1"
    assert images.qualified("registry.invalid/app:1") == "registry.invalid/app:1"
    assert images.qualified("localhost/x:1") == "localhost/x:1"


def test_go_binary_names() -> None:
    assert build._default_binary_name("go.etcd.io/etcd/server/v3") == "server"
    assert build._default_binary_name("github.com/containernetworking/plugins/plugins/ipam/host-local") == "host-local"


def test_a_lab_of_which_nothing_runs_is_started_clean(tmp_path: Path) -> None:
    """After a machine restart nothing of the lab runs and its namespaces are gone, but its files
    (etcd's data among them) are left: `up` must start a clean cluster, not the old one's objects.
    One dead component is not that: `up` restarts it and keeps the data."""
    import os
    import subprocess
    import uuid

    from spiderpool_lab import procs
    from spiderpool_lab.cluster import Lab

    lab = Lab(tmp_path, prefix=f"splabu{uuid.uuid4().hex[:4]}")
    lab_id = uuid.uuid4().hex[:12]
    assert lab._stale({"lab_id": lab_id}) is True
    assert lab._stale({}) is False  # never up: nothing to clean
    alive = subprocess.Popen(["sleep", "60"], env=dict(os.environ, **{procs.MARK: lab_id}))
    try:
        procs.wait_for(lambda: alive.pid in procs.marked(lab_id), timeout=10, what="the marked process")
        assert lab._stale({"lab_id": lab_id}) is False
    finally:
        alive.kill()
        alive.wait()


def test_a_plain_build_skips_what_is_built_on_demand_and_the_demo_also_the_test_only_parts() -> None:
    plain = {c.name for c in build.selected()}
    assert "kubernetes-e2e" not in plain
    assert {"kubernetes", "helm", "distribution"} <= plain
    demo = {c.name for c in build.selected(demo=True)}
    assert demo == plain - set(build.TEST_ONLY)
    assert [c.name for c in build.selected(["kubernetes-e2e"])] == ["kubernetes-e2e"]
    with pytest.raises(build.BuildError, match="unknown component"):
        build.selected(["kubernetes-e2e", "nope"])
