#!/usr/bin/env bash
# Benchmark-only tools (not needed by the tests): marimo, the anchor of graph-bench, in its own
# virtualenv so that its many dependencies never touch the test environment.
set -euo pipefail
cache="${NBP_CACHE:-$HOME/.cache/nbplat}"
venv="$cache/bench-venv"
want="marimo==0.25.2"
if [ "$(cat "$venv/.stamp" 2>/dev/null)" != "$want" ]; then
  echo "bootstrap-bench: installing $want"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$want"
  echo "$want" >"$venv/.stamp"
fi
