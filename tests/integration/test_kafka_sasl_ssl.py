"""Kafka over TLS + SCRAM-SHA-512, for real: a private broker started by infra/local/kafka.sh
with ``KAFKA_SASL_SSL_PORT``, reached only through ``infra.kafka.connection_kwargs`` (the path
MSK's TLS + IAM takes too).

The broker runs on free ports in a stack dir of this module's own, topic auto-creation off as on
MSK, and is stopped at the end; the developer's stack is never touched. Its jars are linked
from the shared stack when they match the pom (no Maven run); its CA is generated fresh.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import ssl
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError

from infra import aws_lag_metric, health
from infra.kafka import (
    TOPICS,
    connection_kwargs,
    ensure_topics,
    idempotent_producer,
    manual_consumer,
)
from infra.settings import Settings
from infra.topics import REPORTS_TOPIC

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "infra" / "local" / "kafka.sh"
POM = REPO / "infra" / "local" / "kafka" / "pom.xml"
START_TIMEOUT_S = 300  # a first run may resolve the jars with Maven
REFUSAL_TIMEOUT_S = 60.0  # a refused client gives up on its own well before this


@dataclass(frozen=True)
class SaslBroker:
    sasl_port: int
    user: str
    password: str
    ca_file: Path

    def settings(self, run: str, **overrides: Any) -> Settings:
        """What a process of the rehearsal reads from its PINKSEA_* environment."""
        values: dict[str, Any] = {
            "kafka_bootstrap_servers": f"127.0.0.1:{self.sasl_port}",
            "kafka_security_protocol": "SASL_SSL",
            "kafka_sasl_mechanism": "SCRAM-SHA-512",
            "kafka_sasl_username": self.user,
            "kafka_sasl_password": self.password,
            "kafka_ssl_cafile": str(self.ca_file),
            "kafka_topic_prefix": f"sasl{run}.",
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _link_shared_jars(stack_dir: Path) -> None:
    """Reuse the developer stack's broker jars when they were resolved from this very pom."""
    shared = Path(os.environ.get("PINKSEA_STACK_DIR", Path.home() / ".pinksea-stack"))
    libs = shared / "kafka" / "libs"
    want = hashlib.sha1(POM.read_bytes()).hexdigest()
    marker = libs / ".pom.sha1"
    if marker.is_file() and marker.read_text().strip() == want:
        (stack_dir / "kafka").mkdir(parents=True)
        (stack_dir / "kafka" / "libs").symlink_to(libs)


def _script(action: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), action],
        env=env,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
        check=False,
    )


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SaslBroker]:
    stack_dir = tmp_path_factory.mktemp("kafka-sasl-stack")
    _link_shared_jars(stack_dir)
    plain_port, controller_port, sasl_port = _free_ports(3)
    broker = SaslBroker(
        sasl_port=sasl_port,
        user="rehearsal",
        password=f"scram-{uuid.uuid4().hex}",
        ca_file=stack_dir / "kafka" / "tls" / "ca.pem",
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KAFKA_")},
        "PINKSEA_STACK_DIR": str(stack_dir),
        "KAFKA_PORT": str(plain_port),
        "KAFKA_CONTROLLER_PORT": str(controller_port),
        "KAFKA_SASL_SSL_PORT": str(sasl_port),
        "KAFKA_SCRAM_USER": broker.user,
        "KAFKA_SCRAM_PASSWORD": broker.password,
        "KAFKA_AUTO_CREATE_TOPICS": "false",  # as on MSK: ensure_topics must do it
        "KAFKA_HEAP": "256m",
        "PINKSEA_START_TIMEOUT": "120",
    }
    started = _script("start", env)
    try:
        if started.returncode != 0:
            pytest.fail(f"infra/local/kafka.sh start failed:\n{started.stderr}", pytrace=False)
        # The script names the CA file the rehearsal's clients need.
        assert f"CA file {broker.ca_file}" in started.stderr
        yield broker
    finally:
        _script("stop", env)


async def test_topics_idempotent_produce_and_group_consume(
    sasl_broker: SaslBroker, run_id: str
) -> None:
    settings = sasl_broker.settings(run_id)
    created = await ensure_topics(settings)
    assert sorted(created) == sorted(settings.topic(spec.name) for spec in TOPICS)
    assert await ensure_topics(settings) == []  # idempotent

    topic = settings.topic(REPORTS_TOPIC)
    sent = [uuid.uuid4().bytes for _ in range(3)]
    producer = idempotent_producer(settings)
    await producer.start()
    try:
        # The broker granted a producer id: idempotence is on, not silently dropped.
        assert producer._txn_manager is not None
        assert producer._txn_manager.producer_id >= 0
        for value in sent:
            await producer.send_and_wait(topic, value, key=b"one-partition")
    finally:
        await producer.stop()

    consumer = manual_consumer(settings, "sasl-probe", REPORTS_TOPIC)
    await consumer.start()
    try:
        received: list[bytes] = []
        while len(received) < len(sent):
            batch = await asyncio.wait_for(consumer.getmany(timeout_ms=1000), 60)
            received += [r.value for records in batch.values() for r in records]
        await consumer.commit()
        committed = {tp: await consumer.committed(tp) for tp in consumer.assignment()}
    finally:
        await consumer.stop()
    assert received == sent
    assert sum(offset or 0 for offset in committed.values()) == len(sent)

    # The lag metric reads the group through its own options: the same SCRAM path.
    conn = aws_lag_metric.KafkaConnection(
        settings.kafka_bootstrap_servers,
        "SASL_SSL",
        "SCRAM-SHA-512",
        sasl_username=sasl_broker.user,
        sasl_password=sasl_broker.password,
        ssl_cafile=str(sasl_broker.ca_file),
    )
    lags = await aws_lag_metric.collect_lag(conn, f"{settings.kafka_topic_prefix}sasl-probe")
    assert [(item.topic, item.lag) for item in lags] == [(topic, 0)]


async def test_doctor_round_trip_over_sasl_ssl(sasl_broker: SaslBroker, run_id: str) -> None:
    result = await health.check_kafka(sasl_broker.settings(run_id), timeout_s=30)
    assert result.ok, result.error


async def _admin_start(settings: Settings) -> None:
    admin = AIOKafkaAdminClient(**connection_kwargs(settings), request_timeout_ms=10_000)
    try:
        await asyncio.wait_for(admin.start(), REFUSAL_TIMEOUT_S)
        await admin.list_topics()
    finally:
        await admin.close()


async def _refusal(settings: Settings, caplog: pytest.LogCaptureFixture) -> str:
    """Why the broker turned the client away: aiokafka raises one "Unable to bootstrap" for
    any cause and logs the cause itself."""
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="aiokafka"), pytest.raises(KafkaConnectionError):
        await _admin_start(settings)
    return "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("aiokafka"))


async def test_a_wrong_password_is_refused(
    sasl_broker: SaslBroker, run_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    await _admin_start(sasl_broker.settings(run_id))  # the right one is let in
    wrong = sasl_broker.settings(run_id, kafka_sasl_password="not-the-password")
    assert "SaslAuthenticationFailed" in await _refusal(wrong, caplog)


async def test_a_client_without_the_ca_is_refused(
    sasl_broker: SaslBroker, run_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    """TLS verification is on: the system CAs do not vouch for the local broker."""
    system_cas = sasl_broker.settings(run_id, kafka_ssl_cafile=None)
    assert "CERTIFICATE_VERIFY_FAILED" in await _refusal(system_cas, caplog)


def test_the_broker_certificate_names_the_host(sasl_broker: SaslBroker) -> None:
    """What the clients' host-name check matches: 127.0.0.1 (and localhost), signed by ca.pem."""
    ctx = ssl.create_default_context(cafile=str(sasl_broker.ca_file))
    with (
        socket.create_connection(("127.0.0.1", sasl_broker.sasl_port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        peer = tls.getpeercert()
    assert peer is not None
    alt_names = peer["subjectAltName"]
    assert ("IP Address", "127.0.0.1") in alt_names and ("DNS", "localhost") in alt_names
