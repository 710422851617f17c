# Sourced by the other scripts: where the cached tools live.
export NBP_CACHE="${NBP_CACHE:-$HOME/.cache/nbplat}"
# The kernel's Python environment (scripts/kernel-env): what user code imports, and the python3
# kernelspec that runs it. Reached through JUPYTER_PATH only, never PATH.
export NBP_KERNEL_ENV="$NBP_CACHE/kernel-env"
# The platform's tools (scripts/tools-env): jupyter_server, nbformat, hadolint; tests and
# benchmarks only. Its bin is on PATH, so `python3` here is the tools' Python.
export NBP_TOOLS_ENV="$NBP_CACHE/tools-env"
# Deno's Jupyter kernel (scripts/deno.sh): its binary and the deno kernelspec.
export DENO_VERSION="${DENO_VERSION:-2.9.6}"
export NBP_DENO="$NBP_CACHE/deno-$DENO_VERSION"
export JUPYTER_PATH="$NBP_KERNEL_ENV/share/jupyter:$NBP_DENO/share/jupyter"
export NBP_CORPUS="$NBP_CACHE/corpus/notebooks"
export NODE_PATH="$NBP_CACHE/node/node_modules"
export PATH="$NBP_CACHE/bin:$NBP_TOOLS_ENV/bin:$PATH"
