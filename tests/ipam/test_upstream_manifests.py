"""Manifests and habits of upstream Spiderpool's users, each of which once failed here: pool and
application names too long for a label, hand edits of an auto-pool, an auto-pool waiting on a
SpiderReservedIP, a pool made before its SpiderSubnet, annotation keys spelled as upstream's docs
spell them, and the Events of a pod the runtime retries for minutes."""

from __future__ import annotations

import ipaddress
import json
import re
import time
from typing import Any

from spiderpool.api.constants import name_label
from spiderpool_lab import procs
from spiderpool_lab.cluster import Lab
from tests.helpers import get_json, in_netns, pool_manifest, wait_running
from tests.ipam.conftest import assert_consistent, records, wait_no_records
from tests.stack import Agents

API = "spiderpool.spidernet.io/v2beta1"
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def _name(length: int, tag: str) -> str:
    """A valid object name of exactly ``length`` characters."""
    return (f"p{tag}-" + "abcdefghij-" * 30)[: length - 1] + "z"


def _pod(name: str, ns: str, annotations: dict[str, str], node: str = "node1") -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": {"app": name}, "annotations": annotations},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "registry.invalid/app:1"}]},
        }
    )


def _subnet(name: str, ips: list[str], cidr: str = "172.18.0.0/16", **spec: Any) -> str:
    body = {"subnet": cidr, "ips": ips, **spec}
    if cidr == "172.18.0.0/16":
        body.setdefault("gateway", "172.18.0.1")
    return json.dumps({"apiVersion": API, "kind": "SpiderSubnet", "metadata": {"name": name}, "spec": body})


def _deployment(name: str, ns: str, subnet: str, replicas: int = 1) -> str:
    return json.dumps(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "upstream"}},
                "template": {
                    "metadata": {
                        "labels": {"app": "upstream"},
                        "annotations": {"ipam.spidernet.io/subnet": json.dumps({"ipv4": [subnet]})},
                    },
                    "spec": {"containers": [{"name": "c", "image": "registry.invalid/app:1"}]},
                },
            },
        }
    )


def _auto_pools(lab: Lab, app: str) -> list[dict[str, Any]]:
    items = get_json(lab, "spiderippool", "-l", f"ipam.spidernet.io/owner-application-name={name_label(app)}")
    return list(items["items"])


def _events(lab: Lab, ns: str, name: str, reason: str) -> list[dict[str, Any]]:
    items = get_json(lab, "events", "-n", ns, "--field-selector", f"involvedObject.name={name}")["items"]
    return [e for e in items if e.get("reason") == reason]


def _in(ip: str, first: str, last: str) -> bool:
    return ipaddress.ip_address(first) <= ipaddress.ip_address(ip) <= ipaddress.ip_address(last)


def test_pools_and_applications_with_long_names_allocate(stack: Agents) -> None:
    """Defect 1: the record's pool label held the pool name (labels: 63 characters at most), so a
    pool with a longer name, or an auto-pool of an application named over ~45 characters, never
    handed out an address (422 Invalid on every retry)."""
    lab = stack.lab
    pools = {length: _name(length, str(length)) for length in (63, 64, 200, 253)}
    for i, (length, name) in enumerate(pools.items()):
        assert len(name) == length
        lab.kubectl("apply", "-f", "-", input_text=pool_manifest(name, "172.18.0.0/16", [f"172.18.86.{10 + i}"]))
    lab.kubectl("create", "namespace", "longnames")
    app = "long-app-name-abcdefghijklmnopqrstuvwxyz-0123456789-abcdefghi"  # 61 characters
    assert len(app) == 61
    try:
        for length, name in pools.items():
            lab.kubectl(
                "apply",
                "-f",
                "-",
                input_text=_pod(
                    f"len-{length}", "longnames", {"ipam.spidernet.io/ippool": json.dumps({"ipv4": [name]})}
                ),
            )
        for i, length in enumerate(pools):
            (pod,) = wait_running(lab, "longnames", f"app=len-{length}", 1, timeout=90)
            assert pod["status"]["podIP"] == f"172.18.86.{10 + i}"
        by_pool = {r["spec"]["pool"]: r for r in records(lab) if r["spec"]["namespace"] == "longnames"}
        for name in pools.values():
            label = by_pool[name]["metadata"]["labels"]["ipam.spidernet.io/ippool"]
            assert len(label) <= 63
            assert LABEL_VALUE.match(label)
            assert label == name_label(name)
            selected = get_json(lab, "spideripallocations", "-l", f"ipam.spidernet.io/ippool={label}")["items"]
            assert [r["spec"]["pool"] for r in selected] == [name], "the label selects exactly that pool's records"

        # An application of 61 characters: its auto-pool's name (78 characters) goes into the records' label.
        # (the subnet covers the pools above: a subnet must offer the IPs of the pools of its CIDR)
        lab.kubectl("apply", "-f", "-", input_text=_subnet("subnet-long", ["172.18.86.10-172.18.86.29"]))
        lab.kubectl("apply", "-f", "-", input_text=_deployment(app, "longnames", "subnet-long", replicas=2))
        running = wait_running(lab, "longnames", "app=upstream", 2, timeout=120)
        assert all(_in(p["status"]["podIP"], "172.18.86.14", "172.18.86.29") for p in running)
        (auto,) = _auto_pools(lab, app)
        uid = get_json(lab, "deployment", "-n", "longnames", app)["metadata"]["uid"]
        assert auto["metadata"]["name"] == f"auto4-{app}-eth0-{uid.split('-')[-1][:5]}"
        assert len(auto["metadata"]["name"]) == 78
        assert all(len(v) <= 63 for v in auto["metadata"]["labels"].values())
        assert_consistent(lab)
    finally:
        lab.kubectl("delete", "namespace", "longnames", "--wait=false")
    wait_no_records(lab, "longnames", timeout=120)
    lab.kubectl("delete", "spidersubnet", "subnet-long", "--ignore-not-found", "--wait=true", "--timeout=60s")
    lab.kubectl("delete", "spiderippool", *pools.values(), "--ignore-not-found", "--wait=true", "--timeout=60s")


def test_an_auto_pools_ips_cannot_be_edited_by_hand(stack: Agents) -> None:
    """Defect 2: `kubectl patch` shrank an auto-pool; its IPs are the controller's to size."""
    lab = stack.lab
    lab.kubectl("apply", "-f", "-", input_text=_subnet("subnet-hand", ["172.18.87.100-172.18.87.109"]))
    lab.kubectl("create", "namespace", "hand")
    try:
        lab.kubectl("apply", "-f", "-", input_text=_deployment("web", "hand", "subnet-hand", replicas=2))
        wait_running(lab, "hand", "app=upstream", 2, timeout=120)
        (pool,) = _auto_pools(lab, "web")
        name, before = pool["metadata"]["name"], pool["spec"]["ips"]
        assert before == ["172.18.87.100-172.18.87.102"]
        # Only the spare IP goes (the pods hold the two lowest): nothing else would refuse this edit.
        held = sorted(r["spec"]["ip"] for r in records(lab) if r["spec"]["namespace"] == "hand")
        assert held == ["172.18.87.100", "172.18.87.101"]
        shrink = json.dumps({"spec": {"ips": ["172.18.87.100-172.18.87.101"]}})
        out = lab.kubectl("patch", "spiderippool", name, "--type", "merge", "-p", shrink, check=False)
        assert out.returncode != 0
        assert f"SpiderIPPool '{name}' is the auto-pool of Deployment hand/web" in out.stderr, out.stderr
        assert "cannot be edited by hand (by kubernetes-admin)" in out.stderr
        assert get_json(lab, "spiderippool", name)["spec"]["ips"] == before
        # A pod of no application that names the auto-pool is told whose pool it is.
        lab.kubectl(
            "apply",
            "-f",
            "-",
            input_text=_pod("stray", "hand", {"ipam.spidernet.io/ippool": json.dumps({"ipv4": [name]})}),
        )
        procs.wait_for(
            lambda: any(
                "it is the auto-pool of application Deployment/hand/web, and only that application's pods may use it"
                in e["message"]
                for e in _events(lab, "hand", "stray", "IPAllocationFailed")
            ),
            timeout=60,
            what="the stray pod told whose pool it named",
        )
        # What the user may still do: label it, and resize it through the application.
        lab.kubectl("label", "spiderippool", name, "team=blue")
        lab.kubectl("scale", "-n", "hand", "deployment/web", "--replicas=4")
        wait_running(lab, "hand", "app=upstream", 4, timeout=120)
        procs.wait_for(
            lambda: get_json(lab, "spiderippool", name)["spec"]["ips"] == ["172.18.87.100-172.18.87.104"],
            timeout=60,
            what="the controller to grow the auto-pool to 5 IPs",
        )
    finally:
        lab.kubectl("delete", "namespace", "hand", "--wait=false")
    wait_no_records(lab, "hand", timeout=120)
    lab.kubectl("delete", "spidersubnet", "subnet-hand", "--wait=true", "--timeout=60s")


def test_an_auto_pool_follows_its_subnets_reserved_ips(stack: Agents) -> None:
    """Defect 4: with every subnet IP reserved the controller made an empty pool, and deleting the
    reservation left the pod stuck until deleted by hand."""
    lab = stack.lab
    lab.kubectl("apply", "-f", "-", input_text=_subnet("subnet-rsv", ["172.18.88.1-172.18.88.3"]))
    reserved = {
        "apiVersion": API,
        "kind": "SpiderReservedIP",
        "metadata": {"name": "rsv-all"},
        "spec": {"ips": ["172.18.88.1-172.18.88.3"]},
    }
    lab.kubectl("apply", "-f", "-", input_text=json.dumps(reserved))
    lab.kubectl("create", "namespace", "rsv")
    try:
        lab.kubectl("apply", "-f", "-", input_text=_deployment("held", "rsv", "subnet-rsv"))
        procs.wait_for(
            lambda: _events(lab, "rsv", "held", "SubnetExhausted"),
            timeout=60,
            what="a SubnetExhausted event on the Deployment",
        )
        (event,) = _events(lab, "rsv", "held", "SubnetExhausted")
        assert "SpiderSubnet subnet-rsv has no free IP" in event["message"]
        assert "3 are reserved by SpiderReservedIP rsv-all (172.18.88.1-172.18.88.3)" in event["message"]
        assert not _auto_pools(lab, "held"), "no empty auto-pool"
        lab.kubectl("delete", "spiderreservedip", "rsv-all", "--wait=true")
        # Nobody touches the pod: the pool is made, and the runtime's next ADD gets an address.
        (pod,) = wait_running(lab, "rsv", "app=upstream", 1, timeout=150)
        assert _in(pod["status"]["podIP"], "172.18.88.1", "172.18.88.3")
        (pool,) = _auto_pools(lab, "held")
        assert pool["spec"]["ips"] == ["172.18.88.1-172.18.88.2"]  # 1 replica + 1
    finally:
        lab.kubectl("delete", "spiderreservedip", "rsv-all", "--ignore-not-found", check=False)
        lab.kubectl("delete", "namespace", "rsv", "--wait=false")
    wait_no_records(lab, "rsv", timeout=120)
    lab.kubectl("delete", "spidersubnet", "subnet-rsv", "--wait=true", "--timeout=60s")


def test_a_pool_made_before_its_subnet_is_adopted(stack: Agents) -> None:
    """Defect 5: the subnet listed the earlier pool, but the pool got neither the owner label nor
    the subnet's gateway and routes until something wrote to it."""
    lab = stack.lab
    pool = pool_manifest("early", "10.77.0.0/16", ["10.77.0.10-10.77.0.20"])
    lab.kubectl("apply", "-f", "-", input_text=pool)
    try:
        procs.wait_for(
            lambda: get_json(lab, "spiderippool", "early").get("status", {}).get("totalIPCount") == 11,
            timeout=30,
            what="the pool's status (it is settled before the subnet comes)",
        )
        assert "ipam.spidernet.io/owner-spider-subnet" not in get_json(lab, "spiderippool", "early")["metadata"].get(
            "labels", {}
        )
        routes = [{"dst": "10.78.0.0/16", "gw": "10.77.0.254"}]
        subnet = _subnet("late", ["10.77.0.2-10.77.0.100"], "10.77.0.0/16", gateway="10.77.0.1", routes=routes)
        lab.kubectl("apply", "-f", "-", input_text=subnet)
        subnet_uid = get_json(lab, "spidersubnet", "late")["metadata"]["uid"]

        def adopted() -> bool:
            obj = get_json(lab, "spiderippool", "early")
            refs = obj["metadata"].get("ownerReferences") or []
            return (
                obj["metadata"].get("labels", {}).get("ipam.spidernet.io/owner-spider-subnet") == "late"
                and [(r["kind"], r["name"], r["uid"], r.get("controller")) for r in refs]
                == [("SpiderSubnet", "late", subnet_uid, True)]
                and obj["spec"].get("gateway") == "10.77.0.1"
                and obj["spec"].get("routes") == routes
            )

        procs.wait_for(
            adopted,
            timeout=30,
            what="the pool adopted by the later subnet",
            detail=lambda: json.dumps(get_json(lab, "spiderippool", "early")),
        )
        ledger = json.loads(get_json(lab, "spidersubnet", "late")["status"]["controlledIPPools"])
        assert ledger == {"early": {"ips": ["10.77.0.10-10.77.0.20"]}}
        assert_consistent(lab)
    finally:
        lab.kubectl("delete", "spidersubnet", "late", "--ignore-not-found", "--wait=true", "--timeout=60s")
        lab.kubectl("delete", "spiderippool", "early", "--ignore-not-found", "--wait=true", "--timeout=60s")


def test_annotation_keys_are_matched_as_upstream_matches_them(stack: Agents) -> None:
    """Defect 6: `cleanGateway` (upstream's own examples) failed the pod; an unknown key now
    allocates and says which key was meant."""
    lab = stack.lab
    lab.kubectl("apply", "-f", "-", input_text=pool_manifest("p-keys", "172.18.0.0/16", ["172.18.85.1-172.18.85.5"]))
    lab.kubectl("create", "namespace", "keys")
    try:
        spelled = {
            "camel": '[{"interface":"eth0","ipv4":["p-keys"],"cleanGateway":true}]',
            "typo": '[{"interface":"eth0","IPv4":["p-keys"],"cleangatway":true}]',
        }
        for name, value in spelled.items():
            lab.kubectl("apply", "-f", "-", input_text=_pod(name, "keys", {"ipam.spidernet.io/ippools": value}))
        for name in spelled:
            wait_running(lab, "keys", f"app={name}", 1, timeout=90)
        # cleanGateway was read (no default route), the misspelt key was not (the default route stays)
        assert "default" not in in_netns(lab, "keys/camel", "ip", "-4", "route").stdout
        assert "default via 172.18.0.1 dev eth0" in in_netns(lab, "keys/typo", "ip", "-4", "route").stdout
        procs.wait_for(
            lambda: _events(lab, "keys", "typo", "UnknownAnnotationKey"), timeout=30, what="the unknown-key warning"
        )
        (warning,) = _events(lab, "keys", "typo", "UnknownAnnotationKey")
        assert warning["type"] == "Warning"
        assert warning["message"] == (
            "annotation ipam.spidernet.io/ippools: item 0 has unknown key 'cleangatway', which is ignored;"
            " did you mean 'cleangateway'?"
        )
        assert not _events(lab, "keys", "camel", "UnknownAnnotationKey")
    finally:
        lab.kubectl("delete", "namespace", "keys", "--wait=false")
    wait_no_records(lab, "keys", timeout=120)
    lab.kubectl("delete", "spiderippool", "p-keys", "--wait=true", "--timeout=60s")


def _failures(lab: Lab, node: str, reason: str) -> float:
    """The node agent's count of failed allocations for ``reason`` (its metrics, read in the node)."""
    page = in_netns(lab, node, "curl", "-sS", "--max-time", "5", "http://127.0.0.1:5711/metrics").stdout
    for line in page.splitlines():
        if line.startswith(f'spiderpool_ipam_allocation_failure_counts_total{{reason="{reason}"}}'):
            return float(line.split()[-1])
    return 0.0


#: how long the runtime retries the failing pod: upstream users saw ~9 Events a minute per pod
RETRY_WINDOW = 120.0


def _ours(lab: Lab) -> list[dict[str, Any]]:
    items = get_json(lab, "events", "-n", "retry", "--field-selector", "involvedObject.name=stuck")["items"]
    return [e for e in items if (e.get("source") or {}).get("component") == "spiderpool-agent"]


def test_a_pod_retried_for_minutes_leaves_one_event_that_counts(stack: Agents) -> None:
    """Every retried ADD used to post a new Event. Now the same failure bumps one Event's count."""
    lab = stack.lab
    lab.kubectl("create", "namespace", "retry")
    before = _failures(lab, "node1", "no_available_pool")
    try:
        annotation = {"ipam.spidernet.io/ippool": json.dumps({"ipv4": ["no-such-pool"]})}
        lab.kubectl("apply", "-f", "-", input_text=_pod("stuck", "retry", annotation))
        procs.wait_for(
            lambda: _events(lab, "retry", "stuck", "IPAllocationFailed"), timeout=60, what="the first failure event"
        )
        started = time.monotonic()
        procs.wait_for(
            lambda: (
                time.monotonic() - started >= RETRY_WINDOW
                and _failures(lab, "node1", "no_available_pool") - before >= 5
            ),
            timeout=RETRY_WINDOW + 180,
            what=f"the runtime to retry the pod for {RETRY_WINDOW:.0f}s, at least 5 times",
            interval=5,
        )
        attempts = _failures(lab, "node1", "no_available_pool") - before
        # (the Event of the last attempt may be a moment behind the counter)
        procs.wait_for(
            lambda: sum(int(e.get("count") or 1) for e in _ours(lab)) >= attempts,
            timeout=30,
            what=f"the Events to count {attempts:.0f} attempts",
            detail=lambda: json.dumps([(e["reason"], e.get("count")) for e in _ours(lab)]),
        )
        ours = _ours(lab)
        assert 1 <= len(ours) <= 2, [e["message"] for e in ours]
        assert all(e["message"].startswith("spiderpool IP allocation error: ") for e in ours)
        assert "no-such-pool: no such SpiderIPPool" in ours[0]["message"]
    finally:
        lab.kubectl("delete", "namespace", "retry", "--wait=false")
    wait_no_records(lab, "retry", timeout=120)
