"""Shared fixtures: one real lab (kube-apiserver, etcd, controllers, namespace nodes) per session."""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator

import pytest

from spiderpool.api import crds
from spiderpool_lab import procs
from spiderpool_lab.cluster import Lab
from tests import stack
from tests.stack import Agents, Controllers

LAB_NODES = 2


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    """The lab, up with two nodes. Left running if it was running before, or if SPIDERPOOL_LAB_KEEP=1."""
    if os.geteuid() != 0:
        pytest.fail("the lab tests need root (network namespaces)")
    instance = Lab()
    was_up = any(procs.alive(pid) for pid in instance.state().get("procs", {}).values())
    try:
        instance.up(nodes=LAB_NODES)
    except Exception as exc:  # fail, never skip: the message carries the component's log tail
        pytest.fail(f"the lab did not come up: {exc}", pytrace=False)
    yield instance
    if not was_up and os.environ.get("SPIDERPOOL_LAB_KEEP") != "1":
        instance.down()


@pytest.fixture(scope="session")
def crds_installed(lab: Lab) -> Lab:
    for text in crds.render_all().values():
        lab.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input_text=text)
    for crd in crds.CRDS:
        lab.kubectl("wait", "--for=condition=Established", f"crd/{crd.name}", "--timeout=60s")
    return lab


@pytest.fixture(scope="session")
def controllers(crds_installed: Lab) -> Controllers:
    """spiderpool installed by its Helm chart: the controller Deployment (2 replicas) and the agent
    DaemonSet, from the project's image."""
    stack.install(crds_installed)
    ctl = Controllers(crds_installed)
    ctl.wait_all()
    procs.wait_for(lambda: ctl.leader() in ctl.names(), timeout=60, what="a controller replica to lead")
    return ctl


@pytest.fixture(scope="session")
def agents(controllers: Controllers) -> Agents:
    """An agent per node (the DaemonSet), with the controller running (it keeps pool status true)."""
    ag = Agents(controllers.lab)
    ag.wait_all()
    return ag


#: what a lab test creates that is cluster-wide: left behind by a failed test, a pool or subnet on
#: the lab's LAN refuses every later test's pool there (one failure became thirty in CI)
LEFTOVER_LISTS = {
    "namespace": "/api/v1/namespaces",
    "spidersubnet": "/apis/spiderpool.spidernet.io/v2beta1/spidersubnets",
    "spiderippool": "/apis/spiderpool.spidernet.io/v2beta1/spiderippools",
    "spiderreservedip": "/apis/spiderpool.spidernet.io/v2beta1/spiderreservedips",
}
FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    if report.failed:
        item.stash[FAILED] = True
    return report


def _present(lab: Lab) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for kind, path in LEFTOVER_LISTS.items():
        code, listed = lab.api("GET", path)
        out[kind] = {i["metadata"]["name"] for i in listed["items"]} if code == 200 else set()
    return out


@pytest.fixture(autouse=True)
def no_cascade(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a lab test fails, remove the namespaces, subnets, pools and reservations it created and
    left (its own clean-up may not have run), so that its failure is reported alone."""
    if "lab" not in request.fixturenames:
        yield
        return
    lab: Lab = request.getfixturevalue("lab")
    before = _present(lab)
    yield
    if not request.node.stash.get(FAILED, False):
        return
    after = _present(lab)
    for kind in LEFTOVER_LISTS:  # namespaces first: their pods hold the pools' IPs
        left = sorted(after[kind] - before[kind])
        if left:
            print(f"\n[no_cascade] removing what the failed test left: {kind} {' '.join(left)}")
            lab.kubectl("delete", kind, *left, "--wait=true", "--timeout=180s", "--ignore-not-found", check=False)
