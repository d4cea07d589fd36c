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
    # An upscaler (its scale factor, 2 or 4; 0: not one): its jobs take one input image and
    # make it ``upscale`` times wider and taller in one pass. Its sizes are the output's.
    upscale: int = 0


# Upscalers are priced on the SD-1.5 calibration row at one step over their output pixels
# until bench.calibrate measures a row of their own (README, "Billing"); their output sizes are
# multiples of 8 x scale, so the input is a whole number of 8-pixel tiles.
def _upscaler(key: str, scale: int, max_px: int) -> ModelSpec:
    sizes = SizeRange(8 * scale, max_px, 8 * scale)
    # Every plan may upscale (InvokeAI offers it on every plan): the lowest access class.
    return ModelSpec(key, ModelFamily.SD15, ModelAccess.SD_ONLY, sizes, 1, upscale=scale)


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
        # Real-ESRGAN's RRDBNet (x4: 23 blocks, 64 features; x2 unshuffles its input first).
        _upscaler("realesrgan-x4", 4, 4096),
        _upscaler("realesrgan-x2", 2, 4096),
        # Its tiny local twin (random weights, built locally) for tests and the demo.
        _upscaler("tiny-upscaler-x4", 4, 1024),
    )
}


def get_model(key: str) -> ModelSpec | None:
    return MODELS.get(key)
