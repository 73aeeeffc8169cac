"""docs/metrics.md lists exactly the metrics the processes export: each name as scraped, its type,
its labels, and which process serves it on which port."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest

from tests.unit.metric_names import COMPONENTS, REPO, Family, exported, registered_by

DOC = REPO / "docs" / "metrics.md"


@dataclass(frozen=True)
class Row:
    type: str
    labels: tuple[str, ...]
    components: frozenset[str]


def table() -> dict[str, Row]:
    """The metrics table: | `name` | type | `label`, ... | component | meaning |."""
    rows: dict[str, Row] = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 5 or not cells[0].startswith("`spiderpool_"):
            continue
        name = cells[0].strip("`")
        assert name not in rows, f"{name} is listed twice"
        rows[name] = Row(
            type=cells[1],
            labels=tuple(sorted(re.findall(r"`(\w+)`", cells[2]))),
            components=frozenset(re.findall(r"\b(agent|controller)\b", cells[3])),
        )
    return rows


@pytest.fixture(scope="module")
def by_component() -> dict[str, dict[str, Family]]:
    return {component: registered_by(module) for component, module in COMPONENTS.items()}


def test_the_table_lists_every_exported_metric_and_no_other(by_component: dict[str, dict[str, Family]]) -> None:
    listed = set(table())
    served = {f.listed_as for families in by_component.values() for f in families.values()}
    assert len(served) >= 30, served
    assert not served - listed, f"exported but not in docs/metrics.md: {sorted(served - listed)}"
    assert not listed - served, f"in docs/metrics.md but not exported: {sorted(listed - served)}"


def test_each_row_has_the_metrics_type_labels_and_component(by_component: dict[str, dict[str, Family]]) -> None:
    rows = table()
    for component, families in by_component.items():
        for family in families.values():
            row = rows[family.listed_as]
            assert row.type == family.type, f"{family.listed_as}: documented as {row.type}, is a {family.type}"
            assert row.labels == tuple(sorted(family.labels)), f"{family.listed_as}: labels {family.labels}"
            assert component in row.components, f"{family.listed_as}: served by the {component} too"
        served = {f.listed_as for f in families.values()}
        claimed = {name for name, row in rows.items() if component in row.components}
        assert claimed <= served, f"documented as the {component}'s but not served by it: {sorted(claimed - served)}"


def test_no_module_registers_a_metric_that_no_process_serves() -> None:
    """A metric defined in a module that neither the agent nor the controller imports would be
    documented nowhere and scraped never."""
    everything = registered_by()  # every module under src/spiderpool
    assert set(everything) == set(exported()), sorted(set(everything) ^ set(exported()))


def test_the_ports_in_the_docs_are_the_processes_defaults() -> None:
    from spiderpool.agent.main import parse_args as agent_args
    from spiderpool.controller.main import parse_args as controller_args

    text = DOC.read_text()
    for process, port in (
        ("spiderpool-agent", agent_args([]).metrics_port),
        ("spiderpool-controller", controller_args([]).metrics_port),
    ):
        assert re.search(rf"\| `{process}`[^|]*\| {port} \|", text), f"{process}'s metrics port {port}"
