#!/usr/bin/env bash
# Stop the whole local stack (make services-down), in reverse start order.
set -euo pipefail
here=$(dirname "${BASH_SOURCE[0]}")
rc=0
for s in oidc smtp kafka stripe_mock aws s3 redis postgres; do
  "$here/$s.sh" stop || rc=1
done
exit $rc
