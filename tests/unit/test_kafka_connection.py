"""Connection options of every Kafka client: PLAINTEXT locally, TLS + IAM on MSK. No network."""

from __future__ import annotations

import base64
import os
import ssl
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.abc import AbstractTokenProvider
from aiokafka.admin import AIOKafkaAdminClient
from pydantic import ValidationError

from infra import kafka
from infra.kafka import MskIamTokenProvider, connection_kwargs, security_kwargs
from infra.settings import Settings

MSK = {
    "kafka_bootstrap_servers": "b-1.msk:9098,b-2.msk:9098",
    "kafka_security_protocol": "SASL_SSL",
    "kafka_sasl_mechanism": "OAUTHBEARER",
}


@pytest.fixture
def no_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> pytest.MonkeyPatch:
    """No ambient AWS configuration: region and credentials only from what a test sets."""
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name in list(os.environ):
        if name.startswith("PINKSEA_KAFKA_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return monkeypatch


def test_local_default_is_plaintext(no_aws_env: pytest.MonkeyPatch) -> None:
    kwargs = connection_kwargs(Settings(_env_file=None))  # type: ignore[call-arg]
    assert kwargs == {"bootstrap_servers": "127.0.0.1:9092", "security_protocol": "PLAINTEXT"}


def test_ssl_uses_a_verifying_context() -> None:
    kwargs = security_kwargs("b-1:9094", "SSL")
    ctx = kwargs["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert "sasl_mechanism" not in kwargs


def test_msk_iam_from_the_environment(no_aws_env: pytest.MonkeyPatch) -> None:
    no_aws_env.setenv("PINKSEA_KAFKA_BOOTSTRAP_SERVERS", MSK["kafka_bootstrap_servers"])
    no_aws_env.setenv("PINKSEA_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    no_aws_env.setenv("PINKSEA_KAFKA_SASL_MECHANISM", "OAUTHBEARER")
    no_aws_env.setenv("AWS_REGION", "eu-west-1")
    kwargs = connection_kwargs(Settings(_env_file=None))  # type: ignore[call-arg]
    assert kwargs["bootstrap_servers"] == "b-1.msk:9098,b-2.msk:9098"
    assert (kwargs["security_protocol"], kwargs["sasl_mechanism"]) == ("SASL_SSL", "OAUTHBEARER")
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext)
    provider = kwargs["sasl_oauth_token_provider"]
    assert isinstance(provider, AbstractTokenProvider)
    assert provider.region == "eu-west-1"


def test_region_setting_wins_over_the_process_region(no_aws_env: pytest.MonkeyPatch) -> None:
    no_aws_env.setenv("AWS_REGION", "eu-west-1")
    s = Settings(_env_file=None, **MSK, kafka_aws_region="ap-northeast-2")  # type: ignore[call-arg]
    assert connection_kwargs(s)["sasl_oauth_token_provider"].region == "ap-northeast-2"
    no_aws_env.delenv("AWS_REGION")
    s = Settings(_env_file=None, **MSK, s3_region="us-east-2")  # type: ignore[call-arg]
    assert s.kafka_region == "us-east-2"  # last resort: the region of the rest of the stack


def test_inconsistent_settings_are_refused(no_aws_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="go together"):
        Settings(_env_file=None, kafka_security_protocol="SASL_SSL")  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="go together"):
        Settings(_env_file=None, kafka_sasl_mechanism="OAUTHBEARER")  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        Settings(_env_file=None, kafka_security_protocol="SASL_PLAINTEXT")  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="exceeds"):
        Settings(_env_file=None, kafka_min_insync_replicas=2)  # type: ignore[call-arg]


def test_terraform_empty_strings_mean_unset(no_aws_env: pytest.MonkeyPatch) -> None:
    no_aws_env.setenv("PINKSEA_KAFKA_SASL_MECHANISM", "")
    no_aws_env.setenv("PINKSEA_KAFKA_AWS_REGION", "")
    no_aws_env.setenv("PINKSEA_CLOUDWATCH_ENDPOINT_URL", "")
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (s.kafka_sasl_mechanism, s.kafka_aws_region, s.cloudwatch_endpoint_url) == (
        None,
        None,
        None,
    )


def test_topics_take_replication_from_the_settings() -> None:
    spec = kafka.TopicSpec("pinksea.jobs.v1", 6, -1)
    assert spec.config(2) == {"retention.ms": "-1", "min.insync.replicas": "2"}
    s = Settings(  # type: ignore[call-arg]
        _env_file=None, kafka_replication_factor=3, kafka_min_insync_replicas=2
    )
    assert (s.kafka_replication_factor, s.kafka_min_insync_replicas) == (3, 2)


async def test_aiokafka_accepts_the_options(no_aws_env: pytest.MonkeyPatch) -> None:
    """Every client type is built with them (construction only: nothing connects)."""
    s = Settings(_env_file=None, **MSK, kafka_aws_region="eu-west-1")  # type: ignore[call-arg]
    producer = kafka.idempotent_producer(s)
    consumer = kafka.manual_consumer(s, "g", "pinksea.jobs.v1")
    admin = AIOKafkaAdminClient(**connection_kwargs(s))
    for client in (producer.client, consumer._client, admin._client):
        assert client._security_protocol == "SASL_SSL"
        assert client._sasl_mechanism == "OAUTHBEARER"
        assert isinstance(client._sasl_oauth_token_provider, MskIamTokenProvider)
    assert isinstance(producer, AIOKafkaProducer) and isinstance(consumer, AIOKafkaConsumer)
    await producer.stop()
    await consumer.stop()


def _decode(token: str) -> tuple[str, dict[str, str]]:
    url = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    parts = urlsplit(url)
    return parts.netloc, {k: v[0] for k, v in parse_qs(parts.query).items()}


async def test_token_is_signed_offline_from_static_credentials(
    no_aws_env: pytest.MonkeyPatch,
) -> None:
    no_aws_env.setenv("AWS_ACCESS_KEY_ID", "AKIDPINKSEATEST")
    no_aws_env.setenv("AWS_SECRET_ACCESS_KEY", "not-a-real-secret")
    provider = MskIamTokenProvider("ap-northeast-2")
    token = await provider.token()
    host, query = _decode(token)
    assert host == "kafka.ap-northeast-2.amazonaws.com"
    assert query["Action"] == "kafka-cluster:Connect"
    assert query["X-Amz-Credential"].startswith("AKIDPINKSEATEST/")
    assert "/ap-northeast-2/kafka-cluster/aws4_request" in query["X-Amz-Credential"]
    assert query["X-Amz-Expires"] == "900"
    assert len(query["X-Amz-Signature"]) == 64


async def test_token_is_reused_until_shortly_before_it_expires(
    no_aws_env: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    provider = MskIamTokenProvider("ap-northeast-2")
    clock = {"now": 1_000.0}

    def fake_generate() -> tuple[str, int]:
        calls.append("signed")
        return f"token-{len(calls)}", int((clock["now"] + 900) * 1000)

    no_aws_env.setattr(provider, "_generate", fake_generate)
    no_aws_env.setattr(kafka.time, "time", lambda: clock["now"])
    assert await provider.token() == "token-1"
    clock["now"] += 800  # 100 s left: still good
    assert await provider.token() == "token-1"
    clock["now"] += 50  # 50 s left: refreshed
    assert await provider.token() == "token-2"
    assert len(calls) == 2
