"""The chart's init Job and the default SpiderCoordinator, against a real apiserver on loopback:
created from the chart's values; on an upgrade a value the chart changed reaches it, a field an
admin edited stays as they left it."""

from __future__ import annotations

import contextlib
import json

from spiderpool.controller import init
from spiderpool.k8s.client import ApiError, Client
from spiderpool.k8s.kinds import COORDINATOR

CHART = {"mode": "auto", "tunePodRoutes": True, "podCIDRType": "auto", "hijackCIDR": [], "txQueueLen": 0}


async def _spec(client: Client) -> dict[str, object]:
    return dict((await client.get(COORDINATOR, "default"))["spec"])


async def test_an_upgrade_keeps_what_the_admin_edited_and_carries_what_the_chart_changed(client: Client) -> None:
    with contextlib.suppress(ApiError):  # (another test's, if any)
        await client.delete(COORDINATOR, "default")
    try:
        assert await init.ensure_coordinator(client, CHART) == "created"
        assert (await _spec(client)).items() >= CHART.items()  # (the CRD defaults the others)
        assert await init.ensure_coordinator(client, CHART) == "unchanged"
        # the admin edits two fields (kubectl edit)
        await client.patch(COORDINATOR, "default", {"spec": {"tunePodRoutes": False, "hijackCIDR": ["10.233.0.0/18"]}})
        # helm upgrade with the same values: the edits stay
        assert await init.ensure_coordinator(client, CHART) == "unchanged, left as edited (hijackCIDR, tunePodRoutes)"
        spec = await _spec(client)
        assert (spec["tunePodRoutes"], spec["hijackCIDR"]) == (False, ["10.233.0.0/18"])
        # helm upgrade changing an untouched value and an edited one: the first follows, the second stays
        upgrade = {**CHART, "txQueueLen": 1000, "tunePodRoutes": True, "hijackCIDR": ["10.96.0.0/12"]}
        outcome = await init.ensure_coordinator(client, upgrade)
        assert outcome == "updated (txQueueLen), left as edited (hijackCIDR, tunePodRoutes)"
        spec = await _spec(client)
        assert (spec["txQueueLen"], spec["tunePodRoutes"], spec["hijackCIDR"]) == (1000, False, ["10.233.0.0/18"])
        # the admin sets a field back to the chart's value: the chart owns it again
        await client.patch(COORDINATOR, "default", {"spec": {"tunePodRoutes": True}})
        await init.ensure_coordinator(client, upgrade)
        assert await init.ensure_coordinator(client, {**upgrade, "tunePodRoutes": False}) == (
            "updated (tunePodRoutes), left as edited (hijackCIDR)"
        )
        assert (await _spec(client))["tunePodRoutes"] is False
        # an object the chart did not make (no record): nothing of it is overwritten
        obj = await client.get(COORDINATOR, "default")
        obj["metadata"]["annotations"] = {}
        obj["spec"]["mode"] = "underlay"
        await client.replace(COORDINATOR, obj)
        outcome = await init.ensure_coordinator(client, CHART)
        assert outcome == "unchanged, left as edited (hijackCIDR, mode, tunePodRoutes, txQueueLen)"
        assert (await _spec(client))["mode"] == "underlay"
        record = json.loads((await client.get(COORDINATOR, "default"))["metadata"]["annotations"][init.CHART_APPLIED])
        assert "mode" not in record
        assert record["podCIDRType"] == "auto"
    finally:
        await client.delete(COORDINATOR, "default")
