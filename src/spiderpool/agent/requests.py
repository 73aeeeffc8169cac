"""The shapes of the socket API's request bodies, checked before any handler runs.

The plugins build these bodies from the runtime's environment and config, so a wrong shape means a
broken plugin, a hand-made request or a bug: it is refused with 400, CNI code 6 (could not decode
the request) and the field named, never a 500 from deep inside a handler."""

from __future__ import annotations

import re
from typing import Any

from spiderpool.agent.errors import IPAMError

#: field -> the type it must have when present; a field of a route's ``required`` set must be present
FIELDS: dict[str, type] = {
    "containerID": str,
    "ifName": str,
    "netNamespace": str,
    "netns": str,
    "podNamespace": str,
    "podName": str,
    "podUID": str,
    "network": str,
    "command": str,
    "defaultIPv4IPPool": list,
    "defaultIPv6IPPool": list,
    "cleanGateway": bool,
    "ips": list,
    "validAttachments": list,
    "config": dict,
}

#: route name -> fields it cannot do without
REQUIRED: dict[str, tuple[str, ...]] = {
    "allocate": ("containerID", "ifName", "podNamespace", "podName"),
    "release": ("containerID", "ifName"),
    "check": ("ifName",),
    "gc": (),
    "coordinator_add": ("containerID", "ifName", "netns", "config"),
    "coordinator_del": ("containerID", "ifName"),
    "coordinator_check": ("containerID", "ifName", "netns"),
}

#: Kubernetes' names: a namespace is a DNS-1123 label, a pod name a DNS-1123 subdomain. Checked
#: because they become API paths, where "..", "." or "/" would name another object.
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_NAMES = {"podNamespace": _LABEL, "podName": _SUBDOMAIN}

#: list fields whose items must be non-empty strings
_STRING_LISTS = ("defaultIPv4IPPool", "defaultIPv6IPPool", "ips")


def _bad(field: str, problem: str) -> IPAMError:
    return IPAMError(6, f"request body: {field} {problem}", reason="bad_request", http=400)


def check(route: str, body: Any) -> dict[str, Any]:
    """``body`` as a dict of the right shape for ``route``, or an IPAMError naming the field."""
    if not isinstance(body, dict):
        raise IPAMError(6, "request body must be a JSON object", reason="bad_request", http=400)
    for name in REQUIRED[route]:
        if body.get(name) in (None, ""):
            raise _bad(name, "is required")
    for name, kind in FIELDS.items():
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise _bad(name, f"must be a {'JSON object' if kind is dict else kind.__name__}")
        if isinstance(value, list) and name in _STRING_LISTS and not all(isinstance(v, str) and v for v in value):
            raise _bad(name, "must be a list of non-empty strings")
    for name, pattern in _NAMES.items():
        value = body.get(name)
        if value and not pattern.fullmatch(value):
            raise _bad(name, f"{value[:64]!r} is not a Kubernetes name")
    for i, item in enumerate(body.get("validAttachments") or []):
        if not isinstance(item, dict) or not all(isinstance(item.get(k), str) for k in ("containerID", "ifname")):
            raise _bad(f"validAttachments[{i}]", 'must be {"containerID": "...", "ifname": "..."}')
    return body
