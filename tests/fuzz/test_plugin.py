"""The installed ``spiderpool`` and ``veth`` plugins, exec'd as a runtime execs them, with generated
stdin configs, ``CNI_ARGS`` and environments: every call prints one JSON document, an error names
its field with a CNI code from the spec, and nothing is allocated by a call that failed."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.fuzz import strategies as fz
from tests.fuzz.conftest import LAB, NS, PODS, POOL, FuzzAgent, assert_cni_error, count

COMMANDS = st.sampled_from(["ADD", "ADD", "ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC"]) | fz.TEXT
#: generated text that could name a real network namespace never reaches the agent: only names of
#: namespaces that do not exist, or text that is no path at all
SAFE_NETNS = st.integers(0, 10**6).map(lambda n: f"/var/run/netns/fuzz-absent-{n}") | fz.TEXT.filter(
    lambda s: "/" not in s and "\x00" not in s
)
_ENV_TEXT = fz.TEXT.filter(lambda s: "\x00" not in s)


def _args(pod: str | None, uid: str | None, extra: list[tuple[str, str]]) -> str:
    pairs = [("IgnoreUnknown", "1"), ("K8S_POD_NAMESPACE", NS)]
    if pod is not None:
        pairs.append(("K8S_POD_NAME", pod))
    if uid is not None:
        pairs.append(("K8S_POD_UID", uid))
    return ";".join(f"{k}={v}" for k, v in [*pairs, *extra])


CNI_ARGS = st.one_of(
    st.builds(
        _args,
        st.none() | st.sampled_from(PODS) | _ENV_TEXT,
        st.none() | st.just("@uid") | _ENV_TEXT,
        st.lists(st.tuples(_ENV_TEXT, _ENV_TEXT), max_size=2),
    ),
    _ENV_TEXT,
)
ENV = st.fixed_dictionaries(
    {"CNI_COMMAND": COMMANDS.filter(lambda s: "\x00" not in s)},
    optional={
        "CNI_CONTAINERID": st.text("0123456789abcdef", min_size=1, max_size=64) | _ENV_TEXT,
        "CNI_IFNAME": st.sampled_from(["eth0", "net1"]) | _ENV_TEXT,
        "CNI_NETNS": SAFE_NETNS,
        "CNI_ARGS": CNI_ARGS,
    },
)
_IPAM = st.fixed_dictionaries(
    {"type": st.just("spiderpool")},
    optional={
        "default_ipv4_ippool": fz.maybe_wrong(st.just([POOL])),
        "clean_gateway": fz.maybe_wrong(st.booleans()),
        "log_level": fz.maybe_wrong(st.sampled_from(["DEBUG", "INFO"])),
        "log_file_max_size": fz.maybe_wrong(st.integers(0, 1000)),
        "match_master_subnet": fz.JSON,
        "Bogus": fz.JSON,
    },
)
_PREV = fz.maybe_wrong(
    st.fixed_dictionaries(
        {"cniVersion": st.just("1.0.0")},
        optional={
            "ips": fz.maybe_wrong(
                st.lists(st.fixed_dictionaries({"address": fz.IP_LIKE}, optional={"interface": fz.JSON}), max_size=2)
            ),
            "interfaces": fz.maybe_wrong(st.lists(st.fixed_dictionaries({"name": fz.TEXT}), max_size=2)),
        },
    )
)
STDIN = st.one_of(
    st.fixed_dictionaries(
        {"ipam": fz.maybe_wrong(_IPAM)},
        optional={
            "cniVersion": fz.maybe_wrong(st.sampled_from(["0.3.1", "0.4.0", "1.0.0", "1.1.0", "0.2.0"])),
            "name": fz.maybe_wrong(st.just("macvlan-conf")),
            "type": st.just("macvlan"),
            "prevResult": _PREV,
            "cni.dev/valid-attachments": fz.JSON,
        },
    ).map(lambda d: json.dumps(d).encode()),
    fz.JSON.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=64),
    fz.TEXT.map(lambda s: s.encode()),
)

#: what an error's message must mention, by CNI code (the field it is about)
NAMES = {
    1: ("cniVersion",),
    4: ("CNI_", "K8S_POD", "environment"),
    6: ("stdin", "request body"),
    7: ("ipam", "'name'", "prevResult", "config", "chained"),
}


_A_POD = "K8S_POD_NAMESPACE=a;K8S_POD_NAME=b"


def run(
    agent: FuzzAgent, plugin: str, env: dict[str, str], stdin: bytes, *, relay: bool = False
) -> tuple[int, dict[str, Any]]:
    """Exec the installed plugin (the script, or the relay); its exit code and the one JSON
    document it printed."""
    if "CNI_ARGS" in env:
        uid = agent.pods[PODS[0]]["metadata"]["uid"]
        env = {**env, "CNI_ARGS": env["CNI_ARGS"].replace("@uid", uid)}
    bin_dir = agent.relay_dir if relay else agent.bin_dir
    proc = subprocess.run(
        [str(bin_dir / plugin)],
        input=stdin,
        env={**env, "CNI_PATH": str(bin_dir)},
        capture_output=True,
        timeout=120,
    )
    text = proc.stdout.decode(errors="replace")
    assert "Traceback" not in text + proc.stderr.decode(errors="replace"), (text, proc.stderr)
    assert proc.returncode in (0, 1), (proc.returncode, text, proc.stderr)
    out = json.loads(text) if text.strip() else {}
    assert isinstance(out, dict), text
    return proc.returncode, out


def judge(agent: FuzzAgent, code: int, out: dict[str, Any], env: dict[str, str]) -> None:
    if code == 0:
        if env["CNI_COMMAND"] == "ADD" and out.get("ips"):
            uids = [p["metadata"]["uid"] for p in agent.pods.values()]
            uid = next((u for u in uids if u in env["CNI_ARGS"]), "")
            agent.holders.add((uid, env["CNI_IFNAME"]))
        return
    assert_cni_error(out)
    err = out["code"]
    assert err in (1, 2, 3, 4, 5, 6, 7, 11, 50) or err >= 100, out
    if err in NAMES:
        assert any(n in out["msg"] for n in NAMES[err]), out


@settings(LAB, max_examples=300)  # (an exec each: about 10 s)
@given(ENV, STDIN)
@example({"CNI_COMMAND": "ADD"}, b"\xff\xfe")  # not UTF-8: a traceback from sys.stdin.read()
@example({"CNI_COMMAND": "ADD"}, b"[" * 3000)  # nested too deeply: RecursionError in the decoder
@example(
    {"CNI_COMMAND": "CHECK", "CNI_CONTAINERID": "c", "CNI_IFNAME": "eth0", "CNI_ARGS": _A_POD},
    b'{"cniVersion": "1.0.0", "ipam": {"type": "spiderpool"}, "prevResult": [1]}',
)  # a prevResult that is not an object: AttributeError
def test_the_ipam_plugin_prints_a_result_or_an_error_naming_the_field(
    fuzz_agent: FuzzAgent, env: dict[str, str], stdin: bytes
) -> None:
    count("IPAM plugin: stdin config, CNI_ARGS and environment (exec)")
    code, out = run(fuzz_agent, "spiderpool", env, stdin)
    judge(fuzz_agent, code, out, env)


@settings(LAB, max_examples=200)
@given(ENV, STDIN)
@example({"CNI_COMMAND": "ADD", "CNI_ARGS": "K8S_POD_NAME=x\r\nX-Cni-Command: DEL"}, b"{}")  # a header smuggled
@example({"CNI_COMMAND": "ADD"}, b"\xff\xfe")
def test_the_relay_prints_a_result_or_an_error_naming_the_field(
    fuzz_agent: FuzzAgent, env: dict[str, str], stdin: bytes
) -> None:
    """The same calls through the installed relay: the same kinds of answer (the Python plugin
    runs them in the agent), and what cannot be a header refused with code 4."""
    count("IPAM plugin through the static relay (exec)")
    code, out = run(fuzz_agent, "spiderpool", env, stdin, relay=True)
    judge(fuzz_agent, code, out, env)
    if code and out["code"] == 11:  # (only the agent's own "try again"; never a refused relayed call)
        assert "cannot run relayed calls" not in out["msg"], out


@settings(LAB, max_examples=100)
@given(
    ENV.map(lambda e: {**e, "CNI_COMMAND": e["CNI_COMMAND"] if e["CNI_COMMAND"] != "GC" else "DEL"}),
    STDIN,
)
def test_the_veth_plugin_prints_a_result_or_an_error_naming_the_field(
    fuzz_agent: FuzzAgent, env: dict[str, str], stdin: bytes
) -> None:
    count("veth plugin: stdin config, CNI_ARGS and environment (exec)")
    code, out = run(fuzz_agent, "veth", env, stdin)
    if code:
        assert_cni_error(out)
