#!/usr/bin/env bash
# S3-compatible object storage for the local stack: moto's standalone server, as its own process
# on 127.0.0.1:$S3_PORT (never an in-process mock).
#
# Why moto rather than MinIO: MinIO is AGPL-3.0 and building it from the Go module proxy is a
# very long build on a 2-core machine; moto[server] is Apache-2.0, already in the dev extra, and
# speaks the S3 REST API that boto3 uses (buckets, objects, multipart, presigned URLs). It keeps
# objects in memory only: a restart empties every bucket, which is fine for a local stack.
#
# Python: $PINKSEA_PYTHON, else the repo's .venv, else python3, whichever can import moto's
# server; if none can, a private venv in the stack dir gets moto[server] from PyPI.
#
# Env: S3_PORT (9000), PINKSEA_PYTHON, PINKSEA_STACK_DIR.
SERVICE=s3
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

S3_PORT=${S3_PORT:-9000}
S3_VENV=$STACK_DIR/s3/venv

# The real readiness check: an S3 ListBuckets answered over HTTP.
s3_answers() {
  curl -sf --max-time 3 "http://$HOST:$S3_PORT/" 2>/dev/null | grep -q ListAllMyBucketsResult
}

start() {
  command -v curl >/dev/null || apt_install curl
  if s3_answers; then
    say "already running on $HOST:$S3_PORT"
    return
  fi
  if ! live_pid s3 moto.server >/dev/null; then
    port_open "$S3_PORT" && die "port $S3_PORT is taken by something that is not an S3 server; set S3_PORT"
    ensure_python_with moto.server "$S3_VENV" 'moto[server]>=5'
    say "starting moto server on $HOST:$S3_PORT ($PY)"
    spawn s3 "$PY" -m moto.server -H "$HOST" -p "$S3_PORT"
  fi
  wait_ready s3 moto.server s3_answers
  say "ready on $HOST:$S3_PORT"
}

stop() {
  stop_pid s3 moto.server 10
}

status() {
  if s3_answers; then
    echo "s3        up    $HOST:$S3_PORT  moto (in-memory)"
  else
    echo "s3        down  $HOST:$S3_PORT"
    return 1
  fi
}

main start stop status "$@"
