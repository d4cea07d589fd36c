#!/usr/bin/env bash
# One line per service (make services-status); non-zero exit when any service is down.
set -euo pipefail
here=$(dirname "${BASH_SOURCE[0]}")
rc=0
for s in postgres redis s3 aws stripe_mock kafka smtp oidc; do
  "$here/$s.sh" status || rc=1
done
exit $rc
