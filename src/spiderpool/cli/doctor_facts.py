"""Reads what ``kubectl spiderpool doctor`` judges (``doctor.Facts``), concurrently: the install's
workloads, pods, Lease, webhook configurations, their Services and EndpointSlices, the certificate
Secret, NetworkAttachmentDefinitions, pools and SpiderCoordinators; two dry-run creates that only
the webhooks change or refuse; and every agent's ``GET /v1/debug/status`` through the apiserver's
pod proxy, each bounded so a stopped agent is a finding, not a hang. Read-only: a dry run stores
nothing."""

from __future__ import annotations

import asyncio
import datetime
import secrets
from collections.abc import Awaitable
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp

from spiderpool.api.constants import AGENT_SELECTOR, CONTROLLER_SELECTOR
from spiderpool.cli.doctor_model import AGENT_STATUS_PATH, AgentAnswer, Facts, ProbeResult, agent_port, locate
from spiderpool.cli.doctor_webhooks import probe_objects, spiderpool_hooks, webhook_services
from spiderpool.k8s.client import ApiError, Client
from spiderpool.k8s.kinds import (
    COORDINATOR,
    DAEMONSET,
    DEPLOYMENT,
    ENDPOINTSLICE,
    IPPOOL,
    LEASE,
    MUTATING_WEBHOOKS,
    NAD,
    NODE,
    POD,
    SECRET,
    SERVICE,
    VALIDATING_WEBHOOKS,
    Kind,
)

T = TypeVar("T")
#: the most a probe may take (the apiserver waits up to each webhook's timeoutSeconds, 5 s here)
PROBE_TIMEOUT = 20.0


class _Reader:
    """Reads that record what could not be read instead of failing the whole command."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.unreadable: dict[str, str] = {}

    async def read(self, what: str, coro: Awaitable[T], default: T, *, missing: Any = ...) -> T:
        """``coro``'s result; ``missing`` (when given) on 404; ``default`` on any other refusal."""
        try:
            return await coro
        except ApiError as exc:
            if exc.code == 404 and missing is not ...:
                return missing  # type: ignore[no-any-return]
            self.unreadable[what] = str(exc)
            return default

    async def items(self, kind: Kind, namespace: str | None = None, *, labels: str = "") -> list[dict[str, Any]]:
        items, _ = await self.client.list(kind, namespace, labels=labels)
        return items


async def ask_agent(client: Client, pod: dict[str, Any], within: float) -> AgentAnswer:
    """The agent's ``GET /v1/debug/status`` through the apiserver's pod proxy, within ``within`` seconds."""
    meta = pod["metadata"]
    path = (
        f"/api/v1/namespaces/{quote(meta['namespace'], safe='')}/pods/{quote(meta['name'], safe='')}"
        f":{agent_port(pod)}/proxy{AGENT_STATUS_PATH}"
    )
    try:
        async with asyncio.timeout(within):
            body = await client.request("GET", path)
    except TimeoutError:
        return AgentAnswer(timed_out=True)
    except ApiError as exc:
        # (a 404 of the agent itself, not the apiserver's NotFound: a version without the endpoint)
        return AgentAnswer(error=str(exc), code=exc.code, old=exc.code == 404 and exc.reason != "NotFound")
    except (OSError, aiohttp.ClientError, ValueError) as exc:
        return AgentAnswer(error=f"{type(exc).__name__}: {exc}")
    if not isinstance(body, dict):
        return AgentAnswer(error=f"not a JSON object: {str(body)[:100]}")
    return AgentAnswer(status=body)


async def probe(client: Client, kind: Kind, obj: dict[str, Any]) -> ProbeResult:
    """A dry-run create: the admitted object, or the apiserver's refusal."""
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            return ProbeResult(obj=await client.create(kind, obj, dry_run=True))
    except ApiError as exc:
        return ProbeResult(code=exc.code, message=exc.message or str(exc))
    except TimeoutError:
        return ProbeResult(message=f"no answer within {PROBE_TIMEOUT:g}s")


async def gather_facts(client: Client, *, namespace: str | None = None, agent_timeout: float = 3.0) -> Facts:
    r = _Reader(client)
    ns_filter = namespace or None
    none: list[dict[str, Any]] = []
    (deployments, daemonsets, nodes, mutating, validating), (nads, pools, coordinators) = await asyncio.gather(
        asyncio.gather(
            r.read("deployments", r.items(DEPLOYMENT, ns_filter, labels=CONTROLLER_SELECTOR), none),
            r.read("daemonsets", r.items(DAEMONSET, ns_filter, labels=AGENT_SELECTOR), none),
            r.read("nodes", r.items(NODE), none),
            r.read("webhook configurations", r.items(MUTATING_WEBHOOKS), none),
            r.read("webhook configurations", r.items(VALIDATING_WEBHOOKS), none),
        ),
        asyncio.gather(
            r.read("nads", r.items(NAD), None, missing=None),
            r.read("pools", r.items(IPPOOL), none),
            r.read("coordinators", r.items(COORDINATOR), none),
        ),
    )
    install = locate(deployments, daemonsets, namespace)
    configs = [*mutating, *validating]
    services = webhook_services(configs)
    suffix = secrets.token_hex(4)
    objects = probe_objects(suffix)

    async def agents() -> tuple[list[dict[str, Any]], dict[str, AgentAnswer]]:
        pods = await r.read("agent pods", r.items(POD, install.namespace, labels=install.agent_selector), [])
        live = [
            p
            for p in pods
            if (p.get("status") or {}).get("podIP")
            and not p["metadata"].get("deletionTimestamp")
            and (p.get("spec") or {}).get("nodeName")
        ]
        answers = await asyncio.gather(*(ask_agent(client, p, agent_timeout) for p in live))
        return pods, {p["metadata"]["name"]: a for p, a in zip(live, answers, strict=True)}

    async def probes() -> dict[str, ProbeResult]:
        out: dict[str, ProbeResult] = {}
        todo = []
        if any(spiderpool_hooks(c) for c in mutating):
            todo.append(("mutating", COORDINATOR))
        if any(spiderpool_hooks(c) for c in validating):
            todo.append(("validating", IPPOOL))
        results = await asyncio.gather(*(probe(client, kind, objects[mode]) for mode, kind in todo))
        for (mode, _), result in zip(todo, results, strict=True):
            out[mode] = result
        return out

    async def endpoints() -> tuple[dict[tuple[str, str], Any], dict[tuple[str, str], list[dict[str, Any]]]]:
        found = await asyncio.gather(
            *(r.read("services", client.get(SERVICE, name, ns), None, missing=None) for ns, name, _ in services)
        )
        slices = await asyncio.gather(
            *(
                r.read("services", r.items(ENDPOINTSLICE, ns, labels=f"kubernetes.io/service-name={name}"), [])
                for ns, name, _ in services
            )
        )
        keys = [(ns, name) for ns, name, _ in services]
        return dict(zip(keys, found, strict=True)), dict(zip(keys, slices, strict=True))

    controller_pods, (agent_pods, answers), lease, secret, probed, (svcs, slices) = await asyncio.gather(
        r.read("controller pods", r.items(POD, install.namespace, labels=install.controller_selector), []),
        agents(),
        r.read("lease", client.get(LEASE, install.lease_name, install.lease_namespace), None, missing=None),
        r.read("secret", client.get(SECRET, install.secret_name, install.namespace), None, missing=None),
        probes(),
        endpoints(),
    )
    return Facts(
        install=install,
        now=datetime.datetime.fromtimestamp(client.server_time(), datetime.UTC),
        nodes=nodes,
        controller_pods=controller_pods,
        agent_pods=agent_pods,
        lease=lease,
        mutating=mutating,
        validating=validating,
        services=svcs,
        slices=slices,
        secret=secret,
        probes=probed,
        agents=answers,
        nads=nads,
        pools=pools,
        coordinators=coordinators,
        unreadable=r.unreadable,
        agent_timeout=agent_timeout,
    )
