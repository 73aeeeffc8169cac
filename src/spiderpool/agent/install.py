"""Install the CNI plugin executables into a node's CNI bin dir.

A plugin is one stdlib-only Python file. Installed, its first line names the interpreter to run it
with (isolated mode, no site packages: nothing but the standard library is needed) and its default
agent socket is this agent's. Files are replaced atomically, so a plugin exec never sees half a file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from spiderpool.cni import spiderpool_ipam

PLUGINS = {"spiderpool": Path(spiderpool_ipam.__file__)}


def render(source: str, *, python: str, socket_path: str) -> str:
    body = re.sub(r'^DEFAULT_SOCKET = ".*"$', f"DEFAULT_SOCKET = {socket_path!r}", source, count=1, flags=re.M)
    return f"#!{python} -IS\n# Installed by spiderpool-agent; do not edit.\n{body}"


def install_plugins(bin_dir: Path, *, python: str, socket_path: str) -> list[Path]:
    bin_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for name, src in PLUGINS.items():
        target = bin_dir / name
        if target.is_symlink():
            target.unlink()
        tmp = bin_dir / f".{name}.tmp-{os.getpid()}"
        tmp.write_text(render(src.read_text(), python=python, socket_path=socket_path))
        tmp.chmod(0o755)
        tmp.replace(target)
        out.append(target)
    return out
