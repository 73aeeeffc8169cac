"""Replies to what the node delivered leave by the node (the pod side of the veth plugin).

A connection that reaches the pod through ``veth0`` was sent by its node: a kubelet probe, a
clusterIP or nodePort that kube-proxy translated. With kube-proxy's masquerading the client is the
node itself, and the pod's route to the node's addresses (``dev veth0``) already brings the answer
back. Not so with ``externalTrafficPolicy: Local`` (NodePort, LoadBalancer): kube-proxy keeps the
client's address, the pod's main table sends the answer straight out of its underlay NIC to the
client, and the client, which spoke to ``<node>:<nodePort>``, drops an answer from ``<pod IP>``.

So the pod marks each connection that arrives on ``veth0`` (conntrack mark ``REPLY_MARK``), copies the
mark onto the packets it sends in that connection, and a rule sends marked packets to a table whose
only route is ``default via <node IP> dev veth0``: the node un-translates them as kube-proxy expects.
Connections the pod opens, and those arriving on its underlay NICs, are untouched. Upstream's
coordinator installs the same kind of rules (iptables in the pod's namespace).
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import subprocess
from collections.abc import Mapping

from pyroute2 import IPRoute

#: the conntrack (and packet) mark bit of connections the node delivered
REPLY_MARK = 0x20000
#: the rule's priority: before the per-NIC ``from <IP>`` rules (1000) and the main table
REPLY_RULE_PREF = 900
COMMENT = "spiderpool: replies to what the node delivered"
SCOPE_LINK = 253


class ReplyPathError(RuntimeError):
    pass


def _rules(veth: str) -> str:
    mark = f"0x{REPLY_MARK:x}"
    return (
        "*mangle\n"
        f'-A PREROUTING -i {veth} -m conntrack --ctstate NEW -m comment --comment "{COMMENT}"'
        f" -j CONNMARK --set-xmark {mark}/{mark}\n"
        f'-A OUTPUT -m connmark --mark {mark}/{mark} -m comment --comment "{COMMENT}"'
        f" -j CONNMARK --restore-mark --nfmask {mark} --ctmask {mark}\n"
        "COMMIT\n"
    )


def _tool(family: int, name: str) -> str:
    # (an image's PATH may lack the sbin directories, where Debian puts iptables)
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    exe = shutil.which(("ip6" if family == 6 else "ip") + name, path=path)
    if exe is None:
        raise ReplyPathError(
            f"{'ip6' if family == 6 else 'ip'}{name} is not installed in the agent's image; it marks the"
            " connections the node delivers to the pod (externalTrafficPolicy: Local)"
        )
    return exe


def _run(argv: list[str], stdin: str = "") -> str:
    # (a child of the calling thread, which has entered the pod's namespace: the child is there too)
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=20, check=False)
    if done.returncode != 0:
        raise ReplyPathError(f"{' '.join(argv)}: {done.stderr.strip() or f'exit {done.returncode}'}")
    return done.stdout


def install(pod: IPRoute, veth_index: int, veth: str, gateways: Mapping[int, str], table: int, fresh: bool) -> None:
    """In the pod's namespace (the calling thread's): the marking rules, and per family in
    ``gateways`` (family -> the node address the pod's hijacked routes go via) the rule and table.
    ``fresh``: the pod's veth was just made, so no rule of ours can be there yet."""
    for family, gateway in sorted(gateways.items()):
        if fresh or COMMENT not in _run([_tool(family, "tables-save"), "-t", "mangle"]):
            _run([_tool(family, "tables-restore"), "--noflush"], _rules(veth))
        af = socket.AF_INET if family == 4 else socket.AF_INET6
        full = 32 if family == 4 else 128
        gw = str(ipaddress.ip_address(gateway))
        for kwargs in (
            {"dst": gw, "dst_len": full, "oif": veth_index, "scope": SCOPE_LINK, "table": table},
            {"dst": "0.0.0.0" if family == 4 else "::", "dst_len": 0, "gateway": gw, "oif": veth_index, "table": table},
        ):
            pod.route("replace", family=af, **kwargs)
        if not any(
            r.get_attr("FRA_PRIORITY") == REPLY_RULE_PREF and r.get_attr("FRA_TABLE") == table
            for r in pod.rule("dump", family=af)
        ):
            pod.rule("add", family=af, fwmark=REPLY_MARK, fwmask=REPLY_MARK, table=table, priority=REPLY_RULE_PREF)
