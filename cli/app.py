"""The ``pinksea`` Typer app and its root callback (the environment check every command runs).

The command modules attach their commands to :data:`app`; :mod:`cli.main` imports them all and
is what the console script and ``python -m cli`` run. Nothing here imports a command module.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="pinksea",
    help="Pinksea backend: processes, local stack checks and ledger tools.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

# The panels of `pinksea --help`: cli/processes.py, cli/up.py and cli/demo.py, cli/ops.py,
# cli/ledger.py.
PROCESSES_PANEL = "Processes"
LOCAL_PANEL = "Local use"
OPS_PANEL = "Operator tools"
LEDGER_PANEL = "Ledger tools"


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
