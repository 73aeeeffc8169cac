"""`kubectl spiderpool doctor`'s judging (pure: objects in, checks out), and what the agent reports
of its plugins (their version stamps, read back from a bin dir)."""

from __future__ import annotations

import base64
import datetime
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from spiderpool import __version__
from spiderpool.agent.install import MODULE_DIR, RELAY, RELAY_VERSION_FILE, inspect_plugins, install_plugins
from spiderpool.agent.selfcheck import PluginHistory
from spiderpool.cli import doctor
from spiderpool.cli.doctor import FAIL, OK, WARN, AgentAnswer, Check, Facts, Install, ProbeResult
from spiderpool.cni.plugins import PLUGINS
from spiderpool.controller import certs

NOW = datetime.datetime.now(datetime.UTC)
NS = "kube-system"
CONTROLLER_ARGS = [
    "spiderpool-controller",
    "--config=/etc/spiderpool/conf.yml",
    "--identity=$(POD_NAME)",
    "--lease-name=spiderpool-controller",
    "--webhook-service=spiderpool-controller",
    "--webhook-secret=spiderpool-controller-server-certs",
    "--tls-method=auto",
]


def workload(kind: str, name: str, component: str, command: list[str], ns: str = NS, **spec: Any) -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/instance": "spiderpool"}
    return {
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": {
                **labels,
                "app.kubernetes.io/part-of": "spiderpool",
                "app.kubernetes.io/component": component,
                "app.kubernetes.io/version": "0.1.0",
            },
        },
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {"spec": {"containers": [{"name": component, "command": command}], **spec}},
        },
    }


CONTROLLER = workload("Deployment", "spiderpool-controller", "controller", CONTROLLER_ARGS)
CONTROLLER["spec"]["replicas"] = 2
AGENT = workload(
    "DaemonSet",
    "spiderpool-agent",
    "agent",
    ["spiderpool-agent", "--metrics-port=5711"],
    tolerations=[{"operator": "Exists"}],
)
AGENT["status"] = {"desiredNumberScheduled": 2, "numberReady": 2}
INSTALL = Install(NS, CONTROLLER, AGENT)


def pod(name: str, node: str, *, ready: bool = True, **status: Any) -> dict[str, Any]:
    st: dict[str, Any] = {
        "phase": "Running",
        "podIP": "172.18.0.2",
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        **status,
    }
    return {
        "metadata": {"name": name, "namespace": NS},
        "spec": {"nodeName": node, "containers": [{"name": "c", "command": ["x", "--metrics-port=5711"]}]},
        "status": st,
    }


def node(name: str, **meta: Any) -> dict[str, Any]:
    spec = meta.pop("spec", {})
    return {
        "metadata": {"name": name, "labels": {"kubernetes.io/os": "linux"}, **meta},
        "spec": spec,
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }


def lease(holder: str, renewed: datetime.datetime, duration: int = 15) -> dict[str, Any]:
    return {
        "metadata": {"name": "spiderpool-controller", "namespace": NS},
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": duration,
            "renewTime": renewed.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        },
    }


def serving(days: float = 365) -> certs.ServingCert:
    return certs.generate(dns=["spiderpool-controller.kube-system.svc"], ips=[], validity=datetime.timedelta(days=days))


def webhook_config(ca_pem: bytes | None, *, service: str = "spiderpool-controller") -> dict[str, Any]:
    hooks = []
    for kind in ("spiderippool", "spidersubnet", "spidercoordinator"):
        conf: dict[str, Any] = {"service": {"namespace": NS, "name": service, "port": 5722, "path": f"/x-{kind}"}}
        if ca_pem is not None:
            conf["caBundle"] = base64.b64encode(ca_pem).decode()
        hooks.append({"name": f"{kind}.spiderpool.spidernet.io", "clientConfig": conf})
    return {"metadata": {"name": "spiderpool-controller"}, "webhooks": hooks}


def secret(cert: certs.ServingCert) -> dict[str, Any]:
    return {
        "metadata": {"name": "spiderpool-controller-server-certs"},
        "data": {"tls.crt": base64.b64encode(cert.cert_pem).decode()},
    }


def agent_status(name: str, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "node": name,
        "version": __version__,
        "ready": True,
        "socket": {"path": "/var/run/spidernet/spiderpool.sock", "answers": True, "error": None},
        "cniBinDir": "/opt/cni/bin",
        "pluginCheckInterval": 10.0,
        "plugins": [
            {"name": n, "present": True, "form": "relay", "version": __version__, "problem": None} for n in PLUGINS
        ],
        "missing": [],
        "pluginReinstalls": PluginHistory().as_dict(),
    }
    out.update(extra)
    return out


def nad(ns: str, name: str, config: Any) -> dict[str, Any]:
    text = config if isinstance(config, str) else json.dumps(config)
    return {"metadata": {"namespace": ns, "name": name}, "spec": {"config": text}}


def ippool(name: str, family: int = 4, **meta: Any) -> dict[str, Any]:
    subnet = "172.18.0.0/16" if family == 4 else "fd00::/64"
    return {"metadata": {"name": name, **meta}, "spec": {"ipVersion": family, "subnet": subnet}}


def good_facts() -> Facts:
    """A healthy two-node install, as the reads would find it."""
    cert = serving()
    config = webhook_config(cert.ca_pem)
    svc = {"metadata": {"name": "spiderpool-controller"}, "spec": {"ports": [{"port": 5722}]}}
    slices: list[dict[str, Any]] = [{"endpoints": [{"addresses": ["172.18.0.2"], "conditions": {"ready": True}}]}]
    probes = doctor.probe_objects("x")
    mutated = json.loads(json.dumps(probes["mutating"]))
    mutated["spec"]["hijackCIDR"] = [doctor.PROBE_HIJACK_DEFAULTED]
    denied = 'admission webhook "spiderippool.spiderpool.spidernet.io" denied the request: spec.gateway: ...'
    return Facts(
        install=INSTALL,
        now=NOW,
        nodes=[node("node1"), node("node2")],
        controller_pods=[pod("spiderpool-controller-a", "node1"), pod("spiderpool-controller-b", "node2")],
        agent_pods=[pod("spiderpool-agent-1", "node1"), pod("spiderpool-agent-2", "node2")],
        lease=lease("spiderpool-controller-a_0a1b2c3d", NOW - datetime.timedelta(seconds=2)),
        mutating=[config],
        validating=[config],
        services={(NS, "spiderpool-controller"): svc},
        slices={(NS, "spiderpool-controller"): slices},
        secret=secret(cert),
        probes={"mutating": ProbeResult(obj=mutated), "validating": ProbeResult(code=422, message=denied)},
        agents={
            "spiderpool-agent-1": AgentAnswer(status=agent_status("node1")),
            "spiderpool-agent-2": AgentAnswer(status=agent_status("node2")),
        },
        nads=[
            nad(
                "default",
                "macvlan",
                {"plugins": [{"type": "macvlan", "ipam": {"type": "spiderpool", "default_ipv4_ippool": ["v4"]}}]},
            )
        ],
        pools=[ippool("v4")],
        coordinators=[
            {
                "metadata": {"name": "default"},
                "spec": {"mode": "auto"},
                "status": {"phase": "Synced", "serviceCIDR": ["10.96.0.0/12"]},
            }
        ],
    )


def by_check(checks: list[Check]) -> dict[str, Check]:
    return {c.check: c for c in checks}


def test_a_good_install_is_green() -> None:
    checks = doctor.judge(good_facts())
    assert [c for c in checks if c.status != OK] == []
    names = [c.check for c in checks]
    assert names == [
        "install", "controller", "leader", "webhooks", "webhooks", "webhook service", "webhook mutating",
        "webhook validating", "certificate", "agents", "agent node1", "plugins node1", "agent node2",
        "plugins node2", "nads", "coordinator default",
    ]  # fmt: skip
    assert not doctor.failed(checks)
    text = doctor.render_checks(checks)
    assert text.splitlines()[-1] == "16 OK, 0 WARN, 0 FAIL"
    assert "OK   leader: spiderpool-controller-a leads" in text


def test_locate_prefers_kube_system_and_names_other_installs() -> None:
    other = workload("Deployment", "spiderpool-controller", "controller", CONTROLLER_ARGS, ns="aaa")
    found = doctor.locate([other, CONTROLLER], [AGENT])
    assert (found.namespace, found.controller, found.agent, found.others) == (NS, CONTROLLER, AGENT, ("aaa",))
    assert found.lease_name == "spiderpool-controller"
    assert found.secret_name == "spiderpool-controller-server-certs"
    assert (
        found.controller_selector
        == "app.kubernetes.io/instance=spiderpool,app.kubernetes.io/name=spiderpool-controller"
    )
    (check,) = doctor.judge_install(found)
    assert check.status == WARN
    assert "also installed in aaa" in check.detail
    only_other = doctor.locate([other], [])
    assert only_other.namespace == "aaa"
    assert doctor.locate([other], [], "ns1").controller is None
    assert doctor.flag({"spec": {"containers": [{"args": ["--metrics-port", "6000"]}]}}, "metrics-port") == "6000"
    assert doctor.agent_port(pod("a", "n")) == 5711


def test_an_image_the_nodes_cannot_pull_is_named_with_the_fix() -> None:
    image = "registry.example:5000/wrong/spiderpool-python:0.1.0"
    waiting = {"reason": "ImagePullBackOff", "message": f'Back-off pulling image "{image}"'}
    statuses = [{"name": "c", "image": image, "state": {"waiting": waiting}}]
    controller = doctor.judge_controller(
        INSTALL, [pod("spiderpool-controller-a", "node1", ready=False, containerStatuses=statuses)]
    )
    agent = doctor.judge_agent(
        INSTALL,
        "node1",
        node("node1"),
        pod("spiderpool-agent-1", "node1", ready=False, containerStatuses=statuses),
        None,
        5,
    )
    for check in (controller, agent):
        assert check.status == FAIL
        assert f'ImagePullBackOff: Back-off pulling image "{image}"' in check.detail
        assert check.fix.startswith(f"the nodes cannot pull {image}: build and push the image (make image-push")
        assert "--set global.imageRegistryOverride=<host>/<org>" in check.fix


def test_controller_and_leader_failures_say_which_pod_and_why() -> None:
    crashing = pod(
        "spiderpool-controller-a",
        "node1",
        ready=False,
        containerStatuses=[
            {"name": "controller", "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 5m"}}}
        ],
    )
    check = doctor.judge_controller(INSTALL, [crashing])
    assert check.status == FAIL
    assert "spiderpool-controller-a: container controller waiting, CrashLoopBackOff: back-off 5m" in check.detail
    assert "kubectl -n kube-system logs deploy/spiderpool-controller" in check.fix
    ready = pod("spiderpool-controller-a", "node1")
    assert doctor.judge_controller(INSTALL, [ready, crashing]).status == WARN
    assert doctor.judge_controller(Install(NS), []).status == FAIL

    fresh = lease("spiderpool-controller-a_0a1b", NOW - datetime.timedelta(seconds=3))
    assert doctor.judge_leader(INSTALL, fresh, [ready], NOW).status == OK
    stale = lease("spiderpool-controller-a_0a1b", NOW - datetime.timedelta(seconds=60))
    check = doctor.judge_leader(INSTALL, stale, [ready], NOW)
    assert check.status == FAIL
    assert "held by spiderpool-controller-a but last renewed 60s ago (leaseDurationSeconds 15)" in check.detail
    check = doctor.judge_leader(INSTALL, fresh, [], NOW)
    assert (check.status, "which is no pod of Deployment kube-system/spiderpool-controller" in check.detail) == (
        FAIL,
        True,
    )
    check = doctor.judge_leader(INSTALL, None, [ready], NOW)
    assert check.status == FAIL
    assert check.detail.startswith("no Lease kube-system/spiderpool-controller")
    released = lease("", NOW)
    assert "nobody holds" in doctor.judge_leader(INSTALL, released, [ready], NOW).detail


def test_webhook_configurations_services_and_endpoints() -> None:
    cert = serving()
    assert [c.status for c in doctor.judge_webhook_configs(INSTALL, [], [webhook_config(cert.ca_pem)])] == [FAIL, OK]
    check, _ = doctor.judge_webhook_configs(INSTALL, [webhook_config(None)], [webhook_config(cert.ca_pem)])
    assert check.status == FAIL
    assert "no caBundle in spiderippool.spiderpool.spidernet.io" in check.detail
    assert "rollout restart deployment/spiderpool-controller" in check.fix
    unrelated = {"metadata": {"name": "other"}, "webhooks": [{"name": "x.example.com", "clientConfig": {}}]}
    assert doctor.judge_webhook_configs(INSTALL, [unrelated], [])[0].status == FAIL

    configs = [webhook_config(cert.ca_pem)]
    key = (NS, "spiderpool-controller")
    (missing,) = doctor.judge_webhook_services(INSTALL, configs, {key: None}, {})
    assert (missing.status, missing.check) == (FAIL, "webhook service")
    assert (
        "Service kube-system/spiderpool-controller, which the webhooks are called through, does not exist"
        in missing.detail
    )
    svc = {"metadata": {"name": "spiderpool-controller"}, "spec": {"ports": [{"port": 5722}]}}
    not_ready = [{"endpoints": [{"addresses": ["172.18.0.2"], "conditions": {"ready": False}}]}]
    (empty,) = doctor.judge_webhook_services(INSTALL, configs, {key: svc}, {key: not_ready})
    assert empty.status == FAIL
    assert empty.detail.startswith("Service kube-system/spiderpool-controller has no ready endpoints")
    assert "kubectl -n kube-system get pods -l app.kubernetes.io/instance=spiderpool" in empty.fix
    wrong_port = {"metadata": {"name": "spiderpool-controller"}, "spec": {"ports": [{"port": 443}]}}
    (check,) = doctor.judge_webhook_services(INSTALL, configs, {key: wrong_port}, {key: []})
    assert "has no port 5722 (it has 443)" in check.detail
    ready = [{"endpoints": [{"addresses": ["172.18.0.3"]}]}]  # (no conditions: ready)
    (ok,) = doctor.judge_webhook_services(INSTALL, configs, {key: svc}, {key: ready})
    assert (ok.status, ok.detail) == (
        OK,
        "Service kube-system/spiderpool-controller: ready endpoints 172.18.0.3 (port 5722)",
    )


def test_the_probes_tell_an_answering_webhook_from_one_the_apiserver_skipped() -> None:
    objects = doctor.probe_objects("abc")
    assert objects["mutating"]["metadata"]["name"] == "spiderpool-doctor-probe-abc"
    unchanged = ProbeResult(obj=objects["mutating"])
    check = doctor.judge_probe(
        "mutating", unchanged, INSTALL, "Service kube-system/spiderpool-controller has no ready endpoints"
    )
    assert (check.status, check.check) == (FAIL, "webhook mutating")
    assert "came back unchanged" in check.detail
    assert "(Service kube-system/spiderpool-controller has no ready endpoints)" in check.detail
    accepted = ProbeResult(obj=objects["validating"])
    assert doctor.judge_probe("validating", accepted, INSTALL).status == FAIL
    schema = ProbeResult(code=422, message="spec.subnet: Invalid value")
    assert doctor.judge_probe("validating", schema, INSTALL).status == WARN
    failing = ProbeResult(
        code=500, message='Internal error occurred: failed calling webhook "x": context deadline exceeded'
    )
    check = doctor.judge_probe("validating", failing, INSTALL)
    assert (check.status, "context deadline exceeded" in check.detail) == (FAIL, True)
    forbidden = ProbeResult(code=403, message="forbidden")
    assert doctor.judge_probe("mutating", forbidden, INSTALL).status == WARN


def test_certificate_expiry_and_trust() -> None:
    good = serving(365)
    configs = [webhook_config(good.ca_pem)]
    check = doctor.judge_certificate(INSTALL, secret(good), configs, NOW)
    assert check.status == OK
    assert "(364 days)" in check.detail or "(365 days)" in check.detail
    soon = serving(10)
    check = doctor.judge_certificate(INSTALL, secret(soon), [webhook_config(soon.ca_pem)], NOW)
    assert check.status == WARN
    assert "in 10.0 days" in check.detail or "in 9.9 days" in check.detail
    check = doctor.judge_certificate(
        INSTALL, secret(soon), [webhook_config(soon.ca_pem)], NOW + datetime.timedelta(days=11)
    )
    assert check.status == FAIL
    assert "expired at" in check.detail
    # a certificate the configurations' CA did not sign
    check = doctor.judge_certificate(INSTALL, secret(good), [webhook_config(soon.ca_pem)], NOW)
    assert check.status == FAIL
    assert "does not hold the CA that signed" in check.detail
    check = doctor.judge_certificate(INSTALL, None, configs, NOW)
    assert check.status == FAIL
    assert check.detail.startswith("Secret kube-system/spiderpool-controller-server-certs does not exist")
    check = doctor.judge_certificate(INSTALL, None, configs, NOW, unreadable="403 Forbidden: no")
    assert check.status == WARN
    assert "the webhooks' CA is valid until" in check.detail


def test_agents_name_the_node_of_each_fault() -> None:
    nodes = [node("node1"), node("node2"), node("node3")]
    pods = [pod("agent-1", "node1"), pod("agent-2", "node2", ready=False)]
    answers = {"agent-1": AgentAnswer(status=agent_status("node1")), "agent-2": AgentAnswer(timed_out=True)}
    checks = by_check(doctor.judge_agents(INSTALL, nodes, pods, answers))
    assert checks["agent node1"].status == OK
    stopped = checks["agent node2"]
    assert stopped.status == FAIL
    assert "did not answer GET /v1/debug/status (port 5711, through the apiserver) within 3s" in stopped.detail
    assert "the agent is stopped or hung" in stopped.detail
    assert "kubectl -n kube-system logs agent-2" in stopped.fix
    assert "plugins node2" not in checks
    absent = checks["agent node3"]
    assert (absent.status, absent.detail.startswith("no spiderpool-agent pod on this node")) == (FAIL, True)
    half = Install(NS, CONTROLLER, {**AGENT, "status": {"desiredNumberScheduled": 2, "numberReady": 1}})
    summary = doctor.judge_agents(half, nodes, pods, answers)[0]
    assert (summary.check, summary.status) == ("agents", WARN)
    line = stopped.line()
    assert line.startswith("FAIL agent node2: pod agent-2 is not Ready")
    assert " — kubectl -n kube-system logs agent-2" in line


def test_nodes_the_daemonset_does_not_place_an_agent_on_are_not_judged() -> None:
    picky = workload("DaemonSet", "spiderpool-agent", "agent", [], nodeSelector={"role": "net"})
    tainted = node("t", spec={"taints": [{"key": "gpu", "value": "yes", "effect": "NoSchedule"}]})
    assert not doctor.agent_expected(tainted, picky)
    assert not doctor.agent_expected(node("w", labels={"kubernetes.io/os": "windows"}), AGENT)
    assert doctor.agent_expected(tainted, AGENT)  # (tolerates everything)
    cordoned = node(
        "c",
        spec={"unschedulable": True, "taints": [{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]},
    )
    assert doctor.agent_expected(cordoned, workload("DaemonSet", "a", "agent", []))
    assert doctor.agent_expected(node("n", labels={"kubernetes.io/os": "linux", "role": "net"}), picky)


def test_plugins_missing_put_back_or_of_another_version() -> None:
    def judged(**extra: Any) -> Check:
        return doctor.judge_plugins(INSTALL, "node2", "agent-2", agent_status("node2", **extra))

    plugins = agent_status("node2")["plugins"]
    gone = [dict(p, present=False, form="missing", version=None) if p["name"] == "veth" else p for p in plugins]
    check = judged(plugins=gone, missing=["veth"])
    assert (check.status, check.check) == (FAIL, "plugins node2")
    assert check.detail.startswith("veth missing from /opt/cni/bin on node2")
    assert "kubectl -n kube-system delete pod agent-2" in check.fix

    history = PluginHistory()
    history.reinstalled(["spiderpool", ".spiderpool/socket"])
    check = judged(pluginReinstalls=history.as_dict())
    assert check.status == WARN
    assert (
        "spiderpool, .spiderpool/socket went missing from /opt/cni/bin on node2 and were put back by the agent"
        in check.detail
    )
    assert "(1 time since it started)" in check.detail
    old = history.as_dict(now=time.monotonic() + 2 * 86400)
    assert judged(pluginReinstalls=old).status == OK

    older = [dict(p, version="0.0.9") if p["name"] == "coordinator" else p for p in plugins]
    check = judged(plugins=older)
    assert check.status == FAIL
    assert f"coordinator is version 0.0.9, the agent {__version__}" in check.detail
    foreign = [
        dict(p, form="other", version=None, problem="not a file spiderpool-agent wrote")
        if p["name"] == "spiderpool"
        else p
        for p in plugins
    ]
    assert "spiderpool: not a file spiderpool-agent wrote" in judged(plugins=foreign).detail

    broken = agent_status("node2", socket={"path": "/run/s.sock", "answers": False, "error": "ConnectionRefusedError"})
    check = doctor.judge_agent(INSTALL, "node2", node("node2"), pod("agent-2", "node2"), AgentAnswer(status=broken), 3)
    assert check.status == FAIL
    assert (
        "its socket /run/s.sock does not answer (ConnectionRefusedError): every CNI ADD and DEL on node2 fails"
        in check.detail
    )
    check = doctor.judge_agent(
        INSTALL, "node2", None, pod("agent-2", "node2"), AgentAnswer(error="404: Not Found", old=True), 3
    )
    assert check.status == WARN
    forbidden = AgentAnswer(error="403 Forbidden: pods/proxy", code=403)
    check = doctor.judge_agent(INSTALL, "node2", None, pod("agent-2", "node2"), forbidden, 3)
    assert (check.status, check.fix) == (WARN, "kubectl auth can-i get pods/proxy -n kube-system")


def test_agents_of_different_versions_are_a_warning() -> None:
    answers = {
        "agent-1": AgentAnswer(status=agent_status("node1")),
        "agent-2": AgentAnswer(status=agent_status("node2", version="0.0.9", plugins=[
            {"name": n, "present": True, "form": "script", "version": "0.0.9"} for n in PLUGINS
        ])),
    }  # fmt: skip
    checks = doctor.judge_agents(
        INSTALL, [node("node1"), node("node2")], [pod("agent-1", "node1"), pod("agent-2", "node2")], answers
    )
    assert checks[0].status == WARN
    assert f"0.0.9 on node2; {__version__} on node1" in checks[0].detail
    assert doctor.judge_agents(Install(NS), [], [], {})[0].status == FAIL


def test_nads_naming_pools_that_do_not_exist() -> None:
    assert doctor.judge_nads(None, [])[0].detail.startswith("Multus is not installed")
    nads = [
        nad("a", "missing", {"type": "macvlan", "ipam": {"type": "spiderpool", "default_ipv4_ippool": ["v4", "gone"]}}),
        nad(
            "a",
            "family",
            {"plugins": [{"type": "macvlan", "ipam": {"type": "spiderpool", "default_ipv4_ippool": ["v6"]}}]},
        ),
        nad("a", "pattern", {"type": "macvlan", "ipam": {"type": "spiderpool", "default_ipv6_ippool": ["v6*", "x*"]}}),
        nad("a", "deleting", {"type": "macvlan", "ipam": {"type": "spiderpool", "default_ipv4_ippool": ["old"]}}),
        nad("b", "broken", '{"type": "macvlan", "ipam": {"type": "spiderpool"'),
        nad("b", "host-local", {"type": "macvlan", "ipam": {"type": "host-local", "default_ipv4_ippool": ["gone"]}}),
        nad("b", "fine", {"type": "macvlan", "ipam": {"type": "spiderpool", "default_ipv4_ippool": ["v4"]}}),
    ]
    pools = [ippool("v4"), ippool("v6", 6), ippool("old")]
    pools[2]["metadata"]["deletionTimestamp"] = "2026-12-03T12:00:00Z"
    checks = by_check(doctor.judge_nads(nads, pools))
    assert "nads" not in checks  # (the summary line only when all is well)
    missing = checks["nad a/missing"]
    assert missing.status == FAIL
    assert "ipam.default_ipv4_ippool names SpiderIPPool gone, which does not exist" in missing.detail
    assert "kubectl -n a edit network-attachment-definitions missing" in missing.fix
    assert "names SpiderIPPool v6, an IPv6 pool" in checks["nad a/family"].detail
    assert "pattern 'x*' matches no IPv6 SpiderIPPool" in checks["nad a/pattern"].detail
    assert "'v6*'" not in checks["nad a/pattern"].detail
    assert checks["nad a/deleting"].status == WARN
    assert checks["nad b/broken"].detail.startswith("its spec.config is not JSON")
    assert "nad b/host-local" not in checks
    assert "nad b/fine" not in checks
    (ok,) = doctor.judge_nads([nads[-1]], pools)
    assert ok.detail == "1 NetworkAttachmentDefinition uses spiderpool IPAM; every pool it names exists"


def test_coordinator_phase() -> None:
    not_ready = {
        "metadata": {"name": "default"},
        "status": {"phase": "NotReady", "reason": "no Service CIDR: give spec.hijackCIDR"},
    }
    (check,) = doctor.judge_coordinators(INSTALL, [not_ready])
    assert (check.status, check.check) == (FAIL, "coordinator default")
    assert check.detail.startswith("NotReady: no Service CIDR: give spec.hijackCIDR")
    (check,) = doctor.judge_coordinators(INSTALL, [{"metadata": {"name": "default"}}])
    assert (check.status, check.detail.startswith("no status yet")) == (FAIL, True)
    absent, other = doctor.judge_coordinators(INSTALL, [{"metadata": {"name": "x"}, "status": {"phase": "NotReady"}}])
    assert (absent.status, other.status) == (WARN, WARN)


def test_unreadable_objects_are_warnings_and_their_checks_skipped() -> None:
    facts = good_facts()
    facts.unreadable = {"lease": "403 Forbidden: leases is forbidden", "secret": "403 Forbidden"}
    facts.secret = None
    checks = by_check(doctor.judge(facts))
    assert checks["read lease"].status == WARN
    assert "leader" not in checks
    assert checks["certificate"].status == WARN
    facts = good_facts()
    facts.unreadable = {"agent pods": "403 Forbidden", "services": "403 Forbidden"}
    checks = by_check(doctor.judge(facts))
    assert [c.check for c in checks.values() if c.status != OK] == ["read agent pods", "read services"]
    assert "agent node1" not in checks
    assert "webhook service" not in checks


def test_the_json_form_is_the_list_of_checks() -> None:
    check = Check(FAIL, "agent node2", "stopped", "restart it")
    assert check.as_dict() == {"status": "FAIL", "check": "agent node2", "detail": "stopped", "fix": "restart it"}
    assert Check(OK, "x", "fine", "").as_dict()["fix"] is None
    assert Check(OK, "x", "fine", "never shown").line() == "OK   x: fine"


# ------------------------------------------------------------------ what the agent reports of its plugins
def test_installed_scripts_carry_the_version_that_installed_them(tmp_path: Path) -> None:
    install_plugins(tmp_path, python="/usr/bin/python3", socket_path="/run/x.sock")
    found = {p.name: p for p in inspect_plugins(tmp_path)}
    assert set(found) == set(PLUGINS)
    assert all((p.present, p.form, p.version, p.problem) == (True, "script", __version__, "") for p in found.values())

    (tmp_path / "veth").unlink()
    (tmp_path / "coordinator").write_text("#!/bin/sh\nexec upstream-coordinator\n")
    os.chmod(tmp_path / "coordinator", 0o755)
    (tmp_path / MODULE_DIR / "spiderpool_ipam.py").unlink()
    found = {p.name: p for p in inspect_plugins(tmp_path)}
    assert (found["veth"].present, found["veth"].form) == (False, "missing")
    assert (found["coordinator"].form, found["coordinator"].version) == ("other", None)
    assert found["spiderpool"].problem == f"its module {MODULE_DIR}/spiderpool_ipam.py is gone"
    assert found["spiderpool"].as_dict()["version"] == __version__


def test_installed_relays_carry_the_version_that_installed_them(tmp_path: Path) -> None:
    relay = tmp_path / "relay-built"
    relay.write_text("#!/bin/sh\n")
    bin_dir = tmp_path / "bin"
    install_plugins(bin_dir, python="/x", socket_path="/run/x.sock", relay=relay)
    found = {p.name: p for p in inspect_plugins(bin_dir)}
    assert all((p.present, p.form, p.version) == (True, "relay", __version__) for p in found.values())
    assert all((bin_dir / name).resolve() == (bin_dir / MODULE_DIR / RELAY).resolve() for name in PLUGINS)
    (bin_dir / MODULE_DIR / RELAY_VERSION_FILE).write_text("0.0.9\n")
    assert {p.name: p.version for p in inspect_plugins(bin_dir)}["veth"] == "0.0.9"
    (bin_dir / MODULE_DIR / RELAY).unlink()
    found = {p.name: p for p in inspect_plugins(bin_dir)}
    assert found["spiderpool"].present is False
    assert found["spiderpool"].problem == f"the relay {MODULE_DIR}/{RELAY} is gone"


@pytest.mark.parametrize(("seconds", "text"), [(5, "5s"), (119, "119s"), (600, "10m"), (7300, "2h"), (3 * 86400, "3d")])
def test_ages_read_as_kubectl_prints_them(seconds: float, text: str) -> None:
    assert doctor.age(seconds) == text
