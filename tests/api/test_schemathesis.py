"""Property-based contract test: schemathesis generates requests from the OpenAPI document
(valid and invalid ones) and sends them to a real ``pinksea api`` process on the real stack.
No response may be a 5xx, and every response must match what the document says (status code,
content type, headers, body schema).

Bounded for CI: SCHEMATHESIS_MAX_EXAMPLES per operation (default 25).
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app
from api.auth import sign_dev_token
from domain.application import PinkseaApplication
from infra.event_store import event_store_env
from infra.settings import Settings
from tests.api.project_now import project_now

pytestmark = pytest.mark.integration

MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "25"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="session")
def tokens(api_settings: Settings) -> dict[str, str]:
    tag = uuid.uuid4().hex[:8]
    return {
        "user": sign_dev_token(api_settings, f"fuzz-{tag}"),
        "admin": sign_dev_token(api_settings, f"fuzz-admin-{tag}", admin=True),
    }


# The document is the app's own (building the app touches no service); the requests go to a
# real process started by the api_pair fixture.
schema = schemathesis.openapi.from_dict(create_app(Settings(dev_jwt_enabled=False)).openapi())


@pytest.fixture(scope="module")
def projector(api_settings: Settings) -> Iterator[None]:
    """Keeps the read models caught up while the fuzzer runs, as the live projections would
    (the API's reads wait for them; without them, fresh users would see 503s)."""
    stop = threading.Event()
    app = PinkseaApplication(env=event_store_env(api_settings.database_url, pool_size=2))

    def run() -> None:
        while not stop.wait(0.1):
            asyncio.run(project_now(app, api_settings.database_url))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(timeout=10)
    app.close()


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_honours_its_contract(
    case: Any, tokens: dict[str, str], api_pair: tuple[str, str], projector: None
) -> None:
    who = "admin" if case.path.startswith("/v1/admin") else "user"
    headers = {"Authorization": f"Bearer {tokens[who]}"}
    case.call_and_validate(base_url=api_pair[0], headers=headers, checks=CHECKS, timeout=30)
