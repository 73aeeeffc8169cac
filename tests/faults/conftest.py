"""The fault matrix's set-up: the nodes on the walkthrough's macvlan + spiderpool chain, the storm's
pool, and the table of rows, printed at the end and kept for docs/reliability.md."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator

import pytest

from spiderpool_lab import procs
from spiderpool_lab.cluster import Lab
from tests.faults.storm import POOL, POOL_FIRST, REPLICAS, SPARE_IPS, Row
from tests.helpers import apply, get_json, pool_manifest
from tests.ipam.conftest import assert_consistent, macvlan_spiderpool, use_cni
from tests.stack import Agents, Controllers

ROWS: list[Row] = []


@pytest.fixture(scope="package")
def storm_lab(agents: Agents, controllers: Controllers) -> Iterator[Lab]:
    lab = agents.lab
    # an interrupted earlier run may have left its storm behind, and its pool going away
    for ns in get_json(lab, "namespaces")["items"]:
        if ns["metadata"]["name"].startswith("storm-"):
            lab.kubectl("delete", "namespace", ns["metadata"]["name"], "--wait=false")
    procs.wait_for(
        lambda: (
            lab.kubectl("get", "spiderippool", POOL, check=False).returncode != 0
            or not get_json(lab, "spiderippool", POOL)["metadata"].get("deletionTimestamp")
        ),
        timeout=180,
        what=f"an earlier run's {POOL} to go",
    )
    use_cni(lab, macvlan_spiderpool())
    size = REPLICAS + len(lab.nodes()) + SPARE_IPS
    last = ipaddress.ip_address(POOL_FIRST) + size - 1
    apply(lab, pool_manifest(POOL, "172.18.0.0/16", [f"{POOL_FIRST}-{last}"]))
    yield lab
    lab.kubectl("delete", "spiderippool", POOL, "--wait=true", "--timeout=120s", check=False)
    lab.reset_cni_config()
    table = [row.as_json() for row in ROWS]
    (lab.logs / "faults-matrix.json").write_text(json.dumps(table, indent=1))
    print("\nfault matrix (also in the lab's logs/faults-matrix.json):")
    for row in ROWS:
        print(
            f"  {row.fault:28} converge {row.converge_s:6.1f} s (total {row.total_s:6.1f} s)"
            f"  failed ADDs {row.failed_adds:3}  duplicates {row.duplicates}  leaks {row.leaks}"
            f"  samples {row.samples} ({row.unreadable} unreadable)  {json.dumps(row.notes)}"
        )
    assert_consistent(lab)
