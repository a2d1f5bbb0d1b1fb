#!/usr/bin/env bash
# How long the search index takes to build from the database, and that the server answers
# meanwhile: copies DATA_DIR without its index, starts the server on the copy, polls /ready
# until the index is built (reads and /health are checked at every poll; any failure is
# counted) and prints wall time, the server's CPU seconds and its peak anonymous RSS.
# Usage: bench/index-rebuild.sh DATA_DIR [BINARY]
set -euo pipefail
src=${1:?usage: bench/index-rebuild.sh DATA_DIR [BINARY]}
bin=${2:-target/release/sessiond}
port=${PORT:-4099}
work=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/data"
cp "$src/sessiond.db" "$work/data/"
start=$(date +%s.%N)
"$bin" serve --listen 127.0.0.1:$port --data-dir "$work/data" --log-level warn >/dev/null 2>"$work/log" &
server=$!
failures=0 polls=0 peak=0
until curl -sf http://127.0.0.1:$port/health >/dev/null; do sleep 0.05; done
while :; do
  ready=$(curl -s http://127.0.0.1:$port/ready)
  polls=$((polls + 1))
  # Anonymous memory only: the mapped index and database files are page cache, not the heap.
  anon=$(awk '/RssAnon/ {print int($2 / 1024)}' /proc/$server/status)
  [ "$anon" -gt "$peak" ] && peak=$anon
  curl -sf "http://127.0.0.1:$port/v1/sessions?limit=5" >/dev/null || failures=$((failures + 1))
  case $ready in *'"building":false'*) break ;; esac
  sleep 0.2
done
end=$(date +%s.%N)
ticks=$(getconf CLK_TCK)
cpu=$(awk -v t="$ticks" '{print ($14 + $15) / t}' /proc/$server/stat)
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/v1/search?q=error")
awk -v s="$start" -v e="$end" -v c="$cpu" -v m="$peak" -v p="$polls" -v f="$failures" -v q="$code" 'BEGIN {
  printf "index built in %.1f s wall, %.1f s server CPU, peak anonymous RSS %d MB; %d polls, %d failed reads; search after: %s\n",
    e - s, c, m, p, f, q }'
