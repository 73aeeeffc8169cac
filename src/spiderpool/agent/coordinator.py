"""The agent's side of the ``veth``/``coordinator`` plugin: validate the config, then do the netlink
work (``spiderpool.net.veth``) in a worker thread, and hand back the chained result."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import Any

from prometheus_client import Counter

from spiderpool.agent.errors import IPAMError
from spiderpool.agent.events import PodEvents
from spiderpool.agent.release import Releaser
from spiderpool.api.annotations import DEFAULT_ROUTE_NIC
from spiderpool.k8s.cache import WatchCache
from spiderpool.net import fastnl, neighbours, overlay, veth, vethconf

log = logging.getLogger(__name__)
CALLS = Counter("spiderpool_coordinator_calls", "veth plugin calls", ["command", "outcome"])
FIRST_NIC = "eth0"
#: where the first NIC's routes go when another NIC takes the default route (upstream's table 100)
FIRST_TABLE = 100
#: how long an address another host answers for stays out of circulation
DETECTIONS = Counter("spiderpool_coordinator_detection_failures", "Failed IP conflict / gateway checks", ["kind"])


def _config(
    body: dict[str, Any], defaults: dict[str, Any] | None = None, status: dict[str, Any] | None = None
) -> vethconf.VethConfig:
    try:
        return vethconf.parse(vethconf.with_defaults(dict(body.get("config") or {}), defaults, status))
    except vethconf.ConfigError as exc:
        raise IPAMError(7, f"invalid veth plugin config: {exc}", reason="bad_config", http=400) from None


def _pod_ips(prev: dict[str, Any], ifname: str) -> list[veth.PodIP]:
    interfaces = prev.get("interfaces") or []
    out = []
    for ip in prev.get("ips") or []:
        index = ip.get("interface")
        name = interfaces[index].get("name") if isinstance(index, int) and index < len(interfaces) else ifname
        if name != ifname:
            continue
        address, _, prefix = str(ip["address"]).partition("/")
        out.append(veth.PodIP(address, int(prefix or 32), ifname, ip.get("gateway")))
    return out


def _table_for(ifname: str) -> int:
    """net1 -> 101, net2 -> 102, ... (upstream numbers the extra NICs' tables from 101)."""
    digits = re.sub(r"\D", "", ifname)
    return 100 + (int(digits) if digits else 1)


class Coordinator:
    def __init__(
        self,
        pods: WatchCache | None = None,
        releaser: Releaser | None = None,
        *,
        coordinators: WatchCache | None = None,
        events: PodEvents | None = None,
        state_dir: Path | None = None,
    ) -> None:
        self.state_dir = state_dir  # overlay mode: the node routes each pod's DEL must remove
        self.events = events  # a pod's Event when the cluster's coordinator is not ready
        self.coordinators = coordinators  # SpiderCoordinator "default": the cluster's defaults
        self.pods = pods  # this node's pods: their default-route-nic annotation
        self.releaser = releaser  # to take back an address that turns out unusable

    async def _detect(
        self, body: dict[str, Any], netns: str, ifname: str, ips: list[veth.PodIP], cfg: vethconf.VethConfig
    ) -> None:
        problem = await asyncio.to_thread(veth.detect, netns, ips, cfg)
        if problem is None:
            return
        kind, ip, message = problem
        uid = str(body.get("podUID") or "")
        if self.releaser is not None and uid:
            if kind == "conflict":
                # Someone else answers for it: a StatefulSet's pod waits for it, any other moves on
                ns, name = str(body.get("podNamespace", "")), str(body.get("podName", ""))
                await self.releaser.conflict(ns, name, uid, ifname, ip, f"{message} (interface {ifname})")
            else:
                await self.releaser.release_nic(uid, ifname)
        DETECTIONS.labels(kind).inc()
        pod = f"{body.get('podNamespace')}/{body.get('podName')}"
        log.warning("veth detection failed pod=%s nic=%s problem=%s", pod, ifname, message)
        raise IPAMError(100, f"pod {pod} interface {ifname}: {message}", reason=f"detect_{kind}", http=409)

    def _default_nic(self, body: dict[str, Any], cfg: vethconf.VethConfig) -> str | None:
        """The pod annotation ``ipam.spidernet.io/default-route-nic``, else the config's podDefaultRouteNIC."""
        pod = self.pods.get(f"{body.get('podNamespace')}/{body.get('podName')}") if self.pods else None
        annotation = ((pod or {}).get("metadata", {}).get("annotations") or {}).get(DEFAULT_ROUTE_NIC)
        return annotation or cfg.default_route_nic

    def _defaults(self) -> dict[str, Any] | None:
        found = self.coordinators.get("default") if self.coordinators else None
        return dict(found.get("spec") or {}) if found else None

    def _status(self) -> dict[str, Any] | None:
        found = self.coordinators.get("default") if self.coordinators else None
        return dict(found.get("status") or {}) if found else None

    async def _require_synced(self, body: dict[str, Any]) -> None:
        """The SpiderCoordinator's CIDRs are what a pod's routes are made of: while the controller
        cannot say them (NotReady), an ADD fails with its reason rather than make a pod without its
        Service routes. No SpiderCoordinator at all means plugin defaults only (nothing to wait for)."""
        status = self._status()
        if status is None or status.get("phase") == "Synced":
            return
        why = status.get("reason") or "its status has not been written yet: is spiderpool-controller running?"
        message = f"SpiderCoordinator default is {status.get('phase') or 'not synced'}: {why}"
        ns, name, uid = str(body.get("podNamespace")), str(body.get("podName")), str(body.get("podUID") or "")
        if self.events is not None and name:
            await self.events.warn(ns, name, uid, "CoordinatorNotReady", message)
        raise IPAMError(100, message, reason="coordinator_not_ready", http=503)

    def _record(self, container_id: str, ifname: str) -> Path | None:
        return self.state_dir / f"{container_id}-{ifname}.json" if self.state_dir else None

    def config_for(self, pod: dict[str, Any]) -> dict[str, Any]:
        """The coordinator settings a pod gets when its network config sets none (upstream's
        CoordinatorConfig): SpiderCoordinator spec + status, the pod's default-route-nic annotation."""
        status = self._status()
        if status is not None and status.get("phase") != "Synced":
            raise IPAMError(
                100,
                f"SpiderCoordinator default is not Synced: {status.get('reason') or 'no status yet'}",
                reason="coordinator_not_ready",
                http=500,
            )
        spec = self._defaults() or {}
        out = {k: v for k, v in spec.items() if v is not None}
        out["serviceCIDR"] = list((status or {}).get("serviceCIDR") or [])
        out["overlayPodCIDR"] = list((status or {}).get("overlayPodCIDR") or [])
        out.setdefault("mode", "auto")
        out.setdefault("tunePodRoutes", True)
        nic = self._default_nic(pod, vethconf.VethConfig(default_route_nic=spec.get("podDefaultRouteNIC") or None))
        out["podDefaultRouteNIC"] = nic or ""
        return out

    async def _mode(self, cfg: vethconf.VethConfig, ifname: str, netns: str) -> str:
        """upstream's resolution of ``auto``: underlay for eth0 or when the pod has veth0 (eth0 is ours),
        else overlay (eth0 is the cluster CNI's)."""
        if cfg.mode != "auto":
            return cfg.mode
        if ifname == FIRST_NIC:
            return "underlay"
        has_veth = await asyncio.to_thread(veth.run_in_netns, netns, lambda: fastnl.index(veth.POD_VETH) is not None)
        return "underlay" if has_veth else "overlay"

    async def add(self, body: dict[str, Any]) -> dict[str, Any]:
        cfg = _config(body, self._defaults(), self._status())
        conf = body["config"]
        prev = dict(conf.get("prevResult") or {})
        ifname, netns, cid = str(body["ifName"]), str(body["netns"]), str(body["containerID"])
        result = {**prev, "cniVersion": conf.get("cniVersion", prev.get("cniVersion"))}
        if cfg.mode == "disabled":
            return {"result": result}
        await self._require_synced(body)
        ips = _pod_ips(prev, ifname)
        mode = await self._mode(cfg, ifname, netns)
        if mode == "overlay" and ifname == FIRST_NIC:
            raise IPAMError(
                7,
                f"coordinator mode overlay on {ifname}: in overlay mode {FIRST_NIC} is the cluster CNI's;"
                " chain the coordinator to the underlay NICs only, or use mode underlay",
                reason="bad_config",
                http=400,
            )
        if cfg.detect_ip_conflict or cfg.detect_gateway:
            await self._detect(body, netns, ifname, ips, cfg)
        try:
            # (before the set-up, which adds the node's own permanent entries for the pod)
            await asyncio.to_thread(neighbours.flush, [ip.address for ip in ips])
            if mode == "overlay":
                added = []
                await asyncio.to_thread(
                    overlay.setup,
                    netns,
                    ifname,
                    ips,
                    _table_for(ifname),
                    cfg,
                    default_nic=self._default_nic(body, cfg) == ifname,
                    first=FIRST_NIC,
                    first_table=FIRST_TABLE,
                    record=self._record(cid, ifname),
                )
            elif ifname == FIRST_NIC:
                added = await asyncio.to_thread(veth.setup_first_nic, netns, cid, ips, cfg)
            else:
                added = []
                if self._default_nic(body, cfg) == ifname:
                    await asyncio.to_thread(veth.make_default_nic, netns, ifname, ips, FIRST_NIC, FIRST_TABLE, cfg)
                elif cfg.tune_pod_routes:
                    await asyncio.to_thread(veth.setup_extra_nic, netns, ifname, ips, _table_for(ifname), cfg)
                else:  # its routes stay in the main table, and so do its policyRoutes
                    await asyncio.to_thread(veth.tune_nic, netns, ifname, ips, cfg)
        except Exception as exc:  # netlink refusals and our own checks alike become a CNI error
            CALLS.labels("add", "error").inc()
            log.warning(
                "veth add failed pod=%s/%s nic=%s error=%r", body.get("podNamespace"), body.get("podName"), ifname, exc
            )
            pod = f"{body.get('podNamespace')}/{body.get('podName')}"
            raise IPAMError(100, f"veth: pod {pod} interface {ifname}: {exc!r}", reason="netlink", http=500) from None
        CALLS.labels("add", "ok").inc()
        result["interfaces"] = [*(prev.get("interfaces") or []), *added]
        return {"result": result}

    async def delete(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            conf = vethconf.with_defaults(dict(body.get("config") or {}), self._defaults())
            cfg = vethconf.parse(conf)
        except vethconf.ConfigError:
            cfg = vethconf.VethConfig()  # a DEL must not fail over a config typo
        table, ifname = cfg.host_rule_table, str(body.get("ifName"))
        if ifname == FIRST_NIC:
            await asyncio.to_thread(veth.teardown, str(body["containerID"]), table)
        elif cfg.mode in ("auto", "overlay"):
            # (only an overlay ADD leaves a record: an underlay net1 removes nothing)
            record = self._record(str(body["containerID"]), ifname)
            removed = await asyncio.to_thread(overlay.teardown, table, record)
            log.debug("overlay teardown nic=%s routes=%d", ifname, removed)
        CALLS.labels("del", "ok").inc()
        return {"ok": True}

    async def check(self, body: dict[str, Any]) -> dict[str, Any]:
        _config(body, self._defaults())
        if str(body.get("ifName")) == FIRST_NIC:
            present = await asyncio.to_thread(veth.present, str(body["netns"]), str(body["containerID"]))
            if not present:
                raise IPAMError(100, "veth: the veth pair of this pod is missing", reason="check_mismatch", http=409)
        return {"ok": True}
