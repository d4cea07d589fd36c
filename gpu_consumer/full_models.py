"""Full-size SD-1.5, SDXL and Flux pipelines from their published architecture configs, with
random weights, built offline: compute per step does not depend on the weights, so a random
model costs exactly what the real one costs (no real images, of course).

The configs below are the published ones as data (``runwayml/stable-diffusion-v1-5``,
``stabilityai/stable-diffusion-xl-base-1.0``, ``black-forest-labs/FLUX.1-dev``: the
``config.json`` of each component), minus bookkeeping keys (``_class_name``,
``_diffusers_version``, ``_name_or_path``). The tokenizers are local byte-level vocabularies
(``tiny_model.write_byte_level_vocab``; for Flux's T5 a byte-level Unigram vocabulary), so
nothing is downloaded; the text encoders keep their real vocabulary sizes so their memory
matches. Each pipeline is saved with ``save_pretrained`` into a folder the model registry
loads like any real model (``<models_dir>/<key>``).

What fits where (weights only; activations come on top):

| family | parameters | fp16/bf16 on disk | builds on |
|---|---|---|---|
| sd15 | 1.07 B (UNet 860 M) | 2.1 GB | any machine: ~1 min on 2 CPU cores |
| sdxl | 3.47 B (UNet 2.57 B) | 6.9 GB | a 16 GB+ host; runs on a 16 GB+ GPU |
| flux | 16.9 B (transformer 11.9 B, T5-XXL 4.76 B) | 34 GB | a 64 GB+ host, a 40 GB+ GPU |

    python -m gpu_consumer.full_models --family sd15 --out DIR [--dtype fp16] [--device cuda]
    python -m gpu_consumer.full_models --family sdxl --count   # parameters, nothing written
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from gpu_consumer import tiny_model
from gpu_consumer.tiny_model import SEED, _seeded, install, write_byte_level_vocab

FAMILIES = ("sd15", "sdxl", "flux")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
CLIP_VOCAB = 49_408  # CLIP-L's and OpenCLIP-bigG's embedding rows
T5_VOCAB = 32_128
T5_MAX_TOKENS = 512  # FLUX.1-dev's max_sequence_length

# ------------------------------------------------------------------------------ configs

_SD_VAE: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

# What SD-1.5's and SDXL's UNet configs share.
_UNET: dict[str, Any] = {
    "act_fn": "silu",
    "center_input_sample": False,
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
}

# openai/clip-vit-large-patch14's text tower: SD-1.5's encoder, SDXL's and Flux's first.
_CLIP_L: dict[str, Any] = {
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "intermediate_size": 3072,
    "max_position_embeddings": 77,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "projection_dim": 768,
    "vocab_size": CLIP_VOCAB,
}

SD15: dict[str, dict[str, Any]] = {
    "unet": {
        **_UNET,
        "attention_head_dim": 8,
        "block_out_channels": [320, 640, 1280, 1280],
        "cross_attention_dim": 768,
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "sample_size": 64,
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    },
    "vae": _SD_VAE,
    "text_encoder": _CLIP_L,
    "scheduler": {
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "num_train_timesteps": 1000,
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "trained_betas": None,
    },
}

SDXL: dict[str, dict[str, Any]] = {
    "unet": {
        **_UNET,
        "addition_embed_type": "text_time",
        "addition_embed_type_num_heads": 64,
        "addition_time_embed_dim": 256,
        "attention_head_dim": [5, 10, 20],
        "block_out_channels": [320, 640, 1280],
        "cross_attention_dim": 2048,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "projection_class_embeddings_input_dim": 2816,
        "sample_size": 128,
        "transformer_layers_per_block": [1, 2, 10],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "use_linear_projection": True,
    },
    "vae": {**_SD_VAE, "sample_size": 1024, "scaling_factor": 0.13025},
    "text_encoder": _CLIP_L,
    # laion/CLIP-ViT-bigG-14's text tower, with its projection.
    "text_encoder_2": {
        "hidden_act": "gelu",
        "hidden_size": 1280,
        "intermediate_size": 5120,
        "max_position_embeddings": 77,
        "num_attention_heads": 20,
        "num_hidden_layers": 32,
        "projection_dim": 1280,
        "vocab_size": CLIP_VOCAB,
    },
    "scheduler": {
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "interpolation_type": "linear",
        "num_train_timesteps": 1000,
        "prediction_type": "epsilon",
        "steps_offset": 1,
        "timestep_spacing": "leading",
        "use_karras_sigmas": False,
    },
}

FLUX: dict[str, dict[str, Any]] = {
    "transformer": {
        "attention_head_dim": 128,
        "guidance_embeds": True,
        "in_channels": 64,
        "joint_attention_dim": 4096,
        "num_attention_heads": 24,
        "num_layers": 19,
        "num_single_layers": 38,
        "patch_size": 1,
        "pooled_projection_dim": 768,
    },
    "vae": {
        **_SD_VAE,
        "latent_channels": 16,
        "sample_size": 1024,
        "scaling_factor": 0.3611,
        "shift_factor": 0.1159,
        "use_post_quant_conv": False,
        "use_quant_conv": False,
    },
    "text_encoder": _CLIP_L,
    # google/t5-v1_1-xxl's encoder.
    "text_encoder_2": {
        "d_ff": 10240,
        "d_kv": 64,
        "d_model": 4096,
        "dense_act_fn": "gelu_new",
        "feed_forward_proj": "gated-gelu",
        "is_gated_act": True,
        "layer_norm_epsilon": 1e-06,
        "num_heads": 64,
        "num_layers": 24,
        "relative_attention_max_distance": 128,
        "relative_attention_num_buckets": 32,
        "tie_word_embeddings": False,
        "vocab_size": T5_VOCAB,
    },
    "scheduler": {
        "base_image_seq_len": 256,
        "base_shift": 0.5,
        "max_image_seq_len": 4096,
        "max_shift": 1.15,
        "num_train_timesteps": 1000,
        "shift": 3.0,
        "use_dynamic_shifting": True,
    },
}

CONFIGS: dict[str, dict[str, dict[str, Any]]] = {"sd15": SD15, "sdxl": SDXL, "flux": FLUX}

# Published parameter counts of the denoisers, in millions (the tests hold the configs to them).
PUBLISHED_DENOISER_M = {"sd15": 859, "sdxl": 2567, "flux": 11901}


# ------------------------------------------------------------------------------ modules


def _clip_text(config: dict[str, Any], tokenizer: Any, with_projection: bool = False) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    text_config = CLIPTextConfig(
        **config,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(text_config)


def denoiser(family: str) -> Any:
    """The UNet or transformer of ``family`` (on the current default device)."""
    from diffusers import FluxTransformer2DModel, UNet2DConditionModel

    if family == "flux":
        return FluxTransformer2DModel(**FLUX["transformer"])
    return UNet2DConditionModel(**CONFIGS[family]["unet"])


def components(family: str, vocab_dir: Path) -> dict[str, Any]:
    """Every module and tokenizer of ``family``'s pipeline, random weights, fp32 (the
    scheduler is ``scheduler(family)``: it holds no weights, so it is made off any device)."""
    from diffusers import AutoencoderKL

    config = CONFIGS[family]
    tokenizer = write_byte_level_vocab(vocab_dir / "clip")
    parts: dict[str, Any] = {
        "vae": AutoencoderKL(**config["vae"]),
        "text_encoder": _clip_text(config["text_encoder"], tokenizer),
        "tokenizer": tokenizer,
    }
    if family == "sd15":
        parts |= {
            "unet": denoiser(family),
            "safety_checker": None,
            "feature_extractor": None,
            "requires_safety_checker": False,
        }
    elif family == "sdxl":
        parts |= {
            "unet": denoiser(family),
            "text_encoder_2": _clip_text(config["text_encoder_2"], tokenizer, True),
            "tokenizer_2": tokenizer,
        }
    else:
        from transformers import T5Config, T5EncoderModel

        parts |= {
            "transformer": denoiser(family),
            "text_encoder_2": T5EncoderModel(T5Config(**config["text_encoder_2"])),
            "tokenizer_2": _t5_tokenizer(vocab_dir / "t5"),
        }
    return parts


def scheduler(family: str) -> Any:
    """The scheduler ``family``'s published pipeline was saved with."""
    import diffusers

    name = {"sd15": "PNDMScheduler", "sdxl": "EulerDiscreteScheduler"}
    cls = getattr(diffusers, name.get(family, "FlowMatchEulerDiscreteScheduler"))
    return cls(**CONFIGS[family]["scheduler"])


def _t5_tokenizer(directory: Path) -> Any:
    """A T5 fast tokenizer over a byte-level Unigram vocabulary: any text tokenizes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [(chr(b) if 32 < b < 127 else f"<0x{b:02X}>", -1.0) for b in range(256)]
    backend = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    tokenizer = T5TokenizerFast(
        tokenizer_object=backend,
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_ids=0,
        model_max_length=T5_MAX_TOKENS,
    )
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(directory)
    return tokenizer


def pipeline_class(family: str) -> Any:
    import diffusers

    name = {"sd15": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline"}
    return getattr(diffusers, name.get(family, "FluxPipeline"))


def parameter_counts(family: str) -> dict[str, int]:
    """Parameters per module of ``family``'s pipeline, built on the meta device (no memory,
    no weights: seconds even for Flux)."""
    with tempfile.TemporaryDirectory() as vocab, torch.device("meta"):
        parts = components(family, Path(vocab))
    return {
        name: sum(p.numel() for p in module.parameters())
        for name, module in parts.items()
        if isinstance(module, torch.nn.Module)
    }


# ------------------------------------------------------------------------------ building


def marker(family: str, dtype: torch.dtype) -> dict[str, Any]:
    return tiny_model._marker(f"{family}-full", dtype)


def is_built(directory: Path, family: str, dtype: torch.dtype) -> bool:
    return tiny_model.is_built(directory, f"{family}-full", dtype)


def build(
    family: str,
    directory: Path | str,
    dtype: torch.dtype = torch.float16,
    device: str = "cpu",
) -> Path:
    """Write ``family``'s full-size pipeline (random weights in ``dtype``) into ``directory``
    unless it is already there. ``device="cuda"`` initialises the weights on the GPU (seconds
    instead of minutes); they are saved from there."""
    assert family in FAMILIES, f"unknown family {family!r}; known: {FAMILIES}"
    on = torch.device(device)

    def make(staging: Path) -> Any:
        with _seeded(SEED, on), on:
            parts = components(family, staging / "vocab")
        return pipeline_class(family)(**parts, scheduler=scheduler(family))

    return install(Path(directory), marker(family, dtype), dtype, make)


def main(argv: list[str] | None = None, out: Callable[[str], None] = print) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=FAMILIES, required=True)
    parser.add_argument("--out", type=Path, help="the model folder to write")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    parser.add_argument("--device", default="cpu", help="where the weights are initialised")
    parser.add_argument("--count", action="store_true", help="print parameter counts only")
    args = parser.parse_args(argv)
    if args.count:
        counts = parameter_counts(args.family)
        out(json.dumps({**counts, "total": sum(counts.values())}))
        return
    if args.out is None:
        parser.error("--out is required unless --count")
    out(str(build(args.family, args.out, DTYPES[args.dtype], args.device)))


if __name__ == "__main__":
    main()
