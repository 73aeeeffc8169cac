"""Build the CNI plugins as self-contained bundles, for nodes without Python.

A bundle is a PyInstaller ``--onedir`` folder: the executable plus the interpreter and the few
standard modules it needs. It starts in about 50 ms (a script run by the node's Python: about 12 ms;
PyInstaller's ``--onefile`` unpacks itself on every exec, about 300 ms). It links against the build
machine's glibc, so build it on (or for) the nodes' distribution. The agent installs it with
``--plugin-bundle DIR``.

    python -m spiderpool.cni.bundle --out dist/cni
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from spiderpool.cni.plugins import PLUGINS


def build(out: Path, *, progress: bool = True) -> dict[str, Path]:
    """Build every plugin into ``out/<name>/``; returns name -> executable. Names that share a
    module (``veth`` and ``coordinator``) share one build."""
    out.mkdir(parents=True, exist_ok=True)
    built: dict[str, Path] = {}
    first_of: dict[Path, str] = {}
    for name, source in PLUGINS.items():
        target = out / name
        if target.exists():
            shutil.rmtree(target)
        if source in first_of:  # an alias: the same bundle under another name
            shutil.copytree(out / first_of[source], target, symlinks=True)
            (target / first_of[source]).rename(target / name)
            built[name] = target / name
            continue
        first_of[source] = name
        if progress:
            print(f"[bundle] {name}: building with PyInstaller ...", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory(prefix="spiderpool-bundle-") as work:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "PyInstaller",
                    "--onedir",
                    "--noconfirm",
                    "--log-level=WARN",
                    f"--name={name}",
                    f"--distpath={work}/dist",
                    f"--workpath={work}/build",
                    f"--specpath={work}",
                    str(source),
                ],
                check=True,
            )
            shutil.move(f"{work}/dist/{name}", target)
        built[name] = target / name
        if progress:
            print(f"[bundle] {name}: {target}", file=sys.stderr, flush=True)
    return built


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m spiderpool.cni.bundle", description=__doc__)
    p.add_argument("--out", default="dist/cni", help="folder to put one bundle per plugin in")
    args = p.parse_args(argv)
    build(Path(args.out))


if __name__ == "__main__":
    main()
