"""Auto-pool names, sizes and IP choices (pure)."""

from __future__ import annotations

import pytest

from spiderpool.api import annotations as ann
from spiderpool.ipam import autopool as ap
from spiderpool.ipam.ranges import IPSet

APP = ap.App("Deployment", "default", "Test-App-1", "6f1b5e2c-0d3c-4f7e-9a1b-a5bd3f0c9e21")


def test_upstream_name_and_labels() -> None:
    assert ap.pool_name(4, APP, "eth0") == "auto4-test-app-1-eth0-a5bd3"
    labels = ap.pool_labels(APP, "subnet-test", "eth0", 4, True, "172-18-0-0-16")
    assert labels[ap.L_APP_GV] == "apps_v1"
    assert labels[ap.L_IP_VERSION] == "IPv4"
    assert labels[ap.L_RECLAIM] == "true"
    assert ap.owned_by({"metadata": {"labels": labels}}, APP, "eth0", 4)
    assert not ap.owned_by({"metadata": {"labels": labels}}, APP, "net1", 4)


@pytest.mark.parametrize(
    ("kind", "obj", "want"),
    [
        ("Deployment", {"spec": {"replicas": 2}}, 2),
        ("StatefulSet", {"spec": {}}, 1),
        ("Deployment", {"spec": {"replicas": 0}}, 0),
        ("DaemonSet", {"status": {"desiredNumberScheduled": 3}}, 3),
        ("Job", {"spec": {"parallelism": 4}}, 4),
        ("CronJob", {"spec": {"jobTemplate": {"spec": {}}}}, 1),
    ],
)
def test_replicas(kind: str, obj: dict[str, object], want: int) -> None:
    assert ap.replicas(kind, obj) == want


def test_desired_size() -> None:
    assert ap.desired_size(None, 2) == 3  # the walkthrough: 2 replicas + 1
    assert ap.desired_size((True, 2), 5) == 7
    assert ap.desired_size((False, 4), 9) == 4


def test_resize_grows_with_lowest_free_and_shrinks_only_free_ips() -> None:
    free = IPSet.parse(4, ["172.18.30.131-172.18.30.140"])
    grown = ap.resize(IPSet(4), 3, free, IPSet(4))
    assert grown.ips.to_ranges() == ["172.18.30.131-172.18.30.133"]
    assert grown.short == 0
    regrown = ap.resize(grown.ips, 5, free, IPSet(4))  # the subnet's free IPs may include the pool's own
    assert regrown.ips.to_ranges() == ["172.18.30.131-172.18.30.135"]
    current = IPSet.parse(4, ["172.18.30.131-172.18.30.136"])
    in_use = IPSet.parse(4, ["172.18.30.131", "172.18.30.135"])
    shrunk = ap.resize(current, 2, IPSet(4), in_use)
    assert shrunk.ips == in_use  # the two held IPs stay, whatever their place
    too_few = ap.resize(current, 1, IPSet(4), in_use)
    assert too_few.stuck == 1
    assert too_few.ips == in_use
    exhausted = ap.resize(IPSet.parse(4, ["172.18.30.131-172.18.30.140"]), 13, IPSet(4), IPSet(4))
    assert exhausted.short == 3


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (ann.SUBNET, '{"ipv4": ["a", "b"]}', "an auto-pool comes from one"),
        (ann.SUBNET, '{"ipv4": ["a*"]}', "take no wildcards"),
        (ann.SUBNETS, '[{"ipv4": ["a"]}]', "must name its interface"),
        (ann.SUBNETS, '[{"interface": "eth0", "ipv4": ["a"]}, {"interface": "net1", "ipv4": ["a"]}]', "serves two"),
        (ann.IP_NUMBER, "-1", "is not a number"),
        (ann.IP_NUMBER, "0", "leaves no IP"),
        (ann.RECLAIM, "maybe", "neither true nor false"),
    ],
)
def test_bad_subnet_annotations_name_the_key(key: str, value: str, message: str) -> None:
    parse = {ann.IP_NUMBER: ann.parse_ip_number, ann.RECLAIM: ann.parse_reclaim}.get(
        key, lambda v: ann.parse_pod({key: v})
    )
    with pytest.raises(ann.AnnotationError) as err:
        parse(value)
    assert key in str(err.value)
    assert message in str(err.value)


def test_subnet_annotation_defaults_to_eth0_and_subnets_wins() -> None:
    parsed = ann.parse_pod({ann.SUBNET: '{"ipv4": ["s4"]}'})
    assert parsed.subnets == (ann.PoolChoice("eth0", ("s4",), ()),)
    both = ann.parse_pod({ann.SUBNET: '{"ipv4": ["s4"]}', ann.SUBNETS: '[{"interface": "net1", "ipv4": ["t4"]}]'})
    assert both.subnets == (ann.PoolChoice("net1", ("t4",), ()),)
    assert ann.parse_ip_number("+2") == (True, 2)
    assert ann.parse_ip_number("5") == (False, 5)
