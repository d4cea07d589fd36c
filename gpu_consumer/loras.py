"""A job's LoRAs: read from S3 under the job's own user, checked against their recorded
sha256, applied to the cached base pipeline for the run and removed after it.

The API pinned each LoRA a job names to the sha256 of the file it verified (the user's own,
checked at submission); the dispatch carries the ids, weights and digests. The worker builds
each key itself from the job's user, ``models/users/{user_id}/{model_id}.safetensors``, so a
dispatch can never point it at another user's file: another user's id is simply not found
there. The bytes are hashed before they are parsed, and parsed only as safetensors (never
unpickled); a file that changed since it was verified is refused. Either is the user's fault
(never retried); S3 trouble is the platform's (retried).

Applying is diffusers' ``load_lora_weights`` (one peft adapter per LoRA) and ``set_adapters``
(their weights); removing is ``unload_lora_weights``, which puts the base layers back, so the
next job runs on the base model exactly. The time both take is part of making the model ready
(``model_load_ms``): never billed. A pipeline the adapters could not be removed from must not
serve another job: the caller drops it from the cache.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import torch
from botocore.exceptions import ClientError
from prometheus_client import Histogram

from domain.user_models import LORA_BYTES_MAX, user_model_key, user_models_prefix
from gpu_consumer.inputs import InputMissing
from gpu_consumer.registry import LoadedPipeline
from gpu_consumer.run import InvalidJob
from infra.messages import Dispatch

log = logging.getLogger(__name__)

LORA_LOAD_MS = Histogram(
    "pinksea_gpu_lora_load_ms",
    "Time to read, verify and apply a job's LoRAs (not billed, like model loading)",
    buckets=(1, 10, 100, 1000, 5000, 15000, 60000),
)
_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
# Verified files kept in memory, so a user's next job with the same LoRA skips S3.
CACHED_FILES_MAX = 8


@dataclass(frozen=True)
class LoraFile:
    model_id: UUID
    key: str
    sha256: str
    weight: float


def lora_files(dispatch: Dispatch) -> list[LoraFile]:
    """The job's LoRAs with the keys they are read from: always under the job's own user."""
    files = []
    for lora in dispatch.parameters.loras or ():
        if lora.sha256 is None:
            raise InvalidJob(f"LoRA {lora.id} has no sha256 (the API pins it at submission)")
        key = user_model_key(dispatch.user_id, lora.id)
        assert key.startswith(user_models_prefix(dispatch.user_id))
        files.append(LoraFile(lora.id, key, lora.sha256, lora.weight))
    return files


class LoraStore:
    """Reads, verifies, applies and removes LoRAs for one worker."""

    def __init__(self, client: Any, bucket: str) -> None:
        self.client = client
        self.bucket = bucket
        self._states: OrderedDict[tuple[str, str], dict[str, torch.Tensor]] = OrderedDict()

    def apply(self, model: LoadedPipeline, dispatch: Dispatch) -> int:
        """Apply the job's LoRAs to ``model``'s pipeline at their weights; the milliseconds it
        took (0 with none). On failure nothing stays applied (or ``remove`` says it did)."""
        files = lora_files(dispatch)
        if not files:
            return 0
        began = time.perf_counter_ns()
        pipeline = model.pipeline
        if not hasattr(pipeline, "load_lora_weights"):
            raise InvalidJob(f"{model.key} takes no LoRAs")
        states = [self._state(file) for file in files]
        names = [f"job-lora-{index}" for index in range(len(files))]
        try:
            for state, name in zip(states, names, strict=True):
                # A copy: diffusers pops the keys it converts from the dict it is given.
                pipeline.load_lora_weights(dict(state), adapter_name=name)
            pipeline.set_adapters(names, adapter_weights=[file.weight for file in files])
        except torch.OutOfMemoryError:
            self.remove(model)
            raise
        except Exception as e:
            self.remove(model)
            raise InvalidJob(f"a LoRA does not fit {model.key}: {e}"[:400]) from None
        lora_ms = (time.perf_counter_ns() - began) // 1_000_000
        LORA_LOAD_MS.observe(lora_ms)
        return lora_ms

    def remove(self, model: LoadedPipeline) -> bool:
        """Take every LoRA off ``model``'s pipeline. False when that failed: the pipeline may
        still carry one, and must not run another job."""
        pipeline = model.pipeline
        try:
            pipeline.unload_lora_weights()
        except Exception:
            log.exception("LoRAs not removed from %s", model.key)
            return False
        return True

    # -------------------------------------------------------------------------- internals

    def _state(self, file: LoraFile) -> dict[str, torch.Tensor]:
        # By key and digest: a file is reused only for its own user's key, never across users.
        entry = (file.key, file.sha256)
        cached = self._states.get(entry)
        if cached is not None:
            self._states.move_to_end(entry)
            return cached
        data = self._read(file)
        digest = hashlib.sha256(data).hexdigest()
        if digest != file.sha256:
            raise InputMissing(
                f"LoRA {file.model_id} is not the file that was verified (sha256 {digest}, "
                f"expected {file.sha256})"
            )
        from safetensors import SafetensorError
        from safetensors.torch import load

        try:
            state = load(data)
        except SafetensorError as e:  # the digest matched a file the API verified: unlikely
            raise InputMissing(f"LoRA {file.model_id} is not a safetensors file: {e}") from None
        self._states[entry] = state
        while len(self._states) > CACHED_FILES_MAX:
            self._states.popitem(last=False)
        return state

    def _read(self, file: LoraFile) -> bytes:
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=file.key)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in _MISSING_CODES:
                raise InputMissing(
                    f"LoRA {file.model_id} is not one of this user's models in storage "
                    "(deleted after the job was sent?)"
                ) from None
            raise
        body = answer["Body"]
        try:
            if int(answer.get("ContentLength", 0)) > LORA_BYTES_MAX:
                raise InputMissing(f"LoRA {file.model_id} is larger than {LORA_BYTES_MAX} bytes")
            data: bytes = body.read(LORA_BYTES_MAX + 1)
        finally:
            body.close()
        return data
