#!/usr/bin/env bash
# Installs everything the platform and its tests need, idempotently, caching under
# ~/.cache/nbplat: Debian packages (Redis, Chromium for the web client's tests), the kernel's and
# the tools' Python environments (locked, with hashes) and the kernelspec, and the web client's
# pinned npm packages. Fast and quiet when nothing changed.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=env.sh
source "$here/env.sh"
mkdir -p "$NBP_CACHE"

# Debian packages, installed only when a command is missing.
declare -A APT_PACKAGES=([redis-server]=redis-server [protoc]=protobuf-compiler [chromium]=chromium)
missing=()
for cmd in "${!APT_PACKAGES[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${APT_PACKAGES[$cmd]}")
done
# A font for the browser tests' pages and screenshots (Chromium only recommends one).
[ -d /usr/share/fonts/truetype/dejavu ] || missing+=(fonts-dejavu-core)
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "bootstrap: installing Debian packages: ${missing[*]}"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The Python environments: the kernel's and the tools' (scripts/python-envs.sh).
bash "$here/python-envs.sh"
# Deno's Jupyter kernel (JavaScript and TypeScript notebooks), pinned, from the npm registry.
bash "$here/deno.sh"

# Go tools, built from the Go module proxy once and cached: grpcurl (tests that Watchman's
# health and reflection work with the tool operators use).
GRPCURL_VERSION=v1.9.3
if [ ! -x "$NBP_CACHE/bin/grpcurl-$GRPCURL_VERSION" ]; then
  echo "bootstrap: building grpcurl $GRPCURL_VERSION"
  mkdir -p "$NBP_CACHE/bin"
  GOBIN="$NBP_CACHE/gobin" GOMODCACHE="$NBP_CACHE/gomod" GOCACHE="$NBP_CACHE/gobuild" GOFLAGS=-mod=mod \
    go install "github.com/fullstorydev/grpcurl/cmd/grpcurl@$GRPCURL_VERSION"
  mv "$NBP_CACHE/gobin/grpcurl" "$NBP_CACHE/bin/grpcurl-$GRPCURL_VERSION"
fi
ln -sf "grpcurl-$GRPCURL_VERSION" "$NBP_CACHE/bin/grpcurl"

# Node packages the tests use as real peers (Yjs), pinned in scripts/node/package.json.
node_stamp="$NBP_CACHE/node/.stamp"
node_want="$(sha256sum "$here/node/package.json" | cut -c1-16)"
if [ "$(cat "$node_stamp" 2>/dev/null)" != "$node_want" ]; then
  echo "bootstrap: installing test Node packages"
  mkdir -p "$NBP_CACHE/node"
  cp "$here/node/package.json" "$NBP_CACHE/node/package.json"
  (cd "$NBP_CACHE/node" && npm install --silent --no-audit --no-fund >/dev/null)
  echo "$node_want" >"$node_stamp"
fi
# Real public notebooks for the document tests (scripts/fetch-corpus.sh).
bash "$here/fetch-corpus.sh"
# The web client's toolchain and the browser tests' driver (web/package-lock.json, npm ci).
bash "$here/build-web.sh" --deps
# Operator tooling (promtool, kustomize, the load runner's packages).
bash "$here/bootstrap-ops.sh"
echo "bootstrap: up to date ($NBP_CACHE)"
