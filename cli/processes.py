"""Every long-running process, each its own ``pinksea`` subcommand (what production runs, one
per container): the API, the relay, the projections, the scheduler, the settler, the expiry
clock, the notifier, the webhook deliverer, the GPU worker and the lag-metric sidecar.

Which of them run, how many, and on which ``/metrics`` port (the defaults below) is declared
once, in cli/topology.py; each is configured by the ``PINKSEA_*`` settings only.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import tempfile

import typer

from cli.app import PROCESSES_PANEL, app
from cli.runtime import prepare, run_process
from cli.topology import metrics_port as default_port
from eventstore.persistence import event_store_env
from infra import aws_lag_metric
from infra.db import ConnectionBounds, create_pool
from infra.settings import Settings, get_settings
from infra.topics import GPU_TIERS

METRICS_HELP = "Port of /metrics (0: none)."


def _metrics_port(name: str, envvar: str | None = None) -> int:
    """The ``--metrics-port`` option of ``pinksea NAME``, defaulting to the topology's port."""
    value: int = typer.Option(default_port(name), envvar=envvar, help=METRICS_HELP)
    return value


@app.command(rich_help_panel=PROCESSES_PANEL)
def api(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (0.0.0.0: all)."),
    port: int = typer.Option(default_port("api"), help="Port to listen on."),
    workers: int = typer.Option(1, min=1, help="Worker processes (each with its own pools)."),
    metrics_port: int = typer.Option(
        0,
        envvar="PINKSEA_API_METRICS_PORT",
        help="Serve /metrics on this port, apart from the API (0: on --port).",
    ),
) -> None:
    """Serve the REST API (/v1, /docs, /healthz, /readyz, /metrics)."""
    import uvicorn

    # The app reads it too (PINKSEA_API_METRICS_PORT): no /metrics on --port when it is set.
    os.environ["PINKSEA_API_METRICS_PORT"] = str(metrics_port)
    get_settings.cache_clear()
    problems = get_settings().deployment_problems()
    if problems:
        typer.echo(f"pinksea api: not deployable ({get_settings().environment}):", err=True)
        for problem in problems:
            typer.echo(f"  - {problem}", err=True)
        raise typer.Exit(2)
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # /metrics must add up every worker's counters, whichever worker answers.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="pinksea-metrics-")
    if metrics_port:
        from api.routers.ops import serve_metrics

        serve_metrics(metrics_port, local_only=get_settings().metrics_local_only)
    uvicorn.run(
        "api.app:create_app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=None,  # structured logs from infra.logging
        access_log=False,  # requests are counted in /metrics instead
        # The app reads X-Forwarded-* itself, from PINKSEA_FORWARDED_ALLOW_IPS (api/app.py).
        proxy_headers=False,
        timeout_graceful_shutdown=10,
    )


@app.command(rich_help_panel=PROCESSES_PANEL)
def relay(metrics_port: int = _metrics_port("relay")) -> None:
    """Publish every stored event to Kafka, in order, losing nothing."""
    from eventstore.relay import Relay

    async def main(settings: Settings, stop: asyncio.Event) -> None:
        await prepare(settings)
        pool = await create_pool(settings, max_size=3)
        try:
            await Relay(settings, pool).run(stop)
        finally:
            await pool.close()

    run_process("relay", main, metrics_port)


@app.command(rich_help_panel=PROCESSES_PANEL)
def project(
    only: list[str] = typer.Option([], help="Run only these projections (repeatable)."),
    metrics_port: int = _metrics_port("project"),
) -> None:
    """Consume the domain topics into the read models (exactly-once effects)."""
    from projections.registry import ALL_PROJECTIONS, get_projection
    from projections.runner import LiveProjectionRunner

    chosen = [get_projection(n) for n in only] if only else list(ALL_PROJECTIONS)

    async def main(settings: Settings, stop: asyncio.Event) -> None:
        from projections.gauges import run_gauges

        await prepare(settings)
        pool = await create_pool(settings)
        try:
            await asyncio.gather(
                *(LiveProjectionRunner(settings, pool, p).run(stop) for p in chosen),
                run_gauges(settings, pool, stop),  # business gauges, consumer lag
            )
        finally:
            await pool.close()

    run_process("project", main, metrics_port)


@app.command(rich_help_panel=PROCESSES_PANEL)
def scheduler(metrics_port: int = _metrics_port("scheduler")) -> None:
    """Queue accepted jobs per GPU tier and dispatch them to idle workers."""
    from domain.application import PinkseaApplication
    from workflows.scheduler.service import Scheduler

    async def main(settings: Settings, stop: asyncio.Event) -> None:
        await prepare(settings)
        pool = await create_pool(settings, max_size=4)
        application = PinkseaApplication(
            env=event_store_env(
                settings.database_url, pool_size=4, bounds=ConnectionBounds.from_settings(settings)
            )
        )
        try:
            await Scheduler(settings, pool, application).run(stop)
        finally:
            application.close()
            await pool.close()

    run_process("scheduler", main, metrics_port)


@app.command(rich_help_panel=PROCESSES_PANEL)
def settle(metrics_port: int = _metrics_port("settle")) -> None:
    """Turn worker reports into exact, idempotent billing commands."""
    from workflows.settler import Settler
    from workflows.tracking import TrackingPinkseaApplication

    async def main(settings: Settings, stop: asyncio.Event) -> None:
        await prepare(settings)
        application = TrackingPinkseaApplication(
            env=event_store_env(
                settings.database_url, pool_size=4, bounds=ConnectionBounds.from_settings(settings)
            )
        )
        try:
            await Settler(settings, application).run(stop)
        finally:
            application.close()

    run_process("settle", main, metrics_port)


@app.command(rich_help_panel=PROCESSES_PANEL)
def expire(
    interval: float = typer.Option(30.0, help="Seconds between rounds."),
    metrics_port: int = _metrics_port("expire"),
) -> None:
    """Expire lots at their valid_until (a loop; idempotent; catches up after downtime)."""
    from domain.application import PinkseaApplication
    from workflows.expiry import run_expiry

    async def main(settings: Settings, stop: asyncio.Event) -> None:
        await prepare(settings)
        pool = await create_pool(settings, max_size=2)
        application = PinkseaApplication(
            env=event_store_env(
                settings.database_url, pool_size=2, bounds=ConnectionBounds.from_settings(settings)
            )
        )
        try:
            await run_expiry(pool, application, stop, interval)
        finally:
            application.close()
            await pool.close()

    run_process("expire", main, metrics_port)


@app.command(rich_help_panel=PROCESSES_PANEL)
def notify(metrics_port: int = _metrics_port("notify")) -> None:
    """E-mail users once per low-balance crossing (SMTP locally, SES in production)."""
    from workflows.notifier.service import Notifier
    from workflows.notifier.transports import build_transport

    async def main(settings: Settings, stop: asyncio.Event) -> None:
        await prepare(settings)
        # One connection holds a crossing's transaction across its send; one more for the rest.
        pool = await create_pool(settings, max_size=2)
        try:
            await Notifier(settings, pool, build_transport(settings)).run(stop)
        finally:
            await pool.close()

    run_process("notify", main, metrics_port)


@app.command(rich_help_panel=PROCESSES_PANEL)
def webhooks(metrics_port: int = _metrics_port("webhooks")) -> None:
    """Deliver completion webhooks: signed, retried for a day, each event once per endpoint."""
    from workflows.webhooks.service import WebhookService

    async def main(settings: Settings, stop: asyncio.Event) -> None:
        await prepare(settings)
        # Short statements only (attempts hold no connection while they wait on a receiver).
        pool = await create_pool(settings, max_size=8)
        try:
            await WebhookService(settings, pool).run(stop)
        finally:
            await pool.close()

    run_process("webhooks", main, metrics_port)


def default_worker_id(device: str) -> str:
    """Stable across restarts of the same machine and device, so a restarted worker resumes
    its own consumer group where it left off."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", f"{socket.gethostname()}-{device}")


@app.command("gpu-worker", rich_help_panel=PROCESSES_PANEL)
def gpu_worker(
    tier: str = typer.Option(..., help=f"GPU tier to serve: {', '.join(GPU_TIERS)}."),
    device: str | None = typer.Option(
        None, help="torch device, e.g. cuda:0 or cpu (default: cuda:0 when there is a GPU)."
    ),
    worker_id: str | None = typer.Option(None, help="Worker id (default: <hostname>-<device>)."),
    metrics_port: int = _metrics_port("gpu-worker", envvar="PINKSEA_METRICS_PORT"),
) -> None:
    """Consume the tier's dispatches, run them, upload the images, report GPU-ms."""
    if tier not in GPU_TIERS:
        raise typer.BadParameter(f"choose one of {', '.join(GPU_TIERS)}", param_hint="--tier")
    import torch

    from gpu_consumer.worker import GpuWorker
    from infra.kafka import ensure_topics

    chosen = device or ("cuda:0" if torch.cuda.is_available() else "cpu")
    identity = worker_id or default_worker_id(chosen)

    async def main(settings: Settings, stop: asyncio.Event) -> None:
        await ensure_topics(settings)
        await GpuWorker(settings, tier, identity, chosen).run(stop)

    run_process("gpu-worker", main, metrics_port)


@app.command("lag-metric", rich_help_panel=PROCESSES_PANEL)
def lag_metric(
    once: bool = typer.Option(False, "--once", help="Publish once and exit (1 on failure)."),
    interval: float = typer.Option(60.0, "--interval", help="Seconds between publications."),
    environment: str = typer.Option(
        "local", "--environment", envvar="PINKSEA_ENVIRONMENT", help="Environment dimension."
    ),
    namespace: str = typer.Option(aws_lag_metric.NAMESPACE, "--namespace"),
    group_prefix: str = typer.Option(
        aws_lag_metric.GROUP_PREFIX, "--group-prefix", help="Consumer groups measured."
    ),
    tier: list[str] | None = typer.Option(
        None, "--tier", help="GPU tier whose backlog is published (repeatable; default: all)."
    ),
    queue_metrics_url: str = typer.Option(
        "",
        "--queue-metrics-url",
        envvar="PINKSEA_QUEUE_METRICS_URL",
        help="The scheduler's /metrics, for pinksea_queue_depth.",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the data, publish nothing."),
) -> None:
    """Publish consumer lag and GPU backlog to CloudWatch every --interval seconds."""
    # The GPU auto-scaling groups scale on what it publishes (infra/aws_lag_metric.py,
    # docs/DEPLOY.md). The Kafka connection and the CloudWatch endpoint come from the
    # ``PINKSEA_*`` settings, like every other process; the options are what the ECS sidecar
    # passes.
    settings = get_settings()
    argv = [
        "--bootstrap-servers", settings.kafka_bootstrap_servers,
        "--security-protocol", settings.kafka_security_protocol,
        "--sasl-mechanism", settings.kafka_sasl_mechanism or "",
        "--sasl-username", settings.kafka_sasl_username or "",
        "--ssl-cafile", settings.kafka_ssl_cafile or "",
        "--region", settings.kafka_region,
        "--cloudwatch-endpoint-url", settings.cloudwatch_endpoint_url or "",
        "--environment", environment,
        "--namespace", namespace,
        "--group-prefix", group_prefix,
        "--queue-metrics-url", queue_metrics_url,
        "--interval", str(0.0 if once else interval),
    ]  # fmt: skip
    for t in tier or ():
        argv += ["--tier", t]
    if dry_run:
        argv.append("--dry-run")
    password = settings.kafka_sasl_password
    raise typer.Exit(
        aws_lag_metric.main(argv, sasl_password=password.get_secret_value() if password else None)
    )
