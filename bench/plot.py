"""Draw the benchmarks' comparisons from their JSON results into PNGs for docs/benchmarks.md:

- ``storm-rate.png``: allocations per second per system (median of the rounds, each round a dot);
- ``storm-cdf.png``: the ADD latency CDF per system, every round's allocations together;
- ``storm-growth.png``: allocations per second and CPU per allocation, 1000 from 10 nodes against
  5000 from 20 (how each system grows);
- ``watch-fanout.png``: the agents' CPU per allocation against the number of agents, both designs;
- ``pool-size.png``: allocation latency p50/p99 against the pool's size, empty and 90 % allocated;
- ``e2e.png``: real pods, create / rebuild / delete seconds per CNI chain.

Each figure carries the date of its run and the machine's core count. Needs the ``bench`` extra
(matplotlib): ``pip install -e '.[bench]'``.

    python bench/plot.py [--storm docs/bench/storm.json] [--storm-large docs/bench/storm-5000.json]
        [--fanout docs/bench/watch-fanout.json]
        [--pool-size docs/bench/pool-size.json] [--e2e docs/bench/e2e.json] [--out docs/bench]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # (files only, no display)
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

DOCS = Path(__file__).resolve().parents[1] / "docs" / "bench"
COLOURS = {
    "raw": "#9e9e9e",
    "spiderpool-agent": "#1f77b4",
    "spiderpool": "#4a90d9",
    "whereabouts": "#d62728",
    "host-local": "#2ca02c",
}


def stamp(fig: Figure, result: dict[str, Any], what: str) -> None:
    fig.text(
        0.99, 0.01, f"{what}; {result['date']}, {result['cores']} cores", ha="right", va="bottom", fontsize=7, alpha=0.7
    )


def storm_rate(result: dict[str, Any], out: Path) -> None:
    systems = list(result["median"])
    fig, ax = plt.subplots(figsize=(7, 3.6))
    medians = [result["median"][s]["allocations_per_second"] for s in systems]
    ax.bar(systems, medians, color=[COLOURS.get(s, "#777") for s in systems])
    for i, s in enumerate(systems):
        rounds = [r["allocations_per_second"] for r in result["runs"] if r["system"] == s]
        ax.scatter([i] * len(rounds), rounds, color="black", s=10, zorder=3)
        ax.annotate(f"{medians[i]:.3g}/s", (i, medians[i]), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("allocations per second")
    ax.set_title(
        f"{result['allocations']} allocations into {result['allocations']} IPs, {result['nodes']} nodes, "
        f"{result['inflight_per_node']} in flight per node",
        fontsize=9,
    )
    ax.set_yscale("log")
    stamp(fig, result, "bench/ipam_storm.py; bars: median of the rounds, dots: each round")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(out / "storm-rate.png", dpi=110)
    plt.close(fig)


def storm_cdf(result: dict[str, Any], out: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for s in result["median"]:
        samples = sorted(x for r in result["runs"] if r["system"] == s for x in r.get("add_ms_samples", []))
        if not samples:
            continue
        ys = [(i + 1) / len(samples) for i in range(len(samples))]
        ax.plot(samples, ys, label=s, color=COLOURS.get(s))
    ax.set_xscale("log")
    ax.set_xlabel("ADD latency (ms), log scale")
    ax.set_ylabel("fraction of allocations")
    ax.set_title("ADD latency during the storm, every round", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    stamp(fig, result, "bench/ipam_storm.py")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(out / "storm-cdf.png", dpi=110)
    plt.close(fig)


def storm_growth(small: dict[str, Any], large: dict[str, Any], out: Path) -> None:
    systems = [s for s in large["median"] if s in small["median"]]
    shapes = [
        (small, f"{small['allocations']} from {small['nodes']} nodes"),
        (large, f"{large['allocations']} from {large['nodes']} nodes"),
    ]
    fig, (rate, cpu) = plt.subplots(1, 2, figsize=(10, 3.8))
    width = 0.38
    for j, (result, label) in enumerate(shapes):
        xs = [i + (j - 0.5) * width for i in range(len(systems))]
        rates = [result["median"][s]["allocations_per_second"] for s in systems]
        per = []
        for s in systems:
            runs = [r for r in result["runs"] if r["system"] == s]
            per.append(sorted(1000 * sum(r["cpu_s"].values()) / r["allocations"] for r in runs)[len(runs) // 2])
        hatch = "" if j == 0 else "//"
        colours = [COLOURS.get(s, "#777") for s in systems]
        rate.bar(xs, rates, width, color=colours, hatch=hatch, edgecolor="white", label=label)
        cpu.bar(xs, per, width, color=colours, hatch=hatch, edgecolor="white", label=label)
        for x, v in zip(xs, rates, strict=True):
            rate.annotate(f"{v:.3g}", (x, v), ha="center", va="bottom", fontsize=7)
    for ax, title, unit in (
        (rate, "allocations per second", "allocations/s"),
        (cpu, "CPU per allocation, every process", "CPU ms per allocation"),
    ):
        ax.set_xticks(range(len(systems)))
        ax.set_xticklabels(systems, fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel(unit)
        ax.legend(fontsize=7)
    stamp(fig, large, "bench/ipam_storm.py; plain: the small storm, hatched: the large one")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(out / "storm-growth.png", dpi=110)
    plt.close(fig)


def fanout(result: dict[str, Any], out: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 3.6))
    styles = {"all": "--", "pools": "-"}
    for mode in ("all", "pools"):
        for shape, marker in (("ten", "o"), ("busy", "s")):
            rows = [
                r
                for r in result["rows"]
                if r["record_watch"] == mode
                and ((r["allocating"] == 10) if shape == "ten" else (r["allocating"] == r["agents"]))
            ]
            rows.sort(key=lambda r: r["agents"])
            label = f"--record-watch={mode}, " + ("10 agents allocate" if shape == "ten" else "every agent allocates")
            ax.plot(
                [r["agents"] for r in rows],
                [r["agent_cpu_ms_per_allocation"] for r in rows],
                styles[mode],
                marker=marker,
                label=label,
            )
    ax.set_xlabel("agents (nodes)")
    ax.set_ylabel("agents' CPU ms per allocation")
    ax.set_xticks(sorted({r["agents"] for r in result["rows"]}))
    ax.set_ylim(bottom=0)
    ax.set_title("The watch fan-out: 1000 allocations into one pool", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    stamp(fig, result, "bench/watch_fanout.py")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(out / "watch-fanout.png", dpi=110)
    plt.close(fig)


def pool_size(result: dict[str, Any], out: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 3.6))
    names = list(dict.fromkeys(r["pool"] for r in result["pools"]))
    width = 0.38
    for k, (level, colour) in enumerate((("0 %", "#1f77b4"), ("90 %", "#ff7f0e"))):
        xs, p50, p99 = [], [], []
        for i, n in enumerate(names):
            row = next((r for r in result["pools"] if r["pool"] == n and r["allocated"] == level), None)
            if row is None:
                continue
            xs.append(i + (k - 0.5) * width)
            p50.append(row["add_ms"]["p50"])
            p99.append(row["add_ms"]["p99"])
        ax.bar(xs, p50, width, color=colour, label=f"p50, {level} allocated")
        ax.scatter(xs, p99, color=colour, marker="_", s=200, label=f"p99, {level} allocated")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([f"{n}\n{next(r['subnet'] for r in result['pools'] if r['pool'] == n)}" for n in names])
    ax.set_ylabel("allocation latency (ms)")
    ax.set_ylim(bottom=0)
    ax.set_title("One allocation at a time through the agent's socket, by pool size", fontsize=9)
    ax.legend(fontsize=7)
    stamp(fig, result, "bench/pool_size.py")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(out / "pool-size.png", dpi=110)
    plt.close(fig)


E2E_COLOURS = {
    "macvlan + spiderpool + veth": COLOURS["spiderpool"],
    "macvlan + whereabouts": COLOURS["whereabouts"],
    "macvlan + host-local": COLOURS["host-local"],
}


def e2e(result: dict[str, Any], out: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 3.6))
    phases = ("create_s", "rebuild_s", "delete_s")
    chains = [c for c in E2E_COLOURS if c in result["best_of_rounds"]]
    width = 0.8 / len(chains)
    for k, chain in enumerate(chains):
        xs = [i + (k - (len(chains) - 1) / 2) * width for i in range(len(phases))]
        values = [result["best_of_rounds"][chain][p] for p in phases]
        ax.bar(xs, [v or 0 for v in values], width, color=E2E_COLOURS[chain], label=chain)
        for x, v in zip(xs, values, strict=True):  # None: the phase did not finish within the limit
            ax.annotate("not done" if v is None else f"{v:.0f}", (x, v or 0), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(phases)))
    ax.set_xticklabels(["create → all Running", "rebuild (delete all pods)", "delete → all IPs released"])
    ax.set_ylabel("seconds")
    ax.set_title(
        f"{result['pods']} pods on {result['nodes']} real nodes, pool size = pod count (best of the rounds)",
        fontsize=9,
    )
    ax.legend(fontsize=7)
    stamp(fig, result, "bench/e2e_pods.py")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(out / "e2e.png", dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--storm", type=Path, default=DOCS / "storm.json")
    ap.add_argument("--storm-large", type=Path, default=DOCS / "storm-5000.json")
    ap.add_argument("--fanout", type=Path, default=DOCS / "watch-fanout.json")
    ap.add_argument("--pool-size", type=Path, default=DOCS / "pool-size.json")
    ap.add_argument("--e2e", type=Path, default=DOCS / "e2e.json")
    ap.add_argument("--out", type=Path, default=DOCS)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for path, draws in (
        (args.storm, (storm_rate, storm_cdf)),
        (args.fanout, (fanout,)),
        (args.pool_size, (pool_size,)),
        (args.e2e, (e2e,)),
    ):
        if not path.exists():
            print(f"[plot] {path.name}: no results, skipped")
            continue
        result = json.loads(path.read_text())
        for draw in draws:
            draw(result, args.out)
            print(f"[plot] {draw.__name__} from {path.name}")
    if args.storm.exists() and args.storm_large.exists():
        storm_growth(json.loads(args.storm.read_text()), json.loads(args.storm_large.read_text()), args.out)
        print(f"[plot] storm_growth from {args.storm.name} and {args.storm_large.name}")


if __name__ == "__main__":
    main()
