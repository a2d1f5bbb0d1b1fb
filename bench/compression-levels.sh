#!/usr/bin/env bash
# Measures each compression algorithm at several levels on real list responses:
# response size and throughput of GET /v1/sessions?directory=…&limit=50 under wrk.
# Usage: bench/compression-levels.sh DATA_DIR [LEVELS...]   (DATA_DIR from `sessiond seed`)
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:?data dir}; shift
levels=${*:-1 3 6 9}
bin=target/release/sessiond
port=4199
dirs=$(python3 -c "
import sqlite3,sys
c=sqlite3.connect('file:$data/sessiond.db?mode=ro', uri=True)
print(' '.join(r[0] for r in c.execute(
  \"select directory from sessions where directory not like '/bench/%' group by directory order by count(*) desc\")))")
first=${dirs%% *}
printf '%-6s %-9s %10s %10s %12s %10s\n' level encoding bytes ratio "req/s" "p99"
for level in $levels; do
  $bin serve --listen 127.0.0.1:$port --data-dir "$data" --log-level warn --compression-level "$level" &
  pid=$!
  sleep 1
  url="http://127.0.0.1:$port/v1/sessions?directory=$first&limit=50"
  plain=$(curl -s "$url" | wc -c)
  for enc in identity zstd br gzip; do
    size=$(curl -s -H "Accept-Encoding: $enc" "$url" | wc -c)
    out=$(DIRECTORIES="$dirs" wrk -t1 -c16 -d8s --latency -H "Accept-Encoding: $enc" \
      -s bench/wrk/list.lua "http://127.0.0.1:$port")
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    p99=$(echo "$out" | awk '$1=="99%" {print $2}')
    printf '%-6s %-9s %10s %10.2f %12s %10s\n' "$level" "$enc" "$size" "$(echo "$plain/$size" | bc -l)" "$rps" "$p99"
  done
  kill -TERM $pid; wait $pid || true
done
