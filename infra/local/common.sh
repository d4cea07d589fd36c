# Shared helpers for the local-stack scripts in infra/local/ (sourced, not run).
#
# Every service script follows one pattern:
#   start  : no-op if the service already answers a real request on its port; otherwise install
#            what is missing, spawn the server in its own session (it outlives the script), and
#            wait until it answers a real request. On failure: exit 1 with the tail of its log.
#   stop   : kill the process named by its pid file (TERM, then KILL after a grace period).
#   status : one line, exit 0 when the service answers, 1 otherwise.
#
# Everything lives in one stack dir (PINKSEA_STACK_DIR, default ~/.pinksea-stack) so several
# clones of the repo share one running stack.

set -euo pipefail

LOCAL_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$LOCAL_DIR/../.." && pwd)
STACK_DIR=${PINKSEA_STACK_DIR:-$HOME/.pinksea-stack}
RUN_DIR=$STACK_DIR/run
LOG_DIR=$STACK_DIR/log
mkdir -p "$RUN_DIR" "$LOG_DIR"
STACK_DIR=$(cd "$STACK_DIR" && pwd)
RUN_DIR=$STACK_DIR/run
LOG_DIR=$STACK_DIR/log

HOST=127.0.0.1
# How long start waits for a service to answer before giving up (seconds).
START_TIMEOUT=${PINKSEA_START_TIMEOUT:-90}

# apt-get must never prompt.
export DEBIAN_FRONTEND=noninteractive

say() { printf '[%s] %s\n' "$SERVICE" "$*" >&2; }
die() {
  say "ERROR: $*"
  exit 1
}

# Run a command as root: directly when we are root, through sudo otherwise.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

APT_UPDATED=
apt_install() {
  command -v apt-get >/dev/null || die "apt-get not found; install $* by hand"
  say "installing Debian packages: $*"
  if [ -z "$APT_UPDATED" ]; then
    as_root apt-get update -qq
    APT_UPDATED=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

# True when something accepts TCP connections on 127.0.0.1:$1 (bash's /dev/tcp, no nc needed).
port_open() {
  (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

pidfile() { echo "$RUN_DIR/$1.pid"; }
logfile() { echo "$LOG_DIR/$1.log"; }

# Pid from the pid file when that process is alive and its command line contains $2
# (guards against a stale pid file whose pid was reused by something else).
live_pid() {
  local f pid
  f=$(pidfile "$1")
  [ -s "$f" ] || return 1
  pid=$(cat "$f")
  [ -d "/proc/$pid" ] || return 1
  if [ -n "${2:-}" ]; then
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$2" || return 1
  fi
  echo "$pid"
}

# spawn NAME CMD...: start CMD in a new session, detached from the terminal and from make's
# process group (so Ctrl-C or the end of CI's shell does not take it down), stdout/stderr
# appended to the service log, pid recorded. The script runs without job control, so the
# background child is not a group leader and setsid execs in place: $! is the server's pid.
spawn() {
  local name=$1
  shift
  local log
  log=$(logfile "$name")
  printf '\n===== %s start: %s\n' "$(date -Is)" "$*" >>"$log"
  (
    # Close inherited descriptors (our flock, callers' pipes): a server holding them would
    # block the next start on the lock, or keep a caller's output pipe open forever.
    for fd in /proc/$BASHPID/fd/*; do
      fd=${fd##*/}
      if [ "$fd" -gt 2 ]; then eval "exec $fd>&-"; fi
    done
    exec setsid nohup "$@"
  ) >>"$log" 2>&1 </dev/null &
  echo $! >"$(pidfile "$name")"
}

# tail_log NAME [LINES]: the end of a service log, for failure messages.
tail_log() {
  local log
  log=$(logfile "$1")
  if [ -s "$log" ]; then
    echo "----- last ${2:-40} lines of $log -----" >&2
    tail -n "${2:-40}" "$log" >&2
    echo "-----" >&2
  else
    echo "(no log at $log)" >&2
  fi
}

# wait_ready NAME PATTERN CHECK...: poll CHECK until it succeeds. Fails fast when the spawned
# process exits, and after START_TIMEOUT seconds; both print the log tail.
wait_ready() {
  local name=$1 pattern=$2
  shift 2
  local deadline=$((SECONDS + START_TIMEOUT))
  while ((SECONDS < deadline)); do
    if "$@" >/dev/null 2>&1; then
      return 0
    fi
    # A process in the middle of an exec has no command line for an instant (seen once in CI:
    # a PostgreSQL that started fine was reported gone): only a second look is a verdict.
    if ! live_pid "$name" "$pattern" >/dev/null && sleep 0.5 &&
      ! live_pid "$name" "$pattern" >/dev/null; then
      say "ERROR: $name exited before it answered"
      tail_log "$name"
      exit 1
    fi
    sleep 0.5
  done
  say "ERROR: $name did not answer within ${START_TIMEOUT}s"
  tail_log "$name"
  exit 1
}

# stop_pid NAME PATTERN [GRACE] [SIGNAL]: send SIGNAL (default TERM) to the recorded process,
# KILL it after GRACE seconds.
stop_pid() {
  local name=$1 pattern=$2 grace=${3:-20} sig=${4:-TERM} pid
  if ! pid=$(live_pid "$name" "$pattern"); then
    rm -f "$(pidfile "$name")"
    say "not running (no live pid file)"
    return 0
  fi
  say "stopping pid $pid (SIG$sig)"
  kill -"$sig" "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + grace))
  while [ -d "/proc/$pid" ] && ((SECONDS < deadline)); do
    sleep 0.2
  done
  if [ -d "/proc/$pid" ]; then
    say "still running after ${grace}s, sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$(pidfile "$name")"
}

# ensure_python_with MODULE VENV PIP_SPEC: set PY to the first interpreter that can import
# MODULE: $PINKSEA_PYTHON, the repo's .venv, VENV, python3; if none can, create VENV and pip
# install PIP_SPEC into it (the Python services: moto's server, aiosmtpd).
ensure_python_with() {
  local module=$1 venv=$2 spec=$3 candidate
  for candidate in "${PINKSEA_PYTHON:-}" "$REPO_ROOT/.venv/bin/python" "$venv/bin/python" python3; do
    [ -n "$candidate" ] || continue
    # Absolute, without resolving the venv's symlink (the venv is what gives the packages).
    case "$candidate" in
      */*) candidate="$(cd "$(dirname "$candidate")" 2>/dev/null && pwd)/$(basename "$candidate")" ;;
      *) candidate=$(command -v "$candidate") || continue ;;
    esac
    if [ -x "$candidate" ] && "$candidate" -c "import $module" >/dev/null 2>&1; then
      PY=$candidate
      return
    fi
  done
  say "no Python with $module found; creating $venv"
  python3 -m venv "$venv" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
  "$venv/bin/pip" install -q "$spec" >&2 || die "pip install $spec failed"
  PY=$venv/bin/python
}

# The Java services (Kafka, the OIDC provider) need a JDK 17+: "$JAVA" (default java).
ensure_java() {
  local what=$1 java=${JAVA:-java} major
  command -v "$java" >/dev/null || apt_install openjdk-17-jre-headless
  major=$("$java" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')
  [ "${major:-0}" -ge 17 ] 2>/dev/null || die "$what needs Java 17+, $java is ${major:-unknown}"
}

# ensure_jars POM LIBS WHAT: copy a pom's runtime classpath from the local Maven repository
# (~/.m2, downloading from Maven Central on first use) into LIBS. A marker holding the pom's
# hash makes this a no-op afterwards.
ensure_jars() {
  local pom=$1 libs=$2 what=$3 want
  want=$(sha1sum "$pom" | cut -c1-40)
  if [ "$(cat "$libs/.pom.sha1" 2>/dev/null)" = "$want" ]; then
    return
  fi
  command -v mvn >/dev/null || apt_install maven
  say "resolving $what with Maven (first run downloads from Maven Central)"
  rm -rf "$libs"
  mkdir -p "$libs"
  if ! mvn -B -q -f "$pom" dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$libs" >"$LOG_DIR/$SERVICE-mvn.log" 2>&1; then
    say "ERROR: Maven could not resolve $what"
    tail -n 40 "$LOG_DIR/$SERVICE-mvn.log" >&2
    exit 1
  fi
  echo "$want" >"$libs/.pom.sha1"
}

# Serialise start/stop of one service across concurrent callers (several clones, make -j).
lock_service() {
  exec 9>"$RUN_DIR/$1.lock"
  flock 9
}

# main START STOP STATUS "$@": dispatch the subcommand to the script's functions.
main() {
  local start_fn=$1 stop_fn=$2 status_fn=$3
  shift 3
  case "${1:-}" in
    start)
      lock_service "$SERVICE"
      "$start_fn"
      ;;
    stop)
      lock_service "$SERVICE"
      "$stop_fn"
      ;;
    status) "$status_fn" ;;
    *)
      echo "usage: $0 start|stop|status" >&2
      exit 2
      ;;
  esac
}
