"""The Helm chart in the lab: every profile passes a server-side dry run, bad values never reach a
release, the ServiceAccounts hold only what their code uses, and an uninstall followed by a
reinstall keeps every running pod's IP (docs/helm.md says what an uninstall leaves)."""

from __future__ import annotations

import base64
import datetime
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from cryptography import x509

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


@pytest.fixture(scope="module")
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
    ("spiderpool-agent", "patch", "spiderippools.spiderpool.spidernet.io", "", False),
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
    ("spiderpool-controller", "watch", "configmaps/kubeadm-config", "kube-system", True),
    ("spiderpool-controller", "list", "configmaps/cilium-config", "kube-system", True),
    ("spiderpool-controller", "get", "configmaps/coredns", "kube-system", False),
    ("spiderpool-controller", "list", "configmaps", "kube-system", False),
    ("spiderpool-controller", "watch", "servicecidrs.networking.k8s.io", "", True),
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


def test_an_upgrade_keeps_an_edited_spidercoordinator(controllers: Controllers) -> None:
    """`kubectl edit spidercoordinator default`, then `helm upgrade`: the edit stays (the init Job
    creates the object and carries the chart's changed values, never over an admin's edit)."""
    lab = controllers.lab
    prefix = "0a:1b"
    assert not get_json(lab, "spidercoordinator", "default")["spec"].get("podMACPrefix")
    lab.kubectl(
        "patch", "spidercoordinator", "default", "--type=merge", "-p", json.dumps({"spec": {"podMACPrefix": prefix}})
    )
    try:
        stack.helm_install(lab)  # the post-upgrade Job runs (helm --wait waits for it)
        assert get_json(lab, "spidercoordinator", "default")["spec"].get("podMACPrefix") == prefix
        # a chart value changed by the upgrade (and not edited) still reaches it
        stack.helm_install(lab, {"coordinator": {"podRPFilter": 2}})
        spec = get_json(lab, "spidercoordinator", "default")["spec"]
        assert (spec.get("podMACPrefix"), spec.get("podRPFilter")) == (prefix, 2)
    finally:
        lab.kubectl(
            "patch",
            "spidercoordinator",
            "default",
            "--type=json",
            "-p",
            '[{"op": "remove", "path": "/spec/podMACPrefix"}]',
            check=False,
        )
        stack.helm_install(lab)
    assert get_json(lab, "spidercoordinator", "default")["spec"].get("podRPFilter") == 0


def test_helm_release_status_and_notes(controllers: Controllers) -> None:
    lab = controllers.lab
    status = json.loads(helm.run(lab, "status", stack.RELEASE, "--namespace", "kube-system", "-o", "json").stdout)
    assert status["info"]["status"] == "deployed"
    notes = status["info"]["notes"]
    assert "not installed by this chart (multus.multusCNI.install=false)" in notes
    assert "SpiderSubnet" in notes
    # upstream's component labels, which its e2e and users' scripts select on
    for component in ("spiderpool-controller", "spiderpool-agent"):
        found = get_json(lab, "pods", "-n", "kube-system", "-l", f"app.kubernetes.io/component={component}")
        assert found["items"], f"no pod labelled app.kubernetes.io/component={component}"


ROLL = "roll"
ROLL_DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: roll, namespace: helm-roll}
spec:
  replicas: 0
  selector: {matchLabels: {app: roll}}
  template:
    metadata:
      labels: {app: roll}
      annotations: {ipam.spidernet.io/ippool: '{"ipv4": ["roll-pool"]}'}
    spec:
      terminationGracePeriodSeconds: 1
      containers: [{name: c, image: registry.invalid/app:1}]
"""


class _Watch:
    """Samples the pods while the release rolls: a Running pod's IP never changes, no two Running
    pods share one, and each Running pod has exactly one IP."""

    def __init__(self, lab: Lab, namespace: str) -> None:
        self.lab, self.namespace = lab, namespace
        self.seen: dict[str, str] = {}
        self.problems: list[str] = []
        self.samples = 0

    def sample(self) -> list[dict[str, Any]]:
        pods = [
            p
            for p in get_json(self.lab, "pods", "-n", self.namespace)["items"]
            if p["status"].get("phase") == "Running"
        ]
        by_ip: dict[str, str] = {}
        for p in pods:
            name, ips = p["metadata"]["name"], [i["ip"] for i in p["status"].get("podIPs") or []]
            if len(ips) != 1:
                self.problems.append(f"{name} Running with IPs {ips}")
                continue
            if self.seen.setdefault(name, ips[0]) != ips[0]:
                self.problems.append(f"{name} changed IP {self.seen[name]} -> {ips[0]}")
            if ips[0] in by_ip:
                self.problems.append(f"{ips[0]} held by {by_ip[ips[0]]} and {name}")
            by_ip[ips[0]] = name
        self.samples += 1
        return pods


def test_upgrade_while_a_deployment_scales_keeps_every_ip(agents: Agents, controllers: Controllers) -> None:
    lab = agents.lab
    from tests.ipam.conftest import macvlan_spiderpool, use_cni, wait_no_records

    namespace = "helm-roll"
    use_cni(lab, macvlan_spiderpool())
    apply(lab, pool_manifest("roll-pool", "172.18.0.0/16", ["172.18.71.10-172.18.71.60"]))
    lab.kubectl("create", "namespace", namespace)
    watch = _Watch(lab, namespace)
    upgrade: dict[str, Any] = {}

    def run_upgrade() -> None:
        try:
            # changed values: the GC interval (the controller rolls) and the agent's resources (the agent rolls)
            upgrade["out"] = stack.helm_install(
                lab,
                {
                    "ipam": {"gc": {"gcAll": {"intervalInSecond": 7}}},
                    "spiderpoolAgent": {"resources": {"requests": {"cpu": "110m", "memory": "128Mi"}}},
                },
            )
        except Exception as exc:  # reported by the test below
            upgrade["error"] = exc

    try:
        lab.kubectl("apply", "-f", "-", input_text=ROLL_DEPLOYMENT)
        generations = {p["metadata"]["name"] for p in agents.pods() + controllers.pods()}
        thread = threading.Thread(target=run_upgrade)
        lab.kubectl("scale", "-n", namespace, f"deployment/{ROLL}", "--replicas=30")
        thread.start()
        procs.wait_for(lambda: len(watch.sample()) == 30, timeout=300, what="30 Running pods while the release rolls")
        lab.kubectl("scale", "-n", namespace, f"deployment/{ROLL}", "--replicas=0")
        procs.wait_for(lambda: not watch.sample() and not thread.is_alive(), timeout=400, what="scale-down and upgrade")
        assert "error" not in upgrade, upgrade.get("error")
        rolled = {p["metadata"]["name"] for p in agents.pods() + controllers.pods()}
        assert not rolled & generations, "the agents and controllers did not roll"
        assert not watch.problems, "\n".join(watch.problems)
        events = get_json(lab, "events", "-n", namespace)["items"]
        failed = sum(int(e.get("count") or 1) for e in events if e.get("reason") == "FailedCreatePodSandBox")
        print(
            f"upgrade under load: {watch.samples} samples, {len(watch.seen)} pods Running, {failed} failed ADDs retried"
        )
        wait_no_records(lab, namespace, timeout=120)
    finally:
        lab.kubectl("delete", "namespace", namespace, "--wait=true", check=False)
        lab.kubectl("delete", "spiderippool", "roll-pool", "--wait=true", check=False)
        lab.reset_cni_config()
        stack.install(lab)  # the tests' values again
        controllers.wait_all()
        agents.wait_all()
    assert_consistent(lab)


def _secret_cert(lab: Lab) -> str:
    data = get_json(lab, "secret", "-n", "kube-system", "spiderpool-controller-server-certs")["data"]
    return str(data["tls.crt"])


def _webhook_rejects(lab: Lab, name: str) -> bool:
    """A rule only the webhook checks (a reversed range) is refused: the apiserver reached a replica
    through the Service and trusted its certificate."""
    body = {
        "apiVersion": "spiderpool.spidernet.io/v2beta1",
        "kind": "SpiderReservedIP",
        "metadata": {"name": name},
        "spec": {"ips": ["10.99.0.9-10.99.0.1"]},
    }
    out = lab.kubectl("create", "--dry-run=server", "-f", "-", input_text=json.dumps(body), check=False)
    return out.returncode != 0 and "starts after it ends" in out.stderr


def test_the_webhook_certificate_is_renewed_and_reloaded_without_a_gap(controllers: Controllers) -> None:
    lab = controllers.lab
    # a certificate of about 35 s, checked every 2 s: renewed when a third of its life is left
    short = {"spiderpoolController": {"extraArgs": [*stack.CONTROLLER_ARGS, "--cert-validity-days=0.0004"]}}
    short["spiderpoolController"]["extraArgs"].append("--cert-check-interval=2")
    try:
        lab.kubectl("delete", "secret", "-n", "kube-system", "spiderpool-controller-server-certs")
        stack.helm_install(lab, short)
        controllers.wait_all()
        first = _secret_cert(lab)
        seen = {first}
        checks = 0

        def renewed_twice() -> bool:
            nonlocal checks
            assert _webhook_rejects(lab, f"rotation-{checks}"), "the webhook stopped answering during a renewal"
            checks += 1
            seen.add(_secret_cert(lab))
            return len(seen) >= 3

        procs.wait_for(renewed_twice, timeout=180, what="two renewals of the webhook certificate")

        def bundles_follow_the_secret() -> bool:
            ca = get_json(lab, "secret", "-n", "kube-system", "spiderpool-controller-server-certs")["data"]["ca.crt"]
            hooks = [
                h
                for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration")
                for h in get_json(lab, kind, "spiderpool-controller")["webhooks"]
            ]
            return all(h["clientConfig"].get("caBundle") == ca for h in hooks)

        procs.wait_for(bundles_follow_the_secret, timeout=30, what="the configurations' CA bundle to follow the Secret")
        print(f"certificate renewals seen: {len(seen) - 1}, webhook checks answered: {checks}")
    finally:
        stack.install(lab)
        controllers.wait_all()

    # Back to year-long certificates: the replicas may start with the last short one (made by a
    # replica of the short kind still running), which they must renew before it expires.
    def long_lived() -> bool:
        pem = base64.b64decode(_secret_cert(lab))
        left = x509.load_pem_x509_certificate(pem).not_valid_after_utc - datetime.datetime.now(datetime.UTC)
        return left > datetime.timedelta(days=1)

    procs.wait_for(long_lived, timeout=120, what="a year-long certificate again")
    procs.wait_for(lambda: _webhook_rejects(lab, "rotation-after"), timeout=60, what="the webhook to answer")


def test_init_job_creates_the_default_subnet_and_pool(controllers: Controllers) -> None:
    lab = controllers.lab
    default_pool = {
        "clusterDefaultPool": {
            "installIPv4IPPool": True,
            "installIPv6IPPool": True,
            "ipv4Subnet": "10.250.0.0/24",
            "ipv4IPRanges": ["10.250.0.10-10.250.0.20"],
            "ipv4Gateway": "10.250.0.1",
            "ipv6Subnet": "fd00:250::/64",
            "ipv6IPRanges": ["fd00:250::10-fd00:250::20"],
        }
    }
    try:
        stack.helm_install(lab, default_pool)
        for kind, name in (("spidersubnet", "default-v4-subnet"), ("spidersubnet", "default-v6-subnet")):
            assert get_json(lab, kind, name)["spec"]["subnet"] in ("10.250.0.0/24", "fd00:250::/64")
        v4 = get_json(lab, "spiderippool", "default-v4-ippool")["spec"]
        assert (v4["subnet"], v4["ips"], v4["gateway"], v4["default"]) == (
            "10.250.0.0/24",
            ["10.250.0.10-10.250.0.20"],
            "10.250.0.1",
            True,
        )
        assert get_json(lab, "spiderippool", "default-v6-ippool")["spec"]["ips"] == ["fd00:250::10-fd00:250::20"]
        # an upgrade runs the Job again: what exists is left as it is (after the install, it is the admin's)
        lab.kubectl(
            "patch",
            "spiderippool",
            "default-v4-ippool",
            "--type=merge",
            "-p",
            '{"spec":{"ips":["10.250.0.10-10.250.0.15"]}}',
        )
        stack.helm_install(lab, default_pool)
        assert get_json(lab, "spiderippool", "default-v4-ippool")["spec"]["ips"] == ["10.250.0.10-10.250.0.15"]
    finally:
        stack.install(lab)
        for kind, name in (
            ("spiderippool", "default-v4-ippool"),
            ("spiderippool", "default-v6-ippool"),
            ("spidersubnet", "default-v4-subnet"),
            ("spidersubnet", "default-v6-subnet"),
        ):
            lab.kubectl("delete", kind, name, "--ignore-not-found", "--wait=true", "--timeout=60s", check=False)


def _multus_pods(lab: Lab) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = get_json(lab, "pods", "-n", "kube-system", "-l", "app=multus")["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def _multus_restart_keeps_its_config(lab: Lab) -> None:
    """A Multus pod restarts (an upgrade, a drain, a crash): with the chart's default
    (multus.multusCNI.uninstall=false) its node keeps 00-multus.conf throughout, and a pod created
    meanwhile on that node starts."""
    from spiderpool_lab import install

    node = lab.nodes()[0].name
    (victim,) = [p for p in _multus_pods(lab) if p["spec"]["nodeName"] == node]
    old_uid = victim["metadata"]["uid"]
    lab.kubectl("delete", "pod", "-n", "kube-system", victim["metadata"]["name"], "--wait=false")
    apply(lab, MEANWHILE.format(node=node))
    try:
        seen_without = []

        def back() -> bool:
            if not install.multus_conf(lab, node):
                seen_without.append(time.monotonic())
            mine = [p for p in _multus_pods(lab) if p["spec"]["nodeName"] == node]
            return bool(mine) and mine[0]["metadata"]["uid"] != old_uid and mine[0]["status"].get("phase") == "Running"

        procs.wait_for(back, timeout=120, interval=0.1, what=f"a new Multus pod Running on {node}")
        assert not seen_without, f"{node} had no 00-multus.conf while its Multus pod restarted"
        wait_running(lab, "default", "app=multus-meanwhile", 1)
    finally:
        lab.kubectl("delete", "pod", "-n", "default", "multus-meanwhile", "--wait=true", check=False)


MEANWHILE = """
apiVersion: v1
kind: Pod
metadata: {{name: multus-meanwhile, namespace: default, labels: {{app: multus-meanwhile}}}}
spec:
  nodeName: {node}
  containers: [{{name: main, image: registry.invalid/app:1}}]
"""


def test_multus_install_detects_an_existing_multus(controllers: Controllers) -> None:
    """The walkthrough's order (Multus from its own manifest, then the chart with install=true): no
    second Multus; without one, the chart's Multus runs on every node; install=false removes it."""
    from spiderpool_lab import install

    lab = controllers.lab
    ours = {
        "multus": {
            "multusCNI": {
                "install": True,
                "image": {"registry": "lab.local", "repository": "multus-cni", "tag": "v4.3.0"},
            }
        }
    }
    nodes = {n.name for n in lab.nodes()}
    try:
        lab.reset_cni_config()
        install.multus(lab)
        helm_out = stack.helm_install(lab, ours)
        assert "already runs (not installed by this" in helm_out, helm_out
        ds = get_json(lab, "daemonset", "-n", "kube-system", "kube-multus-ds")
        assert "app.kubernetes.io/instance" not in (ds["metadata"].get("labels") or {}), ds["metadata"]
        assert len(_multus_pods(lab)) == len(nodes)

        install.remove_multus(lab)
        helm_out = stack.helm_install(lab, ours)
        assert "installed by this chart (kube-system/kube-multus-ds)" in helm_out, helm_out
        ds = get_json(lab, "daemonset", "-n", "kube-system", "kube-multus-ds")
        assert ds["metadata"]["labels"]["app.kubernetes.io/instance"] == stack.RELEASE
        procs.wait_for(
            lambda: (
                {p["spec"]["nodeName"] for p in _multus_pods(lab) if p["status"].get("phase") == "Running"} == nodes
                and all(install.multus_conf(lab, n) for n in nodes)
            ),
            timeout=120,
            what="the chart's Multus on every node, with its 00-multus.conf",
        )
        _multus_restart_keeps_its_config(lab)
        stack.helm_install(lab)  # install=false again: Helm removes its Multus
        procs.wait_for(lambda: not _multus_pods(lab), timeout=120, what="the chart's Multus to go")
    finally:
        stack.install(lab)
        install.remove_multus(lab)
        lab.reset_cni_config()


def test_provided_certificate_is_served_as_given(controllers: Controllers) -> None:
    """tls.method=provided (as certmanager: a Secret the controller only reads): the chart's Secret
    and CA bundle, the controller serving that certificate, and the webhook answering."""
    import base64

    from spiderpool.controller import certs

    lab = controllers.lab
    name = "spiderpool-controller"
    dns = [name, f"{name}.kube-system", f"{name}.kube-system.svc", f"{name}.kube-system.svc.cluster.local"]
    given = certs.generate(dns=dns, ips=[])
    secret = "spiderpool-provided-certs"
    provided = {
        "spiderpoolController": {
            "tls": {
                "method": "provided",
                "secretName": secret,
                "provided": {
                    "tlsCert": given.cert_pem.decode(),
                    "tlsKey": given.key_pem.decode(),
                    "tlsCa": given.ca_pem.decode(),
                },
            }
        }
    }
    ca = base64.b64encode(given.ca_pem).decode()
    try:
        stack.helm_install(lab, provided)
        controllers.wait_all()
        hooks = get_json(lab, "validatingwebhookconfiguration", name)["webhooks"]
        assert {h["clientConfig"]["caBundle"] for h in hooks} == {ca}
        procs.wait_for(lambda: _webhook_rejects(lab, "provided"), timeout=60, what="the webhook to answer")
        data = get_json(lab, "secret", "-n", "kube-system", secret)["data"]
        assert data["tls.crt"] == base64.b64encode(given.cert_pem).decode()  # read, never rewritten
        logs = lab.kubectl("logs", "-n", "kube-system", "-l", f"app.kubernetes.io/name={name}", "--tail=-1").stdout
        assert "webhook serving certificate created" not in logs
    finally:
        stack.install(lab)
        controllers.wait_all()
    procs.wait_for(lambda: _webhook_rejects(lab, "auto-again"), timeout=60, what="the webhook to answer")
    assert lab.kubectl("get", "secret", "-n", "kube-system", secret, check=False).returncode != 0  # Helm removed it
