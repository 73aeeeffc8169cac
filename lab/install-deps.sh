#!/usr/bin/env bash
# The system packages the lab needs (Debian names), installed with apt when missing and when run as
# root; otherwise each missing one is named with the command that installs it, and this fails.
#   iproute2, util-linux (nsenter, unshare), procps (sysctl): namespaces and links
#   iptables: kube-proxy in every node;  iputils-ping, curl: traffic checks
#   runc: the nodes' container runtime (containerd itself is built from its Go module)
#   buildah: builds the images from their Containerfiles and the project's Dockerfile
#   debootstrap: the images' Debian base;  gcc, libc6-dev: the static pause binary;  make, tar
#   faketime: libfaketime, for the fault matrix's agent whose clock is off
set -euo pipefail

need=()
for pair in ip:iproute2 nsenter:util-linux unshare:util-linux sysctl:procps iptables:iptables \
    ping:iputils-ping curl:curl runc:runc buildah:buildah debootstrap:debootstrap gcc:gcc make:make tar:tar; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair##*:}")
done
# libfaketime (preloaded into one agent by the fault matrix)
compgen -G "/usr/lib/*/faketime/libfaketime.so.1" >/dev/null || need+=(faketime)
# the static C library, for the pause binary
[ -e /usr/lib/x86_64-linux-gnu/libc.a ] || [ -e /usr/lib/aarch64-linux-gnu/libc.a ] || need+=(libc6-dev)
mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u | grep -v '^$' || true)
if [ "${#need[@]}" -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "the lab needs these packages: ${need[*]}" >&2
  echo "install them with: sudo apt-get install -y ${need[*]}" >&2
  exit 1
fi
echo "installing: ${need[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
