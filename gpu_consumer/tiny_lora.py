"""A LoRA for the tiny pipelines, built locally with random weights: nothing is downloaded.

peft's ``LoraConfig`` adds rank-``rank`` adapters to the attention projections of a copy of
the pipeline's UNet; ``init_lora_weights=False`` draws both matrices at random (peft's default
zeroes B, which would leave the output unchanged). The adapter weights are saved the way a
real SD-1.5 LoRA is shipped: diffusers' key names (``unet.…lora.down.weight``) in a
safetensors file, written by ``StableDiffusionPipeline.save_lora_weights``.

    python -m gpu_consumer.tiny_lora MODEL_DIR OUT.safetensors
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path
from typing import Any

import torch

TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0"]


def build_tiny_lora(pipeline: Any, path: Path | str, *, seed: int = 7, rank: int = 4) -> Path:
    """Write a LoRA of ``pipeline``'s UNet (random, non-zero) to ``path``; returns it."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    path = Path(path)
    unet = copy.deepcopy(pipeline.unet).to("cpu", torch.float32)
    torch.manual_seed(seed)
    config = LoraConfig(
        r=rank, lora_alpha=rank, target_modules=TARGET_MODULES, init_lora_weights=False
    )
    unet.add_adapter(config)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    with tempfile.TemporaryDirectory() as directory:
        StableDiffusionPipeline.save_lora_weights(
            directory, unet_lora_layers=layers, weight_name="lora.safetensors"
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes((Path(directory) / "lora.safetensors").read_bytes())
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path, help="a tiny-sd folder (gpu_consumer.tiny_model)")
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained(args.model_dir)
    print(build_tiny_lora(pipeline, args.out))


if __name__ == "__main__":
    main()
