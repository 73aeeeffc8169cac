# spiderpool (Python): one image for spiderpool-controller and spiderpool-agent.
# The CNI plugins are also built as self-contained bundles (PyInstaller), because they run in the
# node's filesystem, where this image's Python is not: the agent installs them with --plugin-bundle.
#
# BASE is any Debian-like image with Python 3.11 and `python3 -m venv` (python:3.11-slim for a
# registry build; the lab passes one it made from Debian packages). Everything is installed into
# one virtual environment, /opt/spiderpool/venv, so the layout does not depend on the base.
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
# PyInstaller reads the interpreter's shared libraries with objdump
RUN command -v objdump >/dev/null || (apt-get update && apt-get install -y --no-install-recommends binutils \
    && rm -rf /var/lib/apt/lists/*)
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN python3 -m venv /opt/spiderpool/venv \
 && /opt/spiderpool/venv/bin/pip install --no-cache-dir . pyinstaller==6.22.3 \
 && /opt/spiderpool/venv/bin/python -m spiderpool.cni.bundle --out /opt/spiderpool/cni \
 && /opt/spiderpool/venv/bin/pip uninstall -y -q pyinstaller pyinstaller-hooks-contrib

FROM ${BASE}
# iproute2 for the admin's `kubectl exec` into the agent (the agent itself speaks netlink); iptables
# for the reply path the agent sets in each pod's namespace (spiderpool.net.replies)
RUN (command -v ip && command -v iptables-restore && command -v ip6tables-restore) >/dev/null \
    || (apt-get update && apt-get install -y --no-install-recommends iproute2 iptables \
    && rm -rf /var/lib/apt/lists/*)
COPY --from=build /opt/spiderpool /opt/spiderpool
COPY charts/spiderpool/crds /opt/spiderpool/crds
ENV PATH=/opt/spiderpool/venv/bin:$PATH \
    SPIDERPOOL_PLUGIN_BUNDLE=/opt/spiderpool/cni
