"""IPs across pod lifecycles (StatefulSet keeps, Deployment frees), an exhausted pool, and malformed
annotations and CNI configs failing with messages that name the bad key."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

from spiderpool_lab import procs
from spiderpool_lab.cluster import Lab
from tests.helpers import (
    get_json,
    in_netns,
    pods,
    pool_manifest,
    spiderpool_cli,
    spiderpool_json,
    wait_gone,
    wait_running,
)
from tests.ipam.conftest import pool_counts, records, wait_no_records
from tests.stack import Agents


def _workload(kind: str, name: str, ns: str, replicas: int, pool: str) -> dict[str, Any]:
    template = {
        "metadata": {
            "labels": {"app": name},
            "annotations": {"ipam.spidernet.io/ippool": json.dumps({"ipv4": [pool]})},
        },
        "spec": {"containers": [{"name": "c", "image": "registry.invalid/app:1"}]},
    }
    spec: dict[str, Any] = {"replicas": replicas, "selector": {"matchLabels": {"app": name}}, "template": template}
    if kind == "StatefulSet":
        spec["serviceName"] = name
    return {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name, "namespace": ns}, "spec": spec}


def _events(lab: Lab, ns: str, pod: str, reason: str) -> list[str]:
    items = get_json(lab, "events", "-n", ns, "--field-selector", f"involvedObject.name={pod}")["items"]
    return [e["message"] for e in items if e.get("reason") == reason]


def test_statefulset_keeps_ips_and_deployment_frees_them(stack: Agents) -> None:
    lab = stack.lab
    lab.kubectl("apply", "-f", "-", input_text=pool_manifest("p-life", "172.18.0.0/16", ["172.18.70.1-172.18.70.9"]))
    lab.kubectl("create", "namespace", "life")
    try:
        lab.kubectl("apply", "-f", "-", input_text=json.dumps(_workload("StatefulSet", "db", "life", 2, "p-life")))
        before = {p["metadata"]["name"]: p["status"]["podIP"] for p in wait_running(lab, "life", "app=db", 2)}
        old_uid = get_json(lab, "pod", "-n", "life", "db-0")["metadata"]["uid"]
        lab.kubectl("delete", "pod", "-n", "life", "db-0")

        def recreated() -> bool:
            current = {p["metadata"]["name"]: p for p in pods(lab, "life", "app=db")}
            pod = current.get("db-0")
            return bool(pod and pod["metadata"]["uid"] != old_uid and pod["status"].get("podIP"))

        procs.wait_for(recreated, timeout=90, what="db-0 re-created with an IP")
        after = {p["metadata"]["name"]: p["status"]["podIP"] for p in wait_running(lab, "life", "app=db", 2)}
        assert after == before, "a StatefulSet pod re-created under its name keeps its IP"
        new_uid = get_json(lab, "pod", "-n", "life", "db-0")["metadata"]["uid"]
        held = [r["spec"] for r in records(lab) if r["spec"]["ip"] == before["db-0"]]
        assert [h["podUID"] for h in held] == [new_uid]

        lab.kubectl("apply", "-f", "-", input_text=json.dumps(_workload("Deployment", "web", "life", 1, "p-life")))
        (web,) = wait_running(lab, "life", "app=web", 1)
        ip, uid = web["status"]["podIP"], web["metadata"]["uid"]
        lab.kubectl("scale", "-n", "life", "deployment/web", "--replicas=0")
        wait_gone(lab, "life", "app=web")
        procs.wait_for(
            lambda: not [r for r in records(lab) if r["spec"]["podUID"] == uid],
            timeout=30,
            what=f"the Deployment pod's IP {ip} to be released",
        )
        procs.wait_for(lambda: pool_counts(lab, "p-life") == (2, 9), timeout=30, what="p-life to count 2 of 9")
        # Deleting the StatefulSet lets its pods' IPs go (no successor will come for them).
        lab.kubectl("delete", "statefulset", "-n", "life", "db", "--wait=true")
        wait_no_records(lab, "life", timeout=60)
    finally:
        lab.kubectl("delete", "namespace", "life", "--wait=false")
    wait_no_records(lab, "life", timeout=120)
    lab.kubectl("delete", "spiderippool", "p-life", "--wait=true", "--timeout=60s")


def test_exhausted_pool_fails_the_pod_with_an_event(stack: Agents) -> None:
    lab = stack.lab
    tiny = pool_manifest("p-tiny", "172.18.0.0/16", ["172.18.71.1-172.18.71.3"], excludeIPs=["172.18.71.3"])
    lab.kubectl("apply", "-f", "-", input_text=tiny)
    lab.kubectl("create", "namespace", "tiny")
    try:
        lab.kubectl("apply", "-f", "-", input_text=json.dumps(_workload("Deployment", "big", "tiny", 3, "p-tiny")))

        def two_running_one_failing() -> bool:
            items = pods(lab, "tiny", "app=big")
            running = [p for p in items if p["status"].get("podIP")]
            waiting = [p for p in items if not p["status"].get("podIP")]
            return (len(running), len(waiting)) == (2, 1) and bool(
                _events(lab, "tiny", waiting[0]["metadata"]["name"], "IPAllocationFailed")
            )

        procs.wait_for(two_running_one_failing, timeout=90, what="two pods running, the third failing")
        waiting = next(p for p in pods(lab, "tiny", "app=big") if not p["status"].get("podIP"))
        messages = _events(lab, "tiny", waiting["metadata"]["name"], "IPAllocationFailed")
        assert all(f"pod tiny/{waiting['metadata']['name']}" in m for m in messages)
        # upstream's words first (scripts grep them), then ours
        assert all(m.startswith("spiderpool IP allocation error: ") for m in messages), messages
        assert any(
            "p-tiny: all IP addresses used out: all 2 usable IPs are allocated (the pool is used up)" in m
            for m in messages
        ), messages
        # ... and the command that explains it last
        hint = f"; run 'kubectl spiderpool why tiny/{waiting['metadata']['name']}'"
        assert all(m.endswith(hint) for m in messages), messages
        # The runtime's event carries the plugin's message (the kubelet posts it a moment after the
        # agent's own event: wait for it).
        name = waiting["metadata"]["name"]
        procs.wait_for(
            lambda: any(
                "the pool is used up" in m and hint in m for m in _events(lab, "tiny", name, "FailedCreatePodSandBox")
            ),
            timeout=60,
            what="a FailedCreatePodSandBox event with the plugin's message",
            detail=lambda: str(_events(lab, "tiny", name, "FailedCreatePodSandBox")),
        )
        # `kubectl spiderpool why` says the same: the pool it tried, exhausted, and the failure
        why = spiderpool_json(lab, "why", f"tiny/{name}")
        (nic,) = why["nics"]
        assert nic["chosenSource"] == "pod annotation ipam.spidernet.io/ippool", why
        assert [(p["pool"], p["verdict"]) for p in nic["pools"]] == [("p-tiny", "rejected: exhausted 2/2")], why
        assert (nic["ips"], why["lastFailure"]["message"][-len(hint) :]) == ([], hint), why
        text = spiderpool_cli(lab, "why", name, "-n", "tiny").stdout
        assert all(w in text for w in ("p-tiny", "rejected: exhausted 2/2", "Last failure")), text
        # ... and for a pod that got one, the pool chosen and the address the pod has on eth0
        running = next(p for p in pods(lab, "tiny", "app=big") if p["status"].get("podIP"))
        target = f"tiny/{running['metadata']['name']}"
        addrs = json.loads(in_netns(lab, target, "ip", "-j", "-4", "addr", "show", "eth0").stdout)
        (in_pod,) = [a["local"] for a in addrs[0]["addr_info"]]
        why = spiderpool_json(lab, "why", target)
        assert [(p["pool"], p["verdict"]) for p in why["nics"][0]["pools"]] == [("p-tiny", "chosen")], why
        assert [i["ip"] for i in why["nics"][0]["ips"]] == [in_pod], why
        # who holds what: the running pod's address, the excluded one, one no pool offers
        holder = spiderpool_json(lab, "who-has", in_pod)
        assert (holder["state"], holder["pod"], holder["pool"]) == ("allocated", running["metadata"]["name"], "p-tiny")
        assert (holder["node"], holder["interface"]) == (running["spec"]["nodeName"], "eth0"), holder
        excluded = spiderpool_json(lab, "who-has", "172.18.71.3")
        assert (excluded["state"], excluded["excludedBy"]) == ("excluded", ["p-tiny"]), excluded
        assert spiderpool_json(lab, "who-has", "172.18.71.200")["state"] == "unpooled"
        assert "in no SpiderIPPool" in spiderpool_cli(lab, "who-has", "172.18.71.200").stdout
    finally:
        lab.kubectl("delete", "namespace", "tiny", "--wait=false")
        wait_no_records(lab, "tiny", timeout=120)
        lab.kubectl("delete", "spiderippool", "p-tiny", "--wait=true", "--timeout=60s")


def test_messages_name_reserved_ips_node_rules_and_the_owning_application(stack: Agents) -> None:
    """What a user reads when no IP comes: which SpiderReservedIP holds the pool's only address,
    and upstream's "unmatched Node name" for a pool of another node."""
    lab = stack.lab
    lab.kubectl("apply", "-f", "-", input_text=pool_manifest("p-rsv", "172.18.0.0/16", ["172.18.71.9"]))
    lab.kubectl(
        "apply", "-f", "-", input_text=pool_manifest("p-n1", "172.18.0.0/16", ["172.18.71.10"], nodeName=["node1"])
    )
    reserved = {
        "apiVersion": "spiderpool.spidernet.io/v2beta1",
        "kind": "SpiderReservedIP",
        "metadata": {"name": "r-rsv"},
        "spec": {"ips": ["172.18.71.9"]},
    }
    lab.kubectl("apply", "-f", "-", input_text=json.dumps(reserved))
    lab.kubectl("create", "namespace", "msgs")
    expected = {
        "held": (
            "p-rsv",
            None,
            "p-rsv: all IP addresses used out: all 0 usable IPs are allocated (the pool is used up); of its 1 IPs,"
            " 1 is held back: 1 by SpiderReservedIP r-rsv (172.18.71.9)",
        ),
        "elsewhere": (
            "p-n1",
            "node2",
            "p-n1: unmatched Node name of IPPool p-n1: its nodeName does not include node node2",
        ),
    }
    try:
        for name, (pool, node, _) in expected.items():
            spec: dict[str, Any] = {"containers": [{"name": "c", "image": "registry.invalid/app:1"}]}
            if node:
                spec["nodeName"] = node
            manifest = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": name,
                    "namespace": "msgs",
                    "annotations": {"ipam.spidernet.io/ippool": json.dumps({"ipv4": [pool]})},
                },
                "spec": spec,
            }
            lab.kubectl("apply", "-f", "-", input_text=json.dumps(manifest))

        def reported() -> bool:
            return all(
                any(
                    m.startswith("spiderpool IP allocation error: ") and text in m
                    for m in _events(lab, "msgs", name, "IPAllocationFailed")
                )
                for name, (_, _, text) in expected.items()
            )

        procs.wait_for(
            reported,
            timeout=90,
            what="both failures explained",
            detail=lambda: lab.kubectl("get", "events", "-n", "msgs").stdout,
        )
        # `kubectl spiderpool why` gives the same reasons, pool by pool
        why = spiderpool_json(lab, "why", "msgs/elsewhere")
        (nic,) = why["nics"]
        assert [(p["pool"], p["verdict"]) for p in nic["pools"]] == [
            ("p-n1", "rejected: unmatched Node name of IPPool p-n1: its nodeName does not include node node2")
        ], why
        assert nic["ips"] == [], why
        assert "does not include node node2" in why["lastFailure"]["message"], why
        reserved = spiderpool_json(lab, "who-has", "172.18.71.9")
        assert (reserved["state"], reserved["reservedBy"]) == ("reserved", ["r-rsv"]), reserved
    finally:
        lab.kubectl("delete", "namespace", "msgs", "--wait=false")
    wait_no_records(lab, "msgs", timeout=120)
    lab.kubectl("delete", "spiderreservedip", "r-rsv", "--wait=true", "--timeout=60s")
    lab.kubectl("delete", "spiderippool", "p-rsv", "p-n1", "--wait=true", "--timeout=60s")


BAD_ANNOTATIONS = [
    ("ipam.spidernet.io/ippool", "{ipv4: [p]}", "annotation ipam.spidernet.io/ippool: not valid JSON"),
    ("ipam.spidernet.io/ippool", '{"ipv4": "p"}', "annotation ipam.spidernet.io/ippool: the value.ipv4 must be a list"),
    (
        "ipam.spidernet.io/ippools",
        '[{"interface": "eth0", "ipv4": ["p"]}, {"ipv4": ["q"]}]',
        "annotation ipam.spidernet.io/ippools: some items name their interface and some do not",
    ),
    (
        "ipam.spidernet.io/ippools",
        '[{"interface": "eth0", "ipv4": ["p"]}, {"interface": "eth0", "ipv4": ["q"]}]',
        "annotation ipam.spidernet.io/ippools: interface 'eth0' appears more than once",
    ),
    (
        "ipam.spidernet.io/routes",
        '[{"dst": "0.0.0.0/0", "gw": "172.18.0.1"}]',
        "annotation ipam.spidernet.io/routes: item 0: a default route is not allowed",
    ),
    (
        "ipam.spidernet.io/routes",
        '[{"dst": "10.1.0.0/16"}]',
        "annotation ipam.spidernet.io/routes: item 0 must have both 'dst' and 'gw'",
    ),
]


def test_malformed_annotations_fail_naming_the_key(stack: Agents) -> None:
    lab = stack.lab
    lab.kubectl(
        "apply",
        "-f",
        "-",
        input_text=json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": "badann", "annotations": {"ipam.spidernet.io/default-ipv4-ippool": "p-a, p-b"}},
            }
        ),
    )
    manifests = [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"bad-{i}",
                "namespace": "badann",
                "labels": {"bad": "yes"},
                "annotations": {key: value},
            },
            "spec": {"containers": [{"name": "c", "image": "registry.invalid/app:1"}]},
        }
        for i, (key, value, _) in enumerate(BAD_ANNOTATIONS)
    ]
    # No pod annotation at all: the namespace's malformed default is the bad key.
    manifests.append(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "bad-ns", "namespace": "badann", "labels": {"bad": "yes"}},
            "spec": {"containers": [{"name": "c", "image": "registry.invalid/app:1"}]},
        }
    )
    expected = {f"bad-{i}": msg for i, (_, _, msg) in enumerate(BAD_ANNOTATIONS)}
    expected["bad-ns"] = "namespace badann: annotation ipam.spidernet.io/default-ipv4-ippool: not valid JSON"
    try:
        for m in manifests:
            lab.kubectl("apply", "-f", "-", input_text=json.dumps(m))

        def all_reported() -> bool:
            return all(
                any(msg in e for e in _events(lab, "badann", pod, "IPAllocationFailed"))
                for pod, msg in expected.items()
            )

        procs.wait_for(
            all_reported,
            timeout=90,
            what="every malformed annotation reported",
            detail=lambda: lab.kubectl("get", "events", "-n", "badann").stdout,
        )
        assert not [p for p in pods(lab, "badann", "bad=yes") if p["status"].get("podIP")]
    finally:
        lab.kubectl("delete", "namespace", "badann", "--wait=false")


BAD_CONFIGS = [
    ({"ipam": {"type": "spiderpool", "default_ipv4_pool": ["p"]}}, 7, "unknown key ipam.default_ipv4_pool"),
    ({"ipam": {"type": "spiderpool", "default_ipv4_ippool": "p"}}, 7, "ipam.default_ipv4_ippool must be a list"),
    ({"ipam": {"type": "spiderpool", "clean_gateway": "yes"}}, 7, "ipam.clean_gateway must be a bool"),
    ({"ipam": {"type": "spiderpool", "log_file_max_size": "100"}}, 7, "ipam.log_file_max_size must be a int"),
    (
        {"ipam": {"type": "spiderpool", "default_ipv6_ippool": [""]}},
        7,
        "ipam.default_ipv6_ippool must be a list of pool",
    ),
    ({}, 7, "the 'ipam' key is missing"),
    ({"cniVersion": "0.2.0", "ipam": {"type": "spiderpool"}}, 1, "cniVersion '0.2.0' is not supported"),
    (
        {"ipam": {"type": "spiderpool", "ipam_unix_socket_path": "/nonexistent.sock"}},
        11,
        "spiderpool-agent is not reachable at /nonexistent.sock",
    ),
]


def test_malformed_cni_configs_fail_naming_the_key(stack: Agents) -> None:
    # the installed plugin, run where the runtime runs it: in node1's namespaces (the socket path
    # the agent wrote beside it is a path of the node's)
    plugin = stack.lab.exec_argv("node1", ["/opt/cni/bin/spiderpool"])
    env = {
        **os.environ,
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "c1",
        "CNI_NETNS": "/run/netns/none",
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": "K8S_POD_NAMESPACE=default;K8S_POD_NAME=x",
        "CNI_PATH": "/opt/cni/bin",
    }
    failures = []
    for conf, code, message in BAD_CONFIGS:
        full = {"cniVersion": "1.0.0", "name": "bad", "type": "macvlan", **conf}
        out = subprocess.run(plugin, input=json.dumps(full), capture_output=True, text=True, env=env, timeout=30)
        err = json.loads(out.stdout or "{}")
        if out.returncode == 0 or err.get("code") != code or message not in err.get("msg", ""):
            failures.append(f"{conf}: expected code {code} with {message!r}, got rc={out.returncode} {out.stdout}")
    assert not failures, "\n".join(failures)
    version = subprocess.run(plugin, capture_output=True, text=True, env={**env, "CNI_COMMAND": "VERSION"})
    assert json.loads(version.stdout)["supportedVersions"] == ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
    status = subprocess.run(
        plugin,
        input=json.dumps(
            {
                "cniVersion": "1.1.0",
                "name": "n",
                "ipam": {"type": "spiderpool", "ipam_unix_socket_path": "/nonexistent.sock"},
            }
        ),
        capture_output=True,
        text=True,
        env={**env, "CNI_COMMAND": "STATUS"},
    )
    assert json.loads(status.stdout)["code"] == 50
