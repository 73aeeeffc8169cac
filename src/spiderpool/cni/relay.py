"""Build the CNI relay: the static executable installed for every plugin name (``relay.c``).

The runtime runs a plugin executable for every pod's ADD and DEL, on the node, outside any
container: it must start fast and run on whatever libc the node has. The relay is C linked
statically (no libc needed on the node, about 1 ms per exec); it forwards the call to the agent,
where the Python plugin in this package runs it. docs/design.md has the measurements.

    python -m spiderpool.cni.relay --out /opt/spiderpool/cni/spiderpool-relay
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from pathlib import Path

SOURCE = Path(__file__).with_name("relay.c")
#: -static: nothing from the node's libc; -Os -s: small (it is copied to every node)
FLAGS = ("-static", "-Os", "-s", "-Wall", "-Wextra", "-Werror", "-std=gnu11")


class BuildError(RuntimeError):
    pass


def build(out: Path, *, cc: str | None = None) -> Path:
    """Compile the relay to ``out`` (replaced atomically); returns ``out``."""
    compiler = cc or os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise BuildError("no C compiler: install the Debian packages gcc and libc6-dev")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    proc = subprocess.run([compiler, *FLAGS, "-o", str(tmp), str(SOURCE)], capture_output=True, text=True)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise BuildError(f"{compiler} failed to build the relay:\n{proc.stderr.strip()}")
    tmp.replace(out)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m spiderpool.cni.relay", description=__doc__)
    p.add_argument("--out", default="dist/spiderpool-relay", help="the executable to write")
    build(Path(p.parse_args(argv).out))


if __name__ == "__main__":
    main()
