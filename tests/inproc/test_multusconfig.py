"""SpiderMultusConfig -> NetworkAttachmentDefinition against a real apiserver on loopback: the
reconciler creates, heals, takes over, refuses, renames and deletes; and the SMC schema refuses
what it covers (the webhook does not run here: its rules are unit tests)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

import pytest

from spiderpool.controller import nad
from spiderpool.controller.multusconfig import MultusConfigReconciler
from spiderpool.k8s.client import ApiError, Client
from spiderpool.k8s.kinds import EVENT, MULTUSCONFIG, NAD, Kind
from spiderpool_lab import procs
from spiderpool_lab.envtest import ApiServer
from tests.inproc.conftest import eventually, gone

WITHIN = 30.0
CONFIGMAP = Kind("", "v1", "configmaps", True, "ConfigMap")


@pytest.fixture(scope="module")
def nad_crd(apiserver: ApiServer) -> None:
    text = resources.files("spiderpool_lab").joinpath("manifests/network-attachment-definition-crd.yaml").read_text()
    apiserver.kubectl("apply", "--server-side", "-f", "-", input_text=text)
    crd = "crd/network-attachment-definitions.k8s.cni.cncf.io"
    apiserver.kubectl("wait", "--for=condition=Established", crd, "--timeout=60s")
    procs.wait_for(
        lambda: apiserver.kubectl("get", "network-attachment-definitions", "-A", check=False).returncode == 0,
        timeout=30,
        what="the NAD CRD to be served",
    )


@pytest.fixture
async def reconciler(nad_crd: None, client: Client) -> AsyncIterator[MultusConfigReconciler]:
    rec = MultusConfigReconciler(client)
    task = asyncio.create_task(rec.run())
    try:
        yield rec
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled(), f"the reconciler ended by itself: {task}"


def smc_body(namespace: str, name: str, spec: dict[str, Any], annotations: dict[str, str] | None = None) -> Any:
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderMultusConfig", "metadata": meta,
            "spec": spec}  # fmt: skip


MACVLAN = {"cniType": "macvlan", "macvlan": {"master": ["eth0"], "ippools": {"ipv4": ["pool-a"]}}}


async def get_nad(client: Client, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return await client.get(NAD, name, namespace)
    except ApiError as exc:
        if exc.code == 404:
            return None
        raise


async def rendered(client: Client, smc: dict[str, Any]) -> bool:
    """The NAD of ``smc`` is there, controlled by it, and equal to its rendering."""
    want = nad.render(smc)
    live = await get_nad(client, smc["metadata"]["namespace"], want["metadata"]["name"])
    if live is None:
        return False
    meta = live["metadata"]
    return (
        live["spec"] == want["spec"]
        and meta.get("ownerReferences") == want["metadata"]["ownerReferences"]
        and (meta.get("annotations") or {}) == (want["metadata"].get("annotations") or {})
    )


async def events(client: Client, namespace: str, name: str) -> list[dict[str, Any]]:
    items, _ = await client.list(EVENT, namespace, fields=f"involvedObject.name={name}")
    return items


async def said(client: Client, namespace: str, name: str, event_type: str, reason: str, message: str) -> bool:
    return any(
        (e.get("type"), e.get("reason"), e.get("message")) == (event_type, reason, message)
        for e in await events(client, namespace, name)
    )


async def test_smc_is_rendered_healed_renamed_and_deleted(
    reconciler: MultusConfigReconciler, client: Client, namespace: str
) -> None:
    smc = await client.create(MULTUSCONFIG, smc_body(namespace, "net1", MACVLAN, {"team.example/owner": "a"}))
    await eventually(lambda: rendered(client, smc), within=WITHIN, what="the NAD of a new SMC")
    first = await client.get(NAD, "net1", namespace)
    assert first["metadata"]["ownerReferences"][0]["uid"] == smc["metadata"]["uid"]
    assert first["metadata"]["annotations"] == {"team.example/owner": "a"}
    config = json.loads(first["spec"]["config"])
    assert config["plugins"][0]["ipam"] == {"type": "spiderpool", "default_ipv4_ippool": ["pool-a"]}

    # deleted by hand: made again
    await client.delete(NAD, "net1", namespace)

    async def recreated() -> bool:
        live = await get_nad(client, namespace, "net1")
        return live is not None and live["metadata"]["uid"] != first["metadata"]["uid"] and await rendered(client, smc)

    await eventually(recreated, within=WITHIN, what="the deleted NAD to be re-created")

    # edited by hand: written back
    live = await client.get(NAD, "net1", namespace)
    live["spec"]["config"] = '{"cniVersion":"0.3.1","name":"net1","type":"bridge"}'
    live["metadata"]["annotations"] = {"team.example/owner": "b", "extra": "x"}
    edited = await client.replace(NAD, live)

    async def reverted() -> bool:
        now = await get_nad(client, namespace, "net1")
        moved = now is not None and now["metadata"]["resourceVersion"] != edited["metadata"]["resourceVersion"]
        return moved and await rendered(client, smc)

    await eventually(reverted, within=WITHIN, what="the edited NAD to be written back")

    # cr-name changed: the old NAD goes, the new one comes
    smc = await client.patch(
        MULTUSCONFIG, "net1", {"metadata": {"annotations": {nad.CR_NAME: "net1-renamed"}}}, namespace
    )
    await eventually(lambda: rendered(client, smc), within=WITHIN, what="the NAD of the new cr-name")
    await eventually(
        lambda: gone(client, NAD, "net1", namespace), within=WITHIN, what="the NAD of the old cr-name to go"
    )

    # the SMC deleted: its NAD goes
    await client.delete(MULTUSCONFIG, "net1", namespace)
    await eventually(
        lambda: gone(client, NAD, "net1-renamed", namespace), within=WITHIN, what="the NAD of a deleted SMC to go"
    )


async def test_a_bare_nad_of_that_name_is_taken_over(
    reconciler: MultusConfigReconciler, client: Client, namespace: str
) -> None:
    bare = {
        "apiVersion": "k8s.cni.cncf.io/v1",
        "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": "net2", "namespace": namespace, "labels": {"old": "label"}},
        "spec": {"config": '{"cniVersion":"0.3.1","name":"net2","type":"macvlan","master":"eth9"}'},
    }
    await client.create(NAD, bare)
    smc = await client.create(MULTUSCONFIG, smc_body(namespace, "net2", MACVLAN))
    await eventually(lambda: rendered(client, smc), within=WITHIN, what="the bare NAD to be taken over")
    assert "labels" not in (await client.get(NAD, "net2", namespace))["metadata"]
    message = (
        f"took over the net-attach-def {namespace}/net2, which no object controlled; it now follows this"
        " SpiderMultusConfig"
    )
    await eventually(
        lambda: said(client, namespace, "net2", "Normal", "TakenOver", message), within=WITHIN, what="a TakenOver event"
    )


async def test_a_nad_controlled_by_someone_else_is_left_alone_with_a_warning(
    reconciler: MultusConfigReconciler, client: Client, namespace: str
) -> None:
    first = await client.create(MULTUSCONFIG, smc_body(namespace, "net3", MACVLAN))
    await eventually(lambda: rendered(client, first), within=WITHIN, what="the first SMC's NAD")
    ipvlan = {"cniType": "ipvlan", "ipvlan": {"master": ["eth1"]}}
    second = await client.create(MULTUSCONFIG, smc_body(namespace, "net3-b", ipvlan, {nad.CR_NAME: "net3"}))
    message = (
        f"the net-attach-def {namespace}/net3 already exists and is managed by SpiderMultusConfig {namespace}/net3"
    )
    await eventually(
        lambda: said(client, namespace, "net3-b", "Warning", "NADConflict", message),
        within=WITHIN,
        what="the conflict's Warning event",
    )
    assert await rendered(client, first), "the NAD of the first SMC was touched"

    # the first SMC goes: the name is free, and the second one's NAD takes it
    await client.delete(MULTUSCONFIG, "net3", namespace)
    await eventually(lambda: rendered(client, second), within=WITHIN, what="the second SMC's NAD once the name is free")

    # a NAD some other kind controls
    owner = await client.create(
        CONFIGMAP, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm", "namespace": namespace}}
    )
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "cm", "uid": owner["metadata"]["uid"], "controller": True}
    theirs = {
        "apiVersion": "k8s.cni.cncf.io/v1",
        "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": "net4", "namespace": namespace, "ownerReferences": [ref]},
        "spec": {"config": "{}"},
    }
    await client.create(NAD, theirs)
    await client.create(MULTUSCONFIG, smc_body(namespace, "net4", MACVLAN))
    message = f"the net-attach-def {namespace}/net4 already exists and is managed by ConfigMap {namespace}/cm"
    await eventually(
        lambda: said(client, namespace, "net4", "Warning", "NADConflict", message),
        within=WITHIN,
        what="the Warning event naming the ConfigMap",
    )
    assert (await client.get(NAD, "net4", namespace))["spec"] == {"config": "{}"}


SCHEMA_CASES = [
    ("vlan -1", {"cniType": "macvlan", "macvlan": {"master": ["eth0"], "vlanID": -1}},
     "spec.macvlan.vlanID in body should be greater than or equal to 0"),
    ("vlan 4095", {"cniType": "macvlan", "macvlan": {"master": ["eth0"], "vlanID": 4095}},
     "spec.macvlan.vlanID in body should be less than or equal to 4094"),
    ("ipvlan under macvlan", {"cniType": "macvlan", "macvlan": {"master": ["eth0"]}, "ipvlan": {"master": ["eth0"]}},
     "SpiderMultusConfig: spec.ipvlan is set but spec.cniType is not 'ipvlan'; set one matching sub-config"),
    ("multicast MAC prefix", {**MACVLAN, "coordinator": {"podMACPrefix": "0b:11"}},
     "spec.coordinator.podMACPrefix is a multicast prefix (its first byte is odd); use an even first byte, e.g. 0a:1b"),
    ("rp_filter 4", {**MACVLAN, "coordinator": {"podRPFilter": 4}},
     "spec.coordinator.podRPFilter in body should be less than or equal to 2"),
    ("mtu -1", {"cniType": "macvlan", "macvlan": {"master": ["eth0"], "mtu": -1}},
     "spec.macvlan.mtu in body should be greater than or equal to 0"),
    ("macvlan missing", {"cniType": "macvlan"},
     "SpiderMultusConfig: spec.macvlan is required when spec.cniType is 'macvlan'; give its master interface(s)"),
    ("two masters without bond", {"cniType": "macvlan", "macvlan": {"master": ["eth0", "eth1"]}},
     "with two or more master interfaces, bond is required: name the bond and its mode"),
    ("bond mode 7", {"cniType": "macvlan", "macvlan": {"master": ["eth0", "eth1"], "bond": {"name": "b0", "mode": 7}}},
     "spec.macvlan.bond.mode in body should be less than or equal to 6"),
    ("unknown cniType", {"cniType": "bridge"}, 'spec.cniType: Unsupported value: "bridge"'),
    ("master over 15", {"cniType": "macvlan", "macvlan": {"master": ["enp0s31f6abcdefgh"]}},
     "spec.macvlan.master[0]: Too long"),
    ("master with a slash", {"cniType": "macvlan", "macvlan": {"master": ["eth0/1"]}},
     "eth0/1 is not an interface name"),
    ("kernel table", {**MACVLAN, "coordinator": {"hostRuleTable": 254}},
     "must not be a kernel table (253 default, 254 main, 255 local)"),
    ("pool name", {"cniType": "macvlan", "macvlan": {"master": ["eth0"], "ippools": {"ipv4": ["Pool_A"]}}},
     "spec.macvlan.ippools.ipv4[0]: Invalid value: \"Pool_A\": Pool_A is not a SpiderIPPool name"),
    ("sriov without resourceName", {"cniType": "sriov", "sriov": {"vlanID": 3}},
     "spec.sriov.resourceName: Required value"),
    ("sriov block missing", {"cniType": "sriov"},
     "spec.sriov is required when spec.cniType is 'sriov'; give the SR-IOV resourceName"),
    ("disableIPAM with ippools", {**MACVLAN, "disableIPAM": True},
     "SpiderMultusConfig: spec.macvlan.ippools is set but spec.disableIPAM is true, so no IPAM would use them"),
    ("custom without customCNI", {}, "spec.customCNI is required when spec.cniType is 'custom'"),
    ("vlan without vlanID", {"cniType": "vlan", "vlan": {"master": ["eth0"]}}, "vlanID is required with cniType vlan"),
    ("min over max rate", {"cniType": "sriov", "sriov": {"resourceName": "r", "minTxRateMbps": 9, "maxTxRateMbps": 5}},
     "minTxRateMbps must not exceed maxTxRateMbps"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "spec", "message"), SCHEMA_CASES, ids=[c[0] for c in SCHEMA_CASES])
async def test_the_schema_refuses_bad_smcs_naming_the_field(
    client: Client, namespace: str, case: str, spec: dict[str, Any], message: str
) -> None:
    with pytest.raises(ApiError) as refused:
        await client.create(MULTUSCONFIG, smc_body(namespace, "bad", spec))
    assert refused.value.code == 422, refused.value
    assert message in refused.value.message, refused.value.message
