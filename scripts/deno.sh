#!/usr/bin/env bash
# Installs Deno's Jupyter kernel, pinned, from the npm registry (the `@deno/linux-*` package
# carries the binary), under $NBP_DENO, with its kernelspec (`deno`, language typescript) in
# $NBP_DENO/share/jupyter, which env.sh puts on JUPYTER_PATH. Idempotent: a second run checks
# the version and returns.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=env.sh
source "$here/env.sh"

case "$(uname -m)" in
  x86_64) arch=x64 ;;
  aarch64) arch=arm64 ;;
  *) echo "deno: no Deno package for $(uname -m)" >&2; exit 1 ;;
esac
package="@deno/linux-$arch-glibc@$DENO_VERSION"
if [ "$("$NBP_DENO/bin/deno" --version 2>/dev/null | head -1 | cut -d' ' -f2)" != "$DENO_VERSION" ]; then
  echo "bootstrap: installing Deno $DENO_VERSION ($package)"
  work="$(mktemp -d "$NBP_CACHE/deno-install.XXXXXX")"
  # Only the binary's package: no install scripts run.
  (cd "$work" && npm install --silent --no-audit --no-fund --ignore-scripts --no-save "$package" >/dev/null)
  rm -rf "$NBP_DENO"
  mkdir -p "$NBP_DENO/bin"
  mv "$work/node_modules/@deno/linux-$arch-glibc/deno" "$NBP_DENO/bin/deno"
  chmod 755 "$NBP_DENO/bin/deno"
  rm -rf "$work"
fi

# The kernelspec. Deno's own (`deno jupyter --install`) writes to the user's directory; this one
# is the project's: its cache in the jail's private /tmp (not the user's workspace), no update
# checks, plain text (no ANSI colours in results), and interrupts as messages: Deno's kernel
# ends a running cell on an `interrupt_request` on control, and ignores SIGINT.
spec_dir="$NBP_DENO/share/jupyter/kernels/deno"
mkdir -p "$spec_dir"
cat >"$spec_dir/kernel.json.new" <<JSON
{
  "argv": ["$NBP_DENO/bin/deno", "jupyter", "--kernel", "--conn", "{connection_file}"],
  "display_name": "Deno",
  "language": "typescript",
  "interrupt_mode": "message",
  "env": {
    "DENO_DIR": "/tmp/deno",
    "DENO_NO_UPDATE_CHECK": "1",
    "DENO_NO_PROMPT": "1",
    "NO_COLOR": "1"
  },
  "metadata": {"nbplat": {"transport": "tcp"}}
}
JSON
mv "$spec_dir/kernel.json.new" "$spec_dir/kernel.json"
