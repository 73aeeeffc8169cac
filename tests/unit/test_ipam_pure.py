"""Pool selection, candidate order and results: the pure core of allocation."""

from __future__ import annotations

import random
from ipaddress import ip_address
from typing import Any

import pytest

from spiderpool.api.annotations import AnnotationError, parse_ippools, parse_namespace_defaults, parse_pod, parse_routes
from spiderpool.ipam.allocate import FREE, MINE, OTHER, Walker, record_name, usable
from spiderpool.ipam.ranges import IPSet
from spiderpool.ipam.result import Assigned, assigned_from, routes_for
from spiderpool.ipam.selection import NetconfDefaults, PodContext, SelectionError, matches, plan_nic


def _pool(subnet: str, **spec: Any) -> dict[str, Any]:
    return {"metadata": {}, "spec": {"subnet": subnet, **spec}}


POOLS = {
    "v4-a": _pool("172.18.0.0/16", ips=["172.18.40.1-172.18.40.9"], default=True),
    "v4-b": _pool("172.18.0.0/16", ips=["172.18.41.1-172.18.41.9"], podAffinity={"matchLabels": {"app": "web"}}),
    "v4-node2": _pool("172.18.0.0/16", ips=["172.18.42.1"], nodeName=["node2"]),
    "v4-off": _pool("172.18.0.0/16", ips=["172.18.43.1"], disable=True),
    "v6-a": _pool("fd00:172:18::/64", ips=["fd00:172:18::40-fd00:172:18::49"], default=True),
    "v4-ns": _pool("172.18.0.0/16", ips=["172.18.44.1"], namespaceAffinity={"matchLabels": {"team": "x"}}),
    "v4-net1": _pool("172.19.0.0/16", ips=["172.19.0.10"], multusName=["kube-system/macvlan-net1"]),
}


def _ctx(annotations: dict[str, str] | None = None, **kw: Any) -> PodContext:
    base: dict[str, Any] = {
        "namespace": "default",
        "name": "web-0",
        "labels": {"app": "web"},
        "node": "node1",
        "node_labels": {"kubernetes.io/hostname": "node1"},
        "namespace_labels": {},
        "annotations": parse_pod(annotations),
    }
    base.update(kw)
    return PodContext(**base)


def test_cluster_default_pools_are_the_last_tier() -> None:
    plan = plan_nic(_ctx(), "eth0", POOLS, netconf=NetconfDefaults(), families=(4, 6))
    assert plan.source == "cluster default pools"
    assert [(c.family, c.pools) for c in plan.families] == [(4, ("v4-a",)), (6, ("v6-a",))]


def test_precedence_pod_over_namespace_over_netconf() -> None:
    netconf = NetconfDefaults(ipv4=("v4-a",))
    plan = plan_nic(_ctx(), "eth0", POOLS, netconf=netconf)
    assert (plan.source, plan.families[0].pools) == ("CNI config default pools", ("v4-a",))
    ns = _ctx(namespace_defaults=parse_namespace_defaults({"ipam.spidernet.io/default-ipv4-ippool": '["v4-b"]'}))
    assert plan_nic(ns, "eth0", POOLS, netconf=netconf).families[0].pools == ("v4-b",)
    pod = _ctx({"ipam.spidernet.io/ippool": '{"ipv4": ["v4-*"]}'}, namespace_defaults=((("v4-a",)), ()))
    plan = plan_nic(pod, "eth0", POOLS, netconf=netconf)
    assert plan.source == "pod annotation ipam.spidernet.io/ippool"
    # wildcard expanded; affinity pools first; filtered pools remembered with their reason
    assert plan.families[0].pools == ("v4-b", "v4-a")
    assert dict(plan.families[0].rejected) == {
        "v4-node2": "unmatched Node name of IPPool v4-node2: its nodeName does not include node node1",
        "v4-off": "disabled",
        "v4-ns": "namespaceAffinity does not match namespace default",
        "v4-net1": "the spec.multusName [kube-system/macvlan-net1] in the IPPool v4-net1 used by the Pod interface"
        " eth0 is not matched: this interface's network is none",
    }


def test_ippools_per_interface_and_multus_filter() -> None:
    ann = {"ipam.spidernet.io/ippools": '[{"ipv4": ["v4-a"]}, {"ipv4": ["v4-net1"], "cleangateway": true}]'}
    ctx = _ctx(ann, networks={"net1": "kube-system/macvlan-net1"})
    eth0 = plan_nic(ctx, "eth0", POOLS, netconf=NetconfDefaults())
    net1 = plan_nic(ctx, "net1", POOLS, netconf=NetconfDefaults())
    assert eth0.families[0].pools == ("v4-a",)
    assert (net1.families[0].pools, net1.clean_gateway) == (("v4-net1",), True)
    with pytest.raises(SelectionError, match="interface net2 is not listed"):
        plan_nic(ctx, "net2", POOLS, netconf=NetconfDefaults())


def test_all_candidates_rejected_explains_each() -> None:
    ctx = _ctx({"ipam.spidernet.io/ippool": '{"ipv4": ["v4-off", "missing", "v6-a"]}'})
    with pytest.raises(SelectionError) as err:
        plan_nic(ctx, "eth0", POOLS, netconf=NetconfDefaults())
    assert "v4-off: disabled; missing: no such SpiderIPPool; v6-a: not an IPv4 pool" in str(err.value)
    assert "pod default/web-0" in str(err.value)


def test_nothing_specified() -> None:
    with pytest.raises(SelectionError, match="no pool is specified for interface eth0"):
        plan_nic(_ctx(), "eth0", {}, netconf=NetconfDefaults())


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("ipam.spidernet.io/ippool", "{ipv4: [a]}", "not valid JSON"),
        ("ipam.spidernet.io/ippool", '{"ipv4": "a"}', "the value.ipv4 must be a list of pool names"),
        ("ipam.spidernet.io/ippool", '{"ipv4": []}', "names no pool"),
        ("ipam.spidernet.io/ippools", "[]", "must be a non-empty list"),
        ("ipam.spidernet.io/ippools", '[{"interface": "eth0", "ipv4": ["a"]}, {"ipv4": ["b"]}]', "name it in every"),
        (
            "ipam.spidernet.io/ippools",
            '[{"interface": "eth0", "ipv4": ["a"]}, {"interface": "eth0", "ipv4": ["b"]}]',
            "appears more than once",
        ),
        (
            "ipam.spidernet.io/ippools",
            '[{"interface": "eth0", "ipv4": ["a"], "cleangateway": "yes"}]',
            "cleangateway must be true or false",
        ),
        ("ipam.spidernet.io/routes", '[{"dst": "10.0.0.0/8"}]', "must have both 'dst' and 'gw'"),
        ("ipam.spidernet.io/routes", '[{"dst": "10.0.0.0/8", "gw": "fd00::1"}]', "different IP families"),
        ("ipam.spidernet.io/routes", '[{"dst": "0.0.0.0/0", "gw": "10.0.0.1"}]', "a default route is not allowed"),
        ("ipam.spidernet.io/routes", '[{"dst": "10.0.0/8", "gw": "10.0.0.1"}]', "is not a valid CIDR"),
    ],
)
def test_malformed_annotations_name_the_key(key: str, value: str, message: str) -> None:
    with pytest.raises(AnnotationError) as err:
        parse_pod({key: value})
    assert str(err.value).startswith(f"annotation {key}: ")
    assert message in str(err.value)
    assert "expected e.g." in str(err.value)


def test_unnamed_ippools_map_to_eth0_net1() -> None:
    items = parse_ippools('[{"ipv4": ["a"]}, {"ipv6": ["b"]}]')
    assert [i.interface for i in items] == ["eth0", "net1"]
    assert parse_routes('[{"dst": "10.1.0.0/16", "gw": "10.0.0.1"}]')[0].dst == "10.1.0.0/16"


def test_selector_semantics() -> None:
    labels = {"app": "web", "tier": "front"}
    assert matches({"matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "api"]}]}, labels)
    assert not matches({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["front"]}]}, labels)
    assert matches({"matchExpressions": [{"key": "x", "operator": "DoesNotExist"}]}, labels)
    assert not matches({"matchLabels": {"app": "api"}}, labels)


def test_usable_excludes_gateway_exclude_and_reserved() -> None:
    pool = _pool("10.0.0.0/24", ips=["10.0.0.1-10.0.0.10"], excludeIPs=["10.0.0.5"], gateway="10.0.0.1")
    u = usable(pool, [IPSet.parse(4, ["10.0.0.9-10.0.0.20"])])
    assert u.to_ranges() == ["10.0.0.2-10.0.0.4", "10.0.0.6-10.0.0.8"]


def test_walker_offers_every_free_address_once_from_a_seeded_start() -> None:
    free = IPSet.parse(4, ["10.0.0.1-10.0.0.5", "10.0.0.10-10.0.0.12"])
    for seed in ("node1", "node2", "node3", "x"):
        got = list(Walker(seed).candidates("p", free))
        assert sorted(got) == sorted(str(a) for a in free)
        assert len(got) == 8
    starts = {next(Walker(f"node{i}").candidates("p", IPSet.parse(4, ["10.0.0.0-10.0.3.255"]))) for i in range(10)}
    assert len(starts) == 10  # agents start apart
    assert list(Walker("n").candidates("p", IPSet(4))) == []


def test_walker_continues_its_stretch_and_jumps_away_from_other_agents() -> None:
    space = IPSet.parse(4, ["10.0.0.0-10.0.0.99"])
    held: dict[str, int] = {}
    w = Walker("node1")
    first = next(w.candidates("p", space, lambda ip: held.get(ip, FREE)))
    held[first] = MINE
    second = next(w.candidates("p", space, lambda ip: held.get(ip, FREE)))
    assert int(ip_address(second)) == int(ip_address(first)) + 1 or second == "10.0.0.0"  # same stretch
    held[second] = MINE
    # another agent holds the next address: the walk leaves for the middle of the largest free gap
    nxt = str(ip_address(second) + 1) if second != "10.0.0.99" else "10.0.0.0"
    held[nxt] = OTHER
    jumped = next(w.candidates("p", space, lambda ip: held.get(ip, FREE)))
    assert jumped != str(ip_address(nxt) + 1)
    assert held.get(str(ip_address(jumped) - 1), FREE) == FREE  # landed inside a gap, not at an edge


def _storm(agents: int, per_agent: int, lag: int, seed: int) -> tuple[int, int]:
    """Agents take turns at random; each sees the others' picks ``lag`` picks late. (conflicts, taken)"""
    last = ip_address("172.18.200.0") + agents * per_agent - 1
    space = IPSet.parse(4, [f"172.18.200.0-{last}"])
    owner: dict[str, str] = {}
    seen_at: dict[str, int] = {}
    lost: dict[str, set[str]] = {}
    names = [f"node{i}" for i in range(agents)]
    walkers = {n: Walker(n) for n in names}
    todo = dict.fromkeys(names, per_agent)
    rng = random.Random(seed)
    conflicts = step = 0
    while any(todo.values()):
        me = rng.choice([n for n in names if todo[n]])

        def held_by(ip: str, me: str = me, step: int = step) -> int:
            holder = owner.get(ip)
            if holder == me:
                return MINE
            if ip in lost.setdefault(me, set()) or (holder is not None and seen_at[ip] <= step):
                return OTHER
            return FREE

        active = {n for ip, n in owner.items() if seen_at[ip] <= step}
        for ip in walkers[me].candidates("pool", space, held_by, names, active):
            if ip in owner:
                conflicts += 1
                lost[me].add(ip)
                continue
            owner[ip], seen_at[ip] = me, step + lag
            break
        todo[me] -= 1
        step += 1
    return conflicts, len(owner)


def test_walkers_fill_a_pool_exactly_and_rarely_collide() -> None:
    # 10 agents fill a pool of exactly 1000 addresses, learning of each other's picks 10 picks late:
    # every address is handed out once, and lost races stay rare (a plain shared walk loses most).
    conflicts, taken = 0, 0
    for seed in range(3):
        c, t = _storm(10, 100, lag=10, seed=seed)
        assert t == 1000
        conflicts, taken = conflicts + c, taken + t
    assert conflicts / taken < 0.05


def test_record_names_are_valid_object_names() -> None:
    assert record_name("10.6.168.101") == "10.6.168.101"
    assert record_name("fd00::1") == "fd00-0000-0000-0000-0000-0000-0000-0001"


def test_routes_and_result_versions() -> None:
    a = Assigned(
        "eth0",
        4,
        "172.18.40.2",
        16,
        "v4-a",
        "172.18.0.1",
        pool_routes=(parse_routes('[{"dst": "10.10.0.0/16", "gw": "172.18.0.2"}]')[0],),
    )
    b = Assigned("eth0", 6, "fd00:172:18::40", 64, "v6-a", "fd00:172:18::1")
    extra = parse_routes('[{"dst": "10.20.0.0/16", "gw": "172.18.0.3"}, {"dst": "10.30.0.0/16", "gw": "192.168.0.1"}]')
    routes = routes_for([a, b], extra, clean_gateway=False)
    assert [(r.dst, r.gw) for r in routes] == [
        ("0.0.0.0/0", "172.18.0.1"),
        ("10.10.0.0/16", "172.18.0.2"),
        ("::/0", "fd00:172:18::1"),
        ("10.20.0.0/16", "172.18.0.3"),
    ]
    assert [r.dst for r in routes_for([a], [], clean_gateway=True)] == ["10.10.0.0/16"]
    # a record and its pool give the same address
    pool = {
        "spec": {
            "subnet": "172.18.0.0/16",
            "gateway": "172.18.0.1",
            "routes": [{"dst": "10.10.0.0/16", "gw": "172.18.0.2"}],
        }
    }
    record = {"interface": "eth0", "ipVersion": 4, "ip": "172.18.40.2", "pool": "v4-a"}
    assert assigned_from(pool, record) == a
    assert assigned_from(None, record).cidr == "172.18.40.2/32"


def test_a_walk_in_a_full_fragmented_pool_asks_about_few_addresses_not_the_whole_pool() -> None:
    """90 % of a /8 held by another node, the free addresses one in ten: finding one costs a bounded
    number of looks (the exact largest-gap search walked all 16M addresses, ~80 s per allocation)."""
    space = IPSet.parse(4, ["11.0.0.1-11.255.255.254"])
    first = int(ip_address("11.0.0.1"))
    asked = 0

    def held_by(ip: str) -> int:
        nonlocal asked
        asked += 1
        return FREE if (int(ip_address(ip)) - first) % 10 == 9 else OTHER

    w = Walker("node1")
    got = next(w.candidates("p", space, held_by, ["node0", "node1"], ["node0"]))
    assert held_by(got) == FREE
    assert asked < 5000


def _record(ip: str, pool: str, family: int = 4) -> dict[str, Any]:
    return {"spec": {"ip": ip, "pool": pool, "ipVersion": family, "interface": "eth0"}}


def test_a_statefulset_pod_keeps_only_addresses_of_pools_it_still_names() -> None:
    from spiderpool.ipam.moves import move_reason, split_predecessors

    plan = plan_nic(_ctx({"ipam.spidernet.io/ippool": '{"ipv4": ["v4-a"], "ipv6": ["v6-a"]}'}), "eth0", POOLS,
                    netconf=NetconfDefaults(), families=(4, 6))  # fmt: skip
    same = [_record("172.18.40.3", "v4-a"), _record("fd00:172:18::41", "v6-a", 6)]
    assert split_predecessors(plan, same) == (same, [])
    # the IPv4 pool changed: the IPv4 address moves, the IPv6 one stays
    old4 = _record("172.18.41.3", "v4-b")
    kept, moved = split_predecessors(plan, [old4, same[1]])
    assert (kept, moved) == ([same[1]], [old4])
    assert move_reason(plan, old4["spec"]) == (
        "IPv4 address 172.18.41.3 of interface eth0 came from pool v4-b, which the pod no longer names"
        " (pools from pod annotation ipam.spidernet.io/ippool: v4-a)"
    )
    # a pool the pod still names but may no longer use (here: another node's) is a move too
    node2 = _record("172.18.42.1", "v4-node2")
    plan2 = plan_nic(_ctx({"ipam.spidernet.io/ippool": '{"ipv4": ["v4-node2", "v4-a"]}'}), "eth0", POOLS,
                     netconf=NetconfDefaults())  # fmt: skip
    assert split_predecessors(plan2, [node2]) == ([], [node2])
    # one address per family: a second IPv4 record (never written by an agent) is released
    assert split_predecessors(plan, [same[0], _record("172.18.40.4", "v4-a")])[1] == [_record("172.18.40.4", "v4-a")]
    # a family the pod no longer takes (no ipVersion written: read from the address)
    v4_only = plan_nic(_ctx({"ipam.spidernet.io/ippool": '{"ipv4": ["v4-a"]}'}), "eth0", POOLS,
                       netconf=NetconfDefaults())  # fmt: skip
    bare = {"spec": {"ip": "fd00:172:18::41", "pool": "v6-a", "interface": "eth0"}}
    assert split_predecessors(v4_only, [bare]) == ([], [bare])
    assert "the pod takes no IPv6 address now" in move_reason(v4_only, bare["spec"])
