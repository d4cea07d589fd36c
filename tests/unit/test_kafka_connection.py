"""Connection options of every Kafka client: PLAINTEXT locally, TLS + IAM on MSK, TLS + SCRAM
with a private CA in the rehearsal. No network."""

from __future__ import annotations

import base64
import datetime
import os
import re
import ssl
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.abc import AbstractTokenProvider
from aiokafka.admin import AIOKafkaAdminClient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import ValidationError

from infra import aws_lag_metric, kafka
from infra.kafka import MskIamTokenProvider, connection_kwargs, security_kwargs
from infra.settings import Settings

# Settings' keyword arguments (the Literal fields as plain strings, which pydantic checks).
MSK: dict[str, Any] = {
    "kafka_bootstrap_servers": "b-1.msk:9098,b-2.msk:9098",
    "kafka_security_protocol": "SASL_SSL",
    "kafka_sasl_mechanism": "OAUTHBEARER",
}
SCRAM: dict[str, Any] = {
    "kafka_bootstrap_servers": "127.0.0.1:39094",
    "kafka_security_protocol": "SASL_SSL",
    "kafka_sasl_mechanism": "SCRAM-SHA-512",
    "kafka_sasl_username": "pinksea",
    "kafka_sasl_password": "pinksea-scram-secret",
}
CA_NAME = "Pinksea unit-test CA"
_Subject = tuple[tuple[tuple[str, str], ...], ...]


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A self-signed CA certificate in PEM (what infra/local/kafka.sh writes as ca.pem)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(path)


def _trusted_names(ctx: ssl.SSLContext) -> set[str]:
    # A subject is a tuple of relative distinguished names, each a tuple of (name, value) pairs.
    subjects = [cast(_Subject, cert["subject"]) for cert in ctx.get_ca_certs()]
    return {value for subject in subjects for rdn in subject for _, value in rdn}


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
    kwargs = connection_kwargs(Settings(_env_file=None))
    assert kwargs == {"bootstrap_servers": "127.0.0.1:9092", "security_protocol": "PLAINTEXT"}


def test_ssl_uses_a_verifying_context() -> None:
    kwargs = security_kwargs("b-1:9094", "SSL")
    ctx = kwargs["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert "sasl_mechanism" not in kwargs


def test_scram_with_a_private_ca(no_aws_env: pytest.MonkeyPatch, ca_file: str) -> None:
    s = Settings(_env_file=None, **SCRAM, kafka_ssl_cafile=ca_file)
    kwargs = connection_kwargs(s)
    assert (kwargs["security_protocol"], kwargs["sasl_mechanism"]) == ("SASL_SSL", "SCRAM-SHA-512")
    # aiokafka names the user/password options "plain" for SCRAM too.
    assert kwargs["sasl_plain_username"] == "pinksea"
    assert kwargs["sasl_plain_password"] == "pinksea-scram-secret"
    assert "sasl_oauth_token_provider" not in kwargs
    ctx = kwargs["ssl_context"]
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    # That CA alone: a broker certificate from any public CA would not do.
    assert _trusted_names(ctx) == {CA_NAME}


def test_scram_from_the_environment(no_aws_env: pytest.MonkeyPatch, ca_file: str) -> None:
    for name, value in SCRAM.items():
        no_aws_env.setenv(f"PINKSEA_{name.upper()}", value)
    no_aws_env.setenv("PINKSEA_KAFKA_SSL_CAFILE", ca_file)
    kwargs = connection_kwargs(Settings(_env_file=None))
    assert kwargs["sasl_plain_password"] == "pinksea-scram-secret"
    assert _trusted_names(kwargs["ssl_context"]) == {CA_NAME}


def test_without_a_cafile_the_system_cas_are_trusted() -> None:
    kwargs = security_kwargs(
        "b-1:9096", "SASL_SSL", "SCRAM-SHA-512", sasl_username="u", sasl_password="p"
    )
    ctx = kwargs["ssl_context"]
    assert CA_NAME not in _trusted_names(ctx)
    assert ctx.cert_store_stats() == ssl.create_default_context().cert_store_stats()


def test_scram_needs_user_and_password(no_aws_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="PINKSEA_KAFKA_SASL_USERNAME"):
        Settings(_env_file=None, **{**SCRAM, "kafka_sasl_password": None})
    with pytest.raises(ValueError, match="user name and a password"):
        security_kwargs("b-1:9096", "SASL_SSL", "SCRAM-SHA-512", sasl_username="pinksea")


def test_a_missing_cafile_is_named(tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere" / "ca.pem")
    with pytest.raises(ValueError, match=re.escape(missing)):
        security_kwargs("b-1:9094", "SSL", ssl_cafile=missing)


def test_lag_metric_takes_the_same_scram_options(
    no_aws_env: pytest.MonkeyPatch, ca_file: str
) -> None:
    """``pinksea lag-metric`` builds its clients from its own options: the same SCRAM path,
    the password from the environment only (never a command-line argument)."""
    no_aws_env.setenv("PINKSEA_KAFKA_SASL_PASSWORD", "pinksea-scram-secret")
    args = aws_lag_metric.parse_args(
        ["--bootstrap-servers", "127.0.0.1:39094", "--security-protocol", "SASL_SSL",
         "--sasl-mechanism", "SCRAM-SHA-512", "--sasl-username", "pinksea",
         "--ssl-cafile", ca_file, "--dry-run"]
    )  # fmt: skip
    conn = aws_lag_metric.KafkaConnection(
        args.bootstrap_servers,
        args.security_protocol,
        args.sasl_mechanism,
        sasl_username=args.sasl_username,
        sasl_password=args.sasl_password,
        ssl_cafile=args.ssl_cafile,
    )
    kwargs = conn.client_kwargs()
    assert (kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == (
        "pinksea",
        "pinksea-scram-secret",
    )
    assert _trusted_names(kwargs["ssl_context"]) == {CA_NAME}
    assert "pinksea-scram-secret" not in repr(conn)


def test_msk_iam_from_the_environment(no_aws_env: pytest.MonkeyPatch) -> None:
    no_aws_env.setenv("PINKSEA_KAFKA_BOOTSTRAP_SERVERS", MSK["kafka_bootstrap_servers"])
    no_aws_env.setenv("PINKSEA_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    no_aws_env.setenv("PINKSEA_KAFKA_SASL_MECHANISM", "OAUTHBEARER")
    no_aws_env.setenv("AWS_REGION", "eu-west-1")
    kwargs = connection_kwargs(Settings(_env_file=None))
    assert kwargs["bootstrap_servers"] == "b-1.msk:9098,b-2.msk:9098"
    assert (kwargs["security_protocol"], kwargs["sasl_mechanism"]) == ("SASL_SSL", "OAUTHBEARER")
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext)
    provider = kwargs["sasl_oauth_token_provider"]
    assert isinstance(provider, AbstractTokenProvider)
    assert provider.region == "eu-west-1"


def test_region_setting_wins_over_the_process_region(no_aws_env: pytest.MonkeyPatch) -> None:
    no_aws_env.setenv("AWS_REGION", "eu-west-1")
    s = Settings(_env_file=None, **MSK, kafka_aws_region="ap-northeast-2")
    assert connection_kwargs(s)["sasl_oauth_token_provider"].region == "ap-northeast-2"
    no_aws_env.delenv("AWS_REGION")
    s = Settings(_env_file=None, **MSK, s3_region="us-east-2")
    assert s.kafka_region == "us-east-2"  # last resort: the region of the rest of the stack


def test_inconsistent_settings_are_refused(no_aws_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="go together"):
        Settings(_env_file=None, kafka_security_protocol="SASL_SSL")
    with pytest.raises(ValidationError, match="go together"):
        Settings(_env_file=None, kafka_sasl_mechanism="OAUTHBEARER")
    with pytest.raises(ValidationError):
        Settings(_env_file=None, kafka_security_protocol="SASL_PLAINTEXT")
    with pytest.raises(ValidationError, match="exceeds"):
        Settings(_env_file=None, kafka_min_insync_replicas=2)


def test_terraform_empty_strings_mean_unset(no_aws_env: pytest.MonkeyPatch) -> None:
    no_aws_env.setenv("PINKSEA_KAFKA_SASL_MECHANISM", "")
    no_aws_env.setenv("PINKSEA_KAFKA_AWS_REGION", "")
    no_aws_env.setenv("PINKSEA_CLOUDWATCH_ENDPOINT_URL", "")
    s = Settings(_env_file=None)
    assert (s.kafka_sasl_mechanism, s.kafka_aws_region, s.cloudwatch_endpoint_url) == (
        None,
        None,
        None,
    )


def test_topics_take_replication_from_the_settings() -> None:
    spec = kafka.TopicSpec("pinksea.jobs.v1", 6, -1)
    assert spec.config(2) == {"retention.ms": "-1", "min.insync.replicas": "2"}
    s = Settings(_env_file=None, kafka_replication_factor=3, kafka_min_insync_replicas=2)
    assert (s.kafka_replication_factor, s.kafka_min_insync_replicas) == (3, 2)


async def test_aiokafka_accepts_the_options(no_aws_env: pytest.MonkeyPatch) -> None:
    """Every client type is built with them (construction only: nothing connects)."""
    s = Settings(_env_file=None, **MSK, kafka_aws_region="eu-west-1")
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


async def test_aiokafka_accepts_the_scram_options(
    no_aws_env: pytest.MonkeyPatch, ca_file: str
) -> None:
    s = Settings(_env_file=None, **SCRAM, kafka_ssl_cafile=ca_file)
    producer = kafka.idempotent_producer(s)
    consumer = kafka.manual_consumer(s, "g", "pinksea.jobs.v1")
    admin = AIOKafkaAdminClient(**connection_kwargs(s))
    for client in (producer.client, consumer._client, admin._client):
        assert (client._security_protocol, client._sasl_mechanism) == (
            "SASL_SSL",
            "SCRAM-SHA-512",
        )
        assert client._sasl_plain_username == "pinksea"
        assert client._sasl_plain_password == "pinksea-scram-secret"
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
