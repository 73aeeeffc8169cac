"""Run a CNI network configuration the way a container runtime does (libcni semantics).

- The network is the lexically first ``.conf``/``.conflist``/``.json`` file in the config
  directory; a single-plugin ``.conf`` is treated as a list of one.
- ADD runs the plugins in order, handing each the previous result as ``prevResult``; the final
  result is cached under ``<cache>/results/<network>-<containerID>-<ifname>``.
- DEL runs them in reverse with the cached result as ``prevResult`` (CNI >= 0.4.0), and succeeds
  when nothing is left to delete.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: A sandbox set-up deadline like the kubelet's (the runtime request times out at 4 minutes).
PLUGIN_TIMEOUT = 220.0
CONFIG_SUFFIXES = (".conf", ".conflist", ".json")


class CniError(RuntimeError):
    """A plugin failed: carries the CNI error code and message it printed."""

    def __init__(self, plugin: str, command: str, code: int, msg: str, details: str = "") -> None:
        self.plugin, self.command, self.code, self.msg, self.details = plugin, command, code, msg, details
        text = f"plugin type={plugin!r} failed ({command}): {msg}"
        if details:
            text += f": {details}"
        super().__init__(text)


@dataclass(frozen=True)
class NetworkList:
    name: str
    cni_version: str
    plugins: list[dict[str, Any]]
    source: str
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str) -> NetworkList:
        if "plugins" in data:
            plugins = data["plugins"]
            if not isinstance(plugins, list) or not plugins:
                raise ValueError(f"{source}: 'plugins' must be a non-empty list")
        elif "type" in data:
            plugins = [{k: v for k, v in data.items() if k not in ("name", "cniVersion")}]
        else:
            raise ValueError(f"{source}: neither 'plugins' nor 'type' present")
        name = data.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"{source}: 'name' is required")
        for p in plugins:
            if not isinstance(p, dict) or not isinstance(p.get("type"), str):
                raise ValueError(f"{source}: every plugin needs a string 'type'")
        return cls(name, str(data.get("cniVersion", "0.4.0")), plugins, source, data)


def load_default(conf_dir: Path) -> NetworkList | None:
    """The network a runtime would use: the first loadable config file by name."""
    try:
        files = sorted(p for p in conf_dir.iterdir() if p.suffix in CONFIG_SUFFIXES and p.is_file())
    except FileNotFoundError:
        return None
    for path in files:
        try:
            data = json.loads(path.read_text())
            return NetworkList.from_dict(data, str(path))
        except (OSError, ValueError):
            continue
    return None


@dataclass(frozen=True)
class Runtime:
    container_id: str
    netns: str
    ifname: str
    #: CNI_ARGS pairs, e.g. K8S_POD_NAME
    args: tuple[tuple[str, str], ...]
    bin_dirs: tuple[str, ...]
    cache_dir: Path

    def env(self, command: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
        env.update(
            CNI_COMMAND=command,
            CNI_CONTAINERID=self.container_id,
            CNI_NETNS=self.netns,
            CNI_IFNAME=self.ifname,
            CNI_ARGS=";".join(["IgnoreUnknown=1", *(f"{k}={v}" for k, v in self.args)]),
            CNI_PATH=os.pathsep.join(self.bin_dirs),
        )
        return env

    def cache_file(self, network: str) -> Path:
        return self.cache_dir / "results" / f"{network}-{self.container_id}-{self.ifname}"


def _version_tuple(v: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in v.split("."))
    except ValueError:
        return (0,)


def _find_plugin(kind: str, bin_dirs: tuple[str, ...]) -> str:
    for d in bin_dirs:
        candidate = os.path.join(d, kind)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise CniError(kind, "find", 7, f"failed to find plugin {kind!r} in path {list(bin_dirs)}")


async def _exec(kind: str, command: str, conf: dict[str, Any], rt: Runtime) -> dict[str, Any] | None:
    binary = _find_plugin(kind, rt.bin_dirs)
    proc = await asyncio.create_subprocess_exec(
        binary,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=rt.env(command),
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(json.dumps(conf).encode()), PLUGIN_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise CniError(kind, command, 11, f"timed out after {PLUGIN_TIMEOUT:.0f}s") from None
    if proc.returncode != 0:
        try:
            e = json.loads(out)
            raise CniError(kind, command, int(e.get("code", 999)), str(e.get("msg", "")), str(e.get("details", "")))
        except (ValueError, AttributeError):
            text = (out or err).decode(errors="replace").strip()
            raise CniError(kind, command, 999, text or f"exit status {proc.returncode}") from None
    if command != "ADD" or not out.strip():
        return None
    result = json.loads(out)
    if not isinstance(result, dict):
        raise CniError(kind, command, 6, "plugin printed a non-object result")
    return result


def _plugin_conf(net: NetworkList, plugin: dict[str, Any], prev: dict[str, Any] | None) -> dict[str, Any]:
    conf = dict(plugin)
    conf["name"] = net.name
    conf["cniVersion"] = net.cni_version
    if prev is not None:
        conf["prevResult"] = prev
    return conf


async def add(net: NetworkList, rt: Runtime) -> dict[str, Any]:
    prev: dict[str, Any] | None = None
    for plugin in net.plugins:
        prev = await _exec(plugin["type"], "ADD", _plugin_conf(net, plugin, prev), rt)
    result = prev or {"cniVersion": net.cni_version}
    cache = rt.cache_file(net.name)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(
        json.dumps(
            {
                "kind": "cniCacheV1",
                "containerId": rt.container_id,
                "ifName": rt.ifname,
                "networkName": net.name,
                "cniArgs": [list(a) for a in rt.args],
                "config": net.raw,
                "result": result,
            }
        )
    )
    return result


async def delete(net: NetworkList, rt: Runtime) -> None:
    cache = rt.cache_file(net.name)
    prev: dict[str, Any] | None = None
    if cache.exists() and _version_tuple(net.cni_version) >= (0, 4, 0):
        try:
            prev = json.loads(cache.read_text()).get("result")
        except (OSError, ValueError):
            prev = None
    for plugin in reversed(net.plugins):
        await _exec(plugin["type"], "DEL", _plugin_conf(net, plugin, prev), rt)
    cache.unlink(missing_ok=True)


def pod_ips(result: dict[str, Any], ifname: str) -> list[str]:
    """The pod's addresses, as a runtime reports them: those of the sandbox's ``ifname``."""
    interfaces = result.get("interfaces") or []
    ips = []
    for entry in result.get("ips") or []:
        idx = entry.get("interface")
        if isinstance(idx, int) and 0 <= idx < len(interfaces):
            iface = interfaces[idx]
            if iface.get("name") != ifname or not iface.get("sandbox"):
                continue
        ips.append(str(entry["address"]).split("/")[0])
    # IPv4 first, as a single-stack-first cluster expects podIP to be the v4 address.
    return sorted(ips, key=lambda a: ":" in a)
