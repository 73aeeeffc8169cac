"""Stdlib look-ups on the hot path of every pod's veth ADD and DEL, where pyroute2 is slow.

pyroute2 decodes every attribute of every message into Python objects: a whole-node dump (every host
veth and its IPv6 link-local address, every table-500 route) costs milliseconds per hundred pods,
and even one interface's message costs about a millisecond. These ask the kernel for exactly what is
needed (ioctls, or a dump the kernel filters itself under strict checking) and read only the fields
used. They act in the calling thread's network namespace.
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct

SIOCGIFHWADDR = 0x8927
SOL_NETLINK, NETLINK_GET_STRICT_CHK = 270, 12
RTM_GETADDR, RTM_GETROUTE = 22, 26
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_TABLE = 15
RT_TABLE_COMPAT = 252


def index(name: str) -> int | None:
    """The interface's index, or None if there is none of that name."""
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return None


def hwaddr(name: str) -> str:
    """The interface's MAC address."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        raw = fcntl.ioctl(s.fileno(), SIOCGIFHWADDR, struct.pack("256s", name.encode()[:15]))
    return ":".join(f"{b:02x}" for b in raw[18:24])


def _dump(msg_type: int, body: bytes) -> list[tuple[bytes, dict[int, bytes]]]:
    """One strict-checked dump: (fixed header, {attribute type: value}) per message."""
    header_len = {RTM_GETADDR: 8, RTM_GETROUTE: 12}[msg_type]
    out: list[tuple[bytes, dict[int, bytes]]] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as s:
        s.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
        s.send(struct.pack("=IHHII", 16 + len(body), msg_type, NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + body)
        while True:
            data = s.recv(1 << 16)
            off = 0
            while off + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, off)
                if kind == NLMSG_DONE:
                    return out
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", data, off + 16)[0]
                    if code:
                        raise OSError(code, "netlink dump refused")
                    return out
                fixed = data[off + 16 : off + 16 + header_len]
                attrs: dict[int, bytes] = {}
                pos, end = off + 16 + header_len, off + length
                while pos + 4 <= end:
                    alen, atype = struct.unpack_from("=HH", data, pos)
                    if alen < 4:
                        break
                    attrs.setdefault(atype & 0x3FFF, data[pos + 4 : pos + alen])
                    pos += (alen + 3) & ~3
                out.append((fixed, attrs))
                off += (length + 3) & ~3


def global_addresses() -> list[tuple[int, str]]:
    """(interface index, address) of every address of global scope."""
    return [(ifindex, address) for ifindex, address, _ in global_prefixes()]


def global_prefixes() -> list[tuple[int, str, int]]:
    """(interface index, address, prefix length) of every address of global scope."""
    out = []
    for family in (socket.AF_INET, socket.AF_INET6):
        body = struct.pack("=BBBBI", family, 0, 0, 0, 0)
        for fixed, attrs in _dump(RTM_GETADDR, body):
            _, prefix, _, scope, ifindex = struct.unpack("=BBBBI", fixed)
            raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
            if scope != 0 or raw is None:
                continue
            out.append((ifindex, str(ipaddress.ip_address(raw)), prefix))
    return out


def table_has_routes(family: int, table: int) -> bool:
    """Whether routing table ``table`` holds any route of ``family`` (4 or 6); the kernel filters."""
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    body = struct.pack("=BBBBBBBBI", af, 0, 0, 0, min(table, RT_TABLE_COMPAT), 0, 0, 0, 0)
    body += struct.pack("=HHI", 8, RTA_TABLE, table)
    for fixed, attrs in _dump(RTM_GETROUTE, body):
        got = struct.unpack("=I", attrs[RTA_TABLE])[0] if RTA_TABLE in attrs else fixed[4]
        if got == table:  # a kernel without table filtering sends every table
            return True
    return False
