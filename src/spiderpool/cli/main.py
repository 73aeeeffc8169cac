"""``kubectl spiderpool``: the admin's questions about addresses, answered from the cluster.

Installed as ``kubectl-spiderpool`` on PATH, so kubectl finds it as a plugin (as krew installs
them); it reads the user's kubeconfig and takes kubectl's ``--kubeconfig``, ``--context``, ``-n``
and ``-A``, before or after the command. Read-only unless a command says otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import ipaddress
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import yaml

from spiderpool import __version__
from spiderpool.api.conf import ConfError
from spiderpool.api.conf import parse as parse_conf
from spiderpool.api.constants import LABEL_RECORD_POD_UID
from spiderpool.cli import leaks_cmd, render
from spiderpool.cli.doctor import judge
from spiderpool.cli.doctor_facts import gather_facts
from spiderpool.cli.doctor_model import AGENT_TIMEOUT, failed, render_checks
from spiderpool.cli.usage import bar, pool_rows, subnet_rows
from spiderpool.cli.whohas import who_has
from spiderpool.cli.why import explain
from spiderpool.ipam.allocate import record_name
from spiderpool.ipam.autopool import APP_KINDS, App
from spiderpool.k8s import config
from spiderpool.k8s.client import ApiError, Client, RetryPolicy
from spiderpool.k8s.kinds import (
    CONFIGMAP,
    EVENT,
    IPALLOCATION,
    IPPOOL,
    JOB,
    NAD,
    NAMESPACE,
    NODE,
    POD,
    REPLICASET,
    RESERVEDIP,
    SUBNET,
)

PROG = "kubectl spiderpool"
COMMANDS = ("why", "who-has", "pools", "subnets", "leaks", "doctor", "completion", "version")
#: where the chart puts spiderpool's ConfigMap (its clusterNetwork names the pods' eth0 network)
SPIDERPOOL_NAMESPACE = "kube-system"
SPIDERPOOL_CONFIG = "spiderpool-conf"
HINT = "run 'kubectl spiderpool why {namespace}/{pod}'"


class UsageError(Exception):
    """Bad arguments or configuration: the message says what to change."""


def _common(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # (on a subcommand the defaults are SUPPRESS, so an option given before the command survives)
    d: Any = None if top else argparse.SUPPRESS
    parser.add_argument("--kubeconfig", default=d, help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)")
    parser.add_argument("--context", default=d, help="the kubeconfig context to use")
    parser.add_argument("-n", "--namespace", default=d, help="the namespace (default: the context's)")
    parser.add_argument("-A", "--all-namespaces", action="store_true", default=False if top else d)
    parser.add_argument("-o", "--output", choices=render.FORMATS, default="table" if top else d)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(top, top=True)
    sub = top.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in (
        ("pools", "every SpiderIPPool: usage, free, quarantined, its application, warnings"),
        ("subnets", "every SpiderSubnet: how much its pools took, warnings"),
    ):
        _common(sub.add_parser(name, help=help_text, description=help_text), top=False)
    why = sub.add_parser(
        "why",
        help="why a pod got its IP, or did not get one",
        description="per NIC: the pool sources in precedence order, each pool's verdict, the IP taken",
    )
    why.add_argument("pod", metavar="[NAMESPACE/]POD")
    _common(why, top=False)
    who = sub.add_parser("who-has", help="who holds an address, or why nobody can", description="who holds IP")
    who.add_argument("ip", metavar="IP")
    _common(who, top=False)
    _leaks_parser(sub)
    _doctor_parser(sub)
    comp = sub.add_parser("completion", help="print a shell completion script (bash or zsh)")
    comp.add_argument("shell", choices=("bash", "zsh"))
    sub.add_parser("version", help="print the plugin's version")
    return top


def _kubeconfig(path: str | None) -> str | None:
    """kubectl's order: --kubeconfig, $KUBECONFIG, ~/.kube/config; none of them: the pod's account."""
    if path:
        return path
    if os.environ.get("KUBECONFIG"):
        return os.environ["KUBECONFIG"].split(os.pathsep)[0]
    home = Path.home() / ".kube" / "config"
    return str(home) if home.exists() else None


def _context_namespace(path: str | None, context: str | None) -> str:
    if not path:
        return "default"
    try:
        doc = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return "default"
    name = context or doc.get("current-context")
    for entry in doc.get("contexts") or []:
        if entry.get("name") == name:
            return str((entry.get("context") or {}).get("namespace") or "default")
    return "default"


class Session:
    """The parsed options and one API client for the command."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        path = _kubeconfig(args.kubeconfig)
        try:
            creds = config.load(path, context=args.context) if path else config.in_cluster()
        except config.ConfigError as exc:
            raise UsageError(str(exc)) from None
        self.client = Client(creds, field_manager="kubectl-spiderpool", timeout=30, retry=RetryPolicy(attempts=3))
        self.namespace: str = args.namespace or _context_namespace(path, args.context)
        self.output: str = args.output
        #: the exit status (a command that finds something, like a linter, sets 1)
        self.status = 0

    async def close(self) -> None:
        await self.client.close()


async def _pools(s: Session) -> str:
    pools, _ = await s.client.list(IPPOOL)
    records, _ = await s.client.list(IPALLOCATION)
    rows = pool_rows(pools, records, datetime.datetime.now(datetime.UTC))
    if s.output in ("json", "yaml"):
        return render.structured([r.as_dict() for r in rows], s.output)
    headers = ["NAME", "VERSION", "SUBNET", "USAGE", "FREE", "QUARANTINED", "APPLICATION", "DESIRED", "WARNINGS"]
    wide = s.output == "wide"
    if wide:
        headers[-1:-1] = ["NODES", "DEFAULT", "DISABLED"]
    out = []
    for r in rows:
        cells: list[Any] = [r.name, r.version, r.subnet, bar(r.used, r.total), r.free, r.quarantined]
        cells += [r.application, r.desired]
        if wide:
            cells += [r.nodes, str(r.default).lower(), str(r.disabled).lower()]
        out.append([*cells, "; ".join(r.warnings)])
    return render.table(headers, out) if out else "No SpiderIPPools found."


async def _subnets(s: Session) -> str:
    subnets, _ = await s.client.list(SUBNET)
    pools, _ = await s.client.list(IPPOOL)
    rows = subnet_rows(subnets, pools)
    if s.output in ("json", "yaml"):
        return render.structured([r.as_dict() for r in rows], s.output)
    headers = ["NAME", "VERSION", "SUBNET", "IN POOLS", "FREE", "POOLS", "WARNINGS"]
    out = [
        [
            r.name,
            r.version,
            r.subnet,
            bar(r.in_pools, r.total),
            r.free,
            r.pools,
            "; ".join(r.warnings),
        ]
        for r in rows
    ]
    return render.table(headers, out) if out else "No SpiderSubnets found."


async def _get_or_none(s: Session, coro: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any] | None:
    try:
        return await coro
    except ApiError as exc:
        if exc.code == 404:
            return None
        raise


async def _who_has(s: Session) -> str:
    try:
        ip = str(ipaddress.ip_address(s.args.ip))
    except ValueError:
        raise UsageError(f"{s.args.ip!r} is not an IP address: give one, e.g. 172.18.30.135") from None
    record, (pools, _), (subnets, _), (reserved, _) = await asyncio.gather(
        _get_or_none(s, s.client.get(IPALLOCATION, record_name(ip))),
        s.client.list(IPPOOL),
        s.client.list(SUBNET),
        s.client.list(RESERVEDIP),
    )
    uid = None
    if record is not None and record["spec"].get("pod"):
        pod = await _get_or_none(s, s.client.get(POD, record["spec"]["pod"], record["spec"]["namespace"]))
        uid = pod["metadata"]["uid"] if pod else None
    answer = who_has(ip, record, pools, subnets, reserved, uid)
    if s.output in ("json", "yaml"):
        return render.structured(answer, s.output)
    holder = f"{answer['namespace']}/{answer['pod']}" if answer.get("pod") else None
    return render.fields(
        [
            ("IP", answer["ip"]),
            ("State", answer["state"]),
            ("Pod", holder),
            ("Pod UID", answer.get("podUID")),
            ("Node", answer.get("node")),
            ("Interface", answer.get("interface")),
            ("Pool", answer.get("pool")),
            ("Since", answer.get("since")),
            ("Quarantine until", answer.get("quarantineUntil")),
            ("Release reason", answer.get("releaseReason")),
            ("In pools", answer["pools"]),
            ("Excluded by", answer["excludedBy"]),
            ("Reserved by", answer["reservedBy"]),
            ("In subnets", answer["subnets"]),
            ("Why", answer["explanation"]),
        ]
    )


async def _list_or_empty(s: Session, kind: Any, namespace: str | None = None) -> list[dict[str, Any]]:
    """Every object of a kind, or none if its API is not served (Multus not installed)."""
    try:
        items, _ = await s.client.list(kind, namespace)
    except ApiError as exc:
        if exc.code == 404:
            return []
        raise
    return items


async def _app_of(s: Session, pod: dict[str, Any]) -> App | None:
    """The pod's application as the agent finds it: its controller, or the one above a ReplicaSet/Job."""
    ns = pod["metadata"]["namespace"]
    ref = next((r for r in pod["metadata"].get("ownerReferences") or [] if r.get("controller")), None)
    if ref is None:
        return None
    kind, name, uid = str(ref["kind"]), str(ref["name"]), str(ref.get("uid") or "")
    if kind in ("ReplicaSet", "Job"):
        parent = await _get_or_none(s, s.client.get(REPLICASET if kind == "ReplicaSet" else JOB, name, ns))
        for up in (parent or {}).get("metadata", {}).get("ownerReferences") or []:
            if up.get("controller") and up.get("kind") in ("Deployment", "CronJob"):
                kind, name, uid = str(up["kind"]), str(up["name"]), str(up.get("uid") or "")
    return App(kind, ns, name, uid) if kind in APP_KINDS else None


async def _cluster_network(s: Session) -> str:
    cm = await _get_or_none(s, s.client.get(CONFIGMAP, SPIDERPOOL_CONFIG, SPIDERPOOL_NAMESPACE))
    text = ((cm or {}).get("data") or {}).get("conf.yml")
    if not text:
        return ""
    try:
        network = parse_conf(text).cluster_network or ""
    except ConfError:
        return ""
    return network if "/" in network or not network else f"{SPIDERPOOL_NAMESPACE}/{network}"


def _pod_ref(s: Session) -> tuple[str, str]:
    ref = str(s.args.pod)
    if ref.startswith("pod/") or ref.startswith("pods/"):
        ref = ref.split("/", 1)[1]
    namespace, _, name = ref.rpartition("/")
    return (namespace or s.namespace), name


async def _find_pod(s: Session, name: str) -> dict[str, Any]:
    """``why POD -A``: the pod of that name in whichever namespace holds it (one only)."""
    found, _ = await s.client.list(POD, fields=f"metadata.name={name}")
    if len(found) != 1:
        where = ", ".join(sorted(p["metadata"]["namespace"] for p in found)) or "no namespace"
        raise UsageError(f"pod {name} is in {where}: give NAMESPACE/POD")
    return found[0]


async def _why(s: Session) -> str:
    ns, name = _pod_ref(s)
    if s.args.all_namespaces and "/" not in str(s.args.pod).removeprefix("pod/").removeprefix("pods/"):
        pod: dict[str, Any] | None = await _find_pod(s, name)
        ns = pod["metadata"]["namespace"] if pod else ns
    else:
        pod = await _get_or_none(s, s.client.get(POD, name, ns))
    if pod is None:
        raise UsageError(f"pod {ns}/{name} not found (give NAMESPACE/POD, -n NAMESPACE, or -A)")
    uid = pod["metadata"]["uid"]
    node_name = (pod.get("spec") or {}).get("nodeName")
    namespace, node, (pools, _), (records, _), nads, subnets = await asyncio.gather(
        s.client.get(NAMESPACE, ns),
        _get_or_none(s, s.client.get(NODE, node_name)) if node_name else _none(),
        s.client.list(IPPOOL),
        s.client.list(IPALLOCATION, labels=f"{LABEL_RECORD_POD_UID}={uid}"),
        _list_or_empty(s, NAD),
        _list_or_empty(s, SUBNET),
    )
    (events, _), app, cluster_network = await asyncio.gather(
        s.client.list(EVENT, ns, fields=f"involvedObject.uid={uid}"),
        _app_of(s, pod),
        _cluster_network(s),
    )
    answers = explain(
        pod,
        namespace,
        node,
        {p["metadata"]["name"]: p for p in pools},
        records,
        {f"{n['metadata']['namespace']}/{n['metadata']['name']}": n for n in nads},
        app=app,
        cluster_network=cluster_network,
        subnets={n["metadata"]["name"] for n in subnets},
    )
    failures = sorted(
        (e for e in events if e.get("reason") == "IPAllocationFailed"),
        key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""),
    )
    last = failures[-1] if failures else None
    holds = any(a.ips for a in answers)
    summary: dict[str, Any] = {
        "pod": f"{ns}/{name}",
        "uid": uid,
        "node": node_name,
        "application": app.describe() if app else None,
        "nics": [a.as_dict() for a in answers],
        "lastFailure": None
        if last is None or holds
        else {
            "message": last.get("message"),
            "count": last.get("count") or 1,
            "lastSeen": last.get("lastTimestamp") or last.get("eventTime"),
        },
    }
    if s.output in ("json", "yaml"):
        return render.structured(summary, s.output)
    lines = [
        render.fields(
            [
                ("Pod", f"{ns}/{name}"),
                ("Node", node_name or "(not scheduled)"),
                ("Application", summary["application"]),
                ("IPs", ", ".join(f"{ip} ({a.interface}, {p})" for a in answers for _, ip, p in a.ips) or "none"),
            ]
        )
    ]
    for a in answers:
        lines.append("")
        lines.append(f"NIC {a.interface}" + (f" (network {a.network})" if a.network else ""))
        lines.append("  Pool sources, first that names pools wins:")
        for i, (source, value) in enumerate(a.sources, 1):
            mark = "  <- used" if source == a.source or (a.source and a.source.startswith(source)) else ""
            lines.append(f"    {i}. {source}: {value}{mark}")
        if a.auto_pool:
            lines.append(f"  Auto-pool: {a.auto_pool}")
        if a.verdicts:
            rows = [[f"IPv{v.family}", v.pool, v.verdict] for v in a.verdicts]
            lines.append("  " + render.table(["FAMILY", "POOL", "VERDICT"], rows).replace("\n", "\n  "))
        for family, ip, pool_name in a.ips:
            lines.append(f"  IP: {ip} (IPv{family}) from {pool_name}")
        for move in a.moves:
            lines.append(f"  Pool changed: {move}")
        if a.error:
            lines.append(f"  Cannot allocate: {a.error}")
    if summary["lastFailure"]:
        f = summary["lastFailure"]
        lines += ["", f"Last failure ({f['count']}x, last {f['lastSeen']}):", f"  {f['message']}"]
    elif not holds:
        lines += ["", "No IP yet and no IPAllocationFailed event: the runtime may not have called the plugin yet."]
    return "\n".join(lines)


async def _none() -> dict[str, Any] | None:
    return None


def _leaks_parser(sub: Any) -> None:
    text = "records without a live pod, pod addresses without a record, pool status unlike the records"
    leaks = sub.add_parser(
        "leaks",
        help=text,
        description=f"{text}; with --node, the addresses in that node's pod namespaces that no record holds."
        " Every namespace unless -n is given. Exit status: 0 no leaks (or all fixed), 1 leaks found (or some"
        " left after --fix, or an API error), 2 the check could not run (bad arguments, the node's agent"
        " does not answer, --fix without a terminal or --yes).",
    )
    leaks.add_argument("--node", metavar="NODE", help="also ask NODE's spiderpool-agent (apiserver pod proxy)")
    leaks.add_argument(
        "--fix",
        action="store_true",
        help="quarantine or release the records (as GC would), record the pods' addresses, rewrite the pool"
        " statuses; asks first",
    )
    leaks.add_argument("--yes", "-y", action="store_true", help="with --fix: do not ask")
    leaks.add_argument(
        "--min-age",
        type=float,
        default=leaks_cmd.Options.min_age,
        metavar="SECONDS",
        help="records younger than this are not judged (the controller's --gc-min-age; default %(default)gs)",
    )
    leaks.add_argument(
        "--agent-timeout",
        type=float,
        default=leaks_cmd.AGENT_TIMEOUT,
        metavar="SECONDS",
        help="how long --node waits for the agent (default %(default)gs)",
    )
    _common(leaks, top=False)


async def _leaks(s: Session) -> str:
    a = s.args
    options = leaks_cmd.Options(
        namespace=None if a.all_namespaces else a.namespace,  # (not the context's: every namespace by default)
        node=a.node,
        fix=a.fix,
        yes=a.yes,
        output=s.output,
        min_age=a.min_age,
        agent_timeout=a.agent_timeout,
    )
    try:
        outcome = await leaks_cmd.run(s.client, options)
    except leaks_cmd.CannotCheck as exc:
        raise UsageError(str(exc)) from None
    s.status = outcome.status
    return outcome.text


def _doctor_parser(sub: Any) -> None:
    text = "check the install: each problem with its fix"
    doctor = sub.add_parser(
        "doctor",
        help=text,
        description=f"{text}: controller leader, webhooks (configurations, Service endpoints, a dry-run that"
        " each must answer, the certificate's expiry), every node's agent (Ready, its socket, the CNI plugins"
        " in its bin dir and their version, plugins it had to put back), NetworkAttachmentDefinitions naming"
        " pools that do not exist, the SpiderCoordinator's phase. Read-only (the probes are dry runs). Exit"
        " status: 0 nothing FAILed, 1 something did.",
    )
    doctor.add_argument(
        "--spiderpool-namespace",
        metavar="NAMESPACE",
        help="where spiderpool is installed (default: found by the chart's labels, kube-system first)",
    )
    doctor.add_argument(
        "--agent-timeout",
        type=float,
        default=AGENT_TIMEOUT,
        metavar="SECONDS",
        help="how long each agent may take to answer (default %(default)gs)",
    )
    _common(doctor, top=False)


async def _doctor(s: Session) -> str:
    facts = await gather_facts(s.client, namespace=s.args.spiderpool_namespace, agent_timeout=s.args.agent_timeout)
    checks = judge(facts)
    s.status = 1 if failed(checks) else 0
    if s.output in ("json", "yaml"):
        return render.structured([c.as_dict() for c in checks], s.output)
    return render_checks(checks)


COMPLETION_BASH = """\
# bash completion for kubectl spiderpool (and kubectl-spiderpool)
_kubectl_spiderpool() {
    local cur prev
    cur="${COMP_WORDS[COMP_CWORD]}"
    prev="${COMP_WORDS[COMP_CWORD-1]}"
    case "$prev" in
        -o|--output) COMPREPLY=($(compgen -W "%(formats)s" -- "$cur")); return ;;
        completion) COMPREPLY=($(compgen -W "bash zsh" -- "$cur")); return ;;
    esac
    COMPREPLY=($(compgen -W "%(commands)s %(flags)s" -- "$cur"))
}
complete -F _kubectl_spiderpool kubectl-spiderpool
"""


def _flags(command: str | None) -> list[str]:
    """The long options of ``command`` (of every command when None), read from the parser itself, so
    completion always offers what the commands take."""
    top = parser()
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    chosen = [sub.choices[command]] if command in sub.choices else [top, *sub.choices.values()]
    return sorted({o for p in chosen for a in p._actions for o in a.option_strings if o.startswith("--")})


def _completion(shell: str) -> str:
    words = {
        "formats": " ".join(render.FORMATS),
        "commands": " ".join(COMMANDS),
        "flags": " ".join([*_flags(None), "-n", "-A", "-o"]),
    }
    script = COMPLETION_BASH % words
    if shell == "zsh":
        script = "autoload -U +X bashcompinit && bashcompinit\n" + script
    return script.rstrip()


def complete(words: Sequence[str]) -> list[str]:
    """What ``kubectl spiderpool <words>`` may continue with (kubectl asks ``kubectl_complete-spiderpool``)."""
    cur = words[-1] if words else ""
    prev = words[-2] if len(words) > 1 else ""
    if prev in ("-o", "--output"):
        options: Sequence[str] = render.FORMATS
    elif prev == "completion":
        options = ("bash", "zsh")
    elif cur.startswith("-"):
        options = _flags(next((w for w in words if w in COMMANDS), None))
    else:
        options = COMMANDS
    return [o for o in options if o.startswith(cur)]


COMMAND_FUNCS: dict[str, Callable[[Session], Coroutine[Any, Any, str]]] = {
    "why": _why,
    "pools": _pools,
    "subnets": _subnets,
    "who-has": _who_has,
    "leaks": _leaks,
    "doctor": _doctor,
}


async def _run(args: argparse.Namespace) -> tuple[str, int]:
    session = Session(args)
    try:
        return await COMMAND_FUNCS[args.command](session), session.status
    finally:
        await session.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "version":
        print(f"kubectl-spiderpool {__version__}")
        return 0
    if args.command == "completion":
        print(_completion(args.shell))
        return 0
    try:
        text, status = asyncio.run(_run(args))
        print(text)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ApiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # (the apiserver cannot be reached)
        print(f"error: cannot reach the cluster: {exc}", file=sys.stderr)
        return 1
    return status


def complete_main() -> int:
    """``kubectl_complete-spiderpool``: kubectl calls it with the words typed so far."""
    print("\n".join(complete(sys.argv[1:])))
    print(":4")  # (cobra's ShellCompDirectiveNoFileComp: no file names)
    return 0


if __name__ == "__main__":
    sys.exit(main())
