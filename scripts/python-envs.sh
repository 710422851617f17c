#!/usr/bin/env bash
# Builds the platform's two Python environments (docs/kernel-environment.md), each from its lock
# with every hash checked, and each made anew only when its lock or this script changes:
#
#   $NBP_KERNEL_ENV  scripts/kernel-env/requirements.txt: what kernels import, and the python3
#                    kernelspec (JUPYTER_PATH), whose argv runs this environment's Python;
#   $NBP_TOOLS_ENV   scripts/tools-env/requirements.txt: the tests' and benchmarks' tools
#                    (jupyter_server, nbformat, hadolint), never seen by a kernel.
#
# Wheels come through pip's cache (~/.cache/pip), so a rebuild downloads nothing new.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=env.sh
source "$here/env.sh"

# The interpreter both are made from: CPython 3.11, as the locks are, and never one of the
# environments themselves (env.sh puts the tools' bin first on PATH).
base_python() {
  local python="${PYTHON:-python3.11}"
  command -v "$python" >/dev/null 2>&1 || python=python3
  "$python" -c 'import sys
assert sys.version_info[:2] == (3, 11), f"the locks are for CPython 3.11, not {sys.version}"
print(sys._base_executable)'
}

# make_env DIR LOCK [COMMAND...]: makes DIR anew from LOCK unless its stamp says it is up to
# date; COMMAND runs with the environment's Python before the stamp is written.
make_env() {
  local dir="$1" lock="$2"
  shift 2
  local want
  want="$(cat "$lock" "$here/python-envs.sh" | sha256sum | cut -c1-16)"
  [ "$(cat "$dir/.stamp" 2>/dev/null)" != "$want" ] || return 0
  echo "bootstrap: preparing the Python environment in $dir"
  local python
  python="$(base_python)"
  rm -rf "$dir"
  "$python" -m venv "$dir"
  "$dir/bin/python" -m pip install -q --disable-pip-version-check \
    --require-hashes --no-deps --only-binary=:all: -r "$lock"
  "$dir/bin/python" -m pip check -q >/dev/null
  if (($#)); then "$dir/bin/python" "$@" >/dev/null; fi
  echo "$want" >"$dir/.stamp"
}

make_env "$NBP_KERNEL_ENV" "$here/kernel-env/requirements.txt" \
  -m ipykernel install --sys-prefix --name python3 --display-name "Python 3"
make_env "$NBP_TOOLS_ENV" "$here/tools-env/requirements.txt"
[ -f "$NBP_KERNEL_ENV/share/jupyter/kernels/python3/kernel.json" ] || {
  echo "bootstrap: the python3 kernelspec is missing from $NBP_KERNEL_ENV/share/jupyter" >&2
  exit 1
}
