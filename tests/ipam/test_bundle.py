"""The plugin as a self-contained bundle (nodes without Python): built with PyInstaller, installed by
the agent's installer, and run with an empty environment against a live agent."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from spiderpool.agent.install import install_plugins
from spiderpool.cni import bundle
from tests.stack import Agents


def test_bundle_runs_without_python_against_the_agent(stack: Agents, tmp_path: Path) -> None:
    built = bundle.build(tmp_path / "dist", progress=False)
    assert built["spiderpool"].read_bytes()[:4] == b"\x7fELF"  # a binary, not a script for some Python
    bin_dir = tmp_path / "opt-cni-bin"
    installed = install_plugins(
        bin_dir, python="/nonexistent/python", socket_path=stack.socket("node1"), bundle_dir=tmp_path / "dist"
    )
    plugin = bin_dir / "spiderpool"
    assert plugin in installed
    assert all(p.is_symlink() for p in installed)
    for name in ("veth", "coordinator"):  # the chained plugin, bundled too
        out = subprocess.run([str(bin_dir / name)], capture_output=True, text=True, env={"CNI_COMMAND": "VERSION"})
        assert json.loads(out.stdout)["supportedVersions"][-1] == "1.1.0", out.stderr

    def run(command: str, conf: dict[str, object], **env: str) -> subprocess.CompletedProcess[str]:
        # an empty environment: no PATH, no PYTHONHOME, nothing from this test's interpreter
        return subprocess.run(
            [str(plugin)],
            input=json.dumps(conf),
            capture_output=True,
            text=True,
            env={"CNI_COMMAND": command, **env},
            timeout=60,
        )

    conf = {"cniVersion": "1.1.0", "name": "macvlan-conf", "type": "macvlan", "ipam": {"type": "spiderpool"}}
    version = run("VERSION", conf)
    assert json.loads(version.stdout)["supportedVersions"][-1] == "1.1.0"
    status = run("STATUS", conf)  # finds the agent through the socket path the installer wrote
    assert status.returncode == 0, status.stdout
    add = run(
        "ADD",
        conf,
        CNI_CONTAINERID="c-bundle",
        CNI_NETNS="/run/netns/none",
        CNI_IFNAME="eth0",
        CNI_ARGS="K8S_POD_NAMESPACE=default;K8S_POD_NAME=no-such-pod",
    )
    assert add.returncode == 1
    assert "pod default/no-such-pod does not exist" in json.loads(add.stdout)["msg"]
    bad = run(
        "ADD",
        {**conf, "ipam": {"type": "spiderpool", "ranges": []}},
        CNI_CONTAINERID="c",
        CNI_NETNS="/x",
        CNI_IFNAME="eth0",
        CNI_ARGS="K8S_POD_NAMESPACE=default;K8S_POD_NAME=x",
    )
    assert json.loads(bad.stdout)["code"] == 7
    assert "unknown key ipam.ranges" in json.loads(bad.stdout)["msg"]
