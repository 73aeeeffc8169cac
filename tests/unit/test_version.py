"""One version: pyproject.toml's. The package, the chart and the image the lab builds all say it."""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml

import spiderpool
from spiderpool_lab import images

ROOT = Path(__file__).resolve().parents[2]


def test_the_package_the_chart_and_the_image_carry_pyprojects_version() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert spiderpool.__version__ == version
    chart = yaml.safe_load((ROOT / "charts/spiderpool/Chart.yaml").read_text())
    assert (chart["version"], chart["appVersion"]) == (version, version), "set them to pyproject.toml's version"
    (spec,) = [s for s in images._specs() if s.name == "spiderpool"]
    assert spec.refs == (f"spiderpool-python:{version}",)
