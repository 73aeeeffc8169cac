"""The veth plugin's config keys (pure): the walkthrough's, the coordinator's, SpiderCoordinator defaults."""

from __future__ import annotations

import pytest

from spiderpool.net import vethconf


def test_walkthrough_keys() -> None:
    cfg = vethconf.parse(
        {
            "type": "veth",
            "service_cidr": ["10.96.0.0/16"],
            "cluster_cidr": "10.244.0.0/16",
            "additional_cidr": ["10.7.0.0/16"],
            "hardware_prefix": "0a:1b",
            "only_hardware": True,
            "rp_filter": {"enabled": True, "value": 2},
            "move_routes": True,
        }
    )
    assert cfg.hijack == ("10.96.0.0/16", "10.244.0.0/16", "10.7.0.0/16")
    assert cfg.mac_prefix == "0a:1b"
    assert cfg.rp_filter == 2
    assert vethconf.mac_for("0a:1b", "172.18.30.131") == "0a:1b:ac:12:1e:83"


@pytest.mark.parametrize(
    ("conf", "key", "message"),
    [
        ({"service_cidr": ["10.96.0.0/33"]}, "service_cidr", "is not a CIDR"),
        ({"hardware_prefix": "0b:1b"}, "hardware_prefix", "multicast"),
        ({"rp_filter": {"enabled": True, "value": 3}}, "rp_filter.value", "from 0 to 2"),
        ({"rp_filter": 2}, "rp_filter", "must be an object"),
        ({"vethMTU": 100}, "vethMTU", "from 576"),
        ({"service_cidrs": []}, "service_cidrs", "is not a key of the veth plugin"),
        ({"detectGateway": "yes"}, "detectGateway", "true or false"),
        ({"policyRoutes": {"dst": "10.0.0.0/8"}}, "policyRoutes", "list of {dst, gw}"),
        ({"policyRoutes": [{"dst": "10.0.0.0/8"}]}, "policyRoutes[0]", "exactly dst and gw"),
        ({"policyRoutes": [{"dst": "10.0.0.0/33", "gw": "10.0.0.1"}]}, "policyRoutes[0].dst", "is not a CIDR"),
        ({"policyRoutes": [{"dst": "10.0.0.0/8", "gw": "fd00::1"}]}, "policyRoutes[0].gw", "not of the family"),
        ({"txQueueLen": -1}, "txQueueLen", "from 0"),
        ({"vethLinkAddress": "10.0.0.1"}, "vethLinkAddress", "IPv4 link-local"),
        ({"mode": "overlayy"}, "mode", "is not a mode"),
    ],
)
def test_bad_keys_are_named(conf: dict[str, object], key: str, message: str) -> None:
    with pytest.raises(vethconf.ConfigError) as err:
        vethconf.parse(conf)
    assert err.value.key == key
    assert message in str(err.value)


def test_spidercoordinator_defaults_sit_under_the_config() -> None:
    spec = {"hijackCIDR": ["10.8.0.0/16"], "hostRuleTable": 600, "podRPFilter": -1, "detectGateway": True}
    cfg = vethconf.parse(vethconf.with_defaults({"type": "coordinator", "hostRuleTable": 700}, spec))
    assert cfg.hijack == ("10.8.0.0/16",)
    assert cfg.host_rule_table == 700  # the config wins
    assert cfg.rp_filter is None  # -1: leave it alone
    assert cfg.detect_gateway


def test_policy_routes_tx_queue_and_link_address() -> None:
    cfg = vethconf.parse(
        {
            "policyRoutes": [{"dst": "10.20.0.0/16", "gw": "172.18.0.1"}, {"dst": "fd00:20::5", "gw": "fd00::1"}],
            "txQueueLen": 2000,
            "vethLinkAddress": "169.254.100.1",
        }
    )
    assert cfg.policy_routes == (("10.20.0.0/16", "172.18.0.1"), ("fd00:20::5/128", "fd00::1"))
    assert (cfg.tx_queue_len, cfg.veth_link_address) == (2000, "169.254.100.1")
    assert vethconf.parse({"vethLinkAddress": ""}).veth_link_address is None
    spec = {"policyRoutes": [{"dst": "10.9.0.0/16", "gw": "172.18.0.1"}], "txQueueLen": 500}
    assert vethconf.parse(vethconf.with_defaults({}, spec)).policy_routes == (("10.9.0.0/16", "172.18.0.1"),)


def test_the_discovered_cidrs_sit_under_the_config() -> None:
    """A NAD without service_cidr gets the SpiderCoordinator status' service and pod CIDRs; a NAD
    that names them (either spelling) keeps its own."""
    status = {"phase": "Synced", "serviceCIDR": ["10.96.0.0/16"], "overlayPodCIDR": ["10.244.0.0/16"]}
    bare = vethconf.parse(vethconf.with_defaults({"type": "coordinator"}, {}, status))
    assert set(bare.hijack) == {"10.96.0.0/16", "10.244.0.0/16"}
    walkthrough = {"type": "veth", "service_cidr": "10.233.0.0/18"}
    assert set(vethconf.parse(vethconf.with_defaults(walkthrough, {}, status)).hijack) == {
        "10.233.0.0/18",
        "10.244.0.0/16",
    }
    own = {"serviceCIDR": ["10.97.0.0/16"], "cluster_cidr": ["10.250.0.0/16"]}
    assert set(vethconf.parse(vethconf.with_defaults(own, {}, status)).hijack) == {"10.97.0.0/16", "10.250.0.0/16"}


def test_pod_rp_filter_minus_one_leaves_it_alone() -> None:
    assert vethconf.parse({"podRPFilter": -1}).rp_filter is None
    assert vethconf.parse({"podRPFilter": 2}).rp_filter == 2


def test_mode_comes_from_the_config_or_the_spidercoordinator() -> None:
    assert vethconf.parse({}).mode == "auto"
    assert vethconf.parse(vethconf.with_defaults({}, {"mode": "overlay"})).mode == "overlay"
    assert vethconf.parse(vethconf.with_defaults({"mode": "underlay"}, {"mode": "overlay"})).mode == "underlay"
    # upstream's plugin spells it "disable", its CRD "disabled": both mean the same here
    assert vethconf.parse({"mode": "disable"}).mode == vethconf.parse({"mode": "disabled"}).mode == "disabled"
