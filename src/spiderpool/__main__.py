"""``python -m spiderpool <component> [args]``: controller (more components follow)."""

import sys


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in ("controller",):
        raise SystemExit("usage: python -m spiderpool controller [options]")
    component, rest = sys.argv[1], sys.argv[2:]
    if component == "controller":
        from spiderpool.controller.main import main as run

        run(rest)


main()
