#!/usr/bin/env bash
# actionlint over .github/workflows/ (expressions, job graph, action inputs, and the `run:`
# scripts through shellcheck when it is installed). Run by infra/terraform/check.sh (so by
# .ci/run) and by the lint job of .github/workflows/release.yml.
#
# Missing tools are installed once:
#   - actionlint: into $GOBIN (default ~/go/bin), built from the Go module proxy (needs Go
#     >= 1.22 on PATH; ~15 s cold on 2 cores, ~5 s with a warm module cache);
#   - the shell checker: Debian's `shellcheck` package when running as root with apt-get (a
#     few seconds); without it actionlint still runs, without checking the scripts.
#
# Usage: .github/scripts/actionlint.sh [--no-install]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
GOBIN=${GOBIN:-$HOME/go/bin}
ACTIONLINT_VERSION=v1.7.12
INSTALL=1
[[ "${1:-}" == "--no-install" ]] && INSTALL=0

find_actionlint() {
  local candidate
  for candidate in "$(command -v actionlint 2>/dev/null || true)" "$GOBIN/actionlint"; do
    if [[ -n "$candidate" && -x "$candidate" ]] \
      && [[ "$("$candidate" -version 2>/dev/null | head -1)" == "$ACTIONLINT_VERSION" ]]; then
      echo "$candidate"
      return
    fi
  done
  if [[ $INSTALL == 0 ]]; then
    echo "missing: actionlint $ACTIONLINT_VERSION (run without --no-install)" >&2
    exit 2
  fi
  echo "building actionlint $ACTIONLINT_VERSION into $GOBIN (once)" >&2
  mkdir -p "$GOBIN"
  GOBIN="$GOBIN" GOFLAGS=-mod=mod go install -ldflags "-s -w" \
    "github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION" >&2
  echo "$GOBIN/actionlint"
}

shellcheck_flag() {
  if command -v shellcheck >/dev/null 2>&1; then
    echo "-shellcheck=$(command -v shellcheck)"
    return
  fi
  if [[ $INSTALL == 1 && $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "installing shellcheck (Debian package)" >&2
    if DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck >/dev/null 2>&1; }; then
      echo "-shellcheck=$(command -v shellcheck)"
      return
    fi
  fi
  echo "shellcheck not installed: actionlint runs without checking the run: scripts" >&2
  echo "-shellcheck="
}

cd "$ROOT"
ACTIONLINT=$(find_actionlint)
SHELLCHECK=$(shellcheck_flag)
echo "actionlint $("$ACTIONLINT" -version | head -1) ${SHELLCHECK#-shellcheck=}"
"$ACTIONLINT" -no-color "$SHELLCHECK"
echo "actionlint: $(find .github/workflows -name '*.y*ml' | wc -l) workflow(s) clean"
