"""Where a model's weights come from, and how a pipeline is loaded from them.

A model key resolves to a local folder in diffusers' ``save_pretrained`` layout, found in this
order:

1. ``tiny-sd``, ``tiny-sd-inpaint`` and ``tiny-upscaler-x4``: the random-weight tiny models,
   built on first use into the cache folder.
2. ``<models_dir>/<key>``: the shared model folder (EFS on AWS, mounted read-only).
3. ``s3://<models_bucket>/<models_prefix><key>/``: downloaded once into ``<cache_dir>/<key>``.
   ``upload_model`` writes a manifest (path, size, sha256 per file) after the files; a
   download verifies every file against it and only then moves the folder into place, so a
   corrupt or half-finished copy is never loaded.

Every model loads the same way, tiny or real: ``AutoPipelineForText2Image.from_pretrained``
on the local folder, offline (an inpainting model, whose folder says so in its
``model_index.json``, with ``AutoPipelineForInpainting``). Image-to-image runs on the loaded
text-to-image pipeline's own modules (``AutoPipelineForImage2Image.from_pipe``: no second copy).
An upscaler's folder names ``RRDBNet`` there instead: it loads as ``gpu_consumer/upscalers.py``'s
plain-torch network.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import tempfile
import threading
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever downloaded from the Hub

import torch

from gpu_consumer.tiny_model import build_tiny_sd, build_tiny_sd_inpaint
from gpu_consumer.upscalers import build_tiny_upscaler, is_upscaler, load_upscaler

MANIFEST_NAME = "pinksea-manifest.json"
TINY_MODEL = "tiny-sd"
TINY_INPAINT_MODEL = "tiny-sd-inpaint"
TINY_UPSCALER = "tiny-upscaler-x4"
_TINY_BUILDERS = {
    TINY_MODEL: build_tiny_sd,
    TINY_INPAINT_MODEL: build_tiny_sd_inpaint,
    TINY_UPSCALER: build_tiny_upscaler,
}
_CHUNK = 1 << 20

_LOAD_LOCK = threading.Lock()


class ModelFamily(StrEnum):
    SD15 = "sd1.5"
    SDXL = "sdxl"
    FLUX = "flux"


# The keys of domain/catalog.py (not imported: workers know nothing of the domain).
MODEL_FAMILIES: dict[str, ModelFamily] = {
    "sd-1.5": ModelFamily.SD15,
    "sdxl-base-1.0": ModelFamily.SDXL,
    "flux-schnell": ModelFamily.FLUX,
    "flux-dev": ModelFamily.FLUX,
    TINY_MODEL: ModelFamily.SD15,
    TINY_INPAINT_MODEL: ModelFamily.SD15,
    # Upscalers: SD-1.5's sizes and dtypes suit them (multiples of 8, fp16 on CUDA).
    "realesrgan-x4": ModelFamily.SD15,
    "realesrgan-x2": ModelFamily.SD15,
    TINY_UPSCALER: ModelFamily.SD15,
}


class ModelError(Exception):
    """A model could not be made available on this worker."""


class UnknownModel(ModelError):
    pass


class ModelUnavailable(ModelError):
    pass


class ChecksumMismatch(ModelError):
    pass


@dataclass(frozen=True)
class LoadedPipeline:
    key: str
    family: ModelFamily
    pipeline: Any  # a diffusers DiffusionPipeline
    # The scheduler the model was saved with: each run builds a fresh one from these (a job
    # may ask for another class, which is built from the same settings).
    scheduler_class: type | None = field(default=None, repr=False)
    scheduler_config: Any = field(default=None, repr=False)
    inpainting: bool = False  # an inpainting pipeline: its runs need an image and a mask
    upscale: int = 0  # an upscaler's factor (``pipeline`` is an upscalers.Upscaler); 0: none


def dtype_for(family: ModelFamily, device: torch.device) -> torch.dtype:
    """Half precision on CUDA (bf16 for Flux, which overflows fp16), fp32 on CPU."""
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if family is ModelFamily.FLUX else torch.float16


class ModelRegistry:
    def __init__(
        self,
        *,
        models_dir: Path | None,
        cache_dir: Path,
        s3_client: Any | None = None,
        s3_bucket: str | None = None,
        s3_prefix: str = "models/",
        families: dict[str, ModelFamily] | None = None,
    ) -> None:
        self.models_dir = models_dir
        self.cache_dir = cache_dir
        self.s3_client = s3_client
        self.s3_bucket = s3_bucket
        self.s3_prefix = s3_prefix
        self.families = dict(MODEL_FAMILIES if families is None else families)

    def family(self, key: str) -> ModelFamily:
        try:
            return self.families[key]
        except KeyError:
            raise UnknownModel(f"model {key!r} is not known to this worker") from None

    def resolve(self, key: str) -> Path:
        """The local folder holding ``key``'s pipeline, built or downloaded if need be."""
        self.family(key)
        if key in _TINY_BUILDERS:
            return _TINY_BUILDERS[key](self.cache_dir / key)
        if self.models_dir is not None and (self.models_dir / key / "model_index.json").is_file():
            return self.models_dir / key
        if self.s3_client is not None and self.s3_bucket:
            return download_model(
                self.s3_client, self.s3_bucket, self._s3_prefix(key), self.cache_dir / key
            )
        raise ModelUnavailable(
            f"model {key!r} is neither in {self.models_dir} nor in an S3 model bucket"
        )

    def estimate_bytes(self, key: str, device: torch.device) -> int:
        """Memory the loaded pipeline will take, from the weights' headers (nothing loaded)."""
        return estimate_pipeline_bytes(self.resolve(key), dtype_for(self.family(key), device))

    def load(self, key: str, device: torch.device) -> LoadedPipeline:
        """Load ``key`` into host memory in the dtype ``device`` runs it in."""
        import transformers
        from diffusers import AutoPipelineForInpainting, AutoPipelineForText2Image
        from diffusers.utils import logging as diffusers_logging

        # Log lines, not progress bars, in a worker.
        diffusers_logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()
        family = self.family(key)
        folder = self.resolve(key)
        if is_upscaler(folder):
            upscaler = load_upscaler(folder, dtype_for(family, device))
            return LoadedPipeline(key, family, upscaler, upscale=upscaler.scale)
        inpainting = is_inpainting(folder)
        auto = AutoPipelineForInpainting if inpainting else AutoPipelineForText2Image
        # from_pretrained builds modules on the "meta" device by patching torch globally
        # (accelerate), so two loads in one process must not overlap.
        with _LOAD_LOCK, warnings.catch_warnings():
            # Newer diffusers renamed ``torch_dtype`` to ``dtype``; the old name works on all.
            warnings.filterwarnings("ignore", r".*torch_dtype.*deprecated", FutureWarning)
            pipeline = auto.from_pretrained(
                folder, torch_dtype=dtype_for(family, device), local_files_only=True
            )
        pipeline.set_progress_bar_config(disable=True)
        scheduler = pipeline.scheduler
        return LoadedPipeline(key, family, pipeline, type(scheduler), scheduler.config, inpainting)

    def _s3_prefix(self, key: str) -> str:
        return f"{self.s3_prefix}{key}/"


def is_inpainting(folder: Path) -> bool:
    """Whether the folder holds an inpainting pipeline (diffusers names its class there)."""
    index: dict[str, Any] = json.loads((folder / "model_index.json").read_text())
    return str(index.get("_class_name", "")).endswith("InpaintPipeline")


# ------------------------------------------------------------------------------ S3 models


@dataclass(frozen=True)
class ManifestEntry:
    path: str  # relative, POSIX separators
    size: int
    sha256: str


def build_manifest(local_dir: Path) -> list[ManifestEntry]:
    files = sorted(p for p in local_dir.rglob("*") if p.is_file() and p.name != MANIFEST_NAME)
    return [
        ManifestEntry(p.relative_to(local_dir).as_posix(), p.stat().st_size, _sha256_file(p))
        for p in files
    ]


def upload_model(s3_client: Any, bucket: str, prefix: str, local_dir: Path) -> list[ManifestEntry]:
    """Upload a model folder under ``prefix`` (ending in "/"), files first, manifest last:
    a manifest in S3 means every file it lists is there."""
    manifest = build_manifest(local_dir)
    for entry in manifest:
        s3_client.upload_file(str(local_dir / entry.path), bucket, prefix + entry.path)
    body = json.dumps({"files": [e.__dict__ for e in manifest]}, indent=1).encode()
    s3_client.put_object(Bucket=bucket, Key=prefix + MANIFEST_NAME, Body=body)
    return manifest


def download_model(s3_client: Any, bucket: str, prefix: str, target: Path) -> Path:
    """Download once: a folder already verified (it holds the manifest) is reused as is."""
    if (target / MANIFEST_NAME).is_file():
        return target
    raw = s3_client.get_object(Bucket=bucket, Key=prefix + MANIFEST_NAME)["Body"].read()
    manifest = _parse_manifest(raw)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for entry in manifest:
            destination = staging / entry.path
            destination.parent.mkdir(parents=True, exist_ok=True)
            s3_client.download_file(bucket, prefix + entry.path, str(destination))
            size, digest = destination.stat().st_size, _sha256_file(destination)
            if size != entry.size or digest != entry.sha256:
                raise ChecksumMismatch(
                    f"{prefix}{entry.path}: expected {entry.size} bytes sha256 {entry.sha256}, "
                    f"got {size} bytes sha256 {digest}"
                )
        (staging / MANIFEST_NAME).write_bytes(raw)  # written last: marks the copy verified
        try:
            staging.rename(target)
        except OSError:
            if not (target / MANIFEST_NAME).is_file():  # not another process's verified copy
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _parse_manifest(raw: bytes) -> list[ManifestEntry]:
    entries = [ManifestEntry(**e) for e in json.loads(raw)["files"]]
    for e in entries:
        path = PurePosixPath(e.path)
        if path.is_absolute() or ".." in path.parts:
            raise ChecksumMismatch(f"manifest path {e.path!r} leaves the model folder")
    return entries


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# ------------------------------------------------------------------------------ sizes

# Alternative copies of the same weights that from_pretrained skips without ``variant=``.
_VARIANT = re.compile(r"\.(fp16|bf16|fp32|ema|non_ema)\.safetensors$")
_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
_DTYPE_BYTES = {
    "F64": 8,
    "I64": 8,
    "U64": 8,
    "F32": 4,
    "I32": 4,
    "U32": 4,
    "F16": 2,
    "BF16": 2,
    "I16": 2,
    "U16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}


def estimate_pipeline_bytes(local_dir: Path, dtype: torch.dtype) -> int:
    """Bytes of every tensor in the folder's safetensors files once loaded as ``dtype``
    (floating tensors are cast; others keep their size). Reads only the files' headers."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    total = 0
    for path in _weight_files(local_dir):
        for name, tensor in _safetensors_header(path).items():
            if name == "__metadata__":
                continue
            count = 1
            for dim in tensor["shape"]:
                count *= dim
            kind = tensor["dtype"]
            total += count * (itemsize if kind in _FLOAT_DTYPES else _DTYPE_BYTES.get(kind, 4))
    return total


def _weight_files(local_dir: Path) -> Iterable[Path]:
    for folder in sorted({p.parent for p in local_dir.rglob("*.safetensors")}):
        files = sorted(folder.glob("*.safetensors"))
        plain = [p for p in files if not _VARIANT.search(p.name)]
        yield from plain or files


def _safetensors_header(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header: dict[str, Any] = json.loads(f.read(length))
        return header
