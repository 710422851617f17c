#!/usr/bin/env bash
# Writes the development secrets that kustomization.yaml reads: secrets/signing.pem (an
# Ed25519 PKCS#8 key, as `middleman keygen` makes), secrets/public.pem (its public half, SPKI
# PEM, for the gateway), secrets/api-token and secrets/route-token (the gateway's token for
# Watchman), each 32 random bytes, hex. Existing files are kept, so tokens stay valid across
# applies; --force replaces them. public.pem is always derived again from signing.pem, so the
# two cannot disagree. git ignores secrets/; never use these for anything but a development
# cluster.
set -euo pipefail
dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/secrets"
force=0
[ "${1:-}" = "--force" ] && force=1
mkdir -p "$dir"
chmod 700 "$dir"
umask 077
if [ "$force" = 1 ] || [ ! -s "$dir/signing.pem" ]; then
  openssl genpkey -algorithm ed25519 -out "$dir/signing.pem"
fi
openssl pkey -in "$dir/signing.pem" -pubout -out "$dir/public.pem"
for token in api-token route-token; do
  if [ "$force" = 1 ] || [ ! -s "$dir/$token" ]; then
    openssl rand -hex 32 | tr -d '\n' >"$dir/$token"
  fi
done
echo "make-secrets: $dir/signing.pem, public.pem, api-token and route-token"
