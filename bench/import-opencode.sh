#!/bin/sh
# One `import opencode` into a fresh data dir, for farm-bench to time as a whole process:
#   farm-bench -n 5 --timeout 900 --vs "bench/import-opencode.sh A_BINARY /tmp/d2" -- \
#     bench/import-opencode.sh B_BINARY /tmp/d1
# Usage: bench/import-opencode.sh BINARY DATA_DIR [SOURCE]
#   SOURCE defaults to /tmp/oc-db2/opencode.db
#   (bench/opencode-installation.py --out /tmp/oc-db2 --form db --sessions 10000 --messages 20).
set -eu
bin=${1:?usage: bench/import-opencode.sh BINARY DATA_DIR [SOURCE]}
dir=${2:?usage: bench/import-opencode.sh BINARY DATA_DIR [SOURCE]}
rm -rf "$dir"
exec "$bin" import opencode "${3:-/tmp/oc-db2/opencode.db}" --data-dir "$dir"
