"""The manifests for a real cluster (deploy/spiderpool.yaml) are valid for the real apiserver (a
server-side dry run: schema, admission, priority classes), and name the image the Dockerfile builds."""

from __future__ import annotations

from pathlib import Path

from spiderpool_lab.cluster import Lab

ROOT = Path(__file__).resolve().parents[2]


def test_manifests_pass_a_server_side_dry_run(lab: Lab) -> None:
    text = (ROOT / "deploy" / "spiderpool.yaml").read_text()
    out = lab.kubectl("apply", "--dry-run=server", "-f", "-", input_text=text)
    created = out.stdout
    for kind_name in (
        "serviceaccount/spiderpool-controller",
        "clusterrole.rbac.authorization.k8s.io/spiderpool-agent",
        "deployment.apps/spiderpool-controller",
        "daemonset.apps/spiderpool-agent",
        "service/spiderpool-controller",
    ):
        assert kind_name in created, created
    assert "SPIDERPOOL_PLUGIN_RELAY=/opt/spiderpool/cni/spiderpool-relay" in (ROOT / "Dockerfile").read_text()
