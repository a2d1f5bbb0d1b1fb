#!/usr/bin/env bash
# CPU time the server spends per request (user + system, from /proc), which the load of other
# tenants on a shared machine disturbs far less than requests per second: bare hyper's /health
# against sessiond's /health and a cached GET /v1/sessions/{id}, default configuration, access
# log on. Pairs run in turn ROUNDS times. Needs wrk.
# Usage: bench/cpu-per-request.sh SESSIOND_BIN [SESSIOND_BIN_B] (BARE_BIN: the baseline binary)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-3}
duration=${DURATION:-4s}
bare_bin=${BARE_BIN:-target/release/examples/bare_hyper}
bins=("$@")
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT
ticks=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
measure() { # pid url -> "req/s cpu_us_per_request"
  local before after out
  before=$(cpu "$1")
  out=$(wrk -t1 -c32 -d"$duration" "$2")
  after=$(cpu "$1")
  awk -v b="$before" -v a="$after" -v t="$ticks" -v out="$out" 'BEGIN {
    n = split(out, lines, "\n"); reqs = 0; rate = 0
    for (i = 1; i <= n; i++) {
      if (lines[i] ~ /requests in/) { split(lines[i], f, " "); reqs = f[1] }
      if (lines[i] ~ /Requests\/sec/) { split(lines[i], f, " "); rate = f[2] }
    }
    printf "%8.0f req/s %7.1f us/req", rate, (a - b) / t * 1e6 / reqs }'
}
"$bare_bin" 127.0.0.1:4097 >/dev/null &
bare=$!
pids+=($bare)
port=4110
urls=()
for bin in "${bins[@]}"; do
  "$bin" serve --listen 127.0.0.1:$port --data-dir "$work/data-$port" >/dev/null 2>"$work/log-$port" &
  pids+=($!)
  until curl -sf "http://127.0.0.1:$port/health" >/dev/null; do sleep 0.1; done
  id=$(curl -sf -X POST "http://127.0.0.1:$port/v1/sessions" -H 'content-type: application/json' \
    -d '{"directory": "/bench", "title": "request cost"}' | sed 's/.*"id":"\([^"]*\)".*/\1/')
  curl -sf "http://127.0.0.1:$port/v1/sessions/$id" >/dev/null
  urls+=("$port $id")
  echo "$bin on :$port idle RSS $(awk '/VmRSS/ {print $2, $3}' /proc/$!/status)"
  port=$((port + 1))
done
for round in $(seq "$rounds"); do
  echo "round $round: bare /health $(measure $bare http://127.0.0.1:4097/health)"
  i=1
  for entry in "${urls[@]}"; do
    set -- $entry
    pid=${pids[$i]}
    echo "round $round: ${bins[$((i - 1))]} /health $(measure "$pid" "http://127.0.0.1:$1/health")"
    echo "round $round: ${bins[$((i - 1))]} cached GET $(measure "$pid" "http://127.0.0.1:$1/v1/sessions/$2")"
    i=$((i + 1))
  done
done
for entry in "${urls[@]}"; do set -- $entry; echo "access log :$1 $(wc -c <"$work/log-$1") bytes"; done
