"""`kubectl spiderpool doctor`: the install judged from what was read of it. Pure: the facts (objects
read from the API, the answers of the dry-run probes and of each agent's ``/v1/debug/status``) in,
one ``Check`` per line out: OK, WARN or FAIL, what was checked, what was found, and for a problem
the fix. ``doctor_facts`` reads the facts."""

from __future__ import annotations

import base64
import binascii
import datetime
import fnmatch
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes

from spiderpool.api.constants import AGENT_SELECTOR, CONTROLLER_SELECTOR
from spiderpool.ipam.selection import pool_family

Obj = Mapping[str, Any]

OK, WARN, FAIL = "OK", "WARN", "FAIL"
#: where the chart is installed unless found elsewhere
DEFAULT_NAMESPACE = "kube-system"
#: the labels the chart gives its workloads
CONTROLLER_LABELS = CONTROLLER_SELECTOR
AGENT_LABELS = AGENT_SELECTOR
#: spiderpool's webhooks are named <kind>.spiderpool.spidernet.io
WEBHOOK_SUFFIX = ".spiderpool.spidernet.io"
#: the chart's Secret name (spiderpoolController.tls.secretName), and the controller's own default
CHART_SECRET = "spiderpool-controller-server-certs"
CONTROLLER_SECRET = "spiderpool-controller-webhook"
#: the certificate alert's threshold
CERT_WARN_DAYS = 14
#: the agent's metrics port (GET /v1/debug/status), unless its pod says otherwise
AGENT_PORT = 5711
AGENT_STATUS_PATH = "/v1/debug/status"
AGENT_TIMEOUT = 3.0
#: a plugin put back within this long ago is reported (WARN)
RECENT_REINSTALL = 24 * 3600.0
#: the probes: a dry-run create each, never stored
PROBE_PREFIX = "spiderpool-doctor-probe-"
PROBE_HIJACK = "169.254.0.1"
PROBE_HIJACK_DEFAULTED = "169.254.0.1/32"
WEBHOOK_DENIED = 'spiderpool.spidernet.io" denied the request'
#: the tolerations the DaemonSet controller adds to every daemon pod
DAEMON_TOLERATIONS: tuple[Obj, ...] = tuple(
    {"key": f"node.kubernetes.io/{key}", "operator": "Exists", "effect": effect}
    for key, effect in (
        ("not-ready", "NoExecute"),
        ("unreachable", "NoExecute"),
        ("disk-pressure", "NoSchedule"),
        ("memory-pressure", "NoSchedule"),
        ("pid-pressure", "NoSchedule"),
        ("unschedulable", "NoSchedule"),
        ("network-unavailable", "NoSchedule"),
    )
)


@dataclass(frozen=True)
class Check:
    status: str  # OK | WARN | FAIL
    check: str
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "check": self.check, "detail": self.detail, "fix": self.fix or None}

    def line(self) -> str:
        text = f"{self.status:<4} {self.check}: {self.detail}"
        return text + (f" — {self.fix}" if self.fix and self.status != OK else "")


def render_checks(checks: Sequence[Check]) -> str:
    """One line per check, then the counts."""
    counts = {s: sum(1 for c in checks if c.status == s) for s in (OK, WARN, FAIL)}
    summary = f"{counts[OK]} OK, {counts[WARN]} WARN, {counts[FAIL]} FAIL"
    return "\n".join([*(c.line() for c in checks), "", summary])


def failed(checks: Iterable[Check]) -> bool:
    return any(c.status == FAIL for c in checks)


# ------------------------------------------------------------------ objects
def _meta(obj: Obj) -> Obj:
    return obj.get("metadata") or {}


def _name(obj: Obj) -> str:
    return str(_meta(obj).get("name", ""))


def _pod_spec(obj: Obj) -> Obj:
    """A pod's spec, or the pod template's of a Deployment or DaemonSet."""
    spec = obj.get("spec") or {}
    if "template" in spec:
        return (spec.get("template") or {}).get("spec") or {}
    return spec


def flag(obj: Obj | None, name: str) -> str | None:
    """The value of ``--name`` in the first container's command and args (``--name=v`` or ``--name v``)."""
    if obj is None:
        return None
    containers = _pod_spec(obj).get("containers") or []
    if not containers:
        return None
    words = [str(w) for w in (containers[0].get("command") or []) + (containers[0].get("args") or [])]
    for i, word in enumerate(words):
        if word.startswith(f"--{name}="):
            return word.split("=", 1)[1]
        if word == f"--{name}" and i + 1 < len(words):
            return words[i + 1]
    return None


def selector_of(obj: Obj | None) -> str:
    """A workload's ``spec.selector.matchLabels`` as a label selector."""
    labels = (((obj or {}).get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def pod_ready(pod: Obj) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def pod_problem(pod: Obj) -> str:
    """Why a pod is not Ready, as ``kubectl describe`` would show it."""
    if _meta(pod).get("deletionTimestamp"):
        return "terminating"
    status = pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    for cs in status.get("containerStatuses") or []:
        state = cs.get("state") or {}
        if "waiting" in state:
            waiting = state["waiting"] or {}
            message = f": {waiting['message']}" if waiting.get("message") else ""
            return f"container {cs.get('name')} waiting, {waiting.get('reason') or 'no reason'}{message}"
        if "terminated" in state:
            done = state["terminated"] or {}
            return f"container {cs.get('name')} terminated ({done.get('reason')}, exit code {done.get('exitCode')})"
        if not cs.get("ready"):
            return f"container {cs.get('name')} running but not ready (its readiness probe fails)"
    for cond in status.get("conditions") or []:
        if cond.get("status") == "False" and cond.get("reason"):
            return f"{phase}: {cond['reason']}" + (f": {cond['message']}" if cond.get("message") else "")
    return f"{phase}, not Ready"


def node_ready(node: Obj) -> bool:
    conditions = (node.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _parse_time(text: Any) -> datetime.datetime | None:
    if not text:
        return None
    try:
        t = datetime.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=datetime.UTC)


def age(seconds: float) -> str:
    """As kubectl prints ages: 42s, 5m, 3h, 2d."""
    s = max(0, int(seconds))
    if s < 120:
        return f"{s}s"
    if s < 2 * 3600:
        return f"{s // 60}m"
    if s < 2 * 86400:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


# ------------------------------------------------------------------ the install
@dataclass(frozen=True)
class Install:
    """Where spiderpool runs: its controller Deployment and agent DaemonSet, found by the chart's labels."""

    namespace: str
    controller: Obj | None = None
    agent: Obj | None = None
    #: other namespaces spiderpool was found in
    others: tuple[str, ...] = ()

    @property
    def controller_name(self) -> str:
        return _name(self.controller) if self.controller else "spiderpool-controller"

    @property
    def agent_name(self) -> str:
        return _name(self.agent) if self.agent else "spiderpool-agent"

    @property
    def lease_namespace(self) -> str:
        return flag(self.controller, "namespace") or self.namespace

    @property
    def lease_name(self) -> str:
        return flag(self.controller, "lease-name") or "spiderpool-controller"

    @property
    def secret_name(self) -> str:
        if self.controller is None:
            return CHART_SECRET
        return flag(self.controller, "webhook-secret") or CONTROLLER_SECRET

    @property
    def tls_method(self) -> str:
        return flag(self.controller, "tls-method") or "auto"

    @property
    def controller_selector(self) -> str:
        return selector_of(self.controller) or f"app.kubernetes.io/name={self.controller_name}"

    @property
    def agent_selector(self) -> str:
        return selector_of(self.agent) or f"app.kubernetes.io/name={self.agent_name}"

    @property
    def version(self) -> str:
        for obj in (self.controller, self.agent):
            v = (_meta(obj).get("labels") or {}).get("app.kubernetes.io/version") if obj else None
            if v:
                return str(v)
        return ""


def locate(deployments: Sequence[Obj], daemonsets: Sequence[Obj], namespace: str | None = None) -> Install:
    """The install to check: in ``namespace`` if given, else where the chart's workloads are
    (kube-system first when there are several)."""
    found = sorted({str(_meta(o).get("namespace")) for o in [*deployments, *daemonsets]})
    if namespace:
        ns = namespace
    elif DEFAULT_NAMESPACE in found or not found:
        ns = DEFAULT_NAMESPACE
    else:
        ns = found[0]

    def first(objs: Sequence[Obj]) -> Obj | None:
        mine = sorted((o for o in objs if _meta(o).get("namespace") == ns), key=_name)
        return mine[0] if mine else None

    return Install(ns, first(deployments), first(daemonsets), tuple(n for n in found if n != ns))


def agent_port(pod: Obj) -> int:
    """The port an agent pod serves /metrics and /v1/debug/status on."""
    value = flag(pod, "metrics-port")
    if value and value.isdigit():
        return int(value)
    for c in _pod_spec(pod).get("containers") or []:
        for port in c.get("ports") or []:
            if port.get("name") == "metrics" and port.get("containerPort"):
                return int(port["containerPort"])
    return AGENT_PORT


# ------------------------------------------------------------------ facts
@dataclass
class ProbeResult:
    """A dry-run create through the apiserver: the object it would have stored, or its refusal."""

    obj: Obj | None = None
    code: int = 0
    message: str = ""


@dataclass
class AgentAnswer:
    """An agent's ``GET /v1/debug/status`` through the apiserver's pod proxy."""

    status: Obj | None = None
    error: str = ""
    #: the HTTP status of a refusal (403: the pod proxy is forbidden to the user)
    code: int = 0
    timed_out: bool = False
    #: the agent answered 404: a version without the endpoint
    old: bool = False


@dataclass
class Facts:
    install: Install
    now: datetime.datetime
    nodes: Sequence[Obj] = field(default_factory=list)
    controller_pods: Sequence[Obj] = field(default_factory=list)
    agent_pods: Sequence[Obj] = field(default_factory=list)
    lease: Obj | None = None
    mutating: Sequence[Obj] = field(default_factory=list)
    validating: Sequence[Obj] = field(default_factory=list)
    #: (namespace, name) of each Service the webhooks name -> the Service (None: not found)
    services: Mapping[tuple[str, str], Obj | None] = field(default_factory=dict)
    #: (namespace, name) of each such Service -> its EndpointSlices
    slices: Mapping[tuple[str, str], Sequence[Obj]] = field(default_factory=dict)
    secret: Obj | None = None
    #: "mutating" / "validating" -> the probe's result (absent: not sent)
    probes: Mapping[str, ProbeResult] = field(default_factory=dict)
    #: agent pod name -> its answer (absent: not asked, e.g. the pod has no IP)
    agents: Mapping[str, AgentAnswer] = field(default_factory=dict)
    #: None: the NetworkAttachmentDefinition API is not served (Multus not installed)
    nads: Sequence[Obj] | None = None
    pools: Sequence[Obj] = field(default_factory=list)
    coordinators: Sequence[Obj] = field(default_factory=list)
    #: what could not be read -> the apiserver's error (its checks are skipped)
    unreadable: dict[str, str] = field(default_factory=dict)
    agent_timeout: float = AGENT_TIMEOUT


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
            f"no spiderpool-controller Deployment in namespace {ns} (labels {CONTROLLER_LABELS})",
            "install spiderpool (helm install spiderpool spiderpool/spiderpool -n kube-system, see docs/helm.md),"
            " or name its namespace with --spiderpool-namespace",
        )
    desired = int(((install.controller.get("spec") or {}).get("replicas")) or 1)
    live = [p for p in pods if not _meta(p).get("deletionTimestamp")]
    ready = sum(1 for p in live if pod_ready(p))
    fix = f"kubectl -n {ns} describe pod -l {install.controller_selector}; kubectl -n {ns} logs deploy/{name}"
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


# ------------------------------------------------------------------ webhooks
def spiderpool_hooks(config: Obj) -> list[Obj]:
    return [h for h in config.get("webhooks") or [] if str(h.get("name", "")).endswith(WEBHOOK_SUFFIX)]


def webhook_services(configs: Iterable[Obj]) -> list[tuple[str, str, int]]:
    """(namespace, name, port) of every Service spiderpool's webhooks are called through."""
    out = set()
    for config in configs:
        for hook in spiderpool_hooks(config):
            svc = (hook.get("clientConfig") or {}).get("service")
            if svc:
                out.add((str(svc.get("namespace")), str(svc.get("name")), int(svc.get("port") or 443)))
    return sorted(out)


def ready_endpoints(slices: Iterable[Obj]) -> list[str]:
    """The addresses of ready endpoints (a missing ``ready`` condition means ready)."""
    out = []
    for s in slices:
        for ep in s.get("endpoints") or []:
            if (ep.get("conditions") or {}).get("ready", True) is not False:
                out += [str(a) for a in ep.get("addresses") or []]
    return sorted(set(out))


def _ca_fix(install: Install) -> str:
    ns, name = install.namespace, install.controller_name
    if install.tls_method == "certmanager":
        return f"cert-manager's cainjector writes it: kubectl -n {ns} describe certificate {install.secret_name}"
    if install.tls_method == "provided":
        return "the chart writes it from spiderpoolController.tls.provided.tlsCa: helm upgrade with it set"
    return f"the controller writes it at start and puts it back: kubectl -n {ns} rollout restart deployment/{name}"


def judge_webhook_configs(install: Install, mutating: Sequence[Obj], validating: Sequence[Obj]) -> list[Check]:
    checks = []
    for kind, configs in (("MutatingWebhookConfiguration", mutating), ("ValidatingWebhookConfiguration", validating)):
        ours = [c for c in configs if spiderpool_hooks(c)]
        if not ours:
            checks.append(
                Check(
                    FAIL,
                    "webhooks",
                    f"no {kind} calls spiderpool's webhooks: pools, subnets and coordinators are"
                    f" {'not defaulted' if kind.startswith('Mutating') else 'not checked against each other'}",
                    "the chart makes it (spiderpool-controller): helm upgrade --install it again"
                    " (or kubectl apply -f deploy/spiderpool.yaml)",
                )
            )
            continue
        for config in ours:
            hooks = spiderpool_hooks(config)
            no_ca = [str(h.get("name")) for h in hooks if not (h.get("clientConfig") or {}).get("caBundle")]
            if no_ca:
                checks.append(
                    Check(
                        FAIL,
                        "webhooks",
                        f"{kind} {_name(config)}: no caBundle in {', '.join(no_ca)}: the apiserver cannot"
                        " trust the controller, so every call fails and objects go in unchecked",
                        _ca_fix(install),
                    )
                )
            else:
                checks.append(
                    Check(OK, "webhooks", f"{kind} {_name(config)}: {len(hooks)} webhooks, each with a CA bundle")
                )
    return checks


def judge_webhook_services(
    install: Install,
    configs: Sequence[Obj],
    services: Mapping[tuple[str, str], Obj | None],
    slices: Mapping[tuple[str, str], Sequence[Obj]],
) -> list[Check]:
    checks = []
    ns = install.namespace
    pods = f"kubectl -n {ns} get pods -l {install.controller_selector}"
    for svc_ns, svc_name, port in webhook_services(configs):
        where = f"Service {svc_ns}/{svc_name}"
        svc = services.get((svc_ns, svc_name))
        if svc is None:
            checks.append(
                Check(
                    FAIL,
                    "webhook service",
                    f"{where}, which the webhooks are called through, does not exist",
                    "the chart makes it: helm upgrade --install spiderpool again",
                )
            )
            continue
        ports = [int(p.get("port") or 0) for p in (svc.get("spec") or {}).get("ports") or []]
        if port not in ports:
            checks.append(
                Check(
                    FAIL,
                    "webhook service",
                    f"{where} has no port {port} (it has {', '.join(map(str, ports)) or 'none'})",
                    f"kubectl -n {svc_ns} get svc {svc_name} -o yaml; helm upgrade --install spiderpool again",
                )
            )
            continue
        addresses = ready_endpoints(slices.get((svc_ns, svc_name)) or [])
        if not addresses:
            checks.append(
                Check(
                    FAIL,
                    "webhook service",
                    f"{where} has no ready endpoints: the apiserver cannot call the webhooks and lets every"
                    " pool, subnet and coordinator in unchecked (failurePolicy Ignore)",
                    f"{pods} (are the controller replicas Ready?); if they are, the Service's selector does not"
                    f" match them: kubectl -n {svc_ns} get svc {svc_name} -o yaml",
                )
            )
            continue
        checks.append(Check(OK, "webhook service", f"{where}: ready endpoints {', '.join(addresses)} (port {port})"))
    return checks


def probe_objects(suffix: str) -> dict[str, dict[str, Any]]:
    """The objects the probes create with dryRun=All: a SpiderCoordinator the mutating webhook turns
    an IP of ``hijackCIDR`` into a CIDR in, and a SpiderIPPool whose gateway is one of its IPs,
    which only the validating webhook refuses (the schema allows it)."""
    api = "spiderpool.spidernet.io/v2beta1"
    name = f"{PROBE_PREFIX}{suffix}"
    return {
        "mutating": {
            "apiVersion": api,
            "kind": "SpiderCoordinator",
            "metadata": {"name": name},
            "spec": {"hijackCIDR": [PROBE_HIJACK]},
        },
        "validating": {
            "apiVersion": api,
            "kind": "SpiderIPPool",
            "metadata": {"name": name},
            "spec": {
                "ipVersion": 4,
                "subnet": "198.51.100.0/30",
                "ips": ["198.51.100.1-198.51.100.2"],
                "gateway": "198.51.100.1",
            },
        },
    }


def judge_probe(mode: str, result: ProbeResult, install: Install, cause: str = "") -> Check:
    """``mode``: mutating or validating; ``cause``: what another check found wrong with the webhook's path."""
    check = f"webhook {mode}"
    ns = install.namespace
    fix = (
        f"kubectl -n {ns} get pods -l {install.controller_selector}; kubectl -n {ns} logs deploy/"
        f'{install.controller_name}; the apiserver\'s log says why ("failed calling webhook")'
    )
    because = f" ({cause})" if cause else ""
    if result.code == 403:
        return Check(WARN, check, f"cannot probe (a dry-run create is forbidden to you: {result.message})")
    if result.code and "failed calling webhook" in result.message:
        return Check(FAIL, check, f"the apiserver failed calling it: {result.message}", fix)
    if mode == "mutating":
        if result.obj is None:
            return Check(WARN, check, f"inconclusive: the dry-run SpiderCoordinator was refused: {result.message}")
        hijack = ((result.obj.get("spec") or {}).get("hijackCIDR")) or []
        if hijack == [PROBE_HIJACK_DEFAULTED]:
            return Check(OK, check, "answered (a dry-run SpiderCoordinator came back with its defaults)")
        return Check(
            FAIL,
            check,
            "a dry-run SpiderCoordinator came back unchanged: the apiserver could not call the mutating webhook"
            f" and let it through (failurePolicy Ignore){because}",
            fix,
        )
    if result.obj is not None:
        return Check(
            FAIL,
            check,
            "a dry-run SpiderIPPool whose gateway is one of its IPs was accepted: the apiserver could not call"
            f" the validating webhook and let it through (failurePolicy Ignore){because}",
            fix,
        )
    if WEBHOOK_DENIED in result.message:
        return Check(OK, check, "answered (it refused a dry-run SpiderIPPool whose gateway is one of its IPs)")
    return Check(WARN, check, f"inconclusive: the dry-run SpiderIPPool was refused by {result.code}: {result.message}")


# ------------------------------------------------------------------ certificate
def _certs(pem: bytes) -> list[x509.Certificate]:
    try:
        return list(x509.load_pem_x509_certificates(pem))
    except ValueError:
        return []


def _b64(text: Any) -> bytes:
    try:
        return base64.b64decode(str(text or ""), validate=False)
    except (binascii.Error, ValueError):
        return b""


def ca_bundle(configs: Iterable[Obj]) -> list[x509.Certificate]:
    """The CAs spiderpool's webhook configurations trust (distinct)."""
    seen: dict[bytes, x509.Certificate] = {}
    for config in configs:
        for hook in spiderpool_hooks(config):
            for cert in _certs(_b64((hook.get("clientConfig") or {}).get("caBundle"))):
                seen.setdefault(cert.fingerprint(hashes.SHA256()), cert)
    return list(seen.values())


def _issuer(leaf: x509.Certificate, cas: Sequence[x509.Certificate]) -> x509.Certificate | None:
    for ca in cas:
        try:
            leaf.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return ca
    return None


def _renew_fix(install: Install) -> str:
    ns, name = install.namespace, install.controller_name
    if install.tls_method == "certmanager":
        return f"cert-manager renews it: kubectl -n {ns} describe certificate {install.secret_name}"
    if install.tls_method == "provided":
        return "give a new certificate: helm upgrade with spiderpoolController.tls.provided.tlsCert/tlsKey/tlsCa"
    return (
        f"the controller renews it when a third of its life is left and has not: kubectl -n {ns} logs"
        f" deploy/{name} | grep certificate; a restart renews it: kubectl -n {ns} rollout restart deployment/{name}"
    )


def judge_certificate(
    install: Install,
    secret: Obj | None,
    configs: Sequence[Obj],
    now: datetime.datetime,
    unreadable: str = "",
) -> Check:
    """The webhook's serving certificate (``tls.crt`` of the Secret) and the CA that signed it, as
    the webhook configurations carry it. ``unreadable``: why the Secret could not be read."""
    where = f"Secret {install.namespace}/{install.secret_name}"
    cas = ca_bundle(configs)
    if unreadable:
        if not cas:
            return Check(WARN, "certificate", f"cannot read {where} ({unreadable}) and no CA bundle to judge instead")
        end = min(c.not_valid_after_utc for c in cas)
        left = (end - now).total_seconds()
        status = FAIL if left <= 0 else WARN
        return Check(
            status,
            "certificate",
            f"cannot read {where} ({unreadable}); the webhooks' CA {'expired' if left <= 0 else 'is valid until'}"
            f" {end:%Y-%m-%d %H:%M}Z",
            _renew_fix(install) if left <= 0 else "read access to the Secret lets doctor judge the certificate",
        )
    if secret is None:
        made_by = {
            "auto": f"the controller makes it at start: kubectl -n {install.namespace} logs"
            f" deploy/{install.controller_name}",
            "certmanager": f"cert-manager makes it: kubectl -n {install.namespace} describe certificate"
            f" {install.secret_name}",
        }.get(install.tls_method, "the chart makes it from spiderpoolController.tls.provided: helm upgrade")
        return Check(FAIL, "certificate", f"{where} does not exist: the webhook has no certificate to serve", made_by)
    leaves = _certs(_b64((secret.get("data") or {}).get("tls.crt")))
    if not leaves:
        return Check(FAIL, "certificate", f"tls.crt of {where} holds no PEM certificate", _renew_fix(install))
    leaf = leaves[0]
    issuer = _issuer(leaf, cas)
    if cas and issuer is None:
        return Check(
            FAIL,
            "certificate",
            f"the webhook configurations' CA bundle does not hold the CA that signed {where}'s certificate:"
            " the apiserver refuses the controller's TLS, so no webhook is called",
            _ca_fix(install),
        )
    end = leaf.not_valid_after_utc
    if issuer is not None:
        end = min(end, issuer.not_valid_after_utc)
    left = (end - now).total_seconds()
    if left <= 0:
        return Check(
            FAIL,
            "certificate",
            f"the webhook certificate ({where}) expired at {end:%Y-%m-%d %H:%M}Z: the apiserver cannot call"
            " the webhooks",
            _renew_fix(install),
        )
    days = left / 86400
    if days < CERT_WARN_DAYS:
        return Check(
            WARN,
            "certificate",
            f"the webhook certificate ({where}) expires {end:%Y-%m-%d %H:%M}Z, in {days:.1f} days",
            _renew_fix(install),
        )
    return Check(OK, "certificate", f"{where}: valid until {end:%Y-%m-%d} ({int(days)} days)")


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
                f"no spiderpool-agent DaemonSet in namespace {ns} (labels {AGENT_LABELS}): no node allocates IPs",
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
