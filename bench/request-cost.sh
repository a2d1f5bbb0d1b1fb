#!/usr/bin/env bash
# The cost of one request, as a share of the machine's ceiling: a bare hyper server
# (examples/bare_hyper.rs) answering /health, against sessiond's /health and a cached
# GET /v1/sessions/{id}, on a fresh data dir with the default configuration (access log on).
# `kept` is the same bare server doing only what every sessiond response keeps (request id,
# metrics, the access line through sessiond's log writer): the floor under any router.
# Pairs run in turn, A B A B, ROUNDS times (default 2), and each ratio is taken within a round.
# Needs wrk. Usage: bench/request-cost.sh [extra sessiond serve flags…]
# SESSIOND_BIN / BARE_BIN name prebuilt binaries (e.g. an older build, for an A/B); otherwise
# both are built here.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-2}
duration=${DURATION:-4s}
connections=${CONNECTIONS:-32}
sessiond=${SESSIOND_BIN:-target/release/sessiond}
bare_bin=${BARE_BIN:-target/release/examples/bare_hyper}
if [ -z "${SESSIOND_BIN:-}" ] || [ -z "${BARE_BIN:-}" ]; then
  cargo build --release --quiet --bin sessiond --example bare_hyper
fi
work=$(mktemp -d)
log=$work/sessiond.log
trap 'kill $bare $kept $server 2>/dev/null || true; rm -rf "$work"' EXIT
"$bare_bin" 127.0.0.1:4097 >/dev/null &
bare=$!
"$bare_bin" 127.0.0.1:4099 --kept >/dev/null 2>"$work/kept.log" &
kept=$!
"$sessiond" serve --listen 127.0.0.1:4098 --data-dir "$work/data" "$@" >/dev/null 2>"$log" &
server=$!
for _ in $(seq 50); do curl -sf http://127.0.0.1:4098/health >/dev/null && break; sleep 0.1; done
id=$(curl -sf -X POST http://127.0.0.1:4098/v1/sessions -H 'content-type: application/json' \
  -d '{"directory": "/bench", "title": "request cost"}' | sed 's/.*"id":"\([^"]*\)".*/\1/')
curl -sf "http://127.0.0.1:4098/v1/sessions/$id" >/dev/null   # fills the response cache
echo "sessiond idle RSS: $(awk '/VmRSS/ {print $2, $3}' /proc/$server/status)"

rate() { wrk -t1 -c"$connections" -d"$duration" "$1" | awk '/Requests\/sec/ {print $2}'; }
printf '%-6s %12s %12s %12s %12s %8s %8s %8s\n' \
  round bare kept sessiond_h cached_get kept_r health_r cached_r
for round in $(seq "$rounds"); do
  b=$(rate http://127.0.0.1:4097/health)
  k=$(rate http://127.0.0.1:4099/health)
  h=$(rate http://127.0.0.1:4098/health)
  g=$(rate "http://127.0.0.1:4098/v1/sessions/$id")
  b2=$(rate http://127.0.0.1:4097/health)
  # Each figure against the mean of the bare runs around it.
  awk -v r="$round" -v b="$b" -v b2="$b2" -v k="$k" -v h="$h" -v g="$g" 'BEGIN {
    base = (b + b2) / 2;
    printf "%-6s %12.0f %12.0f %12.0f %12.0f %8.2f %8.2f %8.2f\n",
      r, base, k, h, g, k / base, h / base, g / base }'
done
echo "access log: $(wc -c <"$log") bytes"
kill -TERM $server; wait $server || true
