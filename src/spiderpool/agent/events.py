"""The agent's Events about pods (aggregated: a retried failing ADD leaves one Event, counted)."""

from __future__ import annotations

from spiderpool.k8s.client import Client
from spiderpool.k8s.events import EventRecorder


class PodEvents:
    def __init__(self, client: Client, node: str) -> None:
        self.recorder = EventRecorder(client, "spiderpool-agent", node)

    async def warn(self, namespace: str, name: str, uid: str, reason: str, message: str) -> None:
        await self._emit(namespace, name, uid, "Warning", reason, message)

    async def normal(self, namespace: str, name: str, uid: str, reason: str, message: str) -> None:
        await self._emit(namespace, name, uid, "Normal", reason, message)

    async def _emit(self, namespace: str, name: str, uid: str, kind: str, reason: str, message: str) -> None:
        involved = {"kind": "Pod", "apiVersion": "v1", "namespace": namespace, "name": name, "uid": uid}
        await self.recorder.emit(involved, kind, reason, message)
