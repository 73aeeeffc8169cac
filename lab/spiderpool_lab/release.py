"""What a release publishes, one command each (the Makefile's ``image``, ``image-push``, ``chart``
and ``chart-push``):

    python -m spiderpool_lab.release image                          # spiderpool-python:<version>
    python -m spiderpool_lab.release image-push ghcr.io/myorg       # ghcr.io/myorg/spiderpool-python:<version>
    python -m spiderpool_lab.release chart [--url URL]              # dist/chart: the .tgz and index.yaml
    python -m spiderpool_lab.release chart-push oci://ghcr.io/myorg # helm push of the packaged chart

The image is built by whichever builder the machine has (buildah, podman or docker; ``BUILDER``
picks one, or names a command line), from the project's Dockerfile, with the OCI labels filled in (version, git commit,
git remote). The version is pyproject.toml's, as everywhere.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from spiderpool import __version__
from spiderpool_lab import paths

IMAGE = "spiderpool-python"
BUILDERS = ("buildah", "podman", "docker")
CHART_DIR = Path("charts/spiderpool")


class ReleaseError(RuntimeError):
    pass


def builder() -> list[str]:
    """The image builder's command: ``BUILDER`` (a name, or a command line such as a wrapper that
    gives buildah its own storage), else the first of buildah, podman, docker on PATH."""
    wanted = shlex.split(os.environ.get("BUILDER", ""))
    if wanted:
        if not shutil.which(wanted[0]):
            raise ReleaseError(f"BUILDER={wanted[0]} is not on PATH")
        return wanted
    for name in BUILDERS:
        if shutil.which(name):
            return [name]
    raise ReleaseError(f"no image builder: install one of {', '.join(BUILDERS)} (Debian: apt-get install buildah)")


def _is_docker(tool: list[str]) -> bool:
    return Path(tool[0]).name == "docker"


def local_ref() -> str:
    return f"{IMAGE}:{__version__}"


def _git(*args: str) -> str:
    out = subprocess.run(["git", *args], cwd=paths.repo_root(), capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else ""


def _run(argv: list[str]) -> None:
    print("+ " + " ".join(argv), file=sys.stderr, flush=True)
    if subprocess.run(argv, cwd=paths.repo_root()).returncode != 0:
        raise ReleaseError(f"{argv[0]} failed (see above)")


def image_argv(tool: list[str], *, base: str | None = None) -> list[str]:
    """The build command; ``BUILD_FLAGS`` adds flags of the builder's own (e.g. --network=host)."""
    args = {"VERSION": __version__, "REVISION": _git("rev-parse", "HEAD") or "unknown"}
    args["SOURCE"] = _git("remote", "get-url", "origin") or "unknown"
    if base:
        args["BASE"] = base
    # the labels also as flags: a builder's layer cache may reuse a LABEL step built with other
    # argument values (buildah 1.28 does), and these must name this build
    labels = {"version": args["VERSION"], "revision": args["REVISION"], "source": args["SOURCE"]}
    return [
        *tool,
        "build",
        *shlex.split(os.environ.get("BUILD_FLAGS", "")),
        *(f"--label=org.opencontainers.image.{k}={v}" for k, v in labels.items()),
        "-f",
        "Dockerfile",
        "-t",
        local_ref(),
        *(f"--build-arg={k}={v}" for k, v in args.items()),
        ".",
    ]


def push_argv(tool: list[str], registry: str, *, tls_verify: bool = True) -> list[list[str]]:
    """The commands that push the local image to ``registry`` (host[:port][/path])."""
    registry = registry.rstrip("/")
    if not registry or "://" in registry:
        raise ReleaseError(f"REGISTRY={registry!r}: give host[:port][/path], e.g. ghcr.io/myorg")
    remote = f"{registry}/{local_ref()}"
    if _is_docker(tool):  # (a plain-HTTP registry is docker's daemon setting: insecure-registries)
        return [[*tool, "tag", local_ref(), remote], [*tool, "push", remote]]
    flags = [] if tls_verify else ["--tls-verify=false"]
    return [[*tool, "push", *flags, local_ref(), f"docker://{remote}"]]


def helm() -> str:
    found = os.environ.get("HELM") or shutil.which("helm")
    if found:
        return found
    from spiderpool_lab import build  # (the lab's own helm, built from its Go module)

    return str(build.binary("helm"))


def chart(out: Path, url: str | None) -> Path:
    """Package the chart into ``out`` and write the repository's index.yaml beside it."""
    out.mkdir(parents=True, exist_ok=True)
    _run([helm(), "package", str(CHART_DIR), "-d", str(out), "--version", __version__, "--app-version", __version__])
    index = [helm(), "repo", "index", str(out)]
    if url:
        index += ["--url", url]
    _run(index)
    return out / f"spiderpool-{__version__}.tgz"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m spiderpool_lab.release", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    p_image = sub.add_parser("image", help="build the image with buildah, podman or docker")
    p_image.add_argument("--base", help="the BASE build argument (default: the Dockerfile's python:3.11-slim)")
    p_push = sub.add_parser("image-push", help="push the image to REGISTRY (host[:port][/path])")
    p_push.add_argument("registry")
    p_push.add_argument("--tls-verify", default="true", choices=("true", "false"), help="false: a plain-HTTP registry")
    p_chart = sub.add_parser("chart", help="package the chart and write index.yaml (a static Helm repository)")
    p_chart.add_argument("--out", default="dist/chart")
    p_chart.add_argument("--url", help="the URL the repository will be served at (index.yaml's links)")
    p_cpush = sub.add_parser("chart-push", help="push the packaged chart to an OCI registry (oci://host/path)")
    p_cpush.add_argument("oci")
    p_cpush.add_argument("--out", default="dist/chart")
    p_cpush.add_argument("--plain-http", action="store_true", help="a registry that speaks plain HTTP")
    args = p.parse_args(argv)
    try:
        if args.cmd == "image":
            _run(image_argv(builder(), base=args.base))
        elif args.cmd == "image-push":
            tool = builder()
            for cmd in push_argv(tool, args.registry, tls_verify=args.tls_verify == "true"):
                _run(cmd)
        elif args.cmd == "chart":
            print(chart(Path(args.out), args.url))
        elif args.cmd == "chart-push":
            if not args.oci.startswith("oci://"):
                raise ReleaseError(f"{args.oci!r}: give oci://host[:port]/path")
            tgz = str(Path(args.out) / f"spiderpool-{__version__}.tgz")
            _run([helm(), "push", tgz, args.oci, *(["--plain-http"] if args.plain_http else [])])
    except ReleaseError as exc:
        print(f"release: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
