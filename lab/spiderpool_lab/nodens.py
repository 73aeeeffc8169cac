"""A lab node's mount namespace, held open by this process (``python -m spiderpool_lab.nodens DIR``).

Run inside the node's network namespace, in a new mount namespace (``unshare --mount``), it makes
the node's file system what a real node has, with nothing written to the machine's:

- ``/etc``, ``/opt``, ``/var`` and ``/run`` become overlays of the machine's (reads see the machine's
  files, writes land in the node's folder), so kubelet and containerd can create the paths they
  insist on (``/var/lib/kubelet/pki``, ``/run/containerd``, ``/var/log/pods``, ...);
- the node's own folders are bound over the places the runtime and the CNI plugins use:
  ``/etc/cni/net.d``, ``/opt/cni/bin``, ``/var/lib/cni``, ``/etc/containerd``,
  ``/var/lib/containerd``, ``/var/lib/kubelet``, ``/var/log/pods``, ``/var/log/containers``,
  ``/run/containerd``, ``/run/netns``, ``/run/spidernet`` (hostPath volumes then mean the node's
  folders, as on a node);
- ``/sys`` is a fresh sysfs of the node's network namespace (its ``/sys/class/net`` lists the node's
  links), with the cgroup tree moved back under it (``ip netns exec`` loses it, and runc then finds
  no cgroup mount);
- everything ends shared inside the node (kubelet's Bidirectional mounts need that), and private
  towards the machine.

It writes ``DIR/mountns.ready`` and then waits; the namespace lives as long as any process in it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

#: machine folder -> node sub-folder bound over it
BINDS = {
    "/etc/cni/net.d": "etc/cni/net.d",
    "/opt/cni/bin": "opt/cni/bin",
    "/var/lib/cni": "var/lib/cni",
    "/etc/containerd": "etc/containerd",
    "/var/lib/containerd": "var/lib/containerd",
    "/var/lib/kubelet": "var/lib/kubelet",
    "/var/log/pods": "var/log/pods",
    "/var/log/containers": "var/log/containers",
    "/run/containerd": "run/containerd",
    "/run/netns": "run/netns",
    # spiderpool-agent's socket folder (a hostPath): the tests talk to the agent there, as the plugin does
    "/run/spidernet": "run/spidernet",
}
OVERLAID = ("/etc", "/opt", "/var", "/run")


def _mount(*args: str) -> None:
    proc = subprocess.run(["mount", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"mount {' '.join(args)}: {proc.stderr.strip()}")


def folders(node_dir: Path) -> list[Path]:
    """Every folder of the node's own that the namespace needs (made by the lab beforehand)."""
    out = [node_dir / sub for sub in BINDS.values()]
    for top in OVERLAID:
        out += [node_dir / "overlay" / top.strip("/") / "upper", node_dir / "overlay" / top.strip("/") / "work"]
    out.append(node_dir / "overlay" / "cgroup-aside")
    return out


def setup(node_dir: Path) -> None:
    _mount("--make-rprivate", "/")
    for top in OVERLAID:
        ovl = node_dir / "overlay" / top.strip("/")
        _mount("-t", "overlay", "overlay", "-o", f"lowerdir={top},upperdir={ovl / 'upper'},workdir={ovl / 'work'}", top)
    aside = node_dir / "overlay" / "cgroup-aside"
    _mount("--rbind", "/sys/fs/cgroup", str(aside))
    _mount("-t", "sysfs", "sysfs", "/sys")
    _mount("--move", str(aside), "/sys/fs/cgroup")
    for target, sub in BINDS.items():
        Path(target).mkdir(parents=True, exist_ok=True)  # inside the overlay: the node's, not the machine's
        _mount("--bind", str(node_dir / sub), target)
    _mount("--make-rshared", "/")


def main() -> None:
    node_dir = Path(sys.argv[1])
    setup(node_dir)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    (node_dir / "mountns.ready").write_text("ready\n")
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
