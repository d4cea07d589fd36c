"""The store position a command's response names (``X-Position``): the caller sends it back as
``X-Min-Position`` (api/deps.consistent) to read its own write. One definition for every
router's headers, 204 answers and their OpenAPI description."""

from __future__ import annotations

from typing import Any

from fastapi import Response, status

POSITION_HEADER = "X-Position"
POSITION_HEADERS: dict[str, Any] = {
    POSITION_HEADER: {
        "description": "store position of the change, for X-Min-Position",
        "schema": {"type": "integer"},
    }
}


def no_content(position: int) -> Response:
    """204, naming the position of what the command recorded."""
    assert position > 0, position
    return Response(
        status_code=status.HTTP_204_NO_CONTENT, headers={POSITION_HEADER: str(position)}
    )


def no_content_response(description: str) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI entry of a ``no_content`` answer."""
    return {204: {"description": description, "headers": POSITION_HEADERS}}
