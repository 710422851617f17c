#!/usr/bin/env bash
# Installs the operators' and load tests' tools, idempotently, cached under ~/.cache/nbplat/bin
# (called from scripts/bootstrap.sh; fast and quiet when up to date; no prompts, no stdin):
#
# - promtool, from Debian's prometheus package: the .deb is downloaded and only promtool is
#   unpacked (installing the package would also install, and on systemd hosts start, a
#   Prometheus server, which nothing here needs);
# - kustomize, built from the Go module proxy, to build deploy/ as the cluster will;
# - the Node packages of loadtest/k6/run.mjs, which runs the k6-style load scripts. k6 itself
#   is not installed: it is under the AGPL, which this project keeps out of its tooling. The
#   scripts keep to k6's script API, so they also run under k6 where that is acceptable.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=env.sh
source "$here/env.sh"
bin="$NBP_CACHE/bin"
mkdir -p "$bin"

# promtool: Debian bookworm's prometheus package (2.42). Any version of that package will do;
# the file name records the one unpacked.
if ! [ -x "$bin/promtool" ] || ! "$bin/promtool" --version >/dev/null 2>&1; then
  echo "bootstrap-ops: unpacking promtool from Debian's prometheus package"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  chmod 755 "$tmp"
  # apt-get download needs package lists; a fresh machine may have none yet.
  if ! (cd "$tmp" && apt-get download -qq -o APT::Sandbox::User=root prometheus >/dev/null 2>&1); then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq </dev/null
    (cd "$tmp" && apt-get download -qq -o APT::Sandbox::User=root prometheus >/dev/null)
  fi
  deb="$(ls "$tmp"/prometheus_*.deb)"
  version="$(dpkg-deb -f "$deb" Version)"
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" ./usr/bin/promtool
  install -m 0755 "$tmp/usr/bin/promtool" "$bin/promtool-${version%%+*}"
  ln -sf "promtool-${version%%+*}" "$bin/promtool"
  rm -rf "$tmp"
  trap - EXIT
fi

# kustomize (Apache-2.0), as `kubectl kustomize` embeds it; v5.7.1 is the newest that builds
# with Go 1.26.
KUSTOMIZE_VERSION=v5.7.1
if [ ! -x "$bin/kustomize-$KUSTOMIZE_VERSION" ]; then
  echo "bootstrap-ops: building kustomize $KUSTOMIZE_VERSION"
  GOBIN="$NBP_CACHE/gobin" GOMODCACHE="$NBP_CACHE/gomod" GOCACHE="$NBP_CACHE/gobuild" GOFLAGS=-mod=mod \
    go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION" </dev/null
  mv "$NBP_CACHE/gobin/kustomize" "$bin/kustomize-$KUSTOMIZE_VERSION"
fi
ln -sf "kustomize-$KUSTOMIZE_VERSION" "$bin/kustomize"

# The k6 script runner's packages (gRPC and WebSocket clients), pinned in
# loadtest/k6/package.json; reinstalled when it changes.
k6_dir="$NBP_CACHE/k6-node"
k6_stamp="$k6_dir/.stamp"
k6_want="$(sha256sum "$here/../loadtest/k6/package.json" | cut -c1-16)"
if [ "$(cat "$k6_stamp" 2>/dev/null)" != "$k6_want" ]; then
  echo "bootstrap-ops: installing the k6 runner's Node packages"
  mkdir -p "$k6_dir"
  cp "$here/../loadtest/k6/package.json" "$k6_dir/package.json"
  (cd "$k6_dir" && npm install --silent --no-audit --no-fund </dev/null >/dev/null)
  echo "$k6_want" >"$k6_stamp"
fi
echo "bootstrap-ops: up to date ($("$bin/promtool" --version 2>&1 | head -1 | cut -d' ' -f1-3), kustomize $KUSTOMIZE_VERSION, k6 runner packages)"
