"""The installed plugin form: the static relay, run against a live agent (the one the chart installed
on node1), with an empty environment and in a root filesystem that holds nothing but the relay."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from spiderpool.agent.install import MODULE_DIR, install_plugins
from spiderpool.cni import relay
from spiderpool_lab.cluster import Lab
from tests.stack import Agents

CONF: dict[str, Any] = {
    "cniVersion": "1.0.0",
    "name": "macvlan-conf",
    "type": "macvlan",
    "ipam": {"type": "spiderpool"},
}
POD = {"CNI_CONTAINERID": "c-relay", "CNI_NETNS": "/run/netns/none", "CNI_IFNAME": "eth0"}


def _run(exe: Path, command: str, conf: Any, **env: str) -> tuple[int, dict[str, Any]]:
    # an empty environment: no PATH, nothing from this test's interpreter
    out = subprocess.run(
        [str(exe)],
        input=conf if isinstance(conf, str) else json.dumps(conf),
        capture_output=True,
        text=True,
        env={"CNI_COMMAND": command, **env},
        timeout=60,
    )
    assert out.stderr == ""
    return out.returncode, json.loads(out.stdout) if out.stdout else {}


def glibc_needed(exe: Path) -> tuple[int, ...] | None:
    """The highest GLIBC_x.y symbol version ``exe`` needs (objdump -T), None when it needs none."""
    dump = subprocess.run(["objdump", "-T", str(exe)], capture_output=True, text=True)
    found = [
        tuple(int(p) for p in word.removeprefix("(").removesuffix(")").split("_", 1)[1].split("."))
        for word in dump.stdout.split()
        if word.strip("()").startswith("GLIBC_") and word.strip("()")[6:7].isdigit()
    ]
    return max(found) if found else None


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return relay.build(tmp_path_factory.mktemp("relay") / "spiderpool-relay")


def test_the_relay_forwards_every_call_to_the_python_plugin_in_the_agent(
    stack: Agents, built: Path, tmp_path: Path
) -> None:
    assert glibc_needed(built) is None  # static: it runs on any node, whatever its libc
    bin_dir = tmp_path / "opt-cni-bin"
    installed = install_plugins(bin_dir, python="/nonexistent/python", socket_path=stack.socket("node1"), relay=built)
    assert all(p.is_symlink() for p in installed)
    plugin = bin_dir / "spiderpool"
    for name in ("spiderpool", "veth", "coordinator"):
        code, out = _run(bin_dir / name, "VERSION", "")
        assert (code, out["supportedVersions"][-1]) == (0, "1.1.0")
    # the socket path the installer wrote leads to the agent, which runs the call
    assert _run(plugin, "STATUS", CONF) == (0, {})
    assert _run(bin_dir / "veth", "STATUS", CONF) == (0, {})
    args = "K8S_POD_NAMESPACE=default;K8S_POD_NAME=no-such-pod"
    code, out = _run(plugin, "ADD", CONF, **POD, CNI_ARGS=args)
    assert code == 1
    assert "pod default/no-such-pod does not exist" in out["msg"], out
    assert out["cniVersion"] == "1.0.0"
    # the config is judged by the Python plugin, key by key
    code, out = _run(plugin, "ADD", {**CONF, "ipam": {"type": "spiderpool", "ranges": []}}, **POD, CNI_ARGS=args)
    assert (code, out["code"]) == (1, 7)
    assert "unknown key ipam.ranges" in out["msg"]
    code, out = _run(plugin, "ADD", "{not json", **POD, CNI_ARGS=args)
    assert (code, out["code"]) == (1, 6)
    code, out = _run(plugin, "ADD", CONF, CNI_IFNAME="eth0", CNI_ARGS=args)
    assert out["code"] == 4
    assert "CNI_CONTAINERID" in out["msg"]
    code, out = _run(bin_dir / "veth", "ADD", {**CONF, "type": "veth"}, **POD, CNI_ARGS=args)
    assert out["code"] == 7
    assert "must be chained after" in out["msg"]
    # a DEL of what was never allocated succeeds, as the spec asks
    assert _run(plugin, "DEL", CONF, **POD) == (0, {})
    # what the relay answers itself: a line break in a variable, an unknown name, no agent
    code, out = _run(plugin, "ADD", CONF, **POD, CNI_ARGS="K8S_POD_NAME=x\nEvil: 1")
    assert out["code"] == 4
    assert "CNI_ARGS holds a character that is not printable ASCII" in out["msg"]
    shutil.copy(built, bin_dir / "macvlan-typo")
    code, out = _run(bin_dir / "macvlan-typo", "ADD", CONF, **POD, CNI_ARGS=args)
    assert out["code"] == 4
    assert "unknown name 'macvlan-typo'" in out["msg"]
    gone = {**CONF, "ipam": {"type": "spiderpool", "ipam_unix_socket_path": str(tmp_path / "nothing.sock")}}
    code, out = _run(plugin, "ADD", gone, **POD, CNI_ARGS=args)
    assert (code, out["code"], out["cniVersion"]) == (1, 11, "1.0.0")
    assert f"not reachable at {tmp_path / 'nothing.sock'}" in out["msg"]


def test_the_relay_runs_in_a_root_filesystem_without_any_libc(stack: Agents, built: Path, tmp_path: Path) -> None:
    """A node with another libc, or none the build knew: the root holds the relay and the agent's
    socket (bound in), nothing else."""
    root = tmp_path / "root"
    (root / "bin" / MODULE_DIR).mkdir(parents=True)
    (root / "run").mkdir()
    shutil.copy(built, root / "bin" / "spiderpool")
    (root / "bin" / MODULE_DIR / "socket").write_text("/run/agent.sock\n")
    (root / "run" / "agent.sock").touch()
    script = f"mount --bind {stack.socket('node1')} {root}/run/agent.sock && exec chroot {root} /bin/spiderpool"
    out = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        input=json.dumps(CONF),
        capture_output=True,
        text=True,
        env={"CNI_COMMAND": "STATUS", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        timeout=60,
    )
    assert (out.returncode, out.stdout, out.stderr) == (0, "", "")
    files = {str(f.relative_to(root)) for f in root.rglob("*") if not f.is_dir()}
    assert files == {"bin/spiderpool", f"bin/{MODULE_DIR}/socket", "run/agent.sock"}  # no libc, no loader


def test_every_installed_plugin_needs_glibc_2_28_at_most(stack: Agents, lab: Lab) -> None:
    """What the chart's agent put into a node's /opt/cni/bin runs on RHEL 8, Debian 10, Ubuntu 20.04."""
    bin_dir = lab.nodes()[0].cni_bin_dir
    for name in ("spiderpool", "veth", "coordinator"):
        exe = (bin_dir / name).resolve()
        assert exe.is_file(), f"{name} is not installed in {bin_dir}"
        need = glibc_needed(exe)
        assert need is None or need <= (2, 28), f"{name} ({exe}) needs GLIBC_{'.'.join(map(str, need))}"
