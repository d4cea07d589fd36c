"""``python -m rehearsal`` (``make rehearsal``): the production rehearsal; exit 1 on any failed
check. Logs, the processes' output and result.json in .rehearsal/."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer

from rehearsal.run import run_rehearsal


def main(
    out: Path = typer.Option(Path(".rehearsal"), help="Logs and result.json."),
    keep_stack: bool = typer.Option(False, help="Leave the private stack running afterwards."),
) -> None:
    """Run every process with production's rendered environment on a private local stack and
    prove sign-in, Kafka over SASL_SSL, Checkout and webhooks, a job, its signed image URL."""
    summary = asyncio.run(run_rehearsal(out, keep_stack))
    if summary["failed"]:
        raise typer.Exit(1)


if __name__ == "__main__":
    typer.run(main)
