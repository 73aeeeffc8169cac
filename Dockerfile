# spiderpool (Python): one image for spiderpool-controller and spiderpool-agent.
# The CNI plugins are also built as self-contained bundles (PyInstaller), because they run in the
# node's filesystem, where this image's Python is not: the agent installs them with --plugin-bundle.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir . pyinstaller==6.22.3 \
 && python -m spiderpool.cni.bundle --out /opt/spiderpool/cni

FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends iproute2 && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/lib/python3.11/site-packages /usr/local/lib/python3.11/site-packages
COPY --from=build /usr/local/bin/spiderpool-* /usr/local/bin/
COPY --from=build /opt/spiderpool/cni /opt/spiderpool/cni
COPY charts/spiderpool/crds /opt/spiderpool/crds
ENV SPIDERPOOL_PLUGIN_BUNDLE=/opt/spiderpool/cni
