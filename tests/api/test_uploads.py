"""Uploads on the real stack: a presigned POST to S3, the server's check of what arrived
(hostile files rejected and deleted), the read model, the storage quota, tenant isolation, and
uploads as the init image and mask of a job."""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import httpx
import pytest
from botocore.exceptions import ClientError
from PIL import Image

from domain.calibration import CALIBRATION, DeviceClass, inputs_ms
from tests.api.conftest import Kit, problem_type

pytestmark = pytest.mark.integration


def _png(width: int = 64, height: int = 64, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), (200, 30, 90) if mode == "RGB" else 255).save(
        buffer, format="PNG"
    )
    return buffer.getvalue()


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 20, 30)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_bomb(side: int = 60_000) -> bytes:
    """A valid PNG header declaring ``side`` x ``side`` pixels (3.6 GB decoded) in 60 bytes."""
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit greyscale
    idat = zlib.compress(b"\x00" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", idat)
        + _chunk(b"IEND", b"")
    )


async def _start(kit: Kit, user: str, content_type: str = "image/png") -> dict[str, Any]:
    r = await kit.client.post(
        "/v1/uploads", json={"content_type": content_type}, headers=kit.auth(user)
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


def _post(ticket: dict[str, Any], body: bytes, content_type: str | None = None) -> httpx.Response:
    """The client's POST of the file to S3, as a browser form would send it."""
    files = {"file": ("image", body, content_type or ticket["content_type"])}
    return httpx.post(ticket["url"], data=ticket["fields"], files=files, timeout=30)


async def _complete(kit: Kit, user: str, upload_id: str) -> httpx.Response:
    return await kit.client.post(f"/v1/uploads/{upload_id}/complete", headers=kit.auth(user))


async def _uploaded(kit: Kit, user: str, body: bytes | None = None) -> dict[str, Any]:
    ticket = await _start(kit, user)
    assert _post(ticket, body or _png()).status_code in (200, 201, 204)
    r = await _complete(kit, user, ticket["upload_id"])
    assert r.status_code == 200, r.text
    return dict(r.json())


def _exists(kit: Kit, key: str) -> bool:
    try:
        kit.services.s3.head_object(Bucket=kit.settings.s3_bucket, Key=key)
    except ClientError:
        return False
    return True


async def test_upload_complete_list_get_quota_and_delete(kit: Kit, user: str) -> None:
    png = _png()
    ticket = await _start(kit, user)
    assert ticket["key"] == f"users/{user}/uploads/{ticket['upload_id']}.png"
    assert ticket["size_bytes_max"] == 5 * 1024**2  # the trial's limit
    assert ticket["fields"]["key"] == ticket["key"] and "policy" in ticket["fields"]
    # Nothing uploaded yet: completing is premature, and records nothing.
    early = await _complete(kit, user, ticket["upload_id"])
    assert early.status_code == 409 and problem_type(early) == "invalid-transition"
    assert _post(ticket, png).status_code in (200, 201, 204)
    done = await _complete(kit, user, ticket["upload_id"])
    assert done.status_code == 200, done.text
    view = done.json()
    assert (view["status"], view["format"], view["width"], view["height"]) == (
        "completed", "PNG", 64, 64,
    )  # fmt: skip
    assert view["size_bytes"] == len(png) and httpx.get(view["url"]).content == png
    again = await _complete(kit, user, ticket["upload_id"])  # the same verdict, nothing new
    assert again.status_code == 200 and again.json()["status"] == "completed"

    await kit.project()
    listed = (await kit.client.get("/v1/uploads", headers=kit.auth(user))).json()
    assert [u["upload_id"] for u in listed["items"]] == [ticket["upload_id"]]
    one = await kit.client.get(f"/v1/uploads/{ticket['upload_id']}", headers=kit.auth(user))
    assert one.status_code == 200 and one.json()["size_bytes"] == len(png)
    me = (await kit.client.get("/v1/me", headers=kit.auth(user))).json()
    assert me["storage_used_bytes"] == len(png)  # uploads count in the storage quota

    gone = await kit.client.delete(f"/v1/uploads/{ticket['upload_id']}", headers=kit.auth(user))
    assert gone.status_code == 204 and int(gone.headers["X-Position"]) > 0
    assert not _exists(kit, ticket["key"])
    await kit.project()
    me = (await kit.client.get("/v1/me", headers=kit.auth(user))).json()
    assert me["storage_used_bytes"] == 0
    for r in (
        await kit.client.get(f"/v1/uploads/{ticket['upload_id']}", headers=kit.auth(user)),
        await kit.client.delete(f"/v1/uploads/{ticket['upload_id']}", headers=kit.auth(user)),
    ):
        assert r.status_code == 404 and problem_type(r) == "not-found"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"hello, I am a text file\n" * 10, "not a PNG, JPEG or WebP"),
        (_jpeg(), "is JPEG, not image/png"),  # a lying content type: the bytes decide
        (_png()[:-40], "truncated or corrupt"),
        (_png_bomb(), "decompression bomb"),
        (_png(4, 4), "4 px"),
    ],
    ids=["not-an-image", "lying-content-type", "truncated", "bomb", "too-small"],
)
async def test_hostile_files_are_rejected_and_deleted(
    kit: Kit, user: str, body: bytes, reason: str
) -> None:
    ticket = await _start(kit, user)
    assert _post(ticket, body, "image/png").status_code in (200, 201, 204)
    r = await _complete(kit, user, ticket["upload_id"])
    assert r.status_code == 422 and problem_type(r) == "upload-rejected", r.text
    assert reason in r.json()["detail"]
    assert not _exists(kit, ticket["key"])  # nothing half-kept
    again = await _complete(kit, user, ticket["upload_id"])  # the verdict is recorded
    assert again.status_code == 422 and problem_type(again) == "upload-rejected"
    await kit.project()
    view = await kit.client.get(f"/v1/uploads/{ticket['upload_id']}", headers=kit.auth(user))
    assert view.json()["status"] == "rejected" and view.json()["url"] is None
    me = (await kit.client.get("/v1/me", headers=kit.auth(user))).json()
    assert me["storage_used_bytes"] == 0


async def test_the_post_policy_bounds_size_and_key(kit: Kit, user: str) -> None:
    ticket = await _start(kit, user)
    # S3 enforces the signed policy (the server checks the size again on completion).
    oversized = _post(ticket, b"\x00" * (ticket["size_bytes_max"] + 1))
    assert oversized.status_code == 400 and b"EntityTooLarge" in oversized.content
    # The signed policy names the key: the same form cannot write another one.
    elsewhere = {**ticket["fields"], "key": f"users/{user}/images/forged.png"}
    forged = httpx.post(
        ticket["url"], data=elsewhere, files={"file": ("f", _png(), "image/png")}, timeout=30
    )
    assert forged.status_code == 403 and not _exists(kit, f"users/{user}/images/forged.png")
    assert not _exists(kit, ticket["key"])


async def test_another_users_upload_is_a_404_everywhere(kit: Kit, user: str, other: str) -> None:
    upload = await _uploaded(kit, user)
    await kit.project()
    upload_id = upload["upload_id"]
    for r in (
        await kit.client.get(f"/v1/uploads/{upload_id}", headers=kit.auth(other)),
        await _complete(kit, other, upload_id),
        await kit.client.delete(f"/v1/uploads/{upload_id}", headers=kit.auth(other)),
        await kit.submit(other, init_image=upload_id, strength=0.5),
        await kit.client.post(
            "/v1/jobs/quote", json={**_tiny(), "init_image": upload_id}, headers=kit.auth(other)
        ),
    ):
        assert r.status_code == 404 and problem_type(r) == "not-found", r.text
    assert (await kit.client.get("/v1/uploads", headers=kit.auth(other))).json()["items"] == []
    assert _exists(kit, f"users/{user}/uploads/{upload_id}.png")  # untouched


def _tiny() -> dict[str, Any]:
    from tests.api.conftest import TINY

    return dict(TINY)


async def test_jobs_from_an_upload_hold_by_strength(kit: Kit, user: str) -> None:
    init, mask = await _uploaded(kit, user), await _uploaded(kit, user, _png(mode="L"))

    async def quote(**inputs: Any) -> dict[str, Any]:
        body = {**_tiny(), "steps": 40, "width": 256, "height": 256, **inputs}
        r = await kit.client.post("/v1/jobs/quote", json=body, headers=kit.auth(user))
        assert r.status_code == 200, r.text
        return dict(r.json())

    full = await quote(init_image=init["upload_id"], strength=1.0)
    half = await quote(init_image=init["upload_id"], strength=0.5)
    plain = await quote()
    # Strength 1 runs every step, like text-to-image, after the init image's VAE encode.
    encode_ms = inputs_ms(
        CALIBRATION[("tiny-sd", DeviceClass.CPU)],
        steps=40, width=256, height=256, batch_size=1, loras=0, vae_encodes=1,
    )  # fmt: skip
    assert full["estimate_ms"] == plain["estimate_ms"] + encode_ms
    assert 0.45 < half["hold_mc"] / full["hold_mc"] < 0.6  # 20 of 40 steps, same fixed costs

    accepted = await kit.submit(user, init_image=init["upload_id"], strength=0.5)
    assert accepted.status_code == 202, accepted.text
    await kit.project()
    job = await kit.client.get(f"/v1/jobs/{accepted.json()['job_id']}", headers=kit.auth(user))
    assert job.status_code == 200
    inpaint = await kit.submit(
        user, "inpaint", model="tiny-sd-inpaint", init_image=init["upload_id"],
        mask=mask["upload_id"],
    )  # fmt: skip
    assert inpaint.status_code in (202, 429), inpaint.text  # 429: the trial's one open job
    # Inputs the job cannot use: a mask without an inpainting model, a pending upload.
    bad = await kit.submit(user, init_image=init["upload_id"], mask=mask["upload_id"])
    assert bad.status_code == 422 and problem_type(bad) == "invalid-parameters"
    pending = await _start(kit, user)
    r = await kit.submit(user, init_image=pending["upload_id"])
    assert r.status_code == 422 and "pending" in r.json()["detail"]
