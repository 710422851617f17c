#!/usr/bin/env bash
# Runs a command with a test Kubernetes control plane (scripts/kube-cluster.sh) started for it
# in a run directory of its own, and stops the cluster afterwards whatever happens.
#
#   scripts/with-kube-cluster.sh COMMAND [ARGS...]
#
# The command sees NBP_KUBECONFIG (admin kubeconfig), NBP_KUBE_RUN (the run directory: its
# logs/audit.log records every request made with a service-account identity), NBP_KUBE_CLUSTER
# (this script's cluster tool, for `--run-dir "$NBP_KUBE_RUN" create-nodes ...`) and
# NBP_KUBECTL. The kernel pod policy of deploy/base is installed, as in a real installation.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cluster="$here/kube-cluster.sh"
[ $# -gt 0 ] || { echo "usage: $0 COMMAND [ARGS...]" >&2; exit 2; }

"$cluster" build
run="$(mktemp -d -t nbplat-kube.XXXXXX)"
cleanup() {
  local rc=$?
  if [ "$rc" != 0 ] && [ -d "$run/logs" ]; then
    "$cluster" --run-dir "$run" stop >/dev/null 2>&1 || true
    echo "with-kube-cluster: control plane logs are in $run/logs (kept)" >&2
  else
    "$cluster" --run-dir "$run" clean >/dev/null 2>&1 || true
  fi
  exit "$rc"
}
trap cleanup EXIT
"$cluster" --run-dir "$run" start >/dev/null
export NBP_KUBE_RUN="$run"
export NBP_KUBECONFIG="$run/kubeconfig"
export NBP_KUBE_CLUSTER="$cluster"
NBP_KUBECTL="$("$cluster" --run-dir "$run" env | sed -n 's/^export PATH=\(.*\):\$PATH$/\1/p')/kubectl"
[ -x "$NBP_KUBECTL" ] || { echo "with-kube-cluster: no kubectl at $NBP_KUBECTL" >&2; exit 1; }
export NBP_KUBECTL
"$NBP_KUBECTL" --kubeconfig "$NBP_KUBECONFIG" apply --server-side --field-manager=nbplat-tests \
  -f "$repo/deploy/base/kernel-pod-policy.yaml" >/dev/null
"$@"
