"""Network namespaces and links for the lab, driven through iproute2 as an admin would.

The lab only ever creates namespaces whose names start with its prefix, and it never adds an
address or a route to the machine's root namespace: everything here takes a namespace name.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Sequence

NETNS_DIR = "/run/netns"


class NetnsError(RuntimeError):
    pass


def _run(argv: Sequence[str], *, input_text: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(list(argv), input=input_text, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def path(name: str) -> str:
    return f"{NETNS_DIR}/{name}"


def exists(name: str) -> bool:
    return os.path.exists(path(name))


def names() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def add(name: str) -> None:
    """Create a namespace with its loopback up (idempotent)."""
    if not exists(name):
        _run(["ip", "netns", "add", name])
    ip(name, ["link", "set", "lo", "up"])


def delete(name: str) -> None:
    """Delete a namespace and, with it, every link inside it (idempotent)."""
    if exists(name):
        _run(["ip", "netns", "delete", name], check=False)
    if exists(name):  # a stale mount point left by an interrupted run
        subprocess.run(["umount", "-l", path(name)], capture_output=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path(name))


def ip(netns: str, args: Sequence[str], *, check: bool = True) -> str:
    """Run ``ip ARGS`` inside ``netns``."""
    return _run(["ip", "-n", netns, *args], check=check)


def ip_batch(netns: str, commands: Sequence[str]) -> None:
    """Run several ``ip`` commands in one exec inside ``netns`` (stops at the first failure)."""
    _run(["ip", "-n", netns, "-batch", "-"], input_text="\n".join(commands) + "\n")


def ip_json(netns: str, args: Sequence[str]) -> list[dict[str, object]]:
    out = ip(netns, ["-j", *args])
    data = json.loads(out) if out.strip() else []
    return data if isinstance(data, list) else []


def sysctl(netns: str, settings: dict[str, str]) -> None:
    """Write per-namespace sysctls (``/proc/sys/net`` follows the writer's network namespace)."""
    argv = ["nsenter", f"--net={path(netns)}", "--", "sysctl", "-q", "-w"]
    _run([*argv, *(f"{k}={v}" for k, v in settings.items())])


def exec_argv(netns: str, argv: Sequence[str]) -> list[str]:
    """argv that runs a command inside ``netns`` (network only; the filesystem stays the host's)."""
    return ["nsenter", f"--net={path(netns)}", "--", *argv]
