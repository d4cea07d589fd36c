"""``pinksea lag-metric``: publish Kafka consumer lag and the GPU backlog to CloudWatch.

The GPU auto-scaling groups scale on what it publishes (infra/aws_lag_metric.py, docs/DEPLOY.md).
The Kafka connection and the CloudWatch endpoint come from the ``PINKSEA_*`` settings, like every
other process; the options here are what the ECS sidecar passes.
"""

from __future__ import annotations

import typer

from cli.main import app
from infra import aws_lag_metric
from infra.settings import get_settings


@app.command("lag-metric")
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
