"""The core's small parts that need no API: the watch cache's ordering, per-pod locks, back-off,
the kubeconfig loader. Pure (no apiserver)."""

from __future__ import annotations

import asyncio
import base64
import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from spiderpool.agent.pods import PodLocks
from spiderpool.certs import new_key, sign, x509_name
from spiderpool.k8s import config
from spiderpool.k8s.cache import WatchCache
from spiderpool.k8s.kinds import IPALLOCATION
from spiderpool.k8s.retry import Backoff


def obj(name: str, rv: int, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "resourceVersion": str(rv)}, "spec": spec}


def cache() -> WatchCache:
    return WatchCache(None, IPALLOCATION)  # type: ignore[arg-type]  # (never lists or watches here)


def test_a_late_watch_event_never_undoes_a_local_write() -> None:
    c = cache()
    seen: list[tuple[str, str]] = []
    c.listeners.append(lambda _k, key, o: seen.append((key, o["metadata"]["resourceVersion"])))
    c.apply_local(obj("a", 10, pod="first"))
    c._set(obj("a", 7, pod="older"))  # a MODIFIED of an earlier version, arriving late
    assert c.get("a") == obj("a", 10, pod="first")
    c._drop("a", obj("a", 8))  # the DELETED of an earlier incarnation of the same name
    assert c.get("a") is not None
    c._set(obj("a", 12, pod="newer"))
    assert c.get("a") == obj("a", 12, pod="newer")
    assert seen == [("a", "10"), ("a", "12")]


def test_a_local_delete_is_not_undone_by_a_late_event_of_what_was_deleted() -> None:
    c = cache()
    c.apply_local(obj("b", 20))
    c.apply_local(None, key="b")
    c._set(obj("b", 20))  # the watch catching up with the version we deleted
    assert c.get("b") is None
    c._set(obj("b", 25, pod="re-created"))  # created again since: that one counts
    assert c.get("b") == obj("b", 25, pod="re-created")
    assert not c._tombstones


def test_resource_versions_that_are_not_integers_are_never_judged_stale() -> None:
    c = cache()
    c.apply_local({"metadata": {"name": "x", "resourceVersion": "abc"}})
    c._set({"metadata": {"name": "x", "resourceVersion": "abd"}, "spec": {"v": 2}})
    assert c.get("x") == {"metadata": {"name": "x", "resourceVersion": "abd"}, "spec": {"v": 2}}


async def test_pod_locks_serialise_one_pod_and_are_dropped_when_free() -> None:
    locks = PodLocks()
    order: list[str] = []

    async def hold(tag: str) -> None:
        async with locks.hold("ns/p"):
            order.append(f"{tag}+")
            await asyncio.sleep(0)
            order.append(f"{tag}-")

    await asyncio.gather(hold("a"), hold("b"), hold("c"))
    assert order == ["a+", "a-", "b+", "b-", "c+", "c-"]
    assert len(locks) == 0


def test_backoff_grows_to_its_cap_with_jitter_and_resets() -> None:
    b = Backoff(0.5, 4.0)
    delays = [b.next() for _ in range(6)]
    for got, nominal in zip(delays, [0.5, 1, 2, 4, 4, 4], strict=True):
        assert nominal / 2 <= got <= nominal
    b.reset()
    assert b.peek() == 0.5


def _pem_pair(tmp: Path) -> tuple[bytes, bytes, bytes]:
    ca_key = new_key()
    name = x509_name("test-ca")
    ca = sign(subject=name, public_key=ca_key.public_key(), issuer=name, issuer_key=ca_key, ca=True)
    key = new_key()
    cert = sign(subject=x509_name("admin"), public_key=key.public_key(), issuer=name, issuer_key=ca_key)
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return ca.public_bytes(pem), cert.public_bytes(pem), key_pem


def _kubeconfig(cluster: dict[str, Any], user: dict[str, Any]) -> dict[str, Any]:
    return {
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443/", **cluster}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }


def test_kubeconfig_with_inline_data_files_and_token_files(tmp_path: Path) -> None:
    ca, cert, key = _pem_pair(tmp_path)
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    inline = config.from_dict(
        _kubeconfig(
            {"certificate-authority-data": b64(ca)}, {"client-certificate-data": b64(cert), "client-key-data": b64(key)}
        ),
        base=tmp_path,
    )
    assert inline.server == "https://127.0.0.1:6443"
    assert isinstance(inline.ssl, ssl.SSLContext)
    (tmp_path / "ca.crt").write_bytes(ca)
    (tmp_path / "token").write_text("s3cret\n")
    relative = config.from_dict(_kubeconfig({"certificate-authority": "ca.crt"}, {"tokenFile": "token"}), base=tmp_path)
    assert relative.token == "s3cret"
    assert relative.read_token() == "s3cret"
    (tmp_path / "token").write_text("rotated")
    assert relative.read_token() == "rotated"


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"current-context": ""}, "current-context is not set"),
        ({**_kubeconfig({}, {}), "current-context": "nope"}, "contexts has no entry named 'nope'"),
        (_kubeconfig({}, {"exec": {"command": "aws"}}), "'exec' plugins are not supported"),
        ({**_kubeconfig({}, {}), "clusters": [{"name": "c", "cluster": {}}]}, "cluster 'c' has no server"),
    ],
)
def test_a_bad_kubeconfig_names_what_is_wrong(doc: dict[str, Any], message: str, tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match=message):
        config.from_dict(doc, base=tmp_path)
