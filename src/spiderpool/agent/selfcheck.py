"""What the agent says about itself to ``kubectl spiderpool doctor``: ``GET /v1/debug/status`` on the
metrics port (read-only; doctor reaches it through the apiserver's pod proxy).

The answer (JSON)::

    {"node": "node1", "version": "0.1.0", "ready": true,
     "socket": {"path": "/var/run/spidernet/spiderpool.sock", "answers": true, "error": null},
     "cniBinDir": "/opt/cni/bin", "pluginCheckInterval": 10.0,
     "plugins": [{"name": "spiderpool", "present": true, "form": "relay", "version": "0.1.0",
                  "problem": null}, ...],
     "missing": [],
     "pluginReinstalls": {"count": 1, "lastMissing": ["spiderpool"], "last": "2026-12-03T12:00:00Z",
                          "secondsAgo": 42.0, "lastError": null, "lastErrorSecondsAgo": null}}

``socket.answers``: the agent called its own unix socket (``GET /v1/ipam/healthy``, as the plugin
does) and got 200. ``pluginReinstalls``: the plugins found missing and put back since the agent
started, so a deletion is named even after the agent repaired it; ``secondsAgo`` is measured on the
agent's monotonic clock (its wall clock may be off).
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from spiderpool import __version__
from spiderpool.agent.install import inspect_plugins, missing_plugins

PATH = "/v1/debug/status"
#: how long the agent waits for its own socket's answer
SOCKET_TIMEOUT = 1.5


def _iso(wall: float) -> str:
    return datetime.datetime.fromtimestamp(wall, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class PluginHistory:
    """Plugins the agent found missing and put back (or failed to)."""

    count: int = 0
    last_missing: list[str] = field(default_factory=list)
    #: (monotonic, wall) of the last reinstall
    last: tuple[float, float] | None = None
    last_error: str = ""
    last_error_at: float | None = None  # monotonic

    def reinstalled(self, missing: list[str]) -> None:
        self.count += 1
        self.last_missing = list(missing)
        self.last = (time.monotonic(), time.time())

    def failed(self, error: str) -> None:
        self.last_error = error
        self.last_error_at = time.monotonic()

    def as_dict(self, now: float | None = None) -> dict[str, Any]:
        now = time.monotonic() if now is None else now
        return {
            "count": self.count,
            "lastMissing": self.last_missing,
            "last": _iso(self.last[1]) if self.last else None,
            "secondsAgo": round(now - self.last[0], 1) if self.last else None,
            "lastError": self.last_error or None,
            "lastErrorSecondsAgo": round(now - self.last_error_at, 1) if self.last_error_at is not None else None,
        }


async def socket_answers(path: str, within: float = SOCKET_TIMEOUT) -> dict[str, Any]:
    """Call ``GET /v1/ipam/healthy`` on the agent's own unix socket, as the plugin would."""
    error: str | None = None
    try:
        async with (
            asyncio.timeout(within),
            aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=path)) as session,
            session.get("http://spiderpool-agent/v1/ipam/healthy") as resp,
        ):
            if resp.status != 200:
                error = f"HTTP {resp.status}: {(await resp.text())[:200]}"
    except TimeoutError:
        error = f"no answer within {within:g}s"
    except (OSError, aiohttp.ClientError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    return {"path": path, "answers": error is None, "error": error}


class SelfCheck:
    """Serves ``GET /v1/debug/status``; the agent records its plugin reinstalls in ``history``."""

    def __init__(
        self, *, node: str, socket_path: str, bin_dir: Path, check_interval: float, ready: Callable[[], bool]
    ) -> None:
        self.node, self.socket_path, self.bin_dir = node, socket_path, bin_dir
        self.check_interval = check_interval
        self.ready = ready
        self.history = PluginHistory()

    async def report(self) -> dict[str, Any]:
        """The answer (see the module's doc)."""
        sock = await socket_answers(self.socket_path)
        bin_dir = self.bin_dir
        plugins, missing = await asyncio.to_thread(lambda: (inspect_plugins(bin_dir), missing_plugins(bin_dir)))
        return {
            "node": self.node,
            "version": __version__,
            "ready": self.ready(),
            "socket": sock,
            "cniBinDir": str(bin_dir),
            "pluginCheckInterval": self.check_interval,
            "plugins": [p.as_dict() for p in plugins],
            "missing": missing,
            "pluginReinstalls": self.history.as_dict(),
        }

    async def handle(self, _: web.Request) -> web.Response:
        return web.json_response(await self.report())
