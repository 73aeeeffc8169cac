"""IP range arithmetic: parsing, merging, subtraction, counting."""

from __future__ import annotations

import pytest

from spiderpool.ipam.ranges import IPSet, RangeError, cidr_label, parse_cidr, parse_range, usable


def test_merge_sorts_and_joins_adjacent_and_overlapping() -> None:
    s = IPSet.parse(4, ["10.0.0.9", "10.0.0.1-10.0.0.3", "10.0.0.4", "10.0.0.2-10.0.0.5", "10.0.0.20-10.0.0.21"])
    assert s.to_ranges() == ["10.0.0.1-10.0.0.5", "10.0.0.9", "10.0.0.20-10.0.0.21"]
    assert s.count() == 8


def test_difference_and_intersection() -> None:
    s = IPSet.parse(4, ["10.0.0.1-10.0.0.10"])
    cut = IPSet.parse(4, ["10.0.0.3", "10.0.0.5-10.0.0.6", "10.0.0.10-10.0.0.12"])
    assert s.difference(cut).to_ranges() == ["10.0.0.1-10.0.0.2", "10.0.0.4", "10.0.0.7-10.0.0.9"]
    assert s.intersection(cut).to_ranges() == ["10.0.0.3", "10.0.0.5-10.0.0.6", "10.0.0.10"]
    assert cut.difference(s).to_ranges() == ["10.0.0.11-10.0.0.12"]
    assert not s.issubset(cut)
    assert IPSet.parse(4, ["10.0.0.5"]).issubset(s)


def test_ipv6_large_ranges_are_cheap() -> None:
    s = IPSet.parse(6, ["fd00::-fd00::ffff:ffff:ffff:ffff"])
    assert s.count() == 2**64
    assert "fd00::1234" in s
    assert "fd01::1" not in s
    assert s.difference(IPSet.parse(6, ["fd00::"])).count() == 2**64 - 1


def test_usable_is_ips_minus_exclude() -> None:
    u = usable(["172.18.30.131-172.18.30.140"], ["172.18.30.135"], 4)
    assert u.count() == 9
    assert "172.18.30.135" not in u


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10.0.0.9-10.0.0.1", "starts after it ends; write it as 10.0.0.1-10.0.0.9"),
        ("10.0.0.1-fd00::1", "mixes IPv4 and IPv6"),
        ("10.0.0.300", "is not an IP address"),
        ("10.0.0.1-", "is not an IP address"),
    ],
)
def test_bad_ranges_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(RangeError, match=message):
        parse_range(text)


def test_family_mismatch_in_a_set() -> None:
    with pytest.raises(RangeError, match="is IPv6, expected IPv4"):
        IPSet.parse(4, ["fd00::1"])


def test_cidr_parsing_and_labels() -> None:
    assert str(parse_cidr("FD00:0:0:1::/64")) == "fd00:0:0:1::/64"
    with pytest.raises(RangeError, match=r"host bits set: the network address is 172\.18\.0\.0/16"):
        parse_cidr("172.18.1.0/16")
    with pytest.raises(RangeError, match="needs a prefix length"):
        parse_cidr("172.18.0.0")
    assert cidr_label("10.6.0.0/16") == "10-6-0-0-16"
    assert cidr_label("fd00::/64") == "fd00---64"
