"""The SpiderCoordinator status reconciler against a real apiserver on loopback: the CIDRs follow
kubeadm-config, the ServiceCIDR objects and kube-controller-manager's flags as they come and go,
and an API that appears later (Calico's) is found on a resync.

What envtest shows about ServiceCIDRs: the apiserver itself makes the default ServiceCIDR
``kubernetes`` from its ``--service-cluster-ip-range`` (10.0.0.0/24 here), so it overrides
kubeadm-config's serviceSubnet from the start; and no finalizer is put on a new ServiceCIDR here
(kube-controller-manager's ServiceCIDR controller adds ``networking.k8s.io/service-cidr-finalizer``
in a real cluster), so a deletion is immediate. A ServiceCIDR held by a finalizer of our own shows
that one with a deletionTimestamp is already left out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from spiderpool.controller import coordinator
from spiderpool.controller.coordinator import CoordinatorReconciler
from spiderpool.k8s.client import ApiError, Client
from spiderpool.k8s.kinds import CALICO_IPPOOL, CONFIGMAP, COORDINATOR, POD, SERVICECIDR, Kind
from spiderpool_lab.envtest import ApiServer
from tests.inproc.conftest import eventually, gone, unique

CRD = Kind("apiextensions.k8s.io", "v1", "customresourcedefinitions", False, "CustomResourceDefinition")
FLANNEL = '{"name": "cbr0", "cniVersion": "0.3.1", "plugins": [{"type": "flannel"}, {"type": "portmap"}]}'
KUBEADM = """\
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
networking:
  dnsDomain: cluster.local
  podSubnet: 10.244.0.0/16,fd00:10:244::/56
  serviceSubnet: 10.96.0.0/12
"""
#: what the loopback apiserver's own ServiceCIDR ``kubernetes`` holds
DEFAULT_SERVICE = ["10.0.0.0/24"]
WITHIN = 60.0


async def status(client: Client) -> dict[str, Any]:
    return dict((await client.get(COORDINATOR, "default")).get("status") or {})


def has(client: Client, **want: Any) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        got = await status(client)
        return all(got.get(k) == v for k, v in want.items())

    return check


async def delete(client: Client, kind: Kind, name: str, namespace: str | None = None) -> None:
    try:
        await client.delete(kind, name, namespace)
    except ApiError as exc:
        if exc.code != 404:
            raise


class Running:
    """The reconciler (1 s resync, a CNI directory holding flannel's configuration) against the
    SpiderCoordinator ``default``; discovery calls the APIs in ``hidden`` not served."""

    def __init__(self, client: Client, conf_dir: Path) -> None:
        self.client = client
        self.hidden: set[Kind] = set()
        self.reconciler = CoordinatorReconciler(client, cni_conf_dir=conf_dir, resync=1.0, batch_seconds=0.05)
        self.task: asyncio.Task[None] | None = None

    async def served(self, real: Callable[[Client, Kind], Awaitable[bool]], kind: Kind) -> bool:
        return kind not in self.hidden and await real(self.client, kind)

    async def start(self) -> None:
        body = {"apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderCoordinator"}
        await self.client.create(COORDINATOR, {**body, "metadata": {"name": "default"}, "spec": {}})
        self.task = asyncio.create_task(self.reconciler.run())


@pytest.fixture
async def running(
    apiserver: ApiServer, client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Running]:
    conf_dir = tmp_path / "net.d"
    conf_dir.mkdir()
    (conf_dir / "10-flannel.conflist").write_text(FLANNEL)
    run = Running(client, conf_dir)
    real = coordinator.served
    monkeypatch.setattr(coordinator, "served", lambda _c, kind: run.served(real, kind))
    try:
        yield run
        assert run.task is not None
        assert not run.task.done(), run.task
    finally:
        if run.task is not None:
            run.task.cancel()
            await asyncio.gather(run.task, return_exceptions=True)
        await delete(client, COORDINATOR, "default")
        await eventually(lambda: gone(client, COORDINATOR, "default"), within=WITHIN, what="the coordinator gone")


async def test_status_follows_kubeadm_config_service_cidrs_and_kcm(client: Client, running: Running) -> None:
    running.hidden.add(SERVICECIDR)  # at first as on a cluster before ServiceCIDRs: kubeadm-config says it all
    await running.start()
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "kubeadm-config", "namespace": "kube-system"},
        "data": {"ClusterConfiguration": KUBEADM},
    }
    extra, held, kcm = unique("extra"), unique("held"), unique("kube-controller-manager")
    await client.create(CONFIGMAP, cm)
    try:
        pods = ["10.244.0.0/16", "fd00:10:244::/56"]
        await eventually(
            has(client, phase="Synced", serviceCIDR=["10.96.0.0/12"], overlayPodCIDR=pods),
            within=WITHIN,
            what="Synced from kubeadm-config (podCIDRType auto: flannel, so cluster)",
        )
        assert "reason" not in await status(client)

        # the ServiceCIDR API found on a resync: its objects override kubeadm-config's serviceSubnet
        running.hidden.clear()
        await eventually(
            has(client, phase="Synced", serviceCIDR=DEFAULT_SERVICE, overlayPodCIDR=pods),
            within=WITHIN,
            what="the default ServiceCIDR to override kubeadm-config",
        )

        scidr = {"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR", "metadata": {"name": extra}}
        await client.create(SERVICECIDR, {**scidr, "spec": {"cidrs": ["fd00:1::/112", "10.1.0.0/24"]}})
        await eventually(
            has(client, serviceCIDR=["10.0.0.0/24", "10.1.0.0/24", "fd00:1::/112"]),
            within=WITHIN,
            what="a new ServiceCIDR in the status",
        )
        await client.delete(SERVICECIDR, extra)
        await eventually(has(client, serviceCIDR=DEFAULT_SERVICE), within=WITHIN, what="a deleted ServiceCIDR gone")

        # one whose deletion waits on a finalizer (as kube-controller-manager's holds them)
        meta = {"name": held, "finalizers": ["spiderpool.test/hold"]}
        await client.create(SERVICECIDR, {**scidr, "metadata": meta, "spec": {"cidrs": ["10.2.0.0/24"]}})
        await eventually(
            has(client, serviceCIDR=["10.0.0.0/24", "10.2.0.0/24"]), within=WITHIN, what="the held ServiceCIDR"
        )
        await client.delete(SERVICECIDR, held)
        deleting = await client.get(SERVICECIDR, held)
        assert deleting["metadata"].get("deletionTimestamp"), deleting
        await eventually(
            has(client, serviceCIDR=DEFAULT_SERVICE), within=WITHIN, what="a deleting ServiceCIDR left out"
        )
        await client.patch(SERVICECIDR, held, {"metadata": {"finalizers": None}})
        await eventually(lambda: gone(client, SERVICECIDR, held), within=WITHIN, what="the held ServiceCIDR gone")

        # neither kubeadm-config nor a kube-controller-manager pod: the pod CIDR is missing
        await client.delete(CONFIGMAP, "kubeadm-config", "kube-system")
        await eventually(
            has(client, phase="NotReady", serviceCIDR=DEFAULT_SERVICE, overlayPodCIDR=[]),
            within=WITHIN,
            what="NotReady without a pod CIDR",
        )
        assert (await status(client))["reason"] == (
            "no pod CIDR found: neither the kube-system/kubeadm-config ConfigMap nor a kube-system pod labelled"
            " component=kube-controller-manager exists; set networking.podSubnet in the ClusterConfiguration of"
            " the kube-system/kubeadm-config ConfigMap (as kubeadm writes it), or set the SpiderCoordinator's"
            " spec.podCIDRType (now cluster, chosen by auto from 10-flannel.conflist: plugin flannel) to calico,"
            " cilium or none to match the cluster's CNI"
        )

        # kubeadm's static pod (its mirror; no kubelet runs it here: it stays Pending)
        command = ["kube-controller-manager", "--allocate-node-cidrs=true"]
        args = ["--cluster-cidr", "10.32.0.0/16", "--service-cluster-ip-range=10.33.0.0/24"]
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": kcm, "namespace": "kube-system", "labels": {"component": "kube-controller-manager"}},
            "spec": {
                "nodeName": "node1",
                "containers": [{"name": "kube-controller-manager", "image": "kcm", "command": command, "args": args}],
            },
        }
        await client.create(POD, pod)
        await eventually(
            has(client, phase="Synced", serviceCIDR=DEFAULT_SERVICE, overlayPodCIDR=["10.32.0.0/16"]),
            within=WITHIN,
            what="Synced from kube-controller-manager's flags",
        )
        assert "reason" not in await status(client)
    finally:
        await delete(client, CONFIGMAP, "kubeadm-config", "kube-system")
        await delete(client, POD, kcm, "kube-system")
        for name in (extra, held):
            try:
                await client.patch(SERVICECIDR, name, {"metadata": {"finalizers": None}})
            except ApiError as exc:
                if exc.code != 404:
                    raise
            await delete(client, SERVICECIDR, name)


def calico_crd() -> dict[str, Any]:
    schema = {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "ippools.crd.projectcalico.org"},
        "spec": {
            "group": "crd.projectcalico.org",
            "scope": "Cluster",
            "names": {"kind": "IPPool", "plural": "ippools", "singular": "ippool", "listKind": "IPPoolList"},
            "versions": [{"name": "v1", "served": True, "storage": True, "schema": schema}],
        },
    }


async def test_calico_pools_are_found_once_their_api_is_served(client: Client, running: Running) -> None:
    await running.start()
    await client.patch(COORDINATOR, "default", {"spec": {"podCIDRType": "calico"}})
    await eventually(has(client, phase="NotReady"), within=WITHIN, what="NotReady without Calico")
    assert (await status(client))["reason"].startswith(
        "no Calico IPPool found: the crd.projectcalico.org/v1 ippools API is not served; install Calico"
    )
    await client.create(CRD, calico_crd())
    pool = {"apiVersion": "crd.projectcalico.org/v1", "kind": "IPPool"}
    try:
        # (the CRD may take a moment to be served: the first creates can be refused)
        async def created(name: str, cidr: str, **spec: Any) -> bool:
            try:
                await client.create(CALICO_IPPOOL, {**pool, "metadata": {"name": name}, "spec": {"cidr": cidr, **spec}})
            except ApiError as exc:
                if exc.code == 404:
                    return False
                raise
            return True

        await eventually(lambda: created("off", "10.8.0.0/16", disabled=True), within=WITHIN, what="the IPPool API")

        async def no_enabled_pool() -> bool:
            return "no enabled crd.projectcalico.org/v1 IPPool exists" in str((await status(client)).get("reason"))

        await eventually(
            no_enabled_pool,
            within=WITHIN,
            what="the IPPool API discovered on a resync (with no enabled pool)",
        )
        assert await created("v4", "10.233.64.0/18")
        assert await created("v6", "fd85:ee78::/64")
        await eventually(
            has(
                client, phase="Synced", serviceCIDR=DEFAULT_SERVICE, overlayPodCIDR=["10.233.64.0/18", "fd85:ee78::/64"]
            ),
            within=WITHIN,
            what="Synced from the Calico IPPools",
        )
    finally:
        await delete(client, CRD, "ippools.crd.projectcalico.org")
    await eventually(has(client, phase="NotReady"), within=WITHIN, what="NotReady again once Calico's API is gone")
