"""The agent's socket API with generated bodies on every route: the reply is JSON, an error carries
a CNI code and a message, and nothing answers 500 or shows a traceback."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.fuzz import strategies as fz
from tests.fuzz.conftest import LAB, NS, PODS, POOL, FuzzAgent, assert_cni_error, count
from tests.fuzz.test_plugin import SAFE_NETNS

ROUTES = [
    ("POST", "/v1/ipam/ip"),
    ("DELETE", "/v1/ipam/ip"),
    ("POST", "/v1/ipam/check"),
    ("POST", "/v1/ipam/gc"),
    ("POST", "/v1/coordinator/add"),
    ("POST", "/v1/coordinator/del"),
    ("POST", "/v1/coordinator/check"),
]
_CONFIG = fz.maybe_wrong(
    st.fixed_dictionaries(
        {"cniVersion": st.sampled_from(["0.3.1", "1.0.0"])},
        optional={
            "type": st.just("veth"),
            "mode": fz.maybe_wrong(st.sampled_from(["auto", "underlay", "overlay", "disabled"])),
            "prevResult": fz.JSON,
            "service_cidr": fz.maybe_wrong(st.lists(fz.IP_LIKE, max_size=2)),
            "podRPFilter": fz.JSON,
        },
    )
)
BODY = st.fixed_dictionaries(
    {},
    optional={
        "containerID": fz.maybe_wrong(st.text("0123456789abcdef", min_size=1, max_size=64)),
        "ifName": fz.maybe_wrong(st.sampled_from(["eth0", "net1"])),
        "netNamespace": fz.maybe_wrong(SAFE_NETNS),
        "netns": fz.maybe_wrong(SAFE_NETNS),
        "podNamespace": fz.maybe_wrong(st.just(NS)),
        "podName": fz.maybe_wrong(st.sampled_from(PODS)),
        "podUID": fz.maybe_wrong(st.just("@uid")),
        "defaultIPv4IPPool": fz.maybe_wrong(st.just([POOL])),
        "defaultIPv6IPPool": fz.NAMES,
        "cleanGateway": fz.JSON,
        "ips": fz.maybe_wrong(st.lists(fz.IP_LIKE, max_size=2)),
        "validAttachments": fz.maybe_wrong(
            st.lists(st.fixed_dictionaries({"containerID": fz.TEXT, "ifname": fz.TEXT}), max_size=2)
        ),
        "network": fz.JSON,
        "config": _CONFIG,
    },
)


def _payload(agent: FuzzAgent, value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, dict) and value.get("podUID") == "@uid":
        value = {**value, "podUID": agent.pods[PODS[0]]["metadata"]["uid"]}
    return json.dumps(value).encode()


def _unsafe(value: Any) -> bool:
    """A generated body whose netns fields could name a real namespace (never sent)."""
    if not isinstance(value, dict):
        return False
    paths = [value.get(k) for k in ("netns", "netNamespace")]
    return any(isinstance(p, str) and "/" in p and "fuzz-absent" not in p for p in paths)


@settings(LAB, max_examples=350)
@given(
    st.sampled_from(ROUTES),
    st.one_of(BODY, BODY, fz.JSON, st.binary(max_size=48), fz.TEXT.map(lambda s: s.encode())),
)
@example(("POST", "/v1/ipam/ip"), [1, 2])  # a body that is not an object: AttributeError, a 500
@example(("POST", "/v1/coordinator/add"), {"ifName": "eth0", "containerID": "c", "netns": "x"})  # no config: KeyError
@example(("POST", "/v1/ipam/gc"), {"validAttachments": [1]})
def test_every_route_answers_json_with_a_code_never_a_500(
    fuzz_agent: FuzzAgent, route: tuple[str, str], body: Any
) -> None:
    if _unsafe(body):
        return
    count("agent socket API bodies")
    method, path = route
    status, raw = fuzz_agent.raw(method, path, _payload(fuzz_agent, body))
    text = raw.decode(errors="replace")
    assert "Traceback" not in text, text
    assert status != 500, text
    assert status in (200, 400, 404, 409, 503), (status, text)
    reply = json.loads(text)
    if status >= 400:
        assert_cni_error(reply)
    elif method == "POST" and path == "/v1/ipam/ip" and isinstance(body, dict):
        uid = fuzz_agent.pods[PODS[0]]["metadata"]["uid"] if body.get("podUID") == "@uid" else ""
        pod = fuzz_agent.pods.get(str(body.get("podName")))
        fuzz_agent.holders.add((uid or (pod or {}).get("metadata", {}).get("uid", ""), str(body["ifName"])))


@settings(LAB, max_examples=30)
@given(st.sampled_from(["/v1/nothing", "/v1/ipam", "/v1/ipam/ip/", "/../v1/ipam/ip"]), st.sampled_from(["GET", "PUT"]))
def test_unknown_paths_and_methods_are_refused_plainly(fuzz_agent: FuzzAgent, path: str, method: str) -> None:
    count("agent socket API bodies")
    status, raw = fuzz_agent.raw(method, path, b"{}")
    assert status in (404, 405), (status, raw)
    assert b"Traceback" not in raw


@settings(LAB, max_examples=40)
@given(st.dictionaries(st.sampled_from(["podNamespace", "podName", "x"]), fz.TEXT.filter(lambda s: "\x00" not in s)))
def test_coordinator_config_answers_for_any_query(fuzz_agent: FuzzAgent, query: dict[str, str]) -> None:
    count("agent socket API bodies")
    from urllib.parse import urlencode

    url = "/v1/coordinator/config?" + urlencode(query)
    status, raw = fuzz_agent.raw("GET", url, b"")
    if len(url) > 8190:  # past what any HTTP server takes in a request line: refused before routing
        assert status == 400, (status, raw)
        return
    assert status == 200, (status, raw)
    assert isinstance(json.loads(raw), dict)
