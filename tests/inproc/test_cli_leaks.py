"""`kubectl spiderpool leaks` as users run it (the real kubectl, the plugin on PATH) against a real
apiserver: each kind of leak planted, found, fixed with `--fix --yes`, and a second run clean; with
`--node`, the agent's answer reached through the apiserver's pod proxy, from a server of the test's
own (the agent's real handler) on this machine's address."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import pty
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from spiderpool.agent.debug import PodAddresses
from spiderpool.cli import leaks
from spiderpool.ipam.allocate import record_name
from spiderpool.k8s.client import ApiError, Client
from spiderpool.k8s.kinds import IPALLOCATION, IPPOOL, NODE, POD
from spiderpool.net import fastnl
from spiderpool_lab import build, procs
from spiderpool_lab.envtest import ApiServer
from tests.inproc.conftest import create_record, make_pod, pool_body, record_spec, unique
from tests.inproc.test_agent_addresses import pinned_netns
from tests.inproc.test_cli import BIN

#: no other in-process test uses these addresses (their pools would make ours ambiguous)
SUBNET = "172.29.0.0/16"


async def run(server: ApiServer, *args: str, stdin: int = asyncio.subprocess.DEVNULL) -> tuple[int, str, str]:
    """``kubectl spiderpool leaks ARGS``; its standard input is no terminal unless ``stdin`` is one."""
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", KUBECONFIG=str(server.kubeconfig))
    proc = await asyncio.create_subprocess_exec(
        str(build.binary("kubectl")),
        "spiderpool",
        "leaks",
        *args,
        env=env,
        stdin=stdin,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(120):  # (a hang is a failure, not a stuck suite)
        out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def findings_of(server: ApiServer, *args: str, code: int = 1) -> dict[str, Any]:
    got, out, err = await run(server, *args, "-o", "json")
    assert got == code, err or out
    doc: dict[str, Any] = json.loads(out)
    return doc


async def set_status(client: Client, pod: dict[str, Any], phase: str, ips: tuple[str, ...] = ()) -> dict[str, Any]:
    """What the kubelet would report: the phase and the pod's addresses."""
    body = await client.get(POD, pod["metadata"]["name"], pod["metadata"]["namespace"])
    body["status"] = {"phase": phase}
    if ips:
        body["status"].update(podIP=ips[0], podIPs=[{"ip": ip} for ip in ips])
    return await client.replace(POD, body, subresource="status")


async def write_pool_status(client: Client, name: str, **status: Any) -> None:
    """The controller keeps a pool's status; none runs here, so write what it would (or a wrong one)."""
    pool = await client.get(IPPOOL, name)
    records, _ = await client.list(IPALLOCATION)
    mine = [r for r in records if r["spec"]["pool"] == name]
    pool["status"] = {**leaks.pool_status(pool, mine), **status}
    await client.replace(IPPOOL, pool, subresource="status")


async def record_of(client: Client, ip: str) -> dict[str, Any] | None:
    try:
        return await client.get(IPALLOCATION, record_name(ip))
    except ApiError as exc:
        if exc.code == 404:
            return None
        raise


async def test_leaks_finds_each_kind_and_fix_clears_them(apiserver: ApiServer, client: Client, namespace: str) -> None:
    pool = unique("leaks-a")
    await client.create(IPPOOL, pool_body(pool, SUBNET, ["172.29.1.1-172.29.1.20"]))

    # a healthy pod: its address recorded, its status right
    ok = await set_status(client, await make_pod(client, namespace, "ok"), "Running", ("172.29.1.1",))
    await create_record(client, record_spec("172.29.1.1", pool, namespace, "ok", ok["metadata"]["uid"]))
    # kind 1: a record whose pod never existed (GC would quarantine it), one of a finished pod (released)
    await create_record(client, record_spec("172.29.1.2", pool, namespace, "gone", "uid-gone"))
    done = await set_status(client, await make_pod(client, namespace, "done"), "Succeeded")
    await create_record(client, record_spec("172.29.1.3", pool, namespace, "done", done["metadata"]["uid"]))
    # kind 2: a running pod whose address has no record, one whose record names a pod that is gone
    norec = await set_status(client, await make_pod(client, namespace, "norec"), "Running", ("172.29.1.4",))
    heir = await set_status(client, await make_pod(client, namespace, "heir"), "Running", ("172.29.1.5",))
    await create_record(client, record_spec("172.29.1.5", pool, namespace, "ancestor", "uid-ancestor"))
    # and an address of no pool of ours: another CNI's, not reported
    await set_status(client, await make_pod(client, namespace, "other-cni"), "Running", ("198.51.100.7",))
    # kind 3: the status counts differ from the records
    await write_pool_status(client, pool, allocatedIPCount=9)

    doc = await findings_of(apiserver, "-n", namespace, "--min-age", "0")
    got = {(f["kind"], f.get("ip") or f.get("pool"), f["reason"], f["fix"]) for f in doc["findings"]}
    assert got == {
        (leaks.RECORD_WITHOUT_POD, "172.29.1.2", "pod_deleted", leaks.QUARANTINE),
        (leaks.RECORD_WITHOUT_POD, "172.29.1.3", "pod_completed", leaks.RELEASE),
        (leaks.IP_WITHOUT_RECORD, "172.29.1.4", "no_record", leaks.RECORD),
        (leaks.IP_WITHOUT_RECORD, "172.29.1.5", "recorded_for_another_pod", leaks.ADOPT),
        (leaks.POOL_STATUS, pool, "count_differs", leaks.RECOUNT),
    }, json.dumps(doc, indent=1)
    assert doc["summary"] == {
        leaks.RECORD_WITHOUT_POD: 2,
        leaks.IP_WITHOUT_RECORD: 2,
        leaks.POOL_STATUS: 1,
        leaks.NETNS_ADDRESS: 0,
    }

    # GC's min_age: a record this young may be an ADD's in flight, unless its pod is proven done
    young = await findings_of(apiserver, "-n", namespace)
    assert [f["ip"] for f in young["findings"] if f["kind"] == leaks.RECORD_WITHOUT_POD] == ["172.29.1.3"]

    code, table, _ = await run(apiserver, "-n", namespace, "--min-age", "0")
    assert code == 1
    assert f"5 findings (namespace {namespace}): 2 records without a live pod, 2 pod addresses without" in table
    line = next(x for x in table.splitlines() if "172.29.1.2 " in x)
    assert line.split()[:5] == [leaks.RECORD_WITHOUT_POD, "172.29.1.2", pool, f"{namespace}/gone", "node1"]
    assert "Run with --fix" in table

    # --fix asks first; with no terminal to ask on and no --yes it changes nothing
    code, _, err = await run(apiserver, "-n", namespace, "--min-age", "0", "--fix")
    assert code == 2
    assert "add --yes" in err
    assert await record_of(client, "172.29.1.4") is None

    fixed = await findings_of(apiserver, "-n", namespace, "--min-age", "0", "--fix", "--yes", code=0)
    assert all(f["fixed"] for f in fixed["findings"]), json.dumps(fixed, indent=1)
    quarantined = await record_of(client, "172.29.1.2")
    assert quarantined is not None
    assert quarantined["spec"]["podUID"] == ""
    assert quarantined["spec"]["releaseReason"] == "pod_deleted"
    assert quarantined["spec"]["quarantineUntil"]
    assert await record_of(client, "172.29.1.3") is None
    recorded = await record_of(client, "172.29.1.4")
    assert recorded is not None
    assert (recorded["spec"]["pod"], recorded["spec"]["podUID"], recorded["spec"]["pool"]) == (
        "norec",
        norec["metadata"]["uid"],
        pool,
    )
    assert recorded["metadata"]["labels"]["ipam.spidernet.io/pod-uid"] == norec["metadata"]["uid"]
    adopted = await record_of(client, "172.29.1.5")
    assert adopted is not None
    assert (adopted["spec"]["pod"], adopted["spec"]["podUID"]) == ("heir", heir["metadata"]["uid"])
    status = (await client.get(IPPOOL, pool))["status"]
    # (.2, quarantined, is held for nobody: a pool's status leaves it out)
    assert status["allocatedIPCount"] == 3
    assert sorted(json.loads(status["allocatedIPs"])) == ["172.29.1.1", "172.29.1.4", "172.29.1.5"]

    code, out, err = await run(apiserver, "-n", namespace, "--min-age", "0")
    assert (code, out.strip()) == (0, f"No leaks found (namespace {namespace})."), err


async def on_a_terminal(server: ApiServer, answer: bytes, *args: str) -> tuple[int, str, str]:
    """The command with a terminal as its standard input, the admin typing ``answer``."""
    master, slave = pty.openpty()
    try:
        os.write(master, answer)  # (the terminal holds the line until the question reads it)
        return await run(server, *args, stdin=slave)
    finally:
        os.close(slave)
        os.close(master)


async def test_fix_asks_on_a_terminal_and_says_what_it_did(
    apiserver: ApiServer, client: Client, namespace: str
) -> None:
    pool = unique("leaks-t")
    await client.create(IPPOOL, pool_body(pool, SUBNET, ["172.29.2.1-172.29.2.5"]))
    await create_record(client, record_spec("172.29.2.1", pool, namespace, "gone", "uid-gone"))
    await write_pool_status(client, pool)
    args = ("-n", namespace, "--min-age", "0", "--fix")

    code, out, err = await on_a_terminal(apiserver, b"n\n", *args)
    assert code == 1, err
    assert "Fix 1 finding? [y/N]" in err
    assert f"{leaks.RECORD_WITHOUT_POD}   172.29.2.1" in out  # (the listing asked about)
    assert out.rstrip().endswith("Nothing changed.")
    unchanged = await record_of(client, "172.29.2.1")
    assert unchanged is not None
    assert unchanged["spec"]["podUID"] == "uid-gone"

    code, out, err = await on_a_terminal(apiserver, b"y\n", *args)
    assert code == 0, err
    line = next(x for x in out.splitlines() if "172.29.2.1" in x and " yes " in x)
    assert line.split()[:5] == [leaks.RECORD_WITHOUT_POD, "172.29.2.1", pool, f"{namespace}/gone", "yes"]
    assert "quarantined until" in line
    assert "(pod_deleted); GC releases it then" in line
    assert "1 of 1 finding fixed." in out


def machine_address() -> str:
    """An address of this machine the apiserver may proxy to (it refuses loopback and link-local)."""
    for _, address in fastnl.global_addresses():
        ip = ipaddress.ip_address(address)
        if ip.version == 4 and not ip.is_loopback and not ip.is_link_local:
            return address
    pytest.fail("this machine has no IPv4 address but loopback: the apiserver's pod proxy needs one")


@pytest.fixture
async def node_name(client: Client) -> AsyncIterator[str]:
    name = unique("leaks-node")
    await client.create(NODE, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
    yield name
    await client.delete(NODE, name)


async def agent_pod(client: Client, namespace: str, node: str, ip: str, port: int) -> None:
    """A pod as the chart's agent DaemonSet makes it, at ``ip``, its metrics port ``port``."""
    labels = {"app.kubernetes.io/part-of": "spiderpool", "app.kubernetes.io/component": "agent"}
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "spiderpool-agent-x", "namespace": namespace, "labels": labels},
        "spec": {
            "nodeName": node,
            "containers": [
                {"name": "agent", "image": "spiderpool", "ports": [{"name": "metrics", "containerPort": port}]}
            ],
        },
    }
    await set_status(client, await client.create(POD, body), "Running", (ip,))


async def test_node_whose_agent_does_not_answer_is_an_error_naming_it(
    apiserver: ApiServer, client: Client, namespace: str, node_name: str
) -> None:
    code, _, err = await run(apiserver, "--node", unique("no-such-node"))
    assert code == 2
    assert "not found" in err
    code, _, err = await run(apiserver, "--node", node_name)
    assert code == 2
    assert f"node {node_name}: no spiderpool-agent pod there" in err
    # nothing listens on that port (a stopped agent): the proxy says so, or the wait ends
    await agent_pod(client, namespace, node_name, machine_address(), procs.free_port())
    code, _, err = await run(apiserver, "-n", namespace, "--node", node_name, "--agent-timeout", "3")
    assert code == 2
    assert f"node {node_name}: spiderpool-agent {namespace}/spiderpool-agent-x" in err
    assert "did not answer" in err


@pytest.fixture
async def netns(tmp_path: Path) -> AsyncIterator[Path]:
    async with pinned_netns(tmp_path) as pins:
        yield pins


async def test_node_addresses_no_record_holds(
    apiserver: ApiServer, client: Client, namespace: str, node_name: str, netns: Path
) -> None:
    pool = unique("leaks-n")
    await client.create(IPPOOL, pool_body(pool, SUBNET, ["172.29.3.1-172.29.3.20"]))
    # (a quarantined address is recorded: the sandbox of the pod it was taken from may still have it)
    held = record_spec("172.29.3.6", pool, namespace, "gone", "", quarantineUntil="2099-01-01T00:00:00Z")
    await create_record(client, held)
    await write_pool_status(client, pool)
    app = web.Application()
    app.add_routes([web.get("/v1/debug/addresses", PodAddresses(node_name, str(netns)).handle)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    address, port = machine_address(), procs.free_port()
    await web.TCPSite(runner, address, port).start()
    try:
        await agent_pod(client, namespace, node_name, address, port)
        doc = await findings_of(apiserver, "-n", namespace, "--node", node_name)
        assert [(f["kind"], f["ip"], f["pool"], f["interface"], f["node"]) for f in doc["findings"]] == [
            (leaks.NETNS_ADDRESS, "172.29.3.5", pool, "d0", node_name)
        ]
        assert "netns cni-test" in doc["findings"][0]["detail"]
        (warning,) = doc["warnings"]
        assert warning.startswith(f"node {node_name}: netns cni-being-set-up: cannot read")
        # only reported: --fix leaves it, and says so
        fixed = await findings_of(apiserver, "-n", namespace, "--node", node_name, "--fix", "--yes")
        (f,) = fixed["findings"]
        assert f["fixed"] is False
        assert f["result"].startswith("only reported")
    finally:
        await runner.cleanup()
