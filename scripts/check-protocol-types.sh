#!/usr/bin/env bash
# The web client's message types (web/src/protocol.ts) are generated from the doc-protocol crate,
# the one definition of the document protocol. This fails when the committed file is not what
# the crate generates now: change the Rust types, then regenerate and commit the file.
#
#   bash scripts/check-protocol-types.sh           regenerate into a temporary file and compare
#   bash scripts/check-protocol-types.sh --write   regenerate web/src/protocol.ts
#
# The web bundle only erases these types, so a change here rarely changes middleman/web-dist/;
# scripts/build-web.sh type-checks the client against them and says when it does.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
cd "$root"
committed=web/src/protocol.ts

generate() {
  cargo run --quiet -p doc-protocol --features ts --bin protocol-ts
}

case "${1:-check}" in
  --write)
    tmp="$(mktemp "${TMPDIR:-/tmp}/protocol-ts.XXXXXX")"
    trap 'rm -f "$tmp"' EXIT
    generate >"$tmp"
    mv "$tmp" "$committed"
    echo "check-protocol-types: wrote $committed"
    ;;
  check)
    tmp="$(mktemp "${TMPDIR:-/tmp}/protocol-ts.XXXXXX")"
    trap 'rm -f "$tmp" "$tmp.diff"' EXIT
    generate >"$tmp"
    if ! diff -u "$committed" "$tmp" >"$tmp.diff"; then
      head -n 40 "$tmp.diff" >&2
      echo "check-protocol-types: $committed is not what doc-protocol generates: run 'bash scripts/check-protocol-types.sh --write' and commit it" >&2
      exit 1
    fi
    echo "check-protocol-types: $committed matches doc-protocol"
    ;;
  *)
    echo "usage: $0 [--write]" >&2
    exit 2
    ;;
esac
