"""``spiderpool-agent``: one per node; serves IP allocation to the ``spiderpool`` CNI plugin.

HTTP+JSON on a unix socket (default ``/var/run/spidernet/spiderpool.sock``, mode 0600), paths in
the spirit of upstream's: ``GET /v1/ipam/healthy``, ``POST``/``DELETE /v1/ipam/ip``,
``POST /v1/ipam/check``, ``POST /v1/ipam/gc``, the veth plugin's ``/v1/coordinator/*``, and the
static relay's ``POST /v1/cni/exec`` (spiderpool.agent.relay). Metrics and health on TCP (default
5711). On start it installs the plugins into the node's CNI bin dir.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import struct
import sys
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from spiderpool import config, logs
from spiderpool.agent import relay, requests
from spiderpool.agent.coordinator import Coordinator
from spiderpool.agent.debug import PodAddresses
from spiderpool.agent.errors import IPAMError
from spiderpool.agent.install import install_plugins, missing_plugins
from spiderpool.agent.ipam import IPAM
from spiderpool.agent.metrics import PLUGIN_REINSTALLS, REQUEST_ERRORS
from spiderpool.agent.records import pool_scoped
from spiderpool.agent.selfcheck import SelfCheck
from spiderpool.agent.settings import Settings
from spiderpool.k8s.cache import ScopedCache, WatchCache
from spiderpool.k8s.client import ApiError, Client
from spiderpool.k8s.kinds import COORDINATOR, IPALLOCATION, IPPOOL, NAMESPACE, NODE, POD, RESERVEDIP, SUBNET
from spiderpool.net import veth

log = logging.getLogger("spiderpool.agent")
#: connections the socket queues before the plugin's connect must wait (the kernel caps it at
#: net.core.somaxconn, 4096 by default)
SOCKET_BACKLOG = 4096


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="spiderpool-agent", description=__doc__)
    p.add_argument("--kubeconfig", help="kubeconfig path (default: $KUBECONFIG, then the service account)")
    p.add_argument("--node-name", default=os.environ.get("NODE_NAME", socket.gethostname()))
    p.add_argument("--socket", default="/var/run/spidernet/spiderpool.sock")
    p.add_argument("--cni-bin-dir", default="/opt/cni/bin", help="where to install the plugin executables")
    p.add_argument("--python", default=sys.executable, help="interpreter the installed plugins run with")
    p.add_argument(
        "--plugin-relay",
        default=os.environ.get("SPIDERPOOL_PLUGIN_RELAY"),
        help="install this static relay as every plugin (any node; see spiderpool.cni.relay) instead of"
        " Python scripts run by --python",
    )
    p.add_argument("--metrics-bind", default="0.0.0.0")
    p.add_argument("--metrics-port", type=int, default=5711)
    p.add_argument("--disable-ipv4", action="store_true")
    p.add_argument("--disable-ipv6", action="store_true")
    p.add_argument(
        "--disable-auto-pool",
        action="store_true",
        help="no auto-pools for applications naming a SpiderSubnet (conf.yml enableAutoPoolForApplication: false)",
    )
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
    p.add_argument(
        "--ip-reuse-cooldown",
        type=float,
        default=5.0,
        help="seconds a released address waits before it is handed out again (its last pod's link may still"
        " carry it: the runtime's DEL frees the address before the link is deleted)",
    )
    p.add_argument(
        "--record-watch",
        choices=("pools", "all"),
        default="pools",
        help="which allocation records the agent watches: those of the pools it serves (its cost follows"
        " them), or every record in the cluster (each agent then decodes every allocation)",
    )
    p.add_argument(
        "--plugin-check-interval",
        type=float,
        default=10.0,
        help="seconds between checks that the installed plugins are still there (they are put back if not)",
    )
    p.add_argument(
        "--proc-dir",
        default="/proc",
        help="a writable procfs for pods' sysctls (a container that is not privileged: the host's /proc mounted)",
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
            "disable_auto_pool": None if c.enable_auto_pool is None else not c.enable_auto_pool,
            "cluster_network": c.cluster_network or None,
        },
    )


def _prepare_socket(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)  # a stale socket of a previous run
    return path


def _failure(code: int, msg: str, status: int, details: str = "") -> tuple[int, dict[str, Any]]:
    return status, {"code": code, "msg": msg, "details": details}


def _error(code: int, msg: str, status: int, details: str = "") -> web.Response:
    status, reply = _failure(code, msg, status, details)
    return web.json_response(reply, status=status)


#: a request body that was not JSON
BAD_JSON = object()


def peer_uid(request: web.Request) -> int | None:
    """The uid of the process at the other end of the unix socket (SO_PEERCRED), if known."""
    sock = request.transport.get_extra_info("socket") if request.transport is not None else None
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    _, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return int(uid)


@web.middleware
async def root_only(request: web.Request, handler: Any) -> web.StreamResponse:
    """The socket is 0600 root's; should its mode ever be widened (a hostPath shared with another
    pod, a wrong umask), a caller other than root (or the agent's own user) is still refused: an
    allocation is the runtime's."""
    uid = peer_uid(request)
    if uid is not None and uid not in (0, os.getuid()):  # (the agent's own user: an agent run without root)
        log.warning("socket request refused path=%s uid=%d", request.path, uid)
        return _error(100, f"spiderpool-agent serves root only (the runtime's CNI calls); uid {uid} refused", 403)
    return await handler(request)  # type: ignore[no-any-return]


class Agent:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        veth.PROC_DIR = args.proc_dir
        self.client = Client.from_kubeconfig(args.kubeconfig, field_manager="spiderpool-agent")
        pools, reserved = WatchCache(self.client, IPPOOL), WatchCache(self.client, RESERVEDIP)
        records: WatchCache | ScopedCache = (
            WatchCache(self.client, IPALLOCATION)
            if args.record_watch == "all"
            else pool_scoped(self.client, args.node_name)
        )
        # the pods of this node, every namespace and node: an allocation reads no API object
        pods = WatchCache(self.client, POD, "Pod", fields={"spec.nodeName": args.node_name})
        namespaces = WatchCache(self.client, NAMESPACE, "Namespace")
        # every node: their names and labels split each pool among the agents (see ipam.allocate)
        nodes = WatchCache(self.client, NODE, "Node")
        subnets, coordinators = WatchCache(self.client, SUBNET), WatchCache(self.client, COORDINATOR)
        self.caches = [pools, reserved, records, pods, namespaces, nodes, subnets, coordinators]
        self.ipam = IPAM(
            self.client,
            Settings(
                node=args.node_name,
                ipv4=not args.disable_ipv4,
                ipv6=not args.disable_ipv6,
                cluster_network=args.cluster_network,
                auto_pool=not args.disable_auto_pool,
                auto_pool_wait=args.auto_pool_wait,
                conflict_quarantine=args.ip_conflict_quarantine,
                reuse_cooldown=args.ip_reuse_cooldown,
            ),
            pools=pools,
            reserved=reserved,
            records=records,
            pods=pods,
            namespaces=namespaces,
            nodes=nodes,
            subnets=subnets,
        )
        self.coordinator = Coordinator(
            pods,
            self.ipam.releaser,
            coordinators=coordinators,
            events=self.ipam.allocator.events,
            state_dir=Path(args.socket).parent / "overlay",
        )
        self.stop = asyncio.Event()
        #: what a relayed call may ask (method, path) -> (route, action), as the socket's routes
        self.routes: dict[tuple[str, str], tuple[str, Any]] = {
            ("POST", "/v1/ipam/ip"): ("allocate", self.ipam.allocator.allocate),
            ("DELETE", "/v1/ipam/ip"): ("release", self.ipam.releaser.release),
            ("POST", "/v1/ipam/check"): ("check", self._check),
            ("POST", "/v1/ipam/gc"): ("gc", self.ipam.releaser.gc),
            ("POST", "/v1/coordinator/add"): ("coordinator_add", self.coordinator.add),
            ("POST", "/v1/coordinator/del"): ("coordinator_del", self.coordinator.delete),
            ("POST", "/v1/coordinator/check"): ("coordinator_check", self.coordinator.check),
        }
        self.relay = relay.Relay(self.dispatch)
        # GET /v1/debug/status (kubectl spiderpool doctor); remembers the plugins put back
        self.selfcheck = SelfCheck(
            node=args.node_name,
            socket_path=args.socket,
            bin_dir=Path(args.cni_bin_dir),
            check_interval=args.plugin_check_interval,
            ready=self.ipam.ready,
        )

    async def answer(self, route: str, body: Any, action: Any) -> tuple[int, dict[str, Any]]:
        """Run one plugin request (``body``: its parsed JSON; ``BAD_JSON``: it was not JSON): the
        HTTP status and the reply, a CNI error (code, msg, details) when it failed."""
        if not self.ipam.ready():
            return _failure(11, "spiderpool-agent is starting: caches not synced yet", 503)
        if body is BAD_JSON:
            return _failure(6, "request body is not JSON", 400)
        try:
            checked = requests.check(route, body)
        except IPAMError as err:
            return _failure(err.code, err.msg, err.http, err.details)
        try:
            return 200, await action(checked)
        except IPAMError as err:
            return _failure(err.code, err.msg, err.http, err.details)
        except ApiError as exc:
            return _failure(11, f"Kubernetes API error, try again: {exc}", 503)
        except (TimeoutError, OSError, aiohttp.ClientError) as exc:
            return _failure(11, f"Kubernetes API unreachable, try again: {exc}", 503)
        except Exception as exc:  # a bug: the runtime gets a CNI error (and retries), the log the traceback
            REQUEST_ERRORS.labels(route).inc()
            log.exception("request failed route=%s", route)
            return _failure(
                100, f"spiderpool-agent failed on this request ({type(exc).__name__}); please report it", 500
            )

    async def _guard(self, request: web.Request, route: str, action: Any) -> web.Response:
        try:
            body = json.loads(await request.read())
        except (ValueError, RecursionError):  # (UnicodeDecodeError is a ValueError)
            body = BAD_JSON
        status, reply = await self.answer(route, body, action)
        return web.json_response(reply, status=status)

    async def dispatch(self, method: str, path: str, body: Any) -> tuple[int, dict[str, Any]]:
        """A relayed call's request to this agent (spiderpool.agent.relay), answered as its route
        would answer it over the socket."""
        if (method, path) == ("GET", "/v1/ipam/healthy"):
            if not self.ipam.ready():
                return _failure(11, "spiderpool-agent is starting: caches not synced yet", 503)
            return 200, {"ok": True, "node": self.args.node_name}
        route = self.routes.get((method, path))
        if route is None:
            return _failure(4, f"no route {method} {path}", 404)
        return await self.answer(route[0], body, route[1])

    async def healthy(self, _: web.Request) -> web.Response:
        if not self.ipam.ready():
            return _error(11, "spiderpool-agent is starting: caches not synced yet", 503)
        return web.json_response({"ok": True, "node": self.args.node_name})

    async def allocate(self, request: web.Request) -> web.Response:
        return await self._guard(request, "allocate", self.ipam.allocator.allocate)

    async def release(self, request: web.Request) -> web.Response:
        return await self._guard(request, "release", self.ipam.releaser.release)

    async def _check(self, body: dict[str, Any]) -> dict[str, Any]:
        self.ipam.releaser.check(body)
        return {"ok": True}

    async def check(self, request: web.Request) -> web.Response:
        return await self._guard(request, "check", self._check)

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

    def _install(self) -> list[Path]:
        a = self.args
        return install_plugins(
            Path(a.cni_bin_dir),
            python=a.python,
            socket_path=a.socket,
            relay=Path(a.plugin_relay) if a.plugin_relay else None,
        )

    async def _keep_plugins(self) -> None:
        """Put the plugins back when they go from the node's bin dir: without them every ADD and DEL
        of the node fails (pods stuck creating, or terminating) until somebody notices."""
        while True:
            await asyncio.sleep(self.args.plugin_check_interval)
            try:
                missing = await asyncio.to_thread(missing_plugins, Path(self.args.cni_bin_dir))
                if missing:
                    await asyncio.to_thread(self._install)
                    PLUGIN_REINSTALLS.inc()
                    self.selfcheck.history.reinstalled(missing)
                    log.warning("plugins were missing and are installed again missing=%s", ",".join(missing))
            except OSError as exc:  # a full or read-only disk: say so, and try again next time
                self.selfcheck.history.failed(repr(exc))
                log.error("checking the installed plugins failed error=%r", exc)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        a = self.args
        installed = self._install()
        log.info("plugins installed dir=%s files=%s", a.cni_bin_dir, ",".join(p.name for p in installed))
        tasks = [asyncio.create_task(c.run()) for c in self.caches]
        tasks.append(asyncio.create_task(self._keep_plugins()))
        tasks.append(asyncio.create_task(self.ipam.endpoints.resync()))

        api = web.Application(middlewares=[root_only])
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
                web.post(relay.PATH, self.relay.handle),
            ]
        )
        sock = _prepare_socket(Path(a.socket))
        runner = web.AppRunner(api, access_log=None)
        await runner.setup()
        # 0600 from the start (no window with the umask's mode): only root, the runtime's CNI calls,
        # may allocate; a deep backlog, so a burst of a thousand plugins queues instead of failing
        old_umask = os.umask(0o177)
        try:
            await web.UnixSite(runner, str(sock), backlog=SOCKET_BACKLOG).start()
        finally:
            os.umask(old_umask)
        os.chmod(sock, 0o600)
        metrics = web.Application()
        metrics.add_routes([web.get("/metrics", self.metrics), web.get("/healthz", self.healthy)])
        # read-only: version, own socket, installed plugins and their reinstalls (kubectl spiderpool doctor)
        metrics.add_routes([web.get("/v1/debug/status", self.selfcheck.handle)])
        # read-only: the addresses in this node's pod namespaces (kubectl spiderpool leaks --node)
        metrics.add_routes([web.get("/v1/debug/addresses", PodAddresses(a.node_name).handle)])
        mrunner = web.AppRunner(metrics, access_log=None)
        await mrunner.setup()
        await web.TCPSite(mrunner, a.metrics_bind, a.metrics_port).start()
        log.info("serving node=%s socket=%s", a.node_name, sock)
        try:
            await self.stop.wait()
            async with asyncio.timeout(10):  # (not wait_for: see retry.wait_event)
                await self.ipam.endpoints.flush()
        finally:
            self.ipam.endpoints.stop()
            for t in tasks:
                t.cancel()
            await runner.cleanup()
            await mrunner.cleanup()
            self.relay.close()
            await self.client.close()
            log.info("agent stopped node=%s", a.node_name)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logs.setup("spiderpool-agent", args.log_level)
    asyncio.run(Agent(args).run())


if __name__ == "__main__":
    main()
