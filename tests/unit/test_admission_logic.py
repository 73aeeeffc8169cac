"""The admission rules as pure functions, and the CRD manifests staying generated."""

from __future__ import annotations

import json
from pathlib import Path

from spiderpool.api import crds
from spiderpool.controller import admission
from spiderpool.controller.admission import Settings, Snapshot
from spiderpool.controller.webhook import configurations, json_patch

ROOT = Path(__file__).resolve().parents[2]


def _pool(name: str, subnet: str, **spec: object) -> dict[str, object]:
    return {"kind": "SpiderIPPool", "metadata": {"name": name}, "spec": {"subnet": subnet, **spec}}


def test_committed_crd_manifests_are_the_generated_ones() -> None:
    chart = ROOT / "charts" / "spiderpool" / "crds"
    rendered = crds.render_all()
    assert sorted(p.name for p in chart.glob("*.yaml")) == sorted(rendered)
    for name, text in rendered.items():
        assert (chart / name).read_text() == text, f"{name} drifted: run python -m spiderpool.api.crds"


def test_mutation_normalises_and_links_to_subnet() -> None:
    sub = {
        "metadata": {"name": "s", "uid": "u1"},
        "spec": {"subnet": "10.0.0.0/16", "gateway": "10.0.0.1", "routes": [{"dst": "10.9.0.0/16", "gw": "10.0.0.2"}]},
    }
    out = admission.mutate(
        "SpiderIPPool", _pool("p", "10.0.0.0/16", ips=["10.0.0.9", "10.0.0.2-10.0.0.8"]), Snapshot(subnets={"s": sub})
    )
    assert out["spec"]["ips"] == ["10.0.0.2-10.0.0.9"]
    assert out["spec"]["ipVersion"] == 4
    assert out["spec"]["gateway"] == "10.0.0.1"
    assert out["spec"]["routes"] == [{"dst": "10.9.0.0/16", "gw": "10.0.0.2"}]
    assert out["metadata"]["labels"]["ipam.spidernet.io/owner-spider-subnet"] == "s"
    assert out["metadata"]["ownerReferences"][0]["uid"] == "u1"
    assert out["metadata"]["finalizers"] == ["spiderpool.spidernet.io"]


def test_mutation_leaves_malformed_fields_for_the_schema_to_report() -> None:
    obj = _pool("p", "10.0.0.0/33", ips=["nonsense"])
    assert admission.mutate("SpiderIPPool", obj, Snapshot())["spec"] == obj["spec"]


def test_validation_of_disabled_family_and_terminating_objects() -> None:
    errors = admission.validate(
        "SpiderIPPool", "CREATE", _pool("p", "fd00::/64"), None, Snapshot(), Settings(enable_ipv6=False)
    )
    assert errors == ["spec.ipVersion: IPv6 is disabled in this cluster (enableIPv6=false); use IPv4 or enable IPv6"]
    deleting = _pool("p", "10.0.0.0/16", ips=["10.0.0.9-10.0.0.1"])
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"  # type: ignore[index]
    assert admission.validate("SpiderIPPool", "UPDATE", deleting, None, Snapshot(), Settings()) == []


def test_overlap_ignores_other_families_and_terminating_pools() -> None:
    gone = _pool("old", "10.0.0.0/16", ips=["10.0.0.1-10.0.0.9"])
    gone["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"  # type: ignore[index]
    snap = Snapshot(pools={"old": gone, "v6": _pool("v6", "fd00::/64", ips=["fd00::1"])})
    assert (
        admission.validate(
            "SpiderIPPool", "CREATE", _pool("p", "10.0.0.0/16", ips=["10.0.0.5"]), None, snap, Settings()
        )
        == []
    )


def test_json_patch_and_webhook_configurations() -> None:
    before = {"metadata": {"name": "p"}, "spec": {"subnet": "10.0.0.0/16"}}
    after = {"metadata": {"name": "p", "finalizers": ["f"]}, "spec": {"subnet": "10.0.0.0/16", "ipVersion": 4}}
    assert json_patch(before, after) == [
        {"op": "add", "path": "/metadata/finalizers", "value": ["f"]},
        {"op": "add", "path": "/spec", "value": after["spec"]},
    ]
    mutating, validating = configurations(b"CA", url_base="https://127.0.0.1:5722")
    hooks = validating["webhooks"]
    assert {h["failurePolicy"] for h in hooks} == {"Ignore"}
    assert all(h["rules"][0]["apiGroups"] == ["spiderpool.spidernet.io"] for h in hooks)
    assert "pods" not in json.dumps(mutating)
    assert "pods" not in json.dumps(validating)
    assert hooks[0]["clientConfig"]["url"].startswith(
        "https://127.0.0.1:5722/validate-spiderpool-spidernet-io-v2beta1-"
    )
