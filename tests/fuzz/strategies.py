"""Hypothesis strategies for what users and runtimes hand us: JSON of any shape, address-like text
(valid, nearly valid and nonsense), pool names, annotation values, CNI configs and environments.

Structured strategies keep the right shape most of the time and put a wrong value somewhere, so the
inputs reach deep into the parsers instead of failing at the first key."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=24)
)
JSON = st.recursive(
    JSON_SCALARS,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids, max_size=4),
    max_leaves=10,
)

#: text with the characters that break parsers: separators, unicode digits, controls, NUL
NASTY = st.sampled_from(
    [
        "",
        " ",
        "\x00",
        "\n",
        "²",
        "\u0661\u0660",  # Arabic-Indic digits
        "9" * 5000,
        "-",
        "+",
        "+-1",
        "/",
        "*",
        "[",
        "..",
        "é",
        "\u202e",
        "a" * 300,
        "[" * 3000,
        "{" * 3000,
        "null",
        "[]",
        "{}",
        '"x"',
        "true",
    ]
)
TEXT = st.text(max_size=30) | NASTY

_V4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
_V6 = st.lists(st.integers(0, 0xFFFF), min_size=8, max_size=8).map(lambda xs: ":".join(f"{x:x}" for x in xs))
_NEAR = st.sampled_from(
    [
        "10.0.0.256",
        "10.0.0.0/33",
        "10.0.0.1/24",
        "10.0.0.0/0",
        "0.0.0.0/0",
        "::/0",
        "::ffff:10.0.0.1",
        "fe80::1%eth0",
        "010.0.0.1",
        "10.0.0",
        "10.0.0.1-",
        "10.0.0.9-10.0.0.1",
        "10.0.0.1-fd00::1",
        "0.0.0.0-255.255.255.255",
        "::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        " 10.0.0.1",
        "10.0.0.1 ",
        "172.18.0.1",
        "172.18.0.0/16",
        "172.18.40.1-172.18.40.9",
        "fd00:172:18::/64",
        "fd00:172:18::10-fd00:172:18::20",
    ]
)
IP_LIKE = (
    _NEAR
    | _V4
    | _V6
    | st.tuples(_V4, st.integers(-1, 40)).map(lambda t: f"{t[0]}/{t[1]}")
    | st.tuples(_V6, st.integers(-1, 140)).map(lambda t: f"{t[0]}/{t[1]}")
    | st.tuples(_V4, _V4).map(lambda t: f"{t[0]}-{t[1]}")
    | TEXT
)

_NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-."
#: what users write as a pool or subnet name: mostly valid, sometimes a wildcard or nonsense
NAME = (
    st.text(_NAME_CHARS, min_size=1, max_size=20)
    | st.sampled_from(["*", "p-*", "p-[ab]", "p-?", "default-v4", "fuzz-pool", "A_B", "x" * 260])
    | TEXT
)


def maybe_wrong(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Usually the right kind of value, sometimes any JSON at all."""
    return st.one_of(good, good, good, JSON)


NAMES = maybe_wrong(st.lists(maybe_wrong(NAME), max_size=3))


def _obj(required: dict[str, st.SearchStrategy[Any]], optional: dict[str, st.SearchStrategy[Any]]) -> Any:
    """An object with these keys (each value maybe wrong), an odd key now and then."""
    return st.fixed_dictionaries(
        {k: maybe_wrong(v) for k, v in required.items()},
        optional={**{k: maybe_wrong(v) for k, v in optional.items()}, "Unknown": JSON, "IPv4": NAMES},
    )


_CHOICE = _obj({}, {"interface": TEXT, "ipv4": NAMES, "ipv6": NAMES, "cleangateway": st.booleans()})
_ROUTE = _obj({"dst": IP_LIKE, "gw": IP_LIKE}, {})


def as_text(value: st.SearchStrategy[Any]) -> st.SearchStrategy[str]:
    """JSON text of the value, or raw text that is not JSON at all."""
    return st.one_of(value.map(json.dumps), value.map(json.dumps), TEXT)


#: annotation key -> strategy for its value, for every annotation spiderpool reads
POD_ANNOTATIONS: dict[str, st.SearchStrategy[str]] = {
    "ipam.spidernet.io/ippool": as_text(_CHOICE),
    "ipam.spidernet.io/ippools": as_text(st.lists(_CHOICE, max_size=3)),
    "ipam.spidernet.io/routes": as_text(st.lists(_ROUTE, max_size=3)),
    "ipam.spidernet.io/subnet": as_text(_CHOICE),
    "ipam.spidernet.io/subnets": as_text(st.lists(_CHOICE, max_size=3)),
    "ipam.spidernet.io/default-route-nic": TEXT,
    "v1.multus-cni.io/default-network": as_text(JSON) | TEXT,
    "k8s.v1.cni.cncf.io/networks": as_text(st.lists(_obj({"name": NAME}, {"namespace": NAME, "interface": TEXT})))
    | TEXT,
}
NAMESPACE_ANNOTATIONS: dict[str, st.SearchStrategy[str]] = {
    "ipam.spidernet.io/default-ipv4-ippool": as_text(NAMES),
    "ipam.spidernet.io/default-ipv6-ippool": as_text(NAMES),
}
APP_ANNOTATIONS: dict[str, st.SearchStrategy[str]] = {
    "ipam.spidernet.io/subnet": as_text(_CHOICE),
    "ipam.spidernet.io/subnets": as_text(st.lists(_CHOICE, max_size=3)),
    "ipam.spidernet.io/ippool-ip-number": st.one_of(
        st.integers(-5, 300).map(str), st.integers(-5, 300).map(lambda n: f"+{n}"), TEXT
    ),
    "ipam.spidernet.io/ippool-reclaim": st.sampled_from(["true", "false", "True", " false", "yes", "0"]) | TEXT,
    "ipam.spidernet.io/ip-retention-policy": as_text(_obj({}, {"whenScaled": TEXT, "whenDeleted": TEXT})),
}


def annotations(table: dict[str, st.SearchStrategy[str]]) -> st.SearchStrategy[dict[str, str]]:
    """A subset of the table's keys, each with a generated value."""
    return st.fixed_dictionaries({}, optional=dict(table))
