"""``spiderpool-controller``: admission webhooks (every replica) and reconcilers (the leader only).

Ports follow upstream: 5720 health (``/healthz``, ``/readyz``), 5721 metrics, 5722 webhook (TLS).
The webhook socket is opened with SO_REUSEPORT, so replicas on one host (as in the lab) can share
the port and the kernel spreads connections over whichever replicas are alive.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import signal
import socket
import tempfile
from dataclasses import replace
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from spiderpool import logs
from spiderpool.controller import admission, certs, webhook
from spiderpool.controller.apps import AppPoolReconciler
from spiderpool.controller.cache import ObjectCache
from spiderpool.controller.gc import GarbageCollector
from spiderpool.controller.leader import LeaderElector
from spiderpool.controller.status import StatusReconciler
from spiderpool.ipam import gc
from spiderpool.k8s.client import async_client
from spiderpool.k8s.rest import ApiError, Rest

log = logging.getLogger("spiderpool.controller")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="spiderpool-controller", description=__doc__)
    p.add_argument("--kubeconfig", help="kubeconfig path (default: $KUBECONFIG, then the service account)")
    p.add_argument(
        "--namespace",
        default=os.environ.get("SPIDERPOOL_NAMESPACE", "kube-system"),
        help="namespace of the leader Lease and the webhook certificate Secret",
    )
    p.add_argument(
        "--identity",
        default=socket.gethostname(),
        help="leader election name (the pod name); each start adds '_<random>' to it",
    )
    p.add_argument("--lease-name", default="spiderpool-controller")
    p.add_argument("--lease-duration", type=float, default=15.0)
    p.add_argument("--renew-deadline", type=float, default=10.0)
    p.add_argument("--retry-period", type=float, default=2.0)
    p.add_argument("--webhook-bind", default="0.0.0.0")
    p.add_argument("--webhook-port", type=int, default=5722)
    p.add_argument("--webhook-url", help="register the webhooks by URL, e.g. https://127.0.0.1:5722")
    p.add_argument(
        "--webhook-service",
        default="spiderpool-controller",
        help="register the webhooks through this Service (in --namespace) when no URL is given",
    )
    p.add_argument("--webhook-service-port", type=int, default=5722)
    p.add_argument("--webhook-secret", default="spiderpool-controller-webhook")
    p.add_argument("--health-bind", default="0.0.0.0")
    p.add_argument("--health-port", type=int, default=5720)
    p.add_argument("--metrics-port", type=int, default=5721)
    p.add_argument("--disable-ipv4", action="store_true", help="reject IPv4 pools and subnets")
    p.add_argument("--disable-ipv6", action="store_true", help="reject IPv6 pools and subnets")
    p.add_argument(
        "--auto-pool-extra-ips",
        type=int,
        default=1,
        help="spare IPs of an auto-pool whose application sets no ipam.spidernet.io/ippool-ip-number (replicas + N)",
    )
    p.add_argument("--gc-interval", type=float, default=60.0, help="seconds between full scans of the records")
    p.add_argument(
        "--gc-quarantine",
        type=float,
        default=60.0,
        help="seconds an IP taken from a pod that may still run is held for nobody",
    )
    p.add_argument("--gc-stale-lease", type=float, default=300.0, help="a node whose Lease is older than this is lost")
    p.add_argument(
        "--gc-min-age", type=float, default=30.0, help="a record younger than this is never judged by a missing pod"
    )
    p.add_argument(
        "--gc-terminating-delay",
        type=float,
        default=0.0,
        help="extra seconds after a terminating pod's deletion time before its stopped containers free its IPs",
    )
    p.add_argument(
        "--controller-user",
        action="append",
        default=[],
        help="user name(s) this controller writes as (default: asked of the apiserver); only they may"
        " change an auto-pool's IPs",
    )
    p.add_argument("--log-level", default=None)
    return p.parse_args(argv)


def _cert_names(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    svc, ns = args.webhook_service, args.namespace
    dns = [svc, f"{svc}.{ns}", f"{svc}.{ns}.svc", f"{svc}.{ns}.svc.cluster.local", "localhost"]
    return dns, ["127.0.0.1"]


class Controller:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.client = async_client(args.kubeconfig, field_manager="spiderpool-controller")
        self.rest = Rest.from_kubeconfig(args.kubeconfig, field_manager="spiderpool-controller")
        self.cache = ObjectCache(self.rest)
        self.settings = admission.Settings(enable_ipv4=not args.disable_ipv4, enable_ipv6=not args.disable_ipv6)
        self.stop = asyncio.Event()
        self.serving = False
        self.elector = LeaderElector(
            self.client,
            name=args.lease_name,
            namespace=args.namespace,
            # a name per process start (as kube-controller-manager's hostname_uuid): a replica that
            # restarts after a crash must not take over the Lease its previous life held
            identity=f"{args.identity}_{secrets.token_hex(4)}",
            lease_duration=args.lease_duration,
            renew_deadline=args.renew_deadline,
            retry_period=args.retry_period,
        )

    async def healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(self, _: web.Request) -> web.Response:
        if self.serving and self.cache.is_synced():
            return web.Response(text="ok")
        return web.Response(status=503, text="webhook not serving or caches not synced")

    async def metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _own_users(self) -> frozenset[str]:
        """Who this controller writes as: the webhook lets only that user change an auto-pool's IPs."""
        if self.args.controller_user:
            return frozenset(self.args.controller_user)
        try:
            user = await self.rest.whoami()
        except (ApiError, OSError, aiohttp.ClientError) as exc:
            user = ""
            log.warning("cannot tell this controller's user; auto-pools are not protected error=%s", exc)
        if user:
            log.info("writing as user=%s (only it may change auto-pools' IPs)", user)
        return frozenset([user]) if user else frozenset()

    async def leading(self) -> None:
        status = StatusReconciler(self.client, self.cache)
        apps = AppPoolReconciler(self.rest, self.cache, default_extra=self.args.auto_pool_extra_ips)
        a = self.args
        collector = GarbageCollector(
            self.rest,
            self.cache,
            gc.Settings(
                stale_lease=a.gc_stale_lease,
                quarantine=a.gc_quarantine,
                min_age=a.gc_min_age,
                terminating_delay=a.gc_terminating_delay,
            ),
            scan_interval=a.gc_interval,
        )
        await asyncio.gather(status.run(), apps.run(), collector.run())

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        a = self.args
        runners: list[web.AppRunner] = []

        health = web.Application()
        health.add_routes([web.get("/healthz", self.healthz), web.get("/readyz", self.readyz)])
        metrics = web.Application()
        metrics.add_routes([web.get("/metrics", self.metrics)])
        for app, port in ((health, a.health_port), (metrics, a.metrics_port)):
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, a.health_bind, port).start()
            runners.append(runner)

        dns, ips = _cert_names(a)
        cert = await certs.ensure(self.client, namespace=a.namespace, name=a.webhook_secret, dns=dns, ips=ips)
        cert_dir = Path(tempfile.mkdtemp(prefix="spiderpool-webhook-"))
        crt, key = cert.write(cert_dir)
        cache_task = asyncio.create_task(self.cache.run())

        self.settings = replace(self.settings, controller_users=await self._own_users())
        hook = web.Application()
        hook.add_routes(webhook.Webhook(self.cache, self.settings).routes())
        runner = web.AppRunner(hook, access_log=None)
        await runner.setup()
        await web.TCPSite(
            runner, a.webhook_bind, a.webhook_port, ssl_context=webhook.server_ssl(crt, key), reuse_port=True
        ).start()
        runners.append(runner)
        self.serving = True
        service = None if a.webhook_url else (a.namespace, a.webhook_service, a.webhook_service_port)
        await webhook.register(self.client, cert.ca_pem, url_base=a.webhook_url, service=service)
        log.info("serving webhooks port=%d identity=%s", a.webhook_port, a.identity)

        try:
            await self.elector.run(self.leading, self.stop)
        finally:
            self.serving = False
            cache_task.cancel()
            for r in reversed(runners):
                await r.cleanup()
            await self.client.close()
            await self.rest.close()
            log.info("controller stopped identity=%s", a.identity)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logs.setup("spiderpool-controller", args.log_level)
    asyncio.run(Controller(args).run())


if __name__ == "__main__":
    main()
