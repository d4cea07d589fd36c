"""What every workflow test on the stack starts from: a database and a topic prefix of the
test's own, a pool on it with the migrations applied, and the command side."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from domain.application import PinkseaApplication
from infra.db import create_pool
from infra.settings import Settings
from tests.integration.streaming_kit import fresh_database, new_app, prepare_stack


@pytest.fixture
def stack(database_url: str, kafka_bootstrap: str, run_id: str) -> Iterator[Settings]:
    """A database and a topic prefix of this test's own (the topics go with the session's)."""
    with fresh_database(database_url) as url:
        yield Settings(
            database_url=url,
            kafka_bootstrap_servers=kafka_bootstrap,
            kafka_topic_prefix=f"t{run_id}.w{uuid.uuid4().hex[:6]}.",
        )


@pytest.fixture
async def pool(stack: Settings) -> AsyncIterator[asyncpg.Pool]:
    await prepare_stack(stack)
    pool = await create_pool(stack, max_size=4)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
def app(stack: Settings) -> Iterator[PinkseaApplication]:
    application = new_app(stack)
    try:
        yield application
    finally:
        application.close()
