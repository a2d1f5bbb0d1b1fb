#!/usr/bin/env bash
# Instructions the server executes per request (user space, all threads), counted by
# valgrind's callgrind: the same binary and requests give the same count within about 1%
# whatever else the machine is doing, so two builds compare without A/B rounds. Kernel time
# (the socket calls, scheduling) is not counted. Needs valgrind and python3.
# Usage: bench/instructions-per-request.sh BINARY [health|get] [REQUESTS]
#   BINARY: a sessiond binary, or bare_hyper (examples/bare_hyper.rs, /health only; with
#   KEPT=1 it runs as `bare_hyper --kept`, doing only what every sessiond response keeps)
#   KEEP=1 keeps callgrind's output for callgrind_annotate and prints its directory.
set -euo pipefail
bin=${1:?usage: bench/instructions-per-request.sh BINARY [health|get] [REQUESTS]}
kind=${2:-health}
requests=${3:-5000}
port=${PORT:-4120}
work=$(mktemp -d)
server=
trap '[ -n "$server" ] && kill $server 2>/dev/null; [ -z "${KEEP:-}" ] && rm -rf "$work"' EXIT
case $bin in
  *bare_hyper*) args=(127.0.0.1:$port ${KEPT:+--kept}) ;;
  *) args=(serve --listen 127.0.0.1:$port --data-dir "$work/data") ;;
esac
valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out" --instr-atstart=no \
  "$bin" "${args[@]}" >/dev/null 2>"$work/log" &
server=$!
until curl -sf "http://127.0.0.1:$port/health" >/dev/null; do sleep 0.3; done
path=/health
if [ "$kind" = get ]; then
  id=$(curl -sf -X POST "http://127.0.0.1:$port/v1/sessions" -H 'content-type: application/json' \
    -d '{"directory": "/bench", "title": "request cost"}' | sed 's/.*"id":"\([^"]*\)".*/\1/')
  path=/v1/sessions/$id
fi
# Requests on 8 keep-alive connections, each waiting for its response (as wrk does).
load() {
  python3 - "$port" "$path" "$1" <<'PY'
import socket, sys, threading
port, path, total = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
def client(count):
    conn = socket.create_connection(("127.0.0.1", port))
    pending = b""
    for _ in range(count):
        conn.sendall(request)
        while True:
            end = pending.find(b"\r\n\r\n")
            if end >= 0:
                length = 0
                for line in pending[:end].decode().split("\r\n"):
                    if line.lower().startswith("content-length:"):
                        length = int(line.split(":")[1])
                if len(pending) >= end + 4 + length:
                    pending = pending[end + 4 + length:]
                    break
            data = conn.recv(65536)
            if not data:
                sys.exit("connection closed")
            pending += data
    conn.close()
threads = [threading.Thread(target=client, args=(total // 8,)) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
PY
}
load 2000   # warm-up: caches filled, connections and buffers made
callgrind_control -i on $server >/dev/null 2>&1
load "$requests"
callgrind_control -i off $server >/dev/null 2>&1
callgrind_control -d $server >/dev/null 2>&1
kill $server; wait $server 2>/dev/null || true
server=
total=$(for f in "$work"/callgrind.out*; do
  callgrind_annotate "$f" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}'
done | awk '{s += $1} END {print s}')
echo "$bin $kind: $((total / requests)) instructions per request ($requests requests)"
[ -n "${KEEP:-}" ] && echo "callgrind output: $work"
true
