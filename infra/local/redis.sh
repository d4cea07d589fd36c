#!/usr/bin/env bash
# Redis for the local stack: own config and dir in the stack dir, 127.0.0.1:$REDIS_PORT only,
# no persistence (caches, rate limits and pub/sub only; nothing here is a source of truth).
#
# Env: REDIS_PORT (6379), PINKSEA_STACK_DIR.
SERVICE=redis
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

REDIS_PORT=${REDIS_PORT:-6379}
REDIS_DIR=$STACK_DIR/redis

redis_answers() {
  command -v redis-cli >/dev/null &&
    [ "$(timeout 3 redis-cli -h "$HOST" -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]
}

start() {
  if redis_answers; then
    say "already running on $HOST:$REDIS_PORT"
    return
  fi
  if ! live_pid redis redis-server >/dev/null; then
    port_open "$REDIS_PORT" && die "port $REDIS_PORT is taken by something that is not answering PING; set REDIS_PORT"
    command -v redis-server >/dev/null && command -v redis-cli >/dev/null || apt_install redis-server
    mkdir -p "$REDIS_DIR"
    # Regenerated on every start so a changed REDIS_PORT takes effect.
    cat >"$REDIS_DIR/redis.conf" <<EOF
bind $HOST
port $REDIS_PORT
protected-mode yes
daemonize no
dir $REDIS_DIR
save ""
appendonly no
loglevel notice
databases 16
EOF
    say "starting on $HOST:$REDIS_PORT"
    spawn redis redis-server "$REDIS_DIR/redis.conf"
  fi
  wait_ready redis redis-server redis_answers
  say "ready on $HOST:$REDIS_PORT"
}

stop() {
  stop_pid redis redis-server 10
}

status() {
  if redis_answers; then
    local v
    v=$(redis-cli -h "$HOST" -p "$REDIS_PORT" info server | tr -d '\r' | sed -n 's/^redis_version://p')
    echo "redis     up    $HOST:$REDIS_PORT  $v"
  else
    echo "redis     down  $HOST:$REDIS_PORT"
    return 1
  fi
}

main start stop status "$@"
