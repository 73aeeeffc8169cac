"""The README's main command: the reference walkthrough, run by `spiderpool-lab demo` on a lab of its
own, passes every step and prints what the walkthrough shows."""

from __future__ import annotations

import io
import re
from pathlib import Path

from spiderpool_lab.cluster import Lab
from spiderpool_lab.demo import Demo
from tests.helpers import get_json


def test_demo_runs_the_walkthrough(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "lab", prefix="splabd")
    out = io.StringIO()
    try:
        lab.up(nodes=2)
        ok = Demo(lab, out=out).run()
    finally:
        lab.down()
    text = out.getvalue()
    assert ok, text
    summary = text.split("=== summary", 1)[1]
    assert summary.count("PASS") == 8, summary
    # what the walkthrough shows: pods in its subnet, an auto-created pool, veth0 and the service route,
    # a clean ping and HTTP 200 from the Service
    assert len(set(re.findall(r"172\.18\.30\.1(?:3[1-9]|40)\b", text))) >= 2, text
    assert "auto4-custom-ippool-deploy-eth0-" in text
    assert "veth0" in text
    assert "10.96.0.0/16 via" in text
    assert " 0% packet loss" in text
    assert "HTTP/1.1 200" in text
    # the walkthrough's Helm commands, from the lab's chart repository
    assert re.search(r"\$ helm repo add spiderpool http://127\.0\.0\.1:\d+/\n\"spiderpool\" has been added", text), text
    assert 'Successfully got an update from the "spiderpool" chart repository' in text
    assert (
        "$ helm install spiderpool spiderpool/spiderpool --namespace kube-system"
        " --set feature.enableIPv4=true --set feature.enableIPv6=false"
    ) in text
    assert "STATUS: deployed" in text
    assert "IPv4 on, IPv6 off" in text
    assert "feature.enableIPv4/feature.enableIPv6 is the older chart's spelling" in text
    assert "not installed by this chart (multus.multusCNI.install=false)" in text


def test_a_one_node_cluster_installs_ready_and_drains(tmp_path: Path) -> None:
    """The walkthrough on a one-node cluster: the install is Ready (one controller, as many as
    there are nodes; no PodDisruptionBudget it could not satisfy) and `kubectl drain` is not
    blocked."""
    lab = Lab(tmp_path / "lab", prefix="splabo")
    out = io.StringIO()
    try:
        lab.up(nodes=1)
        ok = Demo(lab, out=out).run()
        assert ok, out.getvalue()
        deployment = get_json(lab, "deployment", "-n", "kube-system", "spiderpool-controller")
        assert (deployment["spec"]["replicas"], deployment["status"].get("readyReplicas")) == (1, 1)
        pdb = lab.kubectl("get", "poddisruptionbudget", "-n", "kube-system", "spiderpool-controller", check=False)
        assert pdb.returncode != 0, pdb.stdout
        drain = lab.kubectl(
            "drain", "node1", "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=120s", check=False
        )
        assert drain.returncode == 0, drain.stdout + drain.stderr
        assert "node/node1 drained" in drain.stdout
    finally:
        lab.down()
