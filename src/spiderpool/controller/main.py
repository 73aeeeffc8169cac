"""``spiderpool-controller``: admission webhooks (every replica) and reconcilers (the leader only).

Ports follow upstream: 5720 health (``/healthz``, ``/readyz``), 5721 metrics, 5722 webhook (TLS).
The webhook socket is opened with SO_REUSEPORT, so replicas on one host (as in the lab) can share
the port and the kernel spreads connections over whichever replicas are alive.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import logging
import math
import os
import secrets
import signal
import socket
import ssl
import tempfile
from dataclasses import replace
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from spiderpool import config, logs
from spiderpool.controller import admission, certs, webhook
from spiderpool.controller.apps import AppPoolReconciler
from spiderpool.controller.cache import ObjectCache
from spiderpool.controller.coordinator import CoordinatorReconciler
from spiderpool.controller.gc import GarbageCollector
from spiderpool.controller.leader import LeaderElector
from spiderpool.controller.multusconfig import MultusConfigReconciler
from spiderpool.controller.status import StatusReconciler
from spiderpool.ipam import gc
from spiderpool.k8s.client import ApiError, Client
from spiderpool.k8s.kinds import MUTATING_WEBHOOKS, VALIDATING_WEBHOOKS
from spiderpool.k8s.retry import TRANSIENT, until, wait_event

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
    p.add_argument(
        "--tls-method",
        choices=("auto", "certmanager", "provided"),
        default="auto",
        help="auto: make and renew the certificate in --webhook-secret; certmanager/provided: only read it",
    )
    p.add_argument("--cert-validity-days", type=float, default=365.0, help="lifetime of a certificate made here (auto)")
    p.add_argument(
        "--cert-check-interval", type=float, default=600.0, help="seconds between checks for a renewed certificate"
    )
    p.add_argument(
        "--webhook-check-interval",
        type=float,
        default=30.0,
        help="seconds between checks that the webhook configurations still carry our CA bundle",
    )
    p.add_argument("--cluster-domain", default="cluster.local")
    p.add_argument("--cert-dns-name", action="append", default=[], help="an extra DNS name of the certificate")
    p.add_argument("--cert-ip", action="append", default=[], help="an extra IP address of the certificate")
    p.add_argument("--health-bind", default="0.0.0.0")
    p.add_argument("--health-port", type=int, default=5720)
    p.add_argument("--metrics-port", type=int, default=5721)
    p.add_argument("--disable-ipv4", action="store_true", help="reject IPv4 pools and subnets")
    p.add_argument("--disable-ipv6", action="store_true", help="reject IPv6 pools and subnets")
    p.add_argument(
        "--disable-auto-pool",
        action="store_true",
        help="no auto-pools for applications naming a SpiderSubnet (conf.yml enableAutoPoolForApplication: false)",
    )
    p.add_argument(
        "--auto-pool-extra-ips",
        type=int,
        default=1,
        help="spare IPs of an auto-pool whose application sets no ipam.spidernet.io/ippool-ip-number (replicas + N)",
    )
    p.add_argument("--gc-disabled", action="store_true", help="no garbage collection of IPs (ipam.gc.enabled=false)")
    p.add_argument(
        "--gc-keep-terminating",
        action="store_true",
        help="a terminating pod keeps its IPs until it is gone, however long that takes",
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
        "--gc-zombie-on-not-ready-node",
        action="store_true",
        help="a terminating pod no StatefulSet owns, on a NotReady node, loses its IPs once its grace period is"
        " over (upstream's zombieOnNotReadyNode; the default waits until the node is lost: --gc-stale-lease)",
    )
    p.add_argument(
        "--pool-finalizer-grace",
        type=float,
        default=10.0,
        help="seconds a deleted SpiderIPPool must hold no IP before its finalizer comes off",
    )
    p.add_argument(
        "--controller-user",
        action="append",
        default=[],
        help="user name(s) this controller writes as (default: asked of the apiserver); only they may"
        " change an auto-pool's IPs",
    )
    p.add_argument(
        "--cni-conf-dir",
        default="/etc/cni/net.d",
        help="the node's CNI configuration directory, read for a SpiderCoordinator's podCIDRType auto",
    )
    p.add_argument("--log-level", default=None)
    return config.parse_args(
        p,
        argv,
        lambda c: {
            "disable_ipv4": None if c.enable_ipv4 is None else not c.enable_ipv4,
            "disable_ipv6": None if c.enable_ipv6 is None else not c.enable_ipv6,
            "disable_auto_pool": None if c.enable_auto_pool is None else not c.enable_auto_pool,
            "auto_pool_extra_ips": c.auto_pool_extra_ips,
        },
    )


def _cert_names(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    svc, ns = args.webhook_service, args.namespace
    dns = [svc, f"{svc}.{ns}", f"{svc}.{ns}.svc", f"{svc}.{ns}.svc.{args.cluster_domain}", "localhost"]
    return [*dns, *args.cert_dns_name], ["127.0.0.1", *args.cert_ip]


class Controller:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.client = Client.from_kubeconfig(args.kubeconfig, field_manager="spiderpool-controller")
        self.cache = ObjectCache(self.client)
        self.settings = admission.Settings(enable_ipv4=not args.disable_ipv4, enable_ipv6=not args.disable_ipv6)
        self.stop = asyncio.Event()
        self.serving = False
        self.served: certs.ServingCert | None = None  # what the webhook configurations must trust
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
            user = await self.client.whoami()
        except (ApiError, OSError, aiohttp.ClientError) as exc:
            user = ""
            log.warning("cannot tell this controller's user; auto-pools are not protected error=%s", exc)
        if user:
            log.info("writing as user=%s (only it may change auto-pools' IPs)", user)
        return frozenset([user]) if user else frozenset()

    async def _load_cert(self) -> certs.ServingCert | None:
        a = self.args
        if a.tls_method == "auto":
            dns, ips = _cert_names(a)
            validity = datetime.timedelta(days=a.cert_validity_days)
            return await certs.ensure(
                self.client, namespace=a.namespace, name=a.webhook_secret, dns=dns, ips=ips, validity=validity
            )
        return await certs.read(self.client, namespace=a.namespace, name=a.webhook_secret)

    async def _serving_cert(self) -> certs.ServingCert:
        """The certificate to serve; with certmanager/provided, wait (loudly) for its Secret."""
        a = self.args
        found = await until(
            self._load_cert,
            what=f"the webhook certificate in secret {a.namespace}/{a.webhook_secret} (tls method {a.tls_method});"
            " is its issuer ready?",
            log=log,
            stop=self.stop,
            errors=(ApiError,),
        )
        if found is None:
            raise SystemExit("stopped while waiting for the webhook certificate")
        return found

    async def _register(self, ca_pem: bytes, service: tuple[str, str, int] | None) -> None:
        """Write the CA bundle into the webhook configurations (the chart creates them; a pod can
        start a moment before they exist), retrying with back-off until it is done or we stop."""

        async def attempt() -> bool:
            await webhook.register(self.client, ca_pem, url_base=self.args.webhook_url, service=service)
            return True

        what = f"registering the webhooks in {webhook.CONFIG_NAME} (installed by the chart)"
        await until(attempt, what=what, log=log, stop=self.stop, errors=(ApiError,))

    async def _follow_cert(
        self,
        served: certs.ServingCert,
        ctx: ssl.SSLContext,
        cert_dir: Path,
        service: tuple[str, str, int] | None,
    ) -> None:
        """Renew (auto) or pick up a renewed certificate; reload it and refresh the CA bundle."""
        a = self.args
        while not self.stop.is_set():
            # the next check: the interval, or sooner when the served certificate is due (a replica
            # that started with a certificate another replica made must not outlive it)
            due = (served.renew_at() - datetime.datetime.now(datetime.UTC)).total_seconds()
            # (past due and not renewed yet, e.g. by cert-manager: look again every 30 s at most)
            wait = min(a.cert_check_interval, due + 1.0 if due > 0 else 30.0)
            if await wait_event(self.stop, max(1.0, wait)):
                return
            try:
                current = await self._load_cert()
                if current is None or current == served:
                    continue
                # the bundle first (it trusts both CAs), then the new certificate for new connections
                await self._register(current.ca_pem, service)
                self.served = current
                crt, key = current.write(cert_dir)
                ctx.load_cert_chain(str(crt), str(key))
                current.export_expiry()
                log.info("webhook certificate reloaded not_after=%s", current.leaf().not_valid_after_utc.isoformat())
                served = current
            except Exception as exc:
                # the next check retries; the certificate served so far stays valid meanwhile
                log.warning("webhook certificate check failed, retrying error=%s", exc)

    async def _keep_bundle(self, service: tuple[str, str, int] | None) -> None:
        """Put the CA bundle back when the webhook configurations lose it (an edit, a tool that
        re-applies them): the apiserver checks our certificate against it, and with the wrong one
        every call fails, which ``failurePolicy: Ignore`` turns into objects admitted unchecked."""
        while not self.stop.is_set():
            if await wait_event(self.stop, self.args.webhook_check_interval):
                return
            try:
                hooks = [
                    h
                    for kind in (MUTATING_WEBHOOKS, VALIDATING_WEBHOOKS)
                    for h in (await self.client.get(kind, webhook.CONFIG_NAME)).get("webhooks") or []
                ]
                current = {base64.b64decode(h.get("clientConfig", {}).get("caBundle") or "") for h in hooks}
                served = self.served
                if served is None:
                    continue
                fixed = [certs.bundle_for(c, served) for c in current or {b""}]
                if any(f is not None for f in fixed):
                    bundle = next(f for f in fixed if f is not None)
                    log.warning("webhook configurations do not trust our certificate; registering its CA again")
                    await self._register(bundle, service)
            except ApiError as exc:
                log.warning("webhook configuration check failed, retrying error=%s", exc)
            except TRANSIENT as exc:
                log.warning("webhook configuration check failed, retrying error=%r", exc)
            except ValueError as exc:  # a caBundle that is not base64
                log.warning("webhook configuration check failed, retrying error=%r", exc)

    async def leading(self) -> None:
        """The leader's reconcilers, each its own task. They run until cancelled; should one end
        (an error, a cancel from outside), the others are stopped and this raises, so that the
        leader elector starts them all again (and counts it)."""
        a = self.args
        status = StatusReconciler(self.client, self.cache, finalizer_grace=a.pool_finalizer_grace)
        apps = AppPoolReconciler(self.client, self.cache, default_extra=a.auto_pool_extra_ips)
        collector = GarbageCollector(
            self.client,
            self.cache,
            gc.Settings(
                stale_lease=a.gc_stale_lease,
                quarantine=a.gc_quarantine,
                min_age=a.gc_min_age,
                terminating_delay=math.inf if a.gc_keep_terminating else a.gc_terminating_delay,
                zombie_on_not_ready_node=a.gc_zombie_on_not_ready_node,
            ),
            scan_interval=a.gc_interval,
        )
        coordinator = CoordinatorReconciler(self.client, cni_conf_dir=a.cni_conf_dir)
        multus = MultusConfigReconciler(self.client)
        loops = {
            "status": status.run(),
            "coordinator": coordinator.run(),
            "multusconfig": multus.run(),
        }
        if a.disable_auto_pool:
            # (the agents refuse the applications' pods, with an event; existing auto-pools stay as they are)
            log.info("auto-pools are disabled (enableAutoPoolForApplication: false): no auto-pool is made or resized")
        else:
            loops["auto-pools"] = apps.run()
        if a.gc_disabled:
            log.info("garbage collection of IPs is disabled (--gc-disabled)")
        else:
            loops["gc"] = collector.run()
        tasks = [asyncio.create_task(coro, name=name) for name, coro in loops.items()]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        ended = next(iter(done))
        why = "cancelled" if ended.cancelled() else repr(ended.exception())
        raise RuntimeError(f"reconciler {ended.get_name()} ended ({why})")

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

        cert = await self._serving_cert()
        cert_dir = Path(tempfile.mkdtemp(prefix="spiderpool-webhook-"))
        crt, key = cert.write(cert_dir)
        ssl_context = webhook.server_ssl(crt, key)
        cert.export_expiry()
        cache_task = asyncio.create_task(self.cache.run())

        self.settings = replace(self.settings, controller_users=await self._own_users())
        hook = web.Application()
        hook.add_routes(webhook.Webhook(self.cache, self.settings).routes())
        runner = web.AppRunner(hook, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, a.webhook_bind, a.webhook_port, ssl_context=ssl_context, reuse_port=True).start()
        runners.append(runner)
        self.serving = True
        service = None if a.webhook_url else (a.namespace, a.webhook_service, a.webhook_service_port)
        await self._register(cert.ca_pem, service)
        self.served = cert
        log.info("serving webhooks port=%d identity=%s", a.webhook_port, a.identity)
        follow = asyncio.create_task(self._follow_cert(cert, ssl_context, cert_dir, service))
        bundle = asyncio.create_task(self._keep_bundle(service))

        try:
            await self.elector.run(self.leading, self.stop)
        finally:
            self.serving = False
            follow.cancel()
            bundle.cancel()
            cache_task.cancel()
            for r in reversed(runners):
                await r.cleanup()
            await self.client.close()
            log.info("controller stopped identity=%s", a.identity)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logs.setup("spiderpool-controller", args.log_level)
    asyncio.run(Controller(args).run())


if __name__ == "__main__":
    main()
