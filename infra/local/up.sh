#!/usr/bin/env bash
# Start the whole local stack (make services). Each service script is idempotent: what already
# answers is left alone, so a second run is a quick no-op. Every service is attempted even when
# one fails; the exit status is non-zero if any failed (each failure printed its log tail).
set -euo pipefail
here=$(dirname "${BASH_SOURCE[0]}")
SERVICES=(postgres redis s3 aws stripe_mock kafka smtp oidc)
start=$SECONDS
failed=()
for s in "${SERVICES[@]}"; do
  "$here/$s.sh" start || failed+=("$s")
done
if ((${#failed[@]})); then
  echo "local stack: FAILED to start: ${failed[*]} (logs in ${PINKSEA_STACK_DIR:-$HOME/.pinksea-stack}/log)" >&2
  exit 1
fi
echo "local stack up in $((SECONDS - start))s (stack dir ${PINKSEA_STACK_DIR:-$HOME/.pinksea-stack})" >&2
