#!/usr/bin/env bash
# SMTP for the local stack: aiosmtpd as its own process on 127.0.0.1:$SMTP_PORT, the server
# `pinksea notify` sends its e-mails to (PINKSEA_EMAIL_BACKEND=smtp). It relays nothing: every
# message it accepts is stored in one Maildir, $PINKSEA_STACK_DIR/smtp/maildir (new/ holds one
# file per message, with X-RcptTo naming its envelope recipients), so the tests and the demo
# read what a user would have received.
#
# Why aiosmtpd: a real RFC 5321 server (the same dialogue as any MTA, so the notifier's SMTP
# client is tested for real), Apache-2.0, pure Python, in the dev extra.
#
# Python: $PINKSEA_PYTHON, else the repo's .venv, else python3, whichever can import aiosmtpd;
# if none can, a private venv in the stack dir gets aiosmtpd from PyPI.
#
# Env: SMTP_PORT (2525), PINKSEA_PYTHON, PINKSEA_STACK_DIR.
SERVICE=smtp
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

SMTP_PORT=${SMTP_PORT:-2525}
SMTP_VENV=$STACK_DIR/smtp/venv
MAILDIR=$STACK_DIR/smtp/maildir

# The real readiness check: an SMTP greeting and an answered NOOP (250), in bash alone.
smtp_answers() {
  # shellcheck disable=SC2016 # expanded by the inner bash, from its arguments
  timeout 3 bash -c '
    exec 3<>"/dev/tcp/$0/$1" || exit 1
    read -r greeting <&3 && [ "${greeting:0:3}" = 220 ] || exit 1
    printf "NOOP\r\n" >&3
    read -r reply <&3 && [ "${reply:0:3}" = 250 ] || exit 1
    printf "QUIT\r\n" >&3
  ' "$HOST" "$SMTP_PORT" 2>/dev/null
}

start() {
  if smtp_answers; then
    say "already running on $HOST:$SMTP_PORT"
    return
  fi
  if ! live_pid smtp aiosmtpd >/dev/null; then
    port_open "$SMTP_PORT" && die "port $SMTP_PORT is taken by something that is not an SMTP server; set SMTP_PORT"
    ensure_python_with aiosmtpd.handlers "$SMTP_VENV" 'aiosmtpd>=1.4'
    mkdir -p "$MAILDIR/tmp" "$MAILDIR/new" "$MAILDIR/cur" # a Maildir: aiosmtpd creates none of them in an existing dir
    # Bounded: messages older than a week go at each start (the tests read only their own).
    find "$MAILDIR" -type f -mtime +7 -delete
    say "starting aiosmtpd on $HOST:$SMTP_PORT ($PY), Maildir $MAILDIR"
    spawn smtp "$PY" -m aiosmtpd -n -l "$HOST:$SMTP_PORT" -c aiosmtpd.handlers.Mailbox "$MAILDIR"
  fi
  wait_ready smtp aiosmtpd smtp_answers
  say "ready on $HOST:$SMTP_PORT"
}

stop() {
  stop_pid smtp aiosmtpd 10
}

status() {
  if smtp_answers; then
    local count=0
    [ -d "$MAILDIR/new" ] && count=$(find "$MAILDIR/new" -type f | wc -l)
    echo "smtp      up    $HOST:$SMTP_PORT  aiosmtpd, $count message(s) in $MAILDIR"
  else
    echo "smtp      down  $HOST:$SMTP_PORT"
    return 1
  fi
}

main start stop status "$@"
