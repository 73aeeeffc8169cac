"""The reference walkthrough, run for real on the lab: ``spiderpool-lab demo``.

It brings up a 2-node lab (real kubelets and containerd), installs what the walkthrough installs
(Multus by its own DaemonSet manifest, the ``macvlan-conf`` NetworkAttachmentDefinition with macvlan +
spiderpool + veth, and spiderpool by ``helm repo add``/``helm repo update``/``helm install`` from the
lab's chart repository with the walkthrough's flags: the controller Deployment and the agent
DaemonSet from the project's image, IPv4 on and IPv6 off), applies
its SpiderSubnet, Deployment (image included) and Service, and prints each step's command with its
real output, ``kubectl exec`` included, then a pass/fail summary. The walkthrough's fixes are applied
and said: its Deployment's ``ippool`` annotation names a SpiderSubnet (served as the ``subnet``
annotation), a YAML block was mis-indented, and ``helm update repo`` is ``helm repo update``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from spiderpool_lab import install, procs, topology
from spiderpool_lab.cluster import Lab

NS = "default"
APP = "custom-ippool-deploy"
SUBNET_RANGE = ("172.18.30.131", "172.18.30.140")

NAD = {
    "apiVersion": "k8s.cni.cncf.io/v1",
    "kind": "NetworkAttachmentDefinition",
    "metadata": {"name": "macvlan-conf", "namespace": "kube-system"},
    "spec": {
        "config": json.dumps(
            {
                "cniVersion": "0.3.1",
                "name": "macvlan-conf",
                "plugins": [
                    {"type": "macvlan", "master": "eth0", "mode": "bridge", "ipam": {"type": "spiderpool"}},
                    {"type": "veth", "service_cidr": [topology.SERVICE_CIDR]},
                ],
            },
            indent=4,
        )
    },
}

SUBNET = """apiVersion: spiderpool.spidernet.io/v2beta1
kind: SpiderSubnet
metadata:
  name: subnet-test
spec:
  gateway: 172.18.0.1
  ips:
  - "172.18.30.131-172.18.30.140"
  subnet: 172.18.0.0/16
"""

DEPLOYMENT = """apiVersion: apps/v1
kind: Deployment
metadata:
  name: custom-ippool-deploy
spec:
  replicas: 2
  selector:
    matchLabels:
      app: custom-ippool-deploy
  template:
    metadata:
      annotations:
        ipam.spidernet.io/ippool: |-
          {
            "ipv4": ["subnet-test"]
          }
        v1.multus-cni.io/default-network: kube-system/macvlan-conf
      labels:
        app: custom-ippool-deploy
    spec:
      containers:
      - name: custom-ippool-deploy
        image: ghcr.io/daocloud/dao-2048:v1.2.0
        imagePullPolicy: IfNotPresent
        ports:
        - name: http
          containerPort: 80
          protocol: TCP
"""

SERVICE = """apiVersion: v1
kind: Service
metadata:
  name: custom-ippool-svc
  labels:
    app: custom-ippool-deploy
spec:
  type: ClusterIP
  ports:
    - port: 80
      protocol: TCP
      targetPort: 80
  selector:
    app: custom-ippool-deploy
"""


@dataclass
class Step:
    title: str
    ok: bool
    detail: str = ""


@dataclass
class Demo:
    lab: Lab
    out: TextIO = sys.stdout
    steps: list[Step] = field(default_factory=list)

    # ------------------------------------------------------------- output
    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def shell(self, command: str, output: str) -> None:
        self.say(f"$ {command}")
        self.say(output.rstrip())
        self.say()

    def step(self, title: str, fn: Callable[[], str]) -> bool:
        self.say(f"=== {title}")
        started = time.monotonic()
        try:
            detail = fn()
            ok = True
        except Exception as exc:  # a failed step is reported, and the summary says which
            detail, ok = str(exc), False
            self.say(f"FAILED: {exc}")
        self.steps.append(Step(title, ok, detail))
        self.say(f"--- {'PASS' if ok else 'FAIL'} ({time.monotonic() - started:.1f}s)")
        self.say()
        return ok

    def kubectl(self, *args: str, input_text: str | None = None) -> str:
        out = self.lab.kubectl(*args, input_text=input_text)
        return out.stdout

    def in_pod(self, pod: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.lab.exec_argv(f"{NS}/{pod}", argv), capture_output=True, text=True, timeout=60, check=False
        )

    # -------------------------------------------------------------- steps
    def install(self) -> str:
        """What the walkthrough installs: Multus by its DaemonSet, spiderpool by its manifests."""
        out = install.multus(self.lab)
        self.shell("kubectl apply -f multus-daemonset.yml  # Multus' own manifest, the lab's image", out)
        listing = self.kubectl("get", "pods", "-A", "-o", "wide")
        multus = "\n".join(line for line in listing.splitlines() if "multus" in line.lower())
        self.shell("kubectl get pods -A | grep -i multus", multus)
        node = self.lab.nodes()[0].name
        conf = subprocess.run(
            self.lab.exec_argv(node, ["ls", "/etc/cni/net.d/"]), capture_output=True, text=True, check=False
        )
        self.shell(f"ls /etc/cni/net.d/  # on {node}", conf.stdout)
        if "00-multus.conf" not in conf.stdout:  # (.conflist when the network it delegates to is one)
            raise AssertionError(f"{node} has no /etc/cni/net.d/00-multus.conf")
        # the walkthrough's Helm commands (the chart brings the CRDs), from the lab's chart repository
        for command, output in install.spiderpool_from_repo(self.lab):
            self.shell(command, output)
        pods = self.kubectl("get", "pods", "-n", "kube-system", "-o", "wide")
        self.shell(
            "kubectl get pods -n kube-system | grep spiderpool",
            "\n".join(line for line in pods.splitlines() if "spiderpool" in line or line.startswith("NAME")),
        )
        return multus

    def nad(self) -> str:
        text = json.dumps(NAD)
        out = self.kubectl("apply", "-f", "-", input_text=text)
        self.shell("kubectl apply -f macvlan-conf.yaml  # the walkthrough's NetworkAttachmentDefinition", out)
        return out

    def subnet(self) -> str:
        out = self.kubectl("apply", "-f", "-", input_text=SUBNET)
        self.shell("kubectl apply -f subnet-test.yaml", out)
        return out

    def deployment(self) -> str:
        out = self.kubectl("apply", "-n", NS, "-f", "-", input_text=DEPLOYMENT)
        self.shell("kubectl apply -f custom-ippool-deploy.yaml", out)
        procs.wait_for(lambda: len(self.running()) == 2, timeout=180, what="2 Running pods of the Deployment")
        listing = self.kubectl("get", "po", "-n", NS, "-l", f"app={APP}", "-o", "wide")
        self.shell(f"kubectl get po -l app={APP} -o wide", listing)
        first, last = (tuple(int(x) for x in ip.split(".")) for ip in SUBNET_RANGE)
        for pod in self.running():
            ip = tuple(int(x) for x in pod["status"]["podIP"].split("."))
            if not first <= ip <= last:
                raise AssertionError(f"pod IP {pod['status']['podIP']} is outside {SUBNET_RANGE[0]}-{SUBNET_RANGE[1]}")
        return listing

    def pool(self) -> str:
        out = self.kubectl("get", "spiderippool")
        self.shell("kubectl get spiderippool  # the auto-created pool (the walkthrough's ????? step)", out)
        pools = json.loads(self.kubectl("get", "spiderippool", "-o", "json"))["items"]
        owner = "ipam.spidernet.io/owner-application-name"
        mine = [p for p in pools if p["metadata"].get("labels", {}).get(owner) == APP]
        if len(mine) != 1:
            raise AssertionError(f"expected one auto-created pool for {APP}, found {len(mine)}")
        return out

    def network(self) -> str:
        pod = self.running()[0]["metadata"]["name"]
        addrs = self.in_pod(pod, ["ip", "a"])
        self.shell(f"kubectl exec -ti {pod} -- ip a", addrs.stdout)
        routes = self.in_pod(pod, ["ip", "r"])
        self.shell(f"kubectl exec -ti {pod} -- ip r show", routes.stdout)
        if "veth0" not in addrs.stdout or f"{topology.SERVICE_CIDR} via" not in routes.stdout:
            raise AssertionError("the pod lacks veth0 or the service route through it")
        return routes.stdout

    def ping(self) -> str:
        a, b = self.running()[:2]
        out = self.in_pod(a["metadata"]["name"], ["ping", "-c", "2", "-W", "2", b["status"]["podIP"]])
        self.shell(f"kubectl exec -ti {a['metadata']['name']} -- ping -c 2 {b['status']['podIP']}", out.stdout)
        if " 0% packet loss" not in out.stdout:
            raise AssertionError("ping lost packets")
        return out.stdout

    def service(self) -> str:
        out = self.kubectl("apply", "-n", NS, "-f", "-", input_text=SERVICE)
        self.shell("kubectl create -f custom-ippool-svc.yaml", out)
        self.shell("kubectl get svc custom-ippool-svc", self.kubectl("get", "svc", "-n", NS, "custom-ippool-svc"))
        ip = json.loads(self.kubectl("get", "svc", "-n", NS, "custom-ippool-svc", "-o", "json"))["spec"]["clusterIP"]
        pod = self.running()[0]["metadata"]["name"]
        reply: subprocess.CompletedProcess[str] | None = None

        def answered() -> bool:
            nonlocal reply
            reply = self.in_pod(pod, ["curl", "-sS", "-I", "--max-time", "5", f"http://{ip}:80"])
            return reply.stdout.startswith("HTTP/1.1 200")

        procs.wait_for(answered, timeout=60, what=f"HTTP 200 from {ip}")
        assert reply is not None
        self.shell(f"kubectl exec -ti {pod} -- curl {ip}:80 -I", reply.stdout)
        return reply.stdout.splitlines()[0]

    def running(self) -> list[dict[str, Any]]:
        items = json.loads(self.kubectl("get", "po", "-n", NS, "-l", f"app={APP}", "-o", "json"))["items"]
        return [
            p
            for p in items
            if p["status"].get("phase") == "Running"
            and p["status"].get("podIP")
            and not p["metadata"].get("deletionTimestamp")
        ]

    def run(self) -> bool:
        self.say("The reference walkthrough (Multus + Macvlan + Veth + Spiderpool) on the lab's real nodes.")
        self.say("Fixes to it: see docs/quickstart.md.")
        self.say()
        steps: list[tuple[str, Callable[[], str]]] = [
            ("install Multus, macvlan, veth and spiderpool (IPv4 on, IPv6 off)", self.install),
            ("NetworkAttachmentDefinition kube-system/macvlan-conf", self.nad),
            ("SpiderSubnet subnet-test", self.subnet),
            ("Deployment: 2 pods Running with IPs from the subnet", self.deployment),
            ("the auto-created SpiderIPPool", self.pool),
            ("the pod's interfaces and routes", self.network),
            ("pod to pod: ping", self.ping),
            ("pod to the Service's clusterIP: HTTP 200", self.service),
        ]
        for title, fn in steps:
            if not self.step(title, fn):
                break
        self.summary([t for t, _ in steps])
        return all(s.ok for s in self.steps) and len(self.steps) == len(steps)

    def summary(self, titles: list[str]) -> None:
        self.say("=== summary")
        done = {s.title: s for s in self.steps}
        for title in titles:
            s = done.get(title)
            self.say(f"{'PASS' if s and s.ok else 'FAIL' if s else 'SKIP'}  {title}")
