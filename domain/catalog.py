"""The model catalog: which models exist, their family and the plan access class they need."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from domain.plans import ModelAccess


class ModelFamily(StrEnum):
    SD15 = "sd1.5"
    SDXL = "sdxl"
    FLUX = "flux"


@dataclass(frozen=True)
class SizeRange:
    min_px: int
    max_px: int
    multiple: int


# Sizes a family's pipeline accepts: UNet families need multiples of 8 (the VAE's downscale
# factor); Flux packs 2x2 latent patches, so it needs multiples of 16.
FAMILY_SIZES: dict[ModelFamily, SizeRange] = {
    ModelFamily.SD15: SizeRange(256, 1024, 8),
    ModelFamily.SDXL: SizeRange(512, 2048, 8),
    ModelFamily.FLUX: SizeRange(256, 2048, 16),
}


@dataclass(frozen=True)
class ModelSpec:
    key: str
    family: ModelFamily
    access: ModelAccess
    sizes: SizeRange
    default_steps: int
    # An inpainting model (its UNet takes the masked image and the mask too: 9 input
    # channels): its jobs need an init image and a mask. The others run text-to-image, and
    # image-to-image from the same weights.
    inpainting: bool = False


def _spec(
    key: str,
    family: ModelFamily,
    access: ModelAccess,
    steps: int,
    sizes: SizeRange | None = None,
    *,
    inpainting: bool = False,
) -> ModelSpec:
    return ModelSpec(key, family, access, sizes or FAMILY_SIZES[family], steps, inpainting)


MODELS: dict[str, ModelSpec] = {
    m.key: m
    for m in (
        _spec("sd-1.5", ModelFamily.SD15, ModelAccess.SD_ONLY, 30),
        _spec("sdxl-base-1.0", ModelFamily.SDXL, ModelAccess.SD_ONLY, 30),
        _spec("flux-schnell", ModelFamily.FLUX, ModelAccess.FLUX_INCLUDED, 4),
        _spec("flux-dev", ModelFamily.FLUX, ModelAccess.FLUX_INCLUDED, 28),
        # The small local model that tests and the demo run (random weights, built locally).
        _spec("tiny-sd", ModelFamily.SD15, ModelAccess.SD_ONLY, 4, SizeRange(32, 512, 8)),
        _spec(
            "tiny-sd-inpaint",
            ModelFamily.SD15,
            ModelAccess.SD_ONLY,
            4,
            SizeRange(32, 512, 8),
            inpainting=True,
        ),
    )
}


def get_model(key: str) -> ModelSpec | None:
    return MODELS.get(key)
