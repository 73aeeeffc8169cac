"""The watch fan-out: the agents' CPU per allocation as the cluster grows, with each agent watching
every allocation record (``--record-watch=all``, the design before) or only those of the pools it
serves (``pools``, the default), both in the same invocation, interleaved.

Two shapes, each 1000 allocations into one SpiderIPPool of 1000 addresses, 10 in flight per node:

- ``busy``: every agent allocates (1000 / agents each): each must know the pool's state, so with
  either design every agent decodes every allocation of it;
- ``ten``: 10 agents allocate 100 each; the rest serve nodes whose pods use other pools (a bigger
  cluster): their cost is what the design changes.

    python bench/watch_fanout.py [--agents 10,20,40] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench.common import lab_with_crds, say  # noqa: E402
from bench.ipam_storm import Storm  # noqa: E402

MODES = ("all", "pools")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", default="10,20,40")
    ap.add_argument("--ips", type=int, default=1000)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    lab = lab_with_crds()
    rows: list[dict[str, Any]] = []
    for agents in [int(a) for a in args.agents.split(",")]:
        for shape in ("ten", "busy"):
            if shape == "busy" and agents == 10:
                continue  # (the same as "ten")
            for mode in MODES:
                active = 10 if shape == "ten" else agents
                say(f"{agents} agents, {active} allocating, --record-watch={mode}")
                storm = Storm(
                    lab,
                    nodes=active,
                    ips=args.ips,
                    inflight=10,
                    sequential=0,
                    idle_agents=agents - active,
                    record_watch=mode,
                )
                try:
                    storm.setup(["spiderpool-agent"])
                    run = storm.storm("spiderpool-agent", 0)
                finally:
                    storm.teardown()
                agent_cpu = run["cpu_s"]["spiderpool agents"]
                row = {
                    "agents": agents,
                    "allocating": active,
                    "record_watch": mode,
                    "allocations_per_second": run["allocations_per_second"],
                    "add_ms": run["add_ms"],
                    "failures": run["failures"],
                    "duplicates": run["duplicates"],
                    "agent_cpu_s": agent_cpu,
                    "agent_cpu_ms_per_allocation": round(1000 * agent_cpu / max(1, run["succeeded"]), 2),
                    "apiserver_cpu_s": run["cpu_s"]["kube-apiserver"],
                }
                rows.append(row)
                say(
                    f"  {row['allocations_per_second']} alloc/s, agents {agent_cpu} CPU-s "
                    f"({row['agent_cpu_ms_per_allocation']} ms per allocation), apiserver {row['apiserver_cpu_s']} s"
                )
    result = {"date": time.strftime("%Y-%m-%d"), "cores": os.cpu_count(), "rows": rows}
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
