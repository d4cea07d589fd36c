#!/usr/bin/env bash
# stripe-mock (Stripe's official API mock, Go module github.com/stripe/stripe-mock) for the local
# stack: HTTP on 127.0.0.1:$STRIPE_MOCK_PORT, HTTPS on 127.0.0.1:$STRIPE_MOCK_HTTPS_PORT.
# Built once with `go install` at a pinned version into the stack dir. The -http-addr flags bind
# loopback only (-http-port would listen on every interface).
#
# Env: STRIPE_MOCK_PORT (12111), STRIPE_MOCK_HTTPS_PORT (12112), STRIPE_MOCK_VERSION,
# GO_TOOLCHAIN (fetched only when no Go >= 1.22 is installed), PINKSEA_STACK_DIR.
SERVICE=stripe-mock
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

STRIPE_MOCK_VERSION=${STRIPE_MOCK_VERSION:-v0.203.0}
STRIPE_MOCK_PORT=${STRIPE_MOCK_PORT:-12111}
STRIPE_MOCK_HTTPS_PORT=${STRIPE_MOCK_HTTPS_PORT:-12112}
# Versioned path: changing STRIPE_MOCK_VERSION builds the new one beside the old.
STRIPE_MOCK_BIN=$STACK_DIR/bin/stripe-mock-$STRIPE_MOCK_VERSION

GO_TOOLCHAIN=${GO_TOOLCHAIN:-go1.22.12}

# True when `go` at $1 is at least 1.22 (stripe-mock's go.mod says `go 1.22.1`).
go_new_enough() {
  local v
  v=$("$1" env GOVERSION 2>/dev/null) || return 1
  v=${v#go}
  [ "${v%%.*}" -gt 1 ] || { [ "${v%%.*}" -eq 1 ] && [ "$(echo "$v" | cut -d. -f2)" -ge 22 ]; }
}

# A Go toolchain able to build stripe-mock. Debian bookworm's golang-go is 1.19 (too old, and
# too old to switch toolchains itself), so when no new enough `go` is here we fetch the
# toolchain the way `go` does (GOTOOLCHAIN): module golang.org/toolchain from the module proxy.
find_go() {
  local g
  for g in "$(command -v go || true)" /usr/local/go/bin/go "$STACK_DIR/go/$GO_TOOLCHAIN/bin/go"; do
    if [ -n "$g" ] && [ -x "$g" ] && go_new_enough "$g"; then
      GO=$g
      return
    fi
  done
  local arch proxy dir zip
  case "$(uname -m)" in
    x86_64) arch=amd64 ;;
    aarch64 | arm64) arch=arm64 ;;
    *) die "no Go >= 1.22 here; install one for $(uname -m) by hand" ;;
  esac
  proxy=${GOPROXY:-https://proxy.golang.org}
  proxy=${proxy%%,*}
  dir=$STACK_DIR/go/$GO_TOOLCHAIN
  zip=$STACK_DIR/go/$GO_TOOLCHAIN.zip
  say "no Go >= 1.22 found; fetching golang.org/toolchain $GO_TOOLCHAIN.linux-$arch from $proxy"
  mkdir -p "$STACK_DIR/go"
  curl -fsSL --retry 3 -o "$zip" \
    "$proxy/golang.org/toolchain/@v/v0.0.1-$GO_TOOLCHAIN.linux-$arch.zip" ||
    die "could not download the Go toolchain"
  rm -rf "$dir.tmp"
  python3 -m zipfile -e "$zip" "$dir.tmp"
  mv "$dir.tmp/golang.org/toolchain@v0.0.1-$GO_TOOLCHAIN.linux-$arch" "$dir"
  rm -rf "$dir.tmp" "$zip"
  # Module zips carry no file modes; `go` marks these executable when it unpacks a toolchain.
  chmod -R +x "$dir/bin" "$dir/pkg/tool"
  GO=$dir/bin/go
}

ensure_binary() {
  [ -x "$STRIPE_MOCK_BIN" ] && return
  find_go
  say "building github.com/stripe/stripe-mock@$STRIPE_MOCK_VERSION with $("$GO" env GOVERSION)"
  local tmp
  tmp=$(mktemp -d)
  if ! GOBIN=$tmp GOTOOLCHAIN=local "$GO" install "github.com/stripe/stripe-mock@$STRIPE_MOCK_VERSION" \
    >"$LOG_DIR/stripe-mock-build.log" 2>&1; then
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
