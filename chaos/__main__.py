"""``python -m chaos`` (``make chaos``; ``CHAOS_QUICK=1 make chaos`` for the reduced run)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer

from chaos.run import FULL, QUICK, run_chaos


def main(
    quick: bool = typer.Option(False, envvar="CHAOS_QUICK", help="The reduced run (CI)."),
    seed: int = typer.Option(1, envvar="CHAOS_SEED", help="Seed of the faults and the load."),
    out: Path = typer.Option(Path(".chaos"), help="Logs, fault plan and result.json."),
    keep_stack: bool = typer.Option(False, help="Leave the private stack running afterwards."),
) -> None:
    """Run the backend under load and faults, then verify and reconcile the ledger."""
    profile = QUICK if quick else FULL
    summary = asyncio.run(run_chaos(profile, seed, out / profile.name, keep_stack))
    if summary["discrepancies"] or summary["unexpected_answers"]:
        raise typer.Exit(1)


if __name__ == "__main__":
    typer.run(main)
