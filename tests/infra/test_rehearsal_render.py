"""The production rehearsal's rendering (rehearsal/render.py), without any service: the
environments rendered from the Terraform pass the checks every process runs at start, the swap
for the local stack changes only the names it lists, and every PINKSEA_* name the deployment
files set is one a setting reads.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gpu_consumer.config import GpuWorkerSettings
from infra.settings import NON_SETTING_NAMES, PAID_PLANS, Settings, setting_names
from rehearsal.render import (
    REHEARSAL_PRICE_IDS,
    SWAPS,
    LocalStack,
    Task,
    environment_problems,
    rehearsal_vars,
    render_tasks,
    swap_for_local,
)

pytest.importorskip("hcl2")  # the rendering reads HCL with python-hcl2 (the dev extra)
ROOT = Path(__file__).resolve().parents[2]
ISSUER = "http://127.0.0.1:30090/pinksea-pool"
SECRETS = {
    "PINKSEA_DATABASE_URL": "postgresql://pinksea:secret@db.internal:5432/pinksea",
    "PINKSEA_REDIS_URL": "rediss://:secret@redis.internal:6379/0",
    "PINKSEA_STRIPE_API_KEY": "sk_live_rehearsal",
    "PINKSEA_STRIPE_WEBHOOK_SECRET": "whsec_rehearsal",
    "PINKSEA_CLOUDFRONT_PRIVATE_KEY": "-----BEGIN PRIVATE KEY-----\n...",
    "PINKSEA_PERSONAL_DATA_KEK": "cmVoZWFyc2FsLWtlay0zMi1ieXRlcy1sb25nLW9rISE=",
}
LOCAL = LocalStack(
    kafka_bootstrap="127.0.0.1:30094",
    s3_endpoint="http://127.0.0.1:30900",
    s3_access_key_id="pinksea",
    s3_secret_access_key="pinksea-secret",
    aws_endpoint="http://127.0.0.1:30800",
    stripe_api_base="http://127.0.0.1:30111",
    jwks_url=f"{ISSUER}/jwks",
    kafka_scram_user="pinksea-rehearsal",
    kafka_scram_password="scram-secret",
    kafka_ca_file="/tmp/ca.pem",
)


@pytest.fixture(scope="module")
def tasks() -> list[Task]:
    return render_tasks(rehearsal_vars(ISSUER), ("basic", "high_performance"))


def _env(task: Task) -> dict[str, str]:
    store = {ref: SECRETS[name] for name, ref in task.secrets.items()}
    return task.env(store)


def test_every_service_and_worker_is_rendered(tasks: list[Task]) -> None:
    names = [t.name for t in tasks]
    for expected in ("api", "relay", "projections", "scheduler", "settler", "expiry"):
        assert expected in names
    assert {"lag-metric", "gpu-worker-basic", "gpu-worker-high_performance"} <= set(names)
    api = next(t for t in tasks if t.name == "api")
    assert api.command[:2] == ["pinksea", "api"]
    assert api.environment["PINKSEA_ENVIRONMENT"] == "production"
    assert api.environment["PINKSEA_JWT_ISSUER"] == ISSUER
    assert api.environment["PINKSEA_KAFKA_SASL_MECHANISM"] == "OAUTHBEARER"
    # jsonencode(var.stripe_price_ids), as Terraform writes it.
    assert api.environment["PINKSEA_STRIPE_PRICE_IDS"] == (
        '{"pro":"price_1RhProMonthly","starter":"price_1RhStarterMonthly",'
        '"studio":"price_1RhStudioMonthly"}'
    )
    assert set(REHEARSAL_PRICE_IDS) == set(PAID_PLANS)
    assert set(api.secrets) == set(SECRETS)
    worker = next(t for t in tasks if t.name == "gpu-worker-basic")
    assert worker.command == ["pinksea", "gpu-worker", "--tier", "basic"]
    assert worker.environment["PINKSEA_MODELS_DIR"] == "/models"
    assert set(worker.secrets) == {"PINKSEA_REDIS_URL"}  # the user data fetches only Redis's
    sidecar = next(t for t in tasks if t.name == "lag-metric")
    assert sidecar.sidecar_of == "scheduler" and not sidecar.secrets
    # The users' data keys open in the API and the scheduler only (docs/ARCHITECTURE.md).
    opens = {t.name for t in tasks if "PINKSEA_PERSONAL_DATA_KEK" in t.secrets}
    assert opens == {"api", "scheduler"}


def test_production_environments_pass_every_process_check(tasks: list[Task]) -> None:
    for task in tasks:
        assert environment_problems(_env(task), serves_users=task.name == "api") == [], task.name


def test_the_swap_changes_only_endpoints_and_still_passes(tasks: list[Task]) -> None:
    for task in tasks:
        production = _env(task)
        local, changes = swap_for_local(production, LOCAL)
        assert set(changes) <= set(SWAPS), task.name
        unchanged = {k: v for k, v in production.items() if k not in SWAPS}
        assert {k: local[k] for k in unchanged} == unchanged, task.name
        assert local["PINKSEA_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
        assert local["PINKSEA_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
        assert local["PINKSEA_ENVIRONMENT"] == "production"
        assert "PINKSEA_DEV_JWT_ENABLED" not in local
        assert environment_problems(local, serves_users=task.name == "api") == [], task.name


def test_every_deployed_name_is_read_by_a_setting() -> None:
    """A PINKSEA_* name in Terraform or a Dockerfile that no setting reads would be refused at
    start by every process (or, before that check, silently ignored)."""
    known = setting_names(Settings, GpuWorkerSettings) | NON_SETTING_NAMES
    files = [
        p
        for folder in (ROOT / "infra" / "terraform", ROOT / "infra" / "docker")
        for p in folder.rglob("*")
        if p.is_file() and ".terraform" not in p.parts
    ]
    found: dict[str, set[str]] = {}
    for path in files:
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for name in re.findall(r"PINKSEA_[A-Z0-9_]*[A-Z0-9]", text):
            found.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    assert found, "no PINKSEA_* name in infra/terraform or infra/docker"
    unknown = {name: sorted(where) for name, where in found.items() if name not in known}
    assert unknown == {}
