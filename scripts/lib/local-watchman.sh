# Sourced by scripts/test-ops.sh and scripts/test-web.sh: a Watchman with the local backend (real
# Middleman and ipykernel processes) on free ports of 127.0.0.1, in a temporary directory, with
# one small plan, and with `local_watchman_gateway=1` a gateway in front of it as `make run` has
# (docs/gateway.md): the landing page, the web client, every document and the Jupyter Server API
# (`/jupyter/`, docs/jupyter.md) on the gateway's one port. On exit, the gateway, Watchman and
# every pod process of the run are stopped, their logs are shown if the run failed, the directory
# is removed and the verdict printed.
#
#   start_local_watchman NAME BUILD PLAN MAX_OUTPUT_BYTES [WATCHMAN FLAGS...]
#
# NAME prefixes messages (test-ops); BUILD 0 skips the cargo build (the debug binaries must
# exist). Reads `began` and `tmp` (a directory is made when empty), and, if set,
# `run_marker_vars` (names of more environment variables that, set to `$pool`, mark this run's
# processes), `passed_note` and `local_watchman_gateway`.
# Sets `tmp`, `pool`, `grpc`, `http` (Watchman's) and `watchman_pid`; with the gateway, also
# `public` (its address), `gateway_metrics` (its metrics address) and `gateway_pid`.

# Stops a process: SIGTERM, then SIGKILL if it is still there after 15 s.
local_watchman_stop() {
  local pid="$1"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}

local_watchman_cleanup() {
  local status=$?
  # The gateway first: it drains (closes its clients with 1012) while the pods are still there.
  local_watchman_stop "${gateway_pid:-}"
  local_watchman_stop "${watchman_pid:-}"
  # Process groups led by a process carrying this run's marker: pods Watchman did not stop (it
  # crashed, or was killed), and whatever else the run marked.
  local envfile pid marks=(-e "WATCHMAN_POOL=$pool")
  for m in ${run_marker_vars:-}; do marks+=(-e "$m=$pool"); done
  for envfile in /proc/[0-9]*/environ; do
    pid="${envfile#/proc/}"
    pid="${pid%/environ}"
    if { tr '\0' '\n' <"$envfile"; } 2>/dev/null | grep -qx "${marks[@]}" &&
      [ "$(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ')" = "$pid" ]; then
      kill -KILL -- "-$pid" 2>/dev/null || true
    fi
  done
  if [ "$status" -ne 0 ] && [ -f "$tmp/watchman.log" ]; then
    echo "$local_watchman_name: Watchman's log (last lines):" >&2
    tail -n 30 "$tmp/watchman.log" >&2
  fi
  if [ "$status" -ne 0 ] && [ -f "$tmp/gateway.log" ]; then
    echo "$local_watchman_name: the gateway's log (last lines):" >&2
    tail -n 30 "$tmp/gateway.log" >&2
  fi
  rm -rf "$tmp"
  if [ "$status" -eq 0 ]; then
    echo "$local_watchman_name: passed in $((SECONDS - began)) s${passed_note:+ ($passed_note)}"
  else
    echo "$local_watchman_name: FAILED (exit $status)" >&2
  fi
  exit "$status"
}

start_local_watchman() {
  local_watchman_name="$1"
  local build="$2" plan="$3" max_output="$4" b bins=(watchman middleman) gateway_flags=()
  shift 4
  if [ "${local_watchman_gateway:-0}" = 1 ]; then bins+=(gateway); fi
  if [ "$build" != 0 ]; then
    cargo build -q "${bins[@]/#/--package=}"
  fi
  for b in "${bins[@]}"; do
    [ -x "target/debug/$b" ] || { echo "$local_watchman_name: target/debug/$b is missing: cargo build -p $b" >&2; exit 1; }
  done
  tmp="${tmp:-$(mktemp -d "${TMPDIR:-/tmp}/nbplat-$local_watchman_name.XXXXXX")}"
  # Copies: a rebuild during the run must not swap the binaries under the pods.
  mkdir -p "$tmp/bin"
  for b in "${bins[@]}"; do cp "target/debug/$b" "$tmp/bin/"; done
  pool="$local_watchman_name-$$-$RANDOM"
  watchman_pid=""
  gateway_pid=""
  trap local_watchman_cleanup EXIT
  trap 'exit 130' INT TERM

  "$tmp/bin/middleman" keygen --out-dir "$tmp/keys" >/dev/null
  (umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$tmp/keys/api-token")
  if [ "${local_watchman_gateway:-0}" = 1 ]; then
    # Watchman must know the gateway's address before either starts (its pages and Allocate
    # answers name it), so the gateway's port is picked here rather than by the gateway.
    (umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$tmp/keys/route-token")
    public="127.0.0.1:$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    gateway_flags=(--route-token-file "$tmp/keys/route-token" --public-url "http://$public")
  fi
  cat >"$tmp/plans.toml" <<PLANS
# $local_watchman_name: a small pool, and an output cap that a test passes on purpose.
[plans.$plan]
kernel = "python3"
warm = { ratio = 0.5, min = 2, max = 3 }
idle_timeout = "30m"
max_lifetime = "1h"

[plans.$plan.limits]
execution_timeout = "60s"
max_output_bytes = $max_output
memory_mib = 2048
max_processes = 128
max_open_files = 1024
PLANS
  "$tmp/bin/watchman" \
    --plans "$tmp/plans.toml" \
    --signing-key "$tmp/keys/signing.pem" \
    --api-token-file "$tmp/keys/api-token" \
    --grpc-listen 127.0.0.1:0 \
    --http-listen 127.0.0.1:0 \
    --local-root "$tmp/pods" \
    --pool-id "$pool" \
    --delete-pods-on-exit \
    --shutdown-grace 2s \
    --log-format json \
    "${gateway_flags[@]}" \
    "$@" \
    </dev/null >"$tmp/watchman.log" 2>&1 &
  watchman_pid=$!

  # A field of the first JSON log line that has it: FIELD [LOG] (Watchman's log by default).
  local_watchman_field() { grep -o "\"$1\":\"[^\"]*\"" "${2:-$tmp/watchman.log}" | head -1 | cut -d'"' -f4; }
  for _ in $(seq 1 100); do
    [ -n "$(local_watchman_field http_addr)" ] && break
    kill -0 "$watchman_pid" 2>/dev/null || { echo "$local_watchman_name: Watchman exited" >&2; exit 1; }
    sleep 0.1
  done
  grpc="$(local_watchman_field grpc_addr)"
  http="$(local_watchman_field http_addr)"
  [ -n "$grpc" ] && [ -n "$http" ] || { echo "$local_watchman_name: Watchman did not report its addresses" >&2; exit 1; }

  if [ "${local_watchman_gateway:-0}" = 1 ]; then
    "$tmp/bin/gateway" \
      --listen "$public" \
      --metrics-listen 127.0.0.1:0 \
      --public-key "$tmp/keys/public.pem" \
      --watchman "http://$grpc" \
      --watchman-token-file "$tmp/keys/route-token" \
      --landing "http://$http" \
      --jupyter-api "http://$http" \
      --drain-grace 2s \
      --log-format json \
      </dev/null >"$tmp/gateway.log" 2>&1 &
    gateway_pid=$!
    for _ in $(seq 1 100); do
      grep -q '"listening on http://' "$tmp/gateway.log" && break
      kill -0 "$gateway_pid" 2>/dev/null || { echo "$local_watchman_name: the gateway exited" >&2; exit 1; }
      sleep 0.1
    done
    grep -q "\"listening on http://$public\"" "$tmp/gateway.log" || { echo "$local_watchman_name: the gateway is not listening on $public" >&2; exit 1; }
    gateway_metrics="$(local_watchman_field metrics_addr "$tmp/gateway.log")"
  fi

  local warm=0
  for _ in $(seq 1 600); do
    warm="$(curl -sf "http://$http/metrics" | sed -n "s/^watchman_pool_pods{plan=\"$plan\",state=\"warm\"} \([0-9]*\).*/\1/p")"
    [ "${warm:-0}" -ge 1 ] && break
    sleep 0.2
  done
  [ "${warm:-0}" -ge 1 ] || { echo "$local_watchman_name: no warm pod after 120 s" >&2; exit 1; }
  echo "Watchman: gRPC $grpc, HTTP http://$http/ ($warm warm)"
  if [ -n "$gateway_pid" ]; then echo "Gateway: http://$public/"; fi
}
