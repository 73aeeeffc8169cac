"""`kubectl spiderpool` as users run it: the real kubectl finds the plugin on PATH and runs it against
a real apiserver; its answers are checked against the objects the test wrote."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from spiderpool.k8s.client import Client
from spiderpool.k8s.kinds import EVENT, IPPOOL, RESERVEDIP, SUBNET
from spiderpool_lab import build
from spiderpool_lab.envtest import ApiServer
from tests.inproc.conftest import create_record, make_pod, pool_body, record_spec, unique

BIN = Path(sys.executable).parent


async def kubectl_spiderpool(server: ApiServer, *args: str) -> tuple[int, str, str]:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", KUBECONFIG=str(server.kubeconfig))
    proc = await asyncio.create_subprocess_exec(
        str(build.binary("kubectl")),
        "spiderpool",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def json_of(server: ApiServer, *args: str) -> Any:
    code, out, err = await kubectl_spiderpool(server, *args, "-o", "json")
    assert code == 0, err
    return json.loads(out)


async def test_pools_who_has_and_why(apiserver: ApiServer, client: Client, namespace: str) -> None:
    a, other = unique("cli-a"), unique("cli-n2")
    await client.create(IPPOOL, pool_body(a, "172.30.0.0/16", ["172.30.1.1-172.30.1.10"], excludeIPs=["172.30.1.10"]))
    await client.create(IPPOOL, pool_body(other, "172.30.0.0/16", ["172.30.2.1"], nodeName=["node2"]))
    reserved = {"metadata": {"name": unique("cli-r")}, "spec": {"ips": ["172.30.1.4"]}}
    await client.create(
        RESERVEDIP, {"apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderReservedIP", **reserved}
    )
    subnet = {
        "metadata": {"name": unique("cli-s")},
        "spec": {"subnet": "172.30.0.0/16", "ips": ["172.30.9.1-172.30.9.9"]},
    }
    await client.create(SUBNET, {"apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderSubnet", **subnet})
    annotation = {"ipam.spidernet.io/ippool": json.dumps({"ipv4": [other, a]})}
    pod = await make_pod(client, namespace, "p1", annotations=annotation)
    await create_record(client, record_spec("172.30.1.1", a, namespace, "p1", pod["metadata"]["uid"]))
    await create_record(
        client,
        record_spec(
            "172.30.1.9", a, namespace, "gone", "", quarantineUntil="2099-01-01T00:00:00Z", releaseReason="pod_deleted"
        ),
    )

    rows = {r["name"]: r for r in await json_of(apiserver, "pools")}
    assert (rows[a]["allocated"], rows[a]["total"], rows[a]["free"], rows[a]["quarantined"]) == (2, 9, 7, 1)
    code, table, _ = await kubectl_spiderpool(apiserver, "pools")
    assert code == 0
    line = next(line for line in table.splitlines() if line.startswith(a + " "))
    assert "▇▇▁▁▁▁▁▁▁▁ 2/9" in line

    states = {}
    for ip in ("172.30.1.1", "172.30.1.9", "172.30.1.10", "172.30.1.4", "172.30.1.5", "172.30.9.5", "192.0.2.1"):
        states[ip] = (await json_of(apiserver, "who-has", ip))["state"]
    assert states == {
        "172.30.1.1": "allocated",
        "172.30.1.9": "quarantined",
        "172.30.1.10": "excluded",
        "172.30.1.4": "reserved",
        "172.30.1.5": "free",
        "172.30.9.5": "unpooled",
        "192.0.2.1": "unpooled",
    }
    code, text, _ = await kubectl_spiderpool(apiserver, "who-has", "172.30.1.1")
    assert "Pod:" in text
    assert f"{namespace}/p1" in text
    code, _, err = await kubectl_spiderpool(apiserver, "who-has", "not-an-ip")
    assert code == 2
    assert "is not an IP address" in err

    why = await json_of(apiserver, "why", f"{namespace}/p1")
    (nic,) = why["nics"]
    verdicts = {p["pool"]: p["verdict"] for p in nic["pools"]}
    assert verdicts[a] == "chosen"
    assert verdicts[other].startswith("rejected: unmatched Node name of IPPool")
    assert "does not include node node1" in verdicts[other]
    assert nic["chosenSource"] == "pod annotation ipam.spidernet.io/ippool"
    assert nic["ips"] == [{"ipVersion": 4, "ip": "172.30.1.1", "pool": a}]
    code, text, _ = await kubectl_spiderpool(apiserver, "why", "p1", "-n", namespace)
    assert code == 0
    assert "IP: 172.30.1.1 (IPv4) from " + a in text
    # -A: the pod found by name, wherever it is (and a name two namespaces hold must be qualified)
    code, text, _ = await kubectl_spiderpool(apiserver, "why", "p1", "-A")
    assert code == 0
    first = text.splitlines()[0].split()
    assert first == ["Pod:", f"{namespace}/p1"], text
    code, _, err = await kubectl_spiderpool(apiserver, "why", "no-such-pod", "-A")
    assert code == 2
    assert "pod no-such-pod is in no namespace: give NAMESPACE/POD" in err


async def test_why_shows_the_last_failure_of_a_pod_without_ip(
    apiserver: ApiServer, client: Client, namespace: str
) -> None:
    tiny = unique("cli-tiny")
    await client.create(IPPOOL, pool_body(tiny, "172.31.0.0/16", ["172.31.1.1"]))
    annotation = {"ipam.spidernet.io/ippool": json.dumps({"ipv4": [tiny]})}
    holder = await make_pod(client, namespace, "holder", annotations=annotation)
    await create_record(client, record_spec("172.31.1.1", tiny, namespace, "holder", holder["metadata"]["uid"]))
    waiting = await make_pod(client, namespace, "waiting", annotations=annotation)
    message = f"spiderpool IP allocation error: pod {namespace}/waiting: {tiny}: all IP addresses used out"
    event: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": "waiting.1", "namespace": namespace},
        "involvedObject": {"kind": "Pod", "namespace": namespace, "name": "waiting", "uid": waiting["metadata"]["uid"]},
        "reason": "IPAllocationFailed",
        "message": message,
        "type": "Warning",
        "count": 3,
        "lastTimestamp": "2026-12-03T12:00:00Z",
        "source": {"component": "spiderpool-agent"},
    }
    await client.create(EVENT, event)
    # the controller keeps a pool's status; none runs here, so write what it would
    pool = await client.get(IPPOOL, tiny)
    pool["status"] = {"allocatedIPCount": 1, "totalIPCount": 1}
    await client.replace(IPPOOL, pool, subresource="status")

    why = await json_of(apiserver, "why", f"{namespace}/waiting")
    assert why["lastFailure"]["message"] == message
    assert why["lastFailure"]["count"] == 3
    (nic,) = why["nics"]
    assert nic["ips"] == []
    assert nic["pools"] == [{"ipVersion": 4, "pool": tiny, "verdict": "rejected: exhausted 1/1"}]
