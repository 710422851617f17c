#!/usr/bin/env bash
# Runs the platform locally, the embedded default: Watchman with the local backend (real
# Middleman and kernel processes on this host), the memory store, a warm pool, and the try-it
# page, behind a gateway (docs/gateway.md) on the one public port, as in production: the landing
# page, the web client and every document (also those allocated over gRPC) are reached there.
# Ctrl-C stops everything.
#
# Addresses: NBP_PUBLIC_LISTEN (the gateway, 127.0.0.1:8080), NBP_PUBLIC_URL (what pages and
# Allocate answers name, http://$NBP_PUBLIC_LISTEN), WATCHMAN_HTTP_LISTEN (Watchman's landing
# page and metrics, 127.0.0.1:8081), WATCHMAN_GRPC_LISTEN (127.0.0.1:50051), GATEWAY_METRICS_LISTEN
# (127.0.0.1:9090); the gateway's other GATEWAY_* settings apply as they are.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=env.sh
source "$here/env.sh"
cd "$here/.."
cargo build -q -p middleman -p watchman -p gateway
keys="$NBP_CACHE/dev-keys"
[ -f "$keys/signing.pem" ] || target/debug/middleman keygen --out-dir "$keys"
[ -f "$keys/api-token" ] || (umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$keys/api-token")
# The gateway's credential for Watchman's Routes service (and nothing else).
[ -f "$keys/route-token" ] || (umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$keys/route-token")
public="${NBP_PUBLIC_LISTEN:-127.0.0.1:8080}"
public_url="${NBP_PUBLIC_URL:-http://$public}"
http="${WATCHMAN_HTTP_LISTEN:-127.0.0.1:8081}"
grpc="${WATCHMAN_GRPC_LISTEN:-127.0.0.1:50051}"
local_root="$NBP_CACHE/local-pods"

watchman_pid=""
gateway_pid=""
stop() {
  # Both at once: the gateway drains (its clients are told to reconnect), Watchman stops its pods.
  local pid
  for pid in $gateway_pid $watchman_pid; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in $gateway_pid $watchman_pid; do wait "$pid" 2>/dev/null || true; done
}
trap stop EXIT
trap 'exit 130' INT TERM

target/debug/watchman \
  --plans watchman/plans.local.toml \
  --signing-key "$keys/signing.pem" \
  --api-token-file "$keys/api-token" \
  --route-token-file "$keys/route-token" \
  --public-url "$public_url" \
  --grpc-listen "$grpc" \
  --http-listen "$http" \
  --local-root "$local_root" \
  --pool-id "local-$(id -u)" \
  --dev-page --delete-pods-on-exit &
watchman_pid=$!
# Watchman writes the public key its tokens are verified with (<local-root>/public.pem) before
# it listens.
for _ in $(seq 1 300); do
  curl -sf -o /dev/null "http://$http/healthz" && break
  kill -0 "$watchman_pid" 2>/dev/null || { echo "run-local: Watchman exited" >&2; exit 1; }
  sleep 0.1
done
curl -sf -o /dev/null "http://$http/healthz" || { echo "run-local: Watchman is not answering on $http" >&2; exit 1; }

target/debug/gateway \
  --listen "$public" \
  --public-key "$local_root/public.pem" \
  --watchman "http://$grpc" \
  --watchman-token-file "$keys/route-token" \
  --landing "http://$http" \
  --jupyter-api "http://$http" &
gateway_pid=$!

# A Jupyter API token for a local user (docs/jupyter.md): stock JupyterLab (in gateway mode),
# VS Code and @jupyterlab/services clients run kernels on the warm pools with it.
jupyter_token="$(curl -sf -X POST -H "Authorization: Bearer $(cat "$keys/api-token")" \
  -H 'Content-Type: application/json' -d '{"user_id": "local-developer", "user_name": "Developer"}' \
  "http://$http/v1/jupyter-tokens" | sed -n 's/.*"token":"\([^"]*\)".*/\1/p')"

echo
echo "  Open $public_url/ to create or open a document."
echo "  gRPC on $grpc (bearer token in $keys/api-token)."
if [ -n "$jupyter_token" ]; then
  echo "  JupyterLab on these kernels: jupyter lab --gateway-url=$public_url/jupyter --GatewayClient.auth_token=$jupyter_token"
  echo "  VS Code (Existing Jupyter Server): $public_url/jupyter/?token=$jupyter_token"
fi
echo
# Until either stops (or Ctrl-C); then the other is stopped too.
status=0
wait -n "$watchman_pid" "$gateway_pid" || status=$?
exit "$status"
