"""IPv4 duplicate-address and gateway detection by ARP (RFC 5227), from inside a pod's namespace.

Run by the agent for the ``veth`` plugin's ``detectIPConflict`` / ``detectGateway``: 3 tries of 100 ms
each, as upstream does. A reply to the probe for our own address from another MAC is a conflict; no
reply for the gateway means it is unreachable. IPv6 (NDP) is not probed.
"""

from __future__ import annotations

import ipaddress
import select
import socket
import struct
import time

ETH_P_ARP = 0x0806
PACKET_OUTGOING = 4
TRIES, TIMEOUT = 3, 0.1


def _mac_bytes(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


def _mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def who_has(ifname: str, mac: str, target: str, sender_ip: str = "0.0.0.0") -> str | None:
    """Ask for ``target`` on ``ifname``; return the MAC that answered (other than ours), or None."""
    own = _mac_bytes(mac)
    frame = (
        b"\xff" * 6
        + own
        + struct.pack("!H", ETH_P_ARP)
        + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)  # Ethernet, IPv4, request
        + own
        + ipaddress.IPv4Address(sender_ip).packed
        + b"\x00" * 6
        + ipaddress.IPv4Address(target).packed
    )
    want = ipaddress.IPv4Address(target).packed
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as s:
        s.bind((ifname, ETH_P_ARP))
        for _ in range(TRIES):
            s.send(frame)
            deadline = time.monotonic() + TIMEOUT
            while (left := deadline - time.monotonic()) > 0:
                ready, _, _ = select.select([s], [], [], left)
                if not ready:
                    break
                data, addr = s.recvfrom(128)
                if addr[2] == PACKET_OUTGOING or len(data) < 42:
                    continue
                op = struct.unpack("!H", data[20:22])[0]
                sender_mac, sender_ip_raw = data[22:28], data[28:32]
                if op == 2 and sender_ip_raw == want and sender_mac != own:
                    return _mac_text(sender_mac)
    return None
