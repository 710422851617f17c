#!/usr/bin/env bash
# Benchmarks the web client in headless Chromium against a Watchman with the local backend (real
# Middleman and ipykernel processes) behind a gateway, as scripts/test-web.sh runs the browser
# tests (the page and every document through the gateway's one port, the production shape):
# web/bench/tables.mjs, a 1,000,000-row DataFrame as a table output against pandas' HTML. Prints
# a Markdown table (docs/benchmarks.md). NBP_WEB_BUILD=0 skips the cargo build; NBP_BENCH_ROUNDS
# sets the runs per case (3).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
cd "$root"
bash scripts/bootstrap.sh </dev/null
# shellcheck source=env.sh
source "$here/env.sh"
began=$SECONDS
run_marker_vars=NBP_WEB_RUN
local_watchman_gateway=1
# shellcheck source=lib/local-watchman.sh
source "$here/lib/local-watchman.sh"
# A 64 MiB output cap: the largest HTML case is some 5 MB.
start_local_watchman bench-web "${NBP_WEB_BUILD:-1}" web 67108864 --dev-page

NBP_WEB_WATCHMAN="http://$public" \
  NBP_WEB_BIN="$tmp/bin" \
  NBP_WEB_TMP="$tmp" \
  NBP_WEB_RUN="$pool" \
  NBP_WEB_ARTIFACTS="$root/artifacts/web" \
  NBP_WEB_CHROMIUM="${NBP_WEB_CHROMIUM:-$(command -v chromium)}" \
  node web/bench/tables.mjs
