"""Relay TCP between network namespaces: listen in one, connect from another.

A socket keeps the namespace it was made in, so the listening socket and each outgoing one are
made after entering their namespace. The lab uses it to reach the apiserver from the machine's
root namespace: ``--connect-netns <cp>`` relays root's 127.0.0.1:<port> to the apiserver on the
control plane namespace's loopback, so no lab address is ever routed or dialled from the root
namespace, and the apiserver listens nowhere on the machine's own addresses.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import signal
import socket
from collections.abc import Callable
from typing import TypeVar

CLONE_NEWNET = 0x40000000
T = TypeVar("T")


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def in_netns(netns_path: str | None, make: Callable[[], T]) -> T:
    """``make()`` run with the calling thread inside ``netns_path`` (then back home)."""
    if netns_path is None:
        return make()
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(netns_path, os.O_RDONLY)
    try:
        _setns(target)
        try:
            return make()
        finally:
            _setns(home)
    finally:
        os.close(home)
        os.close(target)


def listen_in_netns(netns_path: str | None, port: int) -> socket.socket:
    """A listening TCP socket on 127.0.0.1:port inside a network namespace (None: this one)."""

    def make() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(128)
        sock.setblocking(False)
        return sock

    return in_netns(netns_path, make)


def socket_in_netns(netns_path: str | None) -> socket.socket:
    """An unconnected TCP socket that lives in a network namespace."""

    def make() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        return sock

    return in_netns(netns_path, make)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def serve(sock: socket.socket, connect_netns: str | None, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            out = socket_in_netns(connect_netns)
            await loop.sock_connect(out, (host, port))
            up_r, up_w = await asyncio.open_connection(sock=out)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(_pipe(client_r, up_w), _pipe(up_r, client_w))

    server = await asyncio.start_server(handle, sock=sock)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen-netns", help="namespace name to listen in (default: this one)")
    parser.add_argument("--listen-port", type=int, required=True, help="port on 127.0.0.1 to listen on")
    parser.add_argument("--connect-netns", help="namespace name to connect from (default: this one)")
    parser.add_argument("--connect-port", type=int, required=True, help="port on 127.0.0.1 to connect to")
    args = parser.parse_args()

    def path(name: str | None) -> str | None:
        return f"/run/netns/{name}" if name else None

    sock = listen_in_netns(path(args.listen_netns), args.listen_port)
    asyncio.run(serve(sock, path(args.connect_netns), "127.0.0.1", args.connect_port))


if __name__ == "__main__":
    main()
