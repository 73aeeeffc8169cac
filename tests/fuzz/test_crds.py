"""Every CRD's objects, generated from its own schema (the right shape most of the time, a wrong
value somewhere), sent to the lab's apiserver as server-side dry runs: the schema and the installed
controllers' webhooks judge them, nothing is stored. An object is admitted or refused with a
message naming its field; the apiserver never answers 500; the webhooks judged every object (their
own counter) and failed on none (no ``admission_errors``, no traceback, no restart)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from spiderpool.api import crds
from spiderpool.api.v2beta1 import API_VERSION, GROUP
from spiderpool.controller import webhook
from tests.fuzz import strategies as fz
from tests.fuzz.conftest import LAB, NS, FuzzAgent, count
from tests.stack import Controllers

_IP_FIELDS = {"subnet", "ips", "excludeIPs", "gateway", "dst", "gw", "hijackCIDR", "serviceCIDR", "overlayPodCIDR"}


def _from_schema(schema: dict[str, Any], name: str = "", depth: int = 0) -> st.SearchStrategy[Any]:
    """Values the schema describes, each now and then replaced by any JSON at all."""
    if "enum" in schema:
        good: st.SearchStrategy[Any] = st.sampled_from(schema["enum"])
    elif schema.get("type") == "object" and "properties" in schema and depth < 4:
        props = schema["properties"]
        good = st.fixed_dictionaries(
            {}, optional={k: _from_schema(v, k, depth + 1) for k, v in props.items()} | {"unknownField": fz.JSON}
        )
    elif schema.get("type") == "array":
        good = st.lists(_from_schema(schema.get("items") or {}, name, depth + 1), max_size=3)
    elif schema.get("type") == "string":
        good = fz.IP_LIKE if name in _IP_FIELDS else fz.NAME
    elif schema.get("type") == "integer":
        good = st.integers(-5, 5000) | st.sampled_from([0, 4, 6, 4094, 4095, 2**31, 2**63 - 1])
    elif schema.get("type") == "boolean":
        good = st.booleans()
    else:
        good = fz.JSON
    return fz.maybe_wrong(good)


def _kinds() -> tuple[dict[str, tuple[str, dict[str, Any]]], set[str]]:
    out, namespaced = {}, set()
    for text in crds.render_all().values():
        crd = yaml.safe_load(text)
        kind = crd["spec"]["names"]["kind"]
        out[kind] = (crd["spec"]["names"]["plural"], crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
        if crd["spec"]["scope"] == "Namespaced":
            namespaced.add(kind)
    return out, namespaced


KINDS, NAMESPACED = _kinds()


_ANNOTATIONS = st.dictionaries(
    st.sampled_from(["multus.spidernet.io/cr-name", "multus.spidernet.io/cni-version"]), fz.TEXT
)


def _object(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    _, schema = KINDS[kind]
    spec = schema["properties"].get("spec")
    return st.fixed_dictionaries(
        {
            "apiVersion": st.just(API_VERSION),
            "kind": st.just(kind),
            "metadata": st.fixed_dictionaries(
                {"name": st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20) | fz.NAME},
                optional={"annotations": _ANNOTATIONS},
            ),
        },
        optional={"spec": _from_schema(spec, "spec")} if spec else {},
    )


def _metric(controllers: Controllers, name: str) -> float:
    total = 0.0
    for pod in controllers.names():
        for line in controllers.scrape(pod).splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                total += float(line.rsplit(" ", 1)[1])
    return total


def _restarts(controllers: Controllers) -> dict[str, int]:
    return {p["metadata"]["name"]: p["status"]["containerStatuses"][0]["restartCount"] for p in controllers.pods()}


@pytest.fixture(scope="module")
def judged(controllers: Controllers) -> Iterator[dict[str, int]]:
    """Outcome counts; afterwards the webhooks must have judged every object that reached them."""
    before = _metric(controllers, "spiderpool_controller_admission_requests_total")
    restarts = _restarts(controllers)
    seen: dict[str, int] = {}
    yield seen
    reached = seen.get("judged", 0)
    judged_now = _metric(controllers, "spiderpool_controller_admission_requests_total") - before
    assert judged_now >= reached, f"the webhooks judged {judged_now} objects, {reached} reached admission"
    assert _metric(controllers, "spiderpool_controller_admission_errors_total") == 0
    assert _restarts(controllers) == restarts
    logs = controllers.lab.kubectl(
        "logs", "-n", "kube-system", "-l", "app.kubernetes.io/name=spiderpool-controller", "--tail=-1", check=False
    )
    assert "admission failed" not in logs.stdout, logs.stdout[-3000:]
    print(f"CRD objects: outcomes by status {json.dumps(seen, sort_keys=True)}")


@settings(LAB, max_examples=300)
@given(st.sampled_from(sorted(KINDS)).flatmap(_object))
def test_every_crd_object_is_admitted_or_refused_naming_its_field(
    fuzz_agent: FuzzAgent, judged: dict[str, int], obj: dict[str, Any]
) -> None:
    count("CRD objects (apiserver + webhooks, dry run)")
    plural, _ = KINDS[obj["kind"]]
    where = f"/namespaces/{NS}" if obj["kind"] in NAMESPACED else ""
    code, answer = fuzz_agent.lab.api("POST", f"/apis/{GROUP}/v2beta1{where}/{plural}?dryRun=All", obj)
    judged[str(code)] = judged.get(str(code), 0) + 1
    if code in (201, 422) and obj["kind"] in webhook.KINDS:  # (records and endpoints have no webhook)
        judged["judged"] = judged.get("judged", 0) + 1
    assert code in (201, 400, 409, 422), (code, answer)
    if code == 201:
        return
    message = str((answer or {}).get("message", ""))
    assert "failed to check" not in message, message
    assert "failed calling webhook" not in message, message
    assert any(w in message for w in ("spec", "metadata", "name", "annotations")), message
