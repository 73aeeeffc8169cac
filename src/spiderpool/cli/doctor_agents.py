"""`kubectl spiderpool doctor`: the agents judged (one per node that should run one, each answering
for its socket and plugins), the NetworkAttachmentDefinitions' pools and the SpiderCoordinator. Pure."""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from spiderpool.api.constants import AGENT_SELECTOR
from spiderpool.cli.doctor_model import (
    AGENT_STATUS_PATH,
    AGENT_TIMEOUT,
    DAEMON_TOLERATIONS,
    FAIL,
    OK,
    RECENT_REINSTALL,
    WARN,
    AgentAnswer,
    Check,
    Install,
    Obj,
    _meta,
    _name,
    _pod_spec,
    age,
    agent_port,
    node_ready,
    pod_problem,
    pod_ready,
    pull_fix,
    unpullable_image,
)
from spiderpool.ipam.selection import pool_family


# ------------------------------------------------------------------ agents
def _tolerates(tolerations: Iterable[Obj], taint: Obj) -> bool:
    for t in tolerations:
        if t.get("effect") and t.get("effect") != taint.get("effect"):
            continue
        if t.get("operator") == "Exists":
            if not t.get("key") or t.get("key") == taint.get("key"):
                return True
        elif t.get("key") == taint.get("key") and (t.get("value") or "") == (taint.get("value") or ""):
            return True
    return False


def _expression_holds(labels: Obj, expr: Obj) -> bool:
    key, op, values = str(expr.get("key")), expr.get("operator"), [str(v) for v in expr.get("values") or []]
    if op == "In":
        return key in labels and str(labels[key]) in values
    if op == "NotIn":
        return key not in labels or str(labels[key]) not in values
    if op == "Exists":
        return key in labels
    if op == "DoesNotExist":
        return key not in labels
    return True  # (Gt/Lt: not judged here)


def agent_expected(node: Obj, daemonset: Obj) -> bool:
    """Whether the DaemonSet places an agent on the node: a Linux node its nodeSelector and node
    affinity select, whose NoSchedule/NoExecute taints the pods tolerate."""
    labels = _meta(node).get("labels") or {}
    if labels.get("kubernetes.io/os", "linux") != "linux":
        return False
    spec = _pod_spec(daemonset)
    if any(labels.get(k) != v for k, v in (spec.get("nodeSelector") or {}).items()):
        return False
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    terms = required.get("nodeSelectorTerms") or []
    if terms and not any(all(_expression_holds(labels, e) for e in t.get("matchExpressions") or []) for t in terms):
        return False
    tolerations = [*(spec.get("tolerations") or []), *DAEMON_TOLERATIONS]
    taints = (node.get("spec") or {}).get("taints") or []
    return all(_tolerates(tolerations, t) for t in taints if t.get("effect") in ("NoSchedule", "NoExecute"))


def _agent_pod_per_node(pods: Sequence[Obj]) -> dict[str, Obj]:
    """The agent pod of each node (a live one before a terminating one)."""
    out: dict[str, Obj] = {}
    for pod in sorted(pods, key=lambda p: (bool(_meta(p).get("deletionTimestamp")), _name(p)), reverse=True):
        node = (pod.get("spec") or {}).get("nodeName")
        if node:
            out[str(node)] = pod
    return out


def judge_agent(
    install: Install, node: str, node_obj: Obj | None, pod: Obj | None, answer: AgentAnswer | None, timeout: float
) -> Check:
    ns = install.namespace
    check = f"agent {node}"
    down = "" if node_obj is None or node_ready(node_obj) else f"node {node} is NotReady; "
    if pod is None:
        return Check(
            FAIL,
            check,
            f"{down}no {install.agent_name} pod on this node: pods here get no IP from spiderpool",
            f"kubectl -n {ns} describe daemonset {install.agent_name} (its events); kubectl describe node {node}"
            " (taints, labels)",
        )
    name = _name(pod)
    look = f"kubectl -n {ns} logs {name}; kubectl -n {ns} describe pod {name}"
    port = agent_port(pod)
    problems = []
    if not pod_ready(pod):
        problems.append(f"pod {name} is not Ready ({pod_problem(pod)})")
        image = unpullable_image([pod])
        if image is not None:
            look = pull_fix(image)
    if answer is not None and answer.timed_out:
        problems.append(
            f"{'it' if problems else f'pod {name}'} did not answer GET {AGENT_STATUS_PATH} (port {port}, through"
            f" the apiserver) within {timeout:g}s: the agent is stopped or hung"
        )
        look += f"; kubectl -n {ns} delete pod {name} (the DaemonSet starts a new one)"
    elif answer is not None and answer.error and not answer.old and answer.code != 403:
        problems.append(f"GET {AGENT_STATUS_PATH} on port {port} failed: {answer.error}")
    status = answer.status if answer is not None else None
    if status is not None:
        if not status.get("ready"):
            problems.append("it is starting: its caches are not synced yet")
        sock = status.get("socket") or {}
        if not sock.get("answers"):
            problems.append(
                f"its socket {sock.get('path')} does not answer ({sock.get('error')}): every CNI ADD and DEL on"
                f" {node} fails"
            )
    if problems:
        return Check(FAIL, check, down + "; ".join(problems), look)
    if answer is not None and answer.code == 403:
        return Check(
            WARN,
            check,
            f"pod {name} is Ready, but you may not ask it through the apiserver ({answer.error}): its socket and"
            " plugins are not checked",
            f"kubectl auth can-i get pods/proxy -n {ns}",
        )
    if answer is not None and answer.old:
        return Check(
            WARN,
            check,
            f"pod {name} is Ready, but serves no {AGENT_STATUS_PATH} (an older version): its socket and plugins"
            " are not checked",
            f"upgrade spiderpool; kubectl -n {ns} get pod {name} -o jsonpath='{{.spec.containers[0].image}}'",
        )
    if status is None:
        return Check(OK, check, f"pod {name} Ready (not asked: no pod IP)")
    return Check(
        OK,
        check,
        f"pod {name} Ready, version {status.get('version')}, socket {(status.get('socket') or {}).get('path')} answers",
    )


def judge_plugins(install: Install, node: str, pod_name: str, status: Obj) -> Check:
    ns = install.namespace
    check = f"plugins {node}"
    bin_dir = status.get("cniBinDir") or "the CNI bin dir"
    version = status.get("version")
    plugins = [p for p in status.get("plugins") or [] if isinstance(p, dict)]
    history = status.get("pluginReinstalls") or {}
    interval = float(status.get("pluginCheckInterval") or 10)
    missing = [str(p["name"]) for p in plugins if not p.get("present")]
    missing += [str(m) for m in status.get("missing") or [] if str(m) not in missing and "/" in str(m)]
    restart = f"kubectl -n {ns} delete pod {pod_name} (the new agent installs them at start)"
    if missing:
        error = history.get("lastError")
        could_not = f"; the agent could not put them back: {error}" if error else ""
        return Check(
            FAIL,
            check,
            f"{', '.join(missing)} missing from {bin_dir} on {node}: every ADD and DEL there that uses"
            f" {'it' if len(missing) == 1 else 'them'} fails{could_not}",
            f"the agent puts them back within {interval:g}s; if they stay missing: kubectl -n {ns} logs"
            f" {pod_name}; {restart}",
        )
    wrong = []
    for p in plugins:
        if p.get("problem"):
            wrong.append(f"{p['name']}: {p['problem']}")
        elif p.get("version") is None:
            wrong.append(f"{p['name']} has no version stamp (not installed by spiderpool-agent)")
        elif p.get("version") != version:
            wrong.append(f"{p['name']} is version {p['version']}, the agent {version}")
    if wrong:
        return Check(
            FAIL,
            check,
            f"{'; '.join(wrong)} (in {bin_dir} on {node})",
            f"{restart}; if they change again, another installer writes {bin_dir}: find it",
        )
    ago = history.get("secondsAgo")
    if history.get("count") and ago is not None and float(ago) <= RECENT_REINSTALL:
        gone = [str(m) for m in history.get("lastMissing") or []]
        times = int(history["count"])
        return Check(
            WARN,
            check,
            f"{', '.join(gone) or 'plugins'} went missing from {bin_dir} on {node} and"
            f" {'was' if len(gone) == 1 else 'were'} put back by the agent {age(float(ago))} ago"
            f" ({times} time{'s' if times != 1 else ''} since it started); ADDs and DELs there failed meanwhile",
            f"something deletes files from {bin_dir} on {node} (a node clean-up, an image reset, another CNI"
            " installer): find it",
        )
    forms = sorted({str(p.get("form")) for p in plugins})
    names = ", ".join(str(p.get("name")) for p in plugins)
    return Check(OK, check, f"{names} in {bin_dir}, version {version} ({'/'.join(forms)})")


def judge_agents(
    install: Install,
    nodes: Sequence[Obj],
    pods: Sequence[Obj],
    answers: Mapping[str, AgentAnswer],
    timeout: float = AGENT_TIMEOUT,
) -> list[Check]:
    ns = install.namespace
    if install.agent is None:
        return [
            Check(
                FAIL,
                "agents",
                f"no spiderpool-agent DaemonSet in namespace {ns} (labels {AGENT_SELECTOR}): no node allocates IPs",
                "install spiderpool (helm install spiderpool spiderpool/spiderpool -n kube-system, see docs/helm.md),"
                " or name its namespace with --spiderpool-namespace",
            )
        ]
    ds = install.agent
    by_node = _agent_pod_per_node(pods)
    node_objs = {_name(n): n for n in nodes}
    expected = {_name(n) for n in nodes if agent_expected(n, ds)}
    checks: list[Check] = []
    versions: dict[str, list[str]] = {}
    for node in sorted(expected | set(by_node)):
        pod = by_node.get(node)
        answer = answers.get(_name(pod)) if pod is not None else None
        checks.append(judge_agent(install, node, node_objs.get(node), pod, answer, timeout))
        if pod is not None and answer is not None and answer.status is not None:
            checks.append(judge_plugins(install, node, _name(pod), answer.status))
            versions.setdefault(str(answer.status.get("version")), []).append(node)
    status = ds.get("status") or {}
    desired, ready = int(status.get("desiredNumberScheduled") or 0), int(status.get("numberReady") or 0)
    summary = f"DaemonSet {ns}/{install.agent_name}: {ready}/{desired} Ready"
    if len(versions) > 1:
        spread = "; ".join(f"{v} on {', '.join(n)}" for v, n in sorted(versions.items()))
        checks.insert(
            0,
            Check(
                WARN,
                "agents",
                f"{summary}; the agents run different versions ({spread})",
                f"a rollout in progress? kubectl -n {ns} rollout status daemonset/{install.agent_name}",
            ),
        )
    elif not expected and not by_node:
        checks.insert(0, Check(WARN, "agents", f"{summary}: no node to run an agent on", "kubectl get nodes"))
    elif ready < desired:
        checks.insert(
            0,
            Check(
                WARN,
                "agents",
                f"{summary}: see the agent lines",
                f"kubectl -n {ns} get pods -l {install.agent_selector} -o wide",
            ),
        )
    else:
        checks.insert(0, Check(OK, "agents", summary))
    return checks


# ------------------------------------------------------------------ NADs, coordinators
def spiderpool_ipams(nad: Obj) -> list[Obj] | str:
    """The ``ipam`` sections of type spiderpool in a NetworkAttachmentDefinition's config, or why it
    cannot be read (only when it mentions spiderpool at all)."""
    text = str((nad.get("spec") or {}).get("config") or "")
    try:
        conf = json.loads(text or "{}")
    except ValueError as exc:
        return f"its spec.config is not JSON ({exc})" if "spiderpool" in text else []
    if not isinstance(conf, dict):
        return []
    listed = conf.get("plugins")
    plugins: list[Any] = listed if isinstance(listed, list) else [conf]
    return [
        p["ipam"]
        for p in plugins
        if isinstance(p, dict) and isinstance(p.get("ipam"), dict) and p["ipam"].get("type") == "spiderpool"
    ]


def judge_nads(nads: Sequence[Obj] | None, pools: Sequence[Obj]) -> list[Check]:
    if nads is None:
        return [Check(OK, "nads", "Multus is not installed (no NetworkAttachmentDefinition API): nothing to check")]
    by_name = {_name(p): p for p in pools}
    checks = []
    users = 0
    for nad in sorted(nads, key=lambda n: (str(_meta(n).get("namespace")), _name(n))):
        ns, name = str(_meta(nad).get("namespace")), _name(nad)
        check = f"nad {ns}/{name}"
        edit = f"kubectl -n {ns} edit network-attachment-definitions {name}"
        ipams = spiderpool_ipams(nad)
        if isinstance(ipams, str):
            checks.append(Check(FAIL, check, ipams, edit))
            continue
        if not ipams:
            continue
        users += 1
        problems: list[str] = []
        warnings: list[str] = []
        for ipam in ipams:
            for family, key in ((4, "default_ipv4_ippool"), (6, "default_ipv6_ippool")):
                names = ipam.get(key) or []
                if not isinstance(names, list):
                    problems.append(f"ipam.{key} is not a list")
                    continue
                for pool_name in map(str, names):
                    if any(ch in pool_name for ch in "*?["):
                        if not any(
                            fnmatch.fnmatchcase(n, pool_name) and pool_family(p) == family for n, p in by_name.items()
                        ):
                            problems.append(f"ipam.{key} pattern {pool_name!r} matches no IPv{family} SpiderIPPool")
                        continue
                    pool = by_name.get(pool_name)
                    if pool is None:
                        problems.append(f"ipam.{key} names SpiderIPPool {pool_name}, which does not exist")
                    elif pool_family(pool) != family:
                        problems.append(f"ipam.{key} names SpiderIPPool {pool_name}, an IPv{pool_family(pool)} pool")
                    elif _meta(pool).get("deletionTimestamp"):
                        warnings.append(f"ipam.{key} names SpiderIPPool {pool_name}, which is being deleted")
        if problems:
            checks.append(
                Check(
                    FAIL,
                    check,
                    "; ".join(problems) + ": pods on this network fail their ADD unless an annotation names pools",
                    f"create the pool, or name an existing one: {edit}",
                )
            )
        elif warnings:
            checks.append(Check(WARN, check, "; ".join(warnings), f"name another pool: {edit}"))
    if not any(c.status == FAIL or c.status == WARN for c in checks):
        if users == 1:
            detail = "1 NetworkAttachmentDefinition uses spiderpool IPAM; every pool it names exists"
        elif users:
            detail = f"{users} NetworkAttachmentDefinitions use spiderpool IPAM; every pool they name exists"
        else:
            detail = "no NetworkAttachmentDefinition uses spiderpool IPAM"
        checks.insert(0, Check(OK, "nads", detail))
    return checks


def judge_coordinators(install: Install, coordinators: Sequence[Obj]) -> list[Check]:
    checks = []
    if not any(_name(c) == "default" for c in coordinators):
        checks.append(
            Check(
                WARN,
                "coordinator default",
                "no SpiderCoordinator default: the veth/coordinator plugin runs on its built-in defaults",
                f"the chart's spiderpool-init Job creates it: helm upgrade re-runs it (kubectl -n {install.namespace}"
                " logs job/spiderpool-init)",
            )
        )
    for c in sorted(coordinators, key=_name):
        name = _name(c)
        check = f"coordinator {name}"
        status = c.get("status") or {}
        phase = status.get("phase")
        unused = "" if name == "default" else " (only default is used by the agents)"
        if phase == "Synced":
            spec = c.get("spec") or {}
            cidrs = ", ".join(map(str, status.get("serviceCIDR") or [])) or "none"
            checks.append(Check(OK, check, f"Synced (mode {spec.get('mode') or 'auto'}, serviceCIDR {cidrs})"))
        elif phase:
            checks.append(
                Check(
                    FAIL if name == "default" else WARN,
                    check,
                    f"{phase}: {status.get('reason') or 'no reason given'}{unused}; pods whose network chains the"
                    " veth/coordinator plugin fail their ADD until it is Synced",
                    f"see the reason; kubectl get spidercoordinator {name} -o yaml",
                )
            )
        else:
            checks.append(
                Check(
                    FAIL if name == "default" else WARN,
                    check,
                    f"no status yet{unused}: spiderpool-controller's leader writes it",
                    "see the controller and leader checks",
                )
            )
    return checks
