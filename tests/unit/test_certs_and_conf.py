"""The webhook certificate's renewal decision, CA bundle and expiry gauge, and conf.yml parsing (pure)."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from prometheus_client import REGISTRY

from spiderpool.api import conf
from spiderpool.controller import certs

DNS = ["spiderpool-controller.kube-system.svc"]


def _cas(bundle: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(bundle)


def test_a_fresh_certificate_is_not_renewed_until_a_third_of_its_life_is_left() -> None:
    cert = certs.generate(dns=DNS, ips=[], validity=datetime.timedelta(days=30))
    leaf = cert.leaf()
    start = leaf.not_valid_before_utc
    assert not cert.needs_renewal(start + datetime.timedelta(days=15))
    assert cert.needs_renewal(leaf.not_valid_after_utc - datetime.timedelta(days=9))
    assert cert.needs_renewal(leaf.not_valid_after_utc + datetime.timedelta(seconds=1))


def test_the_expiry_gauge_is_the_served_certificates_not_after() -> None:
    for days in (30, 10):
        cert = certs.generate(dns=DNS, ips=[], validity=datetime.timedelta(days=days))
        cert.export_expiry()
        name = "spiderpool_controller_webhook_cert_expiry_timestamp_seconds"
        assert REGISTRY.get_sample_value(name) == cert.leaf().not_valid_after_utc.timestamp()


def test_a_renewed_bundle_trusts_the_old_and_the_new_ca() -> None:
    old = certs.generate(dns=DNS, ips=[])
    new = certs.generate(dns=DNS, ips=[], previous_ca=old.ca_pem)
    subjects = [c.fingerprint(c.signature_hash_algorithm) for c in _cas(new.ca_pem)]  # type: ignore[arg-type]
    assert len(subjects) == 2
    old_ca = _cas(old.ca_pem)[0]
    assert old_ca.fingerprint(old_ca.signature_hash_algorithm) in subjects  # type: ignore[arg-type]
    # a second renewal drops the oldest: the bundle never grows past two
    newer = certs.generate(dns=DNS, ips=[], previous_ca=new.ca_pem)
    assert len(_cas(newer.ca_pem)) == 2
    assert _cas(newer.ca_pem)[1] == _cas(new.ca_pem)[0]
    # the CA outlives the certificate it signs
    assert _cas(new.ca_pem)[0].not_valid_after_utc > new.leaf().not_valid_after_utc


def test_conf_yml_keys_and_their_errors() -> None:
    parsed = conf.parse("enableIPv4: true\nenableIPv6: false\nclusterSubnetDefaultFlexibleIPNumber: 2\nfoo: 1\n")
    assert (parsed.enable_ipv4, parsed.enable_ipv6, parsed.auto_pool_extra_ips) == (True, False, 2)
    assert parsed.unknown == ("foo",)
    assert parsed.enable_auto_pool is None
    assert conf.parse("enableAutoPoolForApplication: false").enable_auto_pool is False
    # upstream's code reads the second key: it wins when both are set
    both = conf.parse("clusterSubnetDefaultFlexibleIPNumber: 2\nclusterSubnetAutoPoolDefaultRedundantIPNumber: 3\n")
    assert both.auto_pool_extra_ips == 3
    for text, message in (
        ("enableIPv4: 'yes'", "enableIPv4 must be true or false"),
        ("enableAutoPoolForApplication: 0", "enableAutoPoolForApplication must be true or false"),
        ("clusterSubnetDefaultFlexibleIPNumber: -1", "must be a whole number >= 0"),
        ("ipamUnixSocketPath: run/x.sock", "must be an absolute path"),
        ("- a\n- b", "must be a mapping"),
        ("enableIPv4: [", "not valid YAML"),
    ):
        with pytest.raises(conf.ConfError, match=message):
            conf.parse(text)
    with pytest.raises(conf.ConfError, match="enableStatefulSet: false is not supported"):
        conf.check_supported(conf.parse("enableStatefulSet: false"))
    with pytest.raises(conf.ConfError, match="enable at least one IP family"):
        conf.check_supported(conf.parse("enableIPv4: false\nenableIPv6: false"))


def test_flags_win_over_conf_yml(tmp_path: object) -> None:
    from pathlib import Path

    from spiderpool.agent import main as agent_main
    from spiderpool.controller import main as controller_main

    path = Path(str(tmp_path)) / "conf.yml"
    path.write_text("enableIPv6: false\nipamUnixSocketPath: /run/sp/sp.sock\nclusterSubnetDefaultFlexibleIPNumber: 4\n")
    args = agent_main.parse_args([f"--config={path}"])
    assert (args.disable_ipv6, args.socket) == (True, "/run/sp/sp.sock")
    assert agent_main.parse_args([f"--config={path}", "--socket=/tmp/other.sock"]).socket == "/tmp/other.sock"
    c = controller_main.parse_args([f"--config={path}"])
    assert (c.disable_ipv6, c.disable_ipv4, c.auto_pool_extra_ips) == (True, False, 4)
    assert not args.disable_auto_pool
    assert not c.disable_auto_pool
    path.write_text("enableAutoPoolForApplication: false\n")
    assert agent_main.parse_args([f"--config={path}"]).disable_auto_pool
    assert controller_main.parse_args([f"--config={path}"]).disable_auto_pool
    path.write_text("enableIPv4: maybe\n")
    with pytest.raises(SystemExit):
        controller_main.parse_args([f"--config={path}"])


def test_the_bundle_is_mended_only_when_it_does_not_trust_our_certificate() -> None:
    old = certs.generate(dns=DNS, ips=[])
    new = certs.generate(dns=DNS, ips=[], previous_ca=old.ca_pem)
    stranger = certs.generate(dns=DNS, ips=[])
    # a bundle that trusts what we serve is left alone (also while it holds more CAs than ours)
    assert certs.bundle_for(new.ca_pem, new) is None
    assert certs.bundle_for(new.ca_pem, old) is None  # a replica still serving the old one
    # a wrong or empty bundle gets ours, and keeps what it had (another replica may need it)
    mended = certs.bundle_for(stranger.ca_pem, new)
    assert mended is not None
    assert certs.bundle_for(mended, new) is None
    assert certs.bundle_for(mended, stranger) is None
    assert certs.bundle_for(b"", new) == new.ca_pem
    assert certs.bundle_for(b"not a pem", new) == new.ca_pem
