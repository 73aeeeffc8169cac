"""How long the lab takes to come up on this machine: ``up`` from nothing (cold: every process
started, the images imported into the nodes) and ``up`` again (warm: everything runs), each a few
times, and ``down``; with ``--images``, also a cold build of every image (the image cache moved
aside for it, then put back).

    python bench/lab_start.py [--rounds 3] [--images]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import say  # noqa: E402

from spiderpool_lab import paths  # noqa: E402
from spiderpool_lab.cluster import Lab  # noqa: E402


def timed(argv: list[str]) -> float:
    started = time.monotonic()
    subprocess.run(argv, check=True, capture_output=True)
    return time.monotonic() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--images", action="store_true", help="also time a cold build of the images")
    args = ap.parse_args()
    cli = [sys.executable, "-m", "spiderpool_lab"]
    result: dict[str, object] = {}
    if args.images:
        timed([*cli, "build"])  # whatever is out of date, so that the next one is warm
        result["images_warm_s"] = round(timed([*cli, "build"]), 1)
        say("a cold build of the images (their cache moved aside)")
        cache = paths.cache_dir() / "images"
        aside = cache.with_name("images.aside")
        if cache.exists():
            cache.rename(aside)
        try:
            result["images_cold_s"] = round(timed([*cli, "build"]), 1)
        finally:
            if aside.exists():
                shutil.rmtree(cache, ignore_errors=True)
                aside.rename(cache)
    cold, warm, down = [], [], []
    for r in range(args.rounds):
        say(f"round {r + 1}: down, up (cold), up (warm)")
        down.append(timed([*cli, "down"]))
        cold.append(timed([*cli, "up", "--nodes", "2"]))
        warm.append(timed([*cli, "up", "--nodes", "2"]))
    assert len(Lab().nodes()) == 2
    result.update(
        {
            "up_cold_s": [round(x, 1) for x in cold],
            "up_warm_s": [round(x, 2) for x in warm],
            "down_s": [round(x, 1) for x in down[1:]] or None,
            "up_cold_median_s": round(statistics.median(cold), 1),
            "up_warm_median_s": round(statistics.median(warm), 2),
        }
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
