"""A throwaway PKI for the lab's control plane, made with ``cryptography``.

One CA signs the apiserver's serving certificate and the client certificates of each identity
(admin, controller-manager, scheduler). The service-account signing key pair is separate, as on
a real cluster.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from spiderpool.certs import new_key, sign, write_cert, write_key, x509_name


@dataclass(frozen=True)
class Identity:
    """A client identity: ``cn`` is the user, ``org`` its group."""

    name: str
    cn: str
    org: str | None = None


CLIENT_IDENTITIES = (
    Identity("admin", "kubernetes-admin", "system:masters"),
    Identity("controller-manager", "system:kube-controller-manager"),
    Identity("scheduler", "system:kube-scheduler"),
    Identity("kube-proxy", "system:kube-proxy", "system:node-proxier"),
    # its own user, so that the webhook can tell the controller's writes from an admin's
    Identity("spiderpool-controller", "spiderpool-controller", "system:masters"),
)


@dataclass(frozen=True)
class Pki:
    dir: Path

    @property
    def ca_cert(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def apiserver_cert(self) -> Path:
        return self.dir / "apiserver.crt"

    @property
    def apiserver_key(self) -> Path:
        return self.dir / "apiserver.key"

    @property
    def sa_key(self) -> Path:
        return self.dir / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.dir / "sa.pub"

    def client_cert(self, identity: str) -> Path:
        return self.dir / f"{identity}.crt"

    def client_key(self, identity: str) -> Path:
        return self.dir / f"{identity}.key"

    def exists(self) -> bool:
        return all(p.exists() for p in (self.ca_cert, self.apiserver_cert, self.sa_key, self.client_cert("admin")))


def write_kubeconfig(pki: Pki, path: Path, *, identity: str, server: str, name: str = "lab") -> None:
    """A kubeconfig for ``server`` as the client ``identity`` of this PKI."""
    user = f"{name}-{identity}"
    conf = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": server, "certificate-authority": str(pki.ca_cert)}}],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate": str(pki.client_cert(identity)),
                    "client-key": str(pki.client_key(identity)),
                },
            }
        ],
        "contexts": [{"name": name, "context": {"cluster": name, "user": user}}],
        "current-context": name,
    }
    path.write_text(yaml.safe_dump(conf))


def create(directory: Path, *, service_ip: str, extra_ips: tuple[str, ...] = ()) -> Pki:
    """Create (or keep, if complete) the lab PKI in ``directory``; the apiserver's certificate
    covers loopback, the ``kubernetes`` Service and ``extra_ips`` (re-signed if one is missing)."""
    pki = Pki(directory)
    ca_name = x509_name("spiderpool-lab-ca")
    ips = ("127.0.0.1", "::1", service_ip, *extra_ips)
    if pki.exists():
        # A lab made by an older version may lack an identity or an address added since: sign them
        # with the same CA.
        loaded = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        _client_certs(pki, ca_name, loaded, only_missing=True)
        if not _covers(pki.apiserver_cert, ips):
            _server_cert(pki, ca_name, loaded, ips)
        return pki
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = new_key()
    ca = sign(subject=ca_name, public_key=ca_key.public_key(), issuer=ca_name, issuer_key=ca_key, ca=True)
    write_key(pki.ca_key, ca_key)
    write_cert(pki.ca_cert, ca)
    _server_cert(pki, ca_name, ca_key, ips)
    _client_certs(pki, ca_name, ca_key, only_missing=False)

    sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    write_key(pki.sa_key, sa)
    pki.sa_pub.write_bytes(
        sa.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return pki


def _client_certs(pki: Pki, ca_name: x509.Name, ca_key: ec.EllipticCurvePrivateKey, *, only_missing: bool) -> None:
    for ident in CLIENT_IDENTITIES:
        if only_missing and pki.client_cert(ident.name).exists():
            continue
        key = new_key()
        cert = sign(
            subject=x509_name(ident.cn, ident.org),
            public_key=key.public_key(),
            issuer=ca_name,
            issuer_key=ca_key,
            usages=[ExtendedKeyUsageOID.CLIENT_AUTH],
        )
        write_key(pki.client_key(ident.name), key)
        write_cert(pki.client_cert(ident.name), cert)


def _server_cert(pki: Pki, ca_name: x509.Name, ca_key: ec.EllipticCurvePrivateKey, ips: tuple[str, ...]) -> None:
    server_key = new_key()
    dns = [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ]
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]
    server = sign(
        subject=x509_name("kube-apiserver"),
        public_key=server_key.public_key(),
        issuer=ca_name,
        issuer_key=ca_key,
        usages=[ExtendedKeyUsageOID.SERVER_AUTH],
        sans=sans,
    )
    write_key(pki.apiserver_key, server_key)
    write_cert(pki.apiserver_cert, server)


def _covers(cert_path: Path, ips: tuple[str, ...]) -> bool:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    have = {str(a) for a in san.get_values_for_type(x509.IPAddress)}
    return all(str(ipaddress.ip_address(a)) in have for a in ips)
