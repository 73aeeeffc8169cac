"""Spiderpool: underlay networking for Kubernetes."""

from importlib.metadata import PackageNotFoundError, version

try:
    #: the one version, pyproject.toml's (the chart's version and appVersion are checked against it)
    __version__ = version("spiderpool")
except PackageNotFoundError:  # (a source tree that was never installed)
    __version__ = "0+unknown"
