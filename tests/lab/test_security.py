"""What the installed chart's components may do, checked on the running processes: the agent's
socket is root's alone, the controller runs as nobody with nothing, the agent with the capabilities
it uses and no more, no log carries a secret, and the apiserver trusts the webhook only through
our CA (a wrong bundle is noticed and mended). The ServiceAccounts' permissions:
tests/lab/test_helm.py (``kubectl auth can-i`` for every rule)."""

from __future__ import annotations

import base64
import json
import os
import re
import stat
import subprocess
from pathlib import Path
from typing import Any

from spiderpool_lab import procs
from spiderpool_lab.cluster import Lab
from tests.helpers import get_json
from tests.stack import NS, Agents, Controllers

#: the capabilities the agent's container gets (charts/spiderpool/templates/agent.yaml says why)
AGENT_CAPS = {"CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13, "CAP_SYS_ADMIN": 21, "CAP_SYS_PTRACE": 19}


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def _pid(lab: Lab, component: Controllers | Agents, pod: dict[str, Any]) -> int:
    meta, spec = pod["metadata"], pod["spec"]
    pid = lab.container_pid(str(spec["nodeName"]), NS, str(meta["name"]), component.container)
    assert pid is not None, meta["name"]
    return pid


def _connect_as(lab: Lab, node: str, uid: int) -> str:
    """Connect to the node's agent socket as another user, from the node (where the socket is
    /run/spidernet/spiderpool.sock, as the plugin sees it), and send one request."""
    code = (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_UNIX); s.settimeout(10)\n"
        "try:\n s.connect(sys.argv[1])\nexcept OSError as e:\n print('refused', e.errno); sys.exit(0)\n"
        "s.sendall(b'GET /v1/ipam/healthy HTTP/1.1\\r\\nHost: a\\r\\nConnection: close\\r\\n\\r\\n')\n"
        "print('answered', s.recv(200).split(b'\\r\\n')[0].decode())\n"
    )
    # (the machine's python3: the venv's lies under root's home, which others may not enter)
    argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "/usr/bin/python3", "-c", code]
    out = subprocess.run(
        lab.exec_argv(node, [*argv, "/run/spidernet/spiderpool.sock"]), capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out
    return out.stdout.strip()


def test_the_agent_socket_is_roots_alone(agents: Agents) -> None:
    lab = agents.lab
    for node in lab.nodes():
        path = agents.socket(node.name)
        st, folder = os.stat(path), os.stat(os.path.dirname(path))
        assert stat.S_ISSOCK(st.st_mode)
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600), (path, oct(st.st_mode))
        assert folder.st_mode & stat.S_IXOTH  # others may reach the socket: its own mode is what stops them
        assert _connect_as(lab, node.name, 65534) == "refused 13"  # EACCES
    # and if the mode were ever widened, the agent itself refuses another user (SO_PEERCRED)
    path = agents.socket("node1")
    os.chmod(path, 0o666)
    try:
        assert _connect_as(lab, "node1", 65534) == "answered HTTP/1.1 403 Forbidden"
        assert _connect_as(lab, "node1", 0) == "answered HTTP/1.1 200 OK"
    finally:
        os.chmod(path, 0o600)


def test_containers_run_with_only_what_they_need(agents: Agents, controllers: Controllers) -> None:
    lab = agents.lab
    for pod in controllers.pods():
        st = _status(_pid(lab, controllers, pod))
        assert st["Uid"].split()[0] != "0", f"{pod['metadata']['name']} runs as root: {st['Uid']}"
        assert int(st["CapEff"], 16) == 0, st["CapEff"]
        assert int(st["CapBnd"], 16) == 0, st["CapBnd"]
        assert st["NoNewPrivs"] == "1"
        writable = subprocess.run(
            lab.exec_argv(f"{NS}/{pod['metadata']['name']}", ["python3", "-c", "open('/x','w')"]),
            capture_output=True,
            text=True,
        )
        assert "Read-only file system" in writable.stderr, writable.stderr
    for pod in agents.pods():
        st = _status(_pid(lab, agents, pod))
        assert st["Uid"].split()[0] == "0"  # the node's CNI bin dir and socket folder are root's
        want = sum(1 << bit for bit in AGENT_CAPS.values())
        assert int(st["CapEff"], 16) == want, f"CapEff {st['CapEff']}, expected {want:016x} ({sorted(AGENT_CAPS)})"
        container = pod["spec"]["containers"][0]
        assert container["securityContext"].get("privileged") is False
        assert container["securityContext"]["readOnlyRootFilesystem"] is True


_SECRETS = (
    re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}"),  # a JWT: a ServiceAccount token
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"Bearer [A-Za-z0-9._-]{8,}"),
)


def test_no_secret_or_token_in_the_logs(agents: Agents, controllers: Controllers) -> None:
    lab = agents.lab
    secret = get_json(lab, "secret", "-n", NS, "spiderpool-controller-server-certs")["data"]
    key_body = "".join(base64.b64decode(secret["tls.key"]).decode().splitlines()[1:-1])[:40]
    texts = {}
    for pod in [*controllers.pods(), *agents.pods()]:
        name = pod["metadata"]["name"]
        for previous in ("", "--previous"):
            out = lab.kubectl("logs", "-n", NS, name, *([previous] if previous else []), check=False)
            texts[f"{name}{previous}"] = out.stdout
    for log in sorted(lab.logs.glob("spiderpool-agent-*.log")):  # the tests' own agents
        texts[log.name] = log.read_text(errors="replace")
    assert sum(len(t) for t in texts.values()) > 1000, "no logs to look at"
    for where, text in texts.items():
        for pattern in _SECRETS:
            assert not pattern.search(text), f"{where}: {pattern.pattern}"
        assert key_body not in text, f"{where}: the webhook's private key"


def _webhook_rejects(lab: Lab) -> bool:
    """A rule only the webhook checks (a reversed range): refused when the apiserver reached it."""
    body = {
        "apiVersion": "spiderpool.spidernet.io/v2beta1",
        "kind": "SpiderReservedIP",
        "metadata": {"name": "tls-check"},
        "spec": {"ips": ["10.99.0.9-10.99.0.1"]},
    }
    out = lab.kubectl("create", "--dry-run=server", "-f", "-", input_text=json.dumps(body), check=False)
    return out.returncode != 0 and "starts after it ends" in out.stderr


def _probe_config(ca_b64: str) -> dict[str, object]:
    """A webhook configuration of the test's: the controller's validating webhook for reserved IPs
    labelled ``tls-probe``, with ``failurePolicy: Fail`` (so a failed TLS check is an error)."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "tls-probe"},
        "webhooks": [
            {
                "name": "tls-probe.spiderpool.spidernet.io",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": "Fail",
                "timeoutSeconds": 5,
                "objectSelector": {"matchLabels": {"tls-probe": "1"}},
                "clientConfig": {
                    "caBundle": ca_b64,
                    "service": {
                        "namespace": NS,
                        "name": "spiderpool-controller",
                        "port": 5722,
                        "path": "/validate-spiderpool-spidernet-io-v2beta1-spiderreservedip",
                    },
                },
                "rules": [
                    {
                        "apiGroups": ["spiderpool.spidernet.io"],
                        "apiVersions": ["v2beta1"],
                        "operations": ["CREATE"],
                        "resources": ["spiderreservedips"],
                    }
                ],
            }
        ],
    }


def _probe(lab: Lab) -> subprocess.CompletedProcess[str]:
    body = {
        "apiVersion": "spiderpool.spidernet.io/v2beta1",
        "kind": "SpiderReservedIP",
        "metadata": {"name": "tls-probe", "labels": {"tls-probe": "1"}},
        "spec": {"ips": ["10.99.0.1"]},
    }
    return lab.kubectl("create", "--dry-run=server", "-f", "-", input_text=json.dumps(body), check=False)


def test_the_apiserver_trusts_the_webhook_through_our_ca_only(controllers: Controllers) -> None:
    """The apiserver calls the webhook over TLS checked against the configuration's CA bundle: with
    a stranger's CA the call fails, with ours it succeeds. A stranger's bundle written into our own
    configurations (where ``failurePolicy: Ignore`` would let objects in unchecked) is noticed by
    the controller and mended. (Rotation: tests/lab/test_helm.py.)"""
    lab = controllers.lab
    from spiderpool.controller import certs

    stranger = base64.b64encode(certs.generate(dns=["elsewhere"], ips=[]).ca_pem).decode()
    ours = get_json(lab, "validatingwebhookconfiguration", "spiderpool-controller")["webhooks"][0]["clientConfig"]
    try:
        lab.kubectl("apply", "-f", "-", input_text=json.dumps(_probe_config(stranger)))
        refused = _probe(lab)
        assert refused.returncode != 0, refused.stdout
        assert "x509" in refused.stderr or "certificate" in refused.stderr, refused.stderr
        lab.kubectl("apply", "-f", "-", input_text=json.dumps(_probe_config(ours["caBundle"])))
        procs.wait_for(lambda: _probe(lab).returncode == 0, timeout=30, what="the webhook trusted through our CA")
    finally:
        lab.kubectl("delete", "validatingwebhookconfiguration", "tls-probe", "--ignore-not-found", check=False)

    for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
        hooks = get_json(lab, kind, "spiderpool-controller")["webhooks"]
        patch = [
            {"op": "replace", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": stranger}
            for i in range(len(hooks))
        ]
        lab.kubectl("patch", kind, "spiderpool-controller", "--type=json", "-p", json.dumps(patch))

    def mended() -> bool:
        return all(
            h["clientConfig"].get("caBundle") not in (None, stranger)
            for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration")
            for h in get_json(lab, kind, "spiderpool-controller")["webhooks"]
        )

    procs.wait_for(mended, timeout=60, what="the controller to put a CA bundle that trusts it back")
    procs.wait_for(lambda: _webhook_rejects(lab), timeout=30, what="the webhook enforced again")
