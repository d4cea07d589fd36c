"""``pinksea api``: serve the REST API with uvicorn."""

from __future__ import annotations

import os
import tempfile

import typer

from cli.main import app


@app.command()
def api(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (0.0.0.0: all)."),
    port: int = typer.Option(8000, help="Port to listen on."),
    workers: int = typer.Option(1, min=1, help="Worker processes (each with its own pools)."),
) -> None:
    """Serve the REST API (/v1, /docs, /healthz, /readyz, /metrics)."""
    import uvicorn

    from infra.settings import get_settings

    problems = get_settings().deployment_problems()
    if problems:
        typer.echo(f"pinksea api: not deployable ({get_settings().environment}):", err=True)
        for problem in problems:
            typer.echo(f"  - {problem}", err=True)
        raise typer.Exit(2)
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # /metrics must add up every worker's counters, whichever worker answers.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="pinksea-metrics-")
    uvicorn.run(
        "api.app:create_app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=None,  # structured logs from infra.logging
        access_log=False,  # requests are counted in /metrics instead
        proxy_headers=True,
        timeout_graceful_shutdown=10,
    )
