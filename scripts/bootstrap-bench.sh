#!/usr/bin/env bash
# Benchmark-only tools (not needed by the tests): marimo, the anchor of graph-bench, and
# papermill, each in its own virtualenv so that their many dependencies never touch the test
# environment.
set -euo pipefail
cache="${NBP_CACHE:-$HOME/.cache/nbplat}"
# Installs pip requirement $2 into its own virtualenv $cache/$1 once (a stamp says which).
venv_install() {
  local venv="$cache/$1" want="$2"
  if [ "$(cat "$venv/.stamp" 2>/dev/null)" != "$want" ]; then
    echo "bootstrap-bench: installing $want"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$want"
    echo "$want" >"$venv/.stamp"
  fi
}
venv_install bench-venv "marimo==0.25.2"
# papermill (BSD-3-Clause), the anchor of jobs-bench's notebook runs. It runs the kernel the
# tests use (the python3 kernelspec of $JUPYTER_PATH), so both sides run the same ipykernel.
venv_install papermill-venv "papermill==2.7.0"

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
