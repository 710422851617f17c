#!/usr/bin/env bash
# Runs the platform locally, the embedded default: Watchman with the local backend (real
# Middleman and kernel processes on this host), the memory store, a warm pool, and the try-it
# page. Ctrl-C stops everything.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=env.sh
source "$here/env.sh"
cd "$here/.."
cargo build -q -p middleman -p watchman
keys="$NBP_CACHE/dev-keys"
[ -f "$keys/signing.pem" ] || target/debug/middleman keygen --out-dir "$keys"
[ -f "$keys/api-token" ] || (umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$keys/api-token")
http="${WATCHMAN_HTTP_LISTEN:-127.0.0.1:8080}"
echo
echo "  Open http://$http/ to create or open a document."
echo "  gRPC on ${WATCHMAN_GRPC_LISTEN:-127.0.0.1:50051} (bearer token in $keys/api-token)."
echo
exec target/debug/watchman \
  --plans watchman/plans.local.toml \
  --signing-key "$keys/signing.pem" \
  --api-token-file "$keys/api-token" \
  --http-listen "$http" \
  --local-root "$NBP_CACHE/local-pods" \
  --pool-id "local-$(id -u)" \
  --dev-page --delete-pods-on-exit
