"""`kubectl spiderpool leaks`: reads the cluster (and, with ``--node``, that node's agent through the
apiserver's pod proxy), reports the findings of ``cli.leaks``, and with ``--fix`` acts on what it can
prove, after a confirmation. Each fix reads the object again, judges it again and writes it with a
precondition (a resourceVersion, or create semantics), so nothing that changed meanwhile is
overwritten: a record GC quarantined first, an address its agent recorded first, a status the
controller wrote first all count as done.

- a record without a live pod: quarantined as GC would (``quarantineUntil``, ``releaseReason``), or
  deleted when GC would free it at once (a finished pod, a quarantine that is over);
- a pod address without a record: recorded for the pod that holds it (it is in use, so recording it
  keeps the next pod from getting it), or its record handed over from the pod that is gone;
- a pool status: rewritten from the records, as the controller derives it;
- an address in a pod namespace: only reported (an address in a namespace cannot be proven ours).
"""

from __future__ import annotations

import asyncio
import datetime
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, TextIO
from urllib.parse import quote

from spiderpool.api.constants import AGENT_SELECTOR, LABEL_RECORD_POOL, name_label
from spiderpool.api.objects import as_record, held_for, new_record, record_labels
from spiderpool.cli import leaks, render
from spiderpool.cli.doctor_model import agent_port
from spiderpool.cli.leaks import Cluster, Finding
from spiderpool.ipam import gc
from spiderpool.k8s.client import ApiError, Client, preconditions
from spiderpool.k8s.kinds import (
    ENDPOINT,
    IPALLOCATION,
    IPPOOL,
    LEASE,
    NODE,
    POD,
    RESERVEDIP,
    STATEFULSET,
    Kind,
)

#: what the agent serves its pod namespaces' addresses at (``spiderpool.agent.debug``)
AGENT_PATH = "/v1/debug/addresses"
AGENT_TIMEOUT = 5.0
#: tries of one fix whose object changed under it
ATTEMPTS = 3
LEASE_NAMESPACE = "kube-node-lease"


class CannotCheck(Exception):
    """The command cannot run as asked (a node's agent does not answer, no terminal to confirm on)."""


@dataclass(frozen=True)
class Options:
    #: None: every namespace
    namespace: str | None = None
    node: str | None = None
    fix: bool = False
    yes: bool = False
    output: str = "table"
    min_age: float = gc.Settings.min_age
    agent_timeout: float = AGENT_TIMEOUT


@dataclass
class Outcome:
    text: str
    #: 0: no leaks (or all fixed), 1: leaks found (or left)
    status: int


#: shows the listing, asks the question, says yes or no
Confirm = Callable[[str, str], Awaitable[bool]]


async def _get(client: Client, kind: Kind, name: str, namespace: str | None = None) -> dict[str, Any] | None:
    try:
        return await client.get(kind, name, namespace)
    except ApiError as exc:
        if exc.code == 404:
            return None
        raise


async def _list(client: Client, kind: Kind, namespace: str | None = None) -> list[dict[str, Any]]:
    """Every object of a kind; none when we may not read them (the node Leases: then no node is lost)."""
    try:
        items, _ = await client.list(kind, namespace)
    except ApiError as exc:
        if exc.code in (403, 404):
            return []
        raise
    return items


async def read_cluster(client: Client, namespace: str | None) -> Cluster:
    (pools, _), (records, _), (reserved, _), (nodes, _) = await asyncio.gather(
        client.list(IPPOOL), client.list(IPALLOCATION), client.list(RESERVEDIP), client.list(NODE)
    )
    (pods, _), (endpoints, _), (statefulsets, _), lease_list = await asyncio.gather(
        client.list(POD, namespace),
        client.list(ENDPOINT, namespace),
        client.list(STATEFULSET, namespace),
        _list(client, LEASE, LEASE_NAMESPACE),
    )
    cluster = Cluster(
        pools=list(pools),
        records=list(records),
        pods=list(pods),
        endpoints=list(endpoints),
        nodes=list(nodes),
        statefulsets=list(statefulsets),
        reserved=list(reserved),
        lease_ages=leaks.lease_ages(lease_list, client.server_time()),
    )
    if namespace is not None:
        others = sorted(leaks.holders_elsewhere(cluster, namespace))
        found = await asyncio.gather(*(_get(client, POD, name, ns) for ns, name in others))
        cluster.pods += [p for p in found if p is not None]
    return cluster


async def ask_agent(client: Client, node: str, within: float) -> dict[str, Any]:
    """The agent of ``node``'s answer (see ``spiderpool.agent.debug``), through the apiserver's pod proxy."""
    if await _get(client, NODE, node) is None:
        raise CannotCheck(f"node {node} not found")
    pods, _ = await client.list(POD, labels=AGENT_SELECTOR, fields=f"spec.nodeName={node}")
    agent = leaks.agent_pod(pods)
    if agent is None:
        raise CannotCheck(
            f"node {node}: no spiderpool-agent pod there (none labelled {AGENT_SELECTOR}): is the agent"
            " DaemonSet scheduled on it?"
        )
    ns, name, port = agent["metadata"]["namespace"], agent["metadata"]["name"], agent_port(agent)
    path = f"/api/v1/namespaces/{quote(ns, safe='')}/pods/{quote(name, safe='')}:{port}/proxy{AGENT_PATH}"
    where = f"node {node}: spiderpool-agent {ns}/{name} (port {port}, through the apiserver's pod proxy)"
    try:
        async with asyncio.timeout(within):
            answer = await client.request("GET", path)
    except TimeoutError:
        raise CannotCheck(
            f"{where} did not answer within {within:g}s: is it running? (kubectl -n {ns} describe pod {name})"
        ) from None
    except ApiError as exc:
        hint = " (an agent older than this plugin?)" if exc.code == 404 else ": is it running?"
        raise CannotCheck(f"{where} did not answer {AGENT_PATH}{hint} {exc.code} {exc.message}".rstrip()) from None
    except ValueError:
        raise CannotCheck(f"{where} answered {AGENT_PATH} with something other than JSON") from None
    if not isinstance(answer, dict):
        raise CannotCheck(f"{where} answered {AGENT_PATH} with something other than a JSON object")
    return answer


# --- fixes


def _stamp(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def _fix_record(client: Client, f: Finding, cluster: Cluster, settings: gc.Settings) -> None:
    """Kind 1: GC's act, on a fresh read of the record, its pod, node and StatefulSet."""
    for _ in range(ATTEMPTS):
        rec = await _get(client, IPALLOCATION, f.record)
        if rec is None:
            f.fixed, f.result = True, "already released: the record is gone"
            return
        spec = rec.get("spec") or {}
        if spec.get("ip") != f.ip:
            f.fixed, f.result = True, "already released: the record was re-created"
            return
        ns, node_name = str(spec.get("namespace") or ""), str(spec.get("node") or "")
        pod = await _get(client, POD, str(spec.get("pod") or ""), ns) if spec.get("pod") else None
        node = await _get(client, NODE, node_name) if node_name else None
        sts_name = str(spec.get("ownerName") or "")
        sts = await _get(client, STATEFULSET, sts_name, ns) if spec.get("ownerKind") == "StatefulSet" else None
        health = gc.node_health(node, cluster.lease_ages.get(node_name))
        verdict = gc.judge(rec, pod, health, sts, client.server_time(), settings)
        if not verdict.release:
            until = spec.get("quarantineUntil")
            f.fixed = True
            f.result = f"already quarantined until {until}" if until else "no longer a leak on a fresh read: kept"
            return
        try:
            if verdict.quarantine:
                until = _stamp(client.server_time() + settings.quarantine)
                updated = held_for(as_record(rec), "", quarantineUntil=until, releaseReason=verdict.reason)
                # (a PUT with the resourceVersion read: refused if the record changed meanwhile)
                await client.replace(IPALLOCATION, dict(updated))
                f.fixed, f.result = True, f"quarantined until {until} ({verdict.reason}); GC releases it then"
            else:
                await client.delete(IPALLOCATION, f.record, preconditions=preconditions(rec))
                f.fixed, f.result = True, f"released ({verdict.reason})"
            return
        except ApiError as exc:
            if exc.code not in (404, 409):
                raise
    f.fixed, f.result = False, f"changed under us {ATTEMPTS} times: run leaks again"


async def _fix_address(client: Client, f: Finding) -> None:
    """Kind 2: record the address for the pod that holds it (create: a 409 means somebody recorded it
    first, and is looked at again), or hand its record over from a pod that is gone."""
    for _ in range(ATTEMPTS):
        pod = await _get(client, POD, f.pod, f.namespace)
        if pod is None or pod["metadata"].get("uid") != f.pod_uid or not leaks.pod_alive(pod):
            f.fixed, f.result = True, f"pod {f.holder} is gone or going: nothing to record"
            return
        rec = await _get(client, IPALLOCATION, f.record)
        if rec is None:
            if not f.pool or "," in f.pool:
                f.fixed, f.result = False, "not fixed: the address is in more than one pool"
                return
            spec = leaks.adoption(pod, f)
            try:
                await client.create(IPALLOCATION, dict(new_record(f.record, spec)))
            except ApiError as exc:
                if exc.code == 409:
                    continue  # recorded meanwhile: whose is it?
                raise
            f.fixed, f.result = True, f"recorded for pod {f.holder} ({spec['interface']}, pool {spec['pool']})"
            return
        rspec = rec.get("spec") or {}
        if rspec.get("podUID") == f.pod_uid:
            f.fixed, f.result = True, "already recorded for this pod"
            return
        holder_uid = str(rspec.get("podUID") or "")
        holder = None
        if holder_uid and rspec.get("pod"):
            holder = await _get(client, POD, str(rspec["pod"]), str(rspec.get("namespace") or ""))
        if rspec.get("releaseReason") == "ip_conflict" or (
            holder is not None
            and holder["metadata"].get("uid") == holder_uid
            and (leaks.pod_alive(holder) or not gc.containers_stopped(holder))
        ):
            f.fixed = False
            f.result = f"not fixed: the record is {rspec.get('namespace')}/{rspec.get('pod')}'s, which may still use it"
            return
        spec = leaks.adoption(pod, replace(f, pool=str(rspec.get("pool") or f.pool)))
        meta = rec["metadata"]
        labels = {**(meta.get("labels") or {}), **record_labels(spec)}
        updated = {**rec, "metadata": {**meta, "labels": labels}, "spec": dict(spec)}
        try:
            await client.replace(IPALLOCATION, updated)
        except ApiError as exc:
            if exc.code in (404, 409):
                continue
            raise
        was = f"{rspec.get('namespace')}/{rspec.get('pod')}"
        f.fixed, f.result = True, f"record handed over from {was} to pod {f.holder} (pool {spec['pool']})"
        return
    f.fixed, f.result = False, f"changed under us {ATTEMPTS} times: run leaks again"


async def recount(client: Client, pool_name: str) -> tuple[bool, str]:
    """Kind 3: the pool's status rewritten from its records, if it still differs (compare-and-swap)."""
    for _ in range(ATTEMPTS):
        pool = await _get(client, IPPOOL, pool_name)
        if pool is None:
            return True, "the pool is gone"
        records, _ = await client.list(IPALLOCATION, labels=f"{LABEL_RECORD_POOL}={name_label(pool_name)}")
        want = leaks.pool_status(pool, [r for r in records if (r.get("spec") or {}).get("pool") == pool_name])
        if not leaks.status_differs(pool, want):
            return True, "status agrees with the records"
        have = pool.get("status") or {}
        try:
            await client.patch(IPPOOL, pool_name, leaks.status_patch(pool, want), subresource="status")
        except ApiError as exc:
            if exc.code in (404, 409):
                continue
            raise
        counts = f"allocatedIPCount {have.get('allocatedIPCount', '-')} -> {want['allocatedIPCount']}"
        if have.get("totalIPCount") != want["totalIPCount"]:
            counts += f", totalIPCount {have.get('totalIPCount', '-')} -> {want['totalIPCount']}"
        return True, f"status rewritten from the records: {counts}"
    return False, f"changed under us {ATTEMPTS} times: run leaks again"


async def fix_all(client: Client, findings: list[Finding], cluster: Cluster, settings: gc.Settings) -> list[Finding]:
    """Fix what can be proven, in order: records, then addresses, then the statuses of the pools
    those fixes and the findings touched. Returns the extra recounts (pools the fixes changed)."""
    touched: list[str] = []
    for f in findings:
        if f.kind == leaks.RECORD_WITHOUT_POD and f.action:
            await _fix_record(client, f, cluster, settings)
        elif f.kind == leaks.IP_WITHOUT_RECORD and f.action:
            await _fix_address(client, f)
        elif not f.action:
            f.fixed, f.result = False, "only reported: " + _why_not(f)
        if f.fixed and f.action in (leaks.RELEASE, leaks.RECORD) and f.pool:  # (a count changed)
            touched += [p for p in f.pool.split(",") if p and p not in touched]
    drifted = {f.pool for f in findings if f.kind == leaks.POOL_STATUS}
    for f in findings:
        if f.kind == leaks.POOL_STATUS:
            f.fixed, f.result = await recount(client, f.pool)
    extra = []
    for name in touched:
        if name in drifted:
            continue
        ok, result = await recount(client, name)
        if result != "status agrees with the records":
            extra.append(Finding(leaks.POOL_STATUS, "after_fix", "recounted after the fixes", leaks.RECOUNT, pool=name))
            extra[-1].fixed, extra[-1].result = ok, result
    return extra


def _why_not(f: Finding) -> str:
    if f.kind == leaks.NETNS_ADDRESS:
        return "an address in a pod namespace cannot be proven ours; find its pod and delete it, or its sandbox"
    if f.reason in ("held_twice", "ip_conflict"):
        return "two holders: which one is right is the admin's call"
    return "not provable (see the detail)"


# --- output


def _document(findings: list[Finding], warnings: list[str], extra: list[Finding] | None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "findings": [f.as_dict() for f in findings],
        "summary": leaks.summary(findings),
        "warnings": warnings,
    }
    if extra is not None:
        doc["recounted"] = [{"pool": f.pool, "fixed": f.fixed, "result": f.result} for f in extra]
    return doc


def listing(findings: list[Finding], warnings: list[str], now: float, *, wide: bool, scope: str) -> str:
    lines = []
    if findings:
        headers, rows = leaks.table_rows(findings, now, wide=wide)
        lines += [render.table(headers, rows), ""]
    lines += [f"warning: {w}" for w in warnings]
    lines.append(leaks.summary_line(findings, scope))
    return "\n".join(lines)


def results(findings: list[Finding], extra: list[Finding]) -> str:
    rows = [
        [f.kind, f.ip, f.pool, f.holder, "yes" if f.fixed else "no", f.result]
        for f in [*findings, *extra]
        if f.fixed is not None
    ]
    done = sum(1 for f in findings if f.fixed)
    text = render.table(["KIND", "IP", "POOL", "POD", "FIXED", "RESULT"], rows)
    return f"{text}\n\n{done} of {len(findings)} finding{'s' if len(findings) > 1 else ''} fixed."


def _scope(opts: Options) -> str:
    parts = [f"namespace {opts.namespace}" if opts.namespace is not None else "all namespaces"]
    if opts.node:
        parts.append(f"pod namespaces of node {opts.node}")
    return ", ".join(parts)


async def tty_confirm(shown: str, question: str, *, out: TextIO | None = None) -> bool:
    """The listing, then the question on the terminal; yes only for ``y`` or ``yes``."""
    stream = out or sys.stdout
    print(shown, file=stream, flush=True)
    print(question, end="", file=sys.stderr, flush=True)
    answer = await asyncio.to_thread(sys.stdin.readline)
    return answer.strip().lower() in ("y", "yes")


async def run(client: Client, opts: Options, confirm: Confirm | None = None) -> Outcome:
    interactive = opts.fix and not opts.yes
    if interactive and confirm is None and not sys.stdin.isatty():
        raise CannotCheck("--fix asks before it changes anything and there is no terminal to ask on: add --yes")
    settings = gc.Settings(min_age=opts.min_age)
    # the agent first: an address seen there and recorded before the records are read is no finding
    # (an ADD records an address before it configures it)
    answer = await ask_agent(client, opts.node, opts.agent_timeout) if opts.node else None
    cluster = await read_cluster(client, opts.namespace)
    now = client.server_time()
    findings = leaks.find(cluster, now, settings, opts.namespace)
    warnings: list[str] = []
    if answer is not None and opts.node:
        handed = leaks.handed_out(cluster.pools, cluster.reserved)
        reported = {f.ip for f in findings if f.ip}
        more, warnings = leaks.netns_addresses(answer, cluster.records, handed, opts.node, reported)
        findings += more
    structured = opts.output in ("json", "yaml")
    scope = _scope(opts)
    if not opts.fix or not findings:
        if structured:
            text = render.structured(_document(findings, warnings, None), opts.output)
        else:
            text = listing(findings, warnings, now, wide=opts.output == "wide", scope=scope)
            if any(f.action for f in findings):
                text += "\nRun with --fix to take back, record or recount what can be proven (it asks first)."
        return Outcome(text, 1 if findings else 0)
    fixable = [f for f in findings if f.action]
    if interactive and fixable:
        shown = listing(findings, warnings, now, wide=opts.output == "wide", scope=scope)
        ask = confirm or (lambda s, q: tty_confirm(s, q, out=sys.stderr if structured else sys.stdout))
        n = len(fixable)
        if not await ask(shown, f"Fix {n} finding{'s' if n > 1 else ''}? [y/N] "):
            return Outcome("Nothing changed.", 1)
    extra = await fix_all(client, findings, cluster, settings)
    status = 0 if all(f.fixed for f in findings) and all(f.fixed for f in extra) else 1
    if structured:
        return Outcome(render.structured(_document(findings, warnings, extra), opts.output), status)
    text = results(findings, extra)
    if warnings:
        text = "\n".join(f"warning: {w}" for w in warnings) + "\n" + text
    return Outcome(text, status)
