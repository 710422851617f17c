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
#     allocated and released; both /metrics endpoints scraped; every metric name a dashboard or
#     rule uses must be declared in docs/metrics.md and present in those scrapes (the gateway's:
#     declared only, as no gateway runs here);
#  4. each k6 script as a short smoke run (1-2 VUs, a few seconds, SMOKE=1: correctness
#     thresholds only) against that Watchman and its pods.
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

# ---- 2. dashboards ------------------------------------------------------------------------------
step "Grafana dashboards"
"$py" scripts/ops/check.py dashboards "$(command -v promtool)" deploy/grafana/*.json

# ---- 3. a live Watchman and its pods ------------------------------------------------------------
step "Watchman with the local backend"
plan=ops
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
rpc Allocate "{\"document_id\":\"ops-check\",\"plan\":\"$plan\",\"user_id\":\"ops\",\"user_name\":\"Ops\"}" >"$tmp/alloc.json"
grep -q '"launch": "LAUNCH_KIND_WARM"' "$tmp/alloc.json" || { cat "$tmp/alloc.json" >&2; echo "test-ops: not a warm allocation" >&2; exit 1; }
"$py" scripts/ops/exercise.py "$tmp/alloc.json"
# A second document, released: its pod ends (pods ended, reason released).
rpc Allocate "{\"document_id\":\"ops-release\",\"plan\":\"$plan\",\"user_id\":\"ops\"}" >/dev/null
rpc Release '{"document_id":"ops-release"}' | grep -q '"released": true'
rpc ListPools '{}' | grep -q "\"plan\": \"$plan\""

step "Scrape both /metrics endpoints, check every metric the dashboards and rules use"
mm="$("$py" -c 'import json,sys; print(json.load(open(sys.argv[1]))["websocketUrl"].replace("ws://", "http://", 1).rsplit("/ws", 1)[0])' "$tmp/alloc.json")"
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
# Names that cannot appear without a fault this run cannot cause from outside (Watchman's
# backend failing to create a pod, the document store failing, a kernel sending messages that
# fail their signature): allowed to be missing, and listed. Once Watchman and Middleman register
# them at start (docs/metrics.md, "Dashboards and alerts"), check.py says so and the list can go.
event_only=watchman_pod_start_failures_total,middleman_document_save_errors_total,middleman_document_load_errors_total,middleman_kernel_messages_dropped_total
# No gateway runs here (its scrape would need its binary and a route through it): its names are
# checked against docs/metrics.md only.
"$py" scripts/ops/check.py metrics --docs docs/metrics.md --rules deploy/prometheus/rules.yaml \
  --event-only "$event_only" --not-running gateway --scrape "$tmp/watchman.prom" --scrape "$tmp/middleman.prom" deploy/grafana/*.json

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
