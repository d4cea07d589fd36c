#!/usr/bin/env bash
# The local AWS besides S3: moto's standalone server, as its own process on 127.0.0.1:$AWS_PORT
# (never an in-process mock), for the AWS services that have no local server of their own here:
# Cognito (tests/e2e/test_smoke_script.py's user pool), and, in the rehearsal, CloudWatch and
# SES. S3 is not served from here: infra/local/s3.sh runs SeaweedFS, which persists objects and
# checks signatures (moto accepts any signature and keeps everything in memory).
#
# moto is Apache-2.0 and in the dev extra. It keeps its state in memory: a restart forgets every
# user pool and identity, which is fine for what it stands in for.
#
# Python: $PINKSEA_PYTHON, else the repo's .venv, else python3, whichever can import moto's
# server; if none can, a private venv in the stack dir gets moto[server] from PyPI.
#
# Env: AWS_PORT (9100), PINKSEA_PYTHON, PINKSEA_STACK_DIR.
SERVICE=aws
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

AWS_PORT=${AWS_PORT:-9100}
AWS_VENV=$STACK_DIR/aws/venv

# The real readiness check: an AWS API answers (STS GetCallerIdentity, which needs no state).
# Not moto's state dump (/moto-api/data.json): it raises once the tests have left an
# autoscaling group with a launch template in moto's memory (a moto bug), so a server that
# works would never be seen as ready again.
aws_answers() {
  curl -sf --max-time 3 -X POST "http://$HOST:$AWS_PORT/" \
    -H 'Content-Type: application/x-www-form-urlencoded' \
    -H 'Authorization: AWS4-HMAC-SHA256 Credential=local/20260101/us-east-1/sts/aws4_request, SignedHeaders=host, Signature=local' \
    -d 'Action=GetCallerIdentity&Version=2011-06-15' 2>/dev/null | grep -q '<GetCallerIdentityResponse'
}

start() {
  command -v curl >/dev/null || apt_install curl
  if aws_answers; then
    say "already running on $HOST:$AWS_PORT"
    return
  fi
  if ! live_pid aws moto.server >/dev/null; then
    port_open "$AWS_PORT" && die "port $AWS_PORT is taken by something that is not moto's server; set AWS_PORT"
    ensure_python_with moto.server "$AWS_VENV" 'moto[server]>=5'
    say "starting moto server on $HOST:$AWS_PORT ($PY)"
    spawn aws "$PY" -m moto.server -H "$HOST" -p "$AWS_PORT"
  fi
  wait_ready aws moto.server aws_answers
  say "ready on $HOST:$AWS_PORT"
}

stop() {
  stop_pid aws moto.server 10
}

status() {
  if aws_answers; then
    echo "aws       up    $HOST:$AWS_PORT  moto (Cognito, CloudWatch, SES; in-memory)"
  else
    echo "aws       down  $HOST:$AWS_PORT"
    return 1
  fi
}

main start stop status "$@"
