"""What an agent is told at start (flags and conf.yml), in one place."""

from __future__ import annotations

from dataclasses import dataclass

from spiderpool.api.constants import IP_CONFLICT_QUARANTINE


@dataclass(frozen=True)
class Settings:
    node: str
    ipv4: bool = True
    ipv6: bool = False
    #: the cluster network Multus uses when a pod names no default network (for ``multusName``)
    cluster_network: str = ""
    #: auto-pools for applications naming a SpiderSubnet (``enableAutoPoolForApplication``); off,
    #: such a pod is refused (``AUTO_POOL_OFF``), as upstream does
    auto_pool: bool = True
    #: how long an ADD waits for the controller to create or grow a pod's auto-pool
    auto_pool_wait: float = 30.0
    #: how long an address another host turned out to use is held for nobody
    conflict_quarantine: float = IP_CONFLICT_QUARANTINE
    #: how long a released address waits before it is handed out again
    reuse_cooldown: float = 5.0

    @property
    def families(self) -> tuple[int, ...]:
        return tuple(f for f, on in ((4, self.ipv4), (6, self.ipv6)) if on)
