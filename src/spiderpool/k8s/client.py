"""Build API clients from a kubeconfig file or the in-cluster service account."""

from __future__ import annotations

import os

from lightkube import AsyncClient, KubeConfig


def load_config(kubeconfig: str | None = None) -> KubeConfig:
    """Explicit path, then $KUBECONFIG, then the pod's service account."""
    path = kubeconfig or os.environ.get("KUBECONFIG")
    if path:
        return KubeConfig.from_file(path)
    return KubeConfig.from_service_account()


def async_client(kubeconfig: str | None = None, *, field_manager: str) -> AsyncClient:
    return AsyncClient(config=load_config(kubeconfig), field_manager=field_manager)
