"""Names in labels, annotation keys matched as upstream matches them, upstream's phrases in our
messages, CEL messages with values, and who may edit an auto-pool. Pure."""

from __future__ import annotations

import re

import pytest

from spiderpool.agent.errors import explain_api_error
from spiderpool.api import annotations as ann
from spiderpool.api.constants import name_label
from spiderpool.api.schema import Rule
from spiderpool.controller import admission
from spiderpool.controller.admission import Settings, Snapshot
from spiderpool.ipam import autopool as ap
from spiderpool.ipam.allocate import held_back
from spiderpool.ipam.ranges import IPSet
from spiderpool.ipam.selection import NetconfDefaults, PodContext, SelectionError, plan_nic
from spiderpool.k8s.client import ApiError

#: Kubernetes' label value syntax (apimachinery's validation.IsValidLabelValue)
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


@pytest.mark.parametrize("length", [1, 62, 63, 64, 200, 253])
def test_every_name_the_api_accepts_makes_a_valid_label(length: int) -> None:
    name = ("p-" + "a1." * 90)[: length - 1] + "z"
    value = name_label(name)
    assert len(value) <= 63
    assert LABEL_VALUE.match(value), value
    if length <= 63:
        assert value == name  # selectors written for upstream keep working
    else:
        assert value.startswith(name[:40])
        assert value != name_label(name[:-1] + "y")


def test_long_app_names_keep_nic_and_uid_in_the_pool_name() -> None:
    uid = "0e1c7d2a-5b6c-4d1e-9f00-a18829c3e4f5"
    name = "long-app-name-abcdefghijklmnopqrstuvwxyz-0123456789-abcdefghij"  # the Deployment
    pool = ap.pool_name(4, ap.App("Deployment", "ns", name, uid), "eth0")
    assert pool == f"auto4-{name}-eth0-a1882"
    longest = ap.App("Deployment", "ns", "x" * 253, uid)
    names = {ap.pool_name(4, longest, nic) for nic in ("eth0", "net1")}
    assert len(names) == 2
    assert all(len(n) <= 253 and n.endswith("-a1882") for n in names)
    labels = ap.pool_labels(longest, "s" * 253, "eth0", 4, True, "172-18-0-0-16")
    assert all(len(v) <= 63 and LABEL_VALUE.match(v) for v in labels.values()), labels
    pool = {
        "metadata": {"labels": labels},
        "spec": {"podAffinity": {"matchLabels": longest.pod_labels()}},
    }
    assert ap.owner_of(pool) == ("Deployment", "ns", "x" * 253)
    assert ap.owned_by(pool, longest, "eth0", 4)
    assert not ap.owned_by(pool, ap.App("Deployment", "ns", "x" * 252 + "y", uid))


def test_keys_match_case_insensitively_as_go_does() -> None:
    parsed = ann.parse_pod(
        {
            ann.IPPOOLS: '[{"interface":"eth0","ipv4":["p"],"cleanGateway":false},{"Interface":"net1","IPv4":["q"],'
            '"CleanGateway":true}]',
            ann.ROUTES: '[{"Dst": "10.9.0.0/16", "GW": "172.18.0.1"}]',
        }
    )
    assert [(c.interface, c.ipv4, c.clean_gateway) for c in parsed.ippools] == [
        ("eth0", ("p",), False),
        ("net1", ("q",), True),
    ]
    assert parsed.routes == (ann.Route("10.9.0.0/16", "172.18.0.1"),)
    assert parsed.warnings == ()
    subnet = ann.parse_pod({ann.SUBNET: '{"IPV4": ["s"]}'})
    assert subnet.subnets[0].ipv4 == ("s",)


def test_unknown_keys_are_ignored_with_a_warning_naming_the_closest_key() -> None:
    parsed = ann.parse_pod({ann.IPPOOLS: '[{"interface":"eth0","ipv4":["p"],"cleangatway":true,"colour":"red"}]'})
    assert parsed.ippools[0].clean_gateway is None  # ignored, as upstream ignores it
    assert parsed.warnings == (
        "annotation ipam.spidernet.io/ippools: item 0 has unknown key 'cleangatway', which is ignored;"
        " did you mean 'cleangateway'?",
        "annotation ipam.spidernet.io/ippools: item 0 has unknown key 'colour', which is ignored;"
        " known keys: interface, ipv4, ipv6, cleangateway",
    )


def _ctx(**kw: object) -> PodContext:
    base: dict[str, object] = {
        "namespace": "default",
        "name": "p",
        "labels": {},
        "node": "node1",
        "node_labels": {"zone": "a"},
        "namespace_labels": {},
        "annotations": ann.PodAnnotations(ippool=ann.PoolChoice(None, ("pool-a",))),
    }
    base.update(kw)
    return PodContext(**base)  # type: ignore[arg-type]


def _pool(**spec: object) -> dict[str, object]:
    return {"metadata": {"name": "pool-a"}, "spec": {"subnet": "172.18.0.0/16", "ips": ["172.18.0.1"], **spec}}


@pytest.mark.parametrize(
    ("spec", "phrase"),
    [
        ({"nodeName": ["node2"]}, "unmatched Node name of IPPool pool-a: its nodeName does not include node node1"),
        (
            {"nodeAffinity": {"matchLabels": {"zone": "b"}}},
            "unmatched Node name of IPPool pool-a: its nodeAffinity does not match node node1",
        ),
    ],
)
def test_node_mismatch_says_upstreams_words(spec: dict[str, object], phrase: str) -> None:
    with pytest.raises(SelectionError, match=re.escape(phrase)):
        plan_nic(_ctx(), "eth0", {"pool-a": _pool(**spec)}, netconf=NetconfDefaults())


def test_another_applications_auto_pool_names_its_owner() -> None:
    app = ap.App("Deployment", "shop", "cart", "u-1")
    pool = {
        "metadata": {"name": "pool-a", "labels": ap.pool_labels(app, "s", "eth0", 4, True, "x")},
        "spec": {"subnet": "172.18.0.0/16", "podAffinity": {"matchLabels": app.pod_labels()}},
    }
    with pytest.raises(SelectionError) as err:
        plan_nic(_ctx(), "eth0", {"pool-a": pool}, netconf=NetconfDefaults())
    assert "it is the auto-pool of application Deployment/shop/cart" in str(err.value)
    assert "podAffinity does not match" not in str(err.value)


def test_used_out_names_what_holds_the_ips_back() -> None:
    pool = {"spec": {"subnet": "172.18.0.0/16", "ips": ["172.18.9.1-172.18.9.4"], "excludeIPs": ["172.18.9.4"]}}
    reserved = {"rip-b": IPSet.parse(4, ["172.18.9.2-172.18.9.3"]), "rip-a": IPSet.parse(4, ["172.18.9.1"])}
    assert held_back(pool, reserved) == (
        "; of its 4 IPs, 4 are held back: 1 by its excludeIPs, 1 by SpiderReservedIP rip-a (172.18.9.1),"
        " 2 by SpiderReservedIP rip-b (172.18.9.2-172.18.9.3)"
    )
    assert held_back(pool | {"spec": {**pool["spec"], "excludeIPs": []}}, {}) == ""


def test_cel_messages_carry_the_values() -> None:
    rule = Rule("x", "spec.gateway {} is outside spec.subnet {}[ (see {})]; fix it", values=("a", "b", "c"))
    rendered = rule.render()
    assert rendered["message"] == "spec.gateway is outside spec.subnet; fix it"
    assert (
        rendered["messageExpression"]
        == "'spec.gateway ' + a + ' is outside spec.subnet ' + b + ' (see ' + c + '); fix it'"
    )
    with pytest.raises(ValueError, match="has 2 places for 1 values"):
        Rule("x", "{} and {}", values=("a",)).render()


def _auto_pool(ips: list[str]) -> dict[str, object]:
    app = ap.App("Deployment", "ns", "web", "u-1")
    return {
        "metadata": {"name": "auto4-web-eth0-u1", "labels": ap.pool_labels(app, "s", "eth0", 4, True, "x")},
        "spec": {"subnet": "172.18.0.0/16", "ips": ips, "podAffinity": {"matchLabels": app.pod_labels()}},
    }


def test_only_the_controller_edits_an_auto_pools_ips() -> None:
    old, new = _auto_pool(["172.18.70.100-172.18.70.102"]), _auto_pool(["172.18.70.100"])
    settings = Settings(controller_users=frozenset({"spiderpool-controller"}))
    by_admin = admission.validate("SpiderIPPool", "UPDATE", new, old, Snapshot(), settings, "kubernetes-admin")
    assert len(by_admin) == 1
    assert by_admin[0].startswith("spec.ips: SpiderIPPool 'auto4-web-eth0-u1' is the auto-pool of Deployment ns/web")
    assert not admission.validate("SpiderIPPool", "UPDATE", new, old, Snapshot(), settings, "spiderpool-controller")
    relabelled = _auto_pool(["172.18.70.100-172.18.70.102"])
    relabelled["metadata"]["labels"]["team"] = "blue"  # type: ignore[index]
    assert not admission.validate("SpiderIPPool", "UPDATE", relabelled, old, Snapshot(), settings, "kubernetes-admin")


@pytest.mark.parametrize(
    ("code", "cni", "phrase"),
    [
        (422, 100, "the apiserver refused to create spideripallocations as invalid; the installed CRDs may not match"),
        (403, 100, "spiderpool-agent is not allowed to create spideripallocations: give its ServiceAccount"),
        (404, 100, "are the chart's CRDs installed"),
        (429, 11, "the apiserver is throttling spiderpool-agent; the runtime retries by itself"),
        (503, 11, "the apiserver failed; the runtime retries by itself"),
    ],
)
def test_api_errors_are_translated_into_what_to_do(code: int, cni: int, phrase: str) -> None:
    exc = ApiError(
        code, "Reason", "details", method="POST", path="/apis/spiderpool.spidernet.io/v2beta1/spideripallocations"
    )
    err = explain_api_error(exc, "pod ns/p").prefixed()
    assert err.code == cni
    assert err.msg.startswith("spiderpool IP allocation error: pod ns/p: ")
    assert phrase in err.msg
    assert err.msg.endswith(f"[{code} Reason: details]")
    assert err.prefixed().msg == err.msg  # the prefix comes once
