"""`kubectl spiderpool leaks` and `doctor` on the chart-installed lab, as an admin runs them: the three
kinds of leak planted by hand are found (and nothing else), `--fix` clears them; `doctor` is green on
a good install and names the fault when an agent is stopped, a plugin deleted from a node, or the
webhook Service left without endpoints."""

from __future__ import annotations

import json
import os
import signal
from typing import Any

from spiderpool.ipam.allocate import record_name
from spiderpool_lab import procs
from spiderpool_lab.cluster import Lab
from tests.helpers import allocation_record, get_json, pool_manifest, pool_pod, spiderpool_cli, wait_running
from tests.ipam.conftest import assert_consistent, macvlan_spiderpool, records, use_cni, wait_no_records
from tests.stack import NS as SPIDERPOOL_NS
from tests.stack import Agents, Controllers

NS = "leaky"
POOL = "p-leaky"
GHOST_IP = "172.18.76.9"


def leaks(lab: Lab, *args: str) -> tuple[int, dict[str, Any]]:
    # (--min-age=0: the planted record is judged at once; GC's own wait is 30 s)
    out = spiderpool_cli(lab, "leaks", "--min-age=0", *args, "-o", "json", check=False)
    assert out.returncode in (0, 1), out.stdout + out.stderr
    return out.returncode, json.loads(out.stdout)


def doctor(lab: Lab) -> tuple[int, dict[str, dict[str, Any]], str]:
    out = spiderpool_cli(lab, "doctor", "-o", "json", check=False)
    assert out.returncode in (0, 1), out.stdout + out.stderr
    checks = {c["check"]: c for c in json.loads(out.stdout)}
    return out.returncode, checks, out.stdout


def failing(checks: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {name: c["detail"] for name, c in checks.items() if c["status"] == "FAIL"}


def test_leaks_finds_what_was_planted_and_fix_clears_it(agents: Agents, controllers: Controllers) -> None:
    lab = agents.lab
    use_cni(lab, macvlan_spiderpool())
    lab.kubectl("apply", "-f", "-", input_text=pool_manifest(POOL, "172.18.0.0/16", ["172.18.76.1-172.18.76.9"]))
    lab.kubectl("create", "namespace", NS)
    stopped = False
    try:
        lab.kubectl("apply", "-f", "-", input_text=pool_pod("holder", NS, POOL, "node1"))
        (holder,) = wait_running(lab, NS, "app=holder", 1)
        ip = holder["status"]["podIP"]
        procs.wait_for(
            lambda: get_json(lab, "spiderippool", POOL).get("status", {}).get("allocatedIPCount") == 1,
            timeout=30,
            what=f"{POOL}'s status to count the holder",
        )
        # a clean cluster: nothing (once what earlier tests left is settled: GC frees a quarantine
        # that is over at its next scan)
        procs.wait_for(
            lambda: leaks(lab)[0] == 0, timeout=90, what="leaks to find nothing", detail=lambda: str(leaks(lab)[1])
        )
        code, found = leaks(lab, "--node", "node1")  # nor in node1's pod namespaces
        assert (code, found["findings"]) == (0, []), found

        # No controller (so GC and the status writer do not mend what is planted meanwhile)
        controllers.stop_all()
        stopped = True
        # 1. a record whose pod never existed
        lab.kubectl("apply", "-f", "-", input_text=allocation_record(GHOST_IP, POOL, pod="ghost", namespace=NS))
        # 2. a live pod's address whose record is gone
        lab.kubectl("delete", "spideripallocation", record_name(ip))
        # 3. a pool status that says otherwise than the records
        lab.kubectl(
            "patch",
            "spiderippool",
            POOL,
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps({"status": {"allocatedIPCount": 5}}),
        )
        code, found = leaks(lab)
        kinds = sorted((f["kind"], f.get("ip") or f.get("pool")) for f in found["findings"])
        assert code == 1
        assert kinds == [
            ("ip-without-record", ip),
            ("pool-status", POOL),
            ("record-without-pod", GHOST_IP),
        ], found
        # with node1's agent asked too: the same findings (the holder's address, in its pod's
        # namespace, is already one), and the agent answered for every namespace
        code, with_node = leaks(lab, "--node", "node1")
        assert code == 1
        assert with_node["findings"] == found["findings"], with_node
        assert with_node["warnings"] == [], with_node
        table = spiderpool_cli(lab, "leaks", "--min-age=0", check=False)
        assert table.returncode == 1
        assert all(word in table.stdout for word in (ip, GHOST_IP, POOL)), table.stdout

        fixed = spiderpool_cli(lab, "leaks", "--min-age=0", "--fix", "--yes", "-o", "json", check=False)
        assert fixed.returncode == 0, fixed.stdout + fixed.stderr
        assert all(f["fixed"] for f in json.loads(fixed.stdout)["findings"]), fixed.stdout
        # what the fixes wrote: the holder's address recorded for it, the ghost's quarantined,
        # the status counting the records pods hold (the quarantined ghost's is nobody's)
        held = {r["spec"]["ip"]: r["spec"] for r in records(lab) if r["spec"]["pool"] == POOL}
        assert held[ip]["podUID"] == holder["metadata"]["uid"], held
        assert held[GHOST_IP].get("quarantineUntil"), held
        status = get_json(lab, "spiderippool", POOL)["status"]
        assert (status["allocatedIPCount"], list(json.loads(status["allocatedIPs"]))) == (1, [ip]), status
        code, found = leaks(lab)
        assert (code, found["findings"]) == (0, []), found
    finally:
        if stopped:
            controllers.start_all()
        lab.kubectl("delete", "namespace", NS, "--wait=false")
        lab.kubectl("delete", "spideripallocation", record_name(GHOST_IP), "--ignore-not-found")
        wait_no_records(lab, NS, timeout=120)
        lab.reset_cni_config()
    lab.kubectl("delete", "spiderippool", POOL, "--wait=true", "--timeout=60s")
    assert_consistent(lab)


def test_doctor_is_green_and_names_each_fault(agents: Agents, controllers: Controllers) -> None:
    lab = agents.lab
    code, checks, text = doctor(lab)
    assert (code, failing(checks)) == (0, {}), text
    assert {"leader", "webhook service", "certificate", "agent node1", "agent node2", "plugins node2"} <= set(checks)

    # an agent stopped (SIGSTOP: it holds its socket and port, and answers nothing)
    pid = lab.container_pid("node2", SPIDERPOOL_NS, agents.on("node2"), "agent")
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        code, checks, text = doctor(lab)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert code == 1
    assert "agent node2" in failing(checks), text
    assert all(name.endswith("node2") for name in failing(checks)), text
    assert "did not answer" in checks["agent node2"]["detail"], text
    assert "the agent is stopped or hung" in checks["agent node2"]["detail"], text

    # a plugin deleted from a node's bin dir: missing, or already put back by the agent, it is named
    os.unlink(lab.node("node2").cni_bin_dir / "veth")
    code, checks, text = doctor(lab)
    plugins = checks["plugins node2"]
    assert plugins["status"] in ("FAIL", "WARN"), text
    assert "veth" in plugins["detail"], text
    procs.wait_for(lambda: os.access(lab.node("node2").cni_bin_dir / "veth", os.X_OK), timeout=60, what="veth put back")

    # the webhook Service without endpoints (its selector matches no pod)
    service = get_json(lab, "service", "-n", SPIDERPOOL_NS, "spiderpool-controller")
    selector = service["spec"]["selector"]
    patch = {"spec": {"selector": {**selector, "spiderpool-test": "no-such-pod"}}}
    lab.kubectl("patch", "service", "-n", SPIDERPOOL_NS, "spiderpool-controller", "-p", json.dumps(patch))
    try:
        procs.wait_for(
            lambda: "webhook service" in failing(doctor(lab)[1]),
            timeout=60,
            what="doctor to find the webhook Service without endpoints",
        )
        code, checks, text = doctor(lab)
        assert code == 1
        assert "no ready endpoints" in checks["webhook service"]["detail"], text
    finally:
        restore = {"spec": {"selector": {**selector, "spiderpool-test": None}}}
        lab.kubectl("patch", "service", "-n", SPIDERPOOL_NS, "spiderpool-controller", "-p", json.dumps(restore))
    procs.wait_for(lambda: not failing(doctor(lab)[1]), timeout=90, what="doctor green again")
