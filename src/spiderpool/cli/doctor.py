"""`kubectl spiderpool doctor`: the install judged from what was read of it. Pure: the facts (objects
read from the API, the answers of the dry-run probes and of each agent's ``/v1/debug/status``) in,
one ``Check`` per line out: OK, WARN or FAIL, what was checked, what was found, and for a problem
the fix. ``doctor_facts`` reads the facts."""

from __future__ import annotations

import datetime
from collections.abc import Sequence

from spiderpool.api.constants import CONTROLLER_SELECTOR
from spiderpool.cli.doctor_agents import (
    agent_expected,
    judge_agent,
    judge_agents,
    judge_coordinators,
    judge_nads,
    judge_plugins,
)
from spiderpool.cli.doctor_model import (
    AGENT_PORT,
    FAIL,
    OK,
    PROBE_HIJACK_DEFAULTED,
    WARN,
    AgentAnswer,
    Check,
    Facts,
    Install,
    Obj,
    ProbeResult,
    _meta,
    _name,
    _parse_time,
    age,
    agent_port,
    failed,
    flag,
    locate,
    pod_problem,
    pod_ready,
    pull_fix,
    render_checks,
    unpullable_image,
)
from spiderpool.cli.doctor_webhooks import (
    judge_certificate,
    judge_probe,
    judge_webhook_configs,
    judge_webhook_services,
    probe_objects,
)

#: what callers and tests use from here; the judges live in doctor_model, doctor_webhooks and doctor_agents
__all__ = [
    "AGENT_PORT",
    "FAIL",
    "OK",
    "PROBE_HIJACK_DEFAULTED",
    "WARN",
    "AgentAnswer",
    "Check",
    "Facts",
    "Install",
    "ProbeResult",
    "age",
    "agent_expected",
    "agent_port",
    "failed",
    "flag",
    "judge",
    "judge_agent",
    "judge_agents",
    "judge_certificate",
    "judge_controller",
    "judge_coordinators",
    "judge_install",
    "judge_leader",
    "judge_nads",
    "judge_plugins",
    "judge_probe",
    "judge_webhook_configs",
    "judge_webhook_services",
    "locate",
    "probe_objects",
    "render_checks",
]


# ------------------------------------------------------------------ controller
def judge_install(install: Install) -> list[Check]:
    if install.controller is None and install.agent is None:
        return []  # (the controller and agents checks say it)
    what = ", ".join(
        f"{kind} {name}"
        for kind, name, obj in (
            ("Deployment", install.controller_name, install.controller),
            ("DaemonSet", install.agent_name, install.agent),
        )
        if obj is not None
    )
    version = f"spiderpool {install.version}" if install.version else "spiderpool"
    detail = f"{version} in namespace {install.namespace} ({what})"
    if install.others:
        return [
            Check(
                WARN,
                "install",
                f"{detail}; spiderpool is also installed in {', '.join(install.others)}",
                f"two installs fight over the same nodes' plugins; check the other one with"
                f" --spiderpool-namespace {install.others[0]}, and uninstall one",
            )
        ]
    return [Check(OK, "install", detail)]


def _pods_line(pods: Sequence[Obj], limit: int = 3) -> str:
    bad = [p for p in pods if not pod_ready(p)]
    return "; ".join(f"{_name(p)}: {pod_problem(p)}" for p in bad[:limit])


def judge_controller(install: Install, pods: Sequence[Obj]) -> Check:
    ns, name = install.namespace, install.controller_name
    if install.controller is None:
        return Check(
            FAIL,
            "controller",
            f"no spiderpool-controller Deployment in namespace {ns} (labels {CONTROLLER_SELECTOR})",
            "install spiderpool (helm install spiderpool spiderpool/spiderpool -n kube-system, see docs/helm.md),"
            " or name its namespace with --spiderpool-namespace",
        )
    desired = int(((install.controller.get("spec") or {}).get("replicas")) or 1)
    live = [p for p in pods if not _meta(p).get("deletionTimestamp")]
    ready = sum(1 for p in live if pod_ready(p))
    fix = f"kubectl -n {ns} describe pod -l {install.controller_selector}; kubectl -n {ns} logs deploy/{name}"
    image = unpullable_image(live)
    if image is not None:
        fix = pull_fix(image)
    if ready == 0:
        why = _pods_line(live) or "no pod exists"
        return Check(
            FAIL,
            "controller",
            f"Deployment {ns}/{name}: no replica Ready of {desired} ({why}): no webhook answers and no leader works",
            fix,
        )
    if ready < desired:
        return Check(
            WARN, "controller", f"Deployment {ns}/{name}: {ready} of {desired} replicas Ready ({_pods_line(live)})", fix
        )
    return Check(OK, "controller", f"Deployment {ns}/{name}: {ready}/{desired} replicas Ready")


def judge_leader(install: Install, lease: Obj | None, pods: Sequence[Obj], now: datetime.datetime) -> Check:
    ns, name = install.lease_namespace, install.lease_name
    where = f"Lease {ns}/{name}"
    logs = f"kubectl -n {install.namespace} logs deploy/{install.controller_name}"
    if lease is None:
        return Check(
            FAIL,
            "leader",
            f"no {where}: no controller replica has ever led, so pool status, auto-pools and IP GC are not done",
            f"{logs} (is a replica running, and may it write Leases?)",
        )
    spec = lease.get("spec") or {}
    holder = str(spec.get("holderIdentity") or "")
    if not holder:
        return Check(
            FAIL,
            "leader",
            f"nobody holds {where}: the last leader let it go and no replica took over",
            f"{logs}; kubectl -n {install.namespace} get pods -l {install.controller_selector}",
        )
    duration = float(spec.get("leaseDurationSeconds") or 15)
    renewed = _parse_time(spec.get("renewTime") or spec.get("acquireTime"))
    pod_name = holder.rsplit("_", 1)[0]  # (the controller's identity is <pod>_<random>)
    pod = next((p for p in pods if _name(p) == pod_name), None)
    elapsed = (now - renewed).total_seconds() if renewed else None
    if elapsed is None or elapsed > duration:
        when = f"last renewed {age(elapsed)} ago" if elapsed is not None else "never renewed"
        return Check(
            FAIL,
            "leader",
            f"{where} is held by {pod_name} but {when} (leaseDurationSeconds {duration:g}): the leader is hung"
            " or cut off from the apiserver, and no standby has taken over",
            f"kubectl -n {install.namespace} logs {pod_name}; kubectl -n {install.namespace} delete pod {pod_name}",
        )
    if pod is None:
        return Check(
            FAIL,
            "leader",
            f"{where} is held by {holder}, which is no pod of Deployment {install.namespace}/{install.controller_name}",
            f"another controller may run outside this install: kubectl -n {ns} get lease {name} -o yaml; {logs}",
        )
    if _meta(pod).get("deletionTimestamp") or (pod.get("status") or {}).get("phase") != "Running":
        return Check(
            FAIL,
            "leader",
            f"{where} is held by {pod_name}, which is not running ({pod_problem(pod)})",
            f"kubectl -n {install.namespace} describe pod {pod_name}; {logs}",
        )
    return Check(OK, "leader", f"{pod_name} leads ({where} renewed {age(elapsed)} ago)")


# ------------------------------------------------------------------ all of it
def judge(facts: Facts) -> list[Check]:
    install = facts.install
    unreadable = facts.unreadable
    checks = [
        Check(WARN, f"read {what}", f"cannot read {what}: {error}; its checks are skipped", "kubectl auth can-i --list")
        for what, error in sorted(unreadable.items())
        if what != "secret"
    ]
    checks += judge_install(install)
    controller_known = not {"deployments", "controller pods"} & set(unreadable)
    if controller_known:
        checks.append(judge_controller(install, facts.controller_pods))
    if controller_known and "lease" not in unreadable:
        checks.append(judge_leader(install, facts.lease, facts.controller_pods, facts.now))
    configs = [*facts.mutating, *facts.validating]
    if "webhook configurations" not in unreadable:
        checks += judge_webhook_configs(install, facts.mutating, facts.validating)
        service_checks = (
            [] if "services" in unreadable else judge_webhook_services(install, configs, facts.services, facts.slices)
        )
        checks += service_checks
        cert = judge_certificate(install, facts.secret, configs, facts.now, unreadable.get("secret", ""))
        # (what a probe's failure is likely due to: the first words of a failed path or certificate check)
        causes = [c.detail.split(": ", 1)[0] for c in [*service_checks, cert] if c.status == FAIL]
        for mode in ("mutating", "validating"):
            if mode in facts.probes:
                checks.append(judge_probe(mode, facts.probes[mode], install, causes[0] if causes else ""))
        checks.append(cert)
    if not {"daemonsets", "agent pods"} & set(unreadable):
        checks += judge_agents(install, facts.nodes, facts.agent_pods, facts.agents, facts.agent_timeout)
    if "pools" not in unreadable and "nads" not in unreadable:
        checks += judge_nads(facts.nads, facts.pools)
    if "coordinators" not in unreadable:
        checks += judge_coordinators(install, facts.coordinators)
    return checks
