#!/usr/bin/env bash
# Builds the web client (web/) into middleman/web-dist/, which is committed so that cargo and the
# Dockerfiles never need Node. The toolchain is pinned by web/package-lock.json and installed
# with `npm ci` once per lockfile into ~/.cache/nbplat/web-deps/<hash>; web/node_modules links
# there. Type-checks with tsc, then bundles with esbuild (deterministic).
#
#   bash scripts/build-web.sh           rebuild middleman/web-dist/
#   bash scripts/build-web.sh --check   build into a temporary directory and fail if the committed
#                                       middleman/web-dist/ differs
#   bash scripts/build-web.sh --deps    only install the dependencies
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
# shellcheck source=env.sh
source "$here/env.sh"
cd "$root"
mode="${1:-build}"

lock_hash="$(cat web/package.json web/package-lock.json | sha256sum | cut -c1-16)"
deps="$NBP_CACHE/web-deps/$lock_hash"
if [ ! -f "$deps/.complete" ]; then
  echo "build-web: npm ci (web/package-lock.json) into $deps"
  rm -rf "$deps"
  mkdir -p "$deps"
  cp web/package.json web/package-lock.json "$deps/"
  (cd "$deps" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  touch "$deps/.complete"
fi
if [ "$(readlink web/node_modules 2>/dev/null)" != "$deps/node_modules" ]; then
  rm -rf web/node_modules
  ln -s "$deps/node_modules" web/node_modules
fi
[ "$mode" = "--deps" ] && exit 0

(cd web && node_modules/.bin/tsc --noEmit -p .)
case "$mode" in
  --check)
    out="$(mktemp -d "${TMPDIR:-/tmp}/nbplat-web.XXXXXX")"
    trap 'rm -rf "$out"' EXIT
    node web/build.mjs "$out/web-dist" >/dev/null
    if ! diff -r middleman/web-dist "$out/web-dist" >"$out/diff.txt" 2>&1; then
      head -n 20 "$out/diff.txt" >&2
      echo "build-web: middleman/web-dist/ is not the build of web/: run 'bash scripts/build-web.sh' and commit middleman/web-dist/" >&2
      exit 1
    fi
    echo "build-web: middleman/web-dist/ matches a fresh build of web/"
    ;;
  build)
    node web/build.mjs
    ;;
  *)
    echo "usage: $0 [--check|--deps]" >&2
    exit 2
    ;;
esac
