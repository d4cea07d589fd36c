"""The rehearsal's private stack and processes.

The stack is chaos's (chaos/stack.py: the infra/local scripts with ports and a stack dir of its
own) with the services production talks to besides: stripe-mock, the OpenID Connect provider,
and Kafka with its SASL_SSL listener (TLS with a local CA, SCRAM-SHA-512), topic auto-creation
off as on MSK. Each run starts from an empty broker and a fresh database.

The processes are chaos's supervisor (chaos/processes.py), each child with its own
environment: exactly its task's, plus what a container gets from its image and its role.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx

from chaos.stack import ChaosStack, StackError
from rehearsal.oidc import POOL

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCAL = REPO_ROOT / "infra" / "local"
SHARED_STACK = Path(os.environ.get("PINKSEA_STACK_DIR", Path.home() / ".pinksea-stack"))
MOTO_KEY, MOTO_SECRET = "pinksea", "pinksea-secret"  # moto (infra/local/aws.sh) takes any


def default_stack_dir() -> Path:
    return SHARED_STACK.with_name(SHARED_STACK.name + "-rehearsal")


@dataclass
class RehearsalStack(ChaosStack):
    stack_dir: Path = field(default_factory=default_stack_dir)
    # Below Linux's ephemeral range (32768-60999): a client's local port never takes one.
    pg_port: int = 30432
    redis_port: int = 30379
    kafka_port: int = 30092  # PLAINTEXT: the controller, the scripts' own checks
    kafka_controller_port: int = 30093
    s3_port: int = 30900  # SeaweedFS, its internal servers on 30901-30914
    aws_port: int = 30800  # moto: CloudWatch and SES
    s3_access_key_id: str = "pinksea-rehearsal"
    s3_secret_access_key: str = "rehearsal-s3-secret"
    services: tuple[str, ...] = ("postgres", "redis", "s3", "aws", "stripe_mock", "oidc", "kafka")
    kafka_sasl_ssl_port: int = 30094  # what every process connects to
    stripe_mock_port: int = 30111
    stripe_mock_https_port: int = 30112
    oidc_port: int = 30090
    scram_user: str = "pinksea-rehearsal"
    scram_password: str = "rehearsal-scram-secret"

    @property
    def database(self) -> str:
        return f"rehearsal_{self.run_id}"

    @property
    def kafka_ca_file(self) -> Path:
        return self.stack_dir / "kafka" / "tls" / "ca.pem"

    @property
    def aws_url(self) -> str:
        return f"http://127.0.0.1:{self.aws_port}"

    @property
    def oidc_url(self) -> str:
        return f"http://127.0.0.1:{self.oidc_port}"

    @property
    def oidc_issuer(self) -> str:
        return f"{self.oidc_url}/{POOL}"

    def script_env(self) -> dict[str, str]:
        return {
            **super().script_env(),
            "KAFKA_SASL_SSL_PORT": str(self.kafka_sasl_ssl_port),
            "KAFKA_SCRAM_USER": self.scram_user,
            "KAFKA_SCRAM_PASSWORD": self.scram_password,
            "KAFKA_AUTO_CREATE_TOPICS": "false",  # as on MSK: the processes create their topics
            "STRIPE_MOCK_PORT": str(self.stripe_mock_port),
            "STRIPE_MOCK_HTTPS_PORT": str(self.stripe_mock_https_port),
            "OIDC_PORT": str(self.oidc_port),
            "AWS_PORT": str(self.aws_port),
        }

    async def start(self) -> None:
        """From a clean slate: whatever a crashed run left running is stopped, the broker's
        log is emptied, then everything starts and the run's database is created."""
        await self.stop()
        shutil.rmtree(self.stack_dir / "kafka" / "data", ignore_errors=True)
        self.link_shared_builds()
        await super().start()
        import redis.asyncio as redis

        client = redis.from_url(f"redis://127.0.0.1:{self.redis_port}/0")
        try:
            await client.flushdb()  # this stack's own Redis: nothing from an earlier run
        finally:
            await client.aclose()

    def link_shared_builds(self) -> None:
        """Builds the developer stack already made (stripe-mock's Go build takes minutes on two
        cores; the Java classpaths are copies of ~/.m2): linked when they match, else each
        script builds its own."""
        shared_bin, own_bin = SHARED_STACK / "bin", self.stack_dir / "bin"
        own_bin.mkdir(parents=True, exist_ok=True)
        for binary in shared_bin.glob("stripe-mock-*") if shared_bin.is_dir() else ():
            target = own_bin / binary.name
            if not target.exists():
                target.symlink_to(binary)
        for libs, pom in (("kafka/libs", "kafka/pom.xml"), ("oidc/libs", "oidc/pom.xml")):
            shared, own = SHARED_STACK / libs, self.stack_dir / libs
            want = hashlib.sha1((LOCAL / pom).read_bytes()).hexdigest()
            if own.exists() or _marker(shared) != want:
                continue
            own.parent.mkdir(parents=True, exist_ok=True)
            own.symlink_to(shared)


def _marker(libs: Path) -> str:
    with contextlib.suppress(OSError):
        return (libs / ".pom.sha1").read_text().strip()
    return ""


# ------------------------------------------------------------------------- containers


def container_base_env(run_dir: Path) -> dict[str, str]:
    """What a process has besides its task's PINKSEA_* entries: the image's basics, and the
    role's AWS credentials (moto takes any), which boto3's default chain finds in a task."""
    base = {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL", "TZ") if k in os.environ}
    base.update(
        HOME=os.environ.get("HOME", str(run_dir)),
        TMPDIR=os.environ.get("TMPDIR", "/tmp"),
        AWS_ACCESS_KEY_ID=MOTO_KEY,
        AWS_SECRET_ACCESS_KEY=MOTO_SECRET,
        AWS_EC2_METADATA_DISABLED="true",
        PYTHONUNBUFFERED="1",
    )
    return base


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_until(
    what: str, probe: Callable[[], Awaitable[bool]], timeout_s: float, every_s: float = 0.5
) -> float:
    """Poll ``probe`` until it is true; the seconds it took. StackError past ``timeout_s``."""
    started = time.monotonic()
    while True:
        with contextlib.suppress(httpx.TransportError, OSError):
            if await probe():
                return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            raise StackError(f"{what}: not within {timeout_s:.0f}s")
        await asyncio.sleep(every_s)


# ------------------------------------------------------------------- Stripe's recorder


@dataclass(frozen=True)
class StripeRequest:
    method: str
    path: str
    form: dict[str, list[str]]
    authorization: str


@dataclass
class StripeRecorder:
    """The Stripe endpoint the API is given: it keeps each request (what stripe-mock cannot
    tell: which price a Checkout asked for, with which key) and forwards it to stripe-mock."""

    upstream: str
    port: int = field(default_factory=free_port)
    requests: list[StripeRequest] = field(default_factory=list)
    _server: Any = None
    _task: asyncio.Task[None] | None = None
    _http: httpx.AsyncClient | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http" and self._http is not None
        body = b""
        while True:  # bounded by the API's own request size
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"] if k != b"host"}
        self.requests.append(
            StripeRequest(
                method=scope["method"],
                path=scope["path"],
                form=parse_qs(body.decode()),
                authorization=headers.get("authorization", ""),
            )
        )
        query = scope.get("query_string", b"").decode()
        upstream = await self._http.request(
            scope["method"],
            f"{self.upstream}{scope['path']}" + (f"?{query}" if query else ""),
            content=body,
            headers=headers,
        )
        await send(
            {
                "type": "http.response.start",
                "status": upstream.status_code,
                "headers": [
                    (k.encode(), v.encode())
                    for k, v in upstream.headers.items()
                    if k.lower() not in ("content-length", "transfer-encoding", "content-encoding")
                ],
            }
        )
        await send({"type": "http.response.body", "body": upstream.content})

    async def start(self) -> None:
        import uvicorn

        self._http = httpx.AsyncClient(timeout=20)
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="off",
            interface="asgi3",  # a bound method: uvicorn's guess would be ASGI 2
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())

        async def started() -> bool:
            return bool(self._server.started)

        await wait_until("the Stripe recorder", started, 10, 0.05)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            await asyncio.wait_for(self._task, 10)
        if self._http is not None:
            await self._http.aclose()
