"""Where the lab keeps its build cache and its running state.

Both live outside the work tree so a clean checkout stays clean and a rebuild is never needed
just because the tree was cloned again.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Environment variables a user may set to move things around.
CACHE_ENV = "SPIDERPOOL_LAB_CACHE"
LAB_DIR_ENV = "SPIDERPOOL_LAB_DIR"
PREFIX_ENV = "SPIDERPOOL_LAB_PREFIX"


def cache_dir() -> Path:
    """Build cache: compiled upstream binaries, one folder per component version."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "spiderpool-lab"


def lab_dir() -> Path:
    """Running lab: PKI, kubeconfig, component logs, node directories, state."""
    env = os.environ.get(LAB_DIR_ENV)
    if env:
        return Path(env)
    return cache_dir() / "lab"


def netns_prefix() -> str:
    """Prefix of every network namespace the lab creates; teardown removes exactly these."""
    return os.environ.get(PREFIX_ENV, "splab")


def repo_root() -> Path:
    """The source checkout (the lab's Go modules live in ``lab/go`` there)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "lab" / "go").is_dir() and (parent / "pyproject.toml").is_file():
            return parent
    raise RuntimeError("cannot find the project checkout (lab/go): the lab tooling runs from a source checkout")
