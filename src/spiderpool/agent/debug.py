"""``GET /v1/debug/addresses`` on the agent's metrics port: the addresses configured in this node's
pod network namespaces, for ``kubectl spiderpool leaks --node`` (which reaches it through the
apiserver's pod proxy and reports the addresses of our pools that no record holds).

Read-only and bounded: the namespaces are the files of ``/var/run/netns`` (where the runtimes pin
their pods' namespaces; the agent mounts it), at most ``MAX_NAMESPACES`` of them, each read by one
netlink dump in a thread of its own that has entered it, with ``NETNS_TIMEOUT`` per namespace and
``DEADLINE`` for the whole answer; one scan runs at a time. Loopback and link-local addresses are left
out. A namespace whose read did not return is skipped, said so, until that read ends.

The answer::

    {"node": "node1",
     "namespaces": [{"name": "cni-0b5a...", "interfaces": [{"name": "eth0", "addresses": ["172.18.30.5/16"]}]},
                    {"name": "cni-77e1...", "error": "timed out after 1.0s"}],
     "truncated": 0}

``truncated``: how many namespaces were not read (over the limit, or past the deadline); a top-level
``error`` says why none could be listed (no such directory).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
import threading
import time
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from spiderpool.net import fastnl
from spiderpool.net.veth import run_in_netns

NETNS_DIR = "/var/run/netns"
#: seconds one namespace's read may take
NETNS_TIMEOUT = 1.0
#: seconds the whole answer may take (the CLI waits a few seconds for it)
DEADLINE = 3.0
MAX_NAMESPACES = 1024

#: (interface name, address, prefix length)
Entry = tuple[str, str, int]


def interfaces(entries: Iterable[Entry]) -> list[dict[str, Any]]:
    """Each interface with its addresses (``ip/prefix``), sorted; loopback, link-local, multicast and
    unspecified addresses, and the ``lo`` interface, are left out."""
    out: dict[str, list[str]] = {}
    for name, address, prefix in entries:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            continue
        if name == "lo" or ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified:
            continue
        out.setdefault(name, []).append(f"{ip}/{prefix}")
    return [{"name": name, "addresses": sorted(set(addrs))} for name, addrs in sorted(out.items())]


def answer(node: str, results: Iterable[tuple[str, list[Entry] | str]], truncated: int) -> dict[str, Any]:
    """The response body: ``results`` are (namespace, its entries or an error message)."""
    namespaces: list[dict[str, Any]] = []
    for name, got in results:
        if isinstance(got, str):
            namespaces.append({"name": name, "error": got})
        else:
            namespaces.append({"name": name, "interfaces": interfaces(got)})
    return {"node": node, "namespaces": namespaces, "truncated": truncated}


def read_netns(path: str) -> list[Entry]:
    """The global-scope addresses of the namespace pinned at ``path`` (blocking: a thread of its own)."""

    def inside() -> list[Entry]:
        out = []
        for index, address, prefix in fastnl.global_prefixes():
            try:
                name = socket.if_indextoname(index)  # (asked in this namespace: the thread is in it)
            except OSError:
                name = f"if{index}"
            out.append((name, address, prefix))
        return out

    return run_in_netns(path, inside)


class PodAddresses:
    """The handler; ``netns_dir`` is the runtimes' pin directory (a test's own directory in tests)."""

    def __init__(
        self,
        node: str,
        netns_dir: str = NETNS_DIR,
        *,
        timeout: float = NETNS_TIMEOUT,
        deadline: float = DEADLINE,
        limit: int = MAX_NAMESPACES,
    ) -> None:
        self.node, self.netns_dir = node, netns_dir
        self.timeout, self.deadline, self.limit = timeout, deadline, limit
        self._scanning = False
        #: namespaces whose read has not returned yet: path -> its thread (not read again meanwhile)
        self._stuck: dict[str, threading.Thread] = {}

    def _read(self, path: str) -> asyncio.Future[list[Entry]]:
        """Read ``path`` in a daemon thread (one that never returns cannot hold up the agent's exit,
        nor take a worker of the event loop's executor); the future resolves when it returns."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Entry]] = loop.create_future()

        def deliver(value: list[Entry] | None, error: BaseException | None) -> None:
            self._stuck.pop(path, None)
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(value or [])

        def target() -> None:
            try:
                value, error = read_netns(path), None
            except BaseException as exc:  # handed to the event loop
                value, error = None, exc
            with contextlib.suppress(RuntimeError):  # the loop closed while the read hung: nobody waits
                loop.call_soon_threadsafe(deliver, value, error)

        thread = threading.Thread(target=target, name="netns-addresses", daemon=True)
        self._stuck[path] = thread
        thread.start()
        return future

    async def scan(self) -> dict[str, Any]:
        try:
            names = sorted(e.name for e in os.scandir(self.netns_dir) if not e.is_dir(follow_symlinks=False))
        except OSError as exc:
            return {**answer(self.node, [], 0), "error": f"cannot list {self.netns_dir}: {exc.strerror or exc}"}
        results: list[tuple[str, list[Entry] | str]] = []
        end = time.monotonic() + self.deadline
        truncated = max(0, len(names) - self.limit)
        for i, name in enumerate(names[: self.limit]):
            left = end - time.monotonic()
            if left <= 0:
                truncated += len(names[: self.limit]) - i
                break
            path = os.path.join(self.netns_dir, name)
            if path in self._stuck:
                results.append((name, "an earlier read of it has not returned"))
                continue
            wait = min(self.timeout, left)
            try:
                async with asyncio.timeout(wait):
                    results.append((name, await self._read(path)))
            except TimeoutError:
                results.append((name, f"timed out after {wait:.1f}s"))
            except OSError as exc:  # not a namespace (a pin being set up), gone meanwhile, refused
                results.append((name, f"cannot read: {exc.strerror or exc}"))
            except Exception as exc:  # whatever else: this namespace's entry says so, the rest stand
                results.append((name, f"cannot read: {type(exc).__name__}: {exc}"))
        return answer(self.node, results, truncated)

    async def handle(self, _: web.Request) -> web.Response:
        if self._scanning:
            return web.json_response({"error": "a scan is in progress; ask again in a moment"}, status=503)
        self._scanning = True
        try:
            return web.json_response(await self.scan())
        finally:
            self._scanning = False
