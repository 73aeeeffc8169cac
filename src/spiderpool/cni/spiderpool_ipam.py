"""The ``spiderpool`` CNI IPAM plugin: a thin, stdlib-only client of spiderpool-agent.

It runs once per CNI call, so its start-up is its latency: it imports only built-in C modules
(``_json``, ``_socket``; importing ``json`` and ``socket`` would double the start-up time, through
``re``, ``enum`` and ``typing``) and speaks HTTP/1.1 over the agent's unix socket by hand. The agent
installs it into the node's CNI bin dir, precompiled, behind a launcher whose first line names the
interpreter (``--python``), and writes its own socket path beside it; or, by default, installs the
static relay (``spiderpool.cni.relay``), which forwards the call to the agent, where this code runs.

One call is ``steps``: a generator that yields each request to the agent and is sent its answer
(no I/O of its own). ``run`` drives it over the socket, or through an ``ask`` the caller gives;
the agent drives it on its event loop for a relayed call (``spiderpool.agent.relay``).

Commands: ADD, DEL, CHECK, VERSION, STATUS, GC (CNI 0.3.0 to 1.1.0). Errors follow the CNI spec:
4 bad environment, 6 bad stdin, 7 invalid config (naming the key), 11 try again later (agent not
reachable or busy), 50 STATUS unavailable, 100+ from the agent (e.g. no IP available).
"""

from __future__ import annotations

import _json  # CPython's C halves of json and socket
import _socket
import os
import sys
import time  # (built in: no import cost)

TYPE_CHECKING = False  # importing typing would cost milliseconds per exec
if TYPE_CHECKING:
    from collections.abc import Callable, Generator, Mapping
    from typing import Any

    Env = Mapping[str, str]
    #: (path, method, body) -> the agent's reply (raises CniError)
    Ask = Callable[[str, str, Any], Any]
    #: one call: yields requests, is sent their answers (or thrown their CniError), returns (stdout, code)
    Steps = Generator["Request", Any, tuple[str, int]]

DEFAULT_SOCKET = "/var/run/spidernet/spiderpool.sock"
#: beside the installed executable: the agent writes its socket path there
SOCKET_FILE = ".spiderpool/socket"
SUPPORTED = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
TIMEOUT = 100.0

IPAM_KEYS: dict[str, type] = {
    "type": str,
    "log_level": str,
    "log_file_path": str,
    "log_file_max_size": int,
    "log_file_max_age": int,
    "log_file_max_count": int,
    "default_ipv4_ippool": list,
    "default_ipv6_ippool": list,
    "clean_gateway": bool,
    "match_master_subnet": bool,
    "ipam_unix_socket_path": str,
}


class _DecodeContext:
    """What ``_json.make_scanner`` reads from ``json.JSONDecoder``."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float


_WS = " \t\n\r"


def json_loads(text: str | bytes) -> Any:
    """``json.loads`` for one document; raises ValueError on anything that is not JSON."""
    if isinstance(text, bytes):
        text = text.decode()
    start = len(text) - len(text.lstrip(_WS))
    try:
        value, end = _json.make_scanner(_DecodeContext())(text, start)  # type: ignore[arg-type]
    except StopIteration as exc:
        raise ValueError(f"expecting a JSON value at char {exc.value}") from None
    except (RecursionError, SystemError):  # the C scanner recurses once per nesting level (and may
        # then fail without setting its error: SystemError)
        raise ValueError("nested too deeply") from None
    if text[end:].strip(_WS):
        raise ValueError(f"extra data at char {end}")
    return value


def json_dumps(value: Any) -> str:
    """``json.dumps`` for the plain values a CNI result holds."""
    if isinstance(value, str):
        return _json.encode_basestring_ascii(value)
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json_dumps(str(k))}: {json_dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(json_dumps(v) for v in value) + "]"
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


class CniError(Exception):
    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details


def failure(err: CniError, version: str) -> tuple[str, int]:
    """The error result the runtime reads on stdout, and the exit code."""
    out: dict[str, Any] = {"cniVersion": version, "code": err.code, "msg": err.msg}
    if err.details:
        out["details"] = err.details
    return json_dumps(out), 1


def _request(path: str, method: str, body: Any, sock_path: str) -> tuple[int, Any]:
    """One HTTP/1.1 request over the agent's unix socket; returns (status, parsed JSON)."""
    payload = json_dumps(body).encode() if body is not None else b""
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: spiderpool-agent\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    ).encode()
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    s.settimeout(TIMEOUT)
    try:
        _connect(s, sock_path)
        s.sendall(head + payload)
        chunks: list[bytes] = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
    except OSError as exc:
        raise CniError(
            11, f"spiderpool-agent is not reachable at {sock_path}: {exc}", "is spiderpool-agent running?"
        ) from None
    finally:
        s.close()
    raw = b"".join(chunks)
    header, _, body_bytes = raw.partition(b"\r\n\r\n")
    try:
        status = int(header.split(b" ", 2)[1])
    except (IndexError, ValueError):
        raise CniError(11, "spiderpool-agent sent a malformed reply") from None
    if b"transfer-encoding: chunked" in header.lower():
        body_bytes = _dechunk(body_bytes)
    try:
        return status, json_loads(body_bytes) if body_bytes.strip() else {}
    except ValueError:
        return status, {"msg": body_bytes.decode(errors="replace")}


def _connect(s: Any, path: str) -> None:
    """Connect, waiting while the agent's listen queue is full (a burst of pods on one node: the
    kernel answers EAGAIN to a socket with a timeout instead of queueing the caller)."""
    deadline = time.monotonic() + TIMEOUT
    pause = 0.005
    while True:
        try:
            s.connect(path)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.2)


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return out


def _socket_call(path: str, method: str, body: Any, sock_path: str) -> Any:
    return answer(*_request(path, method, body, sock_path))


def socket_caller(sock_path: str) -> Ask:
    """``ask`` over the agent's unix socket at ``sock_path``."""
    return lambda path, method, body: _socket_call(path, method, body, sock_path)


def answer(status: int, reply: Any) -> Any:
    """The agent's reply, or the CNI error it carries."""
    if status >= 300:
        code = reply.get("code") if isinstance(reply, dict) else None
        raise CniError(
            int(code) if isinstance(code, int) else 11,
            str(reply.get("msg", "spiderpool-agent error")) if isinstance(reply, dict) else str(reply),
            str(reply.get("details", "")) if isinstance(reply, dict) else "",
        )
    return reply


def load_config(stdin_text: str | bytes) -> tuple[dict[str, Any], str]:
    try:
        conf = json_loads(stdin_text)
    except ValueError as exc:
        raise CniError(6, f"network config on stdin is not JSON: {exc}") from None
    if not isinstance(conf, dict):
        raise CniError(6, "network config on stdin must be a JSON object")
    version = conf.get("cniVersion", "0.3.1")
    if version not in SUPPORTED:
        raise CniError(1, f"cniVersion {version!r} is not supported", f"use one of {', '.join(SUPPORTED)}")
    if not isinstance(conf.get("name", ""), str):
        raise CniError(7, "the network config's 'name' must be a string", f"got {json_dumps(conf['name'])}")
    ipam = conf.get("ipam")
    if not isinstance(ipam, dict):
        raise CniError(7, "the 'ipam' key is missing or not an object", 'give "ipam": {"type": "spiderpool"}')
    for key, value in ipam.items():
        want = IPAM_KEYS.get(key)
        if want is None:
            raise CniError(7, f"unknown key ipam.{key}", f"known keys: {', '.join(sorted(IPAM_KEYS))}")
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise CniError(7, f"ipam.{key} must be a {want.__name__}", f"got {json_dumps(value)}")
        if isinstance(value, list) and not all(isinstance(v, str) and v for v in value):
            raise CniError(7, f"ipam.{key} must be a list of pool names", f"got {json_dumps(value)}")
    return conf, version


def default_socket(argv0: str) -> str:
    """The installing agent's socket (``<bin dir>/.spiderpool/socket``), else upstream's default."""
    try:
        with open(os.path.join(os.path.dirname(argv0), SOCKET_FILE)) as f:
            return f.read().strip() or DEFAULT_SOCKET
    except OSError:
        return DEFAULT_SOCKET


def cni_args(env: Env) -> dict[str, str]:
    out = {}
    for pair in env.get("CNI_ARGS", "").split(";"):
        if "=" in pair:
            k, v = pair.split("=", 1)
            out[k] = v
    return out


def need_env(env: Env, name: str) -> str:
    value = env.get(name, "")
    if not value:
        raise CniError(4, f"environment variable {name} is required")
    return value


def pod_args(env: Env, need_pod: bool = True) -> dict[str, str]:
    args = cni_args(env)
    ns, name = args.get("K8S_POD_NAMESPACE", ""), args.get("K8S_POD_NAME", "")
    if need_pod and (not ns or not name):
        raise CniError(4, "CNI_ARGS must carry K8S_POD_NAMESPACE and K8S_POD_NAME", "is the runtime Kubernetes'?")
    return {"podNamespace": ns, "podName": name, "podUID": args.get("K8S_POD_UID", "")}


def format_result(reply: dict[str, Any], ifname: str, version: str) -> dict[str, Any]:
    ips: list[dict[str, Any]] = []
    routes: list[dict[str, Any]] = []
    for ip in reply.get("ips", []):
        if ip.get("nic") != ifname:
            continue
        entry = {"address": ip["address"]}
        if ip.get("gateway"):
            entry["gateway"] = ip["gateway"]
        if version in ("0.3.0", "0.3.1", "0.4.0"):
            entry["version"] = str(ip.get("version", 4))
        ips.append(entry)
    for r in reply.get("routes", []):
        if r.get("ifName") == ifname:
            routes.append({"dst": r["dst"], "gw": r["gw"]})
    if not ips:
        raise CniError(100, f"spiderpool-agent returned no address for interface {ifname}")
    return {"cniVersion": version, "ips": ips, "routes": routes, "dns": reply.get("dns") or {}}


class Request:
    """A request of the plugin to the agent. ``socket()``: the agent's socket for it, looked up only
    by a caller that uses the socket (a relayed call is answered in the agent)."""

    __slots__ = ("_argv0", "_conf", "body", "method", "path")

    def __init__(self, path: str, method: str, body: Any, ipam: dict[str, Any], argv0: str) -> None:
        self.path, self.method, self.body = path, method, body
        self._conf, self._argv0 = ipam, argv0

    def socket(self) -> str:
        return str(self._conf.get("ipam_unix_socket_path") or default_socket(self._argv0))


def run(env: Env, stdin: bytes, argv0: str, ask: Ask | None = None) -> tuple[str, int]:
    """One CNI call: what to print on stdout and the exit code. ``env`` holds the CNI_* variables,
    ``argv0`` the path the runtime executed (the socket file lies beside it). ``ask(path, method,
    body)`` answers a request to the agent; by default it goes to the agent's socket."""
    call = steps(env, stdin, argv0)
    try:
        req = next(call)
        while True:
            if ask is not None:
                req = feed(call, ask, req.path, req.method, req.body)
            else:
                req = feed(call, _socket_call, req.path, req.method, req.body, req.socket())
    except StopIteration as done:
        result: tuple[str, int] = done.value
        return result


def feed(call: Steps, reply: Callable[..., Any], *args: Any) -> Request:
    """Hand ``call`` the agent's reply, ``reply(*args)`` (or throw it the CniError that raises); the
    call's next request (StopIteration with its result once it is done). Both drivers use it."""
    try:
        answer = reply(*args)
    except CniError as err:
        return call.throw(err)
    return call.send(answer)


def steps(env: Env, stdin: bytes, argv0: str) -> Steps:
    """One CNI call, without I/O: yields each ``Request`` to the agent and is sent the agent's reply
    (or thrown the ``CniError`` it carries); returns what to print on stdout and the exit code."""
    command = env.get("CNI_COMMAND", "")
    if command == "VERSION":
        return json_dumps({"cniVersion": "1.1.0", "supportedVersions": SUPPORTED}), 0
    version = "1.1.0"
    try:
        conf, version = load_config(stdin)
        ipam = conf["ipam"]
        out = ""
        if command == "ADD":
            body = {
                "containerID": need_env(env, "CNI_CONTAINERID"),
                "ifName": need_env(env, "CNI_IFNAME"),
                "netNamespace": need_env(env, "CNI_NETNS"),
                "defaultIPv4IPPool": ipam.get("default_ipv4_ippool", []),
                "defaultIPv6IPPool": ipam.get("default_ipv6_ippool", []),
                "cleanGateway": bool(ipam.get("clean_gateway", False)),
                "network": conf.get("name", ""),
                **pod_args(env),
            }
            # One request: the agent answers 503 (code 11, try again) itself until it is ready.
            reply = yield Request("/v1/ipam/ip", "POST", body, ipam, argv0)
            out = json_dumps(format_result(reply, body["ifName"], version))
        elif command == "DEL":
            body = {
                "containerID": need_env(env, "CNI_CONTAINERID"),
                "ifName": need_env(env, "CNI_IFNAME"),
                "netNamespace": env.get("CNI_NETNS", ""),
                **pod_args(env, need_pod=False),
            }
            # Releasing what is already gone succeeds; an unreachable agent is a transient error
            # (code 11), so the runtime retries the DEL instead of leaking the address.
            yield Request("/v1/ipam/ip", "DELETE", body, ipam, argv0)
        elif command == "CHECK":
            prev = conf.get("prevResult") or {}
            ips = prev.get("ips") if isinstance(prev, dict) else None
            if not isinstance(ips, list) or not all(
                isinstance(ip, dict) and isinstance(ip.get("address"), str) for ip in ips
            ):
                raise CniError(7, 'CHECK needs prevResult.ips: a list of {"address": "<ip>/<prefix>"}')
            body = {
                "containerID": need_env(env, "CNI_CONTAINERID"),
                "ifName": need_env(env, "CNI_IFNAME"),
                "ips": [ip["address"] for ip in ips],
                **pod_args(env),
            }
            yield Request("/v1/ipam/check", "POST", body, ipam, argv0)
        elif command == "STATUS":
            try:
                yield Request("/v1/ipam/healthy", "GET", None, ipam, argv0)
            except CniError as exc:
                raise CniError(50, f"spiderpool IPAM is not available: {exc.msg}", exc.details) from None
        elif command == "GC":
            valid = conf.get("cni.dev/valid-attachments") or []
            body = {"network": conf.get("name", ""), "validAttachments": valid}
            yield Request("/v1/ipam/gc", "POST", body, ipam, argv0)
        else:
            raise CniError(4, f"unknown CNI_COMMAND {command!r}", "expected ADD, DEL, CHECK, VERSION, STATUS or GC")
    except CniError as err:
        return failure(err, version)
    except Exception as exc:  # a bug: still a CNI error on stdout, never a traceback the runtime cannot read
        return failure(
            CniError(100, f"spiderpool plugin internal error ({type(exc).__name__}: {exc}); please report it"), version
        )
    return out, 0


def main() -> int:
    # bytes: a config that is not UTF-8 is a CNI error, not a traceback
    stdin = b"" if os.environ.get("CNI_COMMAND") == "VERSION" else sys.stdin.buffer.read()
    out, code = run(os.environ, stdin, sys.argv[0])
    sys.stdout.write(out)
    return code


if __name__ == "__main__":
    sys.exit(main())
