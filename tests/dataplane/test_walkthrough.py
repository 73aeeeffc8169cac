"""The reference walkthrough's set-up, as written, on the lab: Multus with the NetworkAttachmentDefinition
``kube-system/macvlan-conf`` (macvlan + spiderpool + veth), its SpiderSubnet and Deployment. The pods get
their fixed IPs from the auto-pool, reach each other, a Service's clusterIP and nodePort, and leave
nothing behind."""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Iterator

import pytest

from spiderpool_lab import demo, netns, procs, topology
from tests.dataplane.conftest import use_multus
from tests.helpers import apply, get_json, in_netns, wait_gone, wait_running
from tests.ipam.conftest import assert_consistent, wait_no_records
from tests.ipam.test_autopool import DEPLOYMENT, SUBNET, auto_pools
from tests.stack import Agents

NS = "wt"
APP = "custom-ippool-deploy"
FIRST, LAST = ipaddress.ip_address("172.18.30.131"), ipaddress.ip_address("172.18.30.140")

SERVICE = f"""
apiVersion: v1
kind: Service
metadata: {{name: {APP}, namespace: {NS}}}
spec:
  type: NodePort
  selector: {{app: {APP}}}
  ports: [{{port: 80, targetPort: 80}}]
"""


@pytest.fixture
def walkthrough(agents: Agents) -> Iterator[Agents]:
    lab = agents.lab
    use_multus(lab)
    apply(lab, json.dumps(demo.NAD))  # the pods name it as their default network; Multus' default is the lab's
    yield agents
    lab.reset_cni_config()
    lab.kubectl("delete", "network-attachment-definition", "-n", "kube-system", "macvlan-conf", check=False)


def test_walkthrough_deployment_on_the_veth_data_plane(walkthrough: Agents) -> None:
    lab = walkthrough.lab
    apply(lab, SUBNET)
    lab.kubectl("create", "namespace", NS)
    try:
        lab.kubectl("apply", "-n", NS, "-f", "-", input_text=DEPLOYMENT)
        apply(lab, SERVICE)
        a, b = wait_running(lab, NS, f"app={APP}", 2, timeout=180)
        for pod in (a, b):
            assert FIRST <= ipaddress.ip_address(pod["status"]["podIP"]) <= LAST
        assert len(auto_pools(lab)) == 1
        src = f"{NS}/{a['metadata']['name']}"
        node_ip = lab.node(a["spec"]["nodeName"]).ip4

        routes = json.loads(in_netns(lab, src, "ip", "-j", "route").stdout)
        assert next(r for r in routes if r["dst"] == "default")["gateway"] == "172.18.0.1"
        assert [r for r in routes if r["dst"] == topology.SERVICE_CIDR and r["dev"] == "veth0"], routes
        assert [r for r in routes if r["dst"] == node_ip and r["dev"] == "veth0"], routes

        ping = in_netns(lab, src, "ping", "-c", "2", "-W", "2", b["status"]["podIP"])
        assert " 0% packet loss" in ping.stdout, ping.stdout + ping.stderr
        svc = get_json(lab, "service", "-n", NS, APP)
        url = f"http://{svc['spec']['clusterIP']}/"
        procs.wait_for(
            lambda: in_netns(lab, src, "curl", "-sSf", "--max-time", "5", url).returncode == 0,
            timeout=30,
            what=f"HTTP 200 from the Service at {url}",
        )
        switch = topology.switch_netns(lab.prefix)
        node_port = svc["spec"]["ports"][0]["nodePort"]
        argv = ["curl", "-sSf", "--max-time", "5", f"http://{lab.node('node1').ip4}:{node_port}/"]
        out = subprocess.run(netns.exec_argv(switch, argv), capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert_consistent(lab)

        lab.kubectl("delete", "deployment", "-n", NS, APP, "--wait=true")
        wait_gone(lab, NS, f"app={APP}")
        procs.wait_for(lambda: not auto_pools(lab), timeout=60, what="the auto-pool to go")
        for node in lab.nodes():
            links = netns.ip_json(node.netns, ["link", "show", "type", "veth"])
            assert [str(x["ifname"]) for x in links if str(x["ifname"]).startswith("veth")] == []
            assert netns.ip_json(node.netns, ["route", "show", "table", "500"]) == []
    finally:
        lab.kubectl("delete", "namespace", NS, "--wait=false")
    wait_no_records(lab, NS, timeout=120)
    lab.kubectl("delete", "spidersubnet", "subnet-test", "--wait=true", "--timeout=60s")
