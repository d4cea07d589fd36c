"""``pinksea presets sync | show``: the system style presets in S3 (infra/style_presets.py).

``sync`` checks the repository's list (or ``--file``) with the domain's rules and replaces the
stored index with it; ``make demo`` and the production rehearsal run it where the system data
is prepared, and an operator runs it after editing ``infra/presets/style_presets.json``.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from cli.app import OPS_PANEL, app
from infra import style_presets
from infra.s3 import s3_client
from infra.settings import get_settings

console = Console()
presets_app = typer.Typer(help="System style presets in S3: sync and show.", no_args_is_help=True)
app.add_typer(presets_app, name="presets", rich_help_panel=OPS_PANEL)


@presets_app.command("sync")
def sync(
    file: Path = typer.Option(
        style_presets.DEFAULT_FILE,
        "--file",
        exists=True,
        dir_okay=False,
        help="The preset list (InvokeAI's fields plus an id).",
    ),
) -> None:
    """Check the list and replace system/style_presets/index.json in the images bucket with it
    (idempotent; the API serves the change within a minute)."""
    try:
        presets = style_presets.read_file(file)
    except ValueError as e:
        console.print(f"[red]{file}[/red]: {e}", highlight=False, markup=False)
        raise typer.Exit(2) from None
    settings = get_settings()
    etag = style_presets.upload(s3_client(settings), settings.s3_bucket, presets)
    console.print(
        f"{len(presets.presets)} style presets synced to "
        f"s3://{settings.s3_bucket}/{style_presets.INDEX_KEY} (etag {etag})",
        highlight=False,
    )


@presets_app.command("show")
def show() -> None:
    """The stored list, as the API serves it."""
    settings = get_settings()
    presets = style_presets.load(s3_client(settings), settings.s3_bucket)
    table = Table(title=f"s3://{settings.s3_bucket}/{style_presets.INDEX_KEY}")
    table.add_column("id")
    table.add_column("name")
    table.add_column("positive prompt", overflow="fold")
    for preset in presets.presets:
        table.add_row(preset.id, preset.name, preset.preset_data.positive_prompt)
    console.print(table)
    if not presets.presets:
        console.print("none synced yet: run `pinksea presets sync`")
