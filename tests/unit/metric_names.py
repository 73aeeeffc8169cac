"""The metrics the processes export, and the metric names a PromQL expression uses: shared by the
metrics table test (test_metrics_docs.py) and the dashboard and alert tests (test_chart.py).

``python -m tests.unit.metric_names MODULE...`` imports the modules in a fresh interpreter and
prints, as JSON, the ``spiderpool_`` families they register: what one process serves."""

from __future__ import annotations

import functools
import importlib
import json
import pkgutil
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

PREFIX = "spiderpool_"
#: the processes that serve /metrics, by the module their entry point runs
COMPONENTS = {"agent": "spiderpool.agent.main", "controller": "spiderpool.controller.main"}
#: what each type is scraped as (a counter's family name is registered without ``_total``)
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Family:
    name: str
    type: str
    labels: tuple[str, ...]

    @property
    def listed_as(self) -> str:
        """Its name in docs/metrics.md: as scraped, but a histogram by its base name."""
        return self.name + "_total" if self.type == "counter" else self.name

    @property
    def series(self) -> tuple[str, ...]:
        """The names a query may use."""
        return tuple(self.name + s for s in SUFFIXES[self.type])


def _registered() -> dict[str, Family]:
    from prometheus_client import REGISTRY
    from prometheus_client.metrics import MetricWrapperBase

    out = {}
    # (the collectors themselves: a labelled metric has no samples, so its label names are known
    # only to its collector)
    for collector in list(REGISTRY._collector_to_names):
        if not isinstance(collector, MetricWrapperBase):
            continue
        (family,) = collector.describe()
        if family.name.startswith(PREFIX):
            out[family.name] = Family(family.name, family.type, tuple(collector._labelnames))
    return out


def all_modules() -> list[str]:
    """Every module of the product (a metric defined anywhere under src/ counts)."""
    import spiderpool

    return [
        m.name for m in pkgutil.walk_packages(spiderpool.__path__, "spiderpool.") if not m.name.endswith("__main__")
    ]


def registered_by(*modules: str) -> dict[str, Family]:
    """The families a process that imports ``modules`` registers (in a fresh interpreter, so the
    answer is that process's, not the test session's)."""
    proc = subprocess.run(
        [sys.executable, "-m", "tests.unit.metric_names", *modules], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, f"importing {modules or 'every module'} failed:\n{proc.stderr}"
    return {f["name"]: Family(f["name"], f["type"], tuple(f["labels"])) for f in json.loads(proc.stdout)}


@functools.cache
def exported() -> dict[str, Family]:
    """Every family the agent or the controller serves."""
    out: dict[str, Family] = {}
    for module in COMPONENTS.values():
        out.update(registered_by(module))
    return out


# --- PromQL, read just enough to find metric names and check their shape ---

_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_PAIRS = {")": "(", "]": "[", "}": "{"}
#: functions over a range of a counter's (or a histogram series') values
_COUNTER_FUNCTIONS = ("rate", "irate", "increase")


def _code(expr: str) -> str:
    """The expression without its string literals (label values may hold anything)."""
    return _STRING.sub('""', expr)


def names_in(expr: str) -> set[str]:
    """The ``spiderpool_`` metric names an expression selects (not label names or functions:
    a label name never starts with ``spiderpool_``; a function name is followed by ``(``)."""
    code = _code(expr)
    out = set()
    for m in _IDENT.finditer(code):
        if m.group().startswith(PREFIX) and not code[m.end() :].lstrip().startswith("("):
            if m.start() > 0 and code[m.start() - 1] in "$.":  # a Grafana variable or a field
                continue
            out.add(m.group())
    return out


def labels_kept(expr: str) -> set[str] | None:
    """The labels an expression's result keeps when it aggregates (every ``by (...)``, and
    ``absent()``'s none), or None when it keeps its series' own."""
    code = _code(expr)
    groups = re.findall(r"\bby\s*\(([^)]*)\)", code)
    if groups:
        return {label.strip() for g in groups for label in g.split(",") if label.strip()}
    if re.match(r"\s*absent\s*\(", code):
        return set()
    return None


def problems(expr: str, families: dict[str, Family]) -> list[str]:
    """What is wrong with an expression: unbalanced brackets, or a metric name that is not
    exported (with the hint when it is a counter without ``_total`` or a bare histogram), or a
    rate over a gauge."""
    found = []
    code = _code(expr)
    if code.count('"') % 2 or "'" in code or "`" in code:
        found.append("an unterminated string")
    stack: list[str] = []
    for ch in code:
        if ch in "([{":
            stack.append(ch)
        elif ch in _PAIRS and (not stack or stack.pop() != _PAIRS[ch]):
            found.append(f"unbalanced {ch!r}")
            break
    if stack:
        found.append(f"unclosed {''.join(stack)!r}")
    by_series = {s: f for f in families.values() for s in f.series}
    for name in sorted(names_in(expr)):
        family = by_series.get(name)
        if family is None:
            hint = ""
            if name in families:
                hint = f": a {families[name].type}, use {' / '.join(families[name].series)}"
            found.append(f"{name} is not exported{hint}")
    for fn, name in re.findall(rf"\b({'|'.join(_COUNTER_FUNCTIONS)})\s*\(\s*({PREFIX}\w+)", code):
        family = by_series.get(name)
        if family is not None and family.type == "gauge":
            found.append(f"{fn}() over the gauge {name}")
    return found


if __name__ == "__main__":
    for module in sys.argv[1:] or all_modules():
        importlib.import_module(module)
    families = sorted(_registered().values(), key=lambda f: f.name)
    print(json.dumps([{"name": f.name, "type": f.type, "labels": list(f.labels)} for f in families]))
