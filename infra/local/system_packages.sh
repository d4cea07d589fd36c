#!/usr/bin/env bash
# Install the Debian packages the local stack and the virtualenv need, when missing:
# PostgreSQL, Redis, Java 17 and Maven (Kafka's jars), curl, python3 with venv, iproute2 (the
# network partitions of the fault tests and the chaos run: chaos/partition.py).
# Used by .ci/run and by `make venv` / `make services`, so a fresh clone needs no other step.
# A no-op (one line) when everything is present.
set -euo pipefail

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || missing+=(maven)
command -v curl >/dev/null || missing+=(curl)
command -v python3 >/dev/null || missing+=(python3)
python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv)
command -v ip >/dev/null || missing+=(iproute2)
if ((${#missing[@]} == 0)); then
  echo "system packages: all present"
  exit 0
fi
echo "system packages: installing ${missing[*]}"
as_root apt-get update -qq
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
if [[ " ${missing[*]} " == *" postgresql "* ]] && command -v pg_lsclusters >/dev/null; then
  # Debian's package starts a default cluster on 5432; the stack runs its own.
  pg_lsclusters -h | while read -r ver name _port state _; do
    if [ "$state" = online ]; then as_root pg_ctlcluster "$ver" "$name" stop; fi
  done
fi
