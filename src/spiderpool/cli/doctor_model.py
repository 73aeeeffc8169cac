"""`kubectl spiderpool doctor`'s vocabulary: a ``Check`` and how it is printed, what is known of the
install (``Install``, ``Facts``: what ``doctor_facts`` reads), and the small readings of objects the
judges share. Pure."""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Obj = Mapping[str, Any]

OK, WARN, FAIL = "OK", "WARN", "FAIL"
#: where the chart is installed unless found elsewhere
DEFAULT_NAMESPACE = "kube-system"
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


#: a container's waiting reasons that mean its image cannot be had
PULL_FAILURES = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"})


def unpullable_image(pods: Sequence[Obj]) -> str | None:
    """The image a pod here cannot pull, if any (what its container status names)."""
    for pod in pods:
        status = pod.get("status") or {}
        for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in PULL_FAILURES:
                return str(cs.get("image") or "")
    return None


def pull_fix(image: str) -> str:
    """What to do when the nodes cannot pull the product's image."""
    return (
        f"the nodes cannot pull {image}: build and push the image (make image-push REGISTRY=<host>/<org>),"
        " then point the chart at it: helm upgrade spiderpool <chart> -n <namespace> --reuse-values"
        " --set global.imageRegistryOverride=<host>/<org> (docs/install.md, Troubleshooting)"
    )


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
