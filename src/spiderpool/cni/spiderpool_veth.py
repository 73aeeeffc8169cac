"""The ``veth`` CNI plugin (also installed as ``coordinator``): a thin, stdlib-only client of
spiderpool-agent, chained after the main plugin (macvlan) as in the reference walkthrough.

The netlink work (a veth pair to the host, routes, rules, neighbours, sysctls) is done by the agent,
which runs on the node with its netlink library loaded: this executable only forwards the call and
prints the result, so it starts as fast as the IPAM plugin. Keys are validated by the agent, which
names the offending key (code 7).

Commands: ADD, DEL, CHECK, VERSION, STATUS (CNI 0.3.0 to 1.1.0). ADD needs ``prevResult``; DEL of a
pod whose namespace is gone succeeds; an unreachable agent is code 11 (try again).
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # importing typing would cost milliseconds per exec
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    Env = Mapping[str, str]

    from spiderpool.cni import spiderpool_ipam as base
else:
    try:  # installed: the modules sit side by side
        import spiderpool_ipam as base
    except ImportError:  # from the source tree
        from spiderpool.cni import spiderpool_ipam as base


def run(env: Env, stdin: bytes, argv0: str, ask: base.Ask | None = None) -> tuple[str, int]:
    """One CNI call: what to print on stdout and the exit code (as ``spiderpool_ipam.run``)."""
    command = env.get("CNI_COMMAND", "")
    if command == "VERSION":
        return base.json_dumps({"cniVersion": "1.1.0", "supportedVersions": base.SUPPORTED}), 0
    version = "1.1.0"
    try:
        try:
            conf = base.json_loads(stdin)
        except ValueError as exc:
            raise base.CniError(6, f"network config on stdin is not JSON: {exc}") from None
        if not isinstance(conf, dict):
            raise base.CniError(6, "network config on stdin must be a JSON object")
        version = str(conf.get("cniVersion", "0.3.1"))
        if version not in base.SUPPORTED:
            raise base.CniError(1, f"cniVersion {version!r} is not supported", f"use one of {base.SUPPORTED}")
        call = ask or base.socket_caller(base.default_socket(argv0))
        if command == "STATUS":
            try:
                call("/v1/ipam/healthy", "GET", None)
            except base.CniError as exc:
                raise base.CniError(50, f"spiderpool-agent is not available: {exc.msg}", exc.details) from None
            return "", 0
        if command not in ("ADD", "DEL", "CHECK"):
            raise base.CniError(4, f"unknown CNI_COMMAND {command!r}", "expected ADD, DEL, CHECK, VERSION or STATUS")
        body: dict[str, Any] = {
            "command": command,
            "containerID": base.need_env(env, "CNI_CONTAINERID"),
            "ifName": base.need_env(env, "CNI_IFNAME"),
            "netns": env.get("CNI_NETNS", "") if command == "DEL" else base.need_env(env, "CNI_NETNS"),
            "config": conf,
            **base.pod_args(env, need_pod=command != "DEL"),
        }
        if command in ("ADD", "CHECK") and not isinstance(conf.get("prevResult"), dict):
            raise base.CniError(
                7,
                f"{conf.get('type', 'veth')} must be chained after the plugin that creates the interface "
                "(no prevResult)",
                "put it after macvlan in the plugins list of the conflist",
            )
        reply = call(f"/v1/coordinator/{command.lower()}", "POST", body)
        if command == "ADD":
            return base.json_dumps(reply["result"]), 0
    except base.CniError as err:
        return base.failure(err, version)
    except Exception as exc:  # a bug: still a CNI error on stdout, never a traceback the runtime cannot read
        bug = base.CniError(100, f"veth plugin internal error ({type(exc).__name__}: {exc}); please report it")
        return base.failure(bug, version)
    return "", 0


def main() -> int:
    stdin = b"" if os.environ.get("CNI_COMMAND") == "VERSION" else sys.stdin.buffer.read()
    out, code = run(os.environ, stdin, sys.argv[0])
    sys.stdout.write(out)
    return code


if __name__ == "__main__":
    sys.exit(main())
