"""Install the CNI plugin executables into a node's CNI bin dir.

Two forms, both replaced atomically so an exec never sees half an installation:

- **script** (the default, for nodes with Python 3.11+): the plugin module, precompiled, in
  ``<bin>/.spiderpool/``, and a one-line launcher ``<bin>/<name>`` whose first line names the
  interpreter (isolated mode, no site packages: nothing but the standard library is needed). The
  launcher imports the module, so an exec loads bytecode instead of compiling the source.
- **relay** (what the image installs; any node): the static executable built by
  ``python -m spiderpool.cni.relay``, copied to ``<bin>/.spiderpool/spiderpool-relay``, with
  ``<bin>/<name>`` a symlink to it. It forwards each call to this agent, which runs the same
  Python plugin (``spiderpool.agent.relay``).

Either way the agent's socket path is written to ``<bin>/.spiderpool/socket``, where the plugin
looks for it when its network config names none, and the installed files say which spiderpool
version installed them (a ``# spiderpool-version:`` line in the launcher, a
``spiderpool-relay.version`` file beside the relay): ``inspect_plugins`` reads that back for
``kubectl spiderpool doctor``.
"""

from __future__ import annotations

import os
import py_compile
import shutil
from dataclasses import dataclass
from importlib.util import cache_from_source
from pathlib import Path
from typing import Any

from spiderpool import __version__
from spiderpool.cni.plugins import PLUGINS

MODULE_DIR = ".spiderpool"
#: the launcher's line naming the version that installed it
VERSION_LINE = "# spiderpool-version: "
#: the installed relay, in MODULE_DIR, and beside it the version that installed it
RELAY = "spiderpool-relay"
RELAY_VERSION_FILE = f"{RELAY}.version"
_LAUNCHER_MARK = "# Installed by spiderpool-agent"


def render_launcher(module: str, module_dir: Path, *, python: str, version: str = __version__) -> str:
    return (
        f"#!{python} -IS\n"
        f"{_LAUNCHER_MARK}; do not edit. The code is in the module named below.\n"
        f"{VERSION_LINE}{version}\n"
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


def _install_relay(relay: Path, module_dir: Path) -> str:
    """Copy the relay into place (atomically: a running exec keeps the old file); returns the
    links' target."""
    if not relay.is_file():
        raise FileNotFoundError(f"no relay at {relay}: build it with python -m spiderpool.cni.relay")
    final = module_dir / RELAY
    tmp = module_dir / f".{RELAY}.tmp-{os.getpid()}"
    shutil.copyfile(relay, tmp)
    tmp.chmod(0o755)
    tmp.replace(final)
    _write(module_dir / RELAY_VERSION_FILE, __version__ + "\n", 0o644)
    return f"{MODULE_DIR}/{RELAY}"


def install_plugins(bin_dir: Path, *, python: str, socket_path: str, relay: Path | None = None) -> list[Path]:
    """Install every plugin as a script run by ``python``, or as links to the static ``relay``."""
    module_dir = bin_dir / MODULE_DIR
    module_dir.mkdir(parents=True, exist_ok=True)
    _write(module_dir / "socket", socket_path + "\n", 0o644)
    link = _install_relay(relay, module_dir) if relay is not None else ""
    out = []
    for name, src in PLUGINS.items():
        target = bin_dir / name
        if link:
            _link(target, link)
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
    """Installed names that no longer lead to an executable (deleted, or a link whose relay went),
    and the socket file: what a node's clean-up, image reset or an admin's ``rm`` took away."""
    out = [name for name in PLUGINS if not os.access(bin_dir / name, os.X_OK)]
    if not (bin_dir / MODULE_DIR / "socket").is_file():
        out.append(f"{MODULE_DIR}/socket")
    return out


@dataclass(frozen=True)
class Installed:
    """One plugin as found in the bin dir."""

    name: str
    #: ``<bin>/<name>`` leads to an executable
    present: bool
    #: script | relay | other (a file spiderpool-agent did not write) | missing
    form: str
    #: the spiderpool version that installed it (None: not known, e.g. another program's file)
    version: str | None
    #: what else is wrong (a launcher whose module is gone)
    problem: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "present": self.present,
            "form": self.form,
            "version": self.version,
            "problem": self.problem or None,
        }


def _read_text(path: Path, limit: int = 4096) -> str | None:
    try:
        with path.open("rb") as f:
            return f.read(limit).decode(errors="replace")
    except OSError:
        return None


def inspect_plugins(bin_dir: Path) -> list[Installed]:
    """Each plugin in ``bin_dir``: whether it is there, in which form, and the version that installed it."""
    out = []
    for name, src in PLUGINS.items():
        target = bin_dir / name
        present = os.access(target, os.X_OK)
        version: str | None = None
        problem = ""
        if target.is_symlink():
            link = os.readlink(target)
            if link == f"{MODULE_DIR}/{RELAY}":
                form = "relay"
                stamp = _read_text(bin_dir / MODULE_DIR / RELAY_VERSION_FILE)
                version = (stamp or "").strip() or None
                if not present:
                    problem = f"the relay {MODULE_DIR}/{RELAY} is gone"
            else:
                form = "other"
                problem = f"a link to {link}, not to the relay spiderpool-agent installs"
        elif target.is_file():
            head = _read_text(target) or ""
            if head.startswith("#!") and _LAUNCHER_MARK in head:
                form = "script"
                for line in head.splitlines():
                    if line.startswith(VERSION_LINE):
                        version = line[len(VERSION_LINE) :].strip() or None
                if not (bin_dir / MODULE_DIR / f"{src.stem}.py").is_file():
                    problem = f"its module {MODULE_DIR}/{src.stem}.py is gone"
            else:
                form = "other"
                problem = "not a file spiderpool-agent wrote"
        else:
            form = "missing"
        out.append(Installed(name, present, form, version, problem))
    return out
