"""Keeps the SpiderCoordinators' status current (leader only): ``phase``, ``reason``,
``serviceCIDR`` and ``overlayPodCIDR``, which the agents read to route a pod's service and overlay
traffic through its host-side NIC (and to refuse a pod's ADD while NotReady).

Watched: the SpiderCoordinators, the kube-system ConfigMaps kubeadm-config and cilium-config
(each by name: the controller's Role names them), kube-system's kube-controller-manager pods, and
the ServiceCIDRs, Calico IPPools and CiliumPodIPPools when the API serves them (asked of discovery
at start and on every resync: a CNI installed later is picked up, and an absent one is no error).
Any change is a reconcile of every coordinator (in batches), and every ``resync`` seconds one more,
which also re-reads the CNI configuration directory for ``podCIDRType: auto``. The decision itself
is ``controller/cidrs.py``. Status is written through the status subresource, only when it
differs, and with the resourceVersion read (a 409 looks again).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from spiderpool.controller import cidrs
from spiderpool.controller.status import STATUS_WRITES
from spiderpool.controller.workqueue import WorkQueue
from spiderpool.k8s.cache import WatchCache
from spiderpool.k8s.client import ApiError, Client
from spiderpool.k8s.kinds import CALICO_IPPOOL, CILIUM_POD_IPPOOL, CONFIGMAP, COORDINATOR, POD, SERVICECIDR, Kind

log = logging.getLogger(__name__)

KUBE_SYSTEM = "kube-system"
KUBEADM_CONFIG = "kubeadm-config"
CILIUM_CONFIG = "cilium-config"
KCM_LABELS = {"component": "kube-controller-manager"}
RESYNC_SECONDS = 60.0
#: how often the CNI configuration directory is looked at for changes
CNI_DIR_POLL = 3.0
BATCH_SECONDS = 0.5
#: a CNI configuration larger than this is not one
MAX_CNI_FILE = 1 << 20
#: the APIs that may not be served, watched only while they are
OPTIONAL = (SERVICECIDR, CALICO_IPPOOL, CILIUM_POD_IPPOOL)


def read_cni_dir(directory: Path) -> dict[str, Any]:
    """The CNI configurations of ``directory``: file name -> parsed JSON, or None when a file
    cannot be read or parsed. A missing directory has none."""
    out: dict[str, Any] = {}
    try:
        paths = sorted(p for p in directory.iterdir() if p.name.endswith(cidrs.CNI_SUFFIXES))
    except OSError:
        return out
    for path in paths:
        try:
            with path.open("rb") as f:
                raw = f.read(MAX_CNI_FILE + 1)
            out[path.name] = json.loads(raw) if len(raw) <= MAX_CNI_FILE else None
        except (OSError, ValueError):
            out[path.name] = None
    return out


async def served(client: Client, kind: Kind) -> bool:
    """Whether the API serves ``kind`` (discovery of its group version)."""
    base = f"/api/{kind.version}" if not kind.group else f"/apis/{kind.group}/{kind.version}"
    try:
        doc = await client.request("GET", base)
    except ApiError as exc:
        if exc.code in (404, 503):  # (503: an aggregated API that is down)
            return False
        raise
    return any(r.get("name") == kind.plural for r in (doc or {}).get("resources") or [])


class CoordinatorReconciler:
    def __init__(
        self,
        client: Client,
        *,
        cni_conf_dir: str | Path = "/etc/cni/net.d",
        resync: float = RESYNC_SECONDS,
        batch_seconds: float = BATCH_SECONDS,
    ) -> None:
        self.client = client
        self.cni_conf_dir = Path(cni_conf_dir)
        self.resync = resync
        self.queue = WorkQueue("coordinator", batch_seconds)
        self.coordinators = WatchCache(client, COORDINATOR)
        # (by name: the controller may read only these two ConfigMaps of kube-system)
        self.kubeadm = WatchCache(client, CONFIGMAP, namespace=KUBE_SYSTEM, fields={"metadata.name": KUBEADM_CONFIG})
        self.cilium_config = WatchCache(
            client, CONFIGMAP, namespace=KUBE_SYSTEM, fields={"metadata.name": CILIUM_CONFIG}
        )
        self.kcm = WatchCache(client, POD, namespace=KUBE_SYSTEM, labels=KCM_LABELS)
        #: the optional APIs' caches while served, and their tasks
        self.optional: dict[Kind, tuple[WatchCache, asyncio.Task[None]]] = {}
        self._auto: cidrs.Auto | None = None
        self.coordinators.listeners.append(self._coordinator_changed)
        for cache in (self.kubeadm, self.cilium_config, self.kcm):
            cache.listeners.append(self._source_changed)

    def _coordinator_changed(self, _kind: str, key: str, _obj: dict[str, Any]) -> None:
        self.queue.add(("SpiderCoordinator", key))

    def _source_changed(self, *_: object) -> None:
        self.enqueue_all()

    def enqueue_all(self) -> None:
        self.queue.add(*(("SpiderCoordinator", name) for name in self.coordinators.items))

    def _base(self) -> tuple[WatchCache, ...]:
        return (self.coordinators, self.kubeadm, self.cilium_config, self.kcm)

    async def _after_sync(self, cache: WatchCache) -> None:
        # an empty list notifies no listener: say it once it is synced
        await cache.synced.wait()
        self.enqueue_all()

    async def discover(self) -> None:
        """Start watching the optional APIs now served, stop watching those no longer served."""
        for kind in OPTIONAL:
            try:
                now = await served(self.client, kind)
            except Exception as exc:  # (the API's trouble: ask again on the next resync)
                log.warning("discovery failed, asking again on the next resync kind=%s error=%s", kind.name, exc)
                continue
            running = self.optional.get(kind)
            if now and running is None:
                cache = WatchCache(self.client, kind)
                cache.listeners.append(self._source_changed)
                task = asyncio.create_task(self._watch(cache), name=f"coordinator-{kind.plural}")
                self.optional[kind] = (cache, task)
                log.info("watching kind=%s (served)", kind.name)
            elif not now and running is not None:
                del self.optional[kind]
                running[1].cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await running[1]
                log.info("stopped watching kind=%s (no longer served)", kind.name)
                self.enqueue_all()

    async def _watch(self, cache: WatchCache) -> None:
        await asyncio.gather(cache.run(), self._after_sync(cache))

    def _synced(self) -> bool:
        caches = [*self._base(), *(c for c, _ in self.optional.values())]
        return all(c.synced.is_set() for c in caches)

    def _items(self, kind: Kind) -> list[dict[str, Any]] | None:
        """The optional API's objects; None while it is not served."""
        running = self.optional.get(kind)
        return None if running is None else list(running[0].items.values())

    def _resolve_auto(self) -> cidrs.Auto:
        auto = cidrs.resolve_auto(read_cni_dir(self.cni_conf_dir))
        if auto != self._auto:
            if auto.source == "no readable CNI configuration":
                log.warning("podCIDRType auto: no readable CNI configuration in %s, taking none", self.cni_conf_dir)
            else:
                log.info("podCIDRType auto resolved type=%s from=%s", auto.type, auto.source)
            self._auto = auto
        return auto

    def inputs(self, coordinator: dict[str, Any], auto: cidrs.Auto | None) -> cidrs.Inputs:
        kubeadm = self.kubeadm.get(f"{KUBE_SYSTEM}/{KUBEADM_CONFIG}")
        cilium = self.cilium_config.get(f"{KUBE_SYSTEM}/{CILIUM_CONFIG}")
        pods = [p for _, p in sorted(self.kcm.items.items())]
        service_cidrs = self._items(SERVICECIDR)
        calico = self._items(CALICO_IPPOOL)
        cilium_pools = self._items(CILIUM_POD_IPPOOL)
        return cidrs.Inputs(
            pod_cidr_type=str((coordinator.get("spec") or {}).get("podCIDRType") or ""),
            auto=auto,
            kubeadm=None if kubeadm is None else cidrs.parse_kubeadm(kubeadm.get("data")),
            kcm=cidrs.parse_kcm(cidrs.pod_argv(p) for p in pods) if pods else None,
            service_cidrs=None if service_cidrs is None else cidrs.live_service_cidrs(service_cidrs),
            calico_pools=None if calico is None else cidrs.calico_cidrs(calico),
            cilium_config=None if cilium is None else cidrs.cilium_config_cidrs(cilium.get("data")),
            cilium_pools=None if cilium_pools is None else cidrs.cilium_pool_cidrs(cilium_pools),
        )

    async def reconcile(self, _kind: str, name: str) -> None:
        obj = self.coordinators.get(name)
        if obj is None or not self._synced():
            return  # gone; or a cache is still listing (its sync enqueues us again)
        spec_type = str((obj.get("spec") or {}).get("podCIDRType") or "auto")
        auto = await asyncio.to_thread(self._resolve_auto) if spec_type == "auto" else None
        decision = cidrs.decide(self.inputs(obj, auto))
        want = decision.status()
        if (obj.get("status") or {}) == want:
            return
        body = {**obj, "status": want}  # with its resourceVersion: a compare-and-swap
        try:
            updated = await self.client.replace(COORDINATOR, body, subresource="status")
        except ApiError as exc:
            if exc.code == 404:
                return
            if exc.code == 409:  # changed since our cache saw it: its watch event brings it back
                self.queue.add_after(("SpiderCoordinator", name), 1.0)
                return
            raise
        self.coordinators.apply_local(updated)
        STATUS_WRITES.labels("SpiderCoordinator").inc()
        log.log(
            logging.WARNING if decision.phase == cidrs.NOT_READY else logging.INFO,
            "coordinator status written name=%s phase=%s podCIDRType=%s serviceCIDR=%s overlayPodCIDR=%s reason=%s",
            name,
            decision.phase,
            decision.pod_cidr_type,
            ",".join(decision.service) or "-",
            ",".join(decision.overlay) or "-",
            decision.reason or "-",
        )

    def _cni_signature(self) -> tuple[tuple[str, int, int], ...]:
        try:
            return tuple(
                sorted((e.name, e.stat().st_mtime_ns, e.stat().st_size) for e in os.scandir(self.cni_conf_dir))
            )
        except OSError:
            return ()

    async def _follow_cni_dir(self) -> None:
        """A new first CNI config (a CNI installed, Multus regenerating its file) changes what
        ``auto`` means: look again within seconds, not at the next resync (a stat per file)."""
        seen = self._cni_signature()
        while True:
            await asyncio.sleep(CNI_DIR_POLL)  # (a period: inotify needs more than the stdlib)
            now = await asyncio.to_thread(self._cni_signature)
            if now != seen:
                seen = now
                self.enqueue_all()

    async def _resync(self) -> None:
        while True:
            await asyncio.sleep(self.resync)  # (a period, not a wait for something)
            await self.discover()
            self.enqueue_all()

    async def run(self) -> None:
        tasks = [asyncio.create_task(c.run()) for c in self._base()]
        tasks += [asyncio.create_task(self._after_sync(c)) for c in self._base()]
        try:
            await self.discover()
            tasks.append(asyncio.create_task(self._follow_cni_dir()))
            tasks.append(asyncio.create_task(self._resync()))
            tasks.append(asyncio.create_task(self.queue.run(self.reconcile)))
            # (only these end, and only by an error: then so does this)
            await asyncio.wait(tasks[-3:], return_when=asyncio.FIRST_COMPLETED)
            for t in tasks[-3:]:
                if t.done():
                    t.result()
        finally:
            tasks += [t for _, t in self.optional.values()]
            self.optional.clear()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
