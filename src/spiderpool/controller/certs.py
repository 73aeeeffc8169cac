"""The webhook's serving certificate, shared by the controller's replicas.

``auto``: the first replica to start creates a CA and a serving certificate and stores them in a
Secret; the others read it. So every replica serves the same certificate and the webhook
configurations carry one CA bundle, whichever replica registered them. When a third of its
lifetime is left, a replica renews it: the new CA is put in the bundle beside the old one, so a
replica still serving the old certificate stays trusted until it reloads (``renewed``).

``certmanager`` and ``provided``: the Secret is made by cert-manager or the chart; the controller
only reads it (and follows cert-manager's renewals).
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from prometheus_client import Gauge

from spiderpool.certs import BACKDATE, VALIDITY, new_key, sign, x509_name
from spiderpool.k8s.client import ApiError, Client
from spiderpool.k8s.kinds import SECRET

log = logging.getLogger(__name__)


#: renew when less than this share of the certificate's lifetime is left
RENEW_AT = 1 / 3

#: 0 until a certificate is served (the chart's alert ignores 0)
EXPIRY = Gauge(
    "spiderpool_controller_webhook_cert_expiry_timestamp_seconds",
    "When the webhook certificate this replica serves expires (its notAfter, unix seconds)",
)


@dataclass(frozen=True)
class ServingCert:
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    def write(self, directory: Path) -> tuple[Path, Path]:
        directory.mkdir(parents=True, exist_ok=True)
        cert, key = directory / "tls.crt", directory / "tls.key"
        cert.write_bytes(self.cert_pem)
        key.write_bytes(self.key_pem)
        key.chmod(0o600)
        return cert, key

    def leaf(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    def export_expiry(self) -> None:
        """Say, in ``EXPIRY``, that this is the certificate now served."""
        EXPIRY.set(self.leaf().not_valid_after_utc.timestamp())

    def renew_at(self) -> datetime.datetime:
        """When a third of its lifetime is left."""
        cert = self.leaf()
        issued, end = cert.not_valid_before_utc + BACKDATE, cert.not_valid_after_utc
        return end - (end - issued) * RENEW_AT

    def needs_renewal(self, now: datetime.datetime | None = None) -> bool:
        """Less than a third of its lifetime left (or expired)."""
        return (now or datetime.datetime.now(datetime.UTC)) >= self.renew_at()

    def covers(self, dns: list[str], ips: list[str]) -> bool:
        cert = x509.load_pem_x509_certificate(self.cert_pem)
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return False
        names = set(san.get_values_for_type(x509.DNSName))
        addrs = {str(a) for a in san.get_values_for_type(x509.IPAddress)}
        return set(dns) <= names and set(ips) <= addrs


def bundle_for(current: bytes, served: ServingCert, now: datetime.datetime | None = None) -> bytes | None:
    """The CA bundle the webhook configurations should carry when they carry ``current`` and this
    replica serves ``served``: None when ``current`` already trusts our certificate's issuer, else
    ``current``'s unexpired CAs with ours added (never fewer CAs: another replica may still serve a
    certificate of one of them)."""
    leaf = served.leaf()
    try:
        have = x509.load_pem_x509_certificates(current) if current.strip() else []
    except ValueError:
        have = []  # garbage in the bundle: replaced by ours
    if any(_issued(leaf, ca) for ca in have):
        return None
    moment = now or datetime.datetime.now(datetime.UTC)
    keep = [ca for ca in have if ca.not_valid_after_utc > moment]
    pems = [ca.public_bytes(serialization.Encoding.PEM) for ca in keep]
    ours = [ca.public_bytes(serialization.Encoding.PEM) for ca in x509.load_pem_x509_certificates(served.ca_pem)]
    return b"".join(dict.fromkeys([*pems, *ours]))


def _issued(leaf: x509.Certificate, ca: x509.Certificate) -> bool:
    """Whether ``ca`` signed ``leaf`` (every CA here has the same name: its key tells)."""
    try:
        leaf.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _first_pem(bundle: bytes) -> bytes:
    end = b"-----END CERTIFICATE-----"
    head, sep, _ = bundle.partition(end)
    return head + sep + b"\n" if sep else bundle


def generate(
    *, dns: list[str], ips: list[str], validity: datetime.timedelta = VALIDITY, previous_ca: bytes = b""
) -> ServingCert:
    """A new CA and serving certificate; ``previous_ca`` (the CA being replaced) stays in the bundle."""
    ca_key = new_key()
    ca_name = x509_name("spiderpool-webhook-ca")
    # the CA outlives its certificate, so the bundle's old entry never expires before the renewal
    ca = sign(
        subject=ca_name,
        public_key=ca_key.public_key(),
        issuer=ca_name,
        issuer_key=ca_key,
        ca=True,
        validity=validity * 2,
    )
    key = new_key()
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]
    cert = sign(
        subject=x509_name(dns[0] if dns else "spiderpool-controller"),
        public_key=key.public_key(),
        issuer=ca_name,
        issuer_key=ca_key,
        usages=[ExtendedKeyUsageOID.SERVER_AUTH],
        sans=sans,
        validity=validity,
    )
    pem = serialization.Encoding.PEM
    return ServingCert(
        ca_pem=ca.public_bytes(pem) + _first_pem(previous_ca),
        cert_pem=cert.public_bytes(pem),
        key_pem=key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )


def _from_secret(secret: dict[str, Any]) -> ServingCert | None:
    data = secret.get("data") or {}
    try:
        return ServingCert(
            ca_pem=base64.b64decode(data["ca.crt"]),
            cert_pem=base64.b64decode(data["tls.crt"]),
            key_pem=base64.b64decode(data["tls.key"]),
        )
    except (KeyError, ValueError):
        return None


async def read(client: Client, *, namespace: str, name: str) -> ServingCert | None:
    """The certificate in the Secret, or None while it is missing or incomplete."""
    try:
        secret = await client.get(SECRET, name, namespace)
    except ApiError as exc:
        if exc.code != 404:
            raise
        return None
    return _from_secret(secret)


async def ensure(
    client: Client,
    *,
    namespace: str,
    name: str,
    dns: list[str],
    ips: list[str],
    validity: datetime.timedelta = VALIDITY,
) -> ServingCert:
    """Read the shared serving certificate, creating, replacing or renewing it when missing,
    unfit or near its end."""
    for _ in range(5):
        secret: dict[str, Any] | None
        try:
            secret = await client.get(SECRET, name, namespace)
        except ApiError as exc:
            if exc.code != 404:
                raise
            secret = None
        current = _from_secret(secret) if secret is not None else None
        if current is not None and current.covers(dns, ips) and not current.needs_renewal():
            return current
        previous = _first_pem(current.ca_pem) if current is not None else b""
        fresh = generate(dns=dns, ips=ips, validity=validity, previous_ca=previous)
        meta: dict[str, Any] = {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/name": "spiderpool"},
        }
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": meta,
            "type": "kubernetes.io/tls",
            "data": {
                "ca.crt": base64.b64encode(fresh.ca_pem).decode(),
                "tls.crt": base64.b64encode(fresh.cert_pem).decode(),
                "tls.key": base64.b64encode(fresh.key_pem).decode(),
            },
        }
        try:
            if secret is None:
                await client.create(SECRET, body)
            else:
                # a precondition: of two replicas renewing at once, one wins and the other re-reads
                meta["resourceVersion"] = secret["metadata"]["resourceVersion"]
                await client.replace(SECRET, body)
            verb = "renewed" if current is not None else "created"
            log.info(
                "webhook serving certificate %s secret=%s/%s not_after=%s",
                verb,
                namespace,
                name,
                fresh.leaf().not_valid_after_utc.isoformat(),
            )
            return fresh
        except ApiError as exc:
            if exc.code != 409:
                raise
            # another replica won the race: read what it stored
    raise RuntimeError(f"could not settle the webhook certificate in secret {namespace}/{name}")
