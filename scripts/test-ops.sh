#!/usr/bin/env bash
# Checks what operators get (Prometheus rules, Grafana dashboards, their manifests) and the k6
# load scripts, against a real Watchman and real Middleman pods:
#
#  1. promtool check rules and test rules (deploy/prometheus), the PrometheusRule up to date,
#     kustomize builds of deploy/grafana and deploy/prometheus;
#  2. every dashboard parses, every panel has a query (valid PromQL) and a unit;
#  3. a Watchman (local backend, memory store, free ports on 127.0.0.1, a temporary directory)
#     with a small plan; one document allocated with grpcurl, driven over its WebSocket
#     (scripts/ops/exercise.py: cells, input, truncation, Yjs, resume, refusal, restart); another
#     allocated and released; the gateway in front of them (as `make run` and production have
#     it: every document is driven through it); the /metrics endpoints of Watchman, the
#     gateway and the document's Middleman (found through `watchman.v1.Routes`, as the gateway
#     finds it) scraped; every metric name a dashboard or rule uses must be declared in
#     docs/metrics.md and present in those scrapes;
#  4. each k6 script as a short smoke run (1-2 VUs, a few seconds, SMOKE=1: correctness
#     thresholds only) against that Watchman, through the gateway to its pods.
#
# Exits non-zero on any failure; stops every process it started. NBP_OPS_BUILD=0 skips the
# cargo build of the debug binaries (they must then exist).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
cd "$root"
bash scripts/bootstrap.sh </dev/null
bash scripts/bootstrap-ops.sh </dev/null
# shellcheck source=env.sh
source "$here/env.sh"
py="$NBP_TOOLS_ENV/bin/python"
began=$SECONDS
step() { printf '\n== %s (%ss)\n' "$*" "$((SECONDS - began))"; }

# ---- 1. rules and manifests ---------------------------------------------------------------------
step "Prometheus rules"
promtool check rules deploy/prometheus/rules.yaml
promtool test rules deploy/prometheus/tests/*.yaml
deploy/prometheus/render-prometheusrule.sh --check

step "kustomize builds"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/nbplat-ops.XXXXXX")"
kustomize build deploy/grafana >"$tmp/grafana.yaml"
kustomize build deploy/prometheus >"$tmp/prometheus.yaml"
"$py" scripts/ops/check.py manifests "$tmp/grafana.yaml" "$tmp/prometheus.yaml" deploy/prometheus/rules.yaml deploy/grafana/*.json
"$py" scripts/ops/check.py capacity deploy/base/gateway.yaml deploy/prometheus/rules.yaml

# ---- 2. dashboards ------------------------------------------------------------------------------
step "Grafana dashboards"
"$py" scripts/ops/check.py dashboards "$(command -v promtool)" deploy/grafana/*.json

# ---- 3. a live Watchman and its pods ------------------------------------------------------------
step "Watchman with the local backend, and a gateway"
plan=ops
local_watchman_gateway=1
# A 64 KiB output cap that one cell exceeds on purpose.
# shellcheck source=lib/local-watchman.sh
source "$here/lib/local-watchman.sh"
start_local_watchman test-ops "${NBP_OPS_BUILD:-1}" "$plan" 65536

step "Allocate with grpcurl, drive the document over its WebSocket"
rpc() {
  local method="$1" body="$2"
  grpcurl -plaintext -import-path proto -proto watchman/v1/watchman.proto \
    -H "authorization: Bearer $(cat "$tmp/keys/api-token")" -d "$body" "$grpc" "watchman.v1.Watchman/$method"
}
# A field of a JSON file: FILE PYTHON-SUBSCRIPT (e.g. '["pod"]').
json_field() { "$py" -c "import json,sys; print(json.load(open(sys.argv[1]))$2)" "$1"; }
rpc Allocate "{\"document_id\":\"ops-check\",\"plan\":\"$plan\",\"user_id\":\"ops\",\"user_name\":\"Ops\"}" >"$tmp/alloc.json"
grep -q '"launch": "LAUNCH_KIND_WARM"' "$tmp/alloc.json" || { cat "$tmp/alloc.json" >&2; echo "test-ops: not a warm allocation" >&2; exit 1; }
grep -q "\"websocketUrl\": \"ws://$public/pods/" "$tmp/alloc.json" || { cat "$tmp/alloc.json" >&2; echo "test-ops: the document is not reached through the gateway" >&2; exit 1; }
# Middleman's port is not public (the gateway relays only documents' endpoints): asked of
# Watchman's route service with the gateway's credential, as the gateway asks.
pod="$(json_field "$tmp/alloc.json" '["pod"]')"
grpcurl -plaintext -import-path proto -proto watchman/v1/watchman.proto \
  -H "authorization: Bearer $(cat "$tmp/keys/route-token")" -d "{\"pod\":\"$pod\"}" "$grpc" \
  watchman.v1.Routes/ResolvePod >"$tmp/route.json"
mm="$(json_field "$tmp/route.json" '["live"]["endpoint"]')"
[ -n "$mm" ] && [ -n "$gateway_metrics" ] || { cat "$tmp/route.json" >&2; echo "test-ops: no Middleman or gateway metrics address" >&2; exit 1; }
"$py" scripts/ops/exercise.py "$tmp/alloc.json" "$mm"
# The data endpoints and the web client's page, through the gateway.
token="$(json_field "$tmp/alloc.json" '["token"]')"
curl -sf -H "authorization: Bearer $token" "http://$public/pods/$pod/api/notebook" | grep -q '"nbformat": *4' ||
  { echo "test-ops: GET /api/notebook through the gateway failed" >&2; exit 1; }
curl -sf "http://$public/pods/$pod/" | grep -qi '<html' || { echo "test-ops: no web client page from the gateway" >&2; exit 1; }
# A second document, released: its pod ends (pods ended, reason released).
rpc Allocate "{\"document_id\":\"ops-release\",\"plan\":\"$plan\",\"user_id\":\"ops\"}" >/dev/null
rpc Release '{"document_id":"ops-release"}' | grep -q '"released": true'
rpc ListPools '{}' | grep -q "\"plan\": \"$plan\""

step "Scrape the /metrics endpoints, check every metric the dashboards and rules use"
# Saves are debounced (--save-interval 1s): wait for the document's first save.
for _ in $(seq 1 50); do
  curl -sf "$mm/metrics" | grep -q '^middleman_document_save_seconds_count' && break
  sleep 0.2
done
for _ in $(seq 1 50); do
  curl -sf "http://$http/metrics" | grep -q '^watchman_pods_ended_total' && break
  sleep 0.2
done
curl -sf "http://$http/metrics" >"$tmp/watchman.prom"
curl -sf "$mm/metrics" >"$tmp/middleman.prom"
curl -sf "http://$gateway_metrics/metrics" >"$tmp/gateway.prom"
awk '/^gateway_bytes_total\{direction="to_client"\} / && $2 > 0 { found = 1 } END { exit !found }' "$tmp/gateway.prom" ||
  { echo "test-ops: the gateway relayed nothing to clients" >&2; exit 1; }
# Every component registers the names only a fault makes appear at 0 when it starts, so every
# name must be there (check.py's --event-only is for a name that cannot be).
"$py" scripts/ops/check.py metrics --docs docs/metrics.md --rules deploy/prometheus/rules.yaml \
  --scrape "$tmp/watchman.prom" --scrape "$tmp/middleman.prom" \
  --scrape "$tmp/gateway.prom" deploy/grafana/*.json

# ---- 4. k6 smoke runs ---------------------------------------------------------------------------
k6() {
  local script="$1"
  shift
  step "k6 smoke: $script"
  node loadtest/k6/run.mjs -e SMOKE=1 -e WATCHMAN_ADDR="$grpc" -e PLAN="$plan" \
    -e API_TOKEN_FILE="$tmp/keys/api-token" "$@" "loadtest/k6/$script"
}
k6 allocate.js --vus 2 --iterations 4 -e PACE=0.2
k6 session.js --vus 1 --iterations 2 -e ROUND_TRIPS=5 -e PACE=0
k6 collaborate.js -e VUS=2
