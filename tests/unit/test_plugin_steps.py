"""The IPAM plugin's call (``spiderpool_ipam.steps``) driven both ways gives the same answer: by
``run`` (the script on the node: one ``ask`` per request) and by the agent's relay (on its event
loop, each request dispatched in place). The agent's answers here are canned: what is checked is
that the two drivers hand each reply, and each error, to the one implementation alike."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from spiderpool.agent.relay import Relay
from spiderpool.cni import spiderpool_ipam

CONF = json.dumps({"cniVersion": "1.0.0", "name": "net1", "type": "spiderpool", "ipam": {"type": "spiderpool"}})
ENV = {
    "CNI_CONTAINERID": "c1",
    "CNI_NETNS": "/var/run/netns/x",
    "CNI_IFNAME": "eth0",
    "CNI_ARGS": "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_UID=u1",
}
ALLOCATED = {
    "ips": [{"nic": "eth0", "address": "10.6.0.10/16", "version": 4, "gateway": "10.6.0.1"}],
    "routes": [{"ifName": "eth0", "dst": "0.0.0.0/0", "gw": "10.6.0.1"}],
}
USED_UP = {"code": 100, "msg": "no IPv4 address for interface eth0: pool1: all 3 usable IPs are allocated"}


def both(command: str, stdin: str, answers: dict[tuple[str, str], tuple[int, Any]]) -> list[Any]:
    """(stdout, exit code, requests seen) by run() and by the relay, for one call."""
    seen_run: list[tuple[str, str]] = []
    seen_relay: list[tuple[str, str]] = []
    env = {**ENV, "CNI_COMMAND": command}

    def ask(path: str, method: str, body: Any) -> Any:
        seen_run.append((method, path))
        return spiderpool_ipam.answer(*answers[(method, path)])

    by_run = spiderpool_ipam.run(env, stdin.encode(), "/opt/cni/bin/spiderpool", ask)

    async def dispatch(method: str, path: str, body: Any) -> tuple[int, Any]:
        seen_relay.append((method, path))
        return answers[(method, path)]

    async def relayed() -> tuple[str, int]:
        relay = Relay(dispatch)
        try:
            return await relay.steps(spiderpool_ipam.steps(env, stdin.encode(), "spiderpool"))
        finally:
            relay.close()

    by_relay = asyncio.run(relayed())
    assert by_run == by_relay
    assert seen_run == seen_relay
    out, code = by_run
    return [json.loads(out) if out else None, code, seen_run]


def test_an_add_gives_the_same_result_both_ways() -> None:
    out, code, seen = both("ADD", CONF, {("POST", "/v1/ipam/ip"): (200, ALLOCATED)})
    assert code == 0
    assert out["ips"] == [{"address": "10.6.0.10/16", "gateway": "10.6.0.1"}]
    assert seen == [("POST", "/v1/ipam/ip")]


def test_the_agents_error_is_the_same_cni_error_both_ways() -> None:
    out, code, _ = both("ADD", CONF, {("POST", "/v1/ipam/ip"): (409, USED_UP)})
    assert (code, out["code"]) == (1, 100)
    assert "all 3 usable IPs are allocated" in out["msg"]


def test_status_maps_an_unready_agent_to_code_50_both_ways() -> None:
    starting = {"code": 11, "msg": "spiderpool-agent is starting: caches not synced yet"}
    out, code, _ = both("STATUS", CONF, {("GET", "/v1/ipam/healthy"): (503, starting)})
    assert (code, out["code"]) == (1, 50)
    assert "caches not synced" in out["msg"]


def test_a_bad_config_asks_the_agent_nothing_either_way() -> None:
    bad = json.dumps({"cniVersion": "1.0.0", "name": "n", "ipam": {"type": "spiderpool", "default_ipv4_ippool": "p"}})
    out, code, seen = both("ADD", bad, {})
    assert (code, out["code"], seen) == (1, 7, [])
    assert "ipam.default_ipv4_ippool" in out["msg"]


def test_del_succeeds_both_ways() -> None:
    out, code, seen = both("DEL", CONF, {("DELETE", "/v1/ipam/ip"): (200, {"ok": True})})
    assert (out, code, seen) == (None, 0, [("DELETE", "/v1/ipam/ip")])


def test_a_caller_that_answers_never_looks_up_the_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_socket(argv0: str) -> str:
        raise AssertionError("the socket was looked up")

    monkeypatch.setattr(spiderpool_ipam, "default_socket", no_socket)
    _, code, _ = both("ADD", CONF, {("POST", "/v1/ipam/ip"): (200, ALLOCATED)})
    assert code == 0
