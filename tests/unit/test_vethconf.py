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
