"""Operations: liveness, readiness (every backing service), Prometheus metrics.

``/metrics`` is on the API's own port only while ``api_metrics_port`` is 0 (locally);
deployed, ``pinksea api --metrics-port`` serves it on a port of its own that the load
balancer does not forward (:func:`serve_metrics`), so the Internet never reads it.

Readiness is asked every few seconds by the load balancer, so its probes are light and use
this process's own pools and clients: the full round trips of infra/health.py (a Kafka topic
created and deleted, an S3 object written) belong to ``pinksea doctor``. The API itself never
talks to Kafka (the relay does), so for Kafka a broker that accepts connections is enough.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
    start_http_server,
)
from pydantic import BaseModel

from api import problems as p
from api.deps import ServicesDep
from api.problems import problem_response, problem_responses
from api.services import Services
from infra.health import describe_error

router = APIRouter(tags=["operations"])
metrics_router = APIRouter(tags=["operations"])  # on the API's port only when it has no other

PROBE_TIMEOUT_S = 2.0


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    checks: dict[str, str]  # service -> "ok" or what failed


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness: PostgreSQL, Kafka, Redis and S3 answer",
    responses=problem_responses(503),
)
async def readyz(svc: ServicesDep) -> Response:
    probes: dict[str, Callable[[Services], Awaitable[None]]] = {
        "postgres": _postgres,
        "redis": _redis,
        "kafka": _kafka,
        "s3": _s3,
    }
    results = await asyncio.gather(*(_probe(f, svc) for f in probes.values()))
    checks = dict(zip(probes, results, strict=True))
    if all(v == "ok" for v in checks.values()):
        return JSONResponse(Readiness(status="ready", checks=checks).model_dump())
    failed = ", ".join(k for k, v in checks.items() if v != "ok")
    return problem_response(
        p.UNAVAILABLE,
        f"Not ready: {failed} did not answer; the load balancer should route elsewhere.",
        instance="/readyz",
        headers={"Retry-After": "5"},
        checks=checks,
    )


@metrics_router.get(
    "/metrics",
    summary="Prometheus metrics of this process (all workers under multiprocess mode)",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics() -> Response:
    return Response(generate_latest(_registry()), media_type=CONTENT_TYPE_LATEST)


def _registry() -> CollectorRegistry:
    """This process's metrics, or every worker's under multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


def serve_metrics(port: int, *, local_only: bool) -> None:
    """``/metrics`` on ``port`` from a thread of this process, apart from the API: what
    ``pinksea api --metrics-port`` starts before uvicorn. With one worker the API runs in this
    process; with more, this process reads every worker's files (multiprocess mode)."""
    start_http_server(port, addr="127.0.0.1" if local_only else "0.0.0.0", registry=_registry())


async def _probe(check: Callable[[Services], Awaitable[None]], svc: Services) -> str:
    started = time.monotonic()
    try:
        await asyncio.wait_for(check(svc), PROBE_TIMEOUT_S)
    except TimeoutError:
        return f"timed out after {time.monotonic() - started:.1f} s"
    except Exception as e:  # a probe reports any failure as data
        return describe_error(e)[:200]
    return "ok"


async def _postgres(svc: Services) -> None:
    await svc.pool.fetchval("SELECT 1")


async def _redis(svc: Services) -> None:
    await svc.redis.ping()


async def _kafka(svc: Services) -> None:
    errors = []
    for server in svc.settings.kafka_bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            _, writer = await asyncio.open_connection(host or "127.0.0.1", int(port))
        except OSError as e:
            errors.append(repr(e))
            continue
        writer.close()
        return  # one reachable broker is enough to bootstrap
    raise ConnectionError("; ".join(errors) or "no bootstrap servers configured")


async def _s3(svc: Services) -> None:
    await svc.blocking(svc.s3.head_bucket, Bucket=svc.settings.s3_bucket)
