"""IPv6 neighbour discovery (RFC 4861) for the veth plugin's gateway check, and the kernel's own
duplicate address detection (RFC 4862) read back, from inside a pod's namespace.

For IPv6 the kernel already probes every new address (DAD); what is left to us is to wait for its
verdict and act on it: an address marked ``dadfailed`` belongs to someone else on the LAN. The
gateway check is a Neighbor Solicitation from the pod's address, answered by a Neighbor Advertisement.
3 tries of 100 ms each, as for ARP.
"""

from __future__ import annotations

import ipaddress
import struct

from spiderpool.net import l2probe

ETH_P_IPV6 = 0x86DD
ICMPV6, NS, NA = 58, 135, 136


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(int(x) for x in struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def solicited_node(target: str) -> ipaddress.IPv6Address:
    """ff02::1:ffXX:XXXX, the multicast group of ``target``'s last 24 bits."""
    low = ipaddress.IPv6Address(target).packed[-3:]
    return ipaddress.IPv6Address(bytes.fromhex("ff0200000000000000000001ff") + low)


def solicitation(mac: str, source: str, target: str) -> bytes:
    """An Ethernet frame carrying a Neighbor Solicitation for ``target`` from ``source`` (with our
    link-layer address as its option), to ``target``'s solicited-node group."""
    src = ipaddress.IPv6Address(source)
    group = solicited_node(target)
    body = struct.pack("!BBHI", NS, 0, 0, 0) + ipaddress.IPv6Address(target).packed
    if not src.is_unspecified:  # RFC 4861 7.1.1: no source link-layer option from ::
        body += struct.pack("!BB", 1, 1) + l2probe.mac_bytes(mac)
    pseudo = src.packed + group.packed + struct.pack("!I3xB", len(body), ICMPV6)
    body = body[:2] + struct.pack("!H", _checksum(pseudo + body)) + body[4:]
    ip6 = struct.pack("!IHBB", 6 << 28, len(body), ICMPV6, 255) + src.packed + group.packed
    eth = b"\x33\x33" + group.packed[-4:] + l2probe.mac_bytes(mac) + struct.pack("!H", ETH_P_IPV6)
    return eth + ip6 + body


def advertiser(frame: bytes, target: str, own_mac: str) -> str | None:
    """The MAC of the host a frame advertises ``target`` for, if it is a Neighbor Advertisement from
    another host; else None."""
    if len(frame) < 14 + 40 + 24 or struct.unpack("!H", frame[12:14])[0] != ETH_P_IPV6:
        return None
    ip6, icmp = frame[14:54], frame[54:]
    if ip6[6] != ICMPV6 or icmp[0] != NA or icmp[8:24] != ipaddress.IPv6Address(target).packed:
        return None
    sender = frame[6:12]
    options = icmp[24:]
    while len(options) >= 8 and options[1]:  # the target link-layer option names the owner best
        kind, length = options[0], options[1] * 8
        if kind == 2 and length >= 8:
            sender = options[2:8]
            break
        options = options[length:]
    return None if sender == l2probe.mac_bytes(own_mac) else l2probe.mac_text(sender)


def who_has(ifname: str, mac: str, target: str, source: str) -> str | None:
    """Solicit ``target`` on ``ifname`` from ``source``; return the MAC that answered, or None."""
    frame = solicitation(mac, source, target)
    return l2probe.ask(ifname, ETH_P_IPV6, frame, lambda data: advertiser(data, target, mac))
