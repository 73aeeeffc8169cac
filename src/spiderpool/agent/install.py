"""Install the CNI plugin executables into a node's CNI bin dir.

A plugin is one stdlib-only Python module. Installed, it is two files: the module, precompiled,
in ``<bin>/.spiderpool/`` (its default agent socket set to this agent's), and a three-line launcher
``<bin>/<name>`` whose first line names the interpreter (isolated mode, no site packages: nothing
but the standard library is needed). The launcher imports the module, so every exec loads bytecode
instead of compiling the source. Files are replaced atomically, so an exec never sees half a file.
"""

from __future__ import annotations

import os
import py_compile
import re
from importlib.util import cache_from_source
from pathlib import Path

from spiderpool.cni import spiderpool_ipam

#: installed name -> module source
PLUGINS = {"spiderpool": Path(spiderpool_ipam.__file__)}
MODULE_DIR = ".spiderpool"


def render_module(source: str, *, socket_path: str) -> str:
    return re.sub(r'^DEFAULT_SOCKET = ".*"$', f"DEFAULT_SOCKET = {socket_path!r}", source, count=1, flags=re.M)


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


def install_plugins(bin_dir: Path, *, python: str, socket_path: str) -> list[Path]:
    module_dir = bin_dir / MODULE_DIR
    module_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for name, src in PLUGINS.items():
        module = src.stem
        source = module_dir / f"{module}.py"
        _write(source, render_module(src.read_text(), socket_path=socket_path), 0o644)
        # Compiled here once, so no exec pays for it (an interpreter of another version recompiles).
        compiled = Path(cache_from_source(str(source)))
        py_compile.compile(str(source), cfile=str(compiled), doraise=True)
        target = bin_dir / name
        if target.is_symlink():
            target.unlink()
        _write(target, render_launcher(module, module_dir, python=python), 0o755)
        out.append(target)
    return out
