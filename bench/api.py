"""bench.api: what the REST API costs on top of the command side and the read models.

1. Accepted ``POST /v1/jobs`` per second over HTTP (``pinksea api`` under uvicorn, real stack:
   JWT check, rate limit in Redis, storage query, the Application on a worker thread) against
   the same submissions made through the Application directly, in this run, with the same
   number of concurrent writers. Target: HTTP >= 0.5x direct.
2. ``GET /v1/me/balance`` latency, p50/p99, with the Redis balance cache and without it.
3. The framework's own floor: a plain FastAPI JSON route and a bare Starlette route.

    python -m bench.api [--quick]

Every server is its own uvicorn process on this machine; the client is this process (httpx,
one connection per concurrent writer). The last line printed is the JSON summary (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psycopg
from rich.console import Console
from rich.table import Table

from api.auth import sign_dev_token
from domain.application import PinkseaApplication
from domain.jobs import JobParameters
from eventstore.persistence import event_store_env
from infra.settings import Settings, get_settings

TARGET_RATIO = 0.5
JOBS_PER_USER = 8  # below the trial plan's open-job limit: every submission is accepted
REPO = Path(__file__).resolve().parents[1]
BODY = {"model": "tiny-sd", "prompt": "a lighthouse at dawn", "steps": 4, "width": 64, "height": 64}
PARAMS = JobParameters(**BODY)


# ---------------------------------------------------------------------- floor apps (uvicorn)


def fastapi_floor() -> object:
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict[str, str]:
        return {"status": "ok"}

    return app


def starlette_floor() -> object:
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def ping(request: object) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[Route("/ping", ping)])


# ------------------------------------------------------------------------------- servers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    name: str
    url: str
    proc: subprocess.Popen[bytes]


def _start(name: str, factory: str, env: dict[str, str], workers: int = 1) -> Server:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", factory, "--factory", "--port", str(port),
         "--no-access-log", "--log-level", "warning", "--workers", str(workers)],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return Server(name, f"http://127.0.0.1:{port}", proc)


def _wait_ready(servers: list[Server], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    for s in servers:
        path = "/ping" if "floor" in s.name else "/healthz"
        while True:
            if s.proc.poll() is not None:
                raise RuntimeError(f"server {s.name} exited with {s.proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(s.url + path, timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"server {s.name} did not start")
            time.sleep(0.1)


@contextlib.contextmanager
def servers(settings: Settings, key_path: str, workers: int) -> Iterator[dict[str, Server]]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PINKSEA_")}
    env = {
        **base,
        "PINKSEA_DATABASE_URL": settings.database_url,
        "PINKSEA_REDIS_KEY_PREFIX": settings.redis_key_prefix,
        "PINKSEA_DEV_JWT_ENABLED": "true",
        "PINKSEA_DEV_JWT_KEY_PATH": key_path,
        "PINKSEA_RATE_LIMIT_MULTIPLIER": "1000",  # counted in Redis, never refusing
        "PINKSEA_DB_POOL_SIZE": str(settings.db_pool_size),
        "PINKSEA_LOG_LEVEL": "WARNING",
    }
    pool = settings.db_pool_size  # as many connections as the direct writers have
    started = [
        _start("api (cache)", "api.app:create_app_from_env", env),
        _start("api (no cache)", "api.app:create_app_from_env",
               {**env, "PINKSEA_BALANCE_CACHE_TTL_S": "0"}),
        _start("floor fastapi", "bench.api:fastapi_floor", base),
        _start("floor starlette", "bench.api:starlette_floor", base),
    ]  # fmt: skip
    if workers > 1:
        started.append(
            _start(f"api ({workers} workers)", "api.app:create_app_from_env",
                   {**env, "PINKSEA_DB_POOL_SIZE": str(max(1, pool // workers))}, workers)
        )  # fmt: skip
    try:
        _wait_ready(started)
        yield {s.name: s for s in started}
    finally:
        for s in started:
            s.proc.terminate()
        for s in started:
            try:
                s.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                s.proc.kill()


# --------------------------------------------------------------------------- submissions


def _users(tag: str, writers: int, per_writer: int) -> list[list[str]]:
    users_per_writer = -(-per_writer // JOBS_PER_USER)
    return [[f"bench-{tag}-{w}-{u}" for u in range(users_per_writer)] for w in range(writers)]


def direct_rate(app: PinkseaApplication, writers: int, per_writer: int) -> float:
    users = _users(f"d{uuid.uuid4().hex[:6]}", writers, per_writer)
    at = datetime.now(UTC)
    for batch in users:
        for user in batch:
            app.register_user(user, at)
    done = [0] * writers
    barrier = threading.Barrier(writers + 1)

    def work(w: int) -> None:
        barrier.wait()
        for i in range(per_writer):
            user = users[w][i // JOBS_PER_USER]
            result = app.submit_job(
                user, idempotency_key=f"k{i}", params=PARAMS, at=datetime.now(UTC)
            )
            done[w] += result.status == "accepted"

    threads = [threading.Thread(target=work, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    return sum(done) / (time.perf_counter() - started)


class _Connection:
    """A minimal HTTP/1.1 keep-alive client: the load generator shares this machine's CPUs
    with the server, so it must cost as little as possible (httpx costs about as much per
    request as the server's own framework)."""

    def __init__(self, url: str) -> None:
        self.host, _, port = url.removeprefix("http://").partition(":")
        self.port = int(port)

    async def __aenter__(self) -> _Connection:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.writer.close()

    async def request(self, method: str, path: str, headers: dict[str, str], body: bytes) -> int:
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        head += f"Content-Length: {len(body)}\r\n\r\n"
        self.writer.write(head.encode() + body)
        status_line = await self.reader.readuntil(b"\r\n")
        length = 0
        while (line := await self.reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        await self.reader.readexactly(length)
        return int(status_line.split(b" ", 2)[1])


async def http_rate(url: str, settings: Settings, writers: int, per_writer: int) -> float:
    users = _users(f"h{uuid.uuid4().hex[:6]}", writers, per_writer)
    tokens = {u: sign_dev_token(settings, u) for batch in users for u in batch}
    body = json.dumps(BODY).encode()
    accepted = [0] * writers

    async def sign_up(w: int, conn: _Connection) -> None:
        for user in users[w]:
            await conn.request("GET", "/v1/me", _auth(tokens[user]), b"")

    async def work(w: int, conn: _Connection) -> None:
        for i in range(per_writer):
            user = users[w][i // JOBS_PER_USER]
            headers = {
                **_auth(tokens[user]),
                "Idempotency-Key": f"k{i}",
                "Content-Type": "application/json",
            }
            accepted[w] += await conn.request("POST", "/v1/jobs", headers, body) == 202

    async with contextlib.AsyncExitStack() as stack:
        conns = [await stack.enter_async_context(_Connection(url)) for _ in range(writers)]
        # Sign-up (the first request) is not a submission: done before the clock starts.
        await asyncio.gather(*(sign_up(w, c) for w, c in enumerate(conns)))
        started = time.perf_counter()
        await asyncio.gather(*(work(w, c) for w, c in enumerate(conns)))
        return sum(accepted) / (time.perf_counter() - started)


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# ------------------------------------------------------------------------------- latency


@dataclass
class Latency:
    name: str
    p50_ms: float
    p99_ms: float
    samples: int


async def latency(
    name: str, url: str, path: str, samples: int, headers: Callable[[int], dict[str, str]]
) -> Latency:
    """Sequential requests on one kept-alive connection; the first few warm up."""
    times: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        for i in range(samples + 20):
            started = time.perf_counter()
            r = await client.get(path, headers=headers(i))
            elapsed = time.perf_counter() - started
            if r.status_code != 200:
                raise RuntimeError(f"{name}: {r.status_code} {r.text[:200]}")
            if i >= 20:
                times.append(elapsed * 1000)
    qs = statistics.quantiles(times, n=100, method="inclusive")
    return Latency(name, statistics.median(times), qs[98], len(times))


# ---------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests (< 60 s)")
    parser.add_argument("--writers", type=int, default=8, help="concurrent submitters")
    parser.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="uvicorn workers of the headline API server (default: one per CPU, at most 4)",
    )
    args = parser.parse_args()
    writers, workers = args.writers, args.workers
    submissions = 640 if args.quick else 2400
    samples = 300 if args.quick else 3000
    rounds = 2 if args.quick else 3
    per_writer = submissions // writers

    base = get_settings()
    dbname = f"pinksea_bench_api_{os.getpid()}"
    admin = psycopg.connect(base.database_url, autocommit=True)
    admin.execute(f'CREATE DATABASE "{dbname}"')
    key_path = str(Path(tempfile.mkdtemp(prefix="pinksea-bench-")) / "dev-jwt.pem")
    settings = base.model_copy(
        update={
            "database_url": base.database_url.rsplit("/", 1)[0] + f"/{dbname}",
            "redis_key_prefix": f"bench{uuid.uuid4().hex[:6]}:",
            "db_pool_size": writers,
            "dev_jwt_key_path": key_path,
        }
    )
    rates: dict[str, float] = {}
    try:
        with servers(settings, key_path, workers) as running:
            http_servers = ["api (cache)"] + ([f"api ({workers} workers)"] if workers > 1 else [])
            app = PinkseaApplication(env=event_store_env(settings.database_url, pool_size=writers))
            try:
                # Alternating rounds, best of each: this machine is shared, and a burst of
                # someone else's load should not decide the ratio.
                for _ in range(rounds):
                    rate = direct_rate(app, writers, per_writer)
                    rates["direct"] = max(rates.get("direct", 0.0), rate)
                    for name in http_servers:
                        url = running[name].url
                        rate = asyncio.run(http_rate(url, settings, writers, per_writer))
                        rates[name] = max(rates.get(name, 0.0), rate)
                lat = asyncio.run(_latencies(app, settings, running, samples))
            finally:
                app.close()
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        admin.close()

    direct = rates["direct"]
    headline = http_servers[-1]
    http = rates[headline]
    console = Console()
    table = Table(
        title=f"bench.api: {submissions} submissions, best of {rounds} rounds, {writers} "
        f"concurrent writers (= database connections), {os.cpu_count()} CPUs"
    )
    for col in ("path", "accepted submissions/s", "ratio to direct"):
        table.add_column(col, justify="right")
    table.add_row("Application directly (1 process)", f"{direct:.0f}", "1.00")
    for name in http_servers:
        label = "POST /v1/jobs, " + ("1 worker" if name == "api (cache)" else name[5:-1])
        table.add_row(label, f"{rates[name]:.0f}", f"{rates[name] / direct:.2f}")
    console.print(table)
    lat_table = Table(title=f"latency, {samples} sequential requests each, 1 worker")
    for col in ("request", "p50 ms", "p99 ms"):
        lat_table.add_column(col, justify="right")
    for entry in lat:
        lat_table.add_row(entry.name, f"{entry.p50_ms:.2f}", f"{entry.p99_ms:.2f}")
    console.print(lat_table)
    print(
        json.dumps(
            {
                "name": "api",
                "unit": "accepted submissions/s",
                "value": round(http, 1),
                "baseline": round(direct, 1),
                "ratio": round(http / direct, 3),
                "target": TARGET_RATIO,
                "ok": http / direct >= TARGET_RATIO,
            }
        )
    )


async def _latencies(
    app: PinkseaApplication, settings: Settings, running: dict[str, Server], samples: int
) -> list[Latency]:
    from tests.api.project_now import project_now  # the projections, applied in-process

    users = [f"bal-{uuid.uuid4().hex[:6]}-{i}" for i in range(10)]
    at = datetime.now(UTC)
    for user in users:
        app.register_user(user, at)
        app.submit_job(user, idempotency_key="one", params=PARAMS, at=at)
    await project_now(app, settings.database_url, start=1)
    tokens = [sign_dev_token(settings, u) for u in users]

    def by_user(i: int) -> dict[str, str]:
        return _auth(tokens[i % len(tokens)])

    out = []
    for name, label in (("api (cache)", "Redis cache"), ("api (no cache)", "no cache")):
        out.append(
            await latency(f"GET /v1/me/balance, {label}", running[name].url,
                          "/v1/me/balance", samples, by_user)
        )  # fmt: skip
    out.append(
        await latency("GET /healthz (Pinksea app)", running["api (cache)"].url, "/healthz",
                      samples, lambda i: {})
    )  # fmt: skip
    for name in ("floor fastapi", "floor starlette"):
        out.append(await latency(f"GET /ping, {name}", running[name].url, "/ping", samples,
                                 lambda i: {}))  # fmt: skip
    return out


if __name__ == "__main__":
    main()
