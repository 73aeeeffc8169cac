"""``python -m spiderpool <component> [args]``: controller or agent."""

import sys


def main() -> None:
    components = ("controller", "agent")
    if len(sys.argv) < 2 or sys.argv[1] not in components:
        raise SystemExit(f"usage: python -m spiderpool {{{'|'.join(components)}}} [options]")
    component, rest = sys.argv[1], sys.argv[2:]
    if component == "controller":
        from spiderpool.controller.main import main as run
    else:
        from spiderpool.agent.main import main as run
    run(rest)


main()
