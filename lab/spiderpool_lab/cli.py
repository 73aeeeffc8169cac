"""``spiderpool-lab``: build, start, inspect and stop the lab.

spiderpool-lab build                 build the upstream components and the images (once per input)
spiderpool-lab up [--nodes N]        start the lab (idempotent); returns when it is ready
spiderpool-lab status                processes, nodes and pods
spiderpool-lab down                  stop everything and remove every lab namespace
spiderpool-lab kubectl ARGS...       the lab's kubectl with its kubeconfig
spiderpool-lab exec TARGET -- CMD    run CMD on a node (node1: its namespaces) or in a pod (ns/pod: kubectl exec)
spiderpool-lab env                   shell exports to use the lab from another shell
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

from spiderpool_lab import build, demo, images, procs
from spiderpool_lab.cluster import Lab, LabError


def _kubectl(lab: Lab, args: list[str]) -> int:
    env = dict(os.environ)
    env["KUBECONFIG"] = str(lab.kubeconfig)
    return subprocess.call([str(build.binary("kubectl")), *args], env=env)


def _cmd_status(lab: Lab) -> int:
    st = lab.status()
    if not st["processes"]:
        print("lab is down")
        return 1
    print(f"lab dir: {st['dir']}  (namespace prefix {st['prefix']})")
    for key, info in sorted(st["processes"].items()):
        mark = "running" if info["alive"] else "DEAD"
        print(f"  {key:32} pid {info['pid']:<8} {mark}")
    print(f"  network namespaces: {len(st['namespaces'])}")
    print()
    rc = _kubectl(lab, ["get", "nodes", "-o", "wide"])
    print()
    _kubectl(lab, ["get", "pods", "-A", "-o", "wide"])
    return rc


def main(argv: list[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="spiderpool-lab", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_build = sub.add_parser("build", help="build the upstream components into the cache")
    p_build.add_argument(
        "components",
        nargs="*",
        help=f"subset of {[c.name for c in build.COMPONENTS]} (built only when named: "
        + ", ".join(c.name for c in build.COMPONENTS if c.on_demand)
        + ")",
    )
    p_build.add_argument("--no-images", action="store_true", help="only the Go components, not the images")
    p_build.add_argument(
        "--demo",
        action="store_true",
        help="only what the walkthrough's demo runs (not the test suite's peers and checkers: "
        + ", ".join(build.TEST_ONLY)
        + ")",
    )
    p_up = sub.add_parser("up", help="start the lab (idempotent)")
    p_up.add_argument("--nodes", type=int, default=2)
    p_up.add_argument(
        "--cni",
        choices=["macvlan", "none"],
        default="macvlan",
        help="CNI config written to nodes that have none (default: macvlan + host-local)",
    )
    p_demo = sub.add_parser("demo", help="run the reference walkthrough on the lab (or 'demo down')")
    p_demo.add_argument("action", nargs="?", choices=["run", "down"], default="run")
    p_demo.add_argument("--teardown", action="store_true", help="bring the lab down when it is done")
    sub.add_parser("status", help="show processes, nodes and pods")
    sub.add_parser("down", help="stop the lab and remove everything it created")
    sub.add_parser("env", help="print shell exports for the lab")
    sub.add_parser("kubectl", help="run the lab's kubectl", add_help=False)
    sub.add_parser("exec", help="run a command on a node or in a pod", add_help=False)

    # kubectl and exec take the rest of the line verbatim.
    if args_in and args_in[0] == "kubectl":
        return _kubectl(Lab(), args_in[1:])
    if args_in and args_in[0] == "exec":
        rest = args_in[1:]
        if "--" in rest:
            i = rest.index("--")
            target, cmd = rest[:i], rest[i + 1 :]
        else:
            target, cmd = rest[:1], rest[1:]
        if len(target) != 1 or not cmd:
            parser.error("usage: spiderpool-lab exec NODE|NAMESPACE/POD -- CMD [ARGS...]")
        try:
            argv_exec = Lab().exec_argv(target[0], cmd)
        except LabError as exc:
            print(f"spiderpool-lab: {exc}", file=sys.stderr)
            return 2
        return subprocess.call(argv_exec)

    args = parser.parse_args(args_in)
    lab = Lab()
    try:
        if args.cmd == "build":
            only = args.components or [c.name for c in build.selected(demo=args.demo)]
            build.build_all(only=only)
            print(f"lock: {build.lock_path()}")
            if not args.no_images and not args.components:
                images.build_images(skip=frozenset(build.TEST_ONLY) if args.demo else frozenset())
                images.say_built()
            return 0
        if args.cmd == "up":
            lab.up(nodes=args.nodes, cni=args.cni)
            print(f'lab is up with {args.nodes} node(s); use it from a shell with: eval "$(spiderpool-lab env)"')
            return 0
        if args.cmd == "demo":
            if args.action == "down":
                lab.down()
                return 0
            print("[demo] bringing up the lab with 2 nodes ...", file=sys.stderr, flush=True)
            lab.up(nodes=2)
            ok = demo.Demo(lab).run()
            if args.teardown:
                lab.down()
            else:
                print("\nThe lab keeps running; stop it with: spiderpool-lab demo down")
            return 0 if ok else 1
        if args.cmd == "status":
            return _cmd_status(lab)
        if args.cmd == "down":
            lab.down()
            return 0
        if args.cmd == "env":
            for k, v in lab.env().items():
                print(f"export {k}={shlex.quote(v)}")
            return 0
    except (LabError, build.BuildError, images.ImageError, procs.WaitTimeout) as exc:
        print(f"spiderpool-lab: {exc}", file=sys.stderr)
        return 1
    parser.error(f"unknown command {args.cmd}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
