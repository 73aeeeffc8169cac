"""``spiderpool-agent``: one per node; serves IP allocation to the ``spiderpool`` CNI plugin.

HTTP+JSON on a unix socket (default ``/var/run/spidernet/spiderpool.sock``, mode 0600), paths in
the spirit of upstream's: ``GET /v1/ipam/healthy``, ``POST``/``DELETE /v1/ipam/ip``,
``POST /v1/ipam/check``, ``POST /v1/ipam/gc``. Metrics and health on TCP (default 5711).
On start it installs the plugin into the node's CNI bin dir.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from spiderpool import config, logs
from spiderpool.agent import requests
from spiderpool.agent.coordinator import Coordinator
from spiderpool.agent.errors import IPAMError
from spiderpool.agent.install import install_plugins
from spiderpool.agent.ipam import IPAM
from spiderpool.agent.metrics import REQUEST_ERRORS
from spiderpool.agent.settings import Settings
from spiderpool.k8s.cache import WatchCache
from spiderpool.k8s.client import ApiError, Client
from spiderpool.k8s.kinds import COORDINATOR, IPALLOCATION, IPPOOL, NAMESPACE, NODE, POD, RESERVEDIP, SUBNET

log = logging.getLogger("spiderpool.agent")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="spiderpool-agent", description=__doc__)
    p.add_argument("--kubeconfig", help="kubeconfig path (default: $KUBECONFIG, then the service account)")
    p.add_argument("--node-name", default=os.environ.get("NODE_NAME", socket.gethostname()))
    p.add_argument("--socket", default="/var/run/spidernet/spiderpool.sock")
    p.add_argument("--cni-bin-dir", default="/opt/cni/bin", help="where to install the plugin executables")
    p.add_argument("--python", default=sys.executable, help="interpreter the installed plugins run with")
    p.add_argument(
        "--plugin-bundle",
        default=os.environ.get("SPIDERPOOL_PLUGIN_BUNDLE"),
        help="install self-contained plugin bundles from this folder (nodes without Python; see spiderpool.cni.bundle)",
    )
    p.add_argument("--metrics-bind", default="0.0.0.0")
    p.add_argument("--metrics-port", type=int, default=5711)
    p.add_argument("--disable-ipv4", action="store_true")
    p.add_argument("--disable-ipv6", action="store_true")
    p.add_argument(
        "--auto-pool-wait",
        type=float,
        default=30.0,
        help="seconds an ADD waits for the controller to create or grow the pod's auto-pool",
    )
    p.add_argument(
        "--ip-conflict-quarantine",
        type=float,
        default=600.0,
        help="seconds an address found in use by another host (detectIPConflict) is held for nobody",
    )
    p.add_argument("--cluster-network", default="", help="Multus cluster network (ns/name) for multusName")
    p.add_argument("--log-level", default=None)
    return config.parse_args(
        p,
        argv,
        lambda c: {
            "socket": c.ipam_socket,
            "disable_ipv4": None if c.enable_ipv4 is None else not c.enable_ipv4,
            "disable_ipv6": None if c.enable_ipv6 is None else not c.enable_ipv6,
            "cluster_network": c.cluster_network or None,
        },
    )


def _prepare_socket(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)  # a stale socket of a previous run
    return path


def _error(code: int, msg: str, status: int, details: str = "") -> web.Response:
    return web.json_response({"code": code, "msg": msg, "details": details}, status=status)


class Agent:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.client = Client.from_kubeconfig(args.kubeconfig, field_manager="spiderpool-agent")
        self.caches = [
            WatchCache(self.client, IPPOOL),
            WatchCache(self.client, RESERVEDIP),
            WatchCache(self.client, IPALLOCATION),
            # the pods of this node, every namespace and node: an allocation reads no API object
            WatchCache(self.client, POD, "Pod", fields={"spec.nodeName": args.node_name}),
            WatchCache(self.client, NAMESPACE, "Namespace"),
            # every node: their names and labels split each pool among the agents (see ipam.allocate)
            WatchCache(self.client, NODE, "Node"),
            WatchCache(self.client, SUBNET),
            WatchCache(self.client, COORDINATOR),
        ]
        self.ipam = IPAM(
            self.client,
            Settings(
                node=args.node_name,
                ipv4=not args.disable_ipv4,
                ipv6=not args.disable_ipv6,
                cluster_network=args.cluster_network,
                auto_pool_wait=args.auto_pool_wait,
                conflict_quarantine=args.ip_conflict_quarantine,
            ),
            pools=self.caches[0],
            reserved=self.caches[1],
            records=self.caches[2],
            pods=self.caches[3],
            namespaces=self.caches[4],
            nodes=self.caches[5],
            subnets=self.caches[6],
        )
        self.coordinator = Coordinator(
            self.caches[3],
            self.ipam.releaser,
            coordinators=self.caches[7],
            conflict_quarantine=args.ip_conflict_quarantine,
            events=self.ipam.allocator.events,
            state_dir=Path(args.socket).parent / "overlay",
        )
        self.stop = asyncio.Event()

    async def _guard(self, request: web.Request, route: str, action: Any) -> web.Response:
        if not self.ipam.ready():
            return _error(11, "spiderpool-agent is starting: caches not synced yet", 503)
        try:
            body = requests.check(route, json.loads(await request.read()))
        except (ValueError, RecursionError):  # (UnicodeDecodeError is a ValueError)
            return _error(6, "request body is not JSON", 400)
        except IPAMError as err:
            return _error(err.code, err.msg, err.http, err.details)
        try:
            return web.json_response(await action(body))
        except IPAMError as err:
            return _error(err.code, err.msg, err.http, err.details)
        except ApiError as exc:
            return _error(11, f"Kubernetes API error, try again: {exc}", 503)
        except (TimeoutError, OSError, aiohttp.ClientError) as exc:
            return _error(11, f"Kubernetes API unreachable, try again: {exc}", 503)
        except Exception as exc:  # a bug: the runtime gets a CNI error (and retries), the log the traceback
            REQUEST_ERRORS.labels(route).inc()
            log.exception("request failed route=%s", route)
            return _error(100, f"spiderpool-agent failed on this request ({type(exc).__name__}); please report it", 500)

    async def healthy(self, _: web.Request) -> web.Response:
        if not self.ipam.ready():
            return _error(11, "spiderpool-agent is starting: caches not synced yet", 503)
        return web.json_response({"ok": True, "node": self.args.node_name})

    async def allocate(self, request: web.Request) -> web.Response:
        return await self._guard(request, "allocate", self.ipam.allocator.allocate)

    async def release(self, request: web.Request) -> web.Response:
        return await self._guard(request, "release", self.ipam.releaser.release)

    async def check(self, request: web.Request) -> web.Response:
        async def run(body: dict[str, Any]) -> dict[str, Any]:
            self.ipam.releaser.check(body)
            return {"ok": True}

        return await self._guard(request, "check", run)

    async def gc(self, request: web.Request) -> web.Response:
        return await self._guard(request, "gc", self.ipam.releaser.gc)

    async def coordinator_add(self, request: web.Request) -> web.Response:
        return await self._guard(request, "coordinator_add", self.coordinator.add)

    async def coordinator_del(self, request: web.Request) -> web.Response:
        return await self._guard(request, "coordinator_del", self.coordinator.delete)

    async def coordinator_check(self, request: web.Request) -> web.Response:
        return await self._guard(request, "coordinator_check", self.coordinator.check)

    async def coordinator_config(self, request: web.Request) -> web.Response:
        """upstream's ``GET /v1/coordinator/config``: the cluster's coordinator settings for a pod
        (``?podNamespace=&podName=``), 500 while the SpiderCoordinator is not Synced."""
        if not self.ipam.ready():
            return _error(11, "spiderpool-agent is starting: caches not synced yet", 503)
        try:
            return web.json_response(self.coordinator.config_for(dict(request.query)))
        except IPAMError as err:
            return _error(err.code, err.msg, 500)

    async def metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        a = self.args
        installed = install_plugins(
            Path(a.cni_bin_dir),
            python=a.python,
            socket_path=a.socket,
            bundle_dir=Path(a.plugin_bundle) if a.plugin_bundle else None,
        )
        log.info("plugins installed dir=%s files=%s", a.cni_bin_dir, ",".join(p.name for p in installed))
        tasks = [asyncio.create_task(c.run()) for c in self.caches]
        tasks.append(asyncio.create_task(self.ipam.endpoints.resync()))

        api = web.Application()
        api.add_routes(
            [
                web.get("/v1/ipam/healthy", self.healthy),
                web.post("/v1/ipam/ip", self.allocate),
                web.delete("/v1/ipam/ip", self.release),
                web.post("/v1/ipam/check", self.check),
                web.post("/v1/ipam/gc", self.gc),
                web.post("/v1/coordinator/add", self.coordinator_add),
                web.post("/v1/coordinator/del", self.coordinator_del),
                web.post("/v1/coordinator/check", self.coordinator_check),
                web.get("/v1/coordinator/config", self.coordinator_config),
            ]
        )
        sock = _prepare_socket(Path(a.socket))
        runner = web.AppRunner(api, access_log=None)
        await runner.setup()
        await web.UnixSite(runner, str(sock)).start()
        os.chmod(sock, 0o600)  # only root (the runtime's CNI calls) may allocate
        metrics = web.Application()
        metrics.add_routes([web.get("/metrics", self.metrics), web.get("/healthz", self.healthy)])
        mrunner = web.AppRunner(metrics, access_log=None)
        await mrunner.setup()
        await web.TCPSite(mrunner, a.metrics_bind, a.metrics_port).start()
        log.info("serving node=%s socket=%s", a.node_name, sock)
        try:
            await self.stop.wait()
            await asyncio.wait_for(self.ipam.endpoints.flush(), 10)
        finally:
            self.ipam.endpoints.stop()
            for t in tasks:
                t.cancel()
            await runner.cleanup()
            await mrunner.cleanup()
            await self.client.close()
            log.info("agent stopped node=%s", a.node_name)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logs.setup("spiderpool-agent", args.log_level)
    asyncio.run(Agent(args).run())


if __name__ == "__main__":
    main()
