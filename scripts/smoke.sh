#!/usr/bin/env bash
# Start the gateway on the example policy with the mock upstream, make a few calls as an agent
# would, show the answers (200s, then a 429 with its headers), and stop it.
set -euo pipefail
BIN="${1:-.venv/bin}"
PORT="${SMOKE_PORT:-18080}"
ADMIN="${SMOKE_ADMIN_PORT:-18081}"
"$BIN/sluicegate" serve --policy examples/agentic.yaml --mock-upstream \
  --listen "127.0.0.1:$PORT" --admin "127.0.0.1:$ADMIN" >/tmp/sluicegate-smoke.log 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -sf -o /dev/null "http://127.0.0.1:$ADMIN/healthz" && break
  sleep 0.1
done
body='{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hello"}],"max_tokens":16}'
call() {
  curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/v1/chat/completions" \
    -H 'Authorization: Bearer sg-demo-acme-planner' -H 'X-Agent-Session: smoke' \
    -H 'X-Agent-Workload-Class: realtime' -H 'Content-Type: application/json' -d "$body"
}
codes=""
for _ in $(seq 22); do codes="$codes $(call)"; done
echo "22 realtime calls from one session (session burst 20):$codes"
echo "--- the next one, in full:"
curl -s -i "http://127.0.0.1:$PORT/v1/chat/completions" \
  -H 'Authorization: Bearer sg-demo-acme-planner' -H 'X-Agent-Session: smoke' \
  -H 'X-Agent-Workload-Class: realtime' -H 'Content-Type: application/json' -d "$body"
echo
echo "--- without a key:"
curl -s -i "http://127.0.0.1:$PORT/v1/chat/completions" -H 'Content-Type: application/json' \
  -d "$body" | head -1
