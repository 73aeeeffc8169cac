"""The plugin executables we ship, by their installed name."""

from __future__ import annotations

from pathlib import Path

from spiderpool.cni import spiderpool_ipam, spiderpool_veth

#: installed name -> module source ("coordinator" is upstream's name for what the walkthrough calls veth)
PLUGINS = {
    "spiderpool": Path(spiderpool_ipam.__file__),
    "veth": Path(spiderpool_veth.__file__),
    "coordinator": Path(spiderpool_veth.__file__),
}
