# spiderpool (Python): one image for spiderpool-controller and spiderpool-agent, with the static
# CNI relay the agent installs on each node (spiderpool.cni.relay: C linked statically, so it runs
# on any node's libc; the agent runs the Python plugin for it).
#
# BASE is any Debian-like image with Python 3.11 and `python3 -m venv` (python:3.11-slim for a
# registry build; the lab passes one it made from Debian packages). Pin it by digest for a release
# (--build-arg BASE=python:3.11-slim@sha256:...). Everything is installed into one virtual
# environment, /opt/spiderpool/venv, so the layout does not depend on the base.
#
#   make image                      (buildah, podman or docker, whichever the machine has)
#   make image-push REGISTRY=ghcr.io/myorg
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
# the relay is compiled here and linked statically (gcc and libc6-dev only in this stage)
RUN (command -v cc && test -f /usr/lib/x86_64-linux-gnu/libc.a -o -f /usr/lib/aarch64-linux-gnu/libc.a) \
    >/dev/null 2>&1 || (apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*)
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN python3 -m venv /opt/spiderpool/venv \
 && /opt/spiderpool/venv/bin/pip install --no-cache-dir . \
 && /opt/spiderpool/venv/bin/python -m spiderpool.cni.relay --out /opt/spiderpool/cni/spiderpool-relay

FROM ${BASE}
# iproute2 for the admin's `kubectl exec` into the agent (the agent itself speaks netlink); iptables
# for the reply path the agent sets in each pod's namespace (spiderpool.net.replies)
RUN (command -v ip && command -v iptables-restore && command -v ip6tables-restore) >/dev/null \
    || (apt-get update && apt-get install -y --no-install-recommends iproute2 iptables \
    && rm -rf /var/lib/apt/lists/*)
COPY --from=build /opt/spiderpool /opt/spiderpool
COPY charts/spiderpool/crds /opt/spiderpool/crds
ENV PATH=/opt/spiderpool/venv/bin:$PATH \
    SPIDERPOOL_PLUGIN_RELAY=/opt/spiderpool/cni/spiderpool-relay
# filled by `make image` (the project's version, git's remote and commit)
ARG VERSION=unknown
ARG REVISION=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="spiderpool-python" \
      org.opencontainers.image.description="Spiderpool (Python): underlay IPAM, controller and agent" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
