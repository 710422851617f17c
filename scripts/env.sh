# Sourced by the other scripts: where the cached tools live.
export NBP_CACHE="${NBP_CACHE:-$HOME/.cache/nbplat}"
export NBP_VENV="$NBP_CACHE/venv"
export JUPYTER_PATH="$NBP_VENV/share/jupyter"
export NBP_CORPUS="$NBP_CACHE/corpus/notebooks"
export NODE_PATH="$NBP_CACHE/node/node_modules"
export PATH="$NBP_CACHE/bin:$NBP_VENV/bin:$PATH"
