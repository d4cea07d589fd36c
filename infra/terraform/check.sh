#!/usr/bin/env bash
# Static checks of infra/ that need no AWS account and no provider download:
#   1. HCL formatting:        tofu fmt -check -recursive infra/terraform
#   2. Prometheus rules:      promtool check rules + promtool test rules (alerts_test.yml)
#   3. GPU user data:         the template rendered by tofu (no provider needed), then bash -n
#   4. Security policy:       checkov over infra/ (terraform + dockerfile), zero failed checks
#   5. Release workflow:      actionlint over .github/workflows (.github/scripts/actionlint.sh;
#                             it builds actionlint into $GOBIN, installs Debian's shellcheck)
# Missing tools are built or installed once and cached:
#   tofu, promtool -> $GOBIN (default ~/go/bin), built from the Go module proxy
#                     (an installed Terraform >= 1.6 stands in for tofu: same fmt, same
#                     templatefile)
#   checkov        -> its own virtualenv ($PINKSEA_CHECKOV_VENV, default
#                     ~/.cache/pinksea-checkov-venv), kept apart from the project's venv
# `tofu validate`/`plan` are not run: they need the AWS provider from the registry.
#
# Usage: infra/terraform/check.sh [--no-install]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
GOBIN=${GOBIN:-$HOME/go/bin}
TOFU_VERSION=v1.10.10            # OpenTofu (MPL-2.0)
PROMETHEUS_MODULE_VERSION=v0.316.0
CHECKOV_VERSION=3.3.30
CHECKOV_VENV=${PINKSEA_CHECKOV_VENV:-$HOME/.cache/pinksea-checkov-venv}
INSTALL=1
[[ "${1:-}" == "--no-install" ]] && INSTALL=0

# A TF_CLI_CONFIG_FILE that points nowhere only produces warnings.
if [[ -n "${TF_CLI_CONFIG_FILE:-}" && ! -f "${TF_CLI_CONFIG_FILE}" ]]; then
  unset TF_CLI_CONFIG_FILE
fi
export CHECKPOINT_DISABLE=1

step() { printf '\n== %s\n' "$*"; }
need() { [[ $INSTALL == 1 ]] || { echo "missing: $1 (run without --no-install)" >&2; exit 2; }; }

find_tofu() {
  if command -v tofu >/dev/null 2>&1; then command -v tofu; return; fi
  if [[ -x "$GOBIN/tofu" ]]; then echo "$GOBIN/tofu"; return; fi
  # Building tofu costs about 3 minutes of a cold run; a Terraform >= 1.6 does the same here.
  if command -v terraform >/dev/null 2>&1 \
    && terraform version -json 2>/dev/null | python3 -c '
import json, sys
major, minor = map(int, json.load(sys.stdin)["terraform_version"].split(".")[:2])
sys.exit(0 if (major, minor) >= (1, 6) else 1)' 2>/dev/null; then
    command -v terraform
    return
  fi
  need tofu
  echo "building OpenTofu $TOFU_VERSION into $GOBIN (a few minutes, once)" >&2
  # `go install pkg@version` refuses modules with replace directives: build inside the module.
  local dir
  dir=$(go mod download -json "github.com/opentofu/opentofu@$TOFU_VERSION" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
  mkdir -p "$GOBIN"
  (cd "$dir" && go build -trimpath \
    -ldflags "-s -w -X github.com/opentofu/opentofu/version.dev=no" \
    -o "$GOBIN/tofu" ./cmd/tofu) >&2
  echo "$GOBIN/tofu"
}

find_promtool() {
  if command -v promtool >/dev/null 2>&1; then command -v promtool; return; fi
  if [[ -x "$GOBIN/promtool" ]]; then echo "$GOBIN/promtool"; return; fi
  need promtool
  echo "building promtool ($PROMETHEUS_MODULE_VERSION) into $GOBIN (a few minutes, once)" >&2
  # remove_all_sd: without the service-discovery plugins (AWS, Azure, GCE... SDKs), which rule
  # checks never use, a cold build needs less than half the CPU time (~3.5 vs ~8 CPU-minutes).
  GOBIN="$GOBIN" go install -tags remove_all_sd -ldflags "-s -w" \
    "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_MODULE_VERSION" >&2
  echo "$GOBIN/promtool"
}

find_checkov() {
  if "$CHECKOV_VENV/bin/checkov" --version 2>/dev/null | grep -qx "$CHECKOV_VERSION"; then
    echo "$CHECKOV_VENV/bin/checkov"
    return
  fi
  need checkov
  echo "installing checkov $CHECKOV_VERSION into $CHECKOV_VENV (about a minute, once)" >&2
  rm -rf "$CHECKOV_VENV"
  python3 -m venv "$CHECKOV_VENV" >&2
  "$CHECKOV_VENV/bin/pip" install --quiet --disable-pip-version-check "checkov==$CHECKOV_VERSION" >&2
  echo "$CHECKOV_VENV/bin/checkov"
}

cd "$ROOT"
TOFU=$(find_tofu)
PROMTOOL=$(find_promtool)
CHECKOV=$(find_checkov)
CHECKOV_RUNNING=$("$CHECKOV" --version)

step "fmt -check -recursive infra/terraform ($("$TOFU" version | head -1))"
"$TOFU" fmt -check -recursive -diff infra/terraform

step "promtool check rules / test rules"
"$PROMTOOL" check rules infra/observability/prometheus/alerts.yml
(cd infra/observability/prometheus && "$PROMTOOL" test rules alerts_test.yml)

step "GPU user data: render with $(basename "$TOFU"), bash -n"
render=$(mktemp -d)
trap 'rm -rf "$render"' EXIT
cat > "$render/main.tf" <<HCL
output "user_data" {
  value = templatefile("$ROOT/infra/terraform/modules/compute/gpu-user-data.sh.tftpl", {
    region              = "ap-northeast-2"
    tier                = "basic"
    image               = "123456789012.dkr.ecr.ap-northeast-2.amazonaws.com/pinksea/gpu-worker:check"
    registry            = "123456789012.dkr.ecr.ap-northeast-2.amazonaws.com"
    log_group           = "/pinksea-check/gpu/basic"
    efs_file_system_id  = "fs-0123456789abcdef0"
    efs_access_point_id = "fsap-0123456789abcdef0"
    redis_secret_arn    = "arn:aws:secretsmanager:ap-northeast-2:123456789012:secret:pinksea/redis"
    environment         = { PINKSEA_MODELS_DIR = "/models", PINKSEA_S3_ENDPOINT_URL = "" }
  })
}
HCL
(cd "$render" && "$TOFU" init -input=false >/dev/null \
  && "$TOFU" apply -auto-approve -input=false >/dev/null \
  && "$TOFU" output -raw user_data > user-data.sh)
bash -n "$render/user-data.sh"
grep -q 'pinksea gpu-worker --tier basic' "$render/user-data.sh"
echo "rendered $(wc -l < "$render/user-data.sh") lines, bash syntax ok"

step "checkov $CHECKOV_RUNNING -d infra/ --framework terraform,dockerfile"
"$CHECKOV" -d infra/ --framework terraform,dockerfile --quiet --compact --skip-download

step "actionlint .github/workflows (run: scripts through shellcheck)"
actionlint_args=()
[[ $INSTALL == 1 ]] || actionlint_args+=(--no-install)
bash .github/scripts/actionlint.sh "${actionlint_args[@]}"

step "infra checks passed"
