"""SpiderMultusConfig on the real cluster: the NetworkAttachmentDefinition it generates heals itself,
takes over a bare NAD and leaves another's alone; bad SMCs are refused by the webhook naming the
field; pods of a Deployment get their network (pools, MTU, a chained plugin) from an SMC."""

from __future__ import annotations

import json
from collections.abc import Iterator
from importlib import resources
from typing import Any

import pytest

from spiderpool_lab import procs
from spiderpool_lab.cluster import Lab
from tests.dataplane.conftest import use_multus
from tests.helpers import get_json, in_netns, pods, pool_manifest, wait_gone, wait_running
from tests.ipam.conftest import wait_no_records
from tests.stack import Agents, Controllers

API = "spiderpool.spidernet.io/v2beta1"
NS = "smc"


def nad_crd(lab: Lab) -> None:
    crd = resources.files("spiderpool_lab").joinpath("manifests/network-attachment-definition-crd.yaml").read_text()
    lab.kubectl("apply", "-f", "-", input_text=crd)
    lab.kubectl(
        "wait", "--for=condition=Established", "crd/network-attachment-definitions.k8s.cni.cncf.io", "--timeout=60s"
    )


def smc(name: str, spec: dict[str, Any], annotations: dict[str, str] | None = None) -> str:
    meta: dict[str, Any] = {"name": name, "namespace": NS}
    if annotations:
        meta["annotations"] = annotations
    return json.dumps({"apiVersion": API, "kind": "SpiderMultusConfig", "metadata": meta, "spec": spec})


def nad(lab: Lab, name: str) -> dict[str, Any] | None:
    out = lab.kubectl("get", "network-attachment-definition", "-n", NS, name, "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else None


def plugins(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return list(json.loads(obj["spec"]["config"])["plugins"])


MACVLAN = {"cniType": "macvlan", "macvlan": {"master": ["eth0"], "ippools": {"ipv4": ["p-smc1"]}}}


@pytest.fixture
def namespace(controllers: Controllers) -> Iterator[Lab]:
    lab = controllers.lab
    nad_crd(lab)
    lab.kubectl("create", "namespace", NS)
    yield lab
    lab.kubectl("delete", "namespace", NS, "--wait=true", "--timeout=120s")


def test_the_nad_follows_its_smc(namespace: Lab) -> None:
    lab = namespace
    lab.kubectl(
        "apply", "-f", "-", input_text=smc("m1", MACVLAN, {"team": "net", "cni.spidernet.io/cniconfig-name": "m1-conf"})
    )
    procs.wait_for(lambda: nad(lab, "m1") is not None, timeout=30, what="the NAD of SMC m1")
    made = nad(lab, "m1")
    assert made is not None
    owner = get_json(lab, "spidermultusconfig", "-n", NS, "m1")
    (ref,) = made["metadata"]["ownerReferences"]
    assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == (
        "SpiderMultusConfig",
        "m1",
        owner["metadata"]["uid"],
        True,
    )
    assert made["metadata"]["annotations"]["team"] == "net"
    config = json.loads(made["spec"]["config"])
    assert (config["cniVersion"], config["name"]) == ("0.3.1", "m1-conf")
    types = [p["type"] for p in config["plugins"]]
    assert types == ["macvlan", "coordinator"], types
    assert config["plugins"][0]["ipam"] == {"type": "spiderpool", "default_ipv4_ippool": ["p-smc1"]}
    wanted = made["spec"]["config"]

    # Deleted: it is back within 10 s. Edited: it is put back.
    lab.kubectl("delete", "network-attachment-definition", "-n", NS, "m1")
    procs.wait_for(
        lambda: (nad(lab, "m1") or {}).get("spec", {}).get("config") == wanted, timeout=10, what="m1 re-created"
    )
    edited = {"spec": {"config": json.dumps({"cniVersion": "0.3.1", "name": "x", "plugins": [{"type": "bridge"}]})}}
    lab.kubectl("patch", "network-attachment-definition", "-n", NS, "m1", "--type=merge", "-p", json.dumps(edited))
    procs.wait_for(
        lambda: (nad(lab, "m1") or {}).get("spec", {}).get("config") == wanted, timeout=10, what="m1 reverted"
    )

    # A bare NAD of the name is taken over; one another SMC controls is left alone, with an Event.
    bare = {
        "apiVersion": "k8s.cni.cncf.io/v1",
        "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": "m2", "namespace": NS},
        "spec": {"config": "{}"},
    }
    lab.kubectl("apply", "-f", "-", input_text=json.dumps(bare))
    lab.kubectl("apply", "-f", "-", input_text=smc("m2", MACVLAN))
    procs.wait_for(
        lambda: [r["name"] for r in (nad(lab, "m2") or {}).get("metadata", {}).get("ownerReferences", [])] == ["m2"],
        timeout=30,
        what="the bare NAD m2 taken over by SMC m2",
    )
    assert [p["type"] for p in plugins(nad(lab, "m2") or {})] == ["macvlan", "coordinator"]
    lab.kubectl("apply", "-f", "-", input_text=smc("m3", MACVLAN, {"multus.spidernet.io/cr-name": "m1"}))
    message = f"the net-attach-def {NS}/m1 already exists and is managed by SpiderMultusConfig {NS}/m1"

    def warned() -> bool:
        events = get_json(lab, "events", "-n", NS, "--field-selector", "involvedObject.name=m3")["items"]
        return any(message in str(e.get("message")) for e in events)

    procs.wait_for(warned, timeout=30, what=f"the Event {message!r} on m3")
    still = nad(lab, "m1")
    assert still is not None
    assert still["metadata"]["ownerReferences"][0]["name"] == "m1"

    # The SMC deleted: its NAD goes with it.
    lab.kubectl("delete", "spidermultusconfig", "-n", NS, "m1", "m2", "m3")
    procs.wait_for(lambda: nad(lab, "m1") is None and nad(lab, "m2") is None, timeout=30, what="the NADs deleted")


BAD: list[tuple[str, dict[str, Any], dict[str, str] | None, str]] = [
    ("vlan -1", {"cniType": "macvlan", "macvlan": {"master": ["eth0"], "vlanID": -1}}, None, "vlanID"),
    ("vlan 4095", {"cniType": "macvlan", "macvlan": {"master": ["eth0"], "vlanID": 4095}}, None, "vlanID"),
    (
        "ipvlan under macvlan",
        {"cniType": "macvlan", "macvlan": {"master": ["eth0"]}, "ipvlan": {"master": ["eth0"]}},
        None,
        "ipvlan",
    ),
    ("macvlan missing", {"cniType": "macvlan"}, None, "macvlan"),
    ("multicast mac prefix", {**MACVLAN, "coordinator": {"podMACPrefix": "01:00"}}, None, "podMACPrefix"),
    ("rp_filter 4", {**MACVLAN, "coordinator": {"podRPFilter": 4}}, None, "podRPFilter"),
    ("host rule table 254", {**MACVLAN, "coordinator": {"hostRuleTable": 254}}, None, "hostRuleTable"),
    ("mtu -1", {"cniType": "macvlan", "macvlan": {"master": ["eth0"], "mtu": -1}}, None, "mtu"),
    ("two masters no bond", {"cniType": "macvlan", "macvlan": {"master": ["eth0", "eth1"]}}, None, "bond"),
    (
        "bond mode 7",
        {"cniType": "macvlan", "macvlan": {"master": ["eth0", "eth1"], "bond": {"name": "bond0", "mode": 7}}},
        None,
        "mode",
    ),
    ("long master", {"cniType": "macvlan", "macvlan": {"master": ["a-very-long-interface-name"]}}, None, "master"),
    ("unknown cniType", {"cniType": "weave"}, None, "cniType"),
    ("long cr-name", MACVLAN, {"multus.spidernet.io/cr-name": "a" * 254}, "multus.spidernet.io/cr-name"),
    ("cr-name not RFC 1123", MACVLAN, {"multus.spidernet.io/cr-name": "Bad_Name"}, "multus.spidernet.io/cr-name"),
    ("bad cni-version", MACVLAN, {"multus.spidernet.io/cni-version": "0.9.9"}, "multus.spidernet.io/cni-version"),
    ("chain not JSON", {**MACVLAN, "chainCNIJsonData": ["{not json"]}, None, "chainCNIJsonData[0]"),
    ("chain without type", {**MACVLAN, "chainCNIJsonData": ['{"sysctl": {}}']}, None, "chainCNIJsonData[0]"),
    ("custom not JSON", {"cniType": "custom", "customCNI": "{not json"}, None, "customCNI"),
    ("sriov without resourceName", {"cniType": "sriov", "sriov": {"vlanID": 5}}, None, "resourceName"),
    (
        "bad pool name",
        {"cniType": "macvlan", "macvlan": {"master": ["eth0"], "ippools": {"ipv4": ["Bad_Pool"]}}},
        None,
        "ippools",
    ),
]


def test_bad_smcs_are_refused_naming_the_field(namespace: Lab) -> None:
    lab = namespace
    assert len(BAD) >= 15
    failures = []
    for i, (what, spec, notes, field) in enumerate(BAD):
        out = lab.kubectl("apply", "--dry-run=server", "-f", "-", input_text=smc(f"bad-{i}", spec, notes), check=False)
        text = out.stdout + out.stderr
        if out.returncode == 0 or field not in text:
            failures.append(f"{what}: expected a refusal naming {field!r}, got: {text.strip()}")
    assert not failures, "\n".join(failures)


def deployment(smc_name: str) -> str:
    return json.dumps(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "smc-app", "namespace": NS},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "smc-app"}},
                "template": {
                    "metadata": {
                        "labels": {"app": "smc-app"},
                        "annotations": {"v1.multus-cni.io/default-network": f"{NS}/{smc_name}"},
                    },
                    "spec": {"containers": [{"name": "c", "image": "registry.invalid/app:1"}]},
                },
            },
        }
    )


def test_pods_get_their_network_from_an_smc(agents: Agents) -> None:
    lab = agents.lab
    use_multus(lab)
    lab.kubectl("create", "namespace", NS)
    for name, block in (("p-smc1", "172.18.62.1-172.18.62.9"), ("p-smc2", "172.18.62.10-172.18.62.19")):
        lab.kubectl("apply", "-f", "-", input_text=pool_manifest(name, "172.18.0.0/16", [block]))
    tuning = json.dumps({"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.arp_ignore": "1"}})
    spec = {
        "cniType": "macvlan",
        "macvlan": {"master": ["eth0"], "mtu": 1400, "ippools": {"ipv4": ["p-smc1"]}},
        "chainCNIJsonData": [tuning],
    }
    try:
        lab.kubectl("apply", "-f", "-", input_text=smc("app-net", spec))
        procs.wait_for(lambda: nad(lab, "app-net") is not None, timeout=30, what="the NAD of SMC app-net")
        lab.kubectl("apply", "-f", "-", input_text=deployment("app-net"))
        (first,) = wait_running(lab, NS, "app=smc-app", 1)
        assert first["status"]["podIP"].startswith("172.18.62."), first["status"]
        assert int(first["status"]["podIP"].rsplit(".", 1)[1]) <= 9
        target = f"{NS}/{first['metadata']['name']}"
        link = json.loads(in_netns(lab, target, "ip", "-j", "link", "show", "eth0").stdout)[0]
        assert link["mtu"] == 1400, link
        assert in_netns(lab, target, "cat", "/proc/sys/net/ipv4/conf/eth0/arp_ignore").stdout.strip() == "1"
        routes = json.loads(in_netns(lab, target, "ip", "-j", "route").stdout)
        assert [r for r in routes if r["dev"] == "veth0"], routes  # the coordinator the SMC appended

        # Another pool in the SMC; the next pod draws from it.
        spec["macvlan"]["ippools"] = {"ipv4": ["p-smc2"]}
        lab.kubectl("apply", "-f", "-", input_text=smc("app-net", spec))
        procs.wait_for(
            lambda: "p-smc2" in (nad(lab, "app-net") or {}).get("spec", {}).get("config", ""),
            timeout=30,
            what="the NAD updated to p-smc2",
        )
        lab.kubectl("delete", "pod", "-n", NS, first["metadata"]["name"])

        def moved() -> bool:
            now = [p for p in pods(lab, NS, "app=smc-app") if p["metadata"]["uid"] != first["metadata"]["uid"]]
            return any(int((p["status"].get("podIP") or "0.0.0.0").rsplit(".", 1)[1]) >= 10 for p in now)

        procs.wait_for(moved, timeout=120, what="the new pod with an IP of p-smc2")
    finally:
        lab.kubectl("delete", "namespace", NS, "--wait=false")
        wait_gone(lab, NS, "app=smc-app")
        wait_no_records(lab, NS, timeout=120)
        lab.kubectl("delete", "spiderippool", "p-smc1", "p-smc2", "--wait=true", "--timeout=60s")
        lab.reset_cni_config()
