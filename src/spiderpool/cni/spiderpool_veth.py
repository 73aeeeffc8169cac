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
    from typing import Any

    from spiderpool.cni import spiderpool_ipam as base
else:
    try:  # installed: the modules sit side by side
        import spiderpool_ipam as base
    except ImportError:  # from the source tree
        from spiderpool.cni import spiderpool_ipam as base


def main() -> int:
    command = os.environ.get("CNI_COMMAND", "")
    if command == "VERSION":
        sys.stdout.write(base.json_dumps({"cniVersion": "1.1.0", "supportedVersions": base.SUPPORTED}))
        return 0
    version = "1.1.0"
    try:
        try:
            conf = base.json_loads(sys.stdin.buffer.read())
        except ValueError as exc:
            raise base.CniError(6, f"network config on stdin is not JSON: {exc}") from None
        if not isinstance(conf, dict):
            raise base.CniError(6, "network config on stdin must be a JSON object")
        version = str(conf.get("cniVersion", "0.3.1"))
        if version not in base.SUPPORTED:
            raise base.CniError(1, f"cniVersion {version!r} is not supported", f"use one of {base.SUPPORTED}")
        sock = base.default_socket()
        if command == "STATUS":
            try:
                base._call("/v1/ipam/healthy", "GET", None, sock)
            except base.CniError as exc:
                raise base.CniError(50, f"spiderpool-agent is not available: {exc.msg}", exc.details) from None
            return 0
        if command not in ("ADD", "DEL", "CHECK"):
            raise base.CniError(4, f"unknown CNI_COMMAND {command!r}", "expected ADD, DEL, CHECK, VERSION or STATUS")
        body: dict[str, Any] = {
            "command": command,
            "containerID": base._env("CNI_CONTAINERID"),
            "ifName": base._env("CNI_IFNAME"),
            "netns": os.environ.get("CNI_NETNS", "") if command == "DEL" else base._env("CNI_NETNS"),
            "config": conf,
            **base._pod_args(need_pod=command != "DEL"),
        }
        if command in ("ADD", "CHECK") and not isinstance(conf.get("prevResult"), dict):
            raise base.CniError(
                7,
                f"{conf.get('type', 'veth')} must be chained after the plugin that creates the interface "
                "(no prevResult)",
                "put it after macvlan in the plugins list of the conflist",
            )
        reply = base._call(f"/v1/coordinator/{command.lower()}", "POST", body, sock)
        if command == "ADD":
            sys.stdout.write(base.json_dumps(reply["result"]))
    except base.CniError as err:
        return int(base._fail(err, version))
    except Exception as exc:  # a bug: still a CNI error on stdout, never a traceback the runtime cannot read
        bug = base.CniError(100, f"veth plugin internal error ({type(exc).__name__}: {exc}); please report it")
        return int(base._fail(bug, version))
    return 0


if __name__ == "__main__":
    sys.exit(main())
