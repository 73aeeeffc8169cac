"""Send a link-layer frame from a pod's interface and wait for the answer: the exchange under the ARP
(IPv4) and NDP (IPv6) checks. 3 tries of 100 ms each, as upstream does."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable

PACKET_OUTGOING = 4
TRIES, TIMEOUT = 3, 0.1


def mac_bytes(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


def mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def ask(ifname: str, ethertype: int, frame: bytes, answer: Callable[[bytes], str | None]) -> str | None:
    """Send ``frame`` on ``ifname`` up to TRIES times; the first non-None ``answer(received frame)``."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ethertype)) as s:
        s.bind((ifname, ethertype))
        for _ in range(TRIES):
            s.send(frame)
            deadline = time.monotonic() + TIMEOUT
            while (left := deadline - time.monotonic()) > 0:
                ready, _, _ = select.select([s], [], [], left)
                if not ready:
                    break
                data, addr = s.recvfrom(256)
                if addr[2] == PACKET_OUTGOING:
                    continue
                found = answer(data)
                if found is not None:
                    return found
    return None
