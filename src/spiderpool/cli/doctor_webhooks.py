"""`kubectl spiderpool doctor`: the webhooks judged (their configurations, Services and endpoints,
the dry-run probes, the serving certificate and the CA bundle). Pure."""

from __future__ import annotations

import base64
import binascii
import datetime
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes

from spiderpool.cli.doctor_model import (
    CERT_WARN_DAYS,
    FAIL,
    OK,
    PROBE_HIJACK,
    PROBE_HIJACK_DEFAULTED,
    PROBE_PREFIX,
    WARN,
    WEBHOOK_DENIED,
    WEBHOOK_SUFFIX,
    Check,
    Install,
    Obj,
    ProbeResult,
    _name,
)


# ------------------------------------------------------------------ webhooks
def spiderpool_hooks(config: Obj) -> list[Obj]:
    return [h for h in config.get("webhooks") or [] if str(h.get("name", "")).endswith(WEBHOOK_SUFFIX)]


def webhook_services(configs: Iterable[Obj]) -> list[tuple[str, str, int]]:
    """(namespace, name, port) of every Service spiderpool's webhooks are called through."""
    out = set()
    for config in configs:
        for hook in spiderpool_hooks(config):
            svc = (hook.get("clientConfig") or {}).get("service")
            if svc:
                out.add((str(svc.get("namespace")), str(svc.get("name")), int(svc.get("port") or 443)))
    return sorted(out)


def ready_endpoints(slices: Iterable[Obj]) -> list[str]:
    """The addresses of ready endpoints (a missing ``ready`` condition means ready)."""
    out = []
    for s in slices:
        for ep in s.get("endpoints") or []:
            if (ep.get("conditions") or {}).get("ready", True) is not False:
                out += [str(a) for a in ep.get("addresses") or []]
    return sorted(set(out))


def _ca_fix(install: Install) -> str:
    ns, name = install.namespace, install.controller_name
    if install.tls_method == "certmanager":
        return f"cert-manager's cainjector writes it: kubectl -n {ns} describe certificate {install.secret_name}"
    if install.tls_method == "provided":
        return "the chart writes it from spiderpoolController.tls.provided.tlsCa: helm upgrade with it set"
    return f"the controller writes it at start and puts it back: kubectl -n {ns} rollout restart deployment/{name}"


def judge_webhook_configs(install: Install, mutating: Sequence[Obj], validating: Sequence[Obj]) -> list[Check]:
    checks = []
    for kind, configs in (("MutatingWebhookConfiguration", mutating), ("ValidatingWebhookConfiguration", validating)):
        ours = [c for c in configs if spiderpool_hooks(c)]
        if not ours:
            checks.append(
                Check(
                    FAIL,
                    "webhooks",
                    f"no {kind} calls spiderpool's webhooks: pools, subnets and coordinators are"
                    f" {'not defaulted' if kind.startswith('Mutating') else 'not checked against each other'}",
                    "the chart makes it (spiderpool-controller): helm upgrade --install it again"
                    " (or kubectl apply -f deploy/spiderpool.yaml)",
                )
            )
            continue
        for config in ours:
            hooks = spiderpool_hooks(config)
            no_ca = [str(h.get("name")) for h in hooks if not (h.get("clientConfig") or {}).get("caBundle")]
            if no_ca:
                checks.append(
                    Check(
                        FAIL,
                        "webhooks",
                        f"{kind} {_name(config)}: no caBundle in {', '.join(no_ca)}: the apiserver cannot"
                        " trust the controller, so every call fails and objects go in unchecked",
                        _ca_fix(install),
                    )
                )
            else:
                checks.append(
                    Check(OK, "webhooks", f"{kind} {_name(config)}: {len(hooks)} webhooks, each with a CA bundle")
                )
    return checks


def judge_webhook_services(
    install: Install,
    configs: Sequence[Obj],
    services: Mapping[tuple[str, str], Obj | None],
    slices: Mapping[tuple[str, str], Sequence[Obj]],
) -> list[Check]:
    checks = []
    ns = install.namespace
    pods = f"kubectl -n {ns} get pods -l {install.controller_selector}"
    for svc_ns, svc_name, port in webhook_services(configs):
        where = f"Service {svc_ns}/{svc_name}"
        svc = services.get((svc_ns, svc_name))
        if svc is None:
            checks.append(
                Check(
                    FAIL,
                    "webhook service",
                    f"{where}, which the webhooks are called through, does not exist",
                    "the chart makes it: helm upgrade --install spiderpool again",
                )
            )
            continue
        ports = [int(p.get("port") or 0) for p in (svc.get("spec") or {}).get("ports") or []]
        if port not in ports:
            checks.append(
                Check(
                    FAIL,
                    "webhook service",
                    f"{where} has no port {port} (it has {', '.join(map(str, ports)) or 'none'})",
                    f"kubectl -n {svc_ns} get svc {svc_name} -o yaml; helm upgrade --install spiderpool again",
                )
            )
            continue
        addresses = ready_endpoints(slices.get((svc_ns, svc_name)) or [])
        if not addresses:
            checks.append(
                Check(
                    FAIL,
                    "webhook service",
                    f"{where} has no ready endpoints: the apiserver cannot call the webhooks and lets every"
                    " pool, subnet and coordinator in unchecked (failurePolicy Ignore)",
                    f"{pods} (are the controller replicas Ready?); if they are, the Service's selector does not"
                    f" match them: kubectl -n {svc_ns} get svc {svc_name} -o yaml",
                )
            )
            continue
        checks.append(Check(OK, "webhook service", f"{where}: ready endpoints {', '.join(addresses)} (port {port})"))
    return checks


def probe_objects(suffix: str) -> dict[str, dict[str, Any]]:
    """The objects the probes create with dryRun=All: a SpiderCoordinator the mutating webhook turns
    an IP of ``hijackCIDR`` into a CIDR in, and a SpiderIPPool whose gateway is one of its IPs,
    which only the validating webhook refuses (the schema allows it)."""
    api = "spiderpool.spidernet.io/v2beta1"
    name = f"{PROBE_PREFIX}{suffix}"
    return {
        "mutating": {
            "apiVersion": api,
            "kind": "SpiderCoordinator",
            "metadata": {"name": name},
            "spec": {"hijackCIDR": [PROBE_HIJACK]},
        },
        "validating": {
            "apiVersion": api,
            "kind": "SpiderIPPool",
            "metadata": {"name": name},
            "spec": {
                "ipVersion": 4,
                "subnet": "198.51.100.0/30",
                "ips": ["198.51.100.1-198.51.100.2"],
                "gateway": "198.51.100.1",
            },
        },
    }


def judge_probe(mode: str, result: ProbeResult, install: Install, cause: str = "") -> Check:
    """``mode``: mutating or validating; ``cause``: what another check found wrong with the webhook's path."""
    check = f"webhook {mode}"
    ns = install.namespace
    fix = (
        f"kubectl -n {ns} get pods -l {install.controller_selector}; kubectl -n {ns} logs deploy/"
        f'{install.controller_name}; the apiserver\'s log says why ("failed calling webhook")'
    )
    because = f" ({cause})" if cause else ""
    if result.code == 403:
        return Check(WARN, check, f"cannot probe (a dry-run create is forbidden to you: {result.message})")
    if result.code and "failed calling webhook" in result.message:
        return Check(FAIL, check, f"the apiserver failed calling it: {result.message}", fix)
    if mode == "mutating":
        if result.obj is None:
            return Check(WARN, check, f"inconclusive: the dry-run SpiderCoordinator was refused: {result.message}")
        hijack = ((result.obj.get("spec") or {}).get("hijackCIDR")) or []
        if hijack == [PROBE_HIJACK_DEFAULTED]:
            return Check(OK, check, "answered (a dry-run SpiderCoordinator came back with its defaults)")
        return Check(
            FAIL,
            check,
            "a dry-run SpiderCoordinator came back unchanged: the apiserver could not call the mutating webhook"
            f" and let it through (failurePolicy Ignore){because}",
            fix,
        )
    if result.obj is not None:
        return Check(
            FAIL,
            check,
            "a dry-run SpiderIPPool whose gateway is one of its IPs was accepted: the apiserver could not call"
            f" the validating webhook and let it through (failurePolicy Ignore){because}",
            fix,
        )
    if WEBHOOK_DENIED in result.message:
        return Check(OK, check, "answered (it refused a dry-run SpiderIPPool whose gateway is one of its IPs)")
    return Check(WARN, check, f"inconclusive: the dry-run SpiderIPPool was refused by {result.code}: {result.message}")


# ------------------------------------------------------------------ certificate
def _certs(pem: bytes) -> list[x509.Certificate]:
    try:
        return list(x509.load_pem_x509_certificates(pem))
    except ValueError:
        return []


def _b64(text: Any) -> bytes:
    try:
        return base64.b64decode(str(text or ""), validate=False)
    except (binascii.Error, ValueError):
        return b""


def ca_bundle(configs: Iterable[Obj]) -> list[x509.Certificate]:
    """The CAs spiderpool's webhook configurations trust (distinct)."""
    seen: dict[bytes, x509.Certificate] = {}
    for config in configs:
        for hook in spiderpool_hooks(config):
            for cert in _certs(_b64((hook.get("clientConfig") or {}).get("caBundle"))):
                seen.setdefault(cert.fingerprint(hashes.SHA256()), cert)
    return list(seen.values())


def _issuer(leaf: x509.Certificate, cas: Sequence[x509.Certificate]) -> x509.Certificate | None:
    for ca in cas:
        try:
            leaf.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return ca
    return None


def _renew_fix(install: Install) -> str:
    ns, name = install.namespace, install.controller_name
    if install.tls_method == "certmanager":
        return f"cert-manager renews it: kubectl -n {ns} describe certificate {install.secret_name}"
    if install.tls_method == "provided":
        return "give a new certificate: helm upgrade with spiderpoolController.tls.provided.tlsCert/tlsKey/tlsCa"
    return (
        f"the controller renews it when a third of its life is left and has not: kubectl -n {ns} logs"
        f" deploy/{name} | grep certificate; a restart renews it: kubectl -n {ns} rollout restart deployment/{name}"
    )


def judge_certificate(
    install: Install,
    secret: Obj | None,
    configs: Sequence[Obj],
    now: datetime.datetime,
    unreadable: str = "",
) -> Check:
    """The webhook's serving certificate (``tls.crt`` of the Secret) and the CA that signed it, as
    the webhook configurations carry it. ``unreadable``: why the Secret could not be read."""
    where = f"Secret {install.namespace}/{install.secret_name}"
    cas = ca_bundle(configs)
    if unreadable:
        if not cas:
            return Check(WARN, "certificate", f"cannot read {where} ({unreadable}) and no CA bundle to judge instead")
        end = min(c.not_valid_after_utc for c in cas)
        left = (end - now).total_seconds()
        status = FAIL if left <= 0 else WARN
        return Check(
            status,
            "certificate",
            f"cannot read {where} ({unreadable}); the webhooks' CA {'expired' if left <= 0 else 'is valid until'}"
            f" {end:%Y-%m-%d %H:%M}Z",
            _renew_fix(install) if left <= 0 else "read access to the Secret lets doctor judge the certificate",
        )
    if secret is None:
        made_by = {
            "auto": f"the controller makes it at start: kubectl -n {install.namespace} logs"
            f" deploy/{install.controller_name}",
            "certmanager": f"cert-manager makes it: kubectl -n {install.namespace} describe certificate"
            f" {install.secret_name}",
        }.get(install.tls_method, "the chart makes it from spiderpoolController.tls.provided: helm upgrade")
        return Check(FAIL, "certificate", f"{where} does not exist: the webhook has no certificate to serve", made_by)
    leaves = _certs(_b64((secret.get("data") or {}).get("tls.crt")))
    if not leaves:
        return Check(FAIL, "certificate", f"tls.crt of {where} holds no PEM certificate", _renew_fix(install))
    leaf = leaves[0]
    issuer = _issuer(leaf, cas)
    if cas and issuer is None:
        return Check(
            FAIL,
            "certificate",
            f"the webhook configurations' CA bundle does not hold the CA that signed {where}'s certificate:"
            " the apiserver refuses the controller's TLS, so no webhook is called",
            _ca_fix(install),
        )
    end = leaf.not_valid_after_utc
    if issuer is not None:
        end = min(end, issuer.not_valid_after_utc)
    left = (end - now).total_seconds()
    if left <= 0:
        return Check(
            FAIL,
            "certificate",
            f"the webhook certificate ({where}) expired at {end:%Y-%m-%d %H:%M}Z: the apiserver cannot call"
            " the webhooks",
            _renew_fix(install),
        )
    days = left / 86400
    if days < CERT_WARN_DAYS:
        return Check(
            WARN,
            "certificate",
            f"the webhook certificate ({where}) expires {end:%Y-%m-%d %H:%M}Z, in {days:.1f} days",
            _renew_fix(install),
        )
    return Check(OK, "certificate", f"{where}: valid until {end:%Y-%m-%d} ({int(days)} days)")
