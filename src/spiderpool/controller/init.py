"""``spiderpool-init``: the chart's post-install/upgrade Job.

It waits until the controller's webhook Service has a ready endpoint (so the objects it creates
are defaulted and validated), then creates the default SpiderCoordinator from the chart's
``coordinator.*`` values (on an upgrade, a value the chart changed reaches the object unless an
admin edited that field since: their edit stays), and creates the default SpiderSubnet and SpiderIPPool from
``clusterDefaultPool.*`` when asked. An existing subnet or pool is left as it is: after the
install it belongs to the admin. Every step is idempotent, so the Job can run again on each
upgrade and after a crash.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from typing import Any

from spiderpool import logs
from spiderpool.api.v2beta1 import GROUP, VERSION
from spiderpool.k8s.client import ApiError, Client
from spiderpool.k8s.kinds import COORDINATOR, IPPOOL, SUBNET, Kind
from spiderpool.k8s.retry import Backoff, until

log = logging.getLogger("spiderpool.init")
ENDPOINTSLICE = Kind("discovery.k8s.io", "v1", "endpointslices", True)
DEFAULT_COORDINATOR = "default"


def _json_arg(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="spiderpool-init", description=__doc__)
    p.add_argument("--kubeconfig")
    p.add_argument("--namespace", default="kube-system")
    p.add_argument("--webhook-service", default="spiderpool-controller")
    p.add_argument("--wait", type=float, default=300.0, help="seconds to wait for the controller's webhook")
    p.add_argument("--coordinator", type=_json_arg, help="spec of the default SpiderCoordinator")
    p.add_argument("--subnet", type=_json_arg, action="append", default=[], help='{"name": ..., "subnet": ...}')
    p.add_argument("--ippool", type=_json_arg, action="append", default=[], help='{"name": ..., "subnet": ...}')
    p.add_argument("--log-level", default=None)
    return p.parse_args(argv)


def _spec(fields: dict[str, Any]) -> dict[str, Any]:
    """The object's spec: the name removed, empty values left to the webhook's defaults."""
    return {k: v for k, v in fields.items() if k != "name" and v not in ("", None, [])}


async def _webhook_ready(rest: Client, namespace: str, service: str) -> bool:
    path = ENDPOINTSLICE.path(namespace)
    found = await rest.request("GET", path, params={"labelSelector": f"kubernetes.io/service-name={service}"})
    for eps in found.get("items") or []:
        for ep in eps.get("endpoints") or []:
            if (ep.get("conditions") or {}).get("ready"):
                return True
    return False


async def wait_for_webhook(rest: Client, namespace: str, service: str, wait: float) -> None:
    """Until a replica of the controller serves the webhook (bounded by ``wait`` seconds)."""

    async def ready() -> bool | None:
        return True if await _webhook_ready(rest, namespace, service) else None

    deadline = asyncio.get_running_loop().time() + wait
    what = f"the controller webhook service={namespace}/{service} has no ready endpoint yet"
    if await until(ready, what=what, log=log, deadline=deadline, backoff=Backoff(1.0, 10.0), errors=(ApiError,)):
        log.info("controller webhook ready service=%s/%s", namespace, service)
        return
    raise SystemExit(
        f"spiderpool-init: the controller's webhook Service {namespace}/{service} has no ready endpoint"
        f" after {wait:.0f}s; see `kubectl -n {namespace} describe pods"
        " -l app.kubernetes.io/name=spiderpool-controller`"
    )


#: on the default SpiderCoordinator: the spec fields as the chart last set them (JSON)
CHART_APPLIED = "spiderpool.spidernet.io/chart-applied-spec"


def coordinator_patch(have: dict[str, Any], applied: dict[str, Any], wanted: dict[str, Any]) -> dict[str, Any]:
    """The spec fields an upgrade changes (None: remove), as ``kubectl apply`` would: a field
    whose value is still what the chart last set (``applied``) follows the chart's new value; a
    field an admin changed since (``kubectl edit``) is left as the admin left it."""
    return {k: v for k, v in wanted.items() if have.get(k) != v and have.get(k) == applied.get(k)}


def applied_record(have: dict[str, Any], applied: dict[str, Any], wanted: dict[str, Any]) -> dict[str, Any]:
    """What the chart owns after this run: the fields that now hold its value; a field an admin
    owns keeps its old record (so it stays the admin's until they set the chart's value again)."""
    changes = coordinator_patch(have, applied, wanted)
    owned = {k: v for k, v in wanted.items() if have.get(k) == v or k in changes}
    return {**{k: applied[k] for k in wanted if k not in owned and k in applied}, **owned}


async def ensure_coordinator(rest: Client, spec: dict[str, Any]) -> str:
    """Create the default SpiderCoordinator from the chart's values, or carry an upgrade's changed
    values into it without undoing an admin's edits (``coordinator_patch``)."""
    # "" is "not set": left out of a new object, removed (a merge patch's null) from an existing one
    wanted = {k: (None if v == "" else v) for k, v in spec.items()}
    try:
        current = await rest.get(COORDINATOR, DEFAULT_COORDINATOR)
    except ApiError as exc:
        if exc.code != 404:
            raise
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "SpiderCoordinator",
            "metadata": {
                "name": DEFAULT_COORDINATOR,
                "labels": {"app.kubernetes.io/managed-by": "spiderpool-init"},
                "annotations": {CHART_APPLIED: json.dumps(wanted, sort_keys=True)},
            },
            "spec": {k: v for k, v in wanted.items() if v is not None},
        }
        await rest.create(COORDINATOR, body)
        return "created"
    meta = current["metadata"]
    raw = (meta.get("annotations") or {}).get(CHART_APPLIED) or "{}"
    try:
        loaded = json.loads(raw)
    except ValueError:
        loaded = None
    # no record (made before the chart kept one, or by hand): the chart owns no field yet
    applied: dict[str, Any] = loaded if isinstance(loaded, dict) else {}
    have = current.get("spec") or {}
    changes = coordinator_patch(have, applied, wanted)
    record = json.dumps(applied_record(have, applied, wanted), sort_keys=True)
    edited = sorted(k for k, v in wanted.items() if have.get(k) != v and k not in changes)
    outcome = f"updated ({', '.join(sorted(changes))})" if changes else "unchanged"
    if edited:
        outcome += f", left as edited ({', '.join(edited)})"
    if not changes and record == raw:
        return outcome
    # a merge patch with the resourceVersion: a concurrent edit makes this fail (and the Job retry)
    patch: dict[str, Any] = {
        "metadata": {"resourceVersion": meta["resourceVersion"], "annotations": {CHART_APPLIED: record}}
    }
    if changes:
        patch["spec"] = changes
    await rest.patch(COORDINATOR, DEFAULT_COORDINATOR, patch)
    return outcome


async def ensure_created(rest: Client, kind: Kind, kind_name: str, fields: dict[str, Any]) -> str:
    name = str(fields["name"])
    try:
        await rest.get(kind, name)
        return "exists, left as it is"
    except ApiError as exc:
        if exc.code != 404:
            raise
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind_name, "metadata": {"name": name}, "spec": _spec(fields)}
    try:
        await rest.create(kind, body)
    except ApiError as exc:
        if exc.code == 409:
            return "exists, left as it is"
        raise SystemExit(f"spiderpool-init: could not create {kind_name} {name}: {exc}") from None
    return "created"


async def run(args: argparse.Namespace) -> None:
    rest = Client.from_kubeconfig(args.kubeconfig, field_manager="spiderpool-init")
    try:
        await wait_for_webhook(rest, args.namespace, args.webhook_service, args.wait)
        if args.coordinator is not None:
            outcome = await ensure_coordinator(rest, args.coordinator)
            log.info("SpiderCoordinator %s: %s", DEFAULT_COORDINATOR, outcome)
        for fields in args.subnet:
            log.info("SpiderSubnet %s: %s", fields["name"], await ensure_created(rest, SUBNET, "SpiderSubnet", fields))
        for fields in args.ippool:
            log.info("SpiderIPPool %s: %s", fields["name"], await ensure_created(rest, IPPOOL, "SpiderIPPool", fields))
    finally:
        await rest.close()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logs.setup("spiderpool-init", args.log_level)
    try:
        asyncio.run(run(args))
    except ApiError as exc:
        print(f"spiderpool-init: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
