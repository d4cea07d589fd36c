"""Stable Diffusion pipelines with random weights, built locally: nothing is downloaded.

``build_tiny_sd`` makes the ``tiny-sd`` model that tests and the demo run on CPU in
milliseconds: the real StableDiffusionPipeline architecture (UNet, VAE with SD's 8x
downscale, CLIP text encoder, byte-level CLIP tokenizer) at toy widths; image-to-image runs
from the same folder. ``build_tiny_sd_inpaint`` makes ``tiny-sd-inpaint``, the same at the
inpainting pipeline's shape: its UNet takes 9 input channels (the noisy latents, the mask, the
masked image's latents). ``build_sd15_sized``
makes a pipeline with SD-1.5's exact shapes (860M-parameter UNet) for timing on a GPU.
Both are saved with ``save_pretrained`` and loaded back through the model registry exactly
like a real model.

    python -m gpu_consumer.tiny_model DIR            # tiny-sd into DIR
    python -m gpu_consumer.tiny_model DIR --sd15-sized --dtype float16 --device cuda
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from diffusers import (
    AutoencoderKL,
    PNDMScheduler,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

# Bump when the configs below change: an existing build with another version is rebuilt.
BUILD_VERSION = 1
MARKER = ".pinksea-built.json"
SEED = 20240601
MAX_TOKENS = 77  # CLIP's context length, as in every SD-1.x model
CLIP_L_VOCAB = 49_408

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def build_tiny_sd(directory: Path | str) -> Path:
    """Build the tiny pipeline into ``directory`` unless it is already there. Returns it."""
    return _build(Path(directory), "tiny-sd", _tiny_components, torch.float32)


def build_tiny_sd_inpaint(directory: Path | str) -> Path:
    """The tiny inpainting pipeline into ``directory`` unless it is already there."""
    return _build(
        Path(directory),
        "tiny-sd-inpaint",
        _tiny_inpaint_components,
        torch.float32,
        pipeline_class=StableDiffusionInpaintPipeline,
    )


def build_sd15_sized(
    directory: Path | str, dtype: torch.dtype = torch.float16, device: str = "cpu"
) -> Path:
    """An SD-1.5-shaped pipeline (UNet 860M, VAE 84M, CLIP-L text encoder 123M parameters)
    with random weights in ``dtype``: real compute per step, no real images. ``device="cuda"``
    initialises the weights on the GPU, seconds instead of a minute of CPU."""
    return _build(Path(directory), "sd15-sized", _sd15_components, dtype, torch.device(device))


def is_built(directory: Path, kind: str, dtype: torch.dtype = torch.float32) -> bool:
    return _marker_at(directory) == _marker(kind, dtype)


# ------------------------------------------------------------------------------ components


def _tiny_components(tokenizer: CLIPTokenizer, unet_in_channels: int = 4) -> dict[str, Any]:
    text_encoder = CLIPTextModel(
        _text_config(tokenizer, hidden=32, layers=2, heads=2, intermediate=64, projection=32)
    )
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=unet_in_channels,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    # Four resolution levels: the same 8x downscale as SD, so the same sizes are valid.
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 16, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )
    return {"text_encoder": text_encoder, "unet": unet, "vae": vae}


def _tiny_inpaint_components(tokenizer: CLIPTokenizer) -> dict[str, Any]:
    # 4 latent channels + 1 mask channel + 4 channels of the masked image's latents.
    return _tiny_components(tokenizer, unet_in_channels=9)


def _sd15_components(tokenizer: CLIPTokenizer) -> dict[str, Any]:
    # CLIP-L's embedding table is kept at its full 49,408 rows (the byte vocabulary uses the
    # first 514) so that memory and load times match the real model.
    config = _text_config(
        tokenizer, hidden=768, layers=12, heads=12, intermediate=3072, projection=768
    )
    config.vocab_size = CLIP_L_VOCAB
    text_encoder = CLIPTextModel(config)
    # UNet2DConditionModel's and AutoencoderKL's defaults are SD-1.x apart from these.
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    )
    return {"text_encoder": text_encoder, "unet": unet, "vae": vae}


def _text_config(
    tokenizer: CLIPTokenizer,
    *,
    hidden: int,
    layers: int,
    heads: int,
    intermediate: int,
    projection: int,
) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=MAX_TOKENS,
        projection_dim=projection,
        hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _sd_scheduler() -> PNDMScheduler:
    # SD-1.5's own scheduler settings.
    return PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        skip_prk_steps=True,
        steps_offset=1,
    )


def write_byte_level_vocab(directory: Path) -> CLIPTokenizer:
    """A CLIP tokenizer whose vocabulary is the 256 byte symbols (alone and word-final, as
    CLIP's BPE spells them) plus the two specials, with no merges: any text tokenizes."""
    symbols = list(_bytes_to_unicode().values())
    vocab = symbols + [f"{s}</w>" for s in symbols] + [BOS, EOS]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    tokenizer: CLIPTokenizer = CLIPTokenizer.from_pretrained(
        directory,
        local_files_only=True,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=EOS,
        pad_token=EOS,
        model_max_length=MAX_TOKENS,
    )
    return tokenizer


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode symbols."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return dict(sorted(mapping.items()))


# ------------------------------------------------------------------------------ building


def _build(
    directory: Path,
    kind: str,
    components: Any,
    dtype: torch.dtype,
    device: torch.device = torch.device("cpu"),
    *,
    pipeline_class: type = StableDiffusionPipeline,
) -> Path:
    def write(staging: Path) -> Any:
        tokenizer = write_byte_level_vocab(staging / "vocab")
        with _seeded(SEED, device), device:
            parts = components(tokenizer)
        return pipeline_class(
            **parts,
            tokenizer=tokenizer,
            scheduler=_sd_scheduler(),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )

    return install(directory, _marker(kind, dtype), dtype, write)


def install(
    directory: Path, marker: dict[str, Any], dtype: torch.dtype, make: Callable[[Path], Any]
) -> Path:
    """The pipeline ``make`` returns (given a scratch folder for its vocabularies), in
    ``dtype``, saved into ``directory`` with ``marker`` unless that build is already there."""
    if _marker_at(directory) == marker:
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename into place: a reader never sees half a model, and of
    # two processes building at once the first rename wins.
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        pipeline = make(staging)
        if dtype != torch.float32:
            pipeline.to(dtype=dtype)
        pipeline.save_pretrained(staging / "model", safe_serialization=True)
        (staging / "model" / MARKER).write_text(json.dumps(marker))
        if directory.exists() and _marker_at(directory) != marker:
            shutil.rmtree(directory)  # an older build version or a broken leftover
        with contextlib.suppress(OSError):  # lost the race: the winner's build is identical
            (staging / "model").rename(directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if _marker_at(directory) != marker:
        raise RuntimeError(f"could not build {marker['kind']} into {directory}")
    return directory


def _marker_at(directory: Path) -> object:
    try:
        found: object = json.loads((directory / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return found


def _marker(kind: str, dtype: torch.dtype) -> dict[str, Any]:
    return {"kind": kind, "version": BUILD_VERSION, "dtype": str(dtype).removeprefix("torch.")}


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Deterministic random weights without disturbing the caller's random state."""
    cuda_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(seed)
        yield


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--sd15-sized", action="store_true", help="SD-1.5 shapes, not tiny")
    parser.add_argument("--dtype", default="float16", help="dtype of --sd15-sized weights")
    parser.add_argument("--device", default="cpu", help="where --sd15-sized weights are made")
    args = parser.parse_args(argv)
    if args.sd15_sized:
        path = build_sd15_sized(args.directory, getattr(torch, args.dtype), args.device)
    else:
        path = build_tiny_sd(args.directory)
    print(path)


if __name__ == "__main__":
    main()
