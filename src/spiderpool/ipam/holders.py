"""Who holds each address of a pool, as a pool's ``status.allocatedIPs`` lists it. Pure.

The controller writes it; ``kubectl spiderpool leaks`` recomputes it to compare. An address in
quarantine (another host answers for it, or its last pod may still run) is held for nobody: it is
left out of the list and of ``allocatedIPCount``, so a pool's status names only pods and a deleted
pool is not kept Terminating by it (its record keeps the address out of circulation until the
quarantine ends). Callers that must not hand out or drop an address still count it (``quarantined``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

#: pool -> IP -> {"pod": "<ns>/<name>", "podUid": uid} (upstream's ``allocatedIPs`` shape)
Holders = dict[str, dict[str, dict[str, str]]]


def holders(records: Iterable[Mapping[str, Any]], *, quarantined: bool) -> Holders:
    out: Holders = {}
    for record in records:
        spec = record.get("spec") or {}
        if not quarantined and spec.get("quarantineUntil"):
            continue
        holder = {"pod": f"{spec.get('namespace')}/{spec.get('pod')}", "podUid": str(spec.get("podUID", ""))}
        out.setdefault(str(spec.get("pool")), {})[str(spec.get("ip"))] = holder
    return out
