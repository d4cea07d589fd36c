"""The ASGI layer around every request: body size limit, extra response headers, metrics.

Pure ASGI rather than BaseHTTPMiddleware: no extra task per request and streaming responses
(SSE) pass through untouched.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import Counter, Histogram
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import problems as p

REQUESTS = Counter("pinksea_api_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram(
    "pinksea_api_request_seconds",
    "HTTP request latency (to the response's first byte)",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


class _TooLarge(HTTPException):
    """Raised from ``receive``: FastAPI passes HTTPExceptions from body reading through to
    the problem handlers (anything else would become a 400)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"The body is larger than {limit} bytes; send a smaller request.")


class EdgeMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        limit = self.max_body_bytes
        status_code = 500
        response_started = False

        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await self._too_large(scope, send, limit)
            _observe(scope, 413, started)
            return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge(limit)
            return message

        async def send_with_headers(message: Message) -> None:
            nonlocal status_code, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status_code = message["status"]
                extra: dict[str, str] | None = scope.get("state", {}).get("extra_headers")
                if extra:
                    headers = list(message.get("headers", []))
                    present = {k.lower() for k, _ in headers}
                    for name, value in extra.items():
                        if name.lower().encode() not in present:
                            headers.append((name.lower().encode(), value.encode()))
                    message = {**message, "headers": headers}
                _observe(scope, status_code, started)
            await send(message)

        try:
            await self.app(scope, limited_receive, send_with_headers)
        except _TooLarge:
            if response_started:
                raise
            await self._too_large(scope, send, limit)
            _observe(scope, 413, started)

    async def _too_large(self, scope: Scope, send: Send, limit: int) -> None:
        response = p.problem_response(
            p.PAYLOAD_TOO_LARGE,
            f"The body is larger than {limit} bytes; send a smaller request.",
            instance=scope.get("path"),
        )
        await response(scope, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.disconnect"}


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _observe(scope: Scope, status: int, started: float) -> None:
    route: Any = scope.get("route")
    template = getattr(route, "path", None) or "unmatched"
    method = scope.get("method", "")
    REQUESTS.labels(method, template, str(status)).inc()
    LATENCY.labels(method, template).observe(time.perf_counter() - started)
