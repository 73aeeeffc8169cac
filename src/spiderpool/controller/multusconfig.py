"""SpiderMultusConfig -> NetworkAttachmentDefinition (leader only).

Each SMC is kept rendered (``controller.nad``) as the NAD of its name (or its
``multus.spidernet.io/cr-name``) in its namespace:

- no NAD: created, controlled by the SMC (owner reference, ``controller: true``);
- a NAD this SMC controls (same uid) that drifted (spec, labels, annotations, owner references):
  written back, as a compare-and-swap on its resourceVersion (409: looked at again);
- a NAD nobody controls, or whose controlling SMC is gone: taken over (overwritten with the
  rendering), with a ``TakenOver`` event;
- a NAD another live SMC, or anything else, controls: left alone, with a Warning event on this SMC
  (``NADConflict``); it is looked at again when that NAD changes or goes;
- the SMC gone or being deleted: the NADs it controlled are deleted (uid and resourceVersion
  preconditions). Kubernetes' garbage collector would get there too, later; an SMC deleted with
  ``--cascade=orphan`` keeps its NAD. A changed cr-name deletes the NAD of the old name.

An SMC that breaks an admission rule (written while no webhook answered) gets an ``InvalidSpec``
Warning event and its NAD is left as it is. Changes come from watches of both kinds, batched;
everything is looked at again every ``resync`` seconds. Without the NAD CRD (Multus not installed)
this says so once, loudly, and looks again with back-off.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections import OrderedDict
from typing import Any

from prometheus_client import Counter

from spiderpool.api.v2beta1 import GROUP
from spiderpool.controller import admission
from spiderpool.controller.nad import SMC_KIND, RenderError, controller_of, nad_name, render
from spiderpool.controller.workqueue import WorkQueue
from spiderpool.k8s.cache import WatchCache
from spiderpool.k8s.client import ApiError, Client, preconditions
from spiderpool.k8s.events import EventRecorder
from spiderpool.k8s.kinds import MULTUSCONFIG, NAD
from spiderpool.k8s.retry import Backoff

log = logging.getLogger(__name__)

NAD_WRITES = Counter("spiderpool_controller_nad_writes_total", "NetworkAttachmentDefinition writes", ["action"])
NAD_REFUSED = Counter(
    "spiderpool_controller_nad_refused_total", "SpiderMultusConfigs not rendered into their NAD", ["reason"]
)
BATCH_SECONDS = 0.1
RESYNC_SECONDS = 60.0
SAID_MAX = 4096
#: the garbage collector's finalizer of a deletion with ``propagationPolicy: Orphan``
ORPHAN_FINALIZER = "orphan"

Obj = dict[str, Any]


def _key(obj: Obj) -> str:
    meta = obj["metadata"]
    return f"{meta.get('namespace', '')}/{meta['name']}"


def _smc_ref(ref: Obj | None) -> bool:
    return ref is not None and ref.get("kind") == SMC_KIND and str(ref.get("apiVersion", "")).startswith(GROUP + "/")


def drift(live: Obj, want: Obj) -> list[str]:
    """What of ``live`` differs from the rendering ``want`` (empty: nothing)."""
    lm, wm = live.get("metadata") or {}, want["metadata"]
    out = [k for k in ("labels", "annotations") if (lm.get(k) or {}) != (wm.get(k) or {})]
    if (lm.get("ownerReferences") or []) != wm["ownerReferences"]:
        out.append("ownerReferences")
    if live.get("spec") != want["spec"]:
        out.append("spec")
    return out


class MultusConfigReconciler:
    def __init__(
        self,
        client: Client,
        *,
        resync: float = RESYNC_SECONDS,
        discovery_backoff: Backoff | None = None,
    ) -> None:
        self.client = client
        self.resync = resync
        self.discovery_backoff = discovery_backoff or Backoff(1.0, 60.0)
        self.smcs = WatchCache(client, MULTUSCONFIG)
        self.nads = WatchCache(client, NAD)
        self.queue = WorkQueue("multusconfig", BATCH_SECONDS)
        self.recorder = EventRecorder(client, "spiderpool-controller")
        #: NAD key -> the SMC keys whose rendering takes that name (more than one: a conflict)
        self._claims: dict[str, set[str]] = {}
        #: SMC key -> the NAD key it claims
        self._claim_of: dict[str, str] = {}
        #: NAD key -> (SMC key, uid) of the SMC that controls it; and SMC key -> those NAD keys
        self._controller: dict[str, tuple[str, str]] = {}
        self._controlled: dict[str, set[str]] = {}
        #: (SMC uid, reason) -> the last message said, so each is said once (bounded: oldest out)
        self._said: OrderedDict[tuple[str, str], str] = OrderedDict()
        self.smcs.listeners.append(self._on_smc)
        self.nads.listeners.append(self._on_nad)

    # ------------------------------------------------------------ queue
    def _enqueue(self, smc_key: str) -> None:
        self.queue.add((SMC_KIND, smc_key))

    def _on_smc(self, _kind: str, key: str, obj: Obj) -> None:
        old = self._claim_of.pop(key, None)
        if old is not None:
            self._claims.get(old, set()).discard(key)
            if not self._claims.get(old):
                self._claims.pop(old, None)
        if key in self.smcs.items:
            claim = f"{obj['metadata'].get('namespace', '')}/{nad_name(obj)}"
            self._claim_of[key] = claim
            self._claims.setdefault(claim, set()).add(key)
            if old is not None and old != claim:
                for other in self._claims.get(old, ()):  # (the name may be free for them now)
                    self._enqueue(other)
        self._enqueue(key)

    def _on_nad(self, _kind: str, key: str, obj: Obj) -> None:
        before = self._controller.pop(key, None)
        if before is not None:
            self._controlled.get(before[0], set()).discard(key)
            if not self._controlled.get(before[0]):
                self._controlled.pop(before[0], None)
            self._enqueue(before[0])
        ref = controller_of(obj)
        if key in self.nads.items and ref is not None and _smc_ref(ref):
            owner = (f"{obj['metadata'].get('namespace', '')}/{ref.get('name', '')}", str(ref.get("uid", "")))
            self._controller[key] = owner
            self._controlled.setdefault(owner[0], set()).add(key)
            self._enqueue(owner[0])
        for smc_key in self._claims.get(key, ()):
            self._enqueue(smc_key)

    def _enqueue_all(self) -> None:
        for key in list(self.smcs.items):
            self._enqueue(key)
        for smc_key in list(self._controlled):  # NADs of SMCs deleted while no leader ran
            self._enqueue(smc_key)

    # -------------------------------------------------------------- run
    async def run(self) -> None:
        """Until cancelled (the NAD API missing is waited for, never a reason to end)."""
        tasks = [asyncio.create_task(self.smcs.run(), name="smc-cache")]
        try:
            await self._await_nad_api()
            tasks.append(asyncio.create_task(self.nads.run(), name="nad-cache"))
            await self.smcs.synced.wait()
            await self.nads.synced.wait()
            self._enqueue_all()
            tasks.append(asyncio.create_task(self._resync(), name="smc-resync"))
            await self.queue.run(self.reconcile)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _resync(self) -> None:
        while True:
            await asyncio.sleep(self.resync)
            self._enqueue_all()

    async def nad_api_served(self) -> bool:
        """Whether the apiserver serves NetworkAttachmentDefinitions (the CRD is installed)."""
        try:
            doc = await self.client.request("GET", f"/apis/{NAD.group}/{NAD.version}")
        except ApiError as exc:
            if exc.code == 404:
                return False
            raise
        return any(r.get("name") == NAD.plural for r in (doc or {}).get("resources") or [])

    async def _await_nad_api(self) -> None:
        told = False
        while True:
            try:
                if await self.nad_api_served():
                    if told:
                        log.info("the NetworkAttachmentDefinition CRD is served now; rendering SpiderMultusConfigs")
                    return
                if not told:
                    log.error(
                        "the NetworkAttachmentDefinition CRD (network-attachment-definitions.%s) is not installed,"
                        " so no SpiderMultusConfig becomes a NetworkAttachmentDefinition until it is: install"
                        " Multus (or its CRD); looking again with back-off",
                        NAD.group,
                    )
                    told = True
            except Exception as exc:  # (the API's trouble most often; never the end of this loop)
                log.warning("cannot tell whether the NetworkAttachmentDefinition CRD is installed error=%r", exc)
            await asyncio.sleep(self.discovery_backoff.next())

    # -------------------------------------------------------- reconcile
    async def reconcile(self, _kind: str, key: str) -> None:
        namespace, name = key.split("/", 1)
        smc = self.smcs.get(key)
        if smc is None or smc["metadata"].get("deletionTimestamp"):
            await self._release(namespace, name, smc)
            return
        uid = str(smc["metadata"].get("uid", ""))
        errors = admission.validate(SMC_KIND, "CREATE", smc, None, admission.Snapshot(), admission.Settings())
        try:
            want = render(smc) if not errors else None
        except RenderError as exc:
            errors, want = [str(exc)], None
        if want is None:
            NAD_REFUSED.labels("invalid").inc()
            await self._say(
                smc, "Warning", "InvalidSpec", "not rendered into a NetworkAttachmentDefinition: " + "; ".join(errors)
            )
            return
        self._resolved(uid, "InvalidSpec")
        target = _key(want)
        for nad_key in sorted(self._controlled.get(key, ())):
            old = self.nads.get(nad_key)
            if nad_key != target and old is not None:
                # its cr-name changed (or an earlier SMC of this name had another): the NAD of the old name goes
                await self._delete(old, f"{key} renders {target} now (multus.spidernet.io/cr-name)")
        live = self.nads.get(target)
        if live is None:
            await self._create(key, want)
            return
        if live["metadata"].get("deletionTimestamp"):
            return  # going (finalizers); its deletion brings us back to create it anew
        ref = controller_of(live)
        if ref is not None and _smc_ref(ref) and str(ref.get("uid")) == uid:
            changed = drift(live, want)
            if changed:
                await self._write(live, want)
                NAD_WRITES.labels("update").inc()
                log.info("net-attach-def written back nad=%s smc=%s drifted=%s", target, key, ",".join(changed))
            self._resolved(uid, "NADConflict")
            self._resolved(uid, "TakenOver")
            return
        if ref is None:
            why = "which no object controlled"
        elif _smc_ref(ref) and not await self._alive(namespace, ref):
            why = f"whose SpiderMultusConfig {namespace}/{ref.get('name')} (uid {ref.get('uid')}) is gone"
        else:
            kind = str(ref.get("kind") or "an object")
            message = (
                f"the net-attach-def {target} already exists and is managed by {kind} {namespace}/{ref.get('name')}"
            )
            NAD_REFUSED.labels("conflict").inc()
            await self._say(smc, "Warning", "NADConflict", message)
            return
        await self._write(live, want)
        NAD_WRITES.labels("take_over").inc()
        self._resolved(uid, "NADConflict")
        message = f"took over the net-attach-def {target}, {why}; it now follows this SpiderMultusConfig"
        log.info("net-attach-def taken over nad=%s smc=%s reason=%s", target, key, why)
        await self._say(smc, "Normal", "TakenOver", message)

    async def _alive(self, namespace: str, ref: Obj) -> bool:
        """Whether the SMC an owner reference names still exists (a live read when the cache lacks it)."""
        name, uid = str(ref.get("name", "")), str(ref.get("uid", ""))
        cached = self.smcs.get(f"{namespace}/{name}")
        if cached is not None:
            return str(cached["metadata"].get("uid")) == uid
        try:
            found = await self.client.get(MULTUSCONFIG, name, namespace)
        except ApiError as exc:
            if exc.code == 404:
                return False
            raise
        return str(found["metadata"].get("uid")) == uid

    async def _release(self, namespace: str, name: str, smc: Obj | None) -> None:
        """The SMC is gone or going: delete the NADs it controlled."""
        key = f"{namespace}/{name}"
        if smc is not None and ORPHAN_FINALIZER in (smc["metadata"].get("finalizers") or []):
            return  # deleted with --cascade=orphan: its NADs are to stay
        mine = [(k, self._controller[k][1]) for k in sorted(self._controlled.get(key, ()))]
        if not mine:
            return
        if smc is None:
            # (the cache may not have seen a just-created SMC yet: never delete on its word alone)
            try:
                found: Obj | None = await self.client.get(MULTUSCONFIG, name, namespace)
            except ApiError as exc:
                if exc.code != 404:
                    raise
                found = None
            alive_uid = (
                str(found["metadata"].get("uid")) if found and not found["metadata"].get("deletionTimestamp") else None
            )
        else:
            alive_uid = None
        for nad_key, uid in mine:
            nad = self.nads.get(nad_key)
            if nad is not None and uid != alive_uid:
                await self._delete(nad, f"its SpiderMultusConfig {key} is gone")

    # ------------------------------------------------------------ writes
    async def _create(self, smc_key: str, want: Obj) -> None:
        try:
            created = await self.client.create(NAD, want)
        except ApiError as exc:
            if exc.code != 409:
                raise
            # our cache is behind: read what is there and decide again
            self.nads.apply_local(await self.client.get(NAD, want["metadata"]["name"], want["metadata"]["namespace"]))
            self._enqueue(smc_key)
            return
        self.nads.apply_local(created)
        NAD_WRITES.labels("create").inc()
        log.info("net-attach-def created nad=%s smc=%s", _key(want), smc_key)

    async def _write(self, live: Obj, want: Obj) -> None:
        """``live`` overwritten with the rendering (a compare-and-swap on its resourceVersion)."""
        meta = {k: v for k, v in copy.deepcopy(live["metadata"]).items() if k != "managedFields"}
        for k in ("labels", "annotations"):
            if k in want["metadata"]:
                meta[k] = want["metadata"][k]
            else:
                meta.pop(k, None)
        meta["ownerReferences"] = want["metadata"]["ownerReferences"]
        body = {"apiVersion": want["apiVersion"], "kind": want["kind"], "metadata": meta, "spec": want["spec"]}
        self.nads.apply_local(await self.client.replace(NAD, body))

    async def _delete(self, nad: Obj, why: str) -> None:
        meta = nad["metadata"]
        try:
            # (uid and resourceVersion: never a NAD re-created, or changed, since it was read)
            await self.client.delete(NAD, meta["name"], meta.get("namespace"), preconditions=preconditions(nad))
        except ApiError as exc:
            if exc.code != 404:
                raise
        self.nads.apply_local(None, key=_key(nad))
        NAD_WRITES.labels("delete").inc()
        log.info("net-attach-def deleted nad=%s reason=%s", _key(nad), why)

    # ------------------------------------------------------------ events
    async def _say(self, smc: Obj, event_type: str, reason: str, message: str) -> None:
        """Log and post an event on the SMC, once per message (a resync finds it again every minute)."""
        meta = smc["metadata"]
        said = (str(meta.get("uid", "")), reason)
        if self._said.get(said) == message:
            return
        self._said[said] = message
        self._said.move_to_end(said)
        while len(self._said) > SAID_MAX:
            self._said.popitem(last=False)
        level = logging.WARNING if event_type == "Warning" else logging.INFO
        log.log(level, "smc=%s/%s reason=%s %s", meta.get("namespace"), meta["name"], reason, message)
        involved = {
            "apiVersion": smc.get("apiVersion") or MULTUSCONFIG.api_version,
            "kind": SMC_KIND,
            "namespace": meta.get("namespace", ""),
            "name": meta["name"],
            "uid": meta.get("uid", ""),
        }
        await self.recorder.emit(involved, event_type, reason, message)

    def _resolved(self, uid: str, reason: str) -> None:
        self._said.pop((uid, reason), None)
