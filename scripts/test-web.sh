#!/usr/bin/env bash
# Tests the web client in a real browser (Debian's headless Chromium, driven by playwright-core)
# against a real Watchman with the local backend and real Middleman and ipykernel processes, every
# page through a gateway (docs/gateway.md), as in production:
#
#  1. middleman/web-dist/ must be the build of web/, byte for byte, the .gz files included
#     (scripts/build-web.sh --check);
#  2. a Watchman on free ports of 127.0.0.1 with a temporary directory and a small plan, and a
#     gateway in front of it, as scripts/run-local.sh starts them: the landing page, the web
#     client and each document's WebSocket and data endpoints on the gateway's port;
#  3. web/test/*.test.mjs under `node --test`: the landing page into a document, typing and
#     running, two people in one cell, input(), interrupt, hostile HTML and huge outputs, cell
#     operations and keys, .ipynb export/import, a viewer, a Middleman restarted under an
#     open page, and a network drop between the browser and the gateway while Middleman keeps
#     running (those two start their own Middleman with a file store, behind a gateway of
#     their own with a fixed route: web/test/harness.mjs); daylong.test.mjs: keyboard without
#     traps, c/x/v/z/Shift-M, input() focus, KaTeX offline, toasts, axe-core, a phone-sized
#     page; runs.test.mjs: run all once per cell, causes on badges, the kernel-restart banner;
#     files.test.mjs: the Files panel; data.test.mjs: a million-row table paged and sorted, an
#     Altair chart with no request leaving the origin, Matplotlib figures; sql.test.mjs: SQL
#     cells, completion and inspection from the kernel; deno.test.mjs: a TypeScript notebook on
#     Deno's kernel (plan `web-deno`): the editor's mode, results, streams, errors, completion,
#     prompt(), interrupt, a second page, the export's language; jupyterlab.test.mjs: stock
#     JupyterLab (the tools' environment) in gateway mode on the gateway's /jupyter/, running
#     cells, input() and an interrupt on a warm pod, seen live by a second person in the web
#     client.
#
# Screenshots of the main views go to artifacts/web/. Exits non-zero on any failure and stops
# every process it started. NBP_WEB_BUILD=0 skips the cargo build (the binaries must exist).
# NBP_WEB_TESTS runs only the files it names, by stem and space-separated (`deno sql`);
# NBP_WEB_ONLY only the tests whose names match its pattern.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
cd "$root"
bash scripts/bootstrap.sh </dev/null
# shellcheck source=env.sh
source "$here/env.sh"
began=$SECONDS
step() { printf '\n== %s (%ss)\n' "$*" "$((SECONDS - began))"; }

tests=()
for t in ${NBP_WEB_TESTS:-}; do
  f="web/test/${t%.test.mjs}.test.mjs"
  [ -f "$f" ] || { echo "test-web: no $f (NBP_WEB_TESTS names files of web/test/ by stem)" >&2; exit 2; }
  tests+=("$f")
done
[ "${#tests[@]}" -gt 0 ] || tests=(web/test/*.test.mjs)

step "middleman/web-dist/ is the build of web/"
bash scripts/build-web.sh --check

step "Watchman with the local backend, and a gateway"
# The tests' own Middlemen and gateways carry NBP_WEB_RUN; a 256 KiB output cap that one test
# passes.
run_marker_vars=NBP_WEB_RUN
passed_note="screenshots in artifacts/web/"
local_watchman_gateway=1
# The plans: the helper's `web` (ipykernel) and `web-deno` (Deno's kernel, TypeScript), in a file
# of this script's that Watchman reads instead of the helper's (the last --plans wins). The
# landing page lists plans by name, so `web` stays the one it offers first.
tmp="$(mktemp -d "${TMPDIR:-/tmp}/nbplat-test-web.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT # until start_local_watchman's own trap replaces it
cat >"$tmp/plans-web.toml" <<'PLANS'
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

[plans.web-deno]
kernel = "deno"
warm = { ratio = 0, min = 1, max = 1 }
idle_timeout = "30m"
max_lifetime = "1h"

# watchman/plans.local.toml's `js`: 10 s per execution, a 10 MiB heap for the code.
[plans.web-deno.limits]
execution_timeout = "10s"
js_heap_mib = 10
memory_mib = 512
PLANS
# shellcheck source=lib/local-watchman.sh
source "$here/lib/local-watchman.sh"
start_local_watchman test-web "${NBP_WEB_BUILD:-1}" web 262144 --dev-page --plans "$tmp/plans-web.toml"

step "Browser tests (headless Chromium)"
mkdir -p artifacts/web
NBP_WEB_WATCHMAN="http://$public" \
  NBP_WEB_WATCHMAN_API="http://$http" \
  NBP_WEB_API_TOKEN_FILE="$tmp/keys/api-token" \
  NBP_WEB_BIN="$tmp/bin" \
  NBP_WEB_TMP="$tmp" \
  NBP_WEB_RUN="$pool" \
  NBP_WEB_ARTIFACTS="$root/artifacts/web" \
  NBP_WEB_CHROMIUM="${NBP_WEB_CHROMIUM:-$(command -v chromium)}" \
  NBP_WEB_DENO_PLAN=web-deno \
  node --test --test-concurrency=1 --test-timeout=180000 ${NBP_WEB_ONLY:+--test-name-pattern="$NBP_WEB_ONLY"} "${tests[@]}"
