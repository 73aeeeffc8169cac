"""What a lab node runs, and what it needs from the machine: containerd and kubelet configuration,
the node's cgroups, the machine-wide sysctls kubelet changes, and the images it imports.

The processes themselves are started by ``spiderpool_lab.cluster`` inside the node's network
namespace and the mount namespace ``spiderpool_lab.nodens`` holds.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from pathlib import Path

from spiderpool_lab import build, images, topology

CGROUP_ROOT = Path("/sys/fs/cgroup")
#: kubelet sets these at start (machine-wide, not per network namespace); the lab puts the
#: machine's values back at once, and ``down`` checks them
KUBELET_SYSCTLS = ("vm.overcommit_memory", "kernel.panic", "kernel.panic_on_oops")
RUNC = "/usr/sbin/runc"
SANDBOX_IMAGE = "registry.k8s.io/pause:3.10.2"
CONTAINERD_SOCKET = "/run/containerd/containerd.sock"
DNS_IP = "10.96.0.10"


# ------------------------------------------------------------------ sysctls
def _sysctl_path(key: str) -> Path:
    return Path("/proc/sys") / key.replace(".", "/")


def read_sysctls() -> dict[str, str]:
    return {k: _sysctl_path(k).read_text().strip() for k in KUBELET_SYSCTLS}


def machine_sysctls(record: Path) -> dict[str, str]:
    """The machine's own values, recorded once (in the lab cache, shared by every lab): read while
    no kubelet runs on the machine, so never a value a kubelet has just set."""
    try:
        saved = json.loads(record.read_text())
        if isinstance(saved, dict) and set(saved) == set(KUBELET_SYSCTLS):
            return {str(k): str(v) for k, v in saved.items()}
    except (OSError, ValueError):
        pass
    if _kubelet_running():
        raise RuntimeError(
            f"a kubelet runs on this machine and the lab has no record of the machine's {', '.join(KUBELET_SYSCTLS)}:"
            " stop it first"
        )
    values = read_sysctls()
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(values, indent=2) + "\n")
    return values


def _kubelet_running() -> bool:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == "kubelet":
                    return True
    return False


def restore_sysctls(saved: dict[str, str]) -> dict[str, str]:
    """Write the machine's values back; return what had changed (key -> value found)."""
    changed = {}
    for key, value in saved.items():
        now = _sysctl_path(key).read_text().strip()
        if now != value:
            changed[key] = now
            _sysctl_path(key).write_text(value)
    return changed


# ------------------------------------------------------------------ cgroups
def _hierarchies() -> list[Path]:
    """The cgroup hierarchies mounted under /sys/fs/cgroup: the v1 ones kubelet uses here, and the
    (empty) v2 one beside them, where runc makes the containers' cgroups too."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" - ", 1)
        if len(fields) != 2 or not fields[1].startswith(("cgroup ", "cgroup2 ")):
            continue
        mount_point = Path(fields[0].split()[4])
        if mount_point.parent == CGROUP_ROOT:
            out.append(mount_point)
    return sorted(out)


def make_cgroup_root(name: str) -> None:
    """``/<name>`` in every hierarchy, for kubelet's cgroupRoot (cpuset needs its cpus and mems set
    before anything can join it)."""
    for hierarchy in _hierarchies():
        path = hierarchy / name
        path.mkdir(exist_ok=True)
        if hierarchy.name == "cpuset" or "cpuset" in hierarchy.name.split(","):
            for key in ("cpuset.cpus", "cpuset.mems"):
                if not (path / key).read_text().strip():
                    (path / key).write_text((hierarchy / key).read_text())


def cgroup_pids(name: str) -> set[int]:
    """Every process in the node's cgroups (its pods' containers), in any hierarchy."""
    pids: set[int] = set()
    for hierarchy in _hierarchies():
        root = hierarchy / name
        if not root.is_dir():
            continue
        for procs in root.rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in procs.read_text().split())
    return pids


def kill_cgroup(name: str) -> None:
    for pid in cgroup_pids(name):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def remove_cgroup_root(name: str) -> list[str]:
    """Remove the node's cgroups, deepest first; return what could not be removed."""
    left = []
    for hierarchy in _hierarchies():
        root = hierarchy / name
        if not root.is_dir():
            continue
        dirs = sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
        for d in [*dirs, root]:
            try:
                d.rmdir()
            except OSError:
                left.append(str(d))
    return left


# ------------------------------------------------------------ containerd
#: the lab's image registry (spiderpool_lab.registry): plain HTTP on the control plane's address
REGISTRY = f"{topology.CONTROL_PLANE_IP}:5000"


def registry_hosts() -> str:
    """containerd's ``certs.d/<REGISTRY>/hosts.toml``: pull from the lab registry over HTTP."""
    return f'server = "http://{REGISTRY}"\n\n[host."http://{REGISTRY}"]\n  capabilities = ["pull", "resolve"]\n'


def containerd_config() -> str:
    """containerd 2 (config version 3) for a lab node: runc from Debian, CNI from the node's folders,
    the lab's pause image, the lab registry's hosts (``certs.d``); AppArmor off and oom_score_adj
    restricted, as this machine withholds CAP_SYS_RESOURCE (the sandbox fails otherwise)."""
    return f"""version = 3
root = "/var/lib/containerd"
state = "/run/containerd"

[grpc]
  address = "{CONTAINERD_SOCKET}"

[plugins]
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = "overlayfs"
    [plugins.'io.containerd.cri.v1.images'.registry]
      config_path = "/etc/containerd/certs.d"
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = "{SANDBOX_IMAGE}"
  [plugins.'io.containerd.cri.v1.runtime']
    enable_selinux = false
    disable_apparmor = true
    restrict_oom_score_adj = true
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = "runc"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = "{RUNC}"
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ["/opt/cni/bin"]
      conf_dir = "/etc/cni/net.d"
"""


def containerd_env() -> dict[str, str]:
    """containerd finds its shim on PATH."""
    shim_dir = build.binary("containerd-shim-runc-v2").parent
    return {"PATH": f"{shim_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}


# --------------------------------------------------------------- kubelet
def kubelet_config(*, node_ip: str, cgroup_root: str, ca_file: Path, resolv_conf: Path) -> str:
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # this machine has cgroup v1 (an empty v2 hierarchy beside it) and no systemd
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": f"/{cgroup_root}",
        "containerRuntimeEndpoint": f"unix://{CONTAINERD_SOCKET}",
        "address": node_ip,
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "failSwapOn": False,
        "resolvConf": str(resolv_conf),
        # no DNS server runs in the lab; the address keeps ClusterFirst pods from warning on every sync
        "clusterDNS": [DNS_IP],
        "clusterDomain": "cluster.local",
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(ca_file)},
        },
        # the apiserver's client certificate is the lab CA's admin: exec, logs, port-forward
        "authorization": {"mode": "AlwaysAllow"},
        # the machine's disk and memory are shared by everything: do not evict over them
        "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        "syncFrequency": "10s",
        "fileCheckFrequency": "5s",
        "nodeStatusUpdateFrequency": "5s",
        "shutdownGracePeriod": "0s",
    }
    return json.dumps(config, indent=2)


# ---------------------------------------------------------------- images
def ctr_argv(*args: str) -> list[str]:
    return [str(build.binary("ctr")), f"--address={CONTAINERD_SOCKET}", "--namespace=k8s.io", *args]


def import_images(run_in_node: list[str], imported_file: Path) -> bool:
    """Import the images' archive unless the node has it already; whether it did.
    ``run_in_node`` is the prefix that runs a command inside the node's namespaces."""
    archive = images.bundle_path()
    if imported_file.exists() and imported_file.read_text().strip() == str(archive):
        return False
    if not archive.exists():
        raise images.ImageError(f"the images' archive {archive} is missing: run 'spiderpool-lab build'")
    proc = subprocess.run([*run_in_node, *ctr_argv("images", "import", str(archive))], capture_output=True, text=True)
    if proc.returncode != 0:
        raise images.ImageError(f"importing the images into a node failed: {proc.stderr.strip()[-500:]}")
    imported_file.write_text(str(archive) + "\n")
    return True
