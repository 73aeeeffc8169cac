"""The container images the lab's nodes run, built on this machine without a registry.

- A Debian bookworm root filesystem from Debian's packages (``debootstrap``), with the packages the
  images need and the machine's own CA certificates (so that builds inside it reach the package
  indexes this machine reaches), becomes ``lab.local/debian:bookworm``.
- Every image is built from a Containerfile by buildah, a real OCI builder: the lab's images from
  ``lab/images/<name>/``, the project's image from the project's own ``Dockerfile`` with that base as
  its ``BASE`` build argument (a registry build keeps ``python:3.11-slim``).
- Each image is named after a hash of its inputs (its context, its base, its build arguments): a
  second build with the same inputs does nothing. All of them are saved in one OCI archive (the
  layers they share stored once), which a node imports into containerd's ``k8s.io`` namespace in
  one go (about 8 s), where pods find them by name.

Storage (buildah's and the archives) lives in the lab cache; nothing is written to the machine's
container storage or CNI configuration.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from spiderpool import __version__
from spiderpool_lab import build, paths
from spiderpool_lab.progress import say, step

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
#: what the lab's images need: Python for the project and the responder, a C compiler and the
#: static libc for the project's CNI relay, the tools the tests run in pods, nginx for the
#: walkthrough's image
PACKAGES = (
    "python3",
    "python3-venv",
    "gcc",
    "libc6-dev",
    "ca-certificates",
    "iproute2",
    "iptables",
    "iputils-ping",
    "curl",
    "procps",
    "nginx-light",
)
BASE_REF = "lab.local/debian:bookworm"
#: the peer IPAM the benchmarks compare with (its DaemonSet's image is replaced by this one)
WHEREABOUTS_IMAGE = "lab.local/whereabouts:v0.9.2"
#: the machine's extra CA certificates, trusted inside the images too
LOCAL_CAS = Path("/usr/local/share/ca-certificates")


class ImageError(RuntimeError):
    pass


@dataclass(frozen=True)
class ImageSpec:
    name: str
    #: names the image is saved (and imported) under
    refs: tuple[str, ...]
    #: the build context; None: lab/images/<name>
    context: Path | None = None
    containerfile: str = "Containerfile"
    #: files copied into the context before the build: name in the context -> source
    extra: dict[str, str] = field(default_factory=dict)
    #: the image is built FROM the lab base (passed as the BASE build argument)
    on_base: bool = True


def _specs() -> tuple[ImageSpec, ...]:
    repo = paths.repo_root()
    return (
        ImageSpec("pause", ("registry.k8s.io/pause:3.10.2",), on_base=False),
        ImageSpec("tools", ("registry.invalid/app:1", "lab.local/tools:1")),
        ImageSpec("dao-2048", ("ghcr.io/daocloud/dao-2048:v1.2.0",)),
        ImageSpec(
            "multus",
            ("lab.local/multus-cni:v4.3.0",),
            extra={b: b for b in ("multus", "passthru", "install_multus", "thin_entrypoint")},
        ),
        ImageSpec(
            "whereabouts",
            (WHEREABOUTS_IMAGE,),
            extra={b: b for b in ("whereabouts", "ip-control-loop", "install-cni.sh", "lib.sh", "token-watcher.sh")},
        ),
        ImageSpec("spiderpool", (f"spiderpool-python:{__version__}",), context=repo, containerfile="Dockerfile"),
    )


def _cache() -> Path:
    return paths.cache_dir() / "images"


def _run(argv: list[str], *, log: Path, cwd: Path | None = None) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as fh:
        fh.write(f"\n$ {' '.join(argv)}\n")
        fh.flush()
        proc = subprocess.run(argv, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-30:]
        raise ImageError(f"{argv[0]} failed (log: {log}):\n" + "\n".join(tail))


def _need(tool: str, package: str) -> str:
    found = shutil.which(tool)
    if found is None:
        raise ImageError(f"'{tool}' is missing: install the Debian package {package} (apt-get install {package})")
    return found


def _hash_files(h: hashlib._Hash, root: Path, files: Iterable[Path]) -> None:
    for f in sorted(files):
        if f.is_file():
            h.update(str(f.relative_to(root)).encode())
            h.update(f.read_bytes())


# ------------------------------------------------------------------ rootfs
def _rootfs_key() -> str:
    h = hashlib.sha256(f"{SUITE}|{MIRROR}|{','.join(PACKAGES)}".encode())
    if LOCAL_CAS.is_dir():
        _hash_files(h, LOCAL_CAS, LOCAL_CAS.glob("*.crt"))
    return h.hexdigest()[:16]


def rootfs_tar() -> Path:
    """The base root filesystem as a tar (debootstrap once per package list and CA set)."""
    key = _rootfs_key()
    tar = _cache() / "rootfs" / f"{SUITE}-{key}.tar"
    if tar.exists():
        return tar
    debootstrap = _need("debootstrap", "debootstrap")
    work = _cache() / "rootfs" / f"work-{key}"
    log = _cache() / "logs" / "rootfs.log"
    shutil.rmtree(work, ignore_errors=True)
    with step(f"Debian {SUITE} root filesystem (debootstrap)"):
        _run(
            [debootstrap, "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(work), MIRROR],
            log=log,
        )
        for crt in sorted(LOCAL_CAS.glob("*.crt")) if LOCAL_CAS.is_dir() else []:
            shutil.copy2(crt, work / "usr/local/share/ca-certificates" / crt.name)
        _run(["chroot", str(work), "update-ca-certificates"], log=log)
        # no package lists, caches or logs of the build in the image
        for junk in ("var/lib/apt/lists", "var/cache/apt/archives", "var/log"):
            for child in (work / junk).glob("*"):
                if child.is_file():
                    child.unlink()
        resolv = work / "etc/resolv.conf"
        resolv.unlink(missing_ok=True)
        resolv.write_text("")  # the runtime mounts the pod's own
        tmp = tar.with_suffix(".tmp")
        _run(["tar", "-C", str(work), "--numeric-owner", "-cf", str(tmp), "."], log=log)
        tmp.replace(tar)
    shutil.rmtree(work, ignore_errors=True)
    return tar


# ------------------------------------------------------------------ buildah
def buildah_argv(*args: str) -> list[str]:
    """buildah with its storage in the lab cache, in a mount namespace of its own where ``/etc`` and
    ``/var`` are overlays: buildah writes a CNI lock, a network folder and a blob cache there
    (``/etc/cni``, ``/etc/containers/networks``, ``/var/lib/containers``) whatever its storage
    flags say, and the machine's must stay as they are."""
    c = _cache() / "buildah"
    mounts = []
    for top in ("etc", "var"):
        upper, work = c / "overlay" / top / "upper", c / "overlay" / top / "work"
        upper.mkdir(parents=True, exist_ok=True)
        work.mkdir(parents=True, exist_ok=True)
        mounts.append(f"mount -t overlay overlay -o lowerdir=/{top},upperdir={upper},workdir={work} /{top}")
    return [
        _need("unshare", "util-linux"),
        "--mount",
        "--propagation=private",
        "sh",
        "-ec",
        " && ".join(mounts) + ' && exec "$@"',
        "buildah",
        _need("buildah", "buildah"),
        f"--root={c / 'root'}",
        f"--runroot={c / 'run'}",
        "--storage-driver=overlay",
        *args,
    ]


def _bud(context: Path, containerfile: str, tag: str, build_args: dict[str, str], log: Path) -> None:
    argv = buildah_argv(
        "bud",
        "--isolation=chroot",
        "--network=host",  # no CNI: the build must not touch the machine's network configuration
        "--layers",
        f"--file={context / containerfile}",
        f"--tag={tag}",
    )
    for key, value in build_args.items():
        argv.append(f"--build-arg={key}={value}")
    _run([*argv, str(context)], log=log)


@dataclass(frozen=True)
class Built:
    name: str
    key: str
    refs: tuple[str, ...] = ()

    @property
    def tag(self) -> str:
        """The image's name in buildah's storage."""
        return f"lab.local/build/{self.name}:{self.key}"


def _lock_path() -> Path:
    return _cache() / "images.lock.json"


def built() -> dict[str, Built]:
    """What ``build_images`` made last (for importing into nodes)."""
    try:
        data = json.loads(_lock_path().read_text())
    except (OSError, ValueError):
        return {}
    return {
        name: Built(name, str(v["key"]), tuple(v.get("refs") or ())) for name, v in data.items() if name != "bundle"
    }


def _context_files(spec: ImageSpec, context: Path) -> list[Path]:
    if spec.context is None:
        return [p for p in context.rglob("*") if p.is_file()]
    # the project: what its Dockerfile copies (and the Dockerfile and its ignore file)
    repo = spec.context
    files = [repo / "Dockerfile", repo / ".dockerignore", repo / "pyproject.toml", repo / "README.md"]
    for folder in ("src", "charts/spiderpool/crds"):
        files += [p for p in (repo / folder).rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    return files


def build_images(skip: frozenset[str] = frozenset()) -> dict[str, Built]:
    """Build every image (but those named in ``skip``: an image carrying a component of the test
    suite's, build.TEST_ONLY) that is missing or whose inputs changed; return them all."""
    cache = _cache()
    (cache / "archives").mkdir(parents=True, exist_ok=True)
    log = cache / "logs" / "images.log"
    lock = dict(built())
    base_tar = rootfs_tar()
    base_key = hashlib.sha256(base_tar.name.encode()).hexdigest()[:16]
    base_ctx = paths.repo_root() / "lab" / "images" / "base"
    if lock.get("base", Built("", "")).key != base_key or not _has(buildah_argv("inspect", BASE_REF)):
        with step("image lab.local/debian:bookworm"):
            work = cache / "contexts" / "base"
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(base_ctx, work)
            os.link(base_tar, work / "rootfs.tar")
            _bud(work, "Containerfile", BASE_REF, {}, log)
            shutil.rmtree(work, ignore_errors=True)
        lock["base"] = Built("base", base_key)
        _write_lock(lock)
    for spec in _specs():
        if spec.name in skip:
            continue
        context = spec.context or paths.repo_root() / "lab" / "images" / spec.name
        h = hashlib.sha256(f"{spec.name}|{spec.refs}|{base_key if spec.on_base else ''}".encode())
        _hash_files(h, context, _context_files(spec, context))
        for name in spec.extra.values():
            src = _extra_source(spec, name)
            h.update(name.encode())
            h.update(src.read_bytes())
        key = h.hexdigest()[:16]
        made = Built(spec.name, key, spec.refs)
        if lock.get(spec.name) == made and _has(buildah_argv("inspect", made.tag)):
            continue
        with step(f"image {spec.refs[0]}"):
            work = context
            if spec.extra or spec.name == "pause":
                work = cache / "contexts" / spec.name
                shutil.rmtree(work, ignore_errors=True)
                shutil.copytree(context, work)
                for dest, name in spec.extra.items():
                    shutil.copy2(_extra_source(spec, name), work / dest)
                if spec.name == "pause":
                    _run(["gcc", "-Os", "-static", "-o", str(work / "pause"), str(work / "pause.c")], log=log)
            _bud(work, spec.containerfile, made.tag, {"BASE": BASE_REF} if spec.on_base else {}, log)
        old = lock.get(spec.name)
        if old is not None and old.key != key:
            _has(buildah_argv("rmi", old.tag))  # the previous build of it is not needed any more
        lock[spec.name] = made
        _write_lock(lock)
    _bundle(lock, log)
    return lock


def qualified(ref: str) -> str:
    """The full name the kubelet asks the runtime for (``spiderpool-python:0.1.0`` is
    ``docker.io/library/spiderpool-python:0.1.0``): an OCI archive keeps names as written."""
    first, _, rest = ref.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return ref
    return f"docker.io/{ref}" if rest else f"docker.io/library/{ref}"


def bundle_path() -> Path:
    """The one archive holding every image (for the nodes to import)."""
    try:
        data = json.loads(_lock_path().read_text())
        return Path(data["bundle"]["path"])
    except (OSError, ValueError, KeyError):
        raise ImageError("no images are built yet: run 'spiderpool-lab build'") from None


def _bundle(lock: dict[str, Built], log: Path) -> Path:
    """Every image in one OCI archive, named after the images' keys."""
    made = [b for b in lock.values() if b.refs]
    key = hashlib.sha256(("v2|" + "|".join(f"{b.name}:{b.key}" for b in sorted(made, key=lambda b: b.name))).encode())
    archive = _cache() / "archives" / f"images-{key.hexdigest()[:16]}.tar"
    if archive.exists():
        _write_lock(lock, archive)
        return archive
    with step("image archive for the nodes"):
        layout = _cache() / "archives" / "layout"
        shutil.rmtree(layout, ignore_errors=True)
        for b in made:
            for ref in b.refs:
                _run(buildah_argv("push", "--quiet", b.tag, f"oci:{layout}:{qualified(ref)}"), log=log)
        tmp = archive.with_suffix(".tmp")
        _run(["tar", "-C", str(layout), "-cf", str(tmp), "."], log=log)
        tmp.replace(archive)
        shutil.rmtree(layout, ignore_errors=True)
    for old in (_cache() / "archives").glob("*.tar"):
        if old != archive:
            old.unlink()
    _write_lock(lock, archive)
    return archive


def _extra_source(spec: ImageSpec, name: str) -> Path:
    if spec.name == "multus":
        return build.binary(name)
    if spec.name == "whereabouts":
        return build.module_file("whereabouts", name) if name.endswith(".sh") else build.binary(name)
    raise ImageError(f"no source for {name!r} of image {spec.name}")


def _has(argv: list[str]) -> bool:
    return subprocess.run(argv, capture_output=True).returncode == 0


def _write_lock(lock: dict[str, Built], bundle: Path | None = None) -> None:
    data: dict[str, object] = {n: {"key": b.key, "refs": list(b.refs)} for n, b in lock.items()}
    if bundle is not None:
        data["bundle"] = {"path": str(bundle)}
    _lock_path().write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def say_built() -> None:
    for b in built().values():
        for ref in b.refs:
            say(f"image {ref} ({b.key})")
    say(f"archive for the nodes: {bundle_path()}")
