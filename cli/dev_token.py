"""``pinksea dev-token``: a JWT from the local dev issuer, for curl and the demo."""

from __future__ import annotations

from datetime import timedelta

import typer

from cli.main import app


@app.command("dev-token")
def dev_token(
    user: str = typer.Option(..., help="The user id (the token's subject)."),
    admin: bool = typer.Option(False, "--admin", help="Put the user in the admin group."),
    hours: float = typer.Option(12.0, help="Lifetime of the token."),
    email: str | None = typer.Option(None, help="An email claim."),
) -> None:
    """Print a dev JWT. The API accepts it only with PINKSEA_DEV_JWT_ENABLED=true; the key is
    created on first use at PINKSEA_DEV_JWT_KEY_PATH (default ~/.pinksea/dev-jwt.pem)."""
    from api.auth import sign_dev_token
    from infra.settings import get_settings

    token = sign_dev_token(
        get_settings(), user, admin=admin, ttl=timedelta(hours=hours), email=email
    )
    typer.echo(token)
