"""The ``pinksea`` console script: every long-running process and every operator tool."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="pinksea",
    help="Pinksea backend: processes, local stack checks and ledger tools.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Pinksea backend."""
    # Refuse to start on a misspelled or missing setting rather than run on a local default.
    from gpu_consumer.config import GpuWorkerSettings
    from infra.settings import check_environment

    problems = check_environment(GpuWorkerSettings)
    if problems:
        typer.echo("pinksea: the environment is not a valid configuration:", err=True)
        for problem in problems:
            typer.echo(f"  - {problem}", err=True)
        raise typer.Exit(2)


def _register() -> None:
    # Each command group lives in its own module; importing it attaches it to ``app``.
    from cli import (  # noqa: F401
        api,
        demo,
        dev_token,
        doctor,
        gpu_worker,
        lag_metric,
        ledger,
        notify,
        processes,
        streaming,
        up,
    )


_register()
