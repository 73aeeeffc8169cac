"""A real kube-apiserver and etcd on loopback, with no nodes: the envtest approach.

For in-process tests of the product's stateful parts (the allocator, release, the endpoint
writer, the work queue, the leader elector, GC): the API they talk to is the real one (admission
chain, optimistic concurrency, preconditions, watches, 410s), but nothing runs pods. No root and
no network namespace are needed: everything listens on 127.0.0.1, on ports below the ephemeral
range. The binaries are the lab's (``spiderpool-lab build``).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from spiderpool.api import crds
from spiderpool_lab import build, pki, procs

ADMIN = "admin"


class ApiServer:
    def __init__(self, directory: Path | None = None) -> None:
        self.dir = directory or Path(tempfile.mkdtemp(prefix="spiderpool-envtest-"))
        self.pki = pki.Pki(self.dir / "pki")
        self.etcd_port, self.peer_port, self.port = procs.free_port(), procs.free_port(), procs.free_port()
        self._etcd: subprocess.Popen[bytes] | None = None
        self._apiserver: subprocess.Popen[bytes] | None = None

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "admin.kubeconfig"

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = (self.dir / f"{name}.log").open("ab")
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

    def start(self) -> ApiServer:
        pki.create(self.pki.dir, service_ip="10.0.0.1")
        self._write_kubeconfig()
        self._etcd = self._spawn(
            "etcd",
            [
                str(build.binary("etcd")),
                "--name=envtest",
                f"--data-dir={self.dir / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{self.etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{self.etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{self.peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{self.peer_port}",
                f"--initial-cluster=envtest=http://127.0.0.1:{self.peer_port}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self.start_apiserver()
        self.install_crds()
        return self

    def start_apiserver(self) -> None:
        p = self.pki
        self._apiserver = self._spawn(
            "kube-apiserver",
            [
                str(build.binary("kube-apiserver")),
                f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                "--endpoint-reconciler-type=none",  # (no kubernetes Service endpoints on loopback)
                f"--secure-port={self.port}",
                f"--tls-cert-file={p.apiserver_cert}",
                f"--tls-private-key-file={p.apiserver_key}",
                f"--client-ca-file={p.ca_cert}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={p.sa_pub}",
                f"--service-account-signing-key-file={p.sa_key}",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--authorization-mode=RBAC",
                # no controller-manager makes service accounts: pods are created without one
                "--disable-admission-plugins=ServiceAccount",
                "--profiling=false",
            ],
        )
        procs.wait_for(self.ready, timeout=90, what="kube-apiserver /readyz", detail=self._log_tail)

    def stop_apiserver(self) -> None:
        """Stop the apiserver (etcd keeps the data): clients see refused connections until
        ``start_apiserver``."""
        _stop(self._apiserver)
        self._apiserver = None

    def ready(self) -> bool:
        if self._apiserver is not None and self._apiserver.poll() is not None:
            raise RuntimeError(f"kube-apiserver exited:\n{self._log_tail()}")
        out = self.kubectl("get", "--raw=/readyz", check=False)
        return out.returncode == 0 and out.stdout.strip() == "ok"

    def _log_tail(self) -> str:
        return procs.tail(self.dir / "kube-apiserver.log")

    def kubectl(
        self, *args: str, check: bool = True, input_text: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(build.binary("kubectl")), f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True,
            text=True,
            check=check,
            input=input_text,
            timeout=60,
        )

    def install_crds(self) -> None:
        for text in crds.render_all().values():
            self.kubectl("apply", "--server-side", "-f", "-", input_text=text)
        for crd in crds.CRDS:
            self.kubectl("wait", "--for=condition=Established", f"crd/{crd.name}", "--timeout=60s")
        # discovery of a fresh CRD can lag its Established condition by a moment
        procs.wait_for(
            lambda: self.kubectl("get", "spiderippools", check=False).returncode == 0,
            timeout=30,
            what="the CRDs to be served",
        )

    def _write_kubeconfig(self) -> None:
        pki.write_kubeconfig(self.pki, self.kubeconfig, identity=ADMIN, server=self.url, name="envtest")

    def close(self) -> None:
        self.stop_apiserver()
        _stop(self._etcd)
        self._etcd = None
        shutil.rmtree(self.dir, ignore_errors=True)


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, then SIGKILL after 30 s; reaped either way."""
    if proc is None:
        return
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
