"""What the API tests of verified objects share (api/verified_objects.py): a kind's routes and
files as a test sees them (:class:`Kind`), the client's form POST to S3, and whether an object
is in the bucket. tests/api/test_uploads.py and tests/api/test_user_models.py declare their
kind; tests/api/test_verified_objects.py runs the contract both keep."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from botocore.exceptions import ClientError

from tests.api.conftest import Kit

POSTED = (200, 201, 204)  # S3's answers to a form POST it accepted


@dataclass(frozen=True)
class Kind:
    """One kind of verified object, as its API tests drive it."""

    name: str  # a test id
    path: str  # its collection, e.g. /v1/uploads
    id_field: str  # the ticket's and the view's id, e.g. upload_id
    request: dict[str, Any]  # a request body
    other_request: dict[str, Any]  # another request body (an Idempotency-Key used for it conflicts)
    accepted: str  # the accepted status
    file: Callable[[], bytes]  # a file it accepts
    form: tuple[str, str]  # the form's filename and content type
    key: Callable[[str, str], str]  # (user, id) -> the object's key
    allow: Callable[[Kit, str], Awaitable[None]]  # put the user on a plan that allows it
    # Asserts the accepted view describes the file (what only this kind records).
    describes: Callable[[dict[str, Any], bytes], None]
    # The requests of another user naming it in a job (each must be a 404).
    used_by: Callable[[Kit, str, str], Awaitable[Sequence[httpx.Response]]]
    hostile: Sequence[tuple[str, bytes, str]]  # (a test id, a file it rejects, why)

    async def start(self, kit: Kit, user: str, **headers: str) -> httpx.Response:
        return await kit.client.post(
            self.path, json=self.request, headers={**kit.auth(user), **headers}
        )

    async def ticket(self, kit: Kit, user: str) -> dict[str, Any]:
        r = await self.start(kit, user)
        assert r.status_code == 201, r.text
        return dict(r.json())

    def post(self, ticket: dict[str, Any], body: bytes) -> httpx.Response:
        """The client's POST of the file to S3, as a browser form would send it."""
        return post_form(ticket, body, *self.form)

    async def complete(self, kit: Kit, user: str, object_id: str) -> httpx.Response:
        return await kit.client.post(f"{self.path}/{object_id}/complete", headers=kit.auth(user))

    async def get(self, kit: Kit, user: str, object_id: str) -> httpx.Response:
        return await kit.client.get(f"{self.path}/{object_id}", headers=kit.auth(user))

    async def delete(self, kit: Kit, user: str, object_id: str) -> httpx.Response:
        return await kit.client.delete(f"{self.path}/{object_id}", headers=kit.auth(user))

    async def listed(self, kit: Kit, user: str) -> list[str]:
        page = (await kit.client.get(self.path, headers=kit.auth(user))).json()
        assert page["next_cursor"] is None
        return [item[self.id_field] for item in page["items"]]

    async def uploaded(self, kit: Kit, user: str, body: bytes | None = None) -> dict[str, Any]:
        """A completed object's view (accepted)."""
        ticket = await self.ticket(kit, user)
        assert self.post(ticket, body or self.file()).status_code in POSTED
        r = await self.complete(kit, user, ticket[self.id_field])
        assert r.status_code == 200, r.text
        return dict(r.json())


def post_form(
    ticket: dict[str, Any], body: bytes, filename: str, content_type: str
) -> httpx.Response:
    files = {"file": (filename, body, content_type)}
    return httpx.post(ticket["url"], data=ticket["fields"], files=files, timeout=30)


def exists(kit: Kit, key: str) -> bool:
    try:
        kit.services.s3.head_object(Bucket=kit.settings.s3_bucket, Key=key)
    except ClientError:
        return False
    return True


async def storage_used_bytes(kit: Kit, user: str) -> int:
    me = (await kit.client.get("/v1/me", headers=kit.auth(user))).json()
    return int(me["storage_used_bytes"])
