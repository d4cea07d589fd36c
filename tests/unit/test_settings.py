"""Settings that cannot be misspelled, and a deployment that refuses to run on local defaults."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import SecretStr

from api.app import create_app
from gpu_consumer.config import GpuWorkerSettings
from infra.settings import (
    NON_SETTING_NAMES,
    Settings,
    check_environment,
    setting_names,
    unknown_names,
)

KNOWN = setting_names(Settings, GpuWorkerSettings)

# A production configuration with every value the API needs (none of them a local default).
DEPLOYED = dict(
    environment="production",
    jwt_issuer="https://cognito-idp.ap-northeast-2.amazonaws.com/ap-northeast-2_abc",
    jwt_audience="client-123",
    cdn_domain="pinksea.example.com",
    cloudfront_key_pair_id="K2JCJMDEHXQW5F",
    cloudfront_private_key=SecretStr("-----BEGIN PRIVATE KEY-----\n..."),
    stripe_api_key=SecretStr("sk_live_abc"),
    stripe_webhook_secret=SecretStr("whsec_abc"),
    stripe_price_ids={"starter": "price_1", "pro": "price_2", "studio": "price_3"},
    checkout_success_url="https://pinksea.example.com/billing/success",
    checkout_cancel_url="https://pinksea.example.com/billing",
    personal_data_kek=SecretStr("ZGVwbG95ZWQta2VrLW9mLTMyLWJ5dGVzLWxvbmctb2s="),
)


def test_a_misspelled_name_is_refused_with_the_closest_valid_one() -> None:
    problems = unknown_names(["PINKSEA_JWT_ISUER", "PINKSEA_COGNITO_ISSUER", "HOME"], KNOWN)
    assert problems == [
        "PINKSEA_COGNITO_ISSUER is not a setting (did you mean PINKSEA_JWT_ISSUER?)",
        "PINKSEA_JWT_ISUER is not a setting (did you mean PINKSEA_JWT_ISSUER?)",
    ]
    assert unknown_names(["PINKSEA_ZZZZZZZZ"], KNOWN) == ["PINKSEA_ZZZZZZZZ is not a setting"]


def test_every_setting_and_script_name_is_accepted() -> None:
    assert unknown_names(sorted(KNOWN | NON_SETTING_NAMES), KNOWN) == []
    assert "PINKSEA_MODELS_DIR" in KNOWN  # the GPU worker's own settings count too
    assert "PINKSEA_CDN_DOMAIN" in KNOWN


def test_check_environment_names_the_variable_of_a_bad_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PINKSEA_DB_POOL_SIZE", "ten")
    monkeypatch.setenv("PINKSEA_MODELS_DIR", "/models")
    problems = check_environment(GpuWorkerSettings)
    assert problems == [
        "PINKSEA_DB_POOL_SIZE: Input should be a valid integer, unable to parse string as an "
        "integer"
    ]


def test_check_environment_refuses_half_a_cdn_configuration(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PINKSEA_CDN_DOMAIN", "pinksea.example.com")  # without its key pair
    [problem] = check_environment()
    assert "PINKSEA_CLOUDFRONT_KEY_PAIR_ID" in problem


def test_local_needs_nothing_but_production_needs_every_deployment_setting() -> None:
    assert Settings(_env_file=None).deployment_problems() == []
    bare = Settings(_env_file=None, environment="production")
    problems = "\n".join(bare.deployment_problems())
    for name in (
        "PINKSEA_JWT_ISSUER is required",
        "PINKSEA_CDN_DOMAIN is required",
        "PINKSEA_STRIPE_API_KEY is still the local default",
        "PINKSEA_STRIPE_WEBHOOK_SECRET is still the local default",
        "PINKSEA_STRIPE_PRICE_IDS is still the local default",
        "PINKSEA_CHECKOUT_SUCCESS_URL must be an https:// URL",
        "PINKSEA_PERSONAL_DATA_KEK is still the local default",
    ):
        assert name in problems
    assert Settings(_env_file=None, **DEPLOYED).deployment_problems() == []  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"dev_jwt_enabled": True}, "PINKSEA_DEV_JWT_ENABLED must be false"),
        ({"stripe_price_ids": {"pro": "price_2"}}, "no price for ['starter', 'studio']"),
        ({"checkout_cancel_url": "http://pinksea.example.com/"}, "CANCEL_URL must be an https"),
    ],
)
def test_each_deployment_problem_is_named(change: dict[str, object], problem: str) -> None:
    settings = Settings(_env_file=None, **{**DEPLOYED, **change})  # type: ignore[arg-type]
    assert any(problem in p for p in settings.deployment_problems())


def test_the_api_refuses_to_start_on_a_local_default_in_production() -> None:
    with pytest.raises(RuntimeError, match="PINKSEA_JWT_ISSUER is required"):
        create_app(Settings(_env_file=None, environment="production"))


def test_every_command_refuses_an_unknown_name_before_it_starts() -> None:
    env = {"PATH": "/usr/bin:/bin", "PINKSEA_COGNITO_ISSUER": "https://issuer"}
    done = subprocess.run(
        [sys.executable, "-m", "cli", "dev-token", "--user", "alice"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "PINKSEA_COGNITO_ISSUER is not a setting" in done.stderr
    assert done.stdout == ""  # no token was printed


def test_the_cdn_domain_is_a_host_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PINKSEA_CDN_DOMAIN", "https://pinksea.example.com/")
    monkeypatch.setenv("PINKSEA_CLOUDFRONT_KEY_PAIR_ID", "K2JCJMDEHXQW5F")
    monkeypatch.setenv("PINKSEA_CLOUDFRONT_PRIVATE_KEY", "pem")
    assert check_environment() == [
        "PINKSEA_CDN_DOMAIN: Value error, a host name only, e.g. pinksea.example.com "
        "(no scheme, no path)"
    ]
