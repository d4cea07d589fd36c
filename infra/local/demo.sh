#!/usr/bin/env bash
# make demo: the whole flow on the local stack. Starts every process (`pinksea up`, logs in
# .demo/up.log), runs `pinksea demo` against them, and stops them again.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PY=${PY:-python3}
pinksea() { "$PY" -m cli "$@"; }

pinksea db migrate
pinksea kafka init
pinksea doctor
pinksea presets sync # system data: the style presets GET /v1/presets lists
mkdir -p .demo
"$PY" -m cli up --api-port "${DEMO_API_PORT:-8000}" >.demo/up.log 2>&1 &
up_pid=$!
stop() {
  kill -TERM "$up_pid" 2>/dev/null || true
  wait "$up_pid" 2>/dev/null || true
}
trap stop EXIT
if ! pinksea demo --api "http://127.0.0.1:${DEMO_API_PORT:-8000}"; then
  echo "--- the demo failed; last lines of .demo/up.log:" >&2
  tail -n 60 .demo/up.log >&2
  exit 1
fi
echo "processes' logs: .demo/up.log (\`pinksea up\` keeps them running for interactive use)"
