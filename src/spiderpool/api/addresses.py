"""Parsing of addresses and CIDRs, with messages that say what is wrong (shared by the API's
annotation parsers and the allocation logic)."""

from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class RangeError(ValueError):
    """A malformed address, CIDR or range; the message says what is wrong."""


def parse_ip(text: str) -> IPAddress:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        raise RangeError(f"{text!r} is not an IP address") from None


def parse_cidr(text: str, *, strict: bool = True) -> IPNetwork:
    """Parse a CIDR; with ``strict``, host bits must be zero (``172.18.0.0/16``, not ``172.18.1.0/16``)."""
    if "/" not in text:
        raise RangeError(f"{text!r} is not a CIDR: it needs a prefix length, e.g. 172.18.0.0/16")
    try:
        return ipaddress.ip_network(text.strip(), strict=strict)
    except ValueError as exc:
        if strict and "host bits set" in str(exc):
            net = ipaddress.ip_network(text.strip(), strict=False)
            raise RangeError(f"{text!r} has host bits set: the network address is {net}") from None
        raise RangeError(f"{text!r} is not a valid CIDR") from None
