"""Issue 15's journey: one InvokeAI user's session, as a client drives it, through the HTTP API
on the real stack with every backend process running (relay, projections, scheduler, settler,
a GPU worker on the tiny pipelines, tests/e2e/test_generation_flow.py's Platform).

An admin puts the user on a plan with LoRAs; the user uploads an image and a mask (presigned
POSTs to S3, sent over real HTTP as a browser would), runs image-to-image and inpainting from
them, uploads a LoRA, runs text-to-image with it and upscales that result. Each job's images
are in S3 under the user's prefix, each is billed its GPU time at its tier's rate, once; the
statement shows every charge once and nothing held; the storage quota counts the uploads, the
LoRA and the images; GET /v1/images recalls how each image was made. Another user gets a 404
for every one of those objects, and their jobs naming them are refused with nothing held.

Only the public contract is used: routes, status codes and documented layouts (the S3 keys).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import torch
from PIL import Image

from api.app import create_app
from api.auth import sign_dev_token
from domain.plans import RATE_MC_PER_GPU_MS, GpuTier
from gpu_consumer.outputs import s3_client
from gpu_consumer.registry import ModelRegistry
from gpu_consumer.tiny_lora import build_tiny_lora
from infra.settings import Settings
from tests.e2e.test_generation_flow import Platform, models_cache, platform, stack

pytestmark = pytest.mark.integration
__all__ = ["models_cache", "platform", "stack"]  # the fixtures, from the generation flow's
T = TypeVar("T")

# Enterprise terms with LoRAs (lora_training), one job at a time on the basic tier.
TERMS: dict[str, Any] = {
    "credits_per_month": 3_000,
    "tier": "basic",
    "concurrent_jobs": 1,
    "storage_gb": 1,
}
SIDE_PX = 64  # the tiny pipelines' images: 64 x 64
BASE: dict[str, Any] = {"steps": 4, "width": SIDE_PX, "height": SIDE_PX}
UPSCALE: dict[str, Any] = {"model": "tiny-upscaler-x4", "prompt": "sharper", "steps": 1, "scale": 4}
TERMINAL = frozenset({"completed", "failed", "cancelled", "rejected"})
JOB_WAIT_S = 120.0  # a tiny job on the CPU takes seconds; the first loads its model too
PROJECTION_WAIT_S = 30.0
POLL_S = 0.2
LEDGER_PAGES_MAX = 20


def _png(mode: str = "RGB") -> bytes:
    """A 64 x 64 PNG: a photo-like RGB image, or a greyscale mask whose white centre is
    repainted."""
    if mode == "RGB":
        image = Image.new("RGB", (SIDE_PX, SIDE_PX), (200, 30, 90))
        image.paste((20, 60, 200), (0, SIDE_PX // 2, SIDE_PX, SIDE_PX))
    else:
        image = Image.new("L", (SIDE_PX, SIDE_PX), 0)
        image.paste(255, (16, 16, 48, 48))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


async def _eventually(
    read: Callable[[], Awaitable[T]], done: Callable[[T], bool], what: str, timeout_s: float
) -> T:
    """``read()`` again until ``done`` holds of its value, for at most ``timeout_s``; the last
    value seen is in the failure."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await read()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s; last seen {value!r}")
        await asyncio.sleep(POLL_S)


def _problem(response: httpx.Response, status: int, kind: str) -> None:
    """An RFC 9457 problem of this status and type."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["detail"], body
    assert str(body["type"]).endswith(f"/{kind}"), body


@dataclass
class Client:
    """A client of the API in-process (ASGI), with S3 reached over real HTTP."""

    settings: Settings  # the API's: the platform's stack, with dev tokens
    api: httpx.AsyncClient
    web: httpx.AsyncClient  # the browser's side: S3 form POSTs and signed URLs

    def auth(self, user: str, *, admin: bool = False, **headers: str) -> dict[str, str]:
        token = sign_dev_token(self.settings, user, admin=admin)
        return {"Authorization": f"Bearer {token}", **headers}

    async def call(
        self,
        method: str,
        path: str,
        user: str,
        expect: int = 200,
        *,
        admin: bool = False,
        headers: dict[str, str] | None = None,
        **kw: Any,
    ) -> dict[str, Any]:
        sent = self.auth(user, admin=admin, **(headers or {}))
        r = await self.api.request(method, path, headers=sent, **kw)
        assert r.status_code == expect, (method, path, r.status_code, r.text)
        return dict(r.json())

    async def sign_up_on_lora_plan(self, user: str) -> int:
        """The user's first request opens their account; an admin assigns the plan. Answers
        the plan change's position (its grant included)."""
        await self.call("GET", "/v1/me", user)
        body = {"plan": "enterprise", "reason": "issue 15 journey", "custom_terms": TERMS}
        path = f"/v1/admin/users/{user}/plan"
        changed = await self.call("PUT", path, "root", admin=True, json=body)
        assert changed["changed"] is True
        return int(changed["position"])

    async def balance(self, user: str, position: int) -> dict[str, Any]:
        """The balance with every credit event up to ``position`` applied (read fresh)."""
        return await self.call(
            "GET", "/v1/me/balance", user, headers={"X-Min-Position": str(position)}
        )

    async def send_form(self, ticket: dict[str, Any], body: bytes, name: str, kind: str) -> None:
        """POST the file to S3 with the presigned form: its fields first, the file last."""
        files = {"file": (name, body, kind)}
        r = await self.web.post(ticket["url"], data=ticket["fields"], files=files)
        assert r.status_code in (200, 201, 204), (r.status_code, r.text)

    async def upload(self, user: str, body: bytes) -> dict[str, Any]:
        ticket = await self.call(
            "POST", "/v1/uploads", user, 201, json={"content_type": "image/png"}
        )
        assert ticket["key"] == f"users/{user}/uploads/{ticket['upload_id']}.png"
        await self.send_form(ticket, body, "photo.png", "image/png")
        view = await self.call("POST", f"/v1/uploads/{ticket['upload_id']}/complete", user)
        assert (view["status"], view["format"], view["size_bytes"]) == (
            "completed", "PNG", len(body),
        )  # fmt: skip
        assert (await self.web.get(view["url"])).content == body  # its signed URL
        return view

    async def upload_lora(self, user: str, body: bytes) -> dict[str, Any]:
        request = {"name": "pink sea", "family": "sd1.5"}
        ticket = await self.call("POST", "/v1/models/mine", user, 201, json=request)
        assert ticket["key"] == f"models/users/{user}/{ticket['model_id']}.safetensors"
        await self.send_form(ticket, body, "pink.safetensors", "application/octet-stream")
        view = await self.call("POST", f"/v1/models/mine/{ticket['model_id']}/complete", user)
        assert (view["status"], view["family"], view["size_bytes"]) == (
            "verified", "sd1.5", len(body),
        )  # fmt: skip
        assert view["sha256"] == hashlib.sha256(body).hexdigest()  # what a job pins
        return view

    async def submit(self, user: str, key: str, **params: Any) -> dict[str, Any]:
        body = {"prompt": "a pink sea at dawn", "seed": 7, **params}
        headers = {"Idempotency-Key": key}
        return await self.call("POST", "/v1/jobs", user, 202, json=body, headers=headers)

    async def finished(self, user: str, accepted: dict[str, Any]) -> dict[str, Any]:
        """The job once it is terminal, read fresh (never from the finished-job cache)."""
        headers = {"X-Min-Position": str(accepted["position"])}
        path = f"/v1/jobs/{accepted['job_id']}"

        async def read() -> dict[str, Any]:
            return await self.call("GET", path, user, headers=headers)

        return await _eventually(read, lambda j: j["status"] in TERMINAL, path, JOB_WAIT_S)

    async def ledger(self, user: str) -> list[dict[str, Any]]:
        """Every line of the user's statement, newest first."""
        lines: list[dict[str, Any]] = []
        cursor: str | None = None
        for _ in range(LEDGER_PAGES_MAX):
            params = {"limit": 100} | ({"cursor": cursor} if cursor else {})
            page = await self.call("GET", "/v1/me/ledger", user, params=params)
            lines += page["items"]
            cursor = page["next_cursor"]
            if cursor is None:
                return lines
        raise AssertionError(f"{user}'s statement is longer than {LEDGER_PAGES_MAX} pages")

    async def generated_images(self, user: str) -> list[dict[str, Any]]:
        """The user's images made by jobs (uploads are images too: left out by the filters)."""
        params = {"category": "general", "origin": "internal", "limit": 100}
        page = await self.call("GET", "/v1/images", user, params=params)
        assert page["next_cursor"] is None
        return list(page["items"])

    async def storage_used_bytes(self, user: str) -> int:
        return int((await self.call("GET", "/v1/me", user))["storage_used_bytes"])


@pytest.fixture
async def client(platform: Platform, tmp_path: Path) -> AsyncIterator[Client]:
    """Every backend process, then the API in-process on the same stack."""
    await platform.start(workers=1)
    settings = platform.settings.model_copy(
        update={
            "dev_jwt_enabled": True,
            "dev_jwt_key_path": str(tmp_path / "dev-jwt.pem"),
            "rate_limit_multiplier": 100.0,
            "read_your_writes_timeout_s": 5.0,
            "log_json": False,
        }
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://api.test") as api,
            httpx.AsyncClient(timeout=30) as web,
        ):
            yield Client(settings, api, web)


@pytest.fixture
def lora_bytes(models_cache: Path, tmp_path: Path) -> bytes:
    """A valid SD-1.5 LoRA of the tiny model (random weights; gpu_consumer/tiny_lora.py)."""
    tiny = ModelRegistry(models_dir=None, cache_dir=models_cache).load(
        "tiny-sd", torch.device("cpu")
    )
    return build_tiny_lora(tiny.pipeline, tmp_path / "pink.safetensors").read_bytes()


async def _check_billed_and_stored(c: Client, user: str, job: dict[str, Any]) -> None:
    """Completed, billed exactly its GPU time at its tier's rate, its images in S3 where the
    contract puts them, the same bytes behind their signed URLs."""
    assert job["status"] == "completed", job
    # An upscale is one pass over a few pixels: on a fast machine it may meter under 1 ms.
    assert job["gpu_ms"] > 0 or job["model"] == UPSCALE["model"], job
    assert job["charged_mc"] == job["gpu_ms"] * RATE_MC_PER_GPU_MS[GpuTier(job["tier"])], job
    assert job["charged_mc"] <= job["hold_mc"] and job["refunded_mc"] == 0, job
    assert job["image_count"] == len(job["images"]) == 1, job
    settings = c.settings
    for image in job["images"]:
        assert image["name"] == f"{job['job_id']}-{image['index']}"
        key = f"users/{user}/images/{image['name']}.png"
        stored = s3_client(settings).get_object(Bucket=settings.s3_bucket, Key=key)
        png = stored["Body"].read()
        assert len(png) == image["size_bytes"]
        assert Image.open(io.BytesIO(png)).size == (image["width"], image["height"])
        assert (await c.web.get(image["url"])).content == png


async def test_an_invokeai_session_uploads_generates_upscales_and_is_billed_exactly(
    client: Client, lora_bytes: bytes
) -> None:
    c = client
    ann, bob = f"ann-{uuid.uuid4().hex[:8]}", f"bob-{uuid.uuid4().hex[:8]}"
    ann_plan, bob_plan = await c.sign_up_on_lora_plan(ann), await c.sign_up_on_lora_plan(bob)
    ann_before = await c.balance(ann, ann_plan)
    assert ann_before["held_mc"] == 0 and ann_before["available_mc"] > 0
    # Read with the plan change's position: the subscriptions projection may lag it.
    me = await c.call("GET", "/v1/me", ann, headers={"X-Min-Position": str(ann_plan)})
    assert me["plan"]["lora_training"] and me["storage_quota_bytes"] == 1024**3
    assert me["storage_used_bytes"] == 0

    # Two uploads: the photo and a mask. The quota counts them once completed.
    photo, mask = await c.upload(ann, _png()), await c.upload(ann, _png("L"))
    uploaded_bytes = photo["size_bytes"] + mask["size_bytes"]
    await _eventually(
        lambda: c.storage_used_bytes(ann),
        lambda used: used == uploaded_bytes,
        "the quota counts both uploads",
        PROJECTION_WAIT_S,
    )

    # Image-to-image from the photo at strength 0.5, then inpainting it under the mask.
    img2img = await c.finished(
        ann,
        await c.submit(
            ann, "img2img", model="tiny-sd", **BASE, init_image=photo["upload_id"], strength=0.5
        ),
    )
    await _check_billed_and_stored(c, ann, img2img)
    inpaint = await c.finished(
        ann,
        await c.submit(
            ann,
            "inpaint",
            model="tiny-sd-inpaint",
            **BASE,
            init_image=photo["upload_id"],
            mask=mask["upload_id"],
        ),
    )
    await _check_billed_and_stored(c, ann, inpaint)

    # A LoRA of their own, then text-to-image with it, then that result upscaled x4.
    lora = await c.upload_lora(ann, lora_bytes)
    model_id = lora["model_id"]
    with_lora = await c.finished(
        ann,
        await c.submit(
            ann, "lora", model="tiny-sd", **BASE, loras=[{"id": model_id, "weight": 0.8}]
        ),
    )
    await _check_billed_and_stored(c, ann, with_lora)
    result = with_lora["images"][0]["name"]
    upscaled = await c.finished(
        ann,
        await c.submit(
            ann, "upscale", **UPSCALE, width=4 * SIDE_PX, height=4 * SIDE_PX, init_image=result
        ),
    )
    await _check_billed_and_stored(c, ann, upscaled)
    assert (upscaled["images"][0]["width"], upscaled["images"][0]["height"]) == (256, 256)
    jobs = [img2img, inpaint, with_lora, upscaled]

    # The statement: each job reserved once and settled once, by its charge; nothing held.
    charged = {j["job_id"]: j["charged_mc"] for j in jobs}

    def settled(lines: list[dict[str, Any]]) -> bool:
        return {ln["job_id"] for ln in lines if ln["kind"] == "settle"} >= set(charged)

    lines = await _eventually(
        lambda: c.ledger(ann), settled, "every job's settlement on the statement", PROJECTION_WAIT_S
    )
    for job_id, charged_mc in charged.items():
        own = [ln for ln in lines if ln["job_id"] == job_id]
        events = {
            kind: {ln["event_id"] for ln in own if ln["kind"] == kind}
            for kind in ("reserve", "settle")
        }
        assert [len(events["reserve"]), len(events["settle"])] == [1, 1], own
        assert {ln["kind"] for ln in own} == {"reserve", "settle"}, own  # no release, no refund
        assert sum(ln["amount_mc"] for ln in own) == -charged_mc, own
        assert sum(ln["held_change_mc"] for ln in own) == 0, own
    spent_mc = sum(charged.values())
    newest = lines[0]
    assert (newest["available_after_mc"], newest["held_after_mc"]) == (
        ann_before["available_mc"] - spent_mc, 0,
    )  # fmt: skip
    ann_after = await c.balance(ann, max(ln["position"] for ln in lines))
    assert ann_after["available_mc"] == ann_before["available_mc"] - spent_mc
    assert ann_after["held_mc"] == 0

    # The quota counts the uploads, the LoRA and every image the jobs made.
    image_bytes = sum(i["size_bytes"] for j in jobs for i in j["images"])
    await _eventually(
        lambda: c.storage_used_bytes(ann),
        lambda used: used == uploaded_bytes + lora["size_bytes"] + image_bytes,
        "the quota counts the uploads, the LoRA and the images",
        PROJECTION_WAIT_S,
    )

    # GET /v1/images lists the results with how each was made (InvokeAI's recall parameters).
    names = {j["images"][0]["name"]: j for j in jobs}
    listed = await _eventually(
        lambda: c.generated_images(ann),
        lambda images: {i["name"] for i in images} >= set(names),
        "the results in GET /v1/images",
        PROJECTION_WAIT_S,
    )
    recalled = {i["name"]: i["metadata"] for i in listed if i["name"] in names}
    lora_ref = {"id": model_id, "weight": 0.8, "sha256": lora["sha256"]}
    expected = {
        img2img["images"][0]["name"]: {
            "model": "tiny-sd", "init_image": photo["upload_id"], "strength": 0.5, "mask": None,
            "loras": None, "scale": None,
        },
        inpaint["images"][0]["name"]: {
            "model": "tiny-sd-inpaint", "init_image": photo["upload_id"],
            "mask": mask["upload_id"], "loras": None, "scale": None,
        },
        result: {
            "model": "tiny-sd", "init_image": None, "mask": None, "loras": [lora_ref],
            "scale": None,
        },
        upscaled["images"][0]["name"]: {
            "model": "tiny-upscaler-x4", "init_image": result, "mask": None, "loras": None,
            "scale": 4,
        },
    }  # fmt: skip
    for name, fields in expected.items():
        assert {k: recalled[name][k] for k in fields} == fields, (name, recalled[name])
        assert recalled[name]["seed"] == 7 and recalled[name]["steps"] == names[name]["steps"]

    # Another user: every one of ann's objects is a 404, and jobs naming them are refused.
    bob_before = await c.balance(bob, bob_plan)
    for path in (
        f"/v1/uploads/{photo['upload_id']}",
        f"/v1/uploads/{mask['upload_id']}",
        f"/v1/models/mine/{model_id}",
        f"/v1/images/{result}",
        f"/v1/jobs/{with_lora['job_id']}",
    ):
        r = await c.api.get(path, headers=c.auth(bob))
        _problem(r, 404, "not-found")
    bobs_photo = await c.upload(bob, _png())  # his own, under ann's mask: the mask is checked
    refused = (
        {"model": "tiny-sd", **BASE, "init_image": photo["upload_id"], "strength": 0.5},
        {
            "model": "tiny-sd-inpaint", **BASE, "init_image": photo["upload_id"],
            "mask": mask["upload_id"],
        },
        {
            "model": "tiny-sd-inpaint", **BASE, "init_image": bobs_photo["upload_id"],
            "mask": mask["upload_id"],
        },
        {"model": "tiny-sd", **BASE, "loras": [{"id": model_id}]},
        {**UPSCALE, "width": 4 * SIDE_PX, "height": 4 * SIDE_PX, "init_image": result},
    )  # fmt: skip
    for i, params in enumerate(refused):
        body = {"prompt": "someone else's", **params}
        headers = {**c.auth(bob), "Idempotency-Key": f"theirs-{i}"}
        r = await c.api.post("/v1/jobs", json=body, headers=headers)
        _problem(r, 404, "not-found")
    # Bob's own job afterwards: once it settled, his statement has only it (nothing was held
    # for the refused ones, which recorded no job).
    bob_job = await c.finished(bob, await c.submit(bob, "own", model="tiny-sd", **BASE))
    assert bob_job["status"] == "completed", bob_job
    bob_lines = await _eventually(
        lambda: c.ledger(bob),
        lambda lines: any(ln["kind"] == "settle" for ln in lines),
        "bob's job settled on his statement",
        PROJECTION_WAIT_S,
    )
    assert {ln["job_id"] for ln in bob_lines if ln["job_id"]} == {bob_job["job_id"]}, bob_lines
    bob_after = await c.balance(bob, max(ln["position"] for ln in bob_lines))
    assert bob_after["held_mc"] == 0
    assert bob_after["available_mc"] == bob_before["available_mc"] - bob_job["charged_mc"]
    bob_jobs = await c.call("GET", "/v1/jobs", bob)
    assert [j["job_id"] for j in bob_jobs["items"]] == [bob_job["job_id"]]
