"""Shared fixtures: one real lab (kube-apiserver, etcd, controllers, namespace nodes) per session."""

from __future__ import annotations

import os
from collections.abc import Iterator

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
