#!/usr/bin/env bash
# Tests the web client in a real browser (Debian's headless Chromium, driven by playwright-core)
# against a real Watchman with the local backend and real Middleman and ipykernel processes:
#
#  1. middleman/web-dist/ must be the build of web/, byte for byte, the .gz files included
#     (scripts/build-web.sh --check);
#  2. a Watchman on free ports of 127.0.0.1 with a temporary directory and a small plan, as
#     scripts/run-local.sh starts it;
#  3. web/test/*.test.mjs under `node --test`: the landing page into a document, typing and
#     running, two people in one cell, input(), interrupt, hostile HTML and huge outputs, cell
#     operations and keys, .ipynb export/import, a viewer, a Middleman restarted under an
#     open page, and a network drop while Middleman keeps running (those two start their own
#     Middleman with a file store).
#
# Screenshots of the main views go to artifacts/web/. Exits non-zero on any failure and stops
# every process it started. NBP_WEB_BUILD=0 skips the cargo build (the binaries must exist).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
cd "$root"
bash scripts/bootstrap.sh </dev/null
# shellcheck source=env.sh
source "$here/env.sh"
began=$SECONDS
step() { printf '\n== %s (%ss)\n' "$*" "$((SECONDS - began))"; }

step "middleman/web-dist/ is the build of web/"
bash scripts/build-web.sh --check

step "Watchman with the local backend"
if [ "${NBP_WEB_BUILD:-1}" != 0 ]; then
  cargo build -q -p middleman -p watchman
fi
for b in watchman middleman; do
  [ -x "target/debug/$b" ] || { echo "test-web: target/debug/$b is missing: cargo build -p $b" >&2; exit 1; }
done
tmp="$(mktemp -d "${TMPDIR:-/tmp}/nbplat-web.XXXXXX")"
mkdir -p "$tmp/bin"
cp target/debug/watchman target/debug/middleman "$tmp/bin/"
pool="web-$$-$RANDOM"
watchman_pid=""
cleanup() {
  status=$?
  if [ -n "$watchman_pid" ] && kill -0 "$watchman_pid" 2>/dev/null; then
    kill -TERM "$watchman_pid" 2>/dev/null || true
    for _ in $(seq 1 150); do kill -0 "$watchman_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$watchman_pid" 2>/dev/null || true
  fi
  # Pods of this run's Watchman that it did not stop, and the tests' own Middleman if a test
  # died without stopping it: process groups led by a process carrying this run's marker.
  for envfile in /proc/[0-9]*/environ; do
    pid="${envfile#/proc/}"
    pid="${pid%/environ}"
    if { tr '\0' '\n' <"$envfile"; } 2>/dev/null | grep -qx -e "WATCHMAN_POOL=$pool" -e "NBP_WEB_RUN=$pool" &&
      [ "$(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ')" = "$pid" ]; then
      kill -KILL -- "-$pid" 2>/dev/null || true
    fi
  done
  if [ "$status" -ne 0 ] && [ -f "$tmp/watchman.log" ]; then
    echo "test-web: Watchman's log (last lines):" >&2
    tail -n 30 "$tmp/watchman.log" >&2
  fi
  rm -rf "$tmp"
  if [ "$status" -eq 0 ]; then
    echo "test-web: passed in $((SECONDS - began)) s (screenshots in artifacts/web/)"
  else
    echo "test-web: FAILED (exit $status)" >&2
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$tmp/bin/middleman" keygen --out-dir "$tmp/keys" >/dev/null
(umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$tmp/keys/api-token")
cat >"$tmp/plans.toml" <<EOF2
# scripts/test-web.sh: a small pool; a 256 KiB output cap that one test passes on purpose.
[plans.web]
kernel = "python3"
warm = { ratio = 0.5, min = 2, max = 3 }
idle_timeout = "30m"
max_lifetime = "1h"

[plans.web.limits]
execution_timeout = "60s"
max_output_bytes = 262144
memory_mib = 2048
max_processes = 128
max_open_files = 1024
EOF2
"$tmp/bin/watchman" \
  --plans "$tmp/plans.toml" \
  --signing-key "$tmp/keys/signing.pem" \
  --api-token-file "$tmp/keys/api-token" \
  --grpc-listen 127.0.0.1:0 \
  --http-listen 127.0.0.1:0 \
  --local-root "$tmp/pods" \
  --pool-id "$pool" \
  --dev-page \
  --delete-pods-on-exit \
  --shutdown-grace 2s \
  --log-format json \
  </dev/null >"$tmp/watchman.log" 2>&1 &
watchman_pid=$!
field() { grep -o "\"$1\":\"[^\"]*\"" "$tmp/watchman.log" | head -1 | cut -d'"' -f4; }
for _ in $(seq 1 100); do
  [ -n "$(field http_addr)" ] && break
  kill -0 "$watchman_pid" 2>/dev/null || { echo "test-web: Watchman exited" >&2; exit 1; }
  sleep 0.1
done
http="$(field http_addr)"
[ -n "$http" ] || { echo "test-web: Watchman did not report its address" >&2; exit 1; }
warm=0
for _ in $(seq 1 600); do
  warm="$(curl -sf "http://$http/metrics" | sed -n 's/^watchman_pool_pods{plan="web",state="warm"} \([0-9]*\).*/\1/p')"
  [ "${warm:-0}" -ge 1 ] && break
  sleep 0.2
done
[ "${warm:-0}" -ge 1 ] || { echo "test-web: no warm pod after 120 s" >&2; exit 1; }
echo "Watchman: http://$http/ ($warm warm)"

step "Browser tests (headless Chromium)"
mkdir -p artifacts/web
NBP_WEB_WATCHMAN="http://$http" \
  NBP_WEB_BIN="$tmp/bin" \
  NBP_WEB_TMP="$tmp" \
  NBP_WEB_RUN="$pool" \
  NBP_WEB_ARTIFACTS="$root/artifacts/web" \
  NBP_WEB_CHROMIUM="${NBP_WEB_CHROMIUM:-$(command -v chromium)}" \
  node --test --test-concurrency=1 --test-timeout=180000 ${NBP_WEB_ONLY:+--test-name-pattern="$NBP_WEB_ONLY"} web/test/*.test.mjs
