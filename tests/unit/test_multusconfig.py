"""SpiderMultusConfig: the NAD rendering (pure), the webhook's rules, the CRD facts behind the
schema's rules, and the reconciler's wait for the NAD CRD (with a stub client)."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from spiderpool.api import crds
from spiderpool.controller import admission, nad
from spiderpool.controller.admission import Settings, Snapshot
from spiderpool.controller.multusconfig import MultusConfigReconciler, drift
from spiderpool.k8s.client import ApiError, Client
from spiderpool.k8s.retry import Backoff


def smc(spec: dict[str, Any], *, name: str = "net1", annotations: dict[str, str] | None = None, **meta: Any) -> Any:
    metadata: dict[str, Any] = {"name": name, "namespace": "ns1", "uid": "u-1", **meta}
    if annotations is not None:
        metadata["annotations"] = annotations
    return {"apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderMultusConfig", "metadata": metadata,
            "spec": spec}  # fmt: skip


def conf(obj: dict[str, Any]) -> Any:
    return json.loads(nad.render(obj)["spec"]["config"])


def plugins(obj: dict[str, Any]) -> list[Any]:
    return list(conf(obj)["plugins"])


MACVLAN = {"cniType": "macvlan", "macvlan": {"master": ["eth0"]}}


# ------------------------------------------------------------------ render
def test_macvlan_renders_the_whole_nad() -> None:
    spec = {
        "cniType": "macvlan",
        "macvlan": {"master": ["eth0"], "mtu": 1400, "ippools": {"ipv4": ["v4a", "v4b"], "ipv6": ["v6"]}},
    }
    assert nad.render(smc(spec)) == {
        "apiVersion": "k8s.cni.cncf.io/v1",
        "kind": "NetworkAttachmentDefinition",
        "metadata": {
            "name": "net1",
            "namespace": "ns1",
            "ownerReferences": [
                {
                    "apiVersion": "spiderpool.spidernet.io/v2beta1",
                    "kind": "SpiderMultusConfig",
                    "name": "net1",
                    "uid": "u-1",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "config": '{"cniVersion":"0.3.1","name":"net1","plugins":[{"type":"macvlan","master":"eth0",'
            '"mode":"bridge","mtu":1400,"ipam":{"type":"spiderpool","default_ipv4_ippool":["v4a","v4b"],'
            '"default_ipv6_ippool":["v6"]}},{"type":"coordinator"}]}'
        },
    }


def test_macvlan_with_a_vlan_is_made_by_ifacer_first() -> None:
    spec = {"cniType": "macvlan", "macvlan": {"master": ["eth0"], "vlanID": 100}}
    assert plugins(smc(spec))[:2] == [
        {"type": "ifacer", "interfaces": ["eth0"], "vlanID": 100},
        {"type": "macvlan", "master": "eth0.100", "mode": "bridge", "ipam": {"type": "spiderpool"}},
    ]


def test_two_masters_are_bonded_by_ifacer_and_the_bond_is_the_master() -> None:
    bond = {"name": "bond0", "mode": 1, "options": "primary=eth1"}
    spec = {"cniType": "macvlan", "macvlan": {"master": ["eth1", "eth2"], "vlanID": 7, "bond": bond}}
    ifacer, main, _ = plugins(smc(spec))
    assert ifacer == {
        "type": "ifacer",
        "interfaces": ["eth1", "eth2"],
        "vlanID": 7,
        "bond": {"name": "bond0", "mode": 1, "options": "primary=eth1"},
    }
    assert main["master"] == "bond0.7"
    untagged = {"cniType": "macvlan", "macvlan": {"master": ["eth1", "eth2"], "bond": {"name": "b1", "mode": 4}}}
    ifacer, main, _ = plugins(smc(untagged))
    assert ifacer == {"type": "ifacer", "interfaces": ["eth1", "eth2"], "vlanID": 0, "bond": {"name": "b1", "mode": 4}}
    assert main["master"] == "b1"


def test_ipvlan_is_l2_and_vlan_tags_itself() -> None:
    main = plugins(smc({"cniType": "ipvlan", "ipvlan": {"master": ["eth0"], "vlanID": 5}}))[1]
    assert main == {"type": "ipvlan", "master": "eth0.5", "mode": "l2", "ipam": {"type": "spiderpool"}}
    vlan = plugins(smc({"cniType": "vlan", "vlan": {"master": ["eth0"], "vlanID": 30, "mtu": 9000}}))
    assert vlan[0] == {"type": "vlan", "master": "eth0", "vlanId": 30, "mtu": 9000, "ipam": {"type": "spiderpool"}}
    bonded = {"cniType": "vlan", "vlan": {"master": ["e1", "e2"], "vlanID": 30, "bond": {"name": "b0", "mode": 0}}}
    ifacer, main, _ = plugins(smc(bonded))
    assert ifacer["vlanID"] == 0  # (the vlan plugin makes the sub-interface)
    assert main["master"] == "b0"
    assert main["vlanId"] == 30


def test_sriov_resource_rates_mtu_and_rdma() -> None:
    spec = {
        "cniType": "sriov",
        "sriov": {
            "resourceName": "spidernet.io/vf",
            "vlanID": 12,
            "mtu": 1450,
            "minTxRateMbps": 10,
            "maxTxRateMbps": 100,
            "rdmaIsolation": True,
        },
    }
    out = nad.render(smc(spec))
    assert out["metadata"]["annotations"] == {"k8s.v1.cni.cncf.io/resourceName": "spidernet.io/vf"}
    assert json.loads(out["spec"]["config"])["plugins"] == [
        {"type": "sriov", "vlan": 12, "min_tx_rate": 10, "max_tx_rate": 100, "ipam": {"type": "spiderpool"}},
        {"type": "tuning", "mtu": 1450},
        {"type": "rdma"},
        {"type": "coordinator"},
    ]
    plain = plugins(smc({"cniType": "sriov", "sriov": {"resourceName": "r"}}))
    assert plain == [{"type": "sriov", "vlan": 0, "ipam": {"type": "spiderpool"}}, {"type": "coordinator"}]


def test_ovs_ib_sriov_and_ipoib() -> None:
    ovs = {"cniType": "ovs", "ovs": {"bridge": "br1", "vlan": 3, "trunk": [{"id": 4}], "ippools": {"ipv4": ["p"]}}}
    assert plugins(smc(ovs))[0] == {
        "type": "ovs",
        "bridge": "br1",
        "vlan": 3,
        "trunk": [{"id": 4}],
        "ipam": {"type": "spiderpool", "default_ipv4_ippool": ["p"]},
    }
    ib = {"cniType": "ib-sriov", "ibsriov": {"resourceName": "mlx/ib", "pkey": "0x6", "linkState": "enable"}}
    out = nad.render(smc(ib))
    assert out["metadata"]["annotations"] == {"k8s.v1.cni.cncf.io/resourceName": "mlx/ib"}
    assert json.loads(out["spec"]["config"])["plugins"][0] == {
        "type": "ib-sriov",
        "pkey": "0x6",
        "link_state": "enable",
        "ipam": {"type": "spiderpool"},
    }
    ipoib = {"cniType": "ipoib", "ipoib": {"master": "ib0"}}
    assert plugins(smc(ipoib))[0] == {"type": "ipoib", "master": "ib0", "ipam": {"type": "spiderpool"}}


def test_custom_is_taken_exactly_as_written() -> None:
    text = '{ "cniVersion": "1.0.0", "name": "mine",\n "plugins": [{"type": "bridge"}] }'
    out = nad.render(smc({"cniType": "custom", "customCNI": text}, annotations={nad.CNI_VERSION: "0.4.0"}))
    assert out["spec"] == {"config": text}
    assert nad.render(smc({"customCNI": '{"type":"x"}'}))["spec"] == {"config": '{"type":"x"}'}  # custom: the default


def test_disable_ipam_and_match_master_subnet() -> None:
    no_ipam = {**MACVLAN, "disableIPAM": True}
    assert "ipam" not in plugins(smc(no_ipam))[0]
    matched = {"cniType": "macvlan", "macvlan": {"master": ["eth0"], "ippools": {"matchMasterSubnet": True}}}
    assert plugins(smc(matched))[0]["ipam"] == {"type": "spiderpool", "match_master_subnet": True}


def test_annotations_name_version_and_config_name() -> None:
    annotations = {
        "z.example/b": "2",
        nad.CR_NAME: "other-name",
        nad.CNI_VERSION: "1.0.0",
        nad.CNICONFIG_NAME: "conf-name",
        nad.LAST_APPLIED: "{}",
        "a.example/a": "1",
    }
    out = nad.render(smc(MACVLAN, annotations=annotations, labels={"team": "x"}))
    assert out["metadata"]["name"] == "other-name"
    assert out["metadata"]["annotations"] == {"a.example/a": "1", "z.example/b": "2"}
    assert list(out["metadata"]["annotations"]) == ["a.example/a", "z.example/b"]
    assert out["metadata"]["labels"] == {"team": "x"}
    assert out["metadata"]["ownerReferences"][0]["name"] == "net1"  # (the SMC's, not the NAD's)
    config = json.loads(out["spec"]["config"])
    assert (config["cniVersion"], config["name"]) == ("1.0.0", "conf-name")
    # without the annotations: the defaults
    config = conf(smc(MACVLAN, annotations={nad.CR_NAME: "n2"}))
    assert (config["cniVersion"], config["name"]) == ("0.3.1", "n2")


def test_coordinator_carries_only_what_the_smc_sets() -> None:
    coordinator = {"podMACPrefix": "0a:1b", "hostRuleTable": 600, "tunePodRoutes": False, "podCIDRType": "calico"}
    last = plugins(smc({**MACVLAN, "coordinator": coordinator}))[-1]
    assert last == {"type": "coordinator", "podMACPrefix": "0a:1b", "tunePodRoutes": False, "hostRuleTable": 600}
    assert [p["type"] for p in plugins(smc({**MACVLAN, "enableCoordinator": False}))] == ["macvlan"]


def test_chained_plugins_keep_their_order_between_main_and_coordinator() -> None:
    chain = ['{"type":"tuning","sysctl":{"net.ipv4.conf.all.arp_notify":"1"}}', '{"type":"bandwidth","b":1,"a":2}']
    got = plugins(smc({**MACVLAN, "chainCNIJsonData": chain}))
    assert [p["type"] for p in got] == ["macvlan", "tuning", "bandwidth", "coordinator"]
    assert list(got[2]) == ["type", "b", "a"]  # (as written)


def test_rendering_is_deterministic() -> None:
    a = smc({**MACVLAN, "coordinator": {"vethMTU": 1500, "mode": "auto"}}, annotations={"x/1": "a", "y/2": "b"})
    b = smc({"coordinator": {"mode": "auto", "vethMTU": 1500}, "macvlan": {"master": ["eth0"]}, "cniType": "macvlan"},
            annotations={"y/2": "b", "x/1": "a"})  # fmt: skip
    assert json.dumps(nad.render(a)) == json.dumps(nad.render(b))
    assert nad.render(a) == nad.render(a)


def test_rdma_resource_of_macvlan_is_the_resource_annotation() -> None:
    spec = {"cniType": "macvlan", "macvlan": {"master": ["eth0"], "rdmaResourceName": "spidernet.io/rdma"}}
    out = nad.render(smc(spec, annotations={nad.RESOURCE_NAME: "user-said"}))
    assert out["metadata"]["annotations"] == {nad.RESOURCE_NAME: "spidernet.io/rdma"}


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"cniType": "custom"}, "spec.customCNI"),
        ({"cniType": "macvlan"}, "spec.macvlan"),
        ({"cniType": "macvlan", "macvlan": {"master": ["a", "b"]}}, "spec.macvlan.bond"),
        ({**MACVLAN, "chainCNIJsonData": ["{"]}, "spec.chainCNIJsonData[0]"),
        ({"cniType": "nope"}, "spec.cniType"),
    ],
)
def test_what_cannot_be_rendered_says_its_field(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(nad.RenderError, match=field.replace("[", r"\[")):
        nad.render(smc(spec))


def test_drift_names_what_differs() -> None:
    want = nad.render(smc(MACVLAN, annotations={"a": "1"}))
    live = json.loads(json.dumps(want))
    live["metadata"].update(resourceVersion="9", uid="n-1", managedFields=[{}])
    assert drift(live, want) == []
    live["metadata"]["annotations"] = {"a": "2"}
    live["metadata"]["labels"] = {"x": "y"}
    live["spec"]["config"] = "{}"
    assert drift(live, want) == ["labels", "annotations", "spec"]
    live["metadata"]["ownerReferences"] = []
    assert "ownerReferences" in drift(live, want)


# --------------------------------------------------------------- admission
def errors(obj: dict[str, Any]) -> list[str]:
    """As the webhook asks (the whole object, with its metadata)."""
    return admission.validate("SpiderMultusConfig", "CREATE", obj, None, Snapshot(), Settings())


LONG = "a" * 254
ADMISSION_CASES = [
    ("cr-name too long", smc(MACVLAN, annotations={nad.CR_NAME: LONG}),
     f"metadata.annotations[multus.spidernet.io/cr-name]: {'a' * 40}... is 254 characters, but a"
     " NetworkAttachmentDefinition name has at most 253; use a shorter name"),
    ("cr-name not RFC 1123", smc(MACVLAN, annotations={nad.CR_NAME: "Net_1"}),
     "metadata.annotations[multus.spidernet.io/cr-name]: 'Net_1' is not a valid NetworkAttachmentDefinition name"
     " (RFC 1123"),
    ("cr-name empty", smc(MACVLAN, annotations={nad.CR_NAME: ""}), "'' is not a valid NetworkAttachmentDefinition"),
    ("cr-name trailing dash", smc(MACVLAN, annotations={nad.CR_NAME: "net-"}), "'net-' is not a valid"),
    ("cni-version", smc(MACVLAN, annotations={nad.CNI_VERSION: "0.5.0"}),
     "metadata.annotations[multus.spidernet.io/cni-version]: '0.5.0' is not a CNI version; use one of 0.1.0, 0.2.0,"
     " 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0, or remove the annotation for 0.3.1"),
    ("cni-version v-prefixed", smc(MACVLAN, annotations={nad.CNI_VERSION: "v1.0.0"}), "'v1.0.0' is not a CNI version"),
    ("cniconfig-name", smc(MACVLAN, annotations={nad.CNICONFIG_NAME: "-bad name"}),
     "metadata.annotations[cni.spidernet.io/cniconfig-name]: '-bad name' is not a CNI network name"),
    ("chain not JSON", smc({**MACVLAN, "chainCNIJsonData": ['{"type": "tuning"']}),
     "spec.chainCNIJsonData[0]: not JSON ("),
    ("chain without type", smc({**MACVLAN, "chainCNIJsonData": ['{"type":"tuning"}', '{"mtu": 1400}']}),
     'spec.chainCNIJsonData[1]: a plugin config needs a "type" (the plugin to run)'),
    ("chain not an object", smc({**MACVLAN, "chainCNIJsonData": ['["tuning"]']}),
     "spec.chainCNIJsonData[0]: not a JSON object"),
    ("customCNI not JSON", smc({"cniType": "custom", "customCNI": "type: macvlan"}), "spec.customCNI: not JSON ("),
    ("customCNI not an object", smc({"customCNI": "[1]"}), "spec.customCNI: not a JSON object"),
    ("customCNI without type or plugins", smc({"customCNI": '{"name": "x"}'}),
     'spec.customCNI: neither "type" (a single plugin config) nor "plugins" (a conflist) is given'),
    ("customCNI plugin without type", smc({"customCNI": '{"plugins": [{"type": "a"}, {}]}'}),
     'spec.customCNI: plugins[1] needs a "type"'),
    ("customCNI with chain", smc({"customCNI": '{"type":"a"}', "chainCNIJsonData": ['{"type":"b"}']}),
     "spec.chainCNIJsonData: not used with cniType custom"),
    ("customCNI with coordinator", smc({"customCNI": '{"type":"a"}', "coordinator": {"mode": "overlay"}}),
     "spec.coordinator: not used with cniType custom"),
    ("ovs without bridge", smc({"cniType": "ovs", "ovs": {"vlan": 1}}),
     "spec.ovs.bridge: required with cniType ovs; name the OVS bridge on the nodes, e.g. br1"),
    ("ovs vlan", smc({"cniType": "ovs", "ovs": {"bridge": "br1", "vlan": 4095}}),
     "spec.ovs.vlan: 4095 is not a VLAN ID; use a whole number from 0 to 4094"),
    ("ovs bad pool", smc({"cniType": "ovs", "ovs": {"bridge": "br1", "ippools": {"ipv4": ["Pool_A"]}}}),
     "spec.ovs.ippools.ipv4[0]: 'Pool_A' is not a SpiderIPPool name"),
    ("ovs pools without IPAM",
     smc({"cniType": "ovs", "disableIPAM": True, "ovs": {"bridge": "b", "ippools": {"ipv4": ["p"]}}}),
     "spec.ovs.ippools: set but spec.disableIPAM is true, so no IPAM would use them"),
    ("ib-sriov without resource", smc({"cniType": "ib-sriov", "ibsriov": {"pkey": "0x1"}}),
     "spec.ibsriov.resourceName: required with cniType ib-sriov"),
    ("ib-sriov link state", smc({"cniType": "ib-sriov", "ibsriov": {"resourceName": "r", "linkState": "up"}}),
     "spec.ibsriov.linkState: 'up' is not one of auto, enable, disable"),
    ("ipoib master", smc({"cniType": "ipoib", "ipoib": {"master": "ib0/1"}}),
     "spec.ipoib.master: 'ib0/1' is not an interface name"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "obj", "message"), ADMISSION_CASES, ids=[c[0] for c in ADMISSION_CASES])
def test_webhook_refuses_with_the_field_and_the_fix(case: str, obj: dict[str, Any], message: str) -> None:
    found = errors(obj)
    assert len(found) == 1, found
    assert found[0].startswith(message) or message in found[0], found


@pytest.mark.parametrize(
    "obj",
    [
        smc(MACVLAN, annotations={nad.CR_NAME: "a" * 253, nad.CNI_VERSION: "1.1.0", nad.CNICONFIG_NAME: "My_Net.1"}),
        smc({**MACVLAN, "chainCNIJsonData": ['{"type":"tuning"}'], "coordinator": {"podMACPrefix": "0a:1b"}}),
        smc({"customCNI": '{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge"}]}'}),
        smc({"cniType": "ovs", "ovs": {"bridge": "br1", "vlan": 0, "ippools": {"ipv4": ["p.1"]}}}),
        smc({"cniType": "ib-sriov", "ibsriov": {"resourceName": "r", "rdmaIsolation": True}}),
    ],
)
def test_webhook_admits_good_ones_and_they_render(obj: dict[str, Any]) -> None:
    assert errors(obj) == []
    nad.render(obj)


def test_annotations_need_the_whole_object_through_the_webhook() -> None:
    from spiderpool.controller.cache import ObjectCache
    from spiderpool.controller.webhook import Webhook

    hook = Webhook(ObjectCache.__new__(ObjectCache), Settings())
    hook.cache.snapshot = Snapshot  # type: ignore[method-assign]
    req = {"uid": "r1", "operation": "CREATE", "object": smc(MACVLAN, annotations={nad.CNI_VERSION: "2"})}
    answer = hook.answer("validate", "SpiderMultusConfig", req)
    assert answer["allowed"] is False
    assert "multus.spidernet.io/cni-version" in answer["status"]["message"]


# ---------------------------------------------------------- the CRD facts
def _smc_schema() -> Any:
    (crd,) = [c for c in crds.CRDS if c.kind == "SpiderMultusConfig"]
    return crd.render()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def _keys(schema: Any) -> set[str]:
    if isinstance(schema, dict):
        return set(schema) | {k for v in schema.values() for k in _keys(v)}
    if isinstance(schema, list):
        return {k for v in schema for k in _keys(v)}
    return set()


def test_smc_coordinator_has_no_defaults_so_the_cluster_defaults_apply() -> None:
    coordinator = _smc_schema()["properties"]["coordinator"]
    assert "hostRuleTable" in coordinator["properties"]
    assert "default" not in _keys(coordinator)
    (cluster,) = [c for c in crds.CRDS if c.kind == "SpiderCoordinator"]
    assert "default" in _keys(cluster.render())  # (the SpiderCoordinator's own keep theirs)


def test_smc_schema_bounds_behind_the_schema_refusals() -> None:
    spec = _smc_schema()
    macvlan = spec["properties"]["macvlan"]["properties"]
    assert (macvlan["vlanID"]["minimum"], macvlan["vlanID"]["maximum"]) == (0, 4094)
    assert macvlan["mtu"]["minimum"] == 0
    assert macvlan["master"]["items"]["maxLength"] == 15
    assert macvlan["bond"]["properties"]["mode"]["maximum"] == 6
    assert spec["properties"]["sriov"]["required"] == ["resourceName"]
    assert "ib-sriov" in spec["properties"]["cniType"]["enum"]
    rules = " ".join(r["message"] for r in spec["x-kubernetes-validations"])
    for text in (
        "spec.ipvlan is set but spec.cniType is not 'ipvlan'",
        "spec.macvlan is required",
        "spec.sriov.ippools is set but spec.disableIPAM is true",
        "podMACPrefix is a multicast prefix",
    ):
        assert text in rules


# ------------------------------------------------- waiting for the NAD CRD
class _Discovery:
    """A client whose discovery of k8s.cni.cncf.io answers 404 ``missing`` times, then the group."""

    def __init__(self, missing: int) -> None:
        self.missing = missing
        self.calls = 0

    async def request(self, method: str, path: str, *args: Any, **kw: Any) -> Any:
        assert (method, path) == ("GET", "/apis/k8s.cni.cncf.io/v1")
        self.calls += 1
        if self.calls <= self.missing:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if self.calls == self.missing + 1:
            raise ConnectionResetError("a blip")
        return {"resources": [{"name": "network-attachment-definitions"}]}


async def test_without_the_nad_crd_it_says_so_once_and_waits(caplog: pytest.LogCaptureFixture) -> None:
    stub = _Discovery(missing=3)
    rec = MultusConfigReconciler(Client.__new__(Client), discovery_backoff=Backoff(0.001, 0.001))
    rec.client = stub  # type: ignore[assignment]
    with caplog.at_level(logging.INFO, logger="spiderpool.controller.multusconfig"):
        await rec._await_nad_api()
    assert stub.calls == 5
    loud = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(loud) == 1
    assert "install Multus (or its CRD)" in loud[0].getMessage()
    assert any("served now" in r.getMessage() for r in caplog.records)
