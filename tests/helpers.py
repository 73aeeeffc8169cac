"""Small helpers the integration tests share: reading objects and waiting on conditions."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import urllib.parse
from typing import Any

from spiderpool_lab import build, procs
from spiderpool_lab.cluster import Lab, LabError

#: kubectl's resource names -> (API prefix, plural, namespaced), for ``get_json``
_RESOURCES: dict[str, tuple[str, str, bool]] = {}
for _prefix, _namespaced, _plurals in (
    ("/api/v1", True, ("pods", "events", "services", "secrets", "configmaps", "endpoints", "serviceaccounts")),
    ("/api/v1", False, ("nodes", "namespaces")),
    ("/apis/apps/v1", True, ("deployments", "daemonsets", "statefulsets", "replicasets")),
    ("/apis/batch/v1", True, ("jobs", "cronjobs")),
    ("/apis/coordination.k8s.io/v1", True, ("leases",)),
    (
        "/apis/admissionregistration.k8s.io/v1",
        False,
        ("validatingwebhookconfigurations", "mutatingwebhookconfigurations"),
    ),
    (
        "/apis/spiderpool.spidernet.io/v2beta1",
        False,
        ("spiderippools", "spidersubnets", "spiderreservedips", "spideripallocations", "spidercoordinators"),
    ),
    ("/apis/spiderpool.spidernet.io/v2beta1", True, ("spiderendpoints", "spidermultusconfigs")),
):
    for _plural in _plurals:
        _RESOURCES[_plural] = _RESOURCES[_plural[:-1]] = (_prefix, _plural, _namespaced)


def _api_path(args: tuple[str, ...]) -> str | None:
    """The API path of a ``kubectl get`` argument list, or None for what it does not translate."""
    positional: list[str] = []
    namespace, params = "default", {}
    every = False
    items = list(args)
    while items:
        arg = items.pop(0)
        if arg in ("-n", "--namespace") and items:
            namespace = items.pop(0)
        elif arg in ("-l", "--selector") and items:
            params["labelSelector"] = items.pop(0)
        elif arg == "--field-selector" and items:
            params["fieldSelector"] = items.pop(0)
        elif arg in ("-A", "--all-namespaces"):
            every = True
        elif arg.startswith("-"):
            return None
        else:
            positional.append(arg)
    if not positional or len(positional) > 2 or positional[0] not in _RESOURCES:
        return None
    prefix, plural, namespaced = _RESOURCES[positional[0]]
    path = prefix + (f"/namespaces/{namespace}" if namespaced and not every else "") + f"/{plural}"
    if len(positional) == 2:
        path += f"/{positional[1]}"
    return path + ("?" + urllib.parse.urlencode(params) if params else "")


class _Api(threading.local):
    """One kept-alive HTTPS connection to the lab's apiserver per thread (polling with kubectl costs
    a process and a TLS handshake each time, CPU the cluster under test needs on a 2-core machine)."""

    def __init__(self) -> None:
        self.conn: http.client.HTTPSConnection | None = None
        self.lab_dir = ""

    def get(self, lab: Lab, path: str) -> tuple[int, bytes]:
        for attempt in (1, 2):
            if self.conn is None or self.lab_dir != str(lab.dir):
                port = int(lab.state()["ports"]["apiserver"])
                self.conn = http.client.HTTPSConnection("127.0.0.1", port, context=lab._client_ssl(), timeout=30)
                self.lab_dir = str(lab.dir)
            try:
                self.conn.request("GET", path, headers={"Accept": "application/json"})
                resp = self.conn.getresponse()
                return resp.status, resp.read()
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


_API = _Api()


def get_json(lab: Lab, *args: str) -> Any:
    """``kubectl get <args> -o json``, read from the API directly when kubectl's arguments translate
    (the same objects; a list's items carry their kind as kubectl's do)."""
    path = _api_path(args)
    if path is None:
        return json.loads(lab.kubectl("get", *args, "-o", "json").stdout)
    try:
        status, raw = _API.get(lab, path)
    except (OSError, http.client.HTTPException) as exc:
        raise LabError(f"kubectl get {' '.join(args)} failed: {exc}") from None
    if status != 200:
        raise LabError(f"kubectl get {' '.join(args)} failed: {status} {raw[:300].decode(errors='replace')}")
    body = json.loads(raw)
    if "items" in body:
        kind = str(body.get("kind", "")).removesuffix("List")
        for item in body["items"]:
            item.setdefault("apiVersion", body.get("apiVersion"))
            item.setdefault("kind", kind)
    return body


def pods(lab: Lab, namespace: str, selector: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = get_json(lab, "pods", "-n", namespace, "-l", selector)["items"]
    return items


def wait_running(lab: Lab, namespace: str, selector: str, count: int, timeout: float = 120) -> list[dict[str, Any]]:
    """Wait until exactly ``count`` pods match and all are Running with an IP; return them."""
    found: list[dict[str, Any]] = []

    def ready() -> bool:
        nonlocal found
        found = pods(lab, namespace, selector)
        return len(found) == count and all(
            p["status"].get("phase") == "Running" and p["status"].get("podIP") for p in found
        )

    procs.wait_for(
        ready,
        timeout=timeout,
        what=f"{count} Running pod(s) {selector} in {namespace}",
        detail=lambda: _describe(lab, namespace),
    )
    return found


def _describe(lab: Lab, namespace: str) -> str:
    out = lab.kubectl("get", "pods,events", "-n", namespace, "-o", "wide", check=False)
    return out.stdout + out.stderr


def wait_gone(lab: Lab, namespace: str, selector: str, timeout: float = 120) -> None:
    procs.wait_for(
        lambda: not pods(lab, namespace, selector),
        timeout=timeout,
        what=f"pods {selector} in {namespace} to be deleted",
        detail=lambda: lab.kubectl("get", "pods", "-n", namespace, "-o", "wide", check=False).stdout,
    )


def in_netns(lab: Lab, target: str, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run a command on a node (``node1``: its network and mount namespaces) or in a pod (``ns/name``:
    ``kubectl exec``)."""
    return subprocess.run(lab.exec_argv(target, list(argv)), capture_output=True, text=True, timeout=timeout)


def apply(lab: Lab, manifest: str) -> None:
    lab.kubectl("apply", "-f", "-", input_text=manifest)


def allocation_record(ip: str, pool: str, *, pod: str = "app-0", namespace: str = "default", uid: str = "u-1") -> str:
    """A SpiderIPAllocation manifest: the record an agent writes when it hands ``ip`` out of ``pool``."""
    from spiderpool.ipam.allocate import record_name

    family = 6 if ":" in ip else 4
    return json.dumps(
        {
            "apiVersion": "spiderpool.spidernet.io/v2beta1",
            "kind": "SpiderIPAllocation",
            "metadata": {"name": record_name(ip)},
            "spec": {
                "ip": ip,
                "pool": pool,
                "ipVersion": family,
                "namespace": namespace,
                "pod": pod,
                "podUID": uid,
                "interface": "eth0",
            },
        }
    )


def pool_manifest(name: str, subnet: str, ips: list[str], **spec: Any) -> str:
    """A SpiderIPPool manifest; lab underlay pools get the lab gateway unless one is given."""
    gateway = {"172.18.0.0/16": "172.18.0.1", "fd00:172:18::/64": "fd00:172:18::1"}.get(subnet)
    body: dict[str, Any] = {"subnet": subnet, "ips": ips, **spec}
    if gateway and "gateway" not in spec:
        body["gateway"] = gateway
    return json.dumps(
        {
            "apiVersion": "spiderpool.spidernet.io/v2beta1",
            "kind": "SpiderIPPool",
            "metadata": {"name": name},
            "spec": body,
        }
    )


def pool_pod(name: str, namespace: str, pool: str, node: str, ipv6_pool: str | None = None) -> str:
    """A bare pod on ``node`` that takes its IPv4 address from ``pool`` (and its IPv6 one from
    ``ipv6_pool``, if given; label app=<name>)."""
    choice = {"ipv4": [pool], **({"ipv6": [ipv6_pool]} if ipv6_pool else {})}
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {"app": name},
                "annotations": {"ipam.spidernet.io/ippool": json.dumps(choice)},
            },
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "registry.invalid/app:1"}]},
        }
    )


def delete_walkthrough_subnet(lab: Lab) -> None:
    """Delete the walkthrough's SpiderSubnet ``subnet-test`` if it is there. It covers the lab's LAN:
    left behind by a failed test, it would refuse every later test's pool there."""
    lab.kubectl("delete", "spidersubnet", "subnet-test", "--wait=true", "--timeout=60s", "--ignore-not-found")


def spiderpool_cli(lab: Lab, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``kubectl spiderpool ARGS`` as an admin runs it: the lab's kubectl finds the plugin on PATH
    (the package's ``kubectl-spiderpool``, beside this Python), with the lab's kubeconfig."""
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    env = dict(os.environ, KUBECONFIG=str(lab.kubeconfig), PATH=path)
    argv = [str(build.binary("kubectl")), "spiderpool", *args]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    if check and proc.returncode != 0:
        raise LabError(f"kubectl spiderpool {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    return proc


def spiderpool_json(lab: Lab, *args: str) -> Any:
    """``kubectl spiderpool ARGS -o json``, parsed."""
    return json.loads(spiderpool_cli(lab, *args, "-o", "json").stdout)


def event_messages(
    lab: Lab, namespace: str, *, name: str | None = None, reason: str | None = None, uid: str | None = None
) -> list[str]:
    """The messages of the events in ``namespace`` about the object ``name`` (or ``uid``), with ``reason``."""
    fields = [
        f"{key}={value}"
        for key, value in (("involvedObject.name", name), ("involvedObject.uid", uid), ("reason", reason))
        if value
    ]
    argv = ["events", "-n", namespace, *(["--field-selector", ",".join(fields)] if fields else [])]
    return [str(e.get("message")) for e in get_json(lab, *argv)["items"]]
