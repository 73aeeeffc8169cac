"""The agent's reads of pods and their surroundings: watch caches first, the API when they lack it.

Also the per-pod lock: an ADD and a DEL of one pod never interleave within an agent.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast

from spiderpool.agent.errors import IPAMError
from spiderpool.ipam.autopool import APP_KINDS, App
from spiderpool.k8s.cache import WatchCache
from spiderpool.k8s.client import ApiError, Client
from spiderpool.k8s.kinds import JOB, POD, REPLICASET, Kind

#: ReplicaSets and Jobs whose top controller is remembered (least recently used out)
OWNERS_MAX = 4096


@dataclass
class PodView:
    obj: dict[str, Any]
    owner_kind: str = ""
    owner_name: str = ""
    owner_uid: str = ""

    @property
    def meta(self) -> dict[str, Any]:
        return cast(dict[str, Any], self.obj["metadata"])

    @property
    def uid(self) -> str:
        return str(self.meta["uid"])

    @property
    def key(self) -> str:
        return f"{self.meta['namespace']}/{self.meta['name']}"

    def alive(self) -> bool:
        phase = self.obj.get("status", {}).get("phase")
        return not self.meta.get("deletionTimestamp") and phase not in ("Succeeded", "Failed")


class PodLocks:
    """One lock per pod key, dropped when nobody holds or waits for it (the map stays small)."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


class Objects:
    def __init__(
        self,
        client: Client,
        *,
        pods: WatchCache | None = None,
        namespaces: WatchCache | None = None,
        nodes: WatchCache | None = None,
    ) -> None:
        self.client = client
        self.pods, self.namespaces, self.nodes = pods, namespaces, nodes
        #: "Kind/ns/name/uid" of a ReplicaSet or Job -> its top controller (kind, name, uid)
        self._owners: OrderedDict[str, tuple[str, str, str]] = OrderedDict()

    async def pod(self, namespace: str, name: str, *, fresh: bool = False) -> PodView | None:
        """The pod from the watch cache, or from the API when asked for ``fresh`` or not cached yet."""
        pod = None if fresh or self.pods is None else self.pods.get(f"{namespace}/{name}")
        if pod is None:
            try:
                pod = await self.client.get(POD, name, namespace)
            except ApiError as exc:
                if exc.code == 404:
                    return None
                raise
        view = PodView(pod)
        for ref in pod["metadata"].get("ownerReferences") or []:
            if ref.get("controller"):
                view.owner_kind, view.owner_name = str(ref["kind"]), str(ref["name"])
                view.owner_uid = str(ref.get("uid", ""))
        return view

    async def get(self, cache: WatchCache | None, kind: Kind, name: str) -> dict[str, Any]:
        """A cluster-scoped object (a namespace, a node); an empty one if it does not exist."""
        obj = cache.get(name) if cache is not None else None
        if obj is None:
            try:
                obj = await self.client.get(kind, name)
            except ApiError as exc:
                if exc.code != 404:
                    raise
                obj = {"metadata": {"name": name}}
        return obj

    async def top_owner(self, namespace: str, kind: str, name: str, uid: str = "") -> tuple[str, str, str]:
        """The controller above a ReplicaSet (a Deployment) or a Job (a CronJob), if any."""
        if kind not in ("ReplicaSet", "Job"):
            return kind, name, uid
        key = f"{kind}/{namespace}/{name}/{uid}"
        top = self._owners.get(key)
        if top is None:
            parent = await self.client.get(REPLICASET if kind == "ReplicaSet" else JOB, name, namespace)
            top = (kind, name, uid)
            for ref in parent["metadata"].get("ownerReferences") or []:
                if ref.get("controller") and ref.get("kind") in ("Deployment", "CronJob"):
                    top = (str(ref["kind"]), str(ref["name"]), str(ref.get("uid", "")))
            self._owners[key] = top
            while len(self._owners) > OWNERS_MAX:
                self._owners.popitem(last=False)
        self._owners.move_to_end(key)
        return top

    async def app_of(self, pod: PodView) -> App:
        """The application whose auto-pool serves the pod: its top controller."""
        ns = pod.meta["namespace"]
        try:
            kind, name, uid = await self.top_owner(ns, pod.owner_kind, pod.owner_name, pod.owner_uid)
        except ApiError as exc:
            raise IPAMError(
                11,
                f"pod {pod.key}: its {pod.owner_kind} {pod.owner_name} cannot be read: {exc}",
                reason="api_error",
            ) from None
        if kind not in APP_KINDS:
            raise IPAMError(
                7,
                f"pod {pod.key}: the subnet annotations give auto-pools to applications (Deployment, "
                "ReplicaSet, StatefulSet, DaemonSet, Job, CronJob); this pod has none, so name a pool with "
                "ipam.spidernet.io/ippool instead",
                reason="bad_annotation",
                http=400,
            )
        return App(kind, ns, name, uid)
