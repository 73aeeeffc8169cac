"""docs/install.md on the lab, as a user with a cluster of their own runs it: the image built with
``make image`` and pushed with ``make image-push`` to a registry (CNCF distribution, on a lab
address), the chart packaged with ``make chart`` and served as a Helm repository, ``helm repo add``,
the chart pushed to the registry (``make chart-push``) and read back from it,
the page's ``helm install`` line, the nodes pulling the image from the registry (none imported),
the walkthrough's Deployment Running with its auto-pool, ``kubectl spiderpool doctor``, the
page's uninstall. And a wrong registry: ``helm install --wait`` fails within a minute, naming the
image.

The commands are read from the page itself; the only substitutions are the page's placeholders
(the registry, the repository's URL), ``BASE`` (no Docker Hub here: the lab's Debian base) and the
builder (buildah with the lab's storage, so the machine's container storage is left alone)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

from spiderpool import __version__
from spiderpool_lab import build, demo, helm, images, install, noderuntime, procs, registry
from spiderpool_lab.cluster import Lab
from tests import stack
from tests.helpers import apply, delete_walkthrough_subnet, get_json, spiderpool_cli, wait_running
from tests.ipam.conftest import wait_no_records
from tests.ipam.test_autopool import DEPLOYMENT, SUBNET, auto_pools
from tests.stack import Agents, Controllers

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "install.md"
PAGE_REGISTRY = "registry.example.com/spiderpool"
PAGE_REPO = "https://charts.example.com/spiderpool"
PAGE_OCI = "oci://registry.example.com/charts"
NS = "install-page"
APP = "custom-ippool-deploy"
REPO_PROCESS = "install-page-repo"


def page_commands() -> list[str]:
    """Every command of the page's ``sh`` blocks (continuation lines joined, comments dropped)."""
    out = []
    for block in re.findall(r"```sh\n(.*?)```", PAGE.read_text(), flags=re.S):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split("  #", 1)[0].strip()
            if line and not line.startswith("#"):
                out.append(re.sub(r"\s+", " ", line))
    return out


def page_command(prefix: str) -> str:
    found = [c for c in page_commands() if c.startswith(prefix)]
    assert found, f"docs/install.md has no command starting with {prefix!r}"
    return found[0]


def _env(lab: Lab) -> dict[str, str]:
    """The user's shell: the lab's helm and kubectl first on PATH, its kubeconfig, the builder."""
    path = os.pathsep.join(
        [str(build.binary("helm").parent), str(build.binary("kubectl").parent), os.path.dirname(sys.executable)]
    )
    return dict(
        helm.env(lab),
        PATH=path + os.pathsep + os.environ.get("PATH", ""),
        BUILDER=shlex.join(images.buildah_argv()),
        BUILD_FLAGS="--isolation=chroot --network=host --layers",
    )


def _sh(lab: Lab, command: str, *, netns: bool = False, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run one of the page's commands (in the control plane's network namespace when it reaches the
    registry: a lab address is never reached from the machine's root namespace)."""
    argv = ["sh", "-c", command]
    if netns:
        argv = registry.in_control_plane(lab, argv)
    return subprocess.run(argv, cwd=ROOT, env=_env(lab), capture_output=True, text=True, timeout=timeout)


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"{proc.args}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _uninstall(lab: Lab, agents: Agents, controllers: Controllers) -> None:
    helm.run(lab, "uninstall", stack.RELEASE, "--namespace", stack.NS, "--wait", "--timeout", "3m", check=False)
    procs.wait_for(lambda: not agents.pods() and not controllers.pods(), timeout=180, what="spiderpool's pods gone")


def test_the_install_page_end_to_end(agents: Agents, controllers: Controllers) -> None:
    lab = agents.lab
    at = registry.serve(lab)
    reg = f"{at}/spiderpool"
    # 1. the image: built here, pushed to the registry
    _ok(_sh(lab, page_command("make image") + f" BASE={images.BASE_REF}", timeout=1200))
    push = page_command("make image-push").replace(PAGE_REGISTRY, reg) + " TLS_VERIFY=false"
    _ok(_sh(lab, push, netns=True))
    probe = ["curl", "-sf", f"http://{at}/v2/spiderpool/spiderpool-python/tags/list"]
    tags = subprocess.run(registry.in_control_plane(lab, probe), capture_output=True, text=True)
    assert f'"{__version__}"' in tags.stdout, tags.stdout + tags.stderr
    inspect = subprocess.run(
        images.buildah_argv("inspect", "--type", "image", f"spiderpool-python:{__version__}"),
        capture_output=True,
        text=True,
    )
    labels = json.loads(inspect.stdout)["OCIv1"]["config"]["Labels"]
    assert labels["org.opencontainers.image.version"] == __version__, labels
    assert len(labels["org.opencontainers.image.revision"]) == 40, labels  # the commit built
    # 2. the chart: packaged, indexed, served, added
    if lab.process_alive(REPO_PROCESS):  # (one left by an earlier run may serve another checkout)
        lab.stop_process(REPO_PROCESS)
    url = helm.serve_directory(lab, REPO_PROCESS, ROOT / "dist" / "chart")  # (make chart fills it next)
    _ok(_sh(lab, page_command("make chart CHART_URL=").replace(PAGE_REPO, url.rstrip("/"))))
    helm.run(lab, "repo", "remove", "spiderpool", check=False)  # (what another test may have added)
    _ok(_sh(lab, page_command("helm repo add").replace(PAGE_REPO, url.rstrip("/"))))
    _ok(_sh(lab, page_command("helm repo update")))
    assert "spiderpool/spiderpool" in _ok(_sh(lab, "helm search repo spiderpool/spiderpool"))
    # ... and pushed to the registry as an OCI artifact, which serves it back
    oci = f"oci://{at}/charts"
    _ok(_sh(lab, page_command("make chart chart-push").replace(PAGE_OCI, oci) + " PLAIN_HTTP=true", netns=True))
    shown = _ok(_sh(lab, page_command("helm show chart oci://").replace(PAGE_OCI, oci) + " --plain-http", netns=True))
    assert f"version: {__version__}" in shown.splitlines(), shown

    _uninstall(lab, agents, controllers)
    lab.reset_cni_config()
    install.multus(lab)  # (the page's Multus manifest is on the internet: the lab's, as the walkthrough's)
    apply(lab, json.dumps(demo.NAD))
    try:
        # 3. the page's install line
        out = _ok(_sh(lab, page_command("helm install spiderpool spiderpool/spiderpool").replace(PAGE_REGISTRY, reg)))
        assert "STATUS: deployed" in out
        image = f"{reg}/spiderpool-python:{__version__}"
        for pod in agents.pods() + controllers.pods():
            assert pod["spec"]["containers"][0]["image"] == image
        for node in lab.nodes():  # pulled from the registry by each node's containerd
            listed = subprocess.run(
                lab.exec_argv(node.name, noderuntime.ctr_argv("images", "ls", "-q")), capture_output=True, text=True
            )
            assert image in listed.stdout.split(), listed.stdout + listed.stderr
        # 4. the walkthrough's Deployment, with its auto-pool
        apply(lab, SUBNET)
        lab.kubectl("create", "namespace", NS)
        lab.kubectl("apply", "-n", NS, "-f", "-", input_text=DEPLOYMENT)
        pods = wait_running(lab, NS, f"app={APP}", 2, timeout=180)
        assert all(p["status"]["podIP"].startswith("172.18.30.") for p in pods)
        assert len(auto_pools(lab)) == 1
        # 5. verify
        doctor = spiderpool_cli(lab, *page_command("kubectl spiderpool doctor").split()[2:], check=False)
        assert doctor.returncode == 0, doctor.stdout + doctor.stderr
        assert not [line for line in doctor.stdout.splitlines() if line.startswith("FAIL")], doctor.stdout
        assert doctor.stdout.rstrip().endswith(" 0 FAIL"), doctor.stdout
    finally:
        lab.kubectl("delete", "namespace", NS, "--wait=false", check=False)
        wait_no_records(lab, NS, timeout=120)
        delete_walkthrough_subnet(lab)
        install.remove_multus(lab)
        lab.kubectl("delete", "network-attachment-definition", "-n", "kube-system", "macvlan-conf", check=False)
        lab.reset_cni_config()
        # the page's uninstall
        _sh(lab, page_command("helm uninstall spiderpool"))
        procs.wait_for(lambda: not agents.pods() and not controllers.pods(), timeout=180, what="uninstalled")

    # a wrong registry: Helm fails within a minute, naming the image
    wrong = f"{at}/wrong"
    started = time.monotonic()
    failed = _sh(lab, page_command("helm install spiderpool spiderpool/spiderpool").replace(PAGE_REGISTRY, wrong))
    took = time.monotonic() - started
    print(f"wrong registry: helm install --wait failed after {took:.1f} s")
    try:
        assert failed.returncode != 0, failed.stdout
        named = f"pull-{at}-wrong-spiderpool-python-{__version__}".replace(":", "-").replace(".", "-")
        assert f"job {named} failed: DeadlineExceeded" in failed.stderr, failed.stderr
        assert took <= 60, f"helm took {took:.0f}s to fail"
        assert not agents.pods(), "the agents were created though the image cannot be pulled"
    finally:
        helm.run(lab, "uninstall", stack.RELEASE, "--namespace", stack.NS, "--wait", check=False)
        lab.stop_process(REPO_PROCESS)
        stack.install(lab)
        controllers.wait_all()
        agents.wait_all()
    assert get_json(lab, "daemonset", "-n", stack.NS, "spiderpool-agent")["status"]["numberReady"] == len(lab.nodes())
