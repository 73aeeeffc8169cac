"""Start, find and stop the lab's background processes.

Every process the lab starts carries ``SPIDERPOOL_LAB_ID=<id>`` in its environment, and so do its
children (CNI plugins, responders). Teardown finds them by that mark in ``/proc``, so nothing can
outlive the lab even when a pid file is lost or a child was re-parented.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from spiderpool_lab import netns as netns_mod

MARK = "SPIDERPOOL_LAB_ID"


class WaitTimeout(TimeoutError):
    pass


def wait_for(
    condition: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    interval: float = 0.2,
    detail: Callable[[], str] | None = None,
) -> None:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass (then raise with ``detail()``)."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return
        if time.monotonic() > deadline:
            extra = ""
            if detail is not None:
                try:
                    extra = "\n" + detail()
                except Exception as exc:  # the detail is only a diagnostic
                    extra = f"\n(no detail: {exc})"
            raise WaitTimeout(f"timed out after {timeout:.0f}s waiting for {what}{extra}")
        time.sleep(interval)


def start(
    argv: Sequence[str],
    *,
    lab_id: str,
    log: Path,
    netns: str | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> int:
    """Start a detached process (own session) logging to ``log``; return its pid."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env[MARK] = lab_id
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as fh:
        proc = subprocess.Popen(
            netns_mod.exec_argv(netns, argv) if netns else list(argv),
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=cwd,
            start_new_session=True,
        )
    return proc.pid


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _environ(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            return fh.read()
    except OSError:
        return b""


def marked(lab_id: str) -> list[int]:
    """Pids of live processes carrying this lab's mark."""
    needle = f"{MARK}={lab_id}".encode()
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            env = _environ(int(entry))
            if needle in env.split(b"\0") and alive(int(entry)):
                out.append(int(entry))
    return out


def stop(pids: Sequence[int], *, timeout: float = 10.0) -> None:
    """SIGTERM the processes (and their process groups), then SIGKILL what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            for kill in (os.killpg, os.kill):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    kill(pid, sig)
        try:
            wait_for(lambda: not any(alive(p) for p in pids), timeout=timeout, what="processes to exit")
            return
        except WaitTimeout:
            continue
    _reap()


def _reap() -> None:
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return f"--- last {min(lines, len(text))} lines of {path} ---\n" + "\n".join(text[-lines:])


_handed_out: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def port_free(port: int) -> bool:
    """Whether ``port`` can be bound on loopback right now."""
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port free on loopback right now, for a server the lab is about to start.

    Picked below the kernel's ephemeral range: a port from ``bind(0)`` lies inside it, and any
    outgoing connection (the apiserver to etcd, a client to the apiserver) may take it as its
    source port before the server binds it; that made control-plane starts fail now and then.
    A port is never handed out twice by one process.
    """
    import random

    lo, _ = _ephemeral_range()
    first, last = 20000, lo - 1
    if last - first < 1000:  # an unusual range: fall back to the kernel's choice
        first, last = 10000, 65000
    for _ in range(200):
        port = random.randint(first, last)
        if port not in _handed_out and port_free(port):
            _handed_out.add(port)
            return port
    raise RuntimeError(f"no free TCP port on 127.0.0.1 in {first}-{last}")
