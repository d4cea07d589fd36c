"""The system style presets in S3: one index object, ``system/style_presets/index.json``, in the
images bucket (never served: CloudFront serves ``/users/*`` only).

``pinksea presets sync`` writes it from the repository's file (``infra/presets/``); the API
reads it (api/presets.py caches it). One object, so a sync replaces the whole list at once and a
reader never sees half of one. Blocking boto3 calls: run them off the event loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from domain.presets import PresetList, parse_presets

INDEX_KEY = "system/style_presets/index.json"
# The list the repository ships (InvokeAI's default presets, each with a stable id).
DEFAULT_FILE = Path(__file__).resolve().parent / "presets" / "style_presets.json"


def read_file(path: Path = DEFAULT_FILE) -> PresetList:
    """The list from a file; ValueError saying what is wrong with it."""
    return parse_presets(path.read_bytes())


def upload(client: Any, bucket: str, presets: PresetList) -> str:
    """Replace the stored list with ``presets``; returns the object's ETag."""
    body = presets.model_dump_json(indent=2).encode()
    answer = client.put_object(
        Bucket=bucket,
        Key=INDEX_KEY,
        Body=body,
        ContentType="application/json",
        CacheControl="no-cache",
    )
    return str(answer.get("ETag", "")).strip('"')


def load(client: Any, bucket: str) -> PresetList:
    """The stored list; an empty one when none was synced yet. Any other S3 error propagates
    (the API answers it as 503); a stored index that no longer parses raises ValueError."""
    try:
        answer = client.get_object(Bucket=bucket, Key=INDEX_KEY)
    except client.exceptions.NoSuchKey:
        return PresetList(presets=())
    return parse_presets(answer["Body"].read())
