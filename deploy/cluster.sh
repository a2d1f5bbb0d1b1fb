#!/usr/bin/env bash
# Starts several sessiond instances on loopback against one PostgreSQL database, and nginx in
# front of them; stops them all on SIGINT/SIGTERM or when any of them exits.
#
#   DATABASE_URL=postgres://root@127.0.0.1:5432/sessiond deploy/cluster.sh
#
# Settings (environment): DATABASE_URL (required), SESSIOND_BIN (default: target/release/
# sessiond), INSTANCES (2), LISTEN (nginx's address, 127.0.0.1:8080), and any SESSIOND_*
# setting, which every instance gets. Prints one line per instance ("instance N at URL") and
# then "nginx at URL" once everything answers.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${SESSIOND_BIN:-$here/../target/release/sessiond}"
instances="${INSTANCES:-2}"
listen="${LISTEN:-127.0.0.1:8080}"
: "${DATABASE_URL:?set DATABASE_URL to a postgres:// URL}"
command -v nginx >/dev/null || { echo "nginx is not installed (apt-get install nginx)" >&2; exit 2; }
[ -x "$bin" ] || { echo "no sessiond binary at $bin (cargo build --release)" >&2; exit 2; }

work="$(mktemp -d -t sessiond-cluster.XXXXXX)"
# nginx's workers (user nobody when started as root) must reach their temp directories.
chmod 755 "$work"
pids=()
stop() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap 'stop; exit 130' INT TERM
trap stop EXIT

upstreams=""
for i in $(seq 1 "$instances"); do
  mkdir -p "$work/$i"
  "$bin" serve --listen 127.0.0.1:0 --data-dir "$work/$i" --database "$DATABASE_URL" \
    --trusted-proxies 127.0.0.1 >"$work/$i.out" 2>"$work/$i.log" &
  pids+=("$!")
  for _ in $(seq 1 300); do
    grep -q "listening on" "$work/$i.out" 2>/dev/null && break
    kill -0 "${pids[-1]}" 2>/dev/null || { cat "$work/$i.log" >&2; exit 1; }
    sleep 0.1
  done
  url="$(sed -n 's/^sessiond listening on //p' "$work/$i.out")"
  [ -n "$url" ] || { echo "instance $i did not start" >&2; cat "$work/$i.log" >&2; exit 1; }
  echo "instance $i at $url"
  upstreams+="server ${url#http://} max_fails=0;"$'\n'"        "
done

mkdir -p "$work/nginx"
sed -e "s|@LISTEN@|$listen|" -e "s|@PREFIX@|$work/nginx|g" \
    -e "s|@UPSTREAMS@|${upstreams//$'\n'/\\n}|" \
    "$here/nginx.conf.template" >"$work/nginx/nginx.conf"
nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" &
pids+=("$!")
for _ in $(seq 1 100); do
  curl -fsS "http://$listen/health" >/dev/null 2>&1 && break
  kill -0 "${pids[-1]}" 2>/dev/null || { cat "$work/nginx/error.log" >&2; exit 1; }
  sleep 0.1
done
echo "nginx at http://$listen"
# Until a signal, or until any process exits (then the rest are stopped too).
wait -n "${pids[@]}"
