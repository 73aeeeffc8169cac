"""The one Kubernetes API client of the agent and the controller: aiohttp, objects as plain dicts.

Lean on purpose: the agent's allocation path and every watch spend most of their CPU in the HTTP
client, and a create through this client costs about 0.35 ms of client CPU, a third of what a
general-purpose client on httpx cost (measured in the lab; see docs/benchmarks.md).

Failures that say nothing about the request are retried, bounded and with jittered back-off:
connection errors and timeouts, 429 (after the server's ``Retry-After``) and 500/502/503/504.
A retry may repeat a request the server did carry out, so callers read the answer as idempotent
Kubernetes clients do: a create answered 409 may be our own first attempt (the agent checks whose
record it is), a delete answered 404 is done. Deletes take uid/resourceVersion preconditions.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from prometheus_client import Counter, Gauge

from spiderpool.k8s import config
from spiderpool.k8s.kinds import Kind
from spiderpool.k8s.retry import Backoff

RETRIES = Counter("spiderpool_k8s_client_retries", "API requests retried", ["reason"])
CLOCK_OFFSET = Gauge(
    "spiderpool_k8s_client_clock_offset_seconds",
    "The apiserver's clock minus this process's (from the Date of its replies): what server_time() adds",
)

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
#: failures of the connection, not answers of the server
RETRY_ERRORS = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError)


class ApiError(Exception):
    """The apiserver refused a request: ``code`` is the HTTP status, ``reason`` its Status reason;
    ``method`` and ``path`` say which request (when known); ``attempts`` how many times it was
    sent (more than one: an earlier try may have been carried out)."""

    def __init__(self, code: int, reason: str, message: str, *, method: str = "", path: str = "") -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code, self.reason, self.message = code, reason, message
        self.method, self.path = method, path
        self.attempts = 1


@dataclass(frozen=True)
class RetryPolicy:
    #: tries in all (1: no retry)
    attempts: int = 5
    base: float = 0.1
    cap: float = 5.0
    #: the most of a 429's Retry-After we honour per try
    retry_after_cap: float = 30.0


def preconditions(obj: Mapping[str, Any]) -> dict[str, str]:
    """uid and resourceVersion of ``obj``: a delete with them fails (409) if the object was
    re-created or changed since it was read."""
    meta = obj.get("metadata") or {}
    return {k: str(meta[k]) for k in ("uid", "resourceVersion") if meta.get(k)}


class Client:
    def __init__(
        self,
        creds: config.Credentials,
        *,
        field_manager: str,
        timeout: float = 30.0,
        retry: RetryPolicy = RetryPolicy(),
    ) -> None:
        self.server = creds.server
        self._creds = creds
        self._token = creds.token
        self.field_manager = field_manager
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.retry = retry
        self._session: aiohttp.ClientSession | None = None
        #: the apiserver's clock minus ours, learnt from the Date header of its replies (see server_time)
        self.clock_offset = 0.0

    def server_time(self) -> float:
        """Now, on the apiserver's clock (to a second or so): times written into objects and compared
        with the apiserver's own (creationTimestamp, deletionTimestamp) are on one clock then, whatever
        the clock of this node says."""
        return time.time() + self.clock_offset

    def _learn_clock(self, date: str | None) -> None:
        if not date:
            return
        try:
            server = email.utils.parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError):
            return
        # (Date is whole seconds, cut down: the server's clock was half a second on, on average)
        self.clock_offset = server + 0.5 - time.time()
        CLOCK_OFFSET.set(self.clock_offset)

    @classmethod
    def from_kubeconfig(cls, kubeconfig: str | None = None, *, field_manager: str, **kw: Any) -> Client:
        return cls(config.load(kubeconfig), field_manager=field_manager, **kw)

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # One connection per concurrent request, kept alive: no TLS handshake per request.
            ctx = self._creds.ssl if self._creds.ssl is not None else False
            self._session = aiohttp.ClientSession(self.server, connector=aiohttp.TCPConnector(ssl=ctx, limit=64))
        return self._session

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        data = json.dumps(body) if body is not None else None
        backoff = Backoff(self.retry.base, self.retry.cap)
        reread_token = bool(self._creds.token_file)
        attempt = 0
        while True:
            attempt += 1
            last = attempt >= self.retry.attempts
            try:
                async with self.session.request(
                    method,
                    path,
                    data=data,
                    params=params,
                    headers=self._headers(content_type if data is not None else None),
                    timeout=self.timeout,
                ) as resp:
                    raw = await resp.read()
                    status = resp.status
                    retry_after = resp.headers.get("Retry-After")
                    self._learn_clock(resp.headers.get("Date"))
            except RETRY_ERRORS:
                if last:
                    raise
                RETRIES.labels("connection").inc()
                await asyncio.sleep(backoff.next())
                continue
            if status == 401 and reread_token:
                reread_token = False  # once: the kubelet may have rotated it
                self._token = self._creds.read_token()
                attempt -= 1
                continue
            if status in RETRY_STATUS and not last:
                RETRIES.labels(str(status)).inc()
                delay = backoff.next()
                if status == 429 and retry_after and retry_after.isdigit():
                    delay = max(delay, min(float(retry_after), self.retry.retry_after_cap))
                await asyncio.sleep(delay)
                continue
            if status >= 400:
                error = _error(status, raw)
                error.method, error.path, error.attempts = method, path, attempt
                raise error
            return json.loads(raw) if raw else None

    async def get(self, kind: Kind, name: str, namespace: str | None = None) -> dict[str, Any]:
        return dict(await self.request("GET", kind.path(namespace, name)))

    async def create(self, kind: Kind, obj: dict[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
        """``dry_run``: the apiserver admits the object (defaults, admission webhooks, schema) and
        answers what it would store, but stores nothing."""
        ns = obj.get("metadata", {}).get("namespace")
        params = {"fieldManager": self.field_manager}
        if dry_run:
            params["dryRun"] = "All"
        return dict(await self.request("POST", kind.path(ns), obj, params=params))

    async def replace(self, kind: Kind, obj: dict[str, Any], *, subresource: str = "") -> dict[str, Any]:
        """A PUT: with the object's resourceVersion it is a compare-and-swap (409 if it changed)."""
        meta = obj["metadata"]
        path = kind.path(meta.get("namespace"), meta["name"]) + (f"/{subresource}" if subresource else "")
        return dict(await self.request("PUT", path, obj, params={"fieldManager": self.field_manager}))

    async def patch(
        self, kind: Kind, name: str, body: dict[str, Any], namespace: str | None = None, *, subresource: str = ""
    ) -> dict[str, Any]:
        """A JSON merge patch (RFC 7386); a ``metadata.resourceVersion`` in it makes it a compare-and-swap."""
        path = kind.path(namespace, name) + (f"/{subresource}" if subresource else "")
        params = {"fieldManager": self.field_manager}
        return dict(await self.request("PATCH", path, body, params=params, content_type="application/merge-patch+json"))

    async def apply(self, kind: Kind, obj: dict[str, Any], *, force: bool = True) -> dict[str, Any]:
        """Server-side apply of ``obj`` as our field manager."""
        meta = obj["metadata"]
        params = {"fieldManager": self.field_manager, "force": "true" if force else "false"}
        path = kind.path(meta.get("namespace"), meta["name"])
        return dict(await self.request("PATCH", path, obj, params=params, content_type="application/apply-patch+yaml"))

    async def delete(
        self,
        kind: Kind,
        name: str,
        namespace: str | None = None,
        *,
        preconditions: Mapping[str, str] | None = None,
        propagation: str = "",
    ) -> None:
        """Delete; with ``preconditions`` (see ``preconditions()``) only the very object that was read."""
        body: dict[str, Any] | None = None
        if preconditions or propagation:
            body = {"apiVersion": "v1", "kind": "DeleteOptions"}
            if preconditions:
                body["preconditions"] = dict(preconditions)
            if propagation:
                body["propagationPolicy"] = propagation
        await self.request("DELETE", kind.path(namespace, name), body)

    async def list(
        self, kind: Kind, namespace: str | None = None, *, fields: str = "", labels: str = ""
    ) -> tuple[list[dict[str, Any]], str]:
        """Every object (following pagination) and the list's resourceVersion."""
        items: list[dict[str, Any]] = []
        params = {"limit": "500"}
        if fields:
            params["fieldSelector"] = fields
        if labels:
            params["labelSelector"] = labels
        while True:
            page = await self.request("GET", kind.path(namespace), params=params)
            items += page.get("items") or []
            cont = page.get("metadata", {}).get("continue")
            if not cont:
                return items, str(page.get("metadata", {}).get("resourceVersion", ""))
            params["continue"] = cont

    async def watch(
        self,
        kind: Kind,
        namespace: str | None = None,
        *,
        resource_version: str,
        fields: str = "",
        labels: str = "",
        on_open: Callable[[], None] | None = None,
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """(event type, object) from ``resource_version`` on, bookmarks included, until the server
        ends it. Not retried here: ``WatchCache`` resumes it (or re-lists) with back-off."""
        params = {"watch": "1", "resourceVersion": resource_version, "allowWatchBookmarks": "true"}
        if fields:
            params["fieldSelector"] = fields
        if labels:
            params["labelSelector"] = labels
        async with self.session.get(
            kind.path(namespace),
            params=params,
            headers=self._headers(),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
        ) as resp:
            if resp.status >= 400:
                raise _error(resp.status, await resp.read())
            if on_open is not None:
                on_open()  # (events from here on reach the caller: a cache following them is current)
            buf = b""
            # (not ``async for line in resp.content``: aiohttp caps a line at 64 KiB, and objects can be larger)
            async for chunk in resp.content.iter_any():
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if event.get("type") == "ERROR":
                        status = event.get("object") or {}
                        code = int(status.get("code") or 500)
                        raise ApiError(code, str(status.get("reason")), str(status.get("message")))
                    yield str(event["type"]), event["object"]

    async def whoami(self) -> str:
        """The user name the apiserver knows these credentials by (a SelfSubjectReview)."""
        review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
        answer = await self.request("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", review)
        return str(((answer or {}).get("status") or {}).get("userInfo", {}).get("username", ""))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _error(status: int, raw: bytes) -> ApiError:
    try:
        body = json.loads(raw)
        return ApiError(status, str(body.get("reason", "")), str(body.get("message", "")))
    except ValueError:
        return ApiError(status, "", raw.decode(errors="replace")[:500])
