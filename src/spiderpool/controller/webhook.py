"""The admission webhook server (TLS, AdmissionReview v1) and its self-registration.

Paths follow upstream: ``/mutate-spiderpool-spidernet-io-v2beta1-<kind>`` and ``/validate-...``.
The configurations use ``failurePolicy: Ignore``: when no replica answers, the apiserver still
enforces every schema rule, and nothing (installs, upgrades, the controller's own start) can
deadlock on the webhook. The cross-object rules then wait for a replica to come back; see
docs/api.md for what that leaves open.
"""

from __future__ import annotations

import base64
import json
import logging
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import Counter, Histogram

from spiderpool.api.v2beta1 import GROUP, VERSION
from spiderpool.controller import admission
from spiderpool.controller.cache import ObjectCache
from spiderpool.k8s.client import Client
from spiderpool.k8s.kinds import MUTATING_WEBHOOKS, VALIDATING_WEBHOOKS

log = logging.getLogger(__name__)

#: kind -> plural, for every kind that has webhooks
KINDS = {
    "SpiderIPPool": "spiderippools",
    "SpiderSubnet": "spidersubnets",
    "SpiderReservedIP": "spiderreservedips",
    "SpiderCoordinator": "spidercoordinators",
    "SpiderMultusConfig": "spidermultusconfigs",
}
CONFIG_NAME = "spiderpool-controller"

ADMISSIONS = Counter(
    "spiderpool_controller_admission_requests_total", "Admission requests answered", ["kind", "webhook", "allowed"]
)
ADMISSION_SECONDS = Histogram(
    "spiderpool_controller_admission_duration_seconds", "Time to answer an admission request", ["webhook"]
)


ADMISSION_ERRORS = Counter(
    "spiderpool_controller_admission_errors_total",
    "Admission requests the webhook failed to judge (a bug: the log has the traceback)",
    ["kind", "webhook"],
)


def _internal_error(mode: str, kind: str, req: Any, exc: Exception) -> dict[str, Any]:
    """A mutation that fails leaves the object as it is (the schema and the validating webhook still
    judge it); a validation that fails refuses the object, saying so."""
    uid = req.get("uid", "") if isinstance(req, dict) else ""
    if mode == "mutate":
        return {"uid": uid, "allowed": True, "warnings": [f"spiderpool-controller could not default this {kind}"]}
    message = (
        f"spiderpool-controller failed to check this {kind} ({type(exc).__name__}: {exc}); this is a bug in"
        " spiderpool: please report it with the object"
    )
    return {"uid": uid, "allowed": False, "status": {"code": 500, "reason": "InternalError", "message": message}}


def path(mode: str, kind: str) -> str:
    return f"/{mode}-{GROUP.replace('.', '-')}-{VERSION}-{kind.lower()}"


def json_patch(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    """A JSON patch turning ``before`` into ``after`` at the granularity the mutator works at."""
    ops: list[dict[str, Any]] = []
    for key in ("labels", "finalizers", "ownerReferences"):
        b, a = before.get("metadata", {}).get(key), after.get("metadata", {}).get(key)
        if a != b and a is not None:
            ops.append({"op": "add", "path": f"/metadata/{key}", "value": a})
    if before.get("spec") != after.get("spec") and "spec" in after:
        ops.append({"op": "add", "path": "/spec", "value": after["spec"]})
    return ops


@dataclass
class Webhook:
    cache: ObjectCache
    settings: admission.Settings

    def routes(self) -> list[web.RouteDef]:
        out = []
        for kind in KINDS:
            out.append(web.post(path("mutate", kind), self._handler("mutate", kind)))
            out.append(web.post(path("validate", kind), self._handler("validate", kind)))
        return out

    def _handler(self, mode: str, kind: str) -> Any:
        async def handle(request: web.Request) -> web.Response:
            started = time.monotonic()
            try:
                review = await request.json()
                req = review["request"]
            except (ValueError, KeyError, TypeError):
                return web.json_response({"error": "expected an AdmissionReview"}, status=400)
            try:
                response = self.answer(mode, kind, req)
            except Exception as exc:  # a bug in a rule must be seen, not waved through by failurePolicy Ignore
                ADMISSION_ERRORS.labels(kind, mode).inc()
                log.exception("admission failed kind=%s webhook=%s", kind, mode)
                response = _internal_error(mode, kind, req, exc)
            ADMISSIONS.labels(kind, mode, str(response["allowed"]).lower()).inc()
            ADMISSION_SECONDS.labels(mode).observe(time.monotonic() - started)
            return web.json_response(
                {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}
            )

        return handle

    def answer(self, mode: str, kind: str, req: dict[str, Any]) -> dict[str, Any]:
        uid = req.get("uid", "")
        obj = req.get("object") or {}
        old = req.get("oldObject")
        snapshot = self.cache.snapshot()
        if mode == "mutate":
            ops = json_patch(obj, admission.mutate(kind, obj, snapshot))
            out: dict[str, Any] = {"uid": uid, "allowed": True}
            if ops:
                out["patchType"] = "JSONPatch"
                out["patch"] = base64.b64encode(json.dumps(ops).encode()).decode()
            return out
        user = str((req.get("userInfo") or {}).get("username", ""))
        errors = admission.validate(kind, req.get("operation", ""), obj, old, snapshot, self.settings, user)
        if not errors:
            return {"uid": uid, "allowed": True}
        name = obj.get("metadata", {}).get("name", "")
        log.info("admission denied kind=%s name=%s errors=%s", kind, name, errors)
        return {
            "uid": uid,
            "allowed": False,
            "status": {"code": 422, "reason": "Invalid", "message": "; ".join(errors)},
        }


def server_ssl(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def _client_config(
    ca_pem: bytes, mode: str, kind: str, *, url_base: str | None, service: tuple[str, str, int] | None
) -> dict[str, Any]:
    conf: dict[str, Any] = {"caBundle": base64.b64encode(ca_pem).decode()}
    if url_base:
        conf["url"] = url_base.rstrip("/") + path(mode, kind)
    elif service:
        ns, name, port = service
        conf["service"] = {"namespace": ns, "name": name, "port": port, "path": path(mode, kind)}
    else:
        raise ValueError("either a webhook URL base or a Service is needed")
    return conf


def configurations(
    ca_pem: bytes, *, url_base: str | None = None, service: tuple[str, str, int] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Mutating and Validating webhook configurations covering Spiderpool kinds only."""
    docs = []
    for mode, kind_name in (("mutate", "MutatingWebhookConfiguration"), ("validate", "ValidatingWebhookConfiguration")):
        hooks = []
        for kind, plural in KINDS.items():
            hooks.append(
                {
                    "name": f"{kind.lower()}.{GROUP}",
                    "admissionReviewVersions": ["v1"],
                    "sideEffects": "None",
                    "failurePolicy": "Ignore",
                    "matchPolicy": "Equivalent",
                    "timeoutSeconds": 5,
                    "clientConfig": _client_config(ca_pem, mode, kind, url_base=url_base, service=service),
                    "rules": [
                        {
                            "apiGroups": [GROUP],
                            "apiVersions": [VERSION],
                            "operations": ["CREATE", "UPDATE"],
                            "resources": [plural],
                            "scope": "*",
                        }
                    ],
                }
            )
        docs.append(
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": kind_name,
                "metadata": {"name": CONFIG_NAME, "labels": {"app.kubernetes.io/name": "spiderpool"}},
                "webhooks": hooks,
            }
        )
    return docs[0], docs[1]


async def register(
    client: Client, ca_pem: bytes, *, url_base: str | None = None, service: tuple[str, str, int] | None = None
) -> None:
    """Create or update both configurations (server-side apply, so replicas converge)."""
    mutating, validating = configurations(ca_pem, url_base=url_base, service=service)
    await client.apply(MUTATING_WEBHOOKS, mutating)
    await client.apply(VALIDATING_WEBHOOKS, validating)
    log.info("webhook configurations registered name=%s", CONFIG_NAME)
