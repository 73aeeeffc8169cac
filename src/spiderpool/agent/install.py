"""Install the CNI plugin executables into a node's CNI bin dir.

Two forms, both replaced atomically so an exec never sees half an installation:

- **script** (the default, for nodes with Python 3.11+): the plugin module, precompiled, in
  ``<bin>/.spiderpool/``, and a one-line launcher ``<bin>/<name>`` whose first line names the
  interpreter (isolated mode, no site packages: nothing but the standard library is needed). The
  launcher imports the module, so an exec loads bytecode instead of compiling the source.
- **bundle** (nodes without Python): a self-contained PyInstaller folder built by
  ``python -m spiderpool.cni.bundle``, copied to ``<bin>/.spiderpool/<name>.bundle/``, with
  ``<bin>/<name>`` a symlink to its executable.

Either way the agent's socket path is written to ``<bin>/.spiderpool/socket``, where the plugin
looks for it when its network config names none.
"""

from __future__ import annotations

import os
import py_compile
import shutil
from importlib.util import cache_from_source
from pathlib import Path

from spiderpool.cni.plugins import PLUGINS

MODULE_DIR = ".spiderpool"


def render_launcher(module: str, module_dir: Path, *, python: str) -> str:
    return (
        f"#!{python} -IS\n"
        "# Installed by spiderpool-agent; do not edit. The code is in the module named below.\n"
        f"import sys; sys.path[:0] = [{str(module_dir)!r}]; import {module}; sys.exit({module}.main())\n"
    )


def _write(target: Path, text: str, mode: int) -> None:
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    tmp.chmod(mode)
    tmp.replace(target)


def _link(target: Path, to: str) -> None:
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(to)
    tmp.replace(target)


def _install_bundle(name: str, bundle: Path, module_dir: Path) -> str:
    """Copy a bundle folder into place beside the old one, then swap; returns the link target."""
    if not (bundle / name).is_file():
        raise FileNotFoundError(f"{bundle} holds no executable {name!r}: build it with python -m spiderpool.cni.bundle")
    final = module_dir / f"{name}.bundle"
    staging = module_dir / f".{name}.bundle.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(bundle, staging, symlinks=True)
    old = module_dir / f".{name}.bundle.old-{os.getpid()}"
    if final.exists():
        final.rename(old)  # a running exec keeps its open files
    staging.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return f"{MODULE_DIR}/{name}.bundle/{name}"


def install_plugins(bin_dir: Path, *, python: str, socket_path: str, bundle_dir: Path | None = None) -> list[Path]:
    """Install every plugin as a script run by ``python``, or from ``bundle_dir/<name>/`` bundles."""
    module_dir = bin_dir / MODULE_DIR
    module_dir.mkdir(parents=True, exist_ok=True)
    _write(module_dir / "socket", socket_path + "\n", 0o644)
    out = []
    for name, src in PLUGINS.items():
        target = bin_dir / name
        if bundle_dir is not None:
            _link(target, _install_bundle(name, bundle_dir / name, module_dir))
        else:
            module = src.stem
            source = module_dir / f"{module}.py"
            _write(source, src.read_text(), 0o644)
            # Compiled here once, so no exec pays for it (an interpreter of another version recompiles).
            py_compile.compile(str(source), cfile=cache_from_source(str(source)), doraise=True)
            _write(target, render_launcher(module, module_dir, python=python), 0o755)
        out.append(target)
    return out


def missing_plugins(bin_dir: Path) -> list[str]:
    """Installed names that no longer lead to an executable (deleted, or a link whose bundle went),
    and the socket file: what a node's clean-up, image reset or an admin's ``rm`` took away."""
    out = [name for name in PLUGINS if not os.access(bin_dir / name, os.X_OK)]
    if not (bin_dir / MODULE_DIR / "socket").is_file():
        out.append(f"{MODULE_DIR}/socket")
    return out
