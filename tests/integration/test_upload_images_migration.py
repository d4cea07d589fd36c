"""Migration 0020 on a database that already has uploads: the jobs projection skipped their
events before it, so the migration fills their owners and images from the uploads projection's
rows and versions; the jobs projection then goes on from there (the events it covered skipped
by the version gate, the later ones applied) and ends where a projection from scratch does."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from uuid import UUID

import asyncpg
import pytest

from domain.application import PinkseaApplication
from domain.uploads import ImageFacts
from eventstore.contract import envelope_for, topic_for
from infra.settings import Settings
from projections.base import Projection
from projections.registry import ALL_PROJECTIONS
from projections.runner import apply_gated
from projections.uploads import UploadsProjection
from read_models.migrate import MIGRATIONS_DIR, migrate
from tests.integration.streaming_kit import T0, fresh_database, new_app

pytestmark = pytest.mark.integration

MIGRATION = "0020_upload_images.sql"
_ROWS = {
    "images": "SELECT user_id, name, job_id, upload_id, idx, key, thumbnail_key, size_bytes,"
    " width, height, created_at, position, image_category, image_origin, starred,"
    " is_intermediate, deleted_at FROM images ORDER BY name",
    "upload_owners": "SELECT upload_id, user_id, key, requested_at FROM upload_owners"
    " ORDER BY upload_id",
}
PNG = ImageFacts(size_bytes=300, format="PNG", width=64, height=48)


async def _project(
    app: PinkseaApplication, conn: asyncpg.Connection, projections: Sequence[Projection]
) -> None:
    """Apply every stored event to ``projections``, gated as the runners apply them."""
    for n in app.recorder.select_notifications(start=1, limit=100_000):
        env = envelope_for(app.mapper.to_domain_event(n), n.id)
        async with conn.transaction():
            for projection in projections:
                if topic_for(env.type) in projection.topics and projection.wants(env):
                    await apply_gated(conn, projection, env)


async def _rows(conn: asyncpg.Connection) -> dict[str, list[tuple[object, ...]]]:
    return {table: [tuple(r) for r in await conn.fetch(sql)] for table, sql in _ROWS.items()}


def _request(app: PinkseaApplication, user: str, key: str) -> UUID:
    return app.request_upload(user, request_key=key, content_type="image/png", at=T0).upload_id


async def test_uploads_made_before_the_migration_are_in_the_gallery_after_it(
    database_url: str, tmp_path: Path
) -> None:
    before = tmp_path / "before"
    before.mkdir()
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        if path.name < MIGRATION:
            (before / path.name).symlink_to(path)
    with fresh_database(database_url) as url, fresh_database(database_url) as scratch_url:
        app = new_app(Settings(database_url=url))
        conn = await asyncpg.connect(url)
        scratch = await asyncpg.connect(scratch_url)
        try:
            user = "early"
            app.register_user(user, T0)
            kept, later, doomed, rejected = (
                _request(app, user, k) for k in ("kept", "later", "doomed", "rejected")
            )
            for upload in (kept, doomed):
                app.complete_upload(user, upload, facts=PNG, at=T0)
            app.complete_upload(user, rejected, facts=ImageFacts(5, problem="no image"), at=T0)
            # The deployment before this migration: only the uploads projection reads them.
            await migrate(conn, before)
            await _project(app, conn, [UploadsProjection()])
            assert (await migrate(conn))[0] == MIGRATION  # then those numbered after it
            backfilled = await _rows(conn)
            assert [r[1] for r in backfilled["images"]] == sorted(str(u) for u in (kept, doomed))

            # After it, more happens to the same uploads, and the jobs projection goes on.
            app.complete_upload(user, later, facts=PNG, at=T0)
            app.delete_upload(user, doomed, at=T0)
            await _project(app, conn, ALL_PROJECTIONS)  # the whole log, gated

            await migrate(scratch)
            await _project(app, scratch, ALL_PROJECTIONS)
            assert await _rows(conn) == await _rows(scratch)
            images = {r[1]: r for r in (await _rows(conn))["images"]}
            assert images.keys() == {str(u) for u in (kept, later, doomed)}
            assert images[str(doomed)][-1] is not None and images[str(kept)][-1] is None
        finally:
            await conn.close()
            await scratch.close()
            app.close()
