"""Build the upstream programs the lab runs, from their published Go modules.

Each component is a small Go module of ours under ``lab/go/<dir>`` whose ``go.mod``/``go.sum`` pin
the upstream module (those files are the lock of what we build). A component is built once per
version into the cache; a later build with the same inputs is a no-op. If the pinned version does
not build, the neighbouring versions are tried in order and the one that built is recorded in
``build.lock.json`` in the cache, with the exact error of each failed attempt.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from spiderpool_lab import paths
from spiderpool_lab.progress import say, step


@dataclass(frozen=True)
class Component:
    name: str
    #: folder under lab/go holding our pinning module
    module_dir: str
    #: the upstream module whose version we pin
    module: str
    #: pinned version first, then neighbours to try if it does not build
    versions: tuple[str, ...]
    #: binary name -> Go package that builds it
    binaries: dict[str, str] = field(default_factory=dict)
    #: k8s.io/kubernetes needs every k8s.io/* staging module replaced by its published v0.x twin
    staging_replace: bool = False
    #: Go build tags
    tags: str = ""
    #: -X settings stamping the version into the binaries ("{version}", "{major}", "{minor}" filled in,
    #: and "{kube_minor}": the minor of the k8s.io/client-go the build selects, as Helm's Makefile does)
    stamps: tuple[str, ...] = ()
    #: files of the upstream module kept beside the binaries (e.g. its deployment manifests)
    files: tuple[str, ...] = ()
    #: binary name -> Go package whose test binary it is (``go test -c``, e.g. Kubernetes' e2e.test)
    tests: dict[str, str] = field(default_factory=dict)
    #: built only when named (``spiderpool-lab build NAME``), never by a plain ``build``
    on_demand: bool = False


K8S_BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy", "kubectl", "kubelet")
#: without these every binary reports v0.0.0-master+$Format:%H$, which `kubectl version` cannot parse
#: and a Helm chart's kubeVersion constraint refuses
_K8S_STAMPS = tuple(
    f"-X {pkg}.{key}={value}"
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
    for key, value in (
        ("gitVersion", "{version}"),
        ("gitMajor", "{major}"),
        ("gitMinor", "{minor}"),
        ("gitTreeState", "clean"),
        ("gitCommit", "0000000000000000000000000000000000000000"),
        ("buildDate", "1970-01-01T00:00:00Z"),
    )
)
CNI_PLUGINS = {
    "macvlan": "plugins/main/macvlan",
    "bridge": "plugins/main/bridge",
    "ptp": "plugins/main/ptp",
    "loopback": "plugins/main/loopback",
    "host-local": "plugins/ipam/host-local",
    "static": "plugins/ipam/static",
    "tuning": "plugins/meta/tuning",
}

COMPONENTS: tuple[Component, ...] = (
    Component(
        name="etcd",
        module_dir="etcd",
        module="go.etcd.io/etcd/server/v3",
        versions=("v3.6.16", "v3.6.15", "v3.6.8"),
        binaries={"etcd": "go.etcd.io/etcd/server/v3"},
    ),
    Component(
        name="kubernetes",
        module_dir="k8s",
        module="k8s.io/kubernetes",
        versions=("v1.37.2", "v1.36.3", "v1.35.4"),
        binaries={b: f"k8s.io/kubernetes/cmd/{b}" for b in K8S_BINARIES},
        staging_replace=True,
        stamps=_K8S_STAMPS,
    ),
    Component(
        name="containerd",
        module_dir="containerd",
        module="github.com/containerd/containerd/v2",
        versions=("v2.4.2", "v2.4.1", "v2.3.7"),
        binaries={
            b: f"github.com/containerd/containerd/v2/cmd/{b}" for b in ("containerd", "containerd-shim-runc-v2", "ctr")
        },
        tags="no_btrfs,no_devmapper,no_zfs",
        stamps=("-X github.com/containerd/containerd/v2/version.Version={version}",),
    ),
    Component(
        name="cni-plugins",
        module_dir="cni",
        module="github.com/containernetworking/plugins",
        versions=("v1.10.0", "v1.9.1", "v1.9.0"),
        binaries={b: f"github.com/containernetworking/plugins/{p}" for b, p in CNI_PLUGINS.items()},
    ),
    Component(
        name="multus",
        module_dir="multus",
        module="gopkg.in/k8snetworkplumbingwg/multus-cni.v4",
        versions=("v4.3.0", "v4.2.4", "v4.2.3"),
        # the DaemonSet users apply (the thin plugin), as shipped in the module
        files=("deployments/multus-daemonset.yml",),
        # the thin plugin, and what upstream's image holds beside it for its DaemonSet
        binaries={
            b: f"gopkg.in/k8snetworkplumbingwg/multus-cni.v4/cmd/{pkg}"
            for b, pkg in (
                ("multus", "multus"),
                ("passthru", "passthru-cni"),
                ("install_multus", "install_multus"),
                ("thin_entrypoint", "thin_entrypoint"),
            )
        },
    ),
    # The peer the benchmarks compare with: Whereabouts' IPAM plugin and ip-control-loop, with what its
    # users apply (its CRDs and DaemonSet) and the scripts its image runs.
    Component(
        name="whereabouts",
        module_dir="whereabouts",
        module="github.com/k8snetworkplumbingwg/whereabouts",
        versions=("v0.9.2", "v0.9.0"),
        binaries={
            "whereabouts": "github.com/k8snetworkplumbingwg/whereabouts/cmd",
            "ip-control-loop": "github.com/k8snetworkplumbingwg/whereabouts/cmd/controlloop",
        },
        files=(
            "doc/crds/daemonset-install.yaml",
            "doc/crds/whereabouts.cni.cncf.io_ippools.yaml",
            "doc/crds/whereabouts.cni.cncf.io_overlappingrangeipreservations.yaml",
            "doc/crds/whereabouts.cni.cncf.io_nodeslicepools.yaml",
            "script/install-cni.sh",
            "script/lib.sh",
            "script/token-watcher.sh",
        ),
    ),
    # Only their CRDs, for server-side dry runs of the chart's cert-manager and monitoring profiles
    # (the modules are downloaded, nothing is built).
    Component(
        name="cert-manager-crds",
        module_dir="cert-manager",
        module="github.com/cert-manager/cert-manager",
        versions=("v1.21.2", "v1.21.1"),
        files=("deploy/crds/cert-manager.io_certificates.yaml", "deploy/crds/cert-manager.io_issuers.yaml"),
    ),
    Component(
        name="prometheus-operator-crds",
        module_dir="prometheus-operator",
        module="github.com/prometheus-operator/prometheus-operator",
        versions=("v0.85.0",),
        files=(
            "example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml",
            "example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml",
        ),
    ),
    Component(
        # Prometheus' rule checker: the chart's PrometheusRule must pass `promtool check rules`
        name="promtool",
        module_dir="prometheus",
        module="github.com/prometheus/prometheus",
        versions=("v0.316.0",),
        binaries={"promtool": "github.com/prometheus/prometheus/cmd/promtool"},
    ),
    Component(
        # the lab's image registry (CNCF distribution): make image-push pushes there, nodes pull from it
        name="distribution",
        module_dir="distribution",
        module="github.com/distribution/distribution/v3",
        versions=("v3.1.2", "v3.1.1"),
        binaries={"registry": "github.com/distribution/distribution/v3/cmd/registry"},
    ),
    Component(
        # Kubernetes' own end-to-end suite (e2e.test) and its test server (agnhost), from the same
        # release as the cluster's: for the conformance run, which is not part of the test suite
        name="kubernetes-e2e",
        module_dir="k8s-e2e",
        module="k8s.io/kubernetes",
        versions=("v1.37.2",),
        binaries={"agnhost": "k8s.io/kubernetes/test/images/agnhost"},
        tests={"e2e.test": "k8s.io/kubernetes/test/e2e"},
        staging_replace=True,
        stamps=_K8S_STAMPS,
        on_demand=True,
    ),
    Component(
        # the cluster DNS of the underlay-only mode (the version kubeadm v1.37 deploys)
        name="coredns",
        module_dir="coredns",
        module="github.com/coredns/coredns",
        versions=("v1.14.6", "v1.14.5"),
        binaries={"coredns": "github.com/coredns/coredns"},
        on_demand=True,
    ),
    Component(
        name="helm",
        module_dir="helm",
        module="helm.sh/helm/v3",
        versions=("v3.22.0", "v3.21.4", "v3.20.2"),
        binaries={"helm": "helm.sh/helm/v3/cmd/helm"},
        # as Helm's release build: its version, and the Kubernetes version `helm template` assumes
        # without a cluster (unstamped: v1.20, which a chart's kubeVersion >=1.29 refuses)
        stamps=(
            "-X helm.sh/helm/v3/internal/version.version={version}",
            "-X helm.sh/helm/v3/internal/version.gitTreeState=clean",
            *(
                f"-X helm.sh/helm/v3/pkg/{pkg}.{key}={value}"
                for pkg in ("chartutil", "lint/rules")
                for key, value in (("k8sVersionMajor", "1"), ("k8sVersionMinor", "{kube_minor}"))
            ),
        ),
    ),
)


#: built for the test suite only (the peer the benchmarks compare with, the rule checker, the registry of
#: the install page's test): `make demo` skips them
TEST_ONLY = ("whereabouts", "promtool", "distribution")


class BuildError(RuntimeError):
    pass


def _client_go_minor(work: Path, log: Path) -> str:
    """The minor version of the k8s.io/client-go the module in ``work`` builds with (v0.37.0: 37)."""
    _run_go(["mod", "download", "k8s.io/client-go"], work, log)
    out = subprocess.run(
        ["go", "list", "-m", "-f", "{{.Version}}", "k8s.io/client-go"],
        cwd=work,
        capture_output=True,
        text=True,
        env=_go_env(),
    )
    parts = out.stdout.strip().removeprefix("v").split(".")
    if out.returncode != 0 or len(parts) < 2 or not parts[1].isdigit():
        raise BuildError(f"cannot tell which k8s.io/client-go {work} builds with: {out.stderr.strip()[-500:]}")
    return parts[1]


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("GOTOOLCHAIN", "local")
    env["CGO_ENABLED"] = "0"
    env["GOFLAGS"] = (env.get("GOFLAGS", "") + " -trimpath -mod=mod").strip()
    return env


def go_version() -> str:
    try:
        out = subprocess.run(["go", "version"], check=True, capture_output=True, text=True).stdout
    except FileNotFoundError as exc:
        raise BuildError("the Go toolchain ('go') is not on PATH; the lab builds upstream from source") from exc
    return out.strip()


def _run_go(args: list[str], cwd: Path, log: Path) -> None:
    with log.open("a") as fh:
        fh.write(f"\n$ go {' '.join(args)}\n")
        fh.flush()
        proc = subprocess.run(["go", *args], cwd=cwd, env=_go_env(), stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-25:]
        raise BuildError(f"go {' '.join(args[:2])} failed in {cwd.name}:\n" + "\n".join(tail))


def _fingerprint(comp: Component, src: Path, version: str, gover: str) -> str:
    h = hashlib.sha256()
    for name in ("go.mod", "go.sum", "tools.go"):
        p = src / name
        if p.exists():
            h.update(p.read_bytes())
    h.update(version.encode())
    h.update(gover.encode())
    h.update(f"{comp.tags}|{comp.stamps}".encode())
    return h.hexdigest()[:16]


def _default_binary_name(pkg: str) -> str:
    parts = pkg.split("/")
    last = parts[-1]
    if re.fullmatch(r"v\d+", last):
        return parts[-2]
    return last


def _prepare_workdir(comp: Component, version: str, work: Path) -> None:
    src = paths.repo_root() / "lab" / "go" / comp.module_dir
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(src, work)
    pinned = comp.versions[0]
    if version == pinned:
        return
    log = work / "build.log"
    # A neighbouring version: move the requirement (and the staging replaces) and let Go resolve.
    _run_go(["get", f"{comp.module}@{version}"], work, log)
    if comp.staging_replace:
        staging = "v0." + version.removeprefix("v1.")
        gomod = (work / "go.mod").read_text()
        for mod in sorted(set(re.findall(r"^\s*(k8s\.io/[\w.-]+) => ", gomod, flags=re.M))):
            _run_go(["mod", "edit", f"-replace={mod}={mod}@{staging}"], work, log)
    _run_go(["mod", "tidy"], work, log)


def _build_version(comp: Component, version: str, gover: str) -> Path:
    cache = paths.cache_dir()
    out = cache / "bin" / comp.name / version
    stamp = out / ".built.json"
    src = paths.repo_root() / "lab" / "go" / comp.module_dir
    fp = _fingerprint(comp, src, version, gover)
    if stamp.exists():
        try:
            if json.loads(stamp.read_text()).get("fingerprint") == fp and all(
                (out / b).exists() for b in (*comp.binaries, *comp.tests, *(Path(f).name for f in comp.files))
            ):
                return out
        except (ValueError, OSError):
            pass
    work = cache / "work" / f"{comp.name}-{version}"
    _prepare_workdir(comp, version, work)
    log = work / "build.log"
    tmp_out = work / "out"
    tmp_out.mkdir(exist_ok=True)
    major, minor = [*version.removeprefix("v").split("."), "0"][:2]
    kube_minor = _client_go_minor(work, log) if any("{kube_minor}" in x for x in comp.stamps) else ""
    stamps = " ".join(x.format(version=version, major=major, minor=minor, kube_minor=kube_minor) for x in comp.stamps)
    flags = [f"-ldflags=-s -w {stamps}".strip()]
    if comp.tags:
        flags.append(f"-tags={comp.tags}")
    if comp.binaries:
        # -v lists each package as it is compiled: the progress line counts them
        _run_go(["build", "-v", *flags, "-o", str(tmp_out) + "/", *comp.binaries.values()], work, log)
    for name, pkg in comp.tests.items():
        _run_go(["test", "-c", "-v", *flags, "-o", str(tmp_out / name), pkg], work, log)
    if not comp.binaries and not comp.tests:  # files only
        _run_go(["mod", "download", f"{comp.module}@{version}"], work, log)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for name, pkg in comp.binaries.items():
        shutil.move(str(tmp_out / _default_binary_name(pkg)), out / name)
    for name in comp.tests:
        shutil.move(str(tmp_out / name), out / name)
    if comp.files:
        gomodcache = subprocess.run(
            ["go", "env", "GOMODCACHE"], capture_output=True, text=True, check=True, env=_go_env()
        ).stdout.strip()
        module_dir = Path(gomodcache) / f"{comp.module}@{version}"
        for rel in comp.files:
            shutil.copy2(module_dir / rel, out / Path(rel).name)
    stamp.write_text(
        json.dumps({"fingerprint": fp, "module": comp.module, "version": version, "go": gover, "built": time.time()})
    )
    shutil.rmtree(work, ignore_errors=True)
    return out


def _progress(log: Path) -> str:
    """How far a build got: the packages ``go build -v`` has listed so far."""
    try:
        with log.open(errors="replace") as fh:
            compiled = sum(1 for line in fh if line and not line.startswith(("$", "go: ")))
    except OSError:
        return "preparing"
    return f"{compiled} packages compiled"


def lock_path() -> Path:
    return paths.cache_dir() / "build.lock.json"


def read_lock() -> dict[str, dict[str, object]]:
    try:
        data = json.loads(lock_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def selected(only: list[str] | None = None, *, demo: bool = False) -> list[Component]:
    """The components a build makes: those named, else every one not built on demand (and, for
    ``demo``, not only for the test suite)."""
    unknown = set(only or []) - {c.name for c in COMPONENTS}
    if unknown:
        raise BuildError(f"unknown component(s) {sorted(unknown)}; known: {[c.name for c in COMPONENTS]}")
    if only:
        return [c for c in COMPONENTS if c.name in only]
    return [c for c in COMPONENTS if not c.on_demand and not (demo and c.name in TEST_ONLY)]


def build_all(*, only: list[str] | None = None) -> dict[str, dict[str, object]]:
    """Build every component (or those named), returning the lock written to the cache."""
    gover = go_version()
    say(f"toolchain: {gover}; cache: {paths.cache_dir()}")
    lock = read_lock()
    wanted = selected(only)
    failures: list[str] = []
    for i, comp in enumerate(wanted, 1):
        errors: dict[str, str] = {}
        for version in comp.versions:
            what = ", ".join([*comp.binaries, *comp.tests]) or ", ".join(Path(f).name for f in comp.files)
            label = f"[{i}/{len(wanted)}] {comp.name} {version} ({what})"
            log = paths.cache_dir() / "work" / f"{comp.name}-{version}" / "build.log"
            try:
                with step(label, detail=functools.partial(_progress, log)):
                    out = _build_version(comp, version, gover)
            except BuildError as exc:
                errors[version] = str(exc)
                say(f"{comp.name} {version} did not build; trying the next version")
                continue
            lock[comp.name] = {
                "module": comp.module,
                "version": version,
                "go": gover,
                "dir": str(out),
                "binaries": sorted([*comp.binaries, *comp.tests]),
                "failed_versions": errors,
            }
            break
        else:
            failures.append(comp.name)
            lock[comp.name] = {"module": comp.module, "version": None, "failed_versions": errors}
        lock_path().parent.mkdir(parents=True, exist_ok=True)
        # (replaced in one step: a test reading the lock while a build runs never sees half of it)
        tmp = lock_path().with_suffix(".tmp")
        tmp.write_text(json.dumps(lock, indent=2, sort_keys=True) + "\n")
        tmp.replace(lock_path())
    if failures:
        raise BuildError(f"could not build {failures}; errors are in {lock_path()}")
    return lock


def binary(name: str) -> Path:
    """Path of a built binary, e.g. ``binary("kube-apiserver")``."""
    for entry in read_lock().values():
        bins = entry.get("binaries")
        if isinstance(bins, list) and name in bins and entry.get("dir"):
            path = Path(str(entry["dir"])) / name
            if path.exists():
                return path
    raise BuildError(f"{name} is not built yet: run 'spiderpool-lab build'")


def module_file(component: str, name: str) -> Path:
    """A file kept from an upstream module by the build (see ``Component.files``)."""
    entry = read_lock().get(component) or {}
    path = Path(str(entry.get("dir", ""))) / name
    if not entry.get("dir") or not path.exists():
        raise BuildError(f"{name} of {component} is not there: run 'spiderpool-lab build'")
    return path


def cni_bin_dir() -> Path:
    """Folder with the reference CNI plugins."""
    return binary("macvlan").parent
