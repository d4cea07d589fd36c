"""The quote and submission of an upscale job on the real stack: an upload upscaled x4 is
priced (by its output pixels) and allowed on the trial plan; a wrong scale and an output past
the pixel cap are 422 problems before anything is recorded."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.conftest import Kit, problem_type
from tests.api.test_uploads import _uploaded

pytestmark = pytest.mark.integration


async def test_an_upscale_is_quoted_by_output_pixels_and_refused_past_the_cap(
    kit: Kit, user: str
) -> None:
    upload = await _uploaded(kit, user)

    async def quote(**params: Any) -> Any:
        body = {
            "model": "tiny-upscaler-x4",
            "prompt": "sharper",
            "steps": 1,
            "width": 256,
            "height": 256,
            "init_image": upload["upload_id"],
            "scale": 4,
            **params,
        }
        return await kit.client.post("/v1/jobs/quote", json=body, headers=kit.auth(user))

    small, large = await quote(), await quote(width=512, height=512)
    assert small.status_code == large.status_code == 200, (small.text, large.text)
    assert small.json()["allowed"] is True  # every plan may upscale
    assert 0 < small.json()["estimate_ms"] < large.json()["estimate_ms"]

    wrong = await quote(scale=2)
    assert wrong.status_code == 422 and "send scale 4" in wrong.text
    huge = await quote(model="realesrgan-x4", width=4096, height=4096)
    assert huge.status_code == 422 and "at most 8388608" in huge.text, huge.text
    assert problem_type(huge) == problem_type(wrong)
