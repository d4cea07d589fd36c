"""The environment of every production process, rendered from the Terraform that deploys it.

``render_tasks`` reads infra/terraform/modules/compute (python-hcl2): each ECS service's
``merge(local.common_environment, extra_environment)`` and its secrets (``local.secret_env``),
the lag-metric sidecar of the scheduler task, and each GPU worker's environment file
(gpu.tf's launch template: ``merge(local.common_environment, {...})`` plus the secrets its
user data appends). ``var.*`` interpolations take the rehearsal's values (``rehearsal_vars``:
the production tfvars where the module gets a root variable, stand-ins for what other modules
output). Anything else in an interpolation is refused, so a new construct in the Terraform
fails the rendering instead of being skipped.

``swap_for_local`` then replaces only the endpoints (and the Kafka authentication, which MSK's
IAM cannot do here); ``SWAPS`` lists every name it may touch, and the run prints what it did.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
TERRAFORM = REPO_ROOT / "infra" / "terraform"
COMPUTE = TERRAFORM / "modules" / "compute"
PRODUCTION_TFVARS = TERRAFORM / "envs" / "production.tfvars"

#: The paid plans' prices in the rehearsal's "Stripe account", as an operator passes them with
#: ``-var stripe_price_ids=...`` (production.tfvars leaves them to the operator).
REHEARSAL_PRICE_IDS = {
    "starter": "price_1RhStarterMonthly",
    "pro": "price_1RhProMonthly",
    "studio": "price_1RhStudioMonthly",
}


class RenderError(RuntimeError):
    pass


@dataclass(frozen=True)
class Task:
    """One production process: its command and exactly the environment it gets."""

    name: str
    command: list[str]  # as deployed, e.g. ["pinksea", "api", "--host", "0.0.0.0", ...]
    environment: dict[str, str]  # plain entries
    secrets: dict[str, str]  # environment name -> secret reference (ARN:key::)
    sidecar_of: str | None = None

    def env(self, secret_values: Mapping[str, str]) -> dict[str, str]:
        """The process environment with each secret resolved, as ECS (or the GPU hosts' user
        data) hands it over. ``secret_values`` maps a secret reference to its value."""
        missing = sorted(ref for ref in self.secrets.values() if ref not in secret_values)
        if missing:
            raise RenderError(f"{self.name}: no value for the secrets {missing}")
        return {
            **self.environment,
            **{name: secret_values[ref] for name, ref in self.secrets.items()},
        }


# --------------------------------------------------------------------------- HCL reading


def _unquote(text: str) -> str:
    return text[1:-1] if len(text) >= 2 and text[0] == '"' and text[-1] == '"' else text


def _load(path: Path) -> dict[str, Any]:
    import hcl2  # python-hcl2 (the dev extra): only the rehearsal and tests/infra read HCL

    with path.open() as f:
        return dict(hcl2.load(f))


def _locals(*files: Path) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for path in files:
        for block in _load(path).get("locals", []):
            merged.update(block)
    return merged


def _resource(path: Path, rtype: str, name: str) -> dict[str, Any]:
    for block in _load(path).get("resource", []):
        for t, named in block.items():
            if _unquote(t) != rtype:
                continue
            for n, body in named.items():
                if _unquote(n) == name:
                    return dict(body)
    raise RenderError(f"no resource {rtype}.{name} in {path}")


def tfvars(path: Path = PRODUCTION_TFVARS) -> dict[str, Any]:
    return {k: _plain(v) for k, v in _load(path).items()}


def _plain(value: Any) -> Any:
    if isinstance(value, str):
        return _unquote(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {_unquote(k): _plain(v) for k, v in value.items() if not k.startswith("__")}
    return value


def rehearsal_vars(oidc_issuer: str, client_id: str = "pinksea-rehearsal-web") -> dict[str, Any]:
    """The compute module's inputs for the rehearsal: the production tfvars where the root
    passes a variable of its own (environment, region, domain), stand-ins of the right shape
    where another module's output would go (bucket names, secret ARNs, the user pool)."""
    prod = tfvars()
    name = f"pinksea-{prod['environment']}"
    account = "123456789012"
    arn = f"arn:aws:secretsmanager:{prod['region']}:{account}:secret:{name}"
    return {
        "name": name,
        "environment": prod["environment"],
        "region": prod["region"],
        "images_bucket_name": f"{name}-images-{account}",
        "models_bucket_name": f"{name}-models-{account}",
        "cdn_domain_name": prod["domain_name"],
        "alb_subnet_cidrs": ",".join(prod["public_subnet_cidrs"]),  # as the root passes it
        "cloudfront_public_key_id": "K2REHEARSAL0KEY",
        "stripe_price_ids": REHEARSAL_PRICE_IDS,
        "msk_bootstrap_brokers": "b-1.msk.rehearsal:9098,b-2.msk.rehearsal:9098",
        "database_secret_arn": f"{arn}/database-Ab12Cd",
        "redis_secret_arn": f"{arn}/redis-Ef34Gh",
        "stripe_secret_arn": f"{arn}/stripe-Ij56Kl",
        "cloudfront_signing_secret": f"{arn}/cloudfront-signing-Mn78Op",
        "personal_data_secret_arn": f"{arn}/personal-data-Qr90St",
        # The user pool: the local OpenID Connect provider stands in for Cognito.
        "cognito_issuer": oidc_issuer,
        "cognito_client_id": client_id,
    }


# ---------------------------------------------------------------------- interpolation

_INTERPOLATION = re.compile(r"\$\{([^{}]*)\}")
_REFERENCE = re.compile(r"^(var|local)\.([A-Za-z_][A-Za-z0-9_]*)$")
_JSONENCODE = re.compile(r"^jsonencode\((var|local)\.([A-Za-z_][A-Za-z0-9_]*)\)$")


@dataclass
class Evaluator:
    variables: Mapping[str, Any]
    locals: Mapping[str, Any]
    used: set[str] = field(default_factory=set)  # the var.* names read

    def _ref(self, kind: str, name: str) -> Any:
        source = self.variables if kind == "var" else self.locals
        if name not in source:
            raise RenderError(f"{kind}.{name} has no rehearsal value")
        if kind == "var":
            self.used.add(name)
            return source[name]
        return self.value(source[name])

    def expression(self, expr: str) -> Any:
        expr = expr.strip()
        if m := _REFERENCE.match(expr):
            return self._ref(m.group(1), m.group(2))
        if m := _JSONENCODE.match(expr):
            # Terraform's jsonencode: compact, object keys sorted.
            return json.dumps(
                self._ref(m.group(1), m.group(2)), separators=(",", ":"), sort_keys=True
            )
        raise RenderError(f"the rehearsal cannot evaluate ${{{expr}}}")

    def value(self, raw: Any) -> Any:
        """A python-hcl2 value: a quoted literal or template, a bare ``${expr}``, a list, a map."""
        if isinstance(raw, list):
            return [self.value(v) for v in raw]
        if isinstance(raw, dict):
            return {_unquote(k): self.value(v) for k, v in raw.items() if not k.startswith("__")}
        if isinstance(raw, bool | int | float) or raw is None:
            return raw
        text = str(raw)
        if text.startswith('"') and text.endswith('"'):
            return self.string(text[1:-1])
        if text.startswith("${") and text.endswith("}") and _INTERPOLATION.fullmatch(text):
            return self.expression(text[2:-1])
        raise RenderError(f"the rehearsal cannot evaluate {text!r}")

    def string(self, template: str) -> str:
        def one(m: re.Match[str]) -> str:
            value = self.expression(m.group(1))
            if not isinstance(value, str | int | float):
                raise RenderError(f"${{{m.group(1)}}} is not a string")
            return str(value)

        return _INTERPOLATION.sub(one, template)


def _as_env(values: Mapping[str, Any], where: str) -> dict[str, str]:
    env = {}
    for name, value in values.items():
        if not isinstance(value, str):
            raise RenderError(f"{where}: {name} = {value!r} is not a string")
        env[name] = value
    return env


# ------------------------------------------------------------------------------ tasks


def _require(text: str, fragment: str, where: str) -> None:
    """The Terraform builds the container the way this module renders it, or rendering fails."""
    if fragment not in re.sub(r"\s+", " ", text):
        raise RenderError(f"{where} no longer contains {fragment!r}: update rehearsal/render.py")


def render_tasks(variables: Mapping[str, Any], gpu_tiers: Iterable[str] = ("basic",)) -> list[Task]:
    """Every task of the compute module with its rendered environment: the ECS services (in
    ``local.services`` order), the scheduler's lag-metric sidecar, one GPU worker per tier."""
    ecs_tf, gpu_tf = COMPUTE / "ecr_ecs.tf", COMPUTE / "gpu.tf"
    local_values = _locals(*sorted(COMPUTE.glob("*.tf")))
    ev = Evaluator(variables, local_values)
    common = _as_env(ev.value(local_values["common_environment"]), "common_environment")
    secret_env = ev.value(local_values["secret_env"])
    secret_refs = ev.value(local_values["secret_refs"])

    definition = _resource(ecs_tf, "aws_ecs_task_definition", "service")
    containers = str(definition["container_definitions"])
    where = "aws_ecs_task_definition.service"
    _require(containers, "merge(local.common_environment, each.value.extra_environment)", where)
    _require(containers, "name = local.secret_env[s], valueFrom = local.secret_refs[s]", where)

    tasks = []
    for name, service in local_values["services"].items():
        # Only what the container gets: sizes and the like need no rehearsal value.
        extra = ev.value(service["extra_environment"])
        tasks.append(
            Task(
                name=name,
                command=list(ev.value(service["command"])),
                environment={**common, **_as_env(extra, f"services.{name}")},
                secrets={secret_env[s]: secret_refs[s] for s in ev.value(service["secrets"])},
            )
        )

    # The sidecar: the common environment and no secrets, in the task of one service.
    sidecar = local_values["lag_metric_sidecar"]
    _require(
        str(sidecar["environment"]), "for k, v in local.common_environment", "lag_metric_sidecar"
    )
    host = re.search(r'each\.key == "(\w+)" \? \[local\.lag_metric_sidecar\]', containers)
    if host is None:
        raise RenderError(f"{where}: no service carries local.lag_metric_sidecar")
    tasks.append(
        Task(
            name=_unquote(str(sidecar["name"])),
            command=list(ev.value(sidecar["command"])),
            environment=dict(common),
            secrets={},
            sidecar_of=host.group(1),
        )
    )

    tasks += [_gpu_worker(gpu_tf, ev, common, secret_env, secret_refs, tier) for tier in gpu_tiers]
    return tasks


def _gpu_worker(
    gpu_tf: Path,
    ev: Evaluator,
    common: dict[str, str],
    secret_env: Mapping[str, str],
    secret_refs: Mapping[str, str],
    tier: str,
) -> Task:
    """The GPU host's worker: user data writes ``environment`` to an env file, appends the
    secrets it fetches, and runs ``pinksea gpu-worker --tier <tier>`` with it."""
    import hcl2

    user_data = str(_resource(gpu_tf, "aws_launch_template", "gpu")["user_data"])
    start = user_data.find("environment = merge(local.common_environment, {")
    if start < 0:
        raise RenderError(
            "gpu.tf: the user data's environment is no longer "
            "merge(local.common_environment, {...})"
        )
    body_start = user_data.index("{", start)
    depth, end = 0, body_start
    for end in range(body_start, len(user_data)):
        depth += {"{": 1, "}": -1}.get(user_data[end], 0)
        if depth == 0:
            break
    extra = hcl2.loads(f"x = {user_data[body_start : end + 1]}\n")["x"]

    template = (COMPUTE / "gpu-user-data.sh.tftpl").read_text()
    _require(template, "%{ for key, value in environment ~}", "gpu-user-data.sh.tftpl")
    by_env_name = {v: k for k, v in secret_env.items()}
    secrets = {}
    for name in re.findall(r'echo "(PINKSEA_[A-Z0-9_]+)=', template):
        if name not in by_env_name:
            raise RenderError(f"gpu-user-data.sh.tftpl appends {name}, which is no known secret")
        secrets[name] = secret_refs[by_env_name[name]]
    run = re.search(r"\$\{image\} (pinksea [^\n]+)", template)
    if run is None:
        raise RenderError("gpu-user-data.sh.tftpl: no `${image} pinksea ...` command")
    command = run.group(1).replace("${tier}", tier).split()
    return Task(
        name=f"gpu-worker-{tier}",
        command=command,
        environment={**common, **_as_env(ev.value(extra), "gpu.tf environment")},
        secrets=secrets,
    )


# ------------------------------------------------------------------------ local swaps


@dataclass(frozen=True)
class LocalStack:
    """Where the rehearsal's private stack listens, and how its Kafka (the SASL_SSL listener
    of infra/local/kafka.sh) authenticates."""

    kafka_bootstrap: str
    s3_endpoint: str  # SeaweedFS (infra/local/s3.sh): checks signatures like S3
    s3_access_key_id: str
    s3_secret_access_key: str
    aws_endpoint: str  # moto (infra/local/aws.sh): CloudWatch and SES
    stripe_api_base: str
    jwks_url: str
    kafka_scram_user: str
    kafka_scram_password: str
    kafka_ca_file: str  # the local CA that signed the broker's certificate


#: Every name the swap may change, and why. Nothing else differs from production.
SWAPS: dict[str, str] = {
    "PINKSEA_KAFKA_BOOTSTRAP_SERVERS": "the local broker's SASL_SSL listener instead of MSK",
    "PINKSEA_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512: MSK's IAM (OAUTHBEARER) cannot run here",
    "PINKSEA_KAFKA_SASL_USERNAME": "the SCRAM user (IAM needs none)",
    "PINKSEA_KAFKA_SASL_PASSWORD": "the SCRAM password",
    "PINKSEA_KAFKA_SSL_CAFILE": "the local CA (MSK's certificates chain to a public CA)",
    "PINKSEA_KAFKA_REPLICATION_FACTOR": "one broker: replication 1",
    "PINKSEA_KAFKA_MIN_INSYNC_REPLICAS": "one broker: min.insync.replicas 1",
    "PINKSEA_S3_ENDPOINT_URL": "the local S3 (SeaweedFS) instead of AWS's endpoint",
    "PINKSEA_S3_ACCESS_KEY_ID": "the local S3's key instead of the task role's credentials",
    "PINKSEA_S3_SECRET_ACCESS_KEY": "the local S3's secret",
    "PINKSEA_CLOUDWATCH_ENDPOINT_URL": "moto instead of AWS's endpoint",
    "PINKSEA_SES_ENDPOINT_URL": "moto instead of AWS's endpoint",
    "PINKSEA_STRIPE_API_BASE": "stripe-mock (through the rehearsal's recorder), not api.stripe.com",
    "PINKSEA_JWKS_URL": "the local provider publishes its JWKS at <issuer>/jwks, Cognito at "
    "<issuer>/.well-known/jwks.json (the default)",
}


def swap_for_local(
    env: Mapping[str, str], stack: LocalStack
) -> tuple[dict[str, str], dict[str, str]]:
    """``env`` with its endpoints pointed at ``stack``; also the changes made (name -> value).

    A name is set only where the production environment has that setting's family already
    (a process that reads no S3 gets no S3 endpoint), so every process keeps exactly its
    task's set of names plus what the swap needs."""
    out = dict(env)
    changes: dict[str, str] = {}

    def put(name: str, value: str) -> None:
        assert name in SWAPS, name
        if out.get(name) != value:
            out[name] = value
            changes[name] = value

    if "PINKSEA_KAFKA_BOOTSTRAP_SERVERS" in env:
        # SASL_SSL stays (TLS verified against the local CA); SCRAM stands in for IAM.
        put("PINKSEA_KAFKA_BOOTSTRAP_SERVERS", stack.kafka_bootstrap)
        put("PINKSEA_KAFKA_REPLICATION_FACTOR", "1")
        put("PINKSEA_KAFKA_MIN_INSYNC_REPLICAS", "1")
        put("PINKSEA_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
        put("PINKSEA_KAFKA_SASL_USERNAME", stack.kafka_scram_user)
        put("PINKSEA_KAFKA_SASL_PASSWORD", stack.kafka_scram_password)
        put("PINKSEA_KAFKA_SSL_CAFILE", stack.kafka_ca_file)
    if "PINKSEA_S3_ENDPOINT_URL" in env:
        put("PINKSEA_S3_ENDPOINT_URL", stack.s3_endpoint)
        put("PINKSEA_S3_ACCESS_KEY_ID", stack.s3_access_key_id)
        put("PINKSEA_S3_SECRET_ACCESS_KEY", stack.s3_secret_access_key)
    if "PINKSEA_CLOUDWATCH_ENDPOINT_URL" in env:
        put("PINKSEA_CLOUDWATCH_ENDPOINT_URL", stack.aws_endpoint)
    if "PINKSEA_SES_ENDPOINT_URL" in env:
        put("PINKSEA_SES_ENDPOINT_URL", stack.aws_endpoint)
    if "PINKSEA_STRIPE_API_BASE" in env:
        put("PINKSEA_STRIPE_API_BASE", stack.stripe_api_base)
    if "PINKSEA_JWT_ISSUER" in env:
        put("PINKSEA_JWKS_URL", stack.jwks_url)
    return out, changes


# ------------------------------------------------------------------------- validation


@contextmanager
def exact_environ(env: Mapping[str, str]) -> Iterator[None]:
    """os.environ holding only ``env``'s PINKSEA_* names (the rest kept), restored after: the
    settings read os.environ, and this process's own PINKSEA_* must not leak into a check."""
    saved = dict(os.environ)
    try:
        for name in [n for n in os.environ if n.startswith("PINKSEA_")]:
            del os.environ[name]
        os.environ.update(env)
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def environment_problems(env: Mapping[str, str], *, serves_users: bool) -> list[str]:
    """What every ``pinksea`` command checks before it starts (infra.settings.check_environment)
    and, for the API, what it refuses to start without (Settings.deployment_problems)."""
    from gpu_consumer.config import GpuWorkerSettings
    from infra.settings import Settings, check_environment

    with exact_environ(env):
        problems = check_environment(GpuWorkerSettings)
        if not problems and serves_users:
            problems = Settings(_env_file=None).deployment_problems()
    return problems
