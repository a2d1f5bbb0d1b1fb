#!/usr/bin/env bash
# OpenAPI conformance: the server against its own /openapi.json, checked by schemathesis
# (property-based: generated valid and invalid requests; every response's status, content type,
# headers and body checked against the document; invalid input must be refused, valid input
# accepted). Runs twice, on the loopback default (auth off) and with `--auth required` and an
# admin key, each server on a random port with a fresh data dir. Exits non-zero on any finding.
#
# Environment: CONFORMANCE_EXAMPLES (cases per operation and phase, default 100),
# CONFORMANCE_SEED (default 1: the same cases every run, so a finding is never a fluke),
# CONFORMANCE_VENV (default target/conformance-venv), SESSIOND_BIN (default: cargo build).
set -euo pipefail
cd "$(dirname "$0")/../.."

SCHEMATHESIS_VERSION=4.32.5
EXAMPLES=${CONFORMANCE_EXAMPLES:-100}
SEED=${CONFORMANCE_SEED:-1}
VENV=${CONFORMANCE_VENV:-$PWD/target/conformance-venv}
ROOT=$PWD
OUT=$ROOT/target/conformance
mkdir -p "$OUT"

if [ "$("$VENV/bin/st" --version 2>/dev/null || true)" != "st, version $SCHEMATHESIS_VERSION" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

if [ -z "${SESSIOND_BIN:-}" ]; then
  cargo build --locked --quiet --bin sessiond
  SESSIOND_BIN=$PWD/target/debug/sessiond
fi

pids=()
dirs=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  for dir in "${dirs[@]}"; do rm -rf "$dir"; done
}
trap cleanup EXIT

# start NAME DATA_DIR ARGS...: serves on a free port; sets $base to its URL. The server's first
# line on stdout names the bound address (as tests/api/helpers.rs Process reads it).
start() {
  local name=$1 data=$2
  shift 2
  local log="$OUT/$name.stdout"
  : >"$log"
  # Webhook URLs the hooks make valid are on loopback; generated cases register many.
  "$SESSIOND_BIN" serve --listen 127.0.0.1:0 --data-dir "$data" --log-level warn \
    --webhook-allowed-networks 127.0.0.0/8 --webhook-max-endpoints 1000000 "$@" \
    >"$log" 2>"$OUT/$name.stderr" &
  pids+=($!)
  local line=""
  for _ in $(seq 1 300); do
    line=$(head -n 1 "$log")
    case "$line" in "sessiond listening on http://"*) break ;; esac
    if ! kill -0 "${pids[-1]}" 2>/dev/null; then
      echo "conformance: the $name server exited:" >&2
      cat "$OUT/$name.stderr" >&2
      exit 1
    fi
    sleep 0.1
  done
  base=${line#sessiond listening on }
  case "$base" in http://*) ;; *)
    echo "conformance: no listening line from the $name server" >&2
    exit 1
    ;;
  esac
}

# The event streams never end, so a whole-body check cannot read them: /v1/events, /v1/ws and
# /v1/stats are covered by tests/api (their parameters and the stats payload's schema).
run() {
  local name=$1 base=$2
  shift 2
  echo "conformance ($name): $base/openapi.json"
  local status=0
  # From inside $OUT, where schemathesis keeps its cache (.schemathesis/).
  (cd "$OUT" && SCHEMATHESIS_HOOKS=hooks PYTHONPATH="$ROOT/tests/conformance" \
    "$VENV/bin/st" run "$base/openapi.json" \
    --checks all \
    --max-examples "$EXAMPLES" \
    --seed "$SEED" \
    --generation-database none \
    --continue-on-failure \
    --request-timeout 10 \
    --workers 2 \
    --exclude-path-regex '^/v1/(events|ws|stats)$' \
    --no-color \
    --report junit --report-junit-path "$OUT/$name.junit.xml" \
    "$@") >"$OUT/$name.txt" 2>&1 || status=$?
  sed -n '/^=* SUMMARY =*$/,$p' "$OUT/$name.txt"
  if [ "$status" -ne 0 ]; then
    cat "$OUT/$name.txt"
    echo "conformance ($name): FAILED (full output above, and in $OUT/$name.txt)" >&2
    return 1
  fi
}

failed=0

open_dir=$(mktemp -d)
dirs+=("$open_dir")
start open "$open_dir"
run open "$base" || failed=1

auth_dir=$(mktemp -d)
dirs+=("$auth_dir")
key=$("$SESSIOND_BIN" keys --data-dir "$auth_dir" create --scope admin --name conformance 2>/dev/null)
start auth "$auth_dir" --auth required
# Revoking keys is left to the open run: here it would revoke the run's own key (the stateful
# phase lists keys and revokes what it finds), and every later request would be a 401.
run auth "$base" -H "Authorization: Bearer $key" --exclude-operation-id revoke_key || failed=1

if [ "$failed" -ne 0 ]; then
  echo "conformance: FAILED" >&2
  exit 1
fi
echo "conformance: both modes conform"
