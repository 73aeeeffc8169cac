"""Neighbor Solicitation frames and Advertisement parsing for the IPv6 gateway and conflict checks (pure)."""

from __future__ import annotations

import ipaddress
import struct

from spiderpool.net import ndp

MAC = "0a:1b:ac:12:4d:06"


def _icmp_sum_ok(frame: bytes) -> bool:
    src, dst, body = frame[22:38], frame[38:54], frame[54:]
    pseudo = src + dst + struct.pack("!I3xB", len(body), ndp.ICMPV6)
    return ndp._checksum(pseudo + body) == 0


def test_solicitation_from_the_pod_address() -> None:
    frame = ndp.solicitation(MAC, "fd00:172:18::77:6", "fd00:172:18::1")
    assert frame[:6] == bytes.fromhex("3333ff000001")  # the gateway's solicited-node group
    assert frame[12:14] == b"\x86\xdd"
    assert frame[20] == 58
    assert frame[21] == 255
    assert ipaddress.IPv6Address(frame[38:54]) == ipaddress.IPv6Address("ff02::1:ff00:1")
    assert frame[54] == ndp.NS
    assert ipaddress.IPv6Address(frame[62:78]) == ipaddress.IPv6Address("fd00:172:18::1")
    assert frame[78:80] == b"\x01\x01"
    assert frame[80:86] == bytes.fromhex("0a1bac124d06")
    assert _icmp_sum_ok(frame)


def test_duplicate_address_probe_has_no_source_option() -> None:
    frame = ndp.solicitation(MAC, "::", "fd00:172:18::77:5")
    assert frame[22:38] == b"\0" * 16
    assert len(frame) == 14 + 40 + 24
    assert _icmp_sum_ok(frame)


def _advert(target: str, sender: str, option_mac: str | None) -> bytes:
    body = struct.pack("!BBHI", ndp.NA, 0, 0, 0x20000000) + ipaddress.IPv6Address(target).packed
    if option_mac:
        body += b"\x02\x01" + bytes.fromhex(option_mac.replace(":", ""))
    ip6 = struct.pack("!IHBB", 6 << 28, len(body), 58, 255) + b"\0" * 32
    return b"\xff" * 6 + bytes.fromhex(sender.replace(":", "")) + b"\x86\xdd" + ip6 + body


def test_advertisement_names_its_owner() -> None:
    other = "02:00:00:00:00:99"
    assert ndp.advertiser(_advert("fd00::5", other, other), "fd00::5", MAC) == other
    assert ndp.advertiser(_advert("fd00::5", other, None), "fd00::5", MAC) == other  # from the frame then
    assert ndp.advertiser(_advert("fd00::6", other, other), "fd00::5", MAC) is None  # another target
    assert ndp.advertiser(_advert("fd00::5", MAC, MAC), "fd00::5", MAC) is None  # our own
    assert ndp.advertiser(b"\0" * 20, "fd00::5", MAC) is None
