#!/usr/bin/env bash
# PostgreSQL for the local stack: its own cluster (not Debian's default one), TCP on
# 127.0.0.1:$PG_PORT only, role pinksea/pinksea (superuser: tests CREATE DATABASE per session),
# databases pinksea and pinksea_test.
#
# Env: PG_PORT (5432), PG_DATA_DIR, PG_MAX_CONNECTIONS (300), PG_BIN (newest
# /usr/lib/postgresql/*/bin), PINKSEA_STACK_DIR.
SERVICE=postgres
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PG_PORT=${PG_PORT:-5432}
PG_USER=pinksea
PG_PASSWORD=pinksea
PG_DATABASES=(pinksea pinksea_test)
PG_MAX_CONNECTIONS=${PG_MAX_CONNECTIONS:-300}

find_pg_bin() {
  if [ -n "${PG_BIN:-}" ]; then
    echo "$PG_BIN"
    return
  fi
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$d" ] && [ -x "$d/initdb" ] && echo "$d"
}

# postgres refuses to run as root: as root the cluster belongs to the `postgres` OS user, and its
# data dir must be reachable by that user, which a stack dir under /root (mode 700) is not. So as
# root the data lives under postgres's home, keyed by the stack dir so stacks stay separate.
if [ "$(id -u)" -eq 0 ]; then
  PG_OS_USER=postgres
  PG_DATA_DIR=${PG_DATA_DIR:-/var/lib/postgresql/pinksea-stack/$(printf %s "$STACK_DIR" | sha1sum | cut -c1-12)}
else
  PG_OS_USER=
  PG_DATA_DIR=${PG_DATA_DIR:-$STACK_DIR/postgres}
fi

# Run a PostgreSQL binary as the cluster owner, from / (the caller's cwd may be unreadable to it).
as_pg() {
  if [ -n "$PG_OS_USER" ]; then
    (cd / && exec setpriv --reuid="$PG_OS_USER" --regid="$PG_OS_USER" --init-groups "$@")
  else
    "$@"
  fi
}

psql_pinksea() {
  PGPASSWORD=$PG_PASSWORD PGCONNECT_TIMEOUT=3 "$PG_BIN/psql" -X -h "$HOST" -p "$PG_PORT" \
    -U "$PG_USER" -d postgres -v ON_ERROR_STOP=1 -Atq "$@"
}

# The real readiness check: a query as the pinksea role.
pg_answers() {
  [ -n "${PG_BIN:-}" ] && psql_pinksea -c 'select 1' 2>/dev/null | grep -qx 1
}

ensure_installed() {
  PG_BIN=$(find_pg_bin || true)
  [ -n "$PG_BIN" ] && return
  apt_install postgresql
  PG_BIN=$(find_pg_bin || true)
  [ -n "$PG_BIN" ] || die "PostgreSQL binaries not found after installing the postgresql package"
  # Debian's package creates and may start its own 'main' cluster on 5432; we run our own
  # cluster, so stop that one if the install started it on our port.
  if command -v pg_lsclusters >/dev/null; then
    pg_lsclusters -h | while read -r ver name port state _; do
      if [ "$port" = "$PG_PORT" ] && [ "$state" = online ]; then
        say "stopping Debian's default cluster $ver/$name (it holds port $PG_PORT)"
        as_root pg_ctlcluster "$ver" "$name" stop || true
      fi
    done
  fi
}

init_cluster() {
  [ -s "$PG_DATA_DIR/PG_VERSION" ] && return
  say "initdb $PG_DATA_DIR"
  mkdir -p "$PG_DATA_DIR"
  local pwfile
  pwfile=$(mktemp -p "$(dirname "$PG_DATA_DIR")")
  echo "$PG_PASSWORD" >"$pwfile"
  if [ -n "$PG_OS_USER" ]; then
    chown "$PG_OS_USER:" "$PG_DATA_DIR" "$pwfile"
  fi
  chmod 700 "$PG_DATA_DIR"
  # The bootstrap superuser is the pinksea role itself; password auth on TCP.
  if ! as_pg "$PG_BIN/initdb" -D "$PG_DATA_DIR" -U "$PG_USER" --pwfile="$pwfile" \
    --auth-host=scram-sha-256 --auth-local=peer --encoding=UTF8 --locale=C.UTF-8 \
    >>"$(logfile postgres)" 2>&1; then
    rm -f "$pwfile"
    say "ERROR: initdb failed"
    tail_log postgres
    exit 1
  fi
  rm -f "$pwfile"
}

ensure_databases() {
  local db
  for db in "${PG_DATABASES[@]}"; do
    if [ -z "$(psql_pinksea -c "select 1 from pg_database where datname = '$db'")" ]; then
      say "create database $db"
      psql_pinksea -c "create database $db owner $PG_USER"
    fi
  done
}

start() {
  PG_BIN=$(find_pg_bin || true)
  if pg_answers; then
    ensure_databases
    say "already running on $HOST:$PG_PORT"
    return
  fi
  if ! live_pid postgres postgres >/dev/null; then
    if port_open "$PG_PORT"; then
      die "port $PG_PORT is taken by a server that does not accept pinksea/pinksea" \
        "(Debian's own cluster? see pg_lsclusters; stop it or set PG_PORT)"
    fi
    ensure_installed
    init_cluster
    say "starting on $HOST:$PG_PORT (data $PG_DATA_DIR)"
    # No unix socket (TCP on loopback only), so nothing collides with Debian's clusters.
    (cd / && spawn postgres ${PG_OS_USER:+setpriv --reuid="$PG_OS_USER" --regid="$PG_OS_USER" --init-groups} \
      "$PG_BIN/postgres" -D "$PG_DATA_DIR" -p "$PG_PORT" \
      -c listen_addresses="$HOST" -c unix_socket_directories= \
      -c max_connections="$PG_MAX_CONNECTIONS")
  fi
  wait_ready postgres postgres pg_answers
  ensure_databases
  say "ready on $HOST:$PG_PORT"
}

stop() {
  # SIGINT = fast shutdown: open client connections do not hold it up.
  stop_pid postgres postgres 30 INT
}

status() {
  PG_BIN=$(find_pg_bin || true)
  if pg_answers; then
    echo "postgres  up    $HOST:$PG_PORT  $(psql_pinksea -c 'show server_version')  data $PG_DATA_DIR"
  else
    echo "postgres  down  $HOST:$PG_PORT"
    return 1
  fi
}

main start stop status "$@"
