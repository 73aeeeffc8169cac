"""Helm in the lab: the lab-built ``helm`` with its own config, cache and data directories (so
``down`` leaves the machine's Helm set-up untouched), and a chart repository on a local address:
the chart packaged with ``helm package``, an ``index.yaml``, served over HTTP on the root
namespace's loopback (Helm runs there, like ``kubectl``)."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from pathlib import Path

from spiderpool_lab import build, paths, procs
from spiderpool_lab.cluster import Lab, LabError

CHART_DIR = "charts/spiderpool"
REPO_PROCESS = "chart-repo"
#: the lab's Kubernetes version, for `helm template` without a cluster (the chart's kubeVersion)
KUBE_VERSION = "1.37.2"


def chart_path() -> Path:
    return paths.repo_root() / CHART_DIR


def env(lab: Lab | None) -> dict[str, str]:
    home = (lab.dir if lab is not None else paths.cache_dir()) / "helm"
    out = dict(
        os.environ,
        HELM_CONFIG_HOME=str(home / "config"),
        HELM_CACHE_HOME=str(home / "cache"),
        HELM_DATA_HOME=str(home / "data"),
        # the chart repository is on loopback: never through a proxy
        NO_PROXY=",".join(filter(None, [os.environ.get("NO_PROXY", ""), "127.0.0.1"])),
    )
    if lab is not None:
        out["KUBECONFIG"] = str(lab.kubeconfig)
    return out


def run(
    lab: Lab | None, *args: str, input_text: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run the lab's helm; raise with its output when ``check`` and it fails."""
    proc = subprocess.run(
        [str(build.binary("helm")), *args], input=input_text, capture_output=True, text=True, env=env(lab)
    )
    if check and proc.returncode != 0:
        raise LabError(f"helm {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
    return proc


def template(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``helm template spiderpool charts/spiderpool -n kube-system`` with the given flags (no cluster)."""
    return run(
        None,
        "template",
        "spiderpool",
        str(chart_path()),
        "--namespace",
        "kube-system",
        "--kube-version",
        KUBE_VERSION,
        *args,
        check=check,
    )


def repo_url(lab: Lab) -> str:
    port = lab.state().get("ports", {}).get(REPO_PROCESS)
    if not port:
        raise LabError("the lab's chart repository is not running: call helm.serve_repo(lab)")
    return f"http://127.0.0.1:{port}/"


def serve_directory(lab: Lab, key: str, directory: Path, port: int | None = None) -> str:
    """Serve ``directory`` over HTTP on the root namespace's loopback (where helm runs) as the lab
    process ``key`` (idempotent); returns its URL once it answers."""
    directory.mkdir(parents=True, exist_ok=True)
    state = lab.state()
    ports = state.setdefault("ports", {})
    if not lab.process_alive(key):
        ports[key] = port or procs.free_port()
        lab._save(state)
        argv = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(directory)]
        lab.start_process(key, [*argv, str(ports[key])])
    url = f"http://127.0.0.1:{ports[key]}/"

    def answers() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # loopback only
                return bool(resp.status == 200)
        except OSError:
            return False

    procs.wait_for(answers, timeout=30, what=f"the web server of {directory} at {url}")
    return url


def serve_repo(lab: Lab) -> str:
    """Package the chart, index it and serve the repository (idempotent); returns its URL."""
    root = lab.dir / "chart-repo"
    url = serve_directory(lab, REPO_PROCESS, root)
    for old in root.glob("*.tgz"):
        old.unlink()
    run(None, "package", str(chart_path()), "--destination", str(root))
    run(None, "repo", "index", str(root), "--url", url)
    return url


MANIFEST = "deploy/spiderpool.yaml"
MANIFEST_HEADER = """\
# Generated from charts/spiderpool by `make manifest` (helm template with the chart's defaults):
# do not edit; change the chart. For `kubectl apply` without Helm: apply the CRDs first
# (kubectl apply -f charts/spiderpool/crds/), and set the image (three places) to your build.
"""


def manifest() -> str:
    """deploy/spiderpool.yaml: the chart rendered with its defaults."""
    return MANIFEST_HEADER + template().stdout


def write_manifest() -> Path:
    target = paths.repo_root() / MANIFEST
    target.write_text(manifest())
    return target


if __name__ == "__main__":
    print(write_manifest())
