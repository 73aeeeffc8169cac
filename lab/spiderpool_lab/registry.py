"""The lab's image registry: CNCF distribution (built from its Go module) on the control plane's
lab address, port 5000, plain HTTP. The nodes' containerd pulls from it (``hosts.toml`` under
``/etc/containerd/certs.d``, written at each node's start); ``make image-push`` pushes to it from
inside the control plane's network namespace (a lab address is never reached from the machine's
root namespace). Storage: ``<lab dir>/registry``, gone with ``down``."""

from __future__ import annotations

import subprocess

from spiderpool_lab import build, netns, noderuntime, procs, topology
from spiderpool_lab.cluster import Lab

PROCESS = "registry"
ADDRESS = noderuntime.REGISTRY


def in_control_plane(lab: Lab, argv: list[str]) -> list[str]:
    """``argv`` run in the control plane's network namespace, where the registry is reachable."""
    return netns.exec_argv(topology.control_plane_netns(lab.prefix), argv)


def serve(lab: Lab) -> str:
    """Start the registry (idempotent); returns its address (host:port)."""
    root = lab.dir / "registry"
    (root / "data").mkdir(parents=True, exist_ok=True)
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log: {level: warn, accesslog: {disabled: true}}\n"
        f"storage: {{filesystem: {{rootdirectory: {root / 'data'}}}, delete: {{enabled: true}}}}\n"
        f"http: {{addr: '{ADDRESS}'}}\n"
    )
    if not lab.process_alive(PROCESS):
        lab.start_process(
            PROCESS,
            [str(build.binary("registry")), "serve", str(config)],
            netns_name=topology.control_plane_netns(lab.prefix),
        )

    def answers() -> bool:
        probe = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://{ADDRESS}/v2/"]
        out = subprocess.run(in_control_plane(lab, probe), capture_output=True, text=True)
        return out.stdout.strip() == "200"

    procs.wait_for(answers, timeout=30, what=f"the lab registry at {ADDRESS}")
    return ADDRESS
