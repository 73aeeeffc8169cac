"""What every benchmark script shares: progress lines, percentiles, a lab with the CRDs, and waiting
for an earlier run's leftovers to go."""

from __future__ import annotations

import sys

from spiderpool.api import crds
from spiderpool_lab import install, procs
from spiderpool_lab.cluster import Lab


def say(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0 when there are no values: a run where everything failed)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def lab_with_crds(nodes: int = 2) -> Lab:
    """The lab up (built or reused) with spiderpool's CRDs applied."""
    lab = Lab()
    lab.up(nodes=nodes)
    for text in crds.render_all().values():
        lab.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input_text=text)
    return lab


def wait_absent(lab: Lab, *objects: tuple[str, str]) -> None:
    """Wait until each (kind, name) is gone: an earlier run's may still be terminating."""
    for kind, name in objects:
        procs.wait_for(
            lambda kind=kind, name=name: lab.kubectl("get", kind, name, check=False).returncode != 0,
            timeout=300,
            what=f"{kind} {name} of an earlier run to go",
        )


def spiderpool_up(lab: Lab) -> bool:
    """spiderpool installed as users install it (its Helm chart); whether this call
    installed it (what ran before is left alone)."""
    present = lab.kubectl("get", "daemonset", "-n", "kube-system", "spiderpool-agent", check=False)
    if present.returncode == 0:
        return False
    install.spiderpool(lab)
    return True


def spiderpool_down(lab: Lab, installed: bool) -> None:
    """Remove spiderpool if ``spiderpool_up`` installed it."""
    if installed:
        install.uninstall_spiderpool(lab)
