"""The agent's ``GET /v1/debug/addresses`` scan (``spiderpool.agent.debug``): bounded per namespace,
in all, and in how many reads may hang; what it says of pins that are no namespace. (Its answer
from a real namespace, through the apiserver's pod proxy: tests/inproc/test_cli_leaks.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from spiderpool.agent import debug
from spiderpool.agent.debug import Entry, PodAddresses


@contextlib.asynccontextmanager
async def pinned_netns(directory: Path) -> AsyncIterator[Path]:
    """A directory of pinned network namespaces, as a runtime keeps /var/run/netns: ``cni-test``, with
    a NIC (a veth, its peer beside it) holding 172.29.3.5/24, 172.29.3.6/24 and 10.99.0.1/24 (and IPv6
    link-local addresses) and loopback up, and ``cni-being-set-up``, a pin not mounted yet."""
    if os.geteuid() != 0:
        pytest.skip("creating a network namespace needs root")
    script = (
        "ip link set lo up && ip link add d0 type veth peer name d1 && ip addr add 172.29.3.5/24 dev d0"
        " && ip addr add 172.29.3.6/24 dev d0 && ip addr add 10.99.0.1/24 dev d0"
        " && ip link set d0 up && ip link set d1 up && echo ready && exec cat"
    )
    proc = await asyncio.create_subprocess_exec(
        "unshare", "--net", "sh", "-c", script, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(30):
            assert (await proc.stdout.readline()).strip() == b"ready"
        pins = directory / "netns"
        pins.mkdir()
        (pins / "cni-test").symlink_to(f"/proc/{proc.pid}/ns/net")  # (a pin: it opens as the namespace)
        (pins / "cni-being-set-up").write_text("")
        yield pins
    finally:
        proc.stdin.close()  # (cat ends, and with it the namespace)
        await proc.wait()


async def test_a_namespace_s_global_addresses(tmp_path: Path) -> None:
    async with pinned_netns(tmp_path) as pins:
        body = await PodAddresses("node1", str(pins)).scan()
    assert body["node"] == "node1"
    assert body["truncated"] == 0
    pending, pinned = body["namespaces"]
    assert pending["name"] == "cni-being-set-up"
    assert pending["error"].startswith("cannot read")
    assert pinned == {
        "name": "cni-test",
        "interfaces": [{"name": "d0", "addresses": ["10.99.0.1/24", "172.29.3.5/24", "172.29.3.6/24"]}],
    }


async def test_pins_that_are_no_namespace_and_a_missing_directory(tmp_path: Path) -> None:
    (tmp_path / "b-file").write_text("")
    (tmp_path / "a-dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "a-dir").mkdir()
    body = await PodAddresses("node1", str(tmp_path)).scan()
    assert [n["name"] for n in body["namespaces"]] == ["a-dangling", "b-file"]  # (no directory)
    assert all(n["error"].startswith("cannot read") for n in body["namespaces"])
    assert body["truncated"] == 0
    missing = await PodAddresses("node1", str(tmp_path / "absent")).scan()
    assert missing["namespaces"] == []
    assert missing["error"].startswith(f"cannot list {tmp_path / 'absent'}")


async def test_a_read_that_hangs_is_cut_short_and_not_repeated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("cni-a", "cni-b", "cni-c"):
        (tmp_path / name).write_text("")
    release = threading.Event()
    hung = str(tmp_path / "cni-b")

    def read(path: str) -> list[Entry]:
        if path == hung:
            release.wait(60)  # (a netlink dump that does not return)
        return [("eth0", "172.18.1.5", 16)]

    monkeypatch.setattr(debug, "read_netns", read)
    scanner = PodAddresses("node1", str(tmp_path), timeout=0.5, limit=2)
    body = await scanner.scan()
    assert body["namespaces"] == [
        {"name": "cni-a", "interfaces": [{"name": "eth0", "addresses": ["172.18.1.5/16"]}]},
        {"name": "cni-b", "error": "timed out after 0.5s"},
    ]
    assert body["truncated"] == 1  # (cni-c: over the limit)
    again = await scanner.scan()
    assert again["namespaces"][1] == {"name": "cni-b", "error": "an earlier read of it has not returned"}
    thread = scanner._stuck[hung]
    release.set()
    await asyncio.to_thread(thread.join)  # (its result was handed to the loop before it ended)
    third = await scanner.scan()
    assert third["namespaces"][1] == {"name": "cni-b", "interfaces": [{"name": "eth0", "addresses": ["172.18.1.5/16"]}]}


async def test_the_whole_scan_has_a_deadline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("cni-a", "cni-b", "cni-c"):
        (tmp_path / name).write_text("")
    release = threading.Event()

    def read(path: str) -> list[Entry]:
        release.wait(60)
        return []

    monkeypatch.setattr(debug, "read_netns", read)
    try:
        body = await PodAddresses("node1", str(tmp_path), timeout=0.4, deadline=0.6).scan()
    finally:
        release.set()
    assert body["namespaces"][0] == {"name": "cni-a", "error": "timed out after 0.4s"}
    assert len(body["namespaces"]) + body["truncated"] == 3
    # each read waited only what was left of the deadline
    waits = [float(n["error"].removeprefix("timed out after ").removesuffix("s")) for n in body["namespaces"]]
    assert sum(waits) <= 0.6 + 0.1
