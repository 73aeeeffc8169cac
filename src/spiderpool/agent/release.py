"""A DEL, and the runtime's CHECK and GC: when a pod's addresses go back, and when they stay.

They stay while the pod lives on (a retried ADD, a new sandbox), and for a StatefulSet pod that
its StatefulSet will create again under the same name. Every delete goes through
``Records.delete``: only the record the pod holds, with preconditions.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from typing import Any

from spiderpool.agent.endpoints import EndpointWriter
from spiderpool.agent.errors import IPAMError
from spiderpool.agent.events import PodEvents
from spiderpool.agent.metrics import RELEASE_LATENCY, RELEASED_IPS, RELEASES
from spiderpool.agent.pods import Objects, PodLocks, PodView
from spiderpool.agent.records import Records
from spiderpool.agent.settings import Settings
from spiderpool.ipam.gc import statefulset_wants
from spiderpool.k8s.client import ApiError
from spiderpool.k8s.kinds import NAMESPACE, STATEFULSET
from spiderpool.net import veth

log = logging.getLogger(__name__)


class Releaser:
    def __init__(
        self,
        settings: Settings,
        *,
        records: Records,
        objects: Objects,
        endpoints: EndpointWriter,
        locks: PodLocks,
        events: PodEvents | None = None,
    ) -> None:
        self.settings = settings
        self.records, self.objects, self.endpoints, self.locks = records, objects, endpoints, locks
        self.events = events

    async def release(self, req: dict[str, Any]) -> dict[str, Any]:
        RELEASES.inc()
        ns, name, ifname = str(req.get("podNamespace", "")), str(req.get("podName", "")), str(req.get("ifName", ""))
        with RELEASE_LATENCY.time():
            async with self.locks.hold(f"{ns}/{name}"):
                return await self._release(req, ns, name, ifname)

    async def _release(self, req: dict[str, Any], ns: str, name: str, ifname: str) -> dict[str, Any]:
        uid = str(req.get("podUID") or "")
        container = str(req.get("containerID") or "")
        if not uid and container:
            uid = next(
                (r["spec"]["podUID"] for r in self.records.all() if r["spec"].get("containerID") == container), ""
            )
        pod = None
        if ns and name:
            pod = await self.objects.pod(ns, name)
            if pod is None or pod.alive():
                pod = await self.objects.pod(ns, name, fresh=True)  # only a terminating pod is trusted from the cache
        if pod is not None and not uid:
            uid = pod.uid
        # An IPv6 address the kernel's duplicate address detection refused is someone else's: it must
        # not come back to this pod on the runtime's retry, nor go to the next pod.
        refused = await self._quarantine_refused(req, uid, ifname)
        if pod is not None and pod.uid == uid and pod.alive():
            # The pod lives on (a retried ADD, a new sandbox): its addresses stay with it.
            return {"released": [], "quarantined": refused, "kept": "pod is alive"}
        if not uid:
            released = await self._end_quarantine(container, ns, name, ifname)
            return {"released": released, "kept": "" if released else "nothing recorded for this container"}
        if await self._statefulset_keeps(pod, ns, name, uid):
            return {"released": [], "kept": "StatefulSet pod keeps its IPs for its successor"}
        released = []
        for r in self.records.of(uid, ifname or None):
            if await self.records.delete(r["spec"]["ip"], uid, reason="cni_del"):
                released.append(r["spec"]["ip"])
        released += await self._end_quarantine(container, ns, name, ifname)
        self.endpoints.mark(f"{ns}/{name}", uid)
        if released:
            log.info("released pod=%s/%s uid=%s nic=%s ips=%s", ns, name, uid, ifname, ",".join(released))
        return {"released": released}

    async def _end_quarantine(self, container: str, ns: str, name: str, ifname: str) -> list[str]:
        """The controller quarantines the address of a pod that went without its sandbox being torn
        down (force-deleted, on a lost node), in case that sandbox still runs. This DEL is that sandbox
        going: its addresses are free now, not when the quarantine ends. (Never an address another host
        uses: ``ip_conflict``.)"""
        out = []
        for record in self.records.of(""):  # quarantined records hold no pod
            spec = record["spec"]
            if not container or spec.get("containerID") != container:
                continue
            if (spec["namespace"], spec["pod"]) != (ns, name) or (ifname and spec["interface"] != ifname):
                continue
            if not spec.get("quarantineUntil") or spec.get("releaseReason") == "ip_conflict":
                continue
            if not await self.records.delete_quarantined(record):
                continue
            RELEASED_IPS.labels("quarantine_ended_by_del").inc()
            log.info("quarantine ended by DEL ip=%s pod=%s/%s container=%s", spec["ip"], ns, name, container[:12])
            out.append(spec["ip"])
        return out

    async def _quarantine_refused(self, req: dict[str, Any], uid: str, ifname: str) -> list[str]:
        netns = str(req.get("netNamespace") or "")
        mine = {str(ipaddress.ip_address(r["spec"]["ip"])): r for r in self.records.of(uid, ifname or None)}
        if not netns or not ifname or not uid or not any(":" in ip for ip in mine):
            return []  # only IPv6 addresses go through the kernel's duplicate address detection
        out = []
        for ip in await asyncio.to_thread(veth.dad_failed, netns, ifname):
            record = mine.get(str(ipaddress.ip_address(ip)))
            if record is not None:
                spec = record["spec"]
                what = f"IP conflict: {spec['ip']} failed the kernel's duplicate address detection on {ifname}"
                if await self.conflict(spec["namespace"], spec["pod"], uid, ifname, spec["ip"], what):
                    out.append(ip)
        return out

    async def _statefulset_keeps(self, pod: PodView | None, ns: str, name: str, uid: str) -> bool:
        owner_kind, owner_name = (pod.owner_kind, pod.owner_name) if pod else ("", "")
        if not owner_kind:
            rec = next(iter(self.records.of(uid)), None)
            if rec is not None:
                owner_kind, owner_name = rec["spec"].get("ownerKind", ""), rec["spec"].get("ownerName", "")
        if owner_kind != "StatefulSet" or not owner_name:
            return False
        try:
            sts = await self.objects.client.get(STATEFULSET, owner_name, ns)
            namespace = await self.objects.client.get(NAMESPACE, ns)
        except ApiError as exc:
            if exc.code == 404:
                return False
            raise
        if namespace["metadata"].get("deletionTimestamp"):
            return False  # the whole namespace is going: no successor will come
        return statefulset_wants(sts, name)

    # --------------------------------------------------- taken back early
    async def release_nic(self, uid: str, ifname: str, reason: str = "detect_gateway") -> None:
        for r in self.records.of(uid, ifname):
            await self.records.delete(r["spec"]["ip"], uid, reason=reason)

    async def conflict(self, ns: str, name: str, uid: str, ifname: str, ip: str, what: str) -> bool:
        """Another host answers for ``ip`` (``what`` says who). A StatefulSet's pod keeps it (its
        address is its identity): the ADD fails and the pod waits, retried by the kubelet, until the
        address is free, as upstream does. Any other pod's address is quarantined, so the retry gets
        another. An event on the pod says which; True if quarantined."""
        owner = next((r["spec"].get("ownerKind") for r in self.records.of(uid, ifname)), None)
        keep = owner == "StatefulSet"
        if keep:
            note = "a StatefulSet's pod keeps its address: it starts once nobody else answers for it"
        else:
            hold = self.settings.conflict_quarantine
            await self.quarantine_conflict(ip, uid, ifname, hold)
            note = f"the address is held for nobody for {hold:.0f}s and the pod's next try gets another"
        if self.events is not None:
            await self.events.warn(ns, name, uid, "IPConflict", f"{what}; {note}")
        return not keep

    async def quarantine_conflict(self, ip: str, uid: str, ifname: str, seconds: float | None = None) -> None:
        """``ip`` turned out to be another host's: hold it for nobody, and free the NIC's other
        addresses, so the runtime's retry gets a whole new set (never a NIC missing a family)."""
        hold = self.settings.conflict_quarantine if seconds is None else seconds
        await self.records.quarantine(ip, uid, "ip_conflict", hold)
        await self.release_nic(uid, ifname, reason="ip_conflict_sibling")

    # -------------------------------------------------------- check and gc
    def check(self, req: dict[str, Any]) -> None:
        uid, ifname = str(req.get("podUID", "")), str(req.get("ifName", ""))
        have = sorted(r["spec"]["ip"] for r in self.records.of(uid, ifname))
        want = sorted(str(a).split("/")[0] for a in req.get("ips") or [])
        if have != want:
            raise IPAMError(
                100,
                f"pod {req.get('podNamespace')}/{req.get('podName')} interface {ifname}: the runtime reports {want}"
                f" but spiderpool holds {have} for it",
                reason="check_mismatch",
                http=409,
            )

    async def gc(self, req: dict[str, Any]) -> dict[str, Any]:
        """CNI GC: release this node's records whose attachment the runtime no longer has and whose pod is gone."""
        valid = {(str(a.get("containerID")), str(a.get("ifname"))) for a in req.get("validAttachments") or []}
        released = []
        for record in self.records.all():
            spec = record["spec"]
            if spec.get("node") != self.settings.node or (spec.get("containerID"), spec["interface"]) in valid:
                continue
            if spec.get("quarantineUntil"):
                continue  # the controller's to free
            pod = await self.objects.pod(spec["namespace"], spec["pod"], fresh=True)
            if pod is not None and pod.uid == spec["podUID"] and pod.alive():
                continue
            if await self._statefulset_keeps(pod, spec["namespace"], spec["pod"], spec["podUID"]):
                continue
            if await self.records.delete(spec["ip"], spec["podUID"], reason="cni_gc"):
                released.append(spec["ip"])
        return {"released": released}
