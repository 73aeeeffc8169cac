"""``POST /v1/cni/exec``: a CNI call forwarded by the static relay (``spiderpool.cni.relay``).

The relay sends the runtime's CNI_* variables as ``X-Cni-*`` headers, the executable's name as
``X-Cni-Plugin`` and the network config as the body. The call is run here by the Python plugin
itself (``spiderpool_ipam.steps`` or ``spiderpool_veth.run``, the code a script install runs on
the node); its requests to the agent are answered in-process, by the code that answers them on
the socket (``Agent.dispatch``). The reply is what the plugin would print, with ``X-Cni-Exit``
its exit code. So the relay and the Python plugin cannot disagree: there is one implementation
of the CNI side.

The IPAM plugin's call has no I/O of its own (``steps`` only yields requests): it runs on the
event loop, every request awaited in place. ``veth`` sets up links in the pod's namespace, which
blocks: it runs in a thread of its own, its requests handed to the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web

from spiderpool.cni import spiderpool_ipam, spiderpool_veth

PATH = "/v1/cni/exec"
#: the variables the relay forwards, by header
HEADERS = {
    "X-Cni-Command": "CNI_COMMAND",
    "X-Cni-Containerid": "CNI_CONTAINERID",
    "X-Cni-Netns": "CNI_NETNS",
    "X-Cni-Ifname": "CNI_IFNAME",
    "X-Cni-Args": "CNI_ARGS",
    "X-Cni-Path": "CNI_PATH",
}
Runner = Callable[..., tuple[str, int]]
#: the plugins that block (run in a thread); ``spiderpool`` runs on the loop
RUNNERS: dict[str, Runner] = {
    "veth": spiderpool_veth.run,
    "coordinator": spiderpool_veth.run,
}
PLUGINS = ("spiderpool", *RUNNERS)
#: calls run at once; each blocks a thread on its requests to this agent's loop, so they get
#: threads of their own (the loop's default executor does the agent's netlink work: sharing it
#: could leave every thread waiting on work that needs one)
THREADS = 64
#: (method, path, body) -> (HTTP status, reply): the agent answering one request
Dispatch = Callable[[str, str, Any], Coroutine[Any, Any, tuple[int, dict[str, Any]]]]


class Relay:
    def __init__(self, dispatch: Dispatch) -> None:
        self.dispatch = dispatch
        self.pool = ThreadPoolExecutor(THREADS, thread_name_prefix="cni-relay")

    async def handle(self, request: web.Request) -> web.Response:
        plugin = request.headers.get("X-Cni-Plugin", "")
        env = {var: request.headers[h] for h, var in HEADERS.items() if h in request.headers}
        stdin = await request.read()
        runner = RUNNERS.get(plugin)
        if plugin == "spiderpool":
            out, code = await self.steps(spiderpool_ipam.steps(env, stdin, plugin))
        elif runner is None:
            out, code = spiderpool_ipam.failure(
                spiderpool_ipam.CniError(
                    4,
                    f"the relay was installed under an unknown name {plugin!r}",
                    f"install it as one of {', '.join(sorted(PLUGINS))}",
                ),
                "1.1.0",
            )
        else:
            loop = asyncio.get_running_loop()

            def ask(path: str, method: str, body: Any) -> Any:  # (in the pool's thread)
                done = asyncio.run_coroutine_threadsafe(self.dispatch(method, path, body), loop)
                return spiderpool_ipam.answer(*done.result())

            out, code = await loop.run_in_executor(self.pool, runner, env, stdin, plugin, ask)
        return web.Response(body=out.encode(), content_type="application/json", headers={"X-Cni-Exit": str(code)})

    async def steps(self, call: spiderpool_ipam.Steps) -> tuple[str, int]:
        """Drive one IPAM call on the loop: each request answered by ``dispatch`` in place."""
        try:
            req = next(call)
            while True:
                status, reply = await self.dispatch(req.method, req.path, req.body)
                req = spiderpool_ipam.feed(call, spiderpool_ipam.answer, status, reply)
        except StopIteration as done:
            result: tuple[str, int] = done.value
            return result

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
