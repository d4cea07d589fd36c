"""Uploads on the real stack: what only an upload does (its content type fixed by the POST
policy and checked against the bytes, its signed URL, its use as the init image and mask of a
job), and its declaration for the contract every verified object keeps
(tests/api/test_verified_objects.py: the check of what arrived, hostile files rejected and
deleted, the read model, the storage quota, idempotency, tenant isolation)."""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import httpx
import pytest
from PIL import Image

from domain.calibration import CALIBRATION, DeviceClass, inputs_ms
from tests.api.conftest import Kit, problem_type
from tests.api.verified_objects import Kind, exists, post_form

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


def _describes(view: dict[str, Any], body: bytes) -> None:
    assert (view["format"], view["width"], view["height"]) == ("PNG", 64, 64)
    assert httpx.get(view["url"]).content == body  # a completed upload's signed URL


async def _used_by(kit: Kit, user: str, upload_id: str) -> tuple[httpx.Response, ...]:
    quote = {**_tiny(), "init_image": upload_id}
    return (
        await kit.submit(user, init_image=upload_id, strength=0.5),
        await kit.client.post("/v1/jobs/quote", json=quote, headers=kit.auth(user)),
    )


async def _allowed(kit: Kit, user: str) -> None:
    """Every plan allows uploads (the trial's limit is 5 MiB)."""


KIND = Kind(
    name="upload",
    path="/v1/uploads",
    id_field="upload_id",
    request={"content_type": "image/png"},
    other_request={"content_type": "image/jpeg"},
    accepted="completed",
    file=_png,
    form=("image", "image/png"),
    key=lambda user, upload_id: f"users/{user}/uploads/{upload_id}.png",
    allow=_allowed,
    describes=_describes,
    used_by=_used_by,
    hostile=(
        ("not-an-image", b"hello, I am a text file\n" * 10, "not a PNG, JPEG or WebP"),
        ("lying-content-type", _jpeg(), "is JPEG, not image/png"),  # the bytes decide
        ("truncated", _png()[:-40], "truncated or corrupt"),
        ("bomb", _png_bomb(), "decompression bomb"),
        ("too-small", _png(4, 4), "4 px"),
    ),
)
_uploaded = KIND.uploaded  # tests/api/test_erasure.py, test_upscale_quote.py upload with it
_exists = exists


async def _start(kit: Kit, user: str, content_type: str = "image/png") -> dict[str, Any]:
    r = await kit.client.post(
        "/v1/uploads", json={"content_type": content_type}, headers=kit.auth(user)
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


async def test_the_ticket_carries_the_plans_limit_and_content_type(kit: Kit, user: str) -> None:
    ticket = await _start(kit, user, "image/webp")
    assert ticket["key"] == f"users/{user}/uploads/{ticket['upload_id']}.webp"
    assert ticket["size_bytes_max"] == 5 * 1024**2  # the trial's limit
    assert (ticket["content_type"], ticket["fields"]["Content-Type"]) == ("image/webp",) * 2
    # The signed policy fixes the content type: a form declaring another is refused.
    png = {**ticket, "fields": {**ticket["fields"], "Content-Type": "image/png"}}
    refused = post_form(png, _png(), "image", "image/png")
    assert refused.status_code == 403 and not _exists(kit, ticket["key"])
    view = await kit.client.get(f"/v1/uploads/{ticket['upload_id']}", headers=kit.auth(user))
    assert (view.json()["status"], view.json()["url"]) == ("pending", None)


async def test_the_post_policy_names_the_key(kit: Kit, user: str) -> None:
    ticket = await _start(kit, user)
    # The signed policy names the key: the same form cannot write another one.
    elsewhere = {**ticket["fields"], "key": f"users/{user}/images/forged.png"}
    forged = httpx.post(
        ticket["url"], data=elsewhere, files={"file": ("f", _png(), "image/png")}, timeout=30
    )
    assert forged.status_code == 403 and not _exists(kit, f"users/{user}/images/forged.png")
    assert not _exists(kit, ticket["key"])


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
