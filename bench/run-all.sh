#!/usr/bin/env bash
# Runs every `sessiond bench` scenario against a local server on a freshly seeded database
# (100k sessions, 1M messages unless SEED is set) and writes JSON and HTML reports to
# bench/results/. Each scenario gets a fresh copy of the seeded data, so they do not affect
# each other. Usage: bench/run-all.sh [scenario ...]   (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/sessiond
out=bench/results
work=${WORK:-/tmp/sessiond-bench}
sessions=${SESSIONS:-100000}
scenarios=${*:-health message_burst chat_list list_sessions search mixed ramp soak fanout}
mkdir -p "$out" "$work"
cargo build --release --quiet
if [ ! -f "$work/pristine/sessiond.db" ]; then
  rm -rf "$work/pristine"
  $bin seed --data-dir "$work/pristine" --sessions "$sessions" --messages-per-session 10
fi
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
for scenario in $scenarios; do
  rm -rf "$work/data" && cp -r "$work/pristine" "$work/data"
  server=()
  [ "$scenario" = fanout ] && server=(--max-connections $(( ${SUBSCRIBERS:-1000} + 1000 )))
  $bin serve --listen 127.0.0.1:4096 --data-dir "$work/data" --log-level warn "${server[@]}" &
  pid=$!
  sleep 1
  extra=()
  case $scenario in
    soak) extra=(--duration "${SOAK:-10m}") ;;
    fanout) extra=(--subscribers "${SUBSCRIBERS:-1000}") ;;
  esac
  echo "== $scenario"
  $bin bench --target http://127.0.0.1:4096 --scenario "$scenario" --target-pid $pid \
    --json "$out/$scenario.json" --html "$out/$scenario.html" "${extra[@]}" || true
  kill -TERM $pid; wait $pid || true
done
