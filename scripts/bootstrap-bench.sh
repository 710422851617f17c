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

# configurable-http-proxy (BSD-3-Clause), JupyterHub's proxy: the anchor of gateway-bench. Pinned,
# installed once per version into its own prefix; gateway-bench runs
# "$NBP_CACHE/chp/<version>/node_modules/.bin/configurable-http-proxy" (or --chp-bin).
chp_version="5.3.0"
chp_dir="$cache/chp/$chp_version"
if [ ! -x "$chp_dir/node_modules/.bin/configurable-http-proxy" ]; then
  echo "bootstrap-bench: installing configurable-http-proxy $chp_version"
  mkdir -p "$chp_dir"
  npm install --prefix "$chp_dir" --silent --no-audit --no-fund --no-save \
    "configurable-http-proxy@$chp_version" </dev/null >/dev/null
fi
