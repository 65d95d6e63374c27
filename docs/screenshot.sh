#!/usr/bin/env bash
# Screenshot of the `consolidate` deployment page, as served by `hydracat serve`, in headless Chromium.
# Usage: docs/screenshot.sh [out.png]   (needs Debian's chromium; starts and stops its own serve)
set -euo pipefail
out=${1:-docs/prefect-deployment.png}
work=$(mktemp -d)
port=4311
export PREFECT_HOME=$work/prefect HYDRACAT_DATABASE_URL=sqlite:///$work/registry.db
export HYDRACAT_STORE_PATH=$work/objects HYDRACAT_WORK_DIR=$work/work DO_NOT_TRACK=1
.venv/bin/hydracat serve --port $port > "$work/serve.log" 2>&1 &
serve=$!
trap 'kill $serve; wait $serve || true; rm -rf "$work"' EXIT
api=http://127.0.0.1:$port/api
for _ in $(seq 240); do
  id=$(curl -sf -X POST "$api/deployments/filter" -H 'content-type: application/json' \
       -d '{"deployments": {"name": {"any_": ["consolidate"]}}}' | .venv/bin/python -c \
       'import json,sys; d=json.load(sys.stdin); print(d[0]["id"] if d else "")' 2>/dev/null || true)
  [ -n "$id" ] && break
  sleep 1
done
[ -n "$id" ] || { echo "no consolidate deployment; see $work/serve.log" >&2; exit 1; }
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$work/chromium" --hide-scrollbars --window-size=1440,1000 \
  --virtual-time-budget=15000 --screenshot="$out" \
  "http://127.0.0.1:$port/deployments/deployment/$id?tab=Parameters"
echo "wrote $out"
