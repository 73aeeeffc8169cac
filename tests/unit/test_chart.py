"""The Helm chart without a cluster: lint, one rendering per profile compared with its snapshot,
the values the schema or the templates refuse (each with a message naming the value), and the
contracts between the chart and the code (webhooks, conf.yml, metric names, deploy/spiderpool.yaml).

Snapshots: ``UPDATE_SNAPSHOTS=1 pytest tests/unit/test_chart.py`` rewrites them; review the diff."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from spiderpool.api import conf
from spiderpool.controller import webhook
from spiderpool_lab import build, helm
from tests.unit import metric_names

SNAPSHOTS = Path(__file__).parent / "chart_snapshots"

#: the profiles users install (each also passes a server-side dry run in tests/lab/test_helm.py)
PROFILES: dict[str, list[str]] = {
    "defaults": [],
    "walkthrough": ["--set", "feature.enableIPv4=true", "--set", "feature.enableIPv6=false"],
    "dual-stack": [
        "--set-json",
        'clusterDefaultPool={"installIPv4IPPool": true, "installIPv6IPPool": true,'
        ' "ipv4Subnet": "172.18.0.0/16", "ipv4IPRanges": ["172.18.40.10-172.18.40.100"],'
        ' "ipv4Gateway": "172.18.0.1", "ipv6Subnet": "fd00:18::/64",'
        ' "ipv6IPRanges": ["fd00:18::40:10-fd00:18::40:100"], "ipv6Gateway": "fd00:18::1"}',
    ],
    "metrics": [
        "--set",
        "spiderpoolAgent.prometheus.enabled=true",
        "--set",
        "spiderpoolAgent.prometheus.serviceMonitor.install=true",
        "--set",
        "spiderpoolAgent.prometheus.prometheusRule.install=true",
        "--set",
        "spiderpoolController.prometheus.enabled=true",
        "--set",
        "spiderpoolController.prometheus.serviceMonitor.install=true",
        "--set",
        "spiderpoolController.prometheus.prometheusRule.install=true",
        "--set",
        "grafanaDashboard.install=true",
    ],
    "certmanager": ["--set", "spiderpoolController.tls.method=certmanager"],
    "multus": ["--set", "multus.multusCNI.install=true"],
}


def render(*flags: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(helm.template(*flags).stdout) if d]


def test_helm_lint_is_clean() -> None:
    out = helm.run(None, "lint", "--strict", str(helm.chart_path()))
    assert "0 chart(s) failed" in out.stdout, out.stdout
    assert "[WARNING]" not in out.stdout, out.stdout
    assert "[ERROR]" not in out.stdout, out.stdout


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_rendering_matches_snapshot(profile: str) -> None:
    text = helm.template(*PROFILES[profile]).stdout
    snapshot = SNAPSHOTS / f"{profile}.yaml"
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        snapshot.write_text(text)
    assert snapshot.exists(), f"no snapshot {snapshot.name}: run with UPDATE_SNAPSHOTS=1 and review it"
    assert text == snapshot.read_text(), f"helm template ({profile}) differs from {snapshot.name}"


def test_deploy_manifest_is_the_chart_with_its_defaults() -> None:
    committed = (helm.paths.repo_root() / helm.MANIFEST).read_text()
    assert committed == helm.manifest(), "deploy/spiderpool.yaml is stale: run `make manifest`"


#: (values, what the message must say): each refused at install time, before anything is created
BAD_VALUES: list[tuple[list[str], str]] = [
    (["--set", "ipam.enableIPV4=true"], "additional properties 'enableIPV4' not allowed"),
    (["--set", "spiderpoolagent.name=x"], "additional properties 'spiderpoolagent' not allowed"),
    (["--set", "ipam.enableIPv4=yes"], "/ipam/enableIPv4"),
    (["--set", "feature.enableIPv4=false", "--set", "ipam.enableIPv6=false"], "enable at least one IP family"),
    (["--set", "ipam.enableIPv4=false", "--set", "ipam.enableIPv6=false"], "enable at least one IP family"),
    (
        [
            "--set-json",
            'clusterDefaultPool={"installIPv4IPPool": true, "ipv4Subnet": "172.18.0.0/16",'
            ' "ipv4IPRanges": ["172.18.40.10-172.19.0.5"]}',
        ],
        "clusterDefaultPool.ipv4IPRanges: 172.19.0.5 is outside clusterDefaultPool.ipv4Subnet 172.18.0.0/16",
    ),
    (
        [
            "--set-json",
            'clusterDefaultPool={"installIPv4IPPool": true, "ipv4Subnet": "172.18.0.0/16",'
            ' "ipv4IPRanges": ["172.18.40.10-172.18.40.20"], "ipv4Gateway": "10.0.0.1"}',
        ],
        "clusterDefaultPool.ipv4Gateway: 10.0.0.1 is outside",
    ),
    (
        [
            "--set-json",
            'clusterDefaultPool={"installIPv4IPPool": true, "ipv4Subnet": "172.18.0.0/16",'
            ' "ipv4IPRanges": ["172.18.40.20-172.18.40.10"]}',
        ],
        "ends before it starts",
    ),
    (["--set", "clusterDefaultPool.installIPv4IPPool=true"], "clusterDefaultPool.ipv4Subnet is empty"),
    (["--set-json", 'clusterDefaultPool={"ipv4IPRanges": ["172.18.40.300"]}'], "/clusterDefaultPool/ipv4IPRanges/0"),
    (["--set", "spiderpoolAgent.image.tag=v1 .0"], "/spiderpoolAgent/image/tag"),
    (["--set", "spiderpoolController.image.repository=Spiderpool"], "/spiderpoolController/image/repository"),
    (["--set", "spiderpoolAgent.image.pullPolicy=Sometimes"], "/spiderpoolAgent/image/pullPolicy"),
    (["--set", "spiderpoolController.replicas=0"], "/spiderpoolController/replicas"),
    (["--set", "spiderpoolController.tls.method=selfsigned"], "/spiderpoolController/tls/method"),
    (["--set", "spiderpoolController.tls.method=provided"], "tls.method=provided needs"),
    (["--set", "coordinator.mode=fast"], "/coordinator/mode"),
    (["--set", "coordinator.podMACPrefix=0b:11"], "/coordinator/podMACPrefix"),
    (["--set", "ipam.gc.gcAll.intervalInSecond=-5"], "/ipam/gc/gcAll/intervalInSecond"),
    (["--set", "plugins.installCNI=true"], "/plugins/installCNI"),
    (["--set", "ipam.enableStatefulSet=false"], "/ipam/enableStatefulSet"),
    (["--set", "global.cniBinHostPath=opt/cni/bin"], "/global/cniBinHostPath"),
    (["--set", "global.imageRegistryOverride=ghcr.io/myorg/"], "/global/imageRegistryOverride"),
    (["--set", "global.imageRegistryOverride=https://ghcr.io"], "/global/imageRegistryOverride"),
    (
        ["--set", "spiderpoolAgent.prometheus.serviceMonitor.install=true"],
        "needs spiderpoolAgent.prometheus.enabled=true",
    ),
    (
        ["--set", "spiderpoolController.prometheus.prometheusRule.noLeader.for=5 minutes"],
        "/spiderpoolController/prometheus/prometheusRule/noLeader/for",
    ),
    (
        ["--set", "spiderpoolController.prometheus.prometheusRule.ippoolUsage.percent=120"],
        "/spiderpoolController/prometheus/prometheusRule/ippoolUsage/percent",
    ),
]


@pytest.mark.parametrize(("flags", "message"), BAD_VALUES, ids=[" ".join(f)[:60] for f, _ in BAD_VALUES])
def test_bad_values_are_refused_with_a_message_naming_the_value(flags: list[str], message: str) -> None:
    out = helm.template(*flags, check=False)
    assert out.returncode != 0, f"accepted: {flags}"
    assert message in out.stderr, out.stderr


def _images(docs: list[dict[str, Any]]) -> set[str]:
    out = set()
    for d in docs:
        spec = d.get("spec", {}).get("template", {}).get("spec", {})
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            out.add(c["image"])
    return out


def test_one_value_names_the_registry_and_organisation_of_every_image() -> None:
    docs = render(
        "--set", "multus.multusCNI.install=true", "--set", "global.imageRegistryOverride=ghcr.io/my-org/mirror"
    )
    images = _images(docs)
    assert "ghcr.io/my-org/mirror/spiderpool-python:0.1.0" in images
    assert len(images) >= 2
    assert all(i.startswith("ghcr.io/my-org/mirror/") for i in images), images
    assert _images(render("--set", "global.imageRegistryOverride=registry.lab:5000")) == {
        "registry.lab:5000/spiderpool-python:0.1.0"
    }


def test_defaults_fit_every_cluster() -> None:
    docs = render()
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    for key in (("DaemonSet", "spiderpool-agent"), ("Deployment", "spiderpool-controller")):
        assert by_kind[key]["spec"]["template"]["spec"]["nodeSelector"] == {"kubernetes.io/os": "linux"}, key
    # (helm template has no cluster to count nodes in: the value as given, and its budget)
    assert by_kind[("Deployment", "spiderpool-controller")]["spec"]["replicas"] == 2
    assert ("PodDisruptionBudget", "spiderpool-controller") in by_kind
    one = {(d["kind"], d["metadata"]["name"]) for d in render("--set", "spiderpoolController.replicas=1")}
    assert ("PodDisruptionBudget", "spiderpool-controller") not in one
    multus = render("--set", "multus.multusCNI.install=true")
    (ds,) = [d for d in multus if d["kind"] == "DaemonSet" and "multus" in d["metadata"]["name"]]
    args = [a for c in ds["spec"]["template"]["spec"]["containers"] for a in c.get("args", []) + c.get("command", [])]
    assert not any("cleanup-config-on-exit" in a for a in args), args


def test_older_feature_spelling_wins() -> None:
    docs = render("--set", "feature.enableIPv6=false", "--set", "ipam.enableIPv6=true")
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "spiderpool-conf"]
    parsed = conf.parse(cm["data"]["conf.yml"])
    assert (parsed.enable_ipv4, parsed.enable_ipv6) == (True, False)
    # (helm template does not render NOTES: tests/lab/test_demo.py reads them from the installed release)


def test_conf_yml_holds_only_keys_the_code_reads() -> None:
    docs = render(*PROFILES["walkthrough"])
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "spiderpool-conf"]
    parsed = conf.parse(cm["data"]["conf.yml"])
    assert parsed.unknown == ()
    assert parsed.enable_ipv6 is False
    assert parsed.enable_ipv4 is True
    assert parsed.auto_pool_extra_ips == 1
    assert parsed.ipam_socket == "/var/run/spidernet/spiderpool.sock"


def _without_ca(doc: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(doc))
    out["metadata"] = {"name": out["metadata"]["name"]}
    for hook in out["webhooks"]:
        hook["clientConfig"].pop("caBundle", None)
    return out


def test_webhook_configurations_are_the_ones_the_controller_registers() -> None:
    docs = render()
    rendered = {d["kind"]: _without_ca(d) for d in docs if d["kind"].endswith("WebhookConfiguration")}
    mutating, validating = webhook.configurations(b"", service=("kube-system", "spiderpool-controller", 5722))
    assert rendered["MutatingWebhookConfiguration"] == _without_ca(mutating)
    assert rendered["ValidatingWebhookConfiguration"] == _without_ca(validating)


#: every alert switch, on (their defaults are on too: this also holds if a default changes)
ALL_ALERTS = [
    "--set",
    "spiderpoolAgent.prometheus.prometheusRule.enableWarningIPAMAllocationFailure=true",
    "--set",
    "spiderpoolAgent.prometheus.prometheusRule.enableWarningIPAMHighAllocationDurations=true",
    "--set",
    "spiderpoolController.prometheus.prometheusRule.ippoolUsage.enabled=true",
    "--set",
    "spiderpoolController.prometheus.prometheusRule.gcQuarantine.enabled=true",
    "--set",
    "spiderpoolController.prometheus.prometheusRule.enableWarningIPGCFailureCounts=true",
    "--set",
    "spiderpoolController.prometheus.prometheusRule.noLeader.enabled=true",
    "--set",
    "spiderpoolController.prometheus.prometheusRule.webhookCertExpiry.enabled=true",
]
#: alert -> the switch that turns it off
ALERT_SWITCHES = {
    "SpiderpoolIPAllocationFailures": "spiderpoolAgent.prometheus.prometheusRule.enableWarningIPAMAllocationFailure",
    "SpiderpoolIPAMHighAllocationDurations": (
        "spiderpoolAgent.prometheus.prometheusRule.enableWarningIPAMHighAllocationDurations"
    ),
    "SpiderpoolIPPoolAlmostFull": "spiderpoolController.prometheus.prometheusRule.ippoolUsage.enabled",
    "SpiderpoolGCQuarantinedIPs": "spiderpoolController.prometheus.prometheusRule.gcQuarantine.enabled",
    "SpiderpoolIPGCFailures": "spiderpoolController.prometheus.prometheusRule.enableWarningIPGCFailureCounts",
    "SpiderpoolControllerNoLeader": "spiderpoolController.prometheus.prometheusRule.noLeader.enabled",
    "SpiderpoolWebhookCertificateExpiring": "spiderpoolController.prometheus.prometheusRule.webhookCertExpiry.enabled",
}


def prometheus_rule(*flags: str) -> dict[str, Any] | None:
    rules = [d for d in render(*PROFILES["metrics"], *flags) if d["kind"] == "PrometheusRule"]
    return rules[0] if rules else None


def alerts(rule: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in (rule or {"spec": {"groups": []}})["spec"]["groups"] for r in g["rules"]}


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((helm.chart_path() / "files" / "grafana-dashboard.json").read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_every_dashboard_query_and_alert_names_a_metric_we_export() -> None:
    families = metric_names.exported()
    exprs = {f"alert {name}": r["expr"] for name, r in alerts(prometheus_rule(*ALL_ALERTS)).items()}
    exprs.update({f"dashboard query {i}": e for i, e in enumerate(dashboard_exprs())})
    found = {where: metric_names.problems(expr, families) for where, expr in exprs.items()}
    assert not any(found.values()), {where: (exprs[where], p) for where, p in found.items() if p}
    used = set().union(*(metric_names.names_in(e) for e in exprs.values()))
    assert len(used) >= 15, used


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("rate(spiderpool_ipam_allocation_counts[5m])", "a counter, use spiderpool_ipam_allocation_counts_total"),
        ("rate(spiderpool_ipam_allocation_duration_seconds[5m])", "a histogram, use"),
        ("sum(rate(spiderpool_ippool_total_ips[5m]))", "rate() over the gauge"),
        ("sum(rate(spiderpool_ipam_allocation_counts_total[5m])", "unclosed '('"),
        ("sum(spiderpool_controller_is_leader])", "unbalanced ']'"),
        ("spiderpool_invented_total", "spiderpool_invented_total is not exported"),
    ],
)
def test_the_expression_check_finds_what_it_is_for(expr: str, problem: str) -> None:
    found = metric_names.problems(expr, metric_names.exported())
    assert any(problem in p for p in found), found


def test_the_expression_check_reads_past_strings_functions_and_variables() -> None:
    expr = 'sum by (pool) (rate(spiderpool_ipam_allocation_counts_total{pool!="spiderpool_x"}[$__rate_interval]))'
    assert metric_names.names_in(expr) == {"spiderpool_ipam_allocation_counts_total"}
    assert metric_names.problems(expr, metric_names.exported()) == []
    assert metric_names.labels_kept(expr) == {"pool"}


def test_the_dashboard_shows_what_an_operator_asks_first() -> None:
    """Pools' usage, allocation rate and latency, failures by reason, GC by reason, the leader and
    the webhook's latency."""
    used = set().union(*(metric_names.names_in(e) for e in dashboard_exprs()))
    assert {
        "spiderpool_ippool_allocated_ips",
        "spiderpool_ippool_total_ips",
        "spiderpool_ipam_allocation_counts_total",
        "spiderpool_ipam_allocation_duration_seconds_bucket",
        "spiderpool_ipam_allocation_failure_counts_total",
        "spiderpool_controller_gc_released_ips_total",
        "spiderpool_controller_gc_quarantined_ips_total",
        "spiderpool_controller_is_leader",
        "spiderpool_controller_admission_duration_seconds_bucket",
    } <= used
    docs = render(*PROFILES["metrics"])
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "spiderpool-grafana-dashboard"]
    assert json.loads(cm["data"]["spiderpool.json"]) == json.loads(
        (helm.chart_path() / "files" / "grafana-dashboard.json").read_text()
    )


def test_each_alert_has_its_switch_and_none_leaves_an_empty_group() -> None:
    assert set(alerts(prometheus_rule())) == set(ALERT_SWITCHES), "the defaults turn every alert on"
    for name, switch in ALERT_SWITCHES.items():
        assert set(alerts(prometheus_rule(*ALL_ALERTS, "--set", f"{switch}=false"))) == set(ALERT_SWITCHES) - {name}
    every_switch_off = [f for switch in ALERT_SWITCHES.values() for f in ("--set", f"{switch}=false")]
    assert prometheus_rule(*every_switch_off) is None


def test_alert_thresholds_come_from_the_values() -> None:
    rule = alerts(
        prometheus_rule(
            "--set",
            "spiderpoolController.prometheus.prometheusRule.ippoolUsage.percent=80",
            "--set",
            "spiderpoolController.prometheus.prometheusRule.ippoolUsage.for=10m",
            "--set",
            "spiderpoolController.prometheus.prometheusRule.webhookCertExpiry.days=30",
            "--set",
            "spiderpoolController.prometheus.prometheusRule.noLeader.for=1m",
        )
    )
    assert rule["SpiderpoolIPPoolAlmostFull"]["expr"].endswith("> 80")
    assert rule["SpiderpoolIPPoolAlmostFull"]["for"] == "10m"
    assert "< 30 * 86400" in rule["SpiderpoolWebhookCertificateExpiring"]["expr"]
    assert rule["SpiderpoolControllerNoLeader"]["for"] == "1m"
    assert "absent(" in rule["SpiderpoolControllerNoLeader"]["expr"]


def test_the_alert_rules_are_well_formed() -> None:
    """Beyond ``promtool check rules``: each rule's expression names exported metrics, it has a
    valid ``for``, a severity and a summary, and its annotations use only labels its expression
    keeps."""
    rule = prometheus_rule(*ALL_ALERTS)
    assert rule is not None
    families = metric_names.exported()
    for group in rule["spec"]["groups"]:
        assert group["name"], group
        assert group["rules"], group
        for r in group["rules"]:
            where = r["alert"]
            assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", where), where
            assert set(r) <= {"alert", "expr", "for", "labels", "annotations"}, r
            found = metric_names.problems(r["expr"], families)
            assert not found, (where, found)
            if "for" in r:
                assert re.fullmatch(r"([0-9]+(ms|s|m|h|d|w|y))+", str(r["for"])), (where, r["for"])
            assert r["labels"]["severity"] in ("info", "warning", "critical"), where
            assert r["annotations"]["summary"], where
            assert r["annotations"]["description"], where
            kept = metric_names.labels_kept(r["expr"])
            for text in r["annotations"].values():
                for ref in re.findall(r"\{\{(.*?)\}\}", text):
                    assert re.fullmatch(r"\s*\$(value|labels\.\w+)(\s*\|\s*(humanize|humanizeDuration))?\s*", ref), ref
                    for label in re.findall(r"\$labels\.(\w+)", ref):
                        assert kept is None or label in kept, f"{where}: $labels.{label} is not kept by {r['expr']}"


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(build.binary("promtool")), *args], capture_output=True, text=True, timeout=120)


def test_promtool_passes_the_rules_and_their_expressions_pick_what_is_meant(tmp_path: Path) -> None:
    """Prometheus' own checker (the lab builds it from its module): ``promtool check rules`` passes,
    and in promtool's rule tests the alerts' expressions select a pool at 95 % (not one at 50 %), no
    leader only when no replica leads, and a certificate with 10 days left (not 100, not unloaded)."""
    rule = prometheus_rule(*ALL_ALERTS)
    assert rule is not None
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule["spec"]))
    out = _promtool("check", "rules", str(tmp_path / "rules.yaml"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(alerts(rule))} rules found" in out.stdout, out.stdout
    expr = {name: r["expr"] for name, r in alerts(rule).items()}
    series = {
        'spiderpool_ippool_allocated_ips{pool="full", version="4"}': "95x15",
        'spiderpool_ippool_total_ips{pool="full", version="4"}': "100x15",
        'spiderpool_ippool_allocated_ips{pool="half", version="4"}': "50x15",
        'spiderpool_ippool_total_ips{pool="half", version="4"}': "100x15",
        'spiderpool_controller_webhook_cert_expiry_timestamp_seconds{instance="a"}': f"{10 * 86400}x15",
        'spiderpool_controller_webhook_cert_expiry_timestamp_seconds{instance="b"}': f"{100 * 86400}x15",
        'spiderpool_controller_webhook_cert_expiry_timestamp_seconds{instance="c"}': "0x15",
    }

    def case(leader: str, checks: list[tuple[str, list[dict[str, Any]]]]) -> dict[str, Any]:
        inputs = {**series, 'spiderpool_controller_is_leader{instance="a"}': "0x15"}
        inputs['spiderpool_controller_is_leader{instance="b"}'] = f"{leader}x15"
        return {
            "interval": "1m",
            "input_series": [{"series": k, "values": v} for k, v in inputs.items()],
            "promql_expr_test": [{"expr": e, "eval_time": "10m", "exp_samples": want} for e, want in checks],
        }

    tests = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            case(
                "0",
                [
                    (expr["SpiderpoolIPPoolAlmostFull"], [{"labels": '{pool="full", version="4"}', "value": 95}]),
                    (expr["SpiderpoolControllerNoLeader"], [{"labels": "{}", "value": 1}]),
                    # (10 days at t=0, evaluated 10 minutes later)
                    (expr["SpiderpoolWebhookCertificateExpiring"], [{"labels": '{instance="a"}', "value": 863400}]),
                ],
            ),
            case("1", [(expr["SpiderpoolControllerNoLeader"], [])]),
        ],
    }
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests))
    out = _promtool("test", "rules", str(tmp_path / "tests.yaml"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout, out.stdout


def test_init_job_arguments_parse() -> None:
    from spiderpool.controller import init

    docs = render(*PROFILES["dual-stack"])
    (job,) = [d for d in docs if d["kind"] == "Job" and d["metadata"]["name"] == "spiderpool-init"]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    args = init.parse_args(command[1:])
    assert args.coordinator["tunePodRoutes"] is True
    assert args.coordinator["hijackCIDR"] == []
    assert [s["name"] for s in args.subnet] == ["default-v4-subnet", "default-v6-subnet"]
    assert [p["name"] for p in args.ippool] == ["default-v4-ippool", "default-v6-ippool"]
    assert args.ippool[1]["ips"] == ["fd00:18::40:10-fd00:18::40:100"]
    assert args.ippool[1]["default"] is True


def test_certmanager_profile_reads_its_certificate() -> None:
    docs = render(*PROFILES["certmanager"])
    kinds = {d["kind"] for d in docs}
    assert {"Certificate", "Issuer"} <= kinds
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    assert "--tls-method=certmanager" in dep["spec"]["template"]["spec"]["containers"][0]["command"]
    for d in docs:
        if d["kind"].endswith("WebhookConfiguration"):
            assert d["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == (
                "kube-system/spiderpool-controller-server-certs"
            )
    (role,) = [d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == "spiderpool-controller"]
    secret_rules = [r for r in role["rules"] if "secrets" in r["resources"]]
    assert secret_rules == [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": ["spiderpool-controller-server-certs"],
            "verbs": ["get"],
        }
    ]


def test_multus_profile_renders_multus_and_its_crd() -> None:
    docs = render(*PROFILES["multus"])
    found = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {
        ("DaemonSet", "kube-multus-ds"),
        ("ServiceAccount", "spiderpool-multus"),
        ("CustomResourceDefinition", "network-attachment-definitions.k8s.cni.cncf.io"),
    } <= found
    (crd,) = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert ("DaemonSet", "kube-multus-ds") not in {(d["kind"], d["metadata"]["name"]) for d in render()}
