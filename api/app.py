"""The FastAPI application: ``create_app(settings)``; ``pinksea api`` serves it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

import api.routers.webhook_endpoints as webhook_endpoints
from api.auth import dev_jwks
from api.billing import router as billing
from api.edge import EdgeMiddleware
from api.problems import (
    PROBLEM_MEDIA_TYPE,
    Problem,
    install_problem_handlers,
    rewrite_problem_media_types,
)
from api.routers import (
    admin,
    api_keys,
    boards,
    events,
    images,
    jobs,
    me,
    models,
    ops,
    plans,
    presets,
    uploads,
    user_models,
)
from api.services import start_services
from infra.settings import Settings, get_settings

DESCRIPTION = """
Pinksea: hosted text-to-image generation, billed by the GPU-millisecond.

* **Auth:** `Authorization: Bearer <JWT>` (Cognito user pool; `pinksea dev-token` locally) or an
  API key (`Authorization: Bearer psk_...` or `X-API-Key`). The first request signs you up
  with a trial.
* **Money:** integer millicredits (`*_mc`, 1 credit = 1000 mc = one GPU-second on your plan's
  tier) and the same amount as a credits string (`*_credits`, three decimals).
* **Commands** return the event `position`; send it back as `X-Min-Position` on a query to
  read your own write. Each POST accepts `Idempotency-Key`.
* **Errors** are RFC 9457 `application/problem+json`; switch on `type`.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    problems = settings.deployment_problems()
    if problems:
        raise RuntimeError(f"PINKSEA_ENVIRONMENT={settings.environment}: " + "; ".join(problems))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = await start_services(settings)
        app.state.services = services
        try:
            yield
        finally:
            await services.close()

    app = FastAPI(
        title="Pinksea API",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        # Off when deployed (PINKSEA_API_DOCS_ENABLED=false): the document maps every route.
        docs_url="/docs" if settings.api_docs_enabled else None,
        openapi_url="/openapi.json" if settings.api_docs_enabled else None,
        redoc_url=None,
        generate_unique_id_function=operation_id,
    )
    app.state.settings = settings
    install_problem_handlers(app)
    for module in (
        jobs,
        events,
        images,
        uploads,
        boards,
        me,
        models,
        user_models,
        plans,
        presets,
        api_keys,
        admin,
        billing,
        ops,
    ):
        app.include_router(module.router)
    app.include_router(webhook_endpoints.router)
    app.include_router(webhook_endpoints.secret_router)
    if not settings.api_metrics_port:
        # Locally /metrics shares the API's port; deployed it has its own (api/routers/ops.py).
        app.include_router(ops.metrics_router)
    if settings.dev_jwt_enabled:
        jwks = dev_jwks(settings)

        @app.get("/.well-known/jwks.json", include_in_schema=False)
        async def dev_jwks_document() -> JSONResponse:
            return JSONResponse(jwks)

    app.add_middleware(EdgeMiddleware, max_body_bytes=settings.api_max_body_bytes)
    # Outermost: the client address and scheme from X-Forwarded-For / -Proto, read only when
    # the connection comes from a trusted proxy (the load balancer's subnets when deployed),
    # and then the last address it did not add itself; the per-address limits count it.
    app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.forwarded_allow_ips)
    _document_problems(app)
    return app


def operation_id(route: APIRoute) -> str:
    """``{resource}.{handler}`` (``jobs.submit_job``): stable names for generated clients, instead
    of FastAPI's ``submit_job_v1_jobs_post``, which changes with every path or method edit."""
    if not route.tags:
        return route.name  # a documented route without a resource fails the contract test
    resource = str(route.tags[0]).replace(" ", "_")
    return f"{resource}.{route.name}"


def _document_problems(app: FastAPI) -> None:
    """Errors are application/problem+json in the OpenAPI document too."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.setdefault("Problem", Problem.model_json_schema(ref_template=_REF))
            for name, sub in Problem.model_json_schema(ref_template=_REF).get("$defs", {}).items():
                components.setdefault(name, sub)
            components["Problem"].pop("$defs", None)
            _add_links(schema)
            app.openapi_schema = _add_response_headers(rewrite_problem_media_types(schema))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


_REF = "#/components/schemas/{model}"

# OpenAPI links: what a client (and schemathesis' stateful tests) can do next with what a
# command returned. (source path, method, status) -> {link name: (target path, method,
# {parameter: runtime expression})}. A job's reads wait for the returned position, so the
# link reads the write it follows, not a projection that has not caught up yet.
_LINKS: dict[tuple[str, str, str], dict[str, tuple[str, str, dict[str, str]]]] = {
    ("/v1/jobs", "post", "202"): {
        "GetJob": (
            "/v1/jobs/{job_id}",
            "get",
            {
                "path.job_id": "$response.body#/job_id",
                "header.x-min-position": "$response.body#/position",
            },
        ),
        "CancelJob": (
            "/v1/jobs/{job_id}/cancel",
            "post",
            {"path.job_id": "$response.body#/job_id"},
        ),
    },
    ("/v1/jobs/{job_id}/cancel", "post", "202"): {
        "GetCancelledJob": (
            "/v1/jobs/{job_id}",
            "get",
            {
                "path.job_id": "$response.body#/job_id",
                "header.x-min-position": "$response.body#/position",
            },
        ),
    },
    ("/v1/api-keys", "post", "201"): {
        "RevokeApiKey": ("/v1/api-keys/{key_id}", "delete", {"path.key_id": "$response.body#/id"}),
    },
}


def _add_links(schema: dict[str, Any]) -> None:
    paths = schema.get("paths", {})
    for (path, method, status), links in _LINKS.items():
        response = paths.get(path, {}).get(method, {}).get("responses", {}).get(status)
        if response is None:
            continue  # the route is gone: nothing to link from
        for name, (target, target_method, parameters) in links.items():
            operation = paths.get(target, {}).get(target_method)
            if operation is not None:
                response.setdefault("links", {})[name] = {
                    "operationId": operation["operationId"],
                    "parameters": parameters,
                }


# The response headers of the contract (api/edge.py, api/ratelimit.py, the routers), declared
# once as components and referenced from every response that carries them.
_HEADERS: dict[str, dict[str, Any]] = {
    "Request-Id": {
        "description": "This request's id (yours, echoed, when you sent a valid one): quote it "
        "to support; also `request_id` in every problem body.",
        "schema": {"type": "string", "maxLength": 128},
    },
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
    "RateLimit-Limit": {
        "description": "Requests allowed in the window.",
        "schema": {"type": "string"},
    },
    "RateLimit-Remaining": {
        "description": "Requests left in the window.",
        "schema": {"type": "string"},
    },
    "RateLimit-Reset": {
        "description": "Seconds until the window resets.",
        "schema": {"type": "string"},
    },
    "RateLimit-Policy": {
        "description": "The limit and its window, `limit;w=seconds`.",
        "schema": {"type": "string"},
    },
    "Location": {
        "description": "Where the created resource is read.",
        "schema": {"type": "string"},
    },
    "Idempotent-Replayed": {
        "description": "`true` when this is the stored answer to an earlier request with the "
        "same Idempotency-Key.",
        "schema": {"type": "string", "enum": ["true"]},
    },
}
# The commands whose answer names the resource they created (the routers set the header).
_LOCATIONS = {("/v1/jobs", "post", "202"), ("/v1/api-keys", "post", "201")}
_RATE_LIMIT_HEADERS = (
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
    "RateLimit-Policy",
)


def _add_response_headers(schema: dict[str, Any]) -> dict[str, Any]:
    schema.setdefault("components", {})["headers"] = _HEADERS
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.get("responses", {})
            limited = "429" in responses  # the routes behind a rate limit say so
            keyed = any(
                param.get("name", "").lower() == "idempotency-key"
                for param in operation.get("parameters", [])
            )
            for status, response in responses.items():
                names = ["Request-Id"]
                if status in ("429", "503"):
                    names.append("Retry-After")
                if limited and (status.startswith("2") or status == "429"):
                    names.extend(_RATE_LIMIT_HEADERS)
                if (path, method, status) in _LOCATIONS:
                    names.append("Location")
                if keyed and status.startswith("2"):
                    names.append("Idempotent-Replayed")
                headers = response.setdefault("headers", {})
                for name in names:
                    headers.setdefault(name, {"$ref": f"#/components/headers/{name}"})
    return schema


__all__ = ["PROBLEM_MEDIA_TYPE", "create_app"]


def create_app_from_env() -> FastAPI:
    """uvicorn factory for ``pinksea api`` (settings from PINKSEA_* variables)."""
    from infra.logging import configure_logging

    settings = get_settings()
    configure_logging(settings, "api")
    return create_app(settings)
