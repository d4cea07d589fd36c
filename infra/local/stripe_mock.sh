#!/usr/bin/env bash
# stripe-mock (Stripe's official API mock, Go module github.com/stripe/stripe-mock) for the local
# stack: HTTP on 127.0.0.1:$STRIPE_MOCK_PORT, HTTPS on 127.0.0.1:$STRIPE_MOCK_HTTPS_PORT.
# Built once with `go install` at a pinned version into the stack dir.
#
# Env: STRIPE_MOCK_PORT (12111), STRIPE_MOCK_HTTPS_PORT (12112), STRIPE_MOCK_VERSION,
# PINKSEA_STACK_DIR.
SERVICE=stripe-mock
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

STRIPE_MOCK_VERSION=${STRIPE_MOCK_VERSION:-v0.203.0}
STRIPE_MOCK_PORT=${STRIPE_MOCK_PORT:-12111}
STRIPE_MOCK_HTTPS_PORT=${STRIPE_MOCK_HTTPS_PORT:-12112}
# Versioned path: changing STRIPE_MOCK_VERSION builds the new one beside the old.
STRIPE_MOCK_BIN=$STACK_DIR/bin/stripe-mock-$STRIPE_MOCK_VERSION

ensure_binary() {
  [ -x "$STRIPE_MOCK_BIN" ] && return
  if ! command -v go >/dev/null; then
    if [ -x /usr/local/go/bin/go ]; then
      PATH=$PATH:/usr/local/go/bin
    else
      apt_install golang-go
    fi
  fi
  say "building github.com/stripe/stripe-mock@$STRIPE_MOCK_VERSION (go install)"
  local tmp
  tmp=$(mktemp -d)
  if ! GOBIN=$tmp go install "github.com/stripe/stripe-mock@$STRIPE_MOCK_VERSION" >"$LOG_DIR/stripe-mock-build.log" 2>&1; then
    say "ERROR: go install failed"
    tail -n 40 "$LOG_DIR/stripe-mock-build.log" >&2
    rm -rf "$tmp"
    exit 1
  fi
  mkdir -p "$(dirname "$STRIPE_MOCK_BIN")"
  mv "$tmp/stripe-mock" "$STRIPE_MOCK_BIN"
  rm -rf "$tmp"
}

# The real readiness check: a Stripe API call (list customers) answered with a Stripe list.
stripe_answers() {
  curl -sf --max-time 3 -u sk_test_123: "http://$HOST:$STRIPE_MOCK_PORT/v1/customers" 2>/dev/null |
    grep -q '"object": *"list"'
}

start() {
  command -v curl >/dev/null || apt_install curl
  if stripe_answers; then
    say "already running on $HOST:$STRIPE_MOCK_PORT"
    return
  fi
  if ! live_pid stripe-mock stripe-mock >/dev/null; then
    port_open "$STRIPE_MOCK_PORT" && die "port $STRIPE_MOCK_PORT is taken by something that is not stripe-mock; set STRIPE_MOCK_PORT"
    ensure_binary
    say "starting on $HOST:$STRIPE_MOCK_PORT (https $STRIPE_MOCK_HTTPS_PORT)"
    spawn stripe-mock "$STRIPE_MOCK_BIN" \
      -http-addr "$HOST:$STRIPE_MOCK_PORT" -https-addr "$HOST:$STRIPE_MOCK_HTTPS_PORT"
  fi
  wait_ready stripe-mock stripe-mock stripe_answers
  say "ready on $HOST:$STRIPE_MOCK_PORT"
}

stop() {
  stop_pid stripe-mock stripe-mock 10
}

status() {
  if stripe_answers; then
    echo "stripe    up    $HOST:$STRIPE_MOCK_PORT  stripe-mock $STRIPE_MOCK_VERSION"
  else
    echo "stripe    down  $HOST:$STRIPE_MOCK_PORT"
    return 1
  fi
}

main start stop status "$@"
