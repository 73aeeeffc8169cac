"""IPv4 duplicate-address and gateway detection by ARP (RFC 5227), from inside a pod's namespace.

Run by the agent for the ``veth`` plugin's ``detectIPConflict`` / ``detectGateway``: 3 tries of 100 ms
each, as upstream does. A reply to the probe for our own address from another MAC is a conflict; no
reply for the gateway means it is unreachable. IPv6: ``spiderpool.net.ndp``.
"""

from __future__ import annotations

import ipaddress
import struct

from spiderpool.net import l2probe

ETH_P_ARP = 0x0806


def who_has(ifname: str, mac: str, target: str, sender_ip: str = "0.0.0.0") -> str | None:
    """Ask for ``target`` on ``ifname``; return the MAC that answered (other than ours), or None."""
    own = l2probe.mac_bytes(mac)
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

    def answer(data: bytes) -> str | None:
        if len(data) < 42 or struct.unpack("!H", data[20:22])[0] != 2:  # an ARP reply
            return None
        sender_mac, sender_ip = data[22:28], data[28:32]
        return l2probe.mac_text(sender_mac) if sender_ip == want and sender_mac != own else None

    return l2probe.ask(ifname, ETH_P_ARP, frame, answer)
