"""`python -m cli` is the `pinksea` console script."""

from cli.main import app

app()
