"""make image / image-push / chart: the commands they run (the lab test of docs/install.md runs
them for real, against the lab's registry)."""

from __future__ import annotations

import pytest

from spiderpool import __version__
from spiderpool_lab import release


def test_the_image_is_named_after_the_version_and_labelled() -> None:
    argv = release.image_argv(["podman"], base="lab.local/debian:bookworm")
    assert argv[:2] == ["podman", "build"]
    assert argv[argv.index("-t") + 1] == f"spiderpool-python:{__version__}"
    assert f"--build-arg=VERSION={__version__}" in argv
    assert "--build-arg=BASE=lab.local/debian:bookworm" in argv
    assert any(a.startswith("--build-arg=REVISION=") for a in argv)
    # (as flags too: a layer cache may reuse a LABEL step built with other values)
    assert f"--label=org.opencontainers.image.version={__version__}" in argv


def test_push_goes_to_the_registry_and_organisation_given() -> None:
    ref = f"spiderpool-python:{__version__}"
    assert release.push_argv(["buildah"], "ghcr.io/myorg/") == [
        ["buildah", "push", ref, f"docker://ghcr.io/myorg/{ref}"]
    ]
    assert release.push_argv(["podman"], "10.0.0.1:5000/x", tls_verify=False)[0][2] == "--tls-verify=false"
    assert release.push_argv(["/usr/bin/docker"], "registry.example.com") == [
        ["/usr/bin/docker", "tag", ref, f"registry.example.com/{ref}"],
        ["/usr/bin/docker", "push", f"registry.example.com/{ref}"],
    ]
    for bad in ("", "https://ghcr.io/myorg"):
        with pytest.raises(release.ReleaseError, match="host\\[:port\\]\\[/path\\]"):
            release.push_argv(["buildah"], bad)


def test_no_builder_is_named_with_the_package_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("BUILDER", raising=False)
    with pytest.raises(release.ReleaseError, match="apt-get install buildah"):
        release.builder()
    monkeypatch.setenv("BUILDER", "kaniko --x")
    with pytest.raises(release.ReleaseError, match="BUILDER=kaniko is not on PATH"):
        release.builder()
