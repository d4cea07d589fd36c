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
        processes,
        streaming,
        up,
    )


_register()
