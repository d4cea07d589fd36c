"""The ASGI layer around every request: request id, body size limit, extra response headers,
metrics.

**Request ids.** Each request gets an id: the client's own ``Request-Id`` (or
``X-Request-Id``) when it is at most 128 of ``A-Z a-z 0-9 . _ : -``, else a fresh ``req_...``.
It is the ``Request-Id`` header of every response, the ``request_id`` of every problem body
and bound (structlog contextvars) into every log line written for the request.

Pure ASGI rather than BaseHTTPMiddleware: no extra task per request and streaming responses
(SSE) pass through untouched.
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from prometheus_client import Counter, Histogram
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import problems as p

log = structlog.get_logger("api")

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
        request_id = p.request_id_from(_sent_request_id(scope))
        scope.setdefault("state", {})["request_id"] = request_id
        id_header = (b"request-id", request_id.encode())
        id_token = p.current_request_id.set(request_id)
        log_tokens = structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            await self._handle(scope, receive, send, started, id_header)
        finally:
            structlog.contextvars.reset_contextvars(**log_tokens)
            p.current_request_id.reset(id_token)

    async def _handle(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        started: float,
        id_header: tuple[bytes, bytes],
    ) -> None:
        limit = self.max_body_bytes
        status_code = 500
        response_started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal status_code, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status_code = message["status"]
                headers = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() != b"request-id"
                ]
                headers.append(id_header)
                present = {k.lower() for k, _ in headers}
                extra: dict[str, str] | None = scope.get("state", {}).get("extra_headers")
                for name, value in (extra or {}).items():
                    if name.lower().encode() not in present:
                        headers.append((name.lower().encode(), value.encode()))
                if status_code in (429, 503) and b"retry-after" not in present:
                    headers.append((b"retry-after", b"1"))  # every 429 and 503 says when
                message = {**message, "headers": headers}
                _observe(scope, status_code, started)
            await send(message)

        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await self._too_large(scope, send_with_headers, limit)
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

        try:
            await self.app(scope, limited_receive, send_with_headers)
        except _TooLarge:
            if response_started:
                raise
            await self._too_large(scope, send_with_headers, limit)
        except Exception:
            if response_started:
                raise
            # Answered here rather than by Starlette's outermost error middleware, so the
            # log line and the 500 carry the request id; re-raised for the server's own log.
            log.exception("unhandled error", path=scope.get("path"))
            scope["state"]["error_logged"] = True  # not again by the outer handler
            response = p.problem_response(
                p.INTERNAL,
                "Something went wrong on our side; retry, and contact support if it persists.",
                instance=scope.get("path"),
            )
            await response(scope, _no_body, send_with_headers)
            raise

    async def _too_large(self, scope: Scope, send: Send, limit: int) -> None:
        response = p.problem_response(
            p.PAYLOAD_TOO_LARGE,
            f"The body is larger than {limit} bytes; send a smaller request.",
            instance=scope.get("path"),
        )
        await response(scope, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.disconnect"}


def _sent_request_id(scope: Scope) -> str | None:
    sent: dict[bytes, bytes] = {}
    for name, value in scope.get("headers", []):
        if name in (b"request-id", b"x-request-id"):
            sent.setdefault(name, value)
    raw = sent.get(b"request-id", sent.get(b"x-request-id"))
    return raw.decode("latin-1") if raw is not None else None


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
