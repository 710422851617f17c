#!/usr/bin/env bash
# Runs Middleman locally with a Python kernel and prints the URL of the try-it page.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=env.sh
source "$here/env.sh"
cd "$here/.."
cargo build -q -p middleman
bin=target/debug/middleman
keys="$NBP_CACHE/dev-keys"
[ -f "$keys/signing.pem" ] || "$bin" keygen --out-dir "$keys"
listen="${MIDDLEMAN_LISTEN:-127.0.0.1:8888}"
token="$("$bin" token --key "$keys/signing.pem" --doc dev --pod local --user dev --name Developer --role editor --ttl-secs 86400)"
echo
echo "  Open http://$listen/#token=$token"
echo
exec "$bin" serve --listen "$listen" --public-key "$keys/public.pem" --document dev --pod local --kernel python3
