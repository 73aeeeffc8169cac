"""The Helm chart in the lab: every profile passes a server-side dry run, bad values never reach a
release, the ServiceAccounts hold only what their code uses, and an uninstall followed by a
reinstall keeps every running pod's IP (docs/helm.md says what an uninstall leaves)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import yaml

from spiderpool_lab import build, helm, procs
from spiderpool_lab.cluster import Lab
from tests import stack
from tests.helpers import apply, get_json, pool_manifest, pool_pod, wait_running
from tests.ipam.conftest import assert_consistent, records
from tests.stack import Agents, Controllers
from tests.unit.test_chart import BAD_VALUES, PROFILES

NS = "helm-test"
FOREIGN_CRDS = (
    ("cert-manager-crds", "cert-manager.io_certificates.yaml"),
    ("cert-manager-crds", "cert-manager.io_issuers.yaml"),
    ("prometheus-operator-crds", "monitoring.coreos.com_servicemonitors.yaml"),
    ("prometheus-operator-crds", "monitoring.coreos.com_prometheusrules.yaml"),
)


@pytest.fixture
def foreign_crds(controllers: Controllers) -> Iterator[Lab]:
    """cert-manager's and the Prometheus operator's CRDs (from their modules): what the certmanager
    and metrics profiles need in a cluster."""
    lab = controllers.lab
    names = []
    for component, name in FOREIGN_CRDS:
        text = build.module_file(component, name).read_text()
        names.append(next(d for d in yaml.safe_load_all(text) if d)["metadata"]["name"])
        lab.kubectl("apply", "--server-side", "-f", "-", input_text=text)
    for name in names:
        lab.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
    yield lab
    for name in names:
        lab.kubectl("delete", "crd", name, "--ignore-not-found", "--wait=true", check=False)


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_profile_passes_a_server_side_dry_run(foreign_crds: Lab, profile: str) -> None:
    rendered = helm.template(*PROFILES[profile]).stdout
    out = foreign_crds.kubectl("apply", "--dry-run=server", "-f", "-", input_text=rendered, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    for kind_name in ("deployment.apps/spiderpool-controller", "daemonset.apps/spiderpool-agent", "job.batch/"):
        assert kind_name in out.stdout, out.stdout


def test_bad_values_never_reach_a_release(controllers: Controllers) -> None:
    lab = controllers.lab
    release = "spiderpool-bad"
    for flags, message in BAD_VALUES:
        out = helm.run(
            lab, "install", release, str(helm.chart_path()), "--namespace", "kube-system", *flags, check=False
        )
        assert out.returncode != 0, f"installed with {flags}"
        assert message in out.stderr, (flags, out.stderr)
        assert helm.run(lab, "status", release, "--namespace", "kube-system", check=False).returncode != 0, flags
    left = lab.kubectl("get", "all,cm,sa", "-A", "-l", f"app.kubernetes.io/instance={release}", "-o", "name")
    assert left.stdout.strip() == "", left.stdout


#: (service account, verb, resource, namespace or "", allowed)
CAN_I: list[tuple[str, str, str, str, bool]] = [
    ("spiderpool-agent", "create", "spideripallocations.spiderpool.spidernet.io", "", True),
    ("spiderpool-agent", "delete", "spideripallocations.spiderpool.spidernet.io", "", True),
    ("spiderpool-agent", "create", "spiderendpoints.spiderpool.spidernet.io", "default", True),
    ("spiderpool-agent", "delete", "spiderendpoints.spiderpool.spidernet.io", "default", True),
    ("spiderpool-agent", "list", "spiderippools.spiderpool.spidernet.io", "", True),
    ("spiderpool-agent", "update", "spiderippools.spiderpool.spidernet.io", "", False),
    ("spiderpool-agent", "patch", "spiderippools.spiderpool.spidernet.io/status", "", False),
    ("spiderpool-agent", "create", "spidersubnets.spiderpool.spidernet.io", "", False),
    ("spiderpool-agent", "update", "spidersubnets.spiderpool.spidernet.io", "", False),
    ("spiderpool-agent", "get", "secrets", "kube-system", False),
    ("spiderpool-agent", "list", "secrets", "", False),
    ("spiderpool-agent", "patch", "validatingwebhookconfigurations", "", False),
    ("spiderpool-agent", "create", "mutatingwebhookconfigurations", "", False),
    ("spiderpool-controller", "create", "pods/exec", "default", False),
    ("spiderpool-controller", "create", "pods/exec", "kube-system", False),
    ("spiderpool-controller", "get", "secrets", "default", False),
    ("spiderpool-controller", "list", "secrets", "", False),
    ("spiderpool-controller", "get", "secrets/spiderpool-controller-server-certs", "kube-system", True),
    ("spiderpool-controller", "get", "secrets/some-other-secret", "kube-system", False),
    ("spiderpool-controller", "update", "spiderippools.spiderpool.spidernet.io", "", True),
    ("spiderpool-controller", "patch", "validatingwebhookconfigurations/spiderpool-controller", "", True),
    ("spiderpool-controller", "patch", "validatingwebhookconfigurations/someone-elses", "", False),
    ("spiderpool-controller", "delete", "pods", "default", False),
    ("spiderpool-controller", "list", "leases.coordination.k8s.io", "kube-node-lease", True),
    ("spiderpool-controller", "update", "leases.coordination.k8s.io/kube-controller-manager", "kube-system", False),
    ("spiderpool-init", "create", "spidercoordinators.spiderpool.spidernet.io", "", True),
    ("spiderpool-init", "patch", "spidercoordinators.spiderpool.spidernet.io", "", True),
    ("spiderpool-init", "list", "endpointslices.discovery.k8s.io", "kube-system", True),
    ("spiderpool-init", "delete", "spidercoordinators.spiderpool.spidernet.io", "", False),
    ("spiderpool-init", "create", "spiderippools.spiderpool.spidernet.io", "", False),
    ("spiderpool-init", "get", "secrets", "kube-system", False),
    ("spiderpool-init", "list", "pods", "", False),
]


def test_service_accounts_hold_only_what_their_code_uses(controllers: Controllers) -> None:
    lab = controllers.lab
    wrong = []
    for account, verb, resource, namespace, allowed in CAN_I:
        scope = ["--namespace", namespace] if namespace else ["--all-namespaces"]
        argv = ["auth", "can-i", verb, resource, f"--as=system:serviceaccount:kube-system:{account}", *scope]
        answer = lab.kubectl(*argv, check=False).stdout.strip()
        if answer != ("yes" if allowed else "no"):
            wrong.append(f"{account} {verb} {resource} {namespace or '(all)'}: {answer}, expected {allowed}")
    assert not wrong, "\n".join(wrong)


def _pod_ips(lab: Lab) -> dict[str, str]:
    pods = get_json(lab, "pods", "-n", NS)["items"]
    return {p["metadata"]["name"]: p["status"].get("podIP", "") for p in pods if p["status"].get("phase") == "Running"}


def test_uninstall_leaves_records_and_a_reinstall_adopts_them(agents: Agents, controllers: Controllers) -> None:
    lab = agents.lab
    from tests.ipam.conftest import macvlan_spiderpool, use_cni

    use_cni(lab, macvlan_spiderpool())
    apply(lab, pool_manifest("helm-pool", "172.18.0.0/16", ["172.18.70.10-172.18.70.20"]))
    lab.kubectl("create", "namespace", NS)
    try:
        nodes = [n.name for n in lab.nodes()]
        for i, node in enumerate(nodes):
            apply(lab, pool_pod(f"keep-{i}", NS, "helm-pool", node))
        wait_running(lab, NS, "app in (keep-0,keep-1)", len(nodes))
        before = _pod_ips(lab)
        held = sorted(r["spec"]["ip"] for r in records(lab) if r["spec"]["namespace"] == NS)
        assert sorted(before.values()) == held

        out = helm.run(lab, "uninstall", stack.RELEASE, "--namespace", "kube-system", "--wait", "--timeout", "3m")
        assert "uninstalled" in out.stdout
        procs.wait_for(lambda: not agents.pods() and not controllers.pods(), timeout=120, what="spiderpool's pods gone")
        # what is left: CRDs, pools, records, the default SpiderCoordinator, the plugins on the nodes
        assert get_json(lab, "spiderippool", "helm-pool")["metadata"]["name"] == "helm-pool"
        assert sorted(r["spec"]["ip"] for r in records(lab) if r["spec"]["namespace"] == NS) == held
        assert get_json(lab, "spidercoordinator", "default")["spec"]["tunePodRoutes"] is True
        for node in lab.nodes():
            assert {"spiderpool", "veth"} <= {p.name for p in node.cni_bin_dir.iterdir()}
        gone = lab.kubectl("get", "validatingwebhookconfiguration", "spiderpool-controller", check=False)
        assert gone.returncode != 0, gone.stdout
        assert _pod_ips(lab) == before  # running pods are untouched

        stack.install(lab)
        controllers.wait_all()
        agents.wait_all()
        apply(lab, pool_pod("after", NS, "helm-pool", nodes[0]))
        wait_running(lab, NS, "app=after", 1)
        after = _pod_ips(lab)
        assert {k: after[k] for k in before} == before
        assert after["after"] not in before.values()
        ips = [r["spec"]["ip"] for r in records(lab)]
        assert len(ips) == len(set(ips)), ips
    finally:
        lab.kubectl("delete", "namespace", NS, "--wait=true", check=False)
        lab.kubectl("delete", "spiderippool", "helm-pool", "--wait=true", check=False)
        lab.reset_cni_config()
    assert_consistent(lab)


def test_helm_release_status_and_notes(controllers: Controllers) -> None:
    lab = controllers.lab
    status = json.loads(helm.run(lab, "status", stack.RELEASE, "--namespace", "kube-system", "-o", "json").stdout)
    assert status["info"]["status"] == "deployed"
    notes = status["info"]["notes"]
    assert "not installed by this chart (multus.multusCNI.install=false)" in notes
    assert "SpiderSubnet" in notes
