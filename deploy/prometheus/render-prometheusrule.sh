#!/usr/bin/env bash
# Writes component/prometheusrule.yaml: rules.yaml (the plain rules file promtool checks and
# tests) wrapped in a PrometheusRule for the Prometheus operator. With --check, only compares
# and fails when the committed file is out of date (scripts/test-ops.sh runs that).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$here/component/prometheusrule.yaml"
render() {
  cat <<'HEADER'
# Generated from ../rules.yaml by ../render-prometheusrule.sh: edit rules.yaml, then run it.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: nbplat
  labels:
    app.kubernetes.io/name: nbplat
    app.kubernetes.io/component: monitoring
spec:
HEADER
  # The rules file's own comments stay; its body is indented under spec.
  sed -e 's/^\(.\)/  \1/' "$here/rules.yaml"
}
if [ "${1:-}" = "--check" ]; then
  if ! diff -u "$out" <(render) >/dev/null; then
    echo "render-prometheusrule: $out is out of date; run deploy/prometheus/render-prometheusrule.sh" >&2
    exit 1
  fi
  exit 0
fi
render >"$out"
echo "wrote $out"
