"""Decisions that involve time do not depend on any node's clock: the Lease of a node whose clock is
off is judged by when it changes, and the API client learns the apiserver's clock."""

from __future__ import annotations

import email.utils
import time

from spiderpool.ipam import gc
from spiderpool.k8s.client import Client
from spiderpool.k8s.config import Credentials


def _lease(renew: str) -> dict[str, object]:
    return {"spec": {"renewTime": renew, "holderIdentity": "node2"}}


def test_a_lease_renewed_by_a_clock_five_minutes_behind_is_not_lost() -> None:
    ages = gc.LeaseAges()
    # the kubelet's clock is 5 minutes behind ours: its renewTime always looks 300 s old
    ages.saw("node2", _lease("2026-12-02T10:00:00.000000Z"), now=1000.0)
    ages.saw("node2", _lease("2026-12-02T10:00:10.000000Z"), now=1010.0)
    assert ages.age("node2", now=1012.0) == 2.0
    settings = gc.Settings(stale_lease=15)
    assert gc.node_health({"metadata": {"name": "node2"}}, ages.age("node2", 1012.0)).lease_age == 2.0
    # ... and a Lease that stops changing is lost after stale_lease, whatever time it names
    assert ages.age("node2", now=1010.0 + settings.stale_lease + 1) == settings.stale_lease + 1


def test_an_unchanged_lease_event_does_not_renew_and_a_deleted_one_is_forgotten() -> None:
    ages = gc.LeaseAges()
    ages.saw("node1", _lease("t1"), now=5.0)
    ages.saw("node1", _lease("t1"), now=50.0)  # a resync of the same Lease: not a renewal
    assert ages.age("node1", now=60.0) == 55.0
    ages.saw("node1", None, now=61.0)
    assert ages.age("node1", now=62.0) is None
    assert gc.node_health({"metadata": {"name": "node1"}}, None).lease_age is None


def test_the_client_learns_the_apiservers_clock_from_date_headers() -> None:
    client = Client(Credentials(server="https://127.0.0.1:1", ssl=None), field_manager="test")
    assert abs(client.server_time() - time.time()) < 1
    ahead = email.utils.formatdate(time.time() + 300, usegmt=True)
    client._learn_clock(ahead)
    assert 299 <= client.clock_offset <= 301.5
    assert 299 <= client.server_time() - time.time() <= 301.5
    client._learn_clock("not a date")  # ignored
    assert 299 <= client.clock_offset <= 301.5
