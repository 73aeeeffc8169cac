"""A lean asynchronous Kubernetes REST client on aiohttp, for the hot paths.

Objects are plain dicts in and out. It exists because the agent's allocation path and every watch
spend most of their CPU in the HTTP client: a create through lightkube (httpx) costs about 1.2 ms
of client CPU, through aiohttp about 0.35 ms (measured in the lab; see docs/benchmarks.md). Less
frequent work (the controller's reconcilers, admission registration) stays on lightkube.

Credentials come from the same kubeconfig (or service account) lightkube reads: client
certificates, a bearer token, or a token file re-read when the apiserver answers 401.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from lightkube import KubeConfig
from lightkube.config.client_adapter import verify_cluster

from spiderpool.k8s.client import load_config


class ApiError(Exception):
    """The apiserver refused a request: ``code`` is the HTTP status, ``reason`` its Status reason;
    ``method`` and ``path`` say which request (when known)."""

    def __init__(self, code: int, reason: str, message: str, *, method: str = "", path: str = "") -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code, self.reason, self.message = code, reason, message
        self.method, self.path = method, path


@dataclass(frozen=True)
class Kind:
    """Where a resource lives in the API."""

    group: str
    version: str
    plural: str
    namespaced: bool

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        base = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{quote(namespace, safe='')}"
        base += f"/{self.plural}"
        return base + (f"/{quote(name, safe='')}" if name else "")

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @classmethod
    def of(cls, res: Any) -> Kind:
        """The Kind of a lightkube resource class."""
        from lightkube.core.resource import NamespacedResource

        info = res._api_info
        return cls(info.resource.group, info.resource.version, info.plural, issubclass(res, NamespacedResource))


POD = Kind("", "v1", "pods", True)
NAMESPACE = Kind("", "v1", "namespaces", False)
NODE = Kind("", "v1", "nodes", False)
EVENT = Kind("", "v1", "events", True)
STATEFULSET = Kind("apps", "v1", "statefulsets", True)
REPLICASET = Kind("apps", "v1", "replicasets", True)
JOB = Kind("batch", "v1", "jobs", True)


class Rest:
    def __init__(self, config: KubeConfig, *, field_manager: str, timeout: float = 30.0) -> None:
        single = config.get()
        if single is None or single.user is None:
            raise ValueError("the kubeconfig names no current context with a user")
        self._ssl: ssl.SSLContext | None = None
        self.server = single.cluster.server.rstrip("/")
        if self.server.startswith("https://"):
            self._ssl = verify_cluster(single.cluster, single.user, single.abs_file)
        self._token = single.user.token
        self._token_file = single.user.token_file
        if self._token_file and not self._token:
            self._token = _read_token(self._token_file)
        self.field_manager = field_manager
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_kubeconfig(cls, kubeconfig: str | None = None, *, field_manager: str) -> Rest:
        return cls(load_config(kubeconfig), field_manager=field_manager)

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # One connection per concurrent request, kept alive: no TLS handshake per request.
            connector = aiohttp.TCPConnector(ssl=self._ssl if self._ssl is not None else False, limit=64)
            self._session = aiohttp.ClientSession(self.server, connector=connector)
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
        for attempt in (1, 2):
            async with self.session.request(
                method,
                path,
                data=data,
                params=params,
                headers=self._headers(content_type if data is not None else None),
                timeout=self.timeout,
            ) as resp:
                raw = await resp.read()
                if resp.status == 401 and self._token_file and attempt == 1:
                    self._token = _read_token(self._token_file)  # rotated by the kubelet
                    continue
                if resp.status >= 400:
                    error = _error(resp.status, raw)
                    error.method, error.path = method, path
                    raise error
                return json.loads(raw) if raw else None
        raise AssertionError("unreachable")

    async def get(self, kind: Kind, name: str, namespace: str | None = None) -> dict[str, Any]:
        return dict(await self.request("GET", kind.path(namespace, name)))

    async def create(self, kind: Kind, obj: dict[str, Any]) -> dict[str, Any]:
        ns = obj.get("metadata", {}).get("namespace")
        params = {"fieldManager": self.field_manager}
        return dict(await self.request("POST", kind.path(ns), obj, params=params))

    async def replace(self, kind: Kind, obj: dict[str, Any], *, subresource: str = "") -> dict[str, Any]:
        meta = obj["metadata"]
        path = kind.path(meta.get("namespace"), meta["name"]) + (f"/{subresource}" if subresource else "")
        return dict(await self.request("PUT", path, obj, params={"fieldManager": self.field_manager}))

    async def patch(
        self, kind: Kind, name: str, body: dict[str, Any], namespace: str | None = None, *, subresource: str = ""
    ) -> dict[str, Any]:
        """A JSON merge patch (RFC 7386)."""
        path = kind.path(namespace, name) + (f"/{subresource}" if subresource else "")
        params = {"fieldManager": self.field_manager}
        return dict(await self.request("PATCH", path, body, params=params, content_type="application/merge-patch+json"))

    async def delete(self, kind: Kind, name: str, namespace: str | None = None, **params: str) -> None:
        await self.request("DELETE", kind.path(namespace, name), params=params or None)

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
        self, kind: Kind, namespace: str | None = None, *, resource_version: str, fields: str = "", labels: str = ""
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """(event type, object) from ``resource_version`` on, bookmarks included, until the server ends it."""
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


def _read_token(path: str) -> str:
    return Path(path).read_text().strip()  # a small local file: not worth a thread


def _error(status: int, raw: bytes) -> ApiError:
    try:
        body = json.loads(raw)
        return ApiError(status, str(body.get("reason", "")), str(body.get("message", "")))
    except ValueError:
        return ApiError(status, "", raw.decode(errors="replace")[:500])
