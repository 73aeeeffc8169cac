"""The allocator's walk in full, fragmented pools (pure logic, no API): the time to find this node's
next address when 90 % of the pool is held by other nodes and the free addresses are scattered one
in ten (the case ``bench/pool_size.py`` found at ~450 ms per allocation in a /16).

Baseline, same invocation: the jump as it was (the largest free run found exactly, by walking the
whole pool), against the bounded probe now in ``spiderpool.ipam.allocate``.

    python bench/walker_fragmented.py [--allocations 200]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import pct, say

from spiderpool.ipam import allocate
from spiderpool.ipam.allocate import FREE, MINE, OTHER, HeldBy, Walker
from spiderpool.ipam.ranges import IPSet

POOLS = {"/24": "10.100.0.0/24", "/16": "10.101.0.0/16", "/8": "11.0.0.0/8"}


def exact_gap_point(space: IPSet, held_by: HeldBy, seed: str, k: int) -> int | None:
    """The jump before: the middle half of one of the largest free runs, by walking every address."""
    runs: list[tuple[int, int]] = []
    run_start, run_len = 0, 0
    for offset, ip in allocate._walk(space, 0):
        if held_by(ip) == FREE:
            if run_len == 0:
                run_start = offset
            run_len += 1
        elif run_len:
            runs.append((run_start, run_len))
            run_len = 0
    if run_len:
        runs.append((run_start, run_len))
    if not runs:
        return None
    longest = max(length for _, length in runs)
    large = [r for r in runs if 2 * r[1] >= longest]
    run_start, run_len = large[allocate._point(seed, k, len(large))]
    return run_start + run_len // 4 + allocate._point(seed, -k, max(1, run_len // 2))


def run(subnet: str, allocations: int) -> Iterator[float]:
    net = ipaddress.ip_network(subnet)
    first = int(net.network_address) + 1
    space = IPSet.parse(4, [f"{net.network_address + 1}-{net.broadcast_address - 1}"])
    mine: set[str] = set()

    def held_by(ip: str) -> int:
        if ip in mine:
            return MINE
        return FREE if (int(ipaddress.IPv4Address(ip)) - first) % 10 == 9 else OTHER

    walker = Walker("ps-v4")
    # this node serves the pool with one other node, which holds 90 % of it
    for _ in range(allocations):
        t = time.perf_counter()
        ip = next(walker.candidates("p", space, held_by, ["elsewhere", "ps-v4"], ["elsewhere"]))
        yield time.perf_counter() - t
        mine.add(ip)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--allocations", type=int, default=200)
    args = ap.parse_args()
    rows = []
    for name, subnet in POOLS.items():
        for design in ("exact gap (before)", "bounded probe (now)"):
            free = (ipaddress.ip_network(subnet).num_addresses - 2) // 10
            n = min(args.allocations, free // 2)
            if design.startswith("exact") and name == "/8":
                n = 3  # (each takes seconds)
            patch = mock.patch.object(allocate, "_gap_point", exact_gap_point) if design.startswith("exact") else None
            if patch:
                patch.start()
            try:
                took = list(run(subnet, n))
            finally:
                if patch:
                    patch.stop()
            row = {
                "pool": name,
                "design": design,
                "allocations": n,
                "p50_ms": round(1000 * pct(took, 0.5), 3),
                "p99_ms": round(1000 * pct(took, 0.99), 3),
            }
            rows.append(row)
            say(json.dumps(row))
    print(json.dumps({"date": time.strftime("%Y-%m-%d"), "cores": os.cpu_count(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
