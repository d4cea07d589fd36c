"""The system style presets as this API process holds them: the S3 index (infra/style_presets.py)
read at most once a minute and kept in memory.

In-process rather than Redis: the list is one small object every process reads the same, so a
process's own copy costs one S3 read a minute and no Redis round trip per request. A sync shows
everywhere within :data:`PRESETS_TTL_S`. While S3 is down an expired copy is not served: the
read fails and the request answers 503 like every other S3 failure (api/problems.py), so a
submission never applies a list the operator replaced longer ago than the TTL.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import structlog
from anyio import to_thread

from api import problems as p
from api.problems import ProblemError
from domain.presets import PresetList
from infra import style_presets

log = structlog.get_logger("api.presets")

PRESETS_TTL_S = 60.0


class PresetCache:
    def __init__(self, ttl_s: float = PRESETS_TTL_S) -> None:
        self.ttl_s = ttl_s
        self._held: tuple[float, PresetList] | None = None
        self._lock = anyio.Lock()  # one S3 read per expiry, however many requests wait

    def forget(self) -> None:
        """Read S3 again on the next request (after a sync in this process, tests)."""
        self._held = None

    def _fresh(self) -> PresetList | None:
        if self._held is None or time.monotonic() - self._held[0] > self.ttl_s:
            return None
        return self._held[1]

    async def get(self, s3: Any, bucket: str) -> PresetList:
        held = self._fresh()
        if held is not None:
            return held
        async with self._lock:
            held = self._fresh()
            if held is not None:
                return held
            try:
                presets = await to_thread.run_sync(style_presets.load, s3, bucket)
            except ValueError as e:  # the stored index no longer parses: an operator's fix
                log.error("stored style presets unreadable", error=str(e))
                raise ProblemError(
                    p.UNAVAILABLE,
                    "The style presets cannot be read right now; retry later.",
                    headers={"Retry-After": "60"},
                ) from None
            self._held = (time.monotonic(), presets)
            return presets
