"""IP address ranges as Spiderpool writes them: ``"172.18.30.131"`` or ``"172.18.30.131-172.18.30.140"``.

Pure arithmetic, no I/O. An :class:`IPSet` is a sorted list of disjoint, non-adjacent inclusive
integer intervals of one family, which makes merging, subtraction, counting and overlap checks cheap
even for large IPv6 ranges.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from spiderpool.api.addresses import IPAddress, IPNetwork, RangeError, parse_cidr, parse_ip

__all__ = ["IPAddress", "IPNetwork", "RangeError", "parse_cidr", "parse_ip"]


@dataclass(frozen=True, order=True)
class Interval:
    start: int
    end: int


def parse_range(text: str) -> tuple[int, Interval]:
    """Parse ``"a"`` or ``"a-b"``; return (family, interval)."""
    if "-" in text:
        left, _, right = text.partition("-")
        a, b = parse_ip(left), parse_ip(right)
        if a.version != b.version:
            raise RangeError(f"{text!r} mixes IPv{a.version} and IPv{b.version}")
        if int(a) > int(b):
            raise RangeError(f"{text!r} starts after it ends; write it as {b}-{a}")
        return a.version, Interval(int(a), int(b))
    a = parse_ip(text)
    return a.version, Interval(int(a), int(a))


def _addr(family: int, value: int) -> IPAddress:
    return ipaddress.IPv4Address(value) if family == 4 else ipaddress.IPv6Address(value)


class IPSet:
    """A set of addresses of one family, kept as merged intervals."""

    __slots__ = ("family", "intervals")

    def __init__(self, family: int, intervals: Iterable[Interval] = ()) -> None:
        self.family = family
        self.intervals = _merge(intervals)

    @classmethod
    def parse(cls, family: int, ranges: Iterable[str]) -> IPSet:
        """Parse range strings; raise :class:`RangeError` naming the first bad one."""
        out = []
        for text in ranges:
            fam, iv = parse_range(text)
            if fam != family:
                raise RangeError(f"{text!r} is IPv{fam}, expected IPv{family}")
            out.append(iv)
        return cls(family, out)

    def __len__(self) -> int:
        # len() must be an int that fits an index; IPv6 sets can be larger, so use count().
        return min(self.count(), 2**62)

    def count(self) -> int:
        return sum(iv.end - iv.start + 1 for iv in self.intervals)

    def __bool__(self) -> bool:
        return bool(self.intervals)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IPSet) and (self.family, self.intervals) == (other.family, other.intervals)

    def __hash__(self) -> int:
        return hash((self.family, tuple(self.intervals)))

    def __repr__(self) -> str:
        return f"IPSet({self.family}, {self.to_ranges()!r})"

    def __contains__(self, ip: object) -> bool:
        if isinstance(ip, str):
            try:
                ip = ipaddress.ip_address(ip)
            except ValueError:
                return False
        if not isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address) or ip.version != self.family:
            return False
        v = int(ip)
        return any(iv.start <= v <= iv.end for iv in self.intervals)

    def union(self, other: IPSet) -> IPSet:
        return IPSet(self.family, [*self.intervals, *other.intervals])

    def difference(self, other: IPSet) -> IPSet:
        out: list[Interval] = []
        cuts = other.intervals
        for iv in self.intervals:
            start = iv.start
            for cut in cuts:
                if cut.end < start or cut.start > iv.end:
                    continue
                if cut.start > start:
                    out.append(Interval(start, cut.start - 1))
                start = max(start, cut.end + 1)
                if start > iv.end:
                    break
            if start <= iv.end:
                out.append(Interval(start, iv.end))
        return IPSet(self.family, out)

    def intersection(self, other: IPSet) -> IPSet:
        out = []
        for a in self.intervals:
            for b in other.intervals:
                lo, hi = max(a.start, b.start), min(a.end, b.end)
                if lo <= hi:
                    out.append(Interval(lo, hi))
        return IPSet(self.family, out)

    def issubset(self, other: IPSet) -> bool:
        return not self.difference(other)

    def overlaps(self, other: IPSet) -> bool:
        return self.family == other.family and bool(self.intersection(other))

    def __iter__(self) -> Iterator[IPAddress]:
        for iv in self.intervals:
            for v in range(iv.start, iv.end + 1):
                yield _addr(self.family, v)

    def to_ranges(self) -> list[str]:
        """Canonical strings: single addresses alone, runs as ``a-b``, sorted."""
        out = []
        for iv in self.intervals:
            a = _addr(self.family, iv.start)
            out.append(str(a) if iv.start == iv.end else f"{a}-{_addr(self.family, iv.end)}")
        return out


def _merge(intervals: Iterable[Interval]) -> list[Interval]:
    merged: list[Interval] = []
    for iv in sorted(intervals):
        if merged and iv.start <= merged[-1].end + 1:
            if iv.end > merged[-1].end:
                merged[-1] = Interval(merged[-1].start, iv.end)
        else:
            merged.append(iv)
    return merged


def usable(ips: Iterable[str], exclude: Iterable[str], family: int) -> IPSet:
    """Addresses a pool can hand out: ``ips`` minus ``excludeIPs``."""
    return IPSet.parse(family, ips).difference(IPSet.parse(family, exclude))


def cidr_label(cidr: str) -> str:
    """Label-safe form of a CIDR, as upstream writes it: ``10.6.0.0/16`` -> ``10-6-0-0-16``."""
    return cidr.replace(".", "-").replace(":", "-").replace("/", "-")
