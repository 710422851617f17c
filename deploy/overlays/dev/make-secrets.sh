#!/usr/bin/env bash
# Writes the development secrets that kustomization.yaml reads: secrets/signing.pem (an
# Ed25519 PKCS#8 key, as `middleman keygen` makes) and secrets/api-token (32 random bytes,
# hex). Existing files are kept, so tokens stay valid across applies; --force replaces them.
# git ignores secrets/; never use these for anything but a development cluster.
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
if [ "$force" = 1 ] || [ ! -s "$dir/api-token" ]; then
  openssl rand -hex 32 | tr -d '\n' >"$dir/api-token"
fi
echo "make-secrets: $dir/signing.pem and $dir/api-token"
