#!/usr/bin/env bash
# A/B/A/B of one bench scenario between two builds, each against a fresh copy of its own data
# dir (so writes of one run never reach the next), in one run on one machine: compare the
# ratios, not the absolute numbers of different days.
# Usage: bench/ab.sh SCENARIO BIN_A DATA_A BIN_B DATA_B [bench options…]
#   ROUNDS (default 2), SERVE_FLAGS (extra flags for both servers, e.g. "--cache-size 0"),
#   CLIENT (the sessiond binary that runs the load; default BIN_B), OUT (where the JSON
#   reports go; default bench/results/ab-SCENARIO).
set -euo pipefail
scenario=$1 bin_a=$2 data_a=$3 bin_b=$4 data_b=$5
shift 5
extra=("$@")
rounds=${ROUNDS:-2}
client=${CLIENT:-$bin_b}
out=${OUT:-bench/results/ab-$scenario}
port=${PORT:-4100}
mkdir -p "$out"
work=$(mktemp -d)
server=
trap '[ -n "$server" ] && kill $server 2>/dev/null; rm -rf "$work"' EXIT
run() { # label binary data round
  rm -rf "$work/data" && cp -r "$3" "$work/data"
  # The copy's pages are still dirty: without this, the server's first checkpoint fsync
  # writes the whole copied database back (hundreds of milliseconds of stalled writes).
  sync
  # shellcheck disable=SC2086
  "$2" serve --listen 127.0.0.1:$port --data-dir "$work/data" --log-level warn ${SERVE_FLAGS:-} \
    >/dev/null 2>"$work/server.log" &
  server=$!
  until curl -s "http://127.0.0.1:$port/ready" | grep -q '"status":"ok"'; do
    kill -0 $server 2>/dev/null || { cat "$work/server.log"; exit 1; }
    sleep 0.2
  done
  "$client" bench --target "http://127.0.0.1:$port" --scenario "$scenario" --target-pid $server \
    --json "$out/$1-$4.json" "${extra[@]}" 2>&1 | sed "s/^/[$1 round $4] /" || true
  kill -TERM $server; wait $server 2>/dev/null || true
  server=
}
for round in $(seq "$rounds"); do
  run A "$bin_a" "$data_a" "$round" "$@"
  run B "$bin_b" "$data_b" "$round" "$@"
done
