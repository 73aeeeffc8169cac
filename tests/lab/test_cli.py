"""The `spiderpool-lab` front door: exec into nodes and pods, env, kubectl, status."""

from __future__ import annotations

import subprocess
import sys

from spiderpool_lab.cluster import Lab


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "spiderpool_lab", *args], capture_output=True, text=True, timeout=60)


def test_exec_in_node_shows_its_underlay_address(lab: Lab) -> None:
    out = _cli("exec", "node2", "--", "ip", "-br", "addr", "show", "eth0")
    assert out.returncode == 0, out.stderr
    assert "172.18.0.3/16" in out.stdout


def test_exec_unknown_targets_fail_clearly(lab: Lab) -> None:
    out = _cli("exec", "node9", "--", "true")
    assert out.returncode == 2
    assert "no lab node named 'node9'" in out.stderr
    out = _cli("exec", "default/nosuchpod", "--", "true")
    assert out.returncode == 2
    assert "no pod default/nosuchpod" in out.stderr


def test_env_kubectl_and_status(lab: Lab) -> None:
    env = _cli("env")
    assert env.returncode == 0
    assert f"export KUBECONFIG={lab.kubeconfig}" in env.stdout
    nodes = _cli("kubectl", "get", "nodes", "-o", "name")
    assert nodes.stdout.split() == ["node/node1", "node/node2"]
    status = _cli("status")
    assert status.returncode == 0
    assert "kube-apiserver" in status.stdout
    assert "DEAD" not in status.stdout
