"""Shared fixtures: one real lab (kube-apiserver, etcd, controllers, namespace nodes) per session."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from spiderpool.lab import procs
from spiderpool.lab.cluster import Lab

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
