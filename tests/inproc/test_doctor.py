"""`kubectl spiderpool doctor` run as users run it (the real kubectl finds the plugin) against a real
apiserver on loopback: an install whose webhook Service is missing, NADs naming a pool that does
not exist, a NotReady SpiderCoordinator and a node without an agent; the same webhooks answered by
the controller's real webhook server; and real agents asked through the apiserver's pod proxy,
one of them hung and one whose plugin was deleted and put back."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import ipaddress
import json
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from spiderpool.agent import main as agent_main
from spiderpool.agent.selfcheck import PATH as STATUS_PATH
from spiderpool.controller import admission, certs, webhook
from spiderpool.controller.cache import ObjectCache
from spiderpool.k8s.client import ApiError, Client
from spiderpool.k8s.kinds import (
    COORDINATOR,
    DAEMONSET,
    DEPLOYMENT,
    ENDPOINTSLICE,
    LEASE,
    MUTATING_WEBHOOKS,
    NAD,
    NODE,
    POD,
    SECRET,
    SERVICE,
    VALIDATING_WEBHOOKS,
)
from spiderpool.net import fastnl
from spiderpool_lab import procs
from spiderpool_lab.envtest import ApiServer
from tests.inproc.conftest import eventually, make_pod, unique
from tests.inproc.test_cli import kubectl_spiderpool
from tests.inproc.test_multusconfig import nad_crd  # noqa: F401  (the NAD CRD, a fixture)

SECRET_NAME = "spiderpool-controller-server-certs"


def _workload(kind: str, namespace: str, name: str, component: str, command: list[str]) -> dict[str, Any]:
    selector = {"app.kubernetes.io/name": name, "app.kubernetes.io/instance": "spiderpool"}
    labels = {**selector, "app.kubernetes.io/part-of": "spiderpool", "app.kubernetes.io/component": component}
    return {
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [{"name": component, "image": "spiderpool", "command": command}],
                    "tolerations": [{"operator": "Exists"}],  # (as the chart's)
                },
            },
        },
    }


async def _running(client: Client, pod: dict[str, Any], ip: str) -> None:
    """Write the status a kubelet would: Running and Ready at ``ip``."""
    pod = await client.get(POD, pod["metadata"]["name"], pod["metadata"]["namespace"])
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    pod["status"] = {
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}],
    }
    await client.replace(POD, pod, subresource="status")


async def _install(client: Client, namespace: str, *, lease_name: str, agent_port: int = 5711) -> dict[str, Any]:
    """The chart's controller Deployment (one Ready replica, leading) and agent DaemonSet, as the
    apiserver holds them; no controller-manager runs, so the pods are written by hand."""
    controller = ["spiderpool-controller", f"--lease-name={lease_name}", f"--webhook-secret={SECRET_NAME}"]
    await client.create(
        DEPLOYMENT, _workload("Deployment", namespace, "spiderpool-controller", "controller", controller)
    )
    agent = ["spiderpool-agent", f"--metrics-port={agent_port}"]
    await client.create(DAEMONSET, _workload("DaemonSet", namespace, "spiderpool-agent", "agent", agent))
    labels = {"app.kubernetes.io/name": "spiderpool-controller", "app.kubernetes.io/instance": "spiderpool"}
    pod = await make_pod(client, namespace, "spiderpool-controller-0", labels=labels)
    await _running(client, pod, "172.18.0.2")
    renewed = datetime.datetime.fromtimestamp(client.server_time(), datetime.UTC)
    lease = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": lease_name, "namespace": namespace},
        "spec": {
            "holderIdentity": "spiderpool-controller-0_0a1b2c3d",
            "leaseDurationSeconds": 3600,  # (fresh for the whole test)
            "renewTime": renewed.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        },
    }
    await client.create(LEASE, lease)
    return pod


async def _webhooks(
    client: Client,
    serving: certs.ServingCert,
    *,
    url_base: str | None = None,
    service: tuple[str, str, int] | None = None,
) -> list[tuple[Any, str]]:
    """The controller's webhook configurations (under names of this test's own)."""
    made = []
    for kind, config in zip(
        (MUTATING_WEBHOOKS, VALIDATING_WEBHOOKS),
        webhook.configurations(serving.ca_pem, url_base=url_base, service=service),
        strict=True,
    ):
        config["metadata"]["name"] = unique("doctor-webhooks")
        await client.create(kind, config)
        made.append((kind, config["metadata"]["name"]))
    return made


async def _secret(client: Client, namespace: str, serving: certs.ServingCert) -> None:
    data = {"ca.crt": serving.ca_pem, "tls.crt": serving.cert_pem, "tls.key": serving.key_pem}
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET_NAME, "namespace": namespace},
        "type": "kubernetes.io/tls",
        "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
    }
    await client.create(SECRET, body)


async def _delete_all(client: Client, objects: list[tuple[Any, str]]) -> None:
    for kind, name in objects:
        with contextlib.suppress(ApiError):
            await client.delete(kind, name)


async def doctor(apiserver: ApiServer, namespace: str) -> tuple[int, dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Run it; its checks by name (the last of a name) and in order."""
    code, out, err = await kubectl_spiderpool(apiserver, "doctor", "--spiderpool-namespace", namespace, "-o", "json")
    assert code in (0, 1), err
    checks = json.loads(out)
    return code, {c["check"]: c for c in checks}, checks


@pytest.mark.usefixtures("nad_crd")
async def test_doctor_names_a_missing_webhook_service_a_missing_pool_and_a_node_without_agent(
    apiserver: ApiServer, client: Client, namespace: str
) -> None:
    lease_name = unique("doctor-lease")
    await _install(client, namespace, lease_name=lease_name)
    serving = certs.generate(dns=[f"spiderpool-controller.{namespace}.svc"], ips=[])
    await _secret(client, namespace, serving)
    lonely = unique("doctor-node")
    cluster_scoped: list[tuple[Any, str]] = [(NODE, lonely), (COORDINATOR, "default")]
    nad_config = {
        "cniVersion": "0.3.1",
        "type": "macvlan",
        "ipam": {"type": "spiderpool", "default_ipv4_ippool": ["doctor-nowhere"]},
    }
    try:
        await client.create(NODE, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": lonely}})
        await client.create(NAD, {
            "apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": "macvlan", "namespace": namespace}, "spec": {"config": json.dumps(nad_config)},
        })  # fmt: skip
        with contextlib.suppress(ApiError):
            await client.delete(COORDINATOR, "default")  # (another test's)
        coordinator = await client.create(
            COORDINATOR,
            {
                "apiVersion": "spiderpool.spidernet.io/v2beta1",
                "kind": "SpiderCoordinator",
                "metadata": {"name": "default"},
                "spec": {},
            },
        )
        coordinator["status"] = {"phase": "NotReady", "reason": "no Service CIDR found: set spec.hijackCIDR"}
        await client.replace(COORDINATOR, coordinator, subresource="status")
        # the webhooks are called through a Service that does not exist
        cluster_scoped += await _webhooks(client, serving, service=(namespace, "spiderpool-controller", 5722))

        code, checks, ordered = await doctor(apiserver, namespace)
        assert code == 1
        assert checks["controller"]["status"] == "OK"
        assert checks["leader"]["status"] == "OK", checks["leader"]
        assert checks["leader"]["detail"].startswith(f"spiderpool-controller-0 leads (Lease {namespace}/{lease_name}")
        service = checks["webhook service"]
        assert service["status"] == "FAIL"
        assert service["detail"].startswith(
            f"Service {namespace}/spiderpool-controller, which the webhooks are called through"
        )
        for mode in ("mutating", "validating"):
            probe = checks[f"webhook {mode}"]
            assert probe["status"] == "FAIL", probe
            assert "failurePolicy Ignore" in probe["detail"]
            assert f"(Service {namespace}/spiderpool-controller, which the webhooks" in probe["detail"]
        assert checks["certificate"]["status"] == "OK", checks["certificate"]
        agent = checks[f"agent {lonely}"]
        assert agent["status"] == "FAIL"
        assert agent["detail"].startswith(f"node {lonely} is NotReady; no spiderpool-agent pod on this node")
        nad = checks[f"nad {namespace}/macvlan"]
        assert nad["status"] == "FAIL"
        assert "names SpiderIPPool doctor-nowhere, which does not exist" in nad["detail"]
        coordinator_check = checks["coordinator default"]
        assert coordinator_check["status"] == "FAIL"
        assert coordinator_check["detail"].startswith("NotReady: no Service CIDR found: set spec.hijackCIDR")
        assert [c["check"] for c in ordered][:3] == ["install", "controller", "leader"]

        # the same as text: one line per check, the fix after the dash, the counts last
        code, text, _ = await kubectl_spiderpool(apiserver, "doctor", "--spiderpool-namespace", namespace)
        assert code == 1
        line = next(x for x in text.splitlines() if x.startswith("FAIL webhook service: "))
        assert " — the chart makes it" in line
        assert text.splitlines()[-1].endswith("FAIL")

        # the Service there, its one endpoint not ready (headless: the apiserver fails its calls at once)
        await client.create(SERVICE, {
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "spiderpool-controller", "namespace": namespace},
            "spec": {"clusterIP": "None", "ports": [{"name": "webhook", "port": 5722}]},
        })  # fmt: skip
        await client.create(ENDPOINTSLICE, {
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {
                "name": "spiderpool-controller-x", "namespace": namespace,
                "labels": {"kubernetes.io/service-name": "spiderpool-controller"},
            },
            "endpoints": [{"addresses": ["172.18.0.2"], "conditions": {"ready": False}}],
            "ports": [{"name": "webhook", "port": 5722, "protocol": "TCP"}],
        })  # fmt: skip
        _, checks, _ = await doctor(apiserver, namespace)
        service = checks["webhook service"]
        assert service["status"] == "FAIL"
        assert service["detail"].startswith(f"Service {namespace}/spiderpool-controller has no ready endpoints")
        probe = checks["webhook validating"]
        assert probe["status"] == "FAIL"
        assert probe["detail"].endswith(f"(Service {namespace}/spiderpool-controller has no ready endpoints)")
    finally:
        await _delete_all(client, cluster_scoped)


@contextlib.contextmanager
def _tls_files(serving: certs.ServingCert) -> Iterator[tuple[Path, Path]]:
    with tempfile.TemporaryDirectory(prefix="doctor-tls-") as tmp:
        yield serving.write(Path(tmp))


@contextlib.asynccontextmanager
async def webhook_server(client: Client, serving: certs.ServingCert) -> AsyncIterator[str]:
    """spiderpool-controller's webhook server (its rules, its TLS) on loopback; yields its URL."""
    app = web.Application()
    app.add_routes(webhook.Webhook(ObjectCache(client), admission.Settings()).routes())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = procs.free_port()
    with _tls_files(serving) as (cert, key):
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=webhook.server_ssl(cert, key)).start()
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_doctor_finds_the_webhooks_answering(apiserver: ApiServer, client: Client, namespace: str) -> None:
    await _install(client, namespace, lease_name=unique("doctor-lease"))
    serving = certs.generate(dns=["spiderpool-controller"], ips=["127.0.0.1"])
    await _secret(client, namespace, serving)
    made: list[tuple[Any, str]] = []
    try:
        async with webhook_server(client, serving) as url:
            made += await _webhooks(client, serving, url_base=url)
            _, checks, ordered = await doctor(apiserver, namespace)
        assert checks["webhook mutating"]["status"] == "OK", checks["webhook mutating"]
        assert checks["webhook validating"]["status"] == "OK", checks["webhook validating"]
        assert checks["certificate"]["status"] == "OK", checks["certificate"]
        assert "webhook service" not in checks  # (called by URL)
        assert [c["status"] for c in ordered if c["check"] == "webhooks"] == ["OK", "OK"]
    finally:
        await _delete_all(client, made)


def _host_address() -> str:
    """An IPv4 address of this machine the apiserver may proxy to (it refuses loopback and link-local)."""
    for _, address in fastnl.global_addresses():
        if ipaddress.ip_address(address).version == 4:
            return address
    pytest.fail("this machine has no IPv4 address but loopback: the apiserver's pod proxy needs one")


@contextlib.contextmanager
def hung_listener(address: str) -> Iterator[int]:
    """A port whose connections are accepted by the kernel and never answered: a stopped agent."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((address, 0))
        sock.listen(16)
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


@contextlib.asynccontextmanager
async def running_agent(
    apiserver: ApiServer, node: str, address: str, port: int, tmp: Path
) -> AsyncIterator[agent_main.Agent]:
    args = agent_main.parse_args(
        [
            f"--kubeconfig={apiserver.kubeconfig}",
            f"--node-name={node}",
            f"--socket={tmp / 'run' / 'spiderpool.sock'}",
            f"--cni-bin-dir={tmp / 'bin'}",
            f"--python={sys.executable}",
            f"--metrics-bind={address}",
            f"--metrics-port={port}",
            "--plugin-check-interval=0.2",
        ]
    )
    agent = agent_main.Agent(args)
    task = asyncio.create_task(agent.run())
    try:
        await eventually(agent.ipam.ready, within=30, what="the agent's caches")
        await eventually(lambda: (tmp / "run" / "spiderpool.sock").exists(), within=30, what="the agent's socket")
        yield agent
    finally:
        agent.stop.set()
        await task


async def test_doctor_asks_each_agent_and_names_a_hung_one_and_a_plugin_put_back(
    apiserver: ApiServer, client: Client, namespace: str, tmp_path: Path
) -> None:
    address = _host_address()
    good, stuck = unique("doctor-node"), unique("doctor-node")
    port = procs.free_port()
    await _install(client, namespace, lease_name=unique("doctor-lease"), agent_port=port)
    labels = {"app.kubernetes.io/name": "spiderpool-agent", "app.kubernetes.io/instance": "spiderpool"}
    nodes: list[tuple[Any, str]] = []
    try:
        for name in (good, stuck):
            await client.create(NODE, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
            nodes.append((NODE, name))
        with hung_listener(address) as hung_port:
            for name, node, p in (("agent-good", good, port), ("agent-stuck", stuck, hung_port)):
                container = {
                    "name": "agent",
                    "image": "spiderpool",
                    "command": ["spiderpool-agent", f"--metrics-port={p}"],
                }
                body = {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": name, "namespace": namespace, "labels": labels},
                    "spec": {"nodeName": node, "containers": [container]},
                }
                await _running(client, await client.create(POD, body), address)

            async with running_agent(apiserver, good, address, port, tmp_path) as agent:
                # the endpoint, through the apiserver as doctor asks it
                status = await client.request(
                    "GET", f"/api/v1/namespaces/{namespace}/pods/agent-good:{port}/proxy{STATUS_PATH}"
                )
                assert status["node"] == good
                assert status["socket"]["answers"] is True, status["socket"]
                assert {p["name"]: (p["present"], p["form"]) for p in status["plugins"]} == {
                    "spiderpool": (True, "script"), "veth": (True, "script"), "coordinator": (True, "script"),
                }  # fmt: skip
                assert status["pluginReinstalls"]["count"] == 0

                # a plugin deleted from the node: the agent puts it back, and remembers
                (tmp_path / "bin" / "veth").unlink()
                await eventually(lambda: agent.selfcheck.history.count > 0, within=30, what="the plugin put back")
                assert (tmp_path / "bin" / "veth").exists()

                code, checks, _ = await doctor(apiserver, namespace)
                assert code == 1
                ok = checks[f"agent {good}"]
                assert ok["status"] == "OK", ok
                assert ok["detail"].endswith("spiderpool.sock answers")
                put_back = checks[f"plugins {good}"]
                assert put_back["status"] == "WARN", put_back
                assert put_back["detail"].startswith(
                    f"veth went missing from {tmp_path / 'bin'} on {good} and was put back"
                )
                hung = checks[f"agent {stuck}"]
                assert hung["status"] == "FAIL"
                assert "did not answer GET /v1/debug/status" in hung["detail"]
                assert "within 3s: the agent is stopped or hung" in hung["detail"]
                assert f"kubectl -n {namespace} delete pod agent-stuck" in hung["fix"]
    finally:
        await _delete_all(client, nodes)
