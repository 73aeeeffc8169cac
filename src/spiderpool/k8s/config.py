"""Where the apiserver is and how to prove who we are: a kubeconfig file or the pod's service account.

Reads what our components meet in practice: a server URL, the cluster's CA (file or inline data,
or ``insecure-skip-tls-verify``), and a client certificate (file or inline data), a bearer token
or a token file (re-read when the apiserver answers 401: the kubelet rotates it). Exec and
auth-provider plugins are not supported: the error says so.
"""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class ConfigError(ValueError):
    """The kubeconfig (or the service account) cannot be used; the message names the field."""


@dataclass(frozen=True)
class Credentials:
    server: str
    ssl: ssl.SSLContext | None
    token: str = ""
    token_file: str = ""

    def read_token(self) -> str:
        return _read_token(self.token_file) if self.token_file else self.token


def _read_token(path: str) -> str:
    return Path(path).read_text().strip()  # a small local file: not worth a thread


def load(kubeconfig: str | None = None, *, context: str | None = None) -> Credentials:
    """Explicit path, then $KUBECONFIG (its first file), then the pod's service account.
    ``context`` names the kubeconfig's context to use instead of its current-context."""
    path = kubeconfig or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
    if path:
        return from_file(Path(path), context=context)
    return in_cluster()


def in_cluster() -> Credentials:
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise ConfigError("no kubeconfig given (--kubeconfig or $KUBECONFIG) and not running in a pod")
    if ":" in host:
        host = f"[{host}]"
    ctx = ssl.create_default_context(cafile=str(SERVICE_ACCOUNT / "ca.crt"))
    token_file = str(SERVICE_ACCOUNT / "token")
    return Credentials(f"https://{host}:{port}", ctx, _read_token(token_file), token_file)


def from_file(path: Path, *, context: str | None = None) -> Credentials:
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"kubeconfig {path}: {exc}") from None
    return from_dict(doc, base=path.parent, where=str(path), context=context)


def _named(doc: dict[str, Any], section: str, name: str, where: str) -> dict[str, Any]:
    for entry in doc.get(section) or []:
        if entry.get("name") == name:
            return dict(entry.get(section[:-1]) or {})
    raise ConfigError(f"kubeconfig {where}: {section} has no entry named {name!r}")


def from_dict(doc: dict[str, Any], *, base: Path, where: str = "kubeconfig", context: str | None = None) -> Credentials:
    current = context or doc.get("current-context")
    if not current:
        raise ConfigError(f"kubeconfig {where}: current-context is not set (or pass --context)")
    entry = _named(doc, "contexts", str(current), where)
    cluster = _named(doc, "clusters", str(entry.get("cluster")), where)
    user = _named(doc, "users", str(entry.get("user")), where) if entry.get("user") else {}
    server = str(cluster.get("server") or "").rstrip("/")
    if not server:
        raise ConfigError(f"kubeconfig {where}: cluster {entry.get('cluster')!r} has no server")
    for unsupported in ("exec", "auth-provider"):
        if unsupported in user:
            raise ConfigError(
                f"kubeconfig {where}: user {unsupported!r} plugins are not supported;"
                " use a token or a client certificate"
            )
    ctx = None
    if server.startswith("https://"):
        ctx = _ssl_context(cluster, user, base)
    token_file = str(user.get("tokenFile") or "")
    if token_file and not Path(token_file).is_absolute():
        token_file = str(base / token_file)
    token = str(user.get("token") or "") or (_read_token(token_file) if token_file else "")
    return Credentials(server, ctx, token, token_file)


def _material(section: dict[str, Any], key: str, base: Path) -> tuple[str | None, bytes | None]:
    """(path, inline data) of ``key`` / ``key-data``."""
    data = section.get(f"{key}-data")
    if data:
        return None, base64.b64decode(data)
    path = section.get(key)
    if path:
        return str(path if Path(path).is_absolute() else base / path), None
    return None, None


def _ssl_context(cluster: dict[str, Any], user: dict[str, Any], base: Path) -> ssl.SSLContext:
    if cluster.get("insecure-skip-tls-verify"):
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ca_path, ca_data = _material(cluster, "certificate-authority", base)
        ctx = ssl.create_default_context(cafile=ca_path, cadata=ca_data.decode() if ca_data else None)
    cert_path, cert_data = _material(user, "client-certificate", base)
    key_path, key_data = _material(user, "client-key", base)
    if cert_path or cert_data:
        with tempfile.TemporaryDirectory() as tmp:  # ssl loads a chain only from files
            if cert_data is not None:
                cert_path = os.path.join(tmp, "tls.crt")
                Path(cert_path).write_bytes(cert_data)
            if key_data is not None:
                key_path = os.path.join(tmp, "tls.key")
                Path(key_path).write_bytes(key_data)
                os.chmod(key_path, 0o600)
            assert cert_path is not None
            ctx.load_cert_chain(cert_path, key_path)
    return ctx
