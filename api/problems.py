"""RFC 9457 problem details: every error the API returns, with a stable ``type`` URI.

A problem type is part of the public contract: clients switch on ``type`` (never on ``title``
or ``detail``), so a slug, once published, keeps its meaning. Each ``detail`` is a sentence
that says what to do next.
"""

from __future__ import annotations

import errno
import re
import secrets
import socket
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog
from botocore.exceptions import BotoCoreError, ClientError
from eventsourcing import persistence as es_persistence
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from domain.application import ConcurrencyConflict
from domain.errors import DomainError

log = structlog.get_logger("api")

PROBLEM_BASE = "https://pinksea.dev/problems/"
PROBLEM_MEDIA_TYPE = "application/problem+json"


@dataclass(frozen=True)
class ProblemType:
    slug: str
    status: int
    title: str

    @property
    def uri(self) -> str:
        return PROBLEM_BASE + self.slug


def _t(slug: str, status: int, title: str) -> ProblemType:
    return ProblemType(slug, status, title)


# The catalogue. Entitlement rejections each have their own type (billing adds more here).
BAD_REQUEST = _t("bad-request", 400, "Bad request")
UNAUTHORIZED = _t("unauthorized", 401, "Authentication required")
INSUFFICIENT_CREDITS = _t("insufficient-credits", 402, "Not enough credits")
PAYMENT_FAILED = _t("payment-failed", 402, "Payment failed")
FORBIDDEN = _t("forbidden", 403, "Not allowed")
ADMIN_REQUIRED = _t("admin-required", 403, "Admin access required")
ACCOUNT_DEACTIVATED = _t("account-deactivated", 403, "Account deactivated")
NO_API_ACCESS = _t("no-api-access", 403, "Plan has no API access")
MODEL_NOT_IN_PLAN = _t("model-not-in-plan", 403, "Model not in plan")
STORAGE_QUOTA = _t("storage-quota", 403, "Storage quota used up")
NOT_FOUND = _t("not-found", 404, "Not found")
METHOD_NOT_ALLOWED = _t("method-not-allowed", 405, "Method not allowed")
IDEMPOTENCY_CONFLICT = _t("idempotency-conflict", 409, "Idempotency-Key reused")
INVALID_TRANSITION = _t("invalid-transition", 409, "Not allowed in the current state")
PAYLOAD_TOO_LARGE = _t("payload-too-large", 413, "Request body too large")
UNSUPPORTED_MEDIA_TYPE = _t("unsupported-media-type", 415, "Unsupported media type")
INVALID_REQUEST = _t("invalid-request", 422, "Invalid request")
INVALID_PARAMETERS = _t("invalid-parameters", 422, "Invalid job parameters")
UPLOAD_REJECTED = _t("upload-rejected", 422, "Upload rejected")
RATE_LIMITED = _t("rate-limited", 429, "Too many requests")
QUEUE_LIMIT = _t("queue-limit", 429, "Too many unfinished jobs")
STREAM_LIMIT = _t("stream-limit", 429, "Too many open event streams")
INTERNAL = _t("internal-error", 500, "Internal error")
NOT_YET_CONSISTENT = _t("not-yet-consistent", 503, "Read model not caught up")
BUSY = _t("busy", 503, "Busy")
UNAVAILABLE = _t("service-unavailable", 503, "A backing service is unavailable")

# Retry-After (seconds) for a 429 or 503 whose producer named none: an unfinished job takes
# seconds to finish and free a queue slot.
RETRY_AFTER_S: dict[str, int] = {QUEUE_LIMIT.slug: 5}

# A job rejection's reason code -> its problem type. Unknown future reasons fall back to
# FORBIDDEN rather than failing, so the domain can add reasons before the API learns them.
REJECTIONS: dict[str, ProblemType] = {
    "insufficient_credits": INSUFFICIENT_CREDITS,
    "model_not_in_plan": MODEL_NOT_IN_PLAN,
    "queue_limit": QUEUE_LIMIT,
    "storage_quota": STORAGE_QUOTA,
    "payment_failed": PAYMENT_FAILED,
}

# Domain error code -> problem type (domain/errors.py).
DOMAIN_ERRORS: dict[str, ProblemType] = {
    "invalid_parameters": INVALID_PARAMETERS,
    "insufficient_credits": INSUFFICIENT_CREDITS,
    "idempotency_conflict": IDEMPOTENCY_CONFLICT,
    "invalid_transition": INVALID_TRANSITION,
    "hold_already_resolved": INVALID_TRANSITION,
    "not_found": NOT_FOUND,
    "account_deactivated": ACCOUNT_DEACTIVATED,
}


# ----------------------------------------------------------------------------- request ids

REQUEST_ID_HEADER = "Request-Id"
_REQUEST_ID_SHAPE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# The current request's id (set by the edge middleware, api/edge.py): every problem body
# carries it as ``request_id``, the same value as the ``Request-Id`` response header.
current_request_id: ContextVar[str | None] = ContextVar("pinksea_request_id", default=None)


def request_id_from(sent: str | None) -> str:
    """The client's own ``Request-Id`` when it is one we can log safely (at most 128 of
    ``A-Z a-z 0-9 . _ : -``), else a fresh ``req_`` + 24 random URL-safe characters."""
    if sent is not None and _REQUEST_ID_SHAPE.fullmatch(sent):
        return sent
    return "req_" + secrets.token_urlsafe(18)  # 18 bytes -> 24 characters


class FieldError(BaseModel):
    loc: list[str | int] = Field(description="where in the request, e.g. [body, steps]")
    msg: str
    type: str


class Problem(BaseModel):
    """An error (RFC 9457). Switch on ``type``; ``detail`` says what to do."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(examples=[INSUFFICIENT_CREDITS.uri])
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[FieldError] | None = Field(
        None,
        description="each invalid field (invalid-request), each input a job cannot use "
        "(not-found, invalid-parameters); where the JSON broke (bad-request)",
    )
    request_id: str | None = Field(
        None, description="this request's id, as in the Request-Id header: quote it to support"
    )


class ProblemError(Exception):
    """Raise anywhere in a request to answer with a problem."""

    def __init__(
        self,
        kind: ProblemType,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.headers = headers or {}
        self.extensions = extensions


def problem_response(
    kind: ProblemType,
    detail: str,
    *,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": kind.uri,
        "title": kind.title,
        "status": kind.status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    body.update({k: v for k, v in extensions.items() if v is not None})
    request_id = current_request_id.get()
    if request_id is not None:
        body["request_id"] = request_id
    if kind.status in (429, 503) and not any(k.lower() == "retry-after" for k in headers or {}):
        # Every 429 and 503 says when to retry (seconds); most producers set their own.
        headers = {**(headers or {}), "Retry-After": str(RETRY_AFTER_S.get(kind.slug, 1))}
    return JSONResponse(body, kind.status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


def problem_for_domain(error: DomainError) -> ProblemError:
    """The error's problem; each request field it names is one of its ``errors`` (located in
    the body, as the validation problems' are)."""
    kind = DOMAIN_ERRORS.get(error.code, INVALID_TRANSITION)
    errors = [{"loc": ["body", *f.loc], "msg": f.msg, "type": f.code} for f in error.fields]
    return ProblemError(kind, sentence(error.detail), errors=errors or None)


def sentence(text: str) -> str:
    text = text.strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


# ------------------------------------------------------------------------------ handlers


def is_json_media_type(content_type: str) -> bool:
    """application/json or any application/*+json (parameters such as charset aside), the
    media types FastAPI parses a body from."""
    media = content_type.split(";", 1)[0].strip().lower()
    main, _, sub = media.partition("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))


def _at_body(error: Any) -> bool:
    loc = error.get("loc", ())
    return bool(loc) and loc[0] == "body"


def _malformed_json(request: Request, exc: RequestValidationError, error: Any) -> JSONResponse:
    """A 400 that says where the body stopped being JSON."""
    loc = error.get("loc", ())
    pos = loc[1] if len(loc) > 1 and isinstance(loc[1], int) else None
    reason = str((error.get("ctx") or {}).get("error") or "not JSON")
    where = ""
    doc = exc.body if isinstance(exc.body, str) else None
    if pos is not None:
        if doc is not None and 0 <= pos <= len(doc):
            line = doc.count("\n", 0, pos) + 1
            column = pos - (doc.rfind("\n", 0, pos) + 1) + 1
            where = f" at line {line}, column {column} (character {pos})"
        else:
            where = f" at character {pos}"
    return problem_response(
        BAD_REQUEST,
        f"The body is not valid JSON: {reason}{where}; send a JSON object.",
        instance=request.url.path,
        errors=[
            {
                "loc": ["body"] + ([pos] if pos is not None else []),
                "msg": reason,
                "type": "json_invalid",
            }
        ],
    )


_BAD_VALUE_ERRORS: tuple[type[Exception], ...] = (
    asyncpg.DataError,
    UnicodeError,
    OverflowError,
)
_UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
    # SQLSTATE class 53 besides too many connections: disk full (53100), out of memory: the
    # server refuses the write and rolls it back; it succeeds once an operator frees space
    # (tests/faults/test_disk_full.py). The event store's psycopg errors of that class arrive
    # as es_persistence.OperationalError.
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.QueryCanceledError,
    es_persistence.OperationalError,
    es_persistence.InterfaceError,
    es_persistence.ConnectionUnavailableError,
    RedisConnectionError,
    RedisTimeoutError,
    BotoCoreError,
    ClientError,
    ConnectionError,
    TimeoutError,
    socket.gaierror,  # a database or broker host name that does not resolve
)
# The other OSErrors of a connection to an address that cannot be reached (a network partition
# answers a new connection with "No route to host" once the neighbour's address goes stale):
# 503 like ConnectionError's refusals and resets; any other OSError is a crash
# (tests/faults/test_partition.py).
_UNREACHABLE_ERRNOS = frozenset(
    {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN, errno.ETIMEDOUT}
)

_HTTP_KINDS: dict[int, tuple[ProblemType, str]] = {
    400: (BAD_REQUEST, "The request could not be read; check its syntax and headers."),
    401: (UNAUTHORIZED, "Send a valid bearer token or API key."),
    403: (FORBIDDEN, "Your account may not do this."),
    404: (NOT_FOUND, "There is nothing at this address; check the path."),
    405: (METHOD_NOT_ALLOWED, "This address does not accept that method; see /docs."),
    413: (PAYLOAD_TOO_LARGE, "Send a smaller request body."),
    415: (UNSUPPORTED_MEDIA_TYPE, "Send the body as application/json."),
}


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(
            exc.kind,
            exc.detail,
            instance=request.url.path,
            headers=exc.headers,
            **exc.extensions,
        )

    @app.exception_handler(DomainError)
    async def _domain(request: Request, exc: DomainError) -> JSONResponse:
        return await _problem(request, problem_for_domain(exc))

    @app.exception_handler(ConcurrencyConflict)
    async def _conflict(request: Request, exc: ConcurrencyConflict) -> JSONResponse:
        return problem_response(
            BUSY,
            "Too many changes to your account at once; retry in a moment.",
            instance=request.url.path,
            headers={"Retry-After": "1"},
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        raw = exc.errors()
        # A body FastAPI did not parse because its media type is not JSON arrives as bytes.
        content_type = request.headers.get("content-type")
        unparsed = any(_at_body(e) and isinstance(e.get("input"), bytes | bytearray) for e in raw)
        if content_type and unparsed and not is_json_media_type(content_type):
            return problem_response(
                UNSUPPORTED_MEDIA_TYPE,
                f"The body was sent as {content_type[:100]!r}; send it as application/json.",
                instance=request.url.path,
            )
        broken = next((e for e in raw if e.get("type") == "json_invalid"), None)
        if broken is not None:
            return _malformed_json(request, exc, broken)
        errors = [
            {
                "loc": [p if isinstance(p, int) else str(p) for p in e.get("loc", ())],
                "msg": str(e.get("msg", "")),
                "type": str(e.get("type", "")),
            }
            for e in raw
        ]
        where = ", ".join(".".join(str(p) for p in e["loc"]) for e in errors[:5])
        detail = f"Fix the invalid fields and send the request again: {where}."
        return problem_response(INVALID_REQUEST, detail, instance=request.url.path, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind, default = _HTTP_KINDS.get(exc.status_code, (BAD_REQUEST, "The request failed."))
        if kind.status != exc.status_code:
            kind = ProblemType(kind.slug, exc.status_code, kind.title)
        # Our own details are sentences; Starlette's defaults ("Not Found") are not.
        detail = exc.detail if isinstance(exc.detail, str) and exc.detail.endswith(".") else None
        return problem_response(
            kind,
            detail or default,
            instance=request.url.path,
            headers=getattr(exc, "headers", None),
        )

    async def _bad_value(request: Request, exc: Exception) -> JSONResponse:
        # Values the database cannot hold (a NUL character, an out-of-range time): the
        # request is at fault, not the service.
        return problem_response(
            INVALID_REQUEST,
            "A value in the request cannot be stored (control characters or an out-of-range "
            "number or time); fix it and send the request again.",
            instance=request.url.path,
        )

    async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
        log.warning("backing service unavailable", path=request.url.path, error=repr(exc))
        return problem_response(
            UNAVAILABLE,
            "A backing service did not answer; retry after the Retry-After delay.",
            instance=request.url.path,
            headers={"Retry-After": "2"},
        )

    for exc_type in _BAD_VALUE_ERRORS:
        app.add_exception_handler(exc_type, _bad_value)
    for exc_type in _UNAVAILABLE_ERRORS:
        app.add_exception_handler(exc_type, _unavailable)

    @app.exception_handler(OSError)
    async def _os_error(request: Request, exc: OSError) -> JSONResponse:
        if exc.errno in _UNREACHABLE_ERRNOS:
            return await _unavailable(request, exc)
        raise exc  # not a network error: the crash handler's 500

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        # Reached after the edge middleware (api/edge.py) answered and logged the crash with
        # the request id, or for one outside it.
        if not request.scope.get("state", {}).get("error_logged"):
            log.exception("unhandled error", path=request.url.path)
        return problem_response(
            INTERNAL,
            "Something went wrong on our side; retry, and contact support if it persists.",
            instance=request.url.path,
        )


# ------------------------------------------------------------------------- OpenAPI helpers

_DESCRIPTIONS: dict[int, str] = {
    400: "Malformed request (a body that is not valid JSON, or not even text)",
    401: "Missing, invalid or expired credentials",
    402: "Not enough credits, or the last payment failed",
    403: "Not allowed for this account or plan",
    404: "Not found (or owned by someone else)",
    409: "Conflict with an earlier request or the current state",
    413: "Request body too large",
    415: "The body's Content-Type is not application/json",
    422: "Invalid request",
    429: "Rate or concurrency limit reached",
    503: "Not caught up yet, or a backing service is unavailable; retry after Retry-After",
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each status documented with the Problem model (rewritten to
    application/problem+json by ``problem_openapi``)."""
    return {s: {"model": Problem, "description": _DESCRIPTIONS.get(s, "Error")} for s in statuses}


def rewrite_problem_media_types(schema: dict[str, Any]) -> dict[str, Any]:
    """Error responses are served as application/problem+json: say so in the document."""
    ref = "#/components/schemas/Problem"
    for path in schema.get("paths", {}).values():
        for op in path.values():
            if not isinstance(op, dict):
                continue
            if "requestBody" in op:  # malformed JSON (or not even text) is a 400; a body
                # that is not application/json a 415
                op["responses"].setdefault("400", {"description": _DESCRIPTIONS[400]})
                op["responses"].setdefault("415", {"description": _DESCRIPTIONS[415]})
            for status, response in op.get("responses", {}).items():
                if not str(status).isdigit() or int(status) < 400:
                    continue
                content = response.get("content", {})
                content.pop("application/json", None)
                content[PROBLEM_MEDIA_TYPE] = {"schema": {"$ref": ref}}
                response["content"] = content
    schema.get("components", {}).get("schemas", {}).pop("HTTPValidationError", None)
    schema.get("components", {}).get("schemas", {}).pop("ValidationError", None)
    return schema
