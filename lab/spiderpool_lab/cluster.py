"""The lab cluster: a control plane, and nodes that are real Kubernetes nodes.

``Lab.up()`` is idempotent: it starts whatever is missing and returns once the cluster is ready
(control plane healthy, every node Ready, the default ServiceAccount present). ``Lab.down()``
stops every process carrying the lab's mark, removes the nodes' cgroups and every namespace with
the lab's prefix, and puts back the machine's sysctls kubelet changed.

Where things run:
- etcd, kube-apiserver, kube-controller-manager and kube-scheduler in the control plane's network
  namespace, which sits on the first underlay at 172.18.0.250 (as kind's control-plane node sits
  on its LAN): kubelets, pods (the ``kubernetes`` Service) and webhooks reach the apiserver there,
  and the apiserver reaches the kubelets (exec, logs, port-forward) and the webhooks' endpoints;
- in the machine's root namespace only a relay from 127.0.0.1:<port> to the apiserver (its
  outgoing sockets are made inside the control plane's namespace), so ``kubectl`` and the tests use
  loopback and no lab address is ever routed there;
- per node, a network namespace and a mount namespace (``spiderpool_lab.nodens``), in which run
  containerd (with runc), the kubelet and kube-proxy; pods are containers of that containerd.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spiderpool_lab import build, forward, netns, nodens, noderuntime, paths, pki, procs, topology
from spiderpool_lab.progress import say, step

CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
MULTUS_IMAGE = "lab.local/multus-cni:v4.3.0"


class LabError(RuntimeError):
    pass


@dataclass(frozen=True)
class NodeInfo:
    name: str
    index: int
    netns: str
    dir: Path

    @property
    def cni_conf_dir(self) -> Path:
        return self.dir / "etc" / "cni" / "net.d"

    @property
    def cni_bin_dir(self) -> Path:
        return self.dir / "opt" / "cni" / "bin"

    @property
    def var_lib_cni(self) -> Path:
        return self.dir / "var" / "lib" / "cni"

    @property
    def ip4(self) -> str:
        return topology.UNDERLAYS[0].node_ip4(self.index)

    @property
    def ip6(self) -> str:
        return topology.UNDERLAYS[0].node_ip6(self.index)


class Lab:
    """One lab instance, identified by its directory and namespace prefix."""

    def __init__(self, directory: Path | None = None, prefix: str | None = None) -> None:
        self.dir = directory or paths.lab_dir()
        self.prefix = prefix or paths.netns_prefix()
        self.logs = self.dir / "logs"
        self.pki = pki.Pki(self.dir / "pki")
        self.state_file = self.dir / "state.json"

    # ----------------------------------------------------------------- state
    def state(self) -> dict[str, Any]:
        try:
            data = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _save(self, state: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
        tmp.replace(self.state_file)

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "admin.kubeconfig"

    @property
    def controller_kubeconfig(self) -> Path:
        """spiderpool-controller's own credentials (user ``spiderpool-controller``)."""
        return self.dir / "spiderpool-controller.kubeconfig"

    def node(self, name: str) -> NodeInfo:
        index = int(name.removeprefix("node"))
        return NodeInfo(name, index, topology.node_netns(self.prefix, name), self.dir / "nodes" / name)

    def nodes(self) -> list[NodeInfo]:
        return [self.node(n) for n in self.state().get("nodes", [])]

    def env(self) -> dict[str, str]:
        """Variables to use the lab from another shell."""
        bins = [str(build.binary("kubectl").parent), str(build.binary("helm").parent)]
        return {
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": os.pathsep.join([*bins, os.environ.get("PATH", "")]),
            paths.LAB_DIR_ENV: str(self.dir),
            paths.PREFIX_ENV: self.prefix,
        }

    # -------------------------------------------------------------- helpers
    def _client_ssl(self, *, verify: bool = True) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        if not verify:
            # kube-controller-manager and kube-scheduler serve health on self-signed certificates
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        ctx.load_cert_chain(str(self.pki.client_cert("admin")), str(self.pki.client_key("admin")))
        return ctx

    def _https_ok(self, port: int, path: str, *, verify: bool = True) -> bool:
        try:
            ctx = self._client_ssl(verify=verify)
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=3)
            conn.request("GET", path)
            ok = conn.getresponse().status == 200
            conn.close()
            return ok
        except (OSError, ssl.SSLError, http.client.HTTPException):
            return False

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """A small admin request to the apiserver (used by lab tooling, not by the product)."""
        status, data, _ = self.api_full(method, path, body)
        return status, data

    def api_full(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, dict[str, str]]:
        """``api`` with extra request headers (e.g. ``Impersonate-User``); also answers the reply's headers."""
        port = int(self.state()["ports"]["apiserver"])
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=self._client_ssl(), timeout=10)
        payload = json.dumps(body) if body is not None else None
        conn.request(
            method,
            path,
            body=payload,
            headers={"Content-Type": "application/json", "Accept": "application/json", **(headers or {})},
        )
        resp = conn.getresponse()
        raw = resp.read()
        conn.close()
        got = {k.lower(): v for k, v in resp.getheaders()}
        try:
            return resp.status, json.loads(raw) if raw else None, got
        except ValueError:
            return resp.status, raw.decode(errors="replace"), got

    def _write_kubeconfig(self, path: Path, identity: str, server: str) -> None:
        pki.write_kubeconfig(self.pki, path, identity=identity, server=server)

    def _start(
        self,
        state: dict[str, Any],
        key: str,
        argv: list[str],
        *,
        netns_name: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        log = self.logs / f"{key.replace('/', '-')}.log"
        pid = procs.start(argv, lab_id=state["lab_id"], log=log, netns=netns_name, env=env)
        state.setdefault("procs", {})[key] = pid
        self._save(state)

    def start_process(self, key: str, argv: list[str], *, netns_name: str | None = None) -> int:
        """Start a process that belongs to the lab (stopped by ``down``); log in ``logs/<key>.log``."""
        state = self.state()
        self._start(state, key, argv, netns_name=netns_name)
        return int(state["procs"][key])

    def stop_process(self, key: str, *, kill: bool = False) -> None:
        """Stop a lab process: SIGTERM (graceful), or SIGKILL with ``kill`` (a crash)."""
        state = self.state()
        pid = state.get("procs", {}).pop(key, None)
        self._save(state)
        if pid and kill:
            os.kill(pid, 9)
            procs.wait_for(lambda: not procs.alive(pid), timeout=10, what=f"{key} to die")
        elif pid:
            procs.stop([pid])

    def process_alive(self, key: str) -> bool:
        return self._running(self.state(), key)

    def _running(self, state: dict[str, Any], key: str) -> bool:
        return procs.alive(state.get("procs", {}).get(key))

    def _log(self, key: str) -> Path:
        return self.logs / f"{key.replace('/', '-')}.log"

    def _wait(self, key: str, condition: Any, what: str, timeout: float = 120) -> None:
        def check() -> bool:
            if not self._running(self.state(), key):
                raise LabError(f"{key} exited while starting\n{procs.tail(self._log(key))}")
            return bool(condition())

        procs.wait_for(check, timeout=timeout, what=what, detail=lambda: procs.tail(self._log(key)))

    # ------------------------------------------------------------------- up
    def up(self, *, nodes: int = 2, cni: str = "macvlan") -> None:
        """Bring the lab up (idempotent) with exactly ``nodes`` nodes."""
        if os.geteuid() != 0:
            raise LabError("the lab creates network and mount namespaces and must run as root")
        for tool, package in (
            ("ip", "iproute2"),
            ("nsenter", "util-linux"),
            ("unshare", "util-linux"),
            ("sysctl", "procps"),
            ("iptables", "iptables"),
            ("runc", "runc"),
        ):
            if shutil.which(tool) is None:
                raise LabError(f"'{tool}' is missing: install the Debian package {package} (apt-get install {package})")
        leaks = topology.root_routes_to_lab()
        if leaks:
            raise LabError(f"refusing to start: the root namespace routes lab subnets: {leaks}")
        state = self.state()
        if self._stale(state):
            # The machine restarted under a running lab (or everything of it was killed): its etcd
            # still holds the old cluster's objects, pods of gone sandboxes and their IPs among
            # them, which later tests and demos would trip over. Start clean.
            say("the lab's processes and namespaces are gone (machine restart?): starting clean")
            self.down()
            state = {}
        if not state.get("lab_id"):
            state = {"lab_id": secrets.token_hex(6), "procs": {}, "nodes": []}
        # The machine's values of the sysctls kubelet changes, read before any kubelet ever ran here.
        state.setdefault("sysctls", noderuntime.machine_sysctls(paths.cache_dir() / "machine-sysctls.json"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        self._save(state)
        with step("control plane"):
            self._up_control_plane(state)
        with step(f"fabric and {nodes} node(s)"):
            self._up_nodes(state, nodes, cni)
        with step("cluster ready"):
            # (a node without a CNI config is registered but never Ready: the kubelet waits for one)
            self._wait_ready(nodes, ready=cni != "none")
        with step("pod CIDR routes and kubeadm-config"):
            self.route_pod_cidrs()
            self.ensure_kubeadm_config()
        leaks = topology.root_routes_to_lab()
        if leaks:
            raise LabError(f"the root namespace routes lab subnets: {leaks}")

    def _stale(self, state: dict[str, Any]) -> bool:
        """Whether ``state`` describes a lab of which nothing runs any more: no process carries its
        mark and none of its namespaces exists. (One dead component is not that: ``up`` restarts it
        and the cluster's data is kept.)"""
        lab_id = state.get("lab_id")
        if not isinstance(lab_id, str) or not lab_id:
            return False
        return not procs.marked(lab_id) and not topology.lab_namespaces(self.prefix)

    def _cp(self, argv: list[str]) -> list[str]:
        """argv run inside the control plane's network namespace."""
        return netns.exec_argv(topology.control_plane_netns(self.prefix), argv)

    def _up_control_plane(self, state: dict[str, Any]) -> None:
        ports = state.setdefault("ports", {})
        if "apiserver" not in ports or (
            not self._running(state, "apiserver-relay") and not procs.port_free(int(ports["apiserver"]))
        ):
            ports["apiserver"] = procs.free_port()  # the root namespace's relay to the apiserver
        # (inside the control plane's own namespace the ports are fixed: nothing else listens there)
        ports.update({"etcd": 2379, "etcd_peer": 2380, "controller_manager": 10257, "scheduler": 10259})
        self._save(state)
        topology.ensure_switch(self.prefix)
        cp = topology.ensure_control_plane(self.prefix)
        self.pki.dir.mkdir(parents=True, exist_ok=True)
        pki.create(self.pki.dir, service_ip=topology.SERVICE_IP, extra_ips=(topology.CONTROL_PLANE_IP,))
        relay = int(ports["apiserver"])
        inside = f"https://127.0.0.1:{topology.APISERVER_PORT}"
        lan = f"https://{topology.CONTROL_PLANE_IP}:{topology.APISERVER_PORT}"
        for identity in ("admin", "spiderpool-controller"):
            self._write_kubeconfig(self.dir / f"{identity}.kubeconfig", identity, f"https://127.0.0.1:{relay}")
        for identity in ("controller-manager", "scheduler"):
            self._write_kubeconfig(self.dir / f"{identity}.kubeconfig", identity, inside)
        # what the nodes use (kubelet, kube-proxy, Multus' plugin): the apiserver on the LAN
        self._write_kubeconfig(self.node_kubeconfig, "admin", lan)

        if not self._running(state, "etcd"):
            self._start(
                state,
                "etcd",
                self._cp(
                    [
                        str(build.binary("etcd")),
                        "--name=lab",
                        f"--data-dir={self.dir / 'etcd'}",
                        "--listen-client-urls=http://127.0.0.1:2379",
                        "--advertise-client-urls=http://127.0.0.1:2379",
                        "--listen-peer-urls=http://127.0.0.1:2380",
                        "--initial-advertise-peer-urls=http://127.0.0.1:2380",
                        "--initial-cluster=lab=http://127.0.0.1:2380",
                        "--unsafe-no-fsync",  # a throwaway lab: trade durability for speed
                        "--log-level=warn",
                    ]
                ),
            )
        if not self._running(state, "apiserver-relay"):
            self._start(
                state,
                "apiserver-relay",
                [
                    sys.executable,
                    "-m",
                    "spiderpool_lab.forward",
                    f"--listen-port={relay}",
                    f"--connect-netns={cp}",
                    f"--connect-port={topology.APISERVER_PORT}",
                ],
            )
        self._wait("etcd", lambda: self._in_cp_http(2379, "/health", b'"health":"true"'), "etcd health")

        if not self._running(state, "kube-apiserver"):
            p = self.pki
            self._start(
                state,
                "kube-apiserver",
                self._cp(
                    [
                        str(build.binary("kube-apiserver")),
                        "--etcd-servers=http://127.0.0.1:2379",
                        "--bind-address=0.0.0.0",
                        f"--advertise-address={topology.CONTROL_PLANE_IP}",
                        f"--secure-port={topology.APISERVER_PORT}",
                        f"--tls-cert-file={p.apiserver_cert}",
                        f"--tls-private-key-file={p.apiserver_key}",
                        f"--client-ca-file={p.ca_cert}",
                        # exec, logs and port-forward: the apiserver calls the kubelets as the lab's admin
                        f"--kubelet-client-certificate={p.client_cert('admin')}",
                        f"--kubelet-client-key={p.client_key('admin')}",
                        "--kubelet-preferred-address-types=InternalIP",
                        # webhooks served by pods are dialled at their endpoints (no kube-proxy here)
                        "--enable-aggregator-routing=true",
                        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                        f"--service-account-key-file={p.sa_pub}",
                        f"--service-account-signing-key-file={p.sa_key}",
                        f"--service-cluster-ip-range={topology.SERVICE_CIDR}",
                        "--authorization-mode=Node,RBAC",
                        "--allow-privileged=true",
                        "--profiling=false",
                    ]
                ),
            )
        self._wait("kube-apiserver", lambda: self._https_ok(relay, "/readyz"), "kube-apiserver /readyz")

        common = ["--bind-address=127.0.0.1", "--leader-elect=false", "--profiling=false"]
        if not self._running(state, "kube-controller-manager"):
            kc = str(self.dir / "controller-manager.kubeconfig")
            self._start(
                state,
                "kube-controller-manager",
                self._cp(
                    [
                        str(build.binary("kube-controller-manager")),
                        f"--kubeconfig={kc}",
                        f"--authentication-kubeconfig={kc}",
                        f"--authorization-kubeconfig={kc}",
                        "--secure-port=10257",
                        f"--service-account-private-key-file={self.pki.sa_key}",
                        f"--root-ca-file={self.pki.ca_cert}",
                        f"--cluster-signing-cert-file={self.pki.ca_cert}",
                        f"--cluster-signing-key-file={self.pki.ca_key}",
                        "--use-service-account-credentials=true",
                        f"--service-cluster-ip-range={topology.SERVICE_CIDR}",
                        # every node gets a pod CIDR (node.spec.podCIDR), for the overlay-style cluster
                        # CNI (bridge + host-local) that the overlay tests run beside the underlay
                        "--allocate-node-cidrs=true",
                        f"--cluster-cidr={topology.POD_CIDR}",
                        "--node-cidr-mask-size=24",
                        "--controllers=*",
                        *common,
                    ]
                ),
            )
        if not self._running(state, "kube-scheduler"):
            ks = str(self.dir / "scheduler.kubeconfig")
            self._start(
                state,
                "kube-scheduler",
                self._cp(
                    [
                        str(build.binary("kube-scheduler")),
                        f"--kubeconfig={ks}",
                        f"--authentication-kubeconfig={ks}",
                        f"--authorization-kubeconfig={ks}",
                        "--secure-port=10259",
                        *common,
                    ]
                ),
            )
        self._wait(
            "kube-controller-manager",
            lambda: self._in_cp_https(10257, "/healthz"),
            "kube-controller-manager /healthz",
        )
        self._wait("kube-scheduler", lambda: self._in_cp_https(10259, "/healthz"), "kube-scheduler /healthz")

    def _in_cp_http(self, port: int, path: str, expect: bytes) -> bool:
        """GET a plain-HTTP endpoint on the control plane namespace's loopback."""
        try:
            sock = forward.in_netns(netns.path(topology.control_plane_netns(self.prefix)), socket.socket)
            with sock:
                sock.settimeout(3)
                sock.connect(("127.0.0.1", port))
                sock.sendall(f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
                data = b""
                while chunk := sock.recv(4096):
                    data += chunk
            return expect in data
        except OSError:
            return False

    def _in_cp_https(self, port: int, path: str) -> bool:
        """kube-controller-manager's and kube-scheduler's health (self-signed, on the namespace's loopback)."""
        try:
            raw = forward.in_netns(netns.path(topology.control_plane_netns(self.prefix)), socket.socket)
            raw.settimeout(3)
            raw.connect(("127.0.0.1", port))
            with self._client_ssl(verify=False).wrap_socket(raw) as tls:
                tls.sendall(f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
                head = tls.recv(64)
            return head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200")
        except (OSError, ssl.SSLError):
            return False

    # ------------------------------------------------------------------ nodes
    @property
    def node_kubeconfig(self) -> Path:
        """The kubeconfig of node components: the apiserver at its LAN address."""
        return self.dir / "node.kubeconfig"

    def in_node(self, name: str, state: dict[str, Any] | None = None) -> list[str]:
        """The argv prefix that runs a command on a node: its network and mount namespaces."""
        st = state or self.state()
        holder = st.get("procs", {}).get(f"mountns/{name}")
        if not procs.alive(holder):
            raise LabError(f"node {name} is not running (no mount namespace holder)")
        return ["nsenter", f"--net={netns.path(self.node(name).netns)}", f"--mount=/proc/{holder}/ns/mnt", "--"]

    def _cgroup_root(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def _up_nodes(self, state: dict[str, Any], count: int, cni: str) -> None:
        wanted = [topology.node_name(i) for i in range(1, count + 1)]
        for name in [n for n in state.get("nodes", []) if n not in wanted]:
            self._remove_node(state, name)
        for name in wanted:
            node = self.node(name)
            topology.ensure_node(self.prefix, node.index)
            self._prepare_node_dirs(node, state, cni)
            if name not in state["nodes"]:
                state["nodes"].append(name)
                self._save(state)
            self._up_node(state, node)

    def _up_node(self, state: dict[str, Any], node: NodeInfo) -> None:
        name = node.name
        holder = f"mountns/{name}"
        if not self._running(state, holder):
            # A node whose namespace holder died is started afresh (its old processes are stopped).
            for key in (f"kubelet/{name}", f"containerd/{name}", f"kube-proxy/{name}"):
                pid = state.get("procs", {}).pop(key, None)
                if pid:
                    procs.stop([pid])
            (node.dir / "mountns.ready").unlink(missing_ok=True)
            self._start(
                state,
                holder,
                [
                    "nsenter",
                    f"--net={netns.path(node.netns)}",
                    "--",
                    "unshare",
                    "--mount",
                    "--propagation=private",
                    sys.executable,
                    "-m",
                    "spiderpool_lab.nodens",
                    str(node.dir),
                ],
            )
            self._wait(holder, lambda: (node.dir / "mountns.ready").exists(), f"{name}'s mount namespace")
        run = self.in_node(name, state)
        if not self._running(state, f"containerd/{name}"):
            (node.dir / "etc" / "containerd" / "config.toml").write_text(noderuntime.containerd_config())
            hosts = node.dir / "etc" / "containerd" / "certs.d" / noderuntime.REGISTRY
            hosts.mkdir(parents=True, exist_ok=True)
            (hosts / "hosts.toml").write_text(noderuntime.registry_hosts())
            self._start(
                state,
                f"containerd/{name}",
                [*run, str(build.binary("containerd")), "--config=/etc/containerd/config.toml"],
                env=noderuntime.containerd_env(),
            )
        self._wait(
            f"containerd/{name}",
            lambda: subprocess.run([*run, *noderuntime.ctr_argv("version")], capture_output=True).returncode == 0,
            f"containerd on {name}",
        )
        if noderuntime.import_images(run, node.dir / "images.imported"):
            say(f"{name}: images imported")
        if not self._running(state, f"kubelet/{name}"):
            noderuntime.make_cgroup_root(self._cgroup_root(name))
            resolv = node.dir / "resolv.conf"
            resolv.write_text("# the lab runs no DNS server\n")
            config = node.dir / "kubelet.yaml"
            config.write_text(
                noderuntime.kubelet_config(
                    node_ip=node.ip4,
                    cgroup_root=self._cgroup_root(name),
                    ca_file=self.pki.ca_cert,
                    resolv_conf=resolv,
                )
            )
            self._start(
                state,
                f"kubelet/{name}",
                [
                    *run,
                    str(build.binary("kubelet")),
                    f"--config={config}",
                    f"--kubeconfig={self.node_kubeconfig}",
                    f"--hostname-override={name}",
                    f"--node-ip={node.ip4}",
                    f"--node-labels=lab.spiderpool.spidernet.io/node={name}",
                ],
            )
        proxy = f"kube-proxy/{name}"
        if not self._running(state, proxy):
            # kube-proxy (iptables mode) on the node, as on a real node: Services and nodePorts are
            # the node's netfilter rules.
            config = node.dir / "kube-proxy.yaml"
            config.write_text(self._kube_proxy_config(name))
            self._start(
                state,
                proxy,
                [*run, str(build.binary("kube-proxy")), f"--config={config}", f"--hostname-override={name}"],
            )

    def _kube_proxy_config(self, name: str) -> str:
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(self.node_kubeconfig)},
            "hostnameOverride": name,
            "mode": "iptables",
            # underlay pod IPs are outside it, so their Service traffic is masqueraded and the
            # replies come back through the node (what the veth plugin relies on)
            "clusterCIDR": topology.POD_CIDR,
            "bindAddress": "0.0.0.0",
            "metricsBindAddress": "127.0.0.1:10249",
            "healthzBindAddress": "127.0.0.1:10256",
            # conntrack limits are the machine's, not the node's: leave them alone
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
            "iptables": {"syncPeriod": "30s", "minSyncPeriod": "0s"},
        }
        return json.dumps(config, indent=2)

    def _prepare_node_dirs(self, node: NodeInfo, state: dict[str, Any], cni: str) -> None:
        for d in nodens.folders(node.dir):
            d.mkdir(parents=True, exist_ok=True)
        # The reference plugins go into the node's /opt/cni/bin, as a node image would ship them.
        for plugin in build.cni_bin_dir().iterdir():
            if plugin.name.startswith("."):
                continue
            target = node.cni_bin_dir / plugin.name
            if not target.exists() or target.stat().st_mtime < plugin.stat().st_mtime:
                shutil.copy2(plugin, target)
        multus = build.binary("multus")
        if not (node.cni_bin_dir / "multus").exists():
            shutil.copy2(multus, node.cni_bin_dir / "multus")
        if cni == "macvlan" and not any(node.cni_conf_dir.iterdir()):
            self.write_cni_config(node.name, "10-lab-macvlan.conflist", self.macvlan_conflist(node.name))

    def _stop_node(self, state: dict[str, Any], name: str) -> None:
        """Stop a node's processes and its pods' containers, and remove its cgroups."""
        for key in (f"kubelet/{name}", f"kube-proxy/{name}", f"containerd/{name}"):
            pid = state.get("procs", {}).pop(key, None)
            if pid:
                procs.stop([pid])
        noderuntime.kill_cgroup(self._cgroup_root(name))
        # the runtime's shims outlive containerd by design: they carry the lab's mark
        shims = [p for p in procs.marked(state.get("lab_id", "")) if "containerd-shim" in _cmdline(p)]
        procs.stop(shims)
        pid = state.get("procs", {}).pop(f"mountns/{name}", None)
        if pid:
            procs.stop([pid])
        procs.wait_for(
            lambda: not noderuntime.cgroup_pids(self._cgroup_root(name)), timeout=30, what=f"{name}'s pods to stop"
        )
        left = noderuntime.remove_cgroup_root(self._cgroup_root(name))
        if left:
            say(f"{name}: cgroups not removed: {left[:3]}")
        self._save(state)

    def crash_node(self, name: str) -> None:
        """A node lost at once, as when its power goes: SIGKILL to its kubelet, kube-proxy,
        containerd, the runtime's shims, every process of its pods and its mount namespace (its pods'
        network namespaces die with them). ``heal()`` boots it again."""
        state = self.state()
        net_ino = os.stat(netns.path(self.node(name).netns)).st_ino
        keys = [f"kubelet/{name}", f"kube-proxy/{name}", f"containerd/{name}", f"mountns/{name}"]
        pids = [state.get("procs", {}).pop(k, None) for k in keys]
        shims = [
            p
            for p in procs.marked(state.get("lab_id", ""))
            if "containerd-shim" in _cmdline(p) and _netns_ino(p) == net_ino
        ]
        for pid in [*[p for p in pids if p], *shims, *noderuntime.cgroup_pids(self._cgroup_root(name))]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._save(state)
        procs.wait_for(
            lambda: (
                not any(procs.alive(p) for p in [*pids, *shims])
                and not noderuntime.cgroup_pids(self._cgroup_root(name))
            ),
            timeout=30,
            what=f"{name}'s processes to die",
        )

    def heal(self) -> None:
        """Start whatever lab process is not running (a killed apiserver, etcd, kubelet, containerd,
        or a whole crashed node), put the machine's sysctls back, and wait until the cluster is
        ready again: what systemd and a node's reboot do on a real cluster."""
        self.up(nodes=len(self.state().get("nodes", [])))

    def _remove_node(self, state: dict[str, Any], name: str) -> None:
        self._stop_node(state, name)
        topology.remove_node(self.prefix, name)
        self.api("DELETE", f"/api/v1/nodes/{name}")
        shutil.rmtree(self.node(name).dir, ignore_errors=True)
        state["nodes"].remove(name)
        self._save(state)

    def _wait_ready(self, count: int, *, ready: bool = True) -> None:
        names = [topology.node_name(i) for i in range(1, count + 1)]
        saved = self.state().get("sysctls", {})

        restarted: dict[str, float] = {}

        def supervise() -> None:
            """systemd's ``Restart=always`` for the node daemons: a kubelet started while its
            containerd's CRI was still initialising (after a crash it replays its state) exits at
            once ("server is not initialized yet"); it is started again, 5 s later, as a unit would be."""
            state = self.state()
            for name in names:
                daemons = (f"kubelet/{name}", f"containerd/{name}", f"kube-proxy/{name}")
                if all(self._running(state, k) for k in daemons) or not self._running(state, f"mountns/{name}"):
                    continue
                if time.monotonic() - restarted.get(name, 0.0) < 5:
                    continue
                restarted[name] = time.monotonic()
                say(f"{name}: restarting what exited: {[k for k in daemons if not self._running(state, k)]}")
                self._up_node(state, self.node(name))

        def nodes_ready() -> bool:
            # kubelet changes machine-wide sysctls as it starts: put the machine's values back at once
            changed = noderuntime.restore_sysctls(saved)
            if changed:
                say(f"restored the machine's sysctls kubelet changed: {changed} -> {saved}")
            supervise()
            code, body = self.api("GET", "/api/v1/nodes")
            if code != 200:
                return False
            good = set()
            for item in body.get("items", []):
                for cond in item.get("status", {}).get("conditions", []):
                    if cond.get("type") == "Ready" and (cond.get("status") == "True" or not ready):
                        good.add(item["metadata"]["name"])
            return all(n in good for n in names)

        def default_sa() -> bool:
            code, _ = self.api("GET", "/api/v1/namespaces/default/serviceaccounts/default")
            return code == 200

        def detail() -> str:
            return "\n".join(procs.tail(self._log(f"kubelet/{n}"), 15) for n in names)

        procs.wait_for(
            nodes_ready, timeout=180, what=f"nodes {names} {'Ready' if ready else 'registered'}", detail=detail
        )
        noderuntime.restore_sysctls(saved)
        procs.wait_for(
            default_sa,
            timeout=120,
            what="the default ServiceAccount",
            detail=lambda: procs.tail(self._log("kube-controller-manager")),
        )

    # --------------------------------------------------- the cluster's pod CIDRs
    def pod_cidrs(self) -> dict[str, str]:
        """node -> its ``spec.podCIDR`` (allocated by kube-controller-manager)."""
        code, body = self.api("GET", "/api/v1/nodes")
        if code != 200:
            return {}
        return {
            item["metadata"]["name"]: item["spec"]["podCIDR"]
            for item in body.get("items", [])
            if item.get("spec", {}).get("podCIDR")
        }

    def route_pod_cidrs(self) -> None:
        """Each node routes the other nodes' pod CIDRs to them over the first underlay, as Flannel's
        host-gw mode does (inside the nodes' namespaces only)."""
        names = [n.name for n in self.nodes()]
        procs.wait_for(
            lambda: all(n in self.pod_cidrs() for n in names), timeout=60, what=f"pod CIDRs of nodes {names}"
        )
        cidrs, u = self.pod_cidrs(), topology.UNDERLAYS[0]
        for node in self.nodes():
            routes = [
                f"route replace {cidrs[other.name]} via {u.node_ip4(other.index)} dev {u.node_if}"
                for other in self.nodes()
                if other.name != node.name
            ]
            if routes:
                netns.ip_batch(topology.node_netns(self.prefix, node.name), routes)

    def ensure_kubeadm_config(self) -> None:
        """``kube-system/kubeadm-config``, as kubeadm writes it: where cluster add-ons (spiderpool's
        SpiderCoordinator among them) read the cluster's pod and service CIDRs."""
        cluster = (
            "apiVersion: kubeadm.k8s.io/v1beta4\n"
            "kind: ClusterConfiguration\n"
            "networking:\n"
            "  dnsDomain: cluster.local\n"
            f"  podSubnet: {topology.POD_CIDR}\n"
            f"  serviceSubnet: {topology.SERVICE_CIDR}\n"
        )
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "kubeadm-config", "namespace": "kube-system"},
            "data": {"ClusterConfiguration": cluster},
        }
        code, _ = self.api("GET", "/api/v1/namespaces/kube-system/configmaps/kubeadm-config")
        if code == 404:
            code, answer = self.api("POST", "/api/v1/namespaces/kube-system/configmaps", body)
            if code not in (201, 409):
                raise LabError(f"creating kube-system/kubeadm-config failed: {code} {answer}")

    # ------------------------------------------------------------- CNI config
    def bridge_conflist(self, node_name: str) -> dict[str, Any]:
        """An overlay-style cluster CNI: the reference bridge plugin (cni0, the pods' gateway) and
        host-local over the node's pod CIDR, routed between nodes by ``route_pod_cidrs``."""
        node = self.node(node_name)
        cidr = self.pod_cidrs().get(node_name)
        if cidr is None:
            raise LabError(f"{node_name} has no pod CIDR yet (kube-controller-manager allocates them)")
        return {
            "cniVersion": "1.0.0",
            "name": "lab-bridge",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "cni0",
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": str(node.var_lib_cni / "networks"),
                        "ranges": [[{"subnet": cidr}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                    },
                }
            ],
        }

    def macvlan_conflist(self, node_name: str) -> dict[str, Any]:
        """The reference macvlan + host-local config; each node gets a disjoint range."""
        node = self.node(node_name)
        u = topology.UNDERLAYS[0]
        base = f"172.18.{100 + node.index}"
        return {
            "cniVersion": "1.0.0",
            "name": "lab-macvlan",
            "plugins": [
                {
                    "type": "macvlan",
                    "master": u.node_if,
                    "mode": "bridge",
                    "ipam": {
                        "type": "host-local",
                        "dataDir": str(node.var_lib_cni / "networks"),
                        "ranges": [
                            [
                                {
                                    "subnet": u.ipv4,
                                    "rangeStart": f"{base}.1",
                                    "rangeEnd": f"{base}.254",
                                    "gateway": u.gateway4,
                                }
                            ]
                        ],
                        "routes": [{"dst": "0.0.0.0/0"}],
                    },
                }
            ],
        }

    def multus_conf(self, node_name: str, delegate: dict[str, Any]) -> dict[str, Any]:
        """A Multus thin-plugin config for a node, with ``delegate`` as the cluster default network."""
        node = self.node(node_name)
        return {
            "cniVersion": "0.3.1",
            "name": "multus-cni-network",
            "type": "multus",
            "kubeconfig": str(self.node_kubeconfig),
            "cniDir": str(node.var_lib_cni / "multus"),
            "binDir": str(node.cni_bin_dir),
            "logFile": str(self.logs / f"multus-{node.name}.log"),
            "logLevel": "verbose",
            "delegates": [delegate],
        }

    def multus_daemonset(self) -> str:
        """Multus' own DaemonSet manifest (the thin plugin) from its module, with only the image
        changed to the lab's build of it."""
        text = build.module_file("multus", "multus-daemonset.yml").read_text()
        upstream = "ghcr.io/k8snetworkplumbingwg/multus-cni:snapshot"
        if upstream not in text:
            raise LabError(f"Multus' DaemonSet manifest no longer names {upstream}: update the lab")
        return text.replace(upstream, MULTUS_IMAGE)

    def kubectl(
        self, *args: str, input_text: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run the lab's kubectl; raise with its output when ``check`` and it fails."""
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig))
        proc = subprocess.run(
            [str(build.binary("kubectl")), *args], input=input_text, capture_output=True, text=True, env=env
        )
        if check and proc.returncode != 0:
            raise LabError(f"kubectl {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
        return proc

    def write_cni_config(self, node_name: str, filename: str, config: dict[str, Any]) -> Path:
        """Write one CNI config file into a node's config directory."""
        path = self.node(node_name).cni_conf_dir / filename
        tmp = path.with_suffix(".tmp~")
        tmp.write_text(json.dumps(config, indent=2))
        tmp.replace(path)
        return path

    def clear_cni_config(self, node_name: str) -> None:
        for f in self.node(node_name).cni_conf_dir.iterdir():
            if f.is_file():
                f.unlink()

    def reset_cni_config(self) -> None:
        """Give every node the lab's default network (macvlan + host-local) and nothing else."""
        for node in self.nodes():
            self.clear_cni_config(node.name)
            self.write_cni_config(node.name, "10-lab-macvlan.conflist", self.macvlan_conflist(node.name))

    # ---------------------------------------------------------------- lookup
    def exec_argv(self, target: str, argv: list[str]) -> list[str]:
        """argv running ``argv`` in a pod (``ns/pod``: ``kubectl exec``, as an admin would) or on a
        node (``node1``: its network and mount namespaces)."""
        if "/" in target:
            ns, pod = target.split("/", 1)
            code, _ = self.api("GET", f"/api/v1/namespaces/{ns}/pods/{pod}")
            if code == 404:
                raise LabError(f"no pod {ns}/{pod}")
            return [str(build.binary("kubectl")), f"--kubeconfig={self.kubeconfig}", "exec", "-n", ns, pod, "--", *argv]
        if target not in self.state().get("nodes", []):
            raise LabError(f"no lab node named {target!r}; nodes: {self.state().get('nodes', [])}")
        return [*self.in_node(target), *argv]

    def container_pid(self, node: str, namespace: str, pod: str, container: str) -> int | None:
        """The host pid of a running container's main process (from the node's containerd), for
        tests that crash a component the way a crash happens: a signal to its process."""
        run = self.in_node(node)
        filters = [
            f'labels."io.kubernetes.pod.namespace"=={namespace}',
            f'labels."io.kubernetes.pod.name"=={pod}',
            f'labels."io.kubernetes.container.name"=={container}',
        ]
        ids = subprocess.run(
            [*run, *noderuntime.ctr_argv("containers", "ls", "--quiet", ",".join(filters))],
            capture_output=True,
            text=True,
        ).stdout.split()
        tasks = subprocess.run([*run, *noderuntime.ctr_argv("tasks", "ls")], capture_output=True, text=True).stdout
        for line in tasks.splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 3 and fields[0] in ids and fields[2] == "RUNNING":
                return int(fields[1])
        return None

    # ---------------------------------------------------------------- status
    def status(self) -> dict[str, Any]:
        state = self.state()
        return {
            "dir": str(self.dir),
            "prefix": self.prefix,
            "ports": state.get("ports", {}),
            "processes": {k: {"pid": v, "alive": procs.alive(v)} for k, v in state.get("procs", {}).items()},
            "nodes": state.get("nodes", []),
            "namespaces": topology.lab_namespaces(self.prefix),
        }

    # ------------------------------------------------------------------ down
    def down(self) -> None:
        """Stop everything the lab started and remove every namespace, cgroup and mount it made;
        put back the machine's sysctls kubelet changed."""
        state = self.state()
        lab_id = state.get("lab_id")
        for name in list(state.get("nodes", [])):
            self._stop_node(state, name)
        if lab_id:
            for _ in range(3):  # children may be re-parented while we stop their parents
                pids = procs.marked(lab_id)
                if not pids:
                    break
                procs.stop(pids)
        saved = state.get("sysctls") or {}
        changed = noderuntime.restore_sysctls(saved) if saved else {}
        if changed:
            say(f"restored the machine's sysctls: {changed} -> {saved}")
        for name in topology.lab_namespaces(self.prefix):
            netns.delete(name)
        for child in self.dir.iterdir() if self.dir.exists() else []:
            if child.name == "logs":
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
        say("lab down: no lab process, namespace, cgroup or mount left")


def _netns_ino(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
