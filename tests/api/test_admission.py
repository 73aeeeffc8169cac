"""Admission of Spiderpool objects against the real apiserver: invalid objects are rejected with a
message naming the field and the fix, first with spiderpool-controller running, then with it
stopped (the schema alone). Valid objects come back normalised.

``by="schema"`` rows are enforced by the CRD schema (types, enums, patterns, CEL), so they are
rejected identically while the controller is down. ``by="webhook"`` rows need other objects or
range arithmetic CEL cannot do; only the controller's validating webhook catches them, and while
it is down they are admitted (asserted below, so the gap is documented by a test).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from spiderpool.ipam.allocate import record_name
from spiderpool_lab import procs
from spiderpool_lab.cluster import Lab
from tests.helpers import allocation_record, get_json
from tests.stack import Controllers

API = "spiderpool.spidernet.io/v2beta1"


def _obj(kind: str, name: str, spec: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    return {"apiVersion": API, "kind": kind, "metadata": meta, "spec": spec}


def pool(name: str, subnet: str, **spec: Any) -> dict[str, Any]:
    return _obj("SpiderIPPool", name, {"subnet": subnet, **spec})


def subnet(name: str, cidr: str, **spec: Any) -> dict[str, Any]:
    return _obj("SpiderSubnet", name, {"subnet": cidr, **spec})


def reserved(name: str, **spec: Any) -> dict[str, Any]:
    return _obj("SpiderReservedIP", name, spec)


def coordinator(name: str, **spec: Any) -> dict[str, Any]:
    return _obj("SpiderCoordinator", name, spec)


def smc(name: str, **spec: Any) -> dict[str, Any]:
    return _obj("SpiderMultusConfig", name, spec, namespace="default")


@dataclass
class Case:
    id: str
    obj: dict[str, Any]
    expect: str
    by: str  # "schema" or "webhook"
    setup: list[dict[str, Any]] = field(default_factory=list)
    #: an allocation to record before applying ``obj``: (IP, pool)
    allocated: tuple[str, str] | None = None


CASES = [
    # ------------------------------------------------------------- schema
    Case("pool-subnet-not-cidr", pool("r01", "10.1.0.0"), "10.1.0.0 must be a CIDR with a prefix length", "schema"),
    Case(
        "pool-subnet-host-bits",
        pool("r02", "10.2.1.0/16"),
        "10.2.1.0/16 must be a network address (host bits zero)",
        "schema",
    ),
    Case(
        "pool-ips-malformed",
        pool("r03", "10.3.0.0/16", ips=["10.3.0.10-10.3.0"]),
        "10.3.0.10-10.3.0 must be an IP address or a range 'first-last'",
        "schema",
    ),
    Case(
        "pool-ips-outside-subnet",
        pool("r04", "10.4.0.0/16", ips=["10.4.0.1", "10.5.0.1"]),
        "spec.ips has addresses outside spec.subnet 10.4.0.0/16 (such as 10.5.0.1)",
        "schema",
    ),
    Case(
        "pool-gateway-outside-subnet",
        pool("r05", "10.5.0.0/16", gateway="10.99.0.1"),
        "spec.gateway 10.99.0.1 is outside spec.subnet 10.5.0.0/16",
        "schema",
    ),
    Case(
        "pool-gateway-not-ip",
        pool("r06", "10.6.0.0/16", gateway="10.6.0.x"),
        "10.6.0.x must be an IP address",
        "schema",
    ),
    Case(
        "pool-version-mismatch",
        pool("r07", "10.7.0.0/16", ipVersion=6),
        "spec.ipVersion 6 does not match the family of spec.subnet 10.7.0.0/16",
        "schema",
    ),
    Case("pool-version-enum", pool("r08", "10.8.0.0/16", ipVersion=5), "Unsupported value: 5", "schema"),
    Case(
        "pool-route-default",
        pool("r09", "10.9.0.0/16", routes=[{"dst": "0.0.0.0/0", "gw": "10.9.0.1"}]),
        "a default route is not allowed in routes",
        "schema",
    ),
    Case(
        "pool-route-gw-outside",
        pool("r10", "10.10.0.0/16", routes=[{"dst": "10.200.0.0/16", "gw": "10.11.0.1"}]),
        "a route gw is outside spec.subnet 10.10.0.0/16",
        "schema",
    ),
    Case(
        "pool-route-duplicate",
        pool(
            "r11",
            "10.11.0.0/16",
            routes=[{"dst": "10.201.0.0/16", "gw": "10.11.0.1"}, {"dst": "10.201.0.0/16", "gw": "10.11.0.2"}],
        ),
        "must not repeat a dst",
        "schema",
    ),
    Case(
        "pool-empty-pod-affinity",
        pool("r12", "10.12.0.0/16", podAffinity={}),
        "an empty selector is not allowed",
        "schema",
    ),
    Case("pool-bad-multus-name", pool("r13", "10.13.0.0/16", multusName=["Bad_Name"]), "should match", "schema"),
    Case(
        "subnet-exclude-outside",
        subnet("r14", "10.14.0.0/16", excludeIPs=["10.15.0.1"]),
        "spec.excludeIPs has addresses outside spec.subnet 10.14.0.0/16 (such as 10.15.0.1)",
        "schema",
    ),
    Case("reserved-empty", reserved("r15", ips=[]), "should have at least 1 items", "schema"),
    Case(
        "reserved-mixed-family",
        reserved("r16", ips=["10.16.0.1", "fd00:16::1"]),
        "spec.ips mixes IPv4 and IPv6",
        "schema",
    ),
    Case(
        "reserved-version-mismatch",
        reserved("r17", ipVersion=6, ips=["10.17.0.1"]),
        "must all be of the family given by spec.ipVersion 6 (not 10.17.0.1)",
        "schema",
    ),
    Case("coordinator-mode", coordinator("r18", mode="fast"), 'Unsupported value: "fast"', "schema"),
    Case("coordinator-multicast-mac", coordinator("r19", podMACPrefix="0b:11"), "should match", "schema"),
    Case("coordinator-kernel-table", coordinator("r20", hostRuleTable=254), "must not be a kernel table", "schema"),
    Case(
        "coordinator-veth-address",
        coordinator("r21", vethLinkAddress="10.0.0.1"),
        "10.0.0.1 must be an IPv4 link-local address",
        "schema",
    ),
    Case(
        "coordinator-policy-route-family",
        coordinator("r22", policyRoutes=[{"dst": "10.0.0.0/8", "gw": "fd00::1"}]),
        "gw must be of the same family as its dst",
        "schema",
    ),
    Case(
        "smc-mismatched-subconfig",
        smc("r23", cniType="ipvlan", macvlan={"master": ["eth0"]}),
        "spec.macvlan is set but spec.cniType is not 'macvlan'",
        "schema",
    ),
    Case(
        "smc-two-masters-no-bond",
        smc("r24", cniType="macvlan", macvlan={"master": ["eth0", "eth1"]}),
        "bond is required",
        "schema",
    ),
    Case(
        "smc-vlan-id",
        smc("r25", cniType="macvlan", macvlan={"master": ["eth0"], "vlanID": 5000}),
        "should be less than or equal to 4094",
        "schema",
    ),
    Case(
        "smc-missing-subconfig",
        smc("r26", cniType="macvlan"),
        "spec.macvlan is required when spec.cniType is 'macvlan'",
        "schema",
    ),
    Case(
        "pool-subnet-immutable",
        pool("r27", "10.28.0.0/16"),
        "is immutable (it was 10.27.0.0/16, now 10.28.0.0/16)",
        "schema",
        setup=[pool("r27", "10.27.0.0/16")],
    ),
    # ------------------------------------------------------------ webhook
    Case(
        "pool-range-reversed",
        pool("r28", "10.28.0.0/16", ips=["10.28.0.20-10.28.0.10"]),
        "starts after it ends; write it as 10.28.0.10-10.28.0.20",
        "webhook",
    ),
    Case(
        "pool-gateway-usable",
        pool("r29", "10.29.0.0/16", ips=["10.29.0.1-10.29.0.10"], gateway="10.29.0.1"),
        "spec.gateway: 10.29.0.1 is one of the usable IPs",
        "webhook",
    ),
    Case(
        "pool-ips-overlap",
        pool("r30-b", "10.30.0.0/16", ips=["10.30.0.5-10.30.0.20"]),
        'spec.ips: 10.30.0.5-10.30.0.10 already belong to SpiderIPPool "r30-a"',
        "webhook",
        setup=[pool("r30-a", "10.30.0.0/16", ips=["10.30.0.1-10.30.0.10"])],
    ),
    Case(
        "pool-subnet-overlap",
        pool("r31-b", "10.31.0.0/24"),
        'spec.subnet: 10.31.0.0/24 overlaps SpiderIPPool "r31-a" whose subnet is 10.31.0.0/16',
        "webhook",
        setup=[pool("r31-a", "10.31.0.0/16")],
    ),
    Case(
        "pool-not-in-subnet-ips",
        pool("r32-p", "10.32.0.0/16", ips=["10.32.0.50"]),
        'spec.ips: 10.32.0.50 are not offered by SpiderSubnet "r32-s"',
        "webhook",
        setup=[subnet("r32-s", "10.32.0.0/16", ips=["10.32.0.1-10.32.0.10"])],
    ),
    Case(
        "subnet-overlap",
        subnet("r33-b", "10.33.0.0/24"),
        'overlaps SpiderSubnet "r33-a"',
        "webhook",
        setup=[subnet("r33-a", "10.33.0.0/16")],
    ),
    Case(
        "subnet-shrink-below-pool",
        subnet("r34-s", "10.34.0.0/16", ips=["10.34.0.1-10.34.0.10"]),
        'SpiderIPPool "r34-p" holds 10.34.0.15-10.34.0.20 which this subnet would not offer',
        "webhook",
        setup=[
            subnet("r34-s", "10.34.0.0/16", ips=["10.34.0.1-10.34.0.20"]),
            pool("r34-p", "10.34.0.0/16", ips=["10.34.0.15-10.34.0.20"]),
        ],
    ),
    Case(
        "pool-remove-allocated-ip",
        pool("r35", "10.35.0.0/16", ips=["10.35.0.1-10.35.0.5"]),
        "spec.ips: 10.35.0.7 still allocated (e.g. to pod default/app-0)",
        "webhook",
        setup=[pool("r35", "10.35.0.0/16", ips=["10.35.0.1-10.35.0.10"])],
        allocated=("10.35.0.7", "r35"),
    ),
    Case(
        "pool-exclude-allocated-ip",
        pool("r36", "10.36.0.0/16", ips=["10.36.0.1-10.36.0.10"], excludeIPs=["10.36.0.7"]),
        "spec.ips: 10.36.0.7 still allocated",
        "webhook",
        setup=[pool("r36", "10.36.0.0/16", ips=["10.36.0.1-10.36.0.10"])],
        allocated=("10.36.0.7", "r36"),
    ),
    Case("reserved-range-reversed", reserved("r37", ips=["10.37.0.9-10.37.0.1"]), "starts after it ends", "webhook"),
    Case(
        "smc-custom-not-json",
        smc("r38", cniType="custom", customCNI="{not json"),
        "spec.customCNI: not JSON",
        "webhook",
    ),
    Case(
        "pool-in-subnet-other-cidr",
        pool("r39-p", "10.39.1.0/24"),
        "a pool inside a SpiderSubnet must use exactly its CIDR (10.39.0.0/16)",
        "webhook",
        setup=[subnet("r39-s", "10.39.0.0/16")],
    ),
]


def _apply(lab: Lab, obj: dict[str, Any]) -> tuple[bool, str]:
    out = lab.kubectl("apply", "-f", "-", input_text=json.dumps(obj), check=False)
    return out.returncode == 0, out.stdout + out.stderr


def _ref(obj: dict[str, Any]) -> list[str]:
    kind = obj["kind"].lower()
    ref = [f"{kind}/{obj['metadata']['name']}"]
    if obj["metadata"].get("namespace"):
        ref += ["-n", obj["metadata"]["namespace"]]
    return ref


def _path(obj: dict[str, Any]) -> str:
    """The object's API path (cleanup reads and deletes through the API: only the apply is the user's)."""
    group, _, version = str(obj["apiVersion"]).rpartition("/")
    plural = obj["kind"].lower() + "s"
    ns = obj["metadata"].get("namespace")
    return f"/apis/{group}/{version}" + (f"/namespaces/{ns}" if ns else "") + f"/{plural}/{obj['metadata']['name']}"


def _cleanup(lab: Lab, case: Case) -> None:
    if case.allocated:
        lab.api("DELETE", f"/apis/spiderpool.spidernet.io/v2beta1/spideripallocations/{record_name(case.allocated[0])}")
    for obj in [case.obj, *reversed(case.setup)]:
        lab.api("DELETE", _path(obj))


def _gone(lab: Lab, case: Case) -> bool:
    return all(lab.api("GET", _path(obj))[0] == 404 for obj in [case.obj, *case.setup])


def _run_case(lab: Lab, case: Case, *, controller_up: bool) -> tuple[bool, str]:
    for obj in case.setup:
        ok, out = _apply(lab, obj)
        assert ok, f"{case.id}: setup failed: {out}"
    if case.allocated:
        ip, pool_name = case.allocated
        lab.kubectl("apply", "-f", "-", input_text=allocation_record(ip, pool_name))
        if controller_up:
            procs.wait_for(
                lambda: get_json(lab, "spiderippool", pool_name).get("status", {}).get("allocatedIPCount") == 1,
                timeout=30,
                what=f"{pool_name} to count its allocation",
            )
    return _apply(lab, case.obj)


def test_at_least_25_cases_and_both_kinds_of_rule() -> None:
    assert len(CASES) >= 25
    assert len({c.id for c in CASES}) == len(CASES)
    assert {c.by for c in CASES} == {"schema", "webhook"}


def test_invalid_objects_rejected_with_and_without_controller(controllers: Controllers) -> None:
    lab = controllers.lab
    # The cases share no object, so they run side by side (each is a few kubectl calls).
    with ThreadPoolExecutor(max_workers=6) as ex:
        # 1. Controller running: every case is rejected with its message.
        def up(case: Case) -> str | None:
            ok, out = _run_case(lab, case, controller_up=True)
            _cleanup(lab, case)
            procs.wait_for(lambda: _gone(lab, case), timeout=60, what=f"{case.id} objects deleted")
            if ok or case.expect not in out:
                return f"[controller up] {case.id}: expected rejection with {case.expect!r}, got: {out.strip()}"
            return None

        failures = [f for f in ex.map(up, CASES) if f]

        # 2. Controller stopped: the schema still rejects its cases; webhook cases get through.
        def down(case: Case) -> str | None:
            ok, out = _run_case(lab, case, controller_up=False)
            _cleanup(lab, case)
            procs.wait_for(lambda: _gone(lab, case), timeout=60, what=f"{case.id} objects deleted")
            if case.by == "schema" and (ok or case.expect not in out):
                return f"[controller down] {case.id}: schema should reject with {case.expect!r}: {out}"
            if case.by == "webhook" and not ok:
                return f"[controller down] {case.id}: only the webhook covers this, yet: {out}"
            return None

        controllers.stop_all()
        try:
            failures += [f for f in ex.map(down, CASES) if f]
        finally:
            controllers.start_all()
    assert not failures, "\n".join(failures)


def test_valid_objects_come_back_normalised(controllers: Controllers) -> None:
    lab = controllers.lab
    objs = [
        subnet(
            "norm-subnet",
            "FD00:0:0:77:0::/64",
            ips=["fd00::77:0:0:0:20-fd00:0:0:77::30", "fd00:0:0:77::10"],
            gateway="fd00:0:0:77:0:0:0:1",
        ),
        pool(
            "norm-pool",
            "fd00:0:0:77::/64",
            ips=["fd00:0:0:77::21-fd00:0:0:77::25", "fd00:0:0:77::20", "fd00:0:0:77::24-fd00:0:0:77::28"],
            excludeIPs=["fd00:0:0:77::22"],
        ),
        reserved("norm-reserved", ips=["10.77.0.9", "10.77.0.5-10.77.0.8"]),
        coordinator(
            "norm-coordinator",
            hijackCIDR=["10.233.0.1", "169.254.0.0/16"],
            policyRoutes=[{"dst": "10.10.10.10", "gw": "10.0.0.1"}],
        ),
    ]
    try:
        for obj in objs:
            ok, out = _apply(lab, obj)
            assert ok, out
        s = get_json(lab, "spidersubnet", "norm-subnet")
        assert s["spec"] == {
            "subnet": "fd00:0:0:77::/64",
            "ipVersion": 6,
            "ips": ["fd00:0:0:77::10", "fd00:0:0:77::20-fd00:0:0:77::30"],
            "gateway": "fd00:0:0:77::1",
        }
        assert s["metadata"]["labels"] == {"ipam.spidernet.io/subnet-cidr": "fd00-0-0-77---64"}
        assert s["metadata"]["finalizers"] == ["spiderpool.spidernet.io"]

        p = get_json(lab, "spiderippool", "norm-pool")
        assert p["spec"] == {
            "subnet": "fd00:0:0:77::/64",
            "ipVersion": 6,
            "ips": ["fd00:0:0:77::20-fd00:0:0:77::28"],
            "excludeIPs": ["fd00:0:0:77::22"],
            "gateway": "fd00:0:0:77::1",  # inherited from the SpiderSubnet of the same CIDR
            "default": False,
            "disable": False,
        }
        assert p["metadata"]["labels"] == {
            "ipam.spidernet.io/ippool-cidr": "fd00-0-0-77---64",
            "ipam.spidernet.io/owner-spider-subnet": "norm-subnet",
        }
        (owner,) = p["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
            "SpiderSubnet",
            "norm-subnet",
            s["metadata"]["uid"],
            True,
        )

        r = get_json(lab, "spiderreservedip", "norm-reserved")
        assert r["spec"] == {"ipVersion": 4, "ips": ["10.77.0.5-10.77.0.9"]}

        c = get_json(lab, "spidercoordinator", "norm-coordinator")
        assert c["spec"] == {
            "hijackCIDR": ["10.233.0.1/32", "169.254.0.0/16"],
            "policyRoutes": [{"dst": "10.10.10.10/32", "gw": "10.0.0.1"}],
            "mode": "auto",
            "tunePodRoutes": True,
            "hostRuleTable": 500,
            "podRPFilter": 0,
            "txQueueLen": 0,
            "vethMTU": 1500,
        }

        # The controller keeps the counts true: 8 usable in the pool; 18 in the subnet, 9 of them pooled.
        def counted() -> bool:
            ps, ss = get_json(lab, "spiderippool", "norm-pool"), get_json(lab, "spidersubnet", "norm-subnet")
            return (
                ps.get("status", {}).get("totalIPCount") == 8
                and ss.get("status", {}).get("allocatedIPCount") == 9
                and ss["status"].get("totalIPCount") == 18
            )

        procs.wait_for(counted, timeout=30, what="status counts")
        ledger = json.loads(get_json(lab, "spidersubnet", "norm-subnet")["status"]["controlledIPPools"])
        assert ledger == {"norm-pool": {"ips": ["fd00:0:0:77::20-fd00:0:0:77::28"]}}
        listing = lab.kubectl("get", "spiderippool", "norm-pool").stdout.split()
        assert listing[:14] == [
            "NAME",
            "VERSION",
            "SUBNET",
            "ALLOCATED-IP-COUNT",
            "TOTAL-IP-COUNT",
            "DEFAULT",
            "DISABLE",
            "AGE",
            "norm-pool",
            "6",
            "fd00:0:0:77::/64",
            "0",
            "8",
            "false",
        ]
    finally:
        for obj in reversed(objs):
            lab.kubectl("delete", *_ref(obj), "--ignore-not-found", "--wait=false", check=False)
