"""Real-ESRGAN-style upscalers: RRDBNet in plain torch, built from its config, run metered.

A model folder holds ``model_index.json`` (``_class_name: "RRDBNet"`` and the network's
config) and ``model.safetensors``. ``build_tiny_upscaler`` writes ``tiny-upscaler-x4``: the
same network at toy widths with random weights (milliseconds on CPU); the sold
``realesrgan-x4`` / ``realesrgan-x2`` folders hold Real-ESRGAN's published weights in the same
layout. The architecture is basicsr's ``RRDBNet`` (Wang et al., ESRGAN): residual-in-residual
dense blocks, then two nearest-neighbour x2 upsamplings; x2 models pixel-unshuffle the input
first, so every scale ends in the same x4 head.

An upscale is one forward pass: the cancel flag and budget are checked before it, and the
meter times it exactly like a diffusion run (``gpu_consumer/meter.py``), so it is billed by
GPU time like any other job.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional

from gpu_consumer.meter import GpuMeter
from gpu_consumer.tiny_model import install
from infra.messages import Dispatch, Outcome

CLASS_NAME = "RRDBNet"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model_index.json"
SEED = 20240601
# Real-ESRGAN x4plus's config; the tiny one keeps the structure at toy widths.
REALESRGAN_X4 = {"scale": 4, "num_feat": 64, "num_block": 23, "num_grow_ch": 32}
TINY_X4 = {"scale": 4, "num_feat": 8, "num_block": 1, "num_grow_ch": 4}


class _DenseBlock(nn.Module):
    def __init__(self, num_feat: int, num_grow_ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.lrelu(self.conv1(x))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x  # residual scaling, as in ESRGAN


class _RRDB(nn.Module):
    def __init__(self, num_feat: int, num_grow_ch: int) -> None:
        super().__init__()
        self.rdb1 = _DenseBlock(num_feat, num_grow_ch)
        self.rdb2 = _DenseBlock(num_feat, num_grow_ch)
        self.rdb3 = _DenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """basicsr's RRDBNet (parameter names match its checkpoints)."""

    def __init__(self, scale: int, num_feat: int, num_block: int, num_grow_ch: int) -> None:
        super().__init__()
        assert scale in (2, 4), scale
        self.scale = scale
        in_channels = 3 * (4 if scale == 2 else 1)  # x2 unshuffles 2x2 patches into channels
        self.conv_first = nn.Conv2d(in_channels, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*(_RRDB(num_feat, num_grow_ch) for _ in range(num_block)))
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, 3, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = functional.pixel_unshuffle(x, 2) if self.scale == 2 else x
        feat = self.conv_first(feat)
        feat = feat + self.conv_body(self.body(feat))
        feat = self.lrelu(self.conv_up1(functional.interpolate(feat, scale_factor=2.0)))
        feat = self.lrelu(self.conv_up2(functional.interpolate(feat, scale_factor=2.0)))
        out: torch.Tensor = self.conv_last(self.lrelu(self.conv_hr(feat)))
        return out


class Upscaler:
    """A loaded upscaler, shaped like a diffusers pipeline where the model cache looks:
    ``components`` (for its size), ``to(device)``, and a call on one PIL image."""

    def __init__(self, net: RRDBNet) -> None:
        self.net = net.eval()
        self.scale = net.scale

    @property
    def components(self) -> dict[str, Any]:
        return {"net": self.net}

    def to(self, device: torch.device | str) -> Upscaler:
        self.net.to(device)
        return self

    def __call__(self, image: Image.Image) -> np.ndarray:
        """One image (RGB) in, its upscaled pixels out as float [0, 1] HWC (batch of one)."""
        parameter = next(self.net.parameters())
        pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)
        batch = pixels.permute(2, 0, 1).unsqueeze(0).to(parameter.device, parameter.dtype)
        out = self.net(batch).clamp_(0.0, 1.0)
        return out.permute(0, 2, 3, 1).float().cpu().numpy()


def is_upscaler(folder: Path) -> bool:
    index: dict[str, Any] = json.loads((folder / INDEX_NAME).read_text())
    return index.get("_class_name") == CLASS_NAME


def build_upscaler(directory: Path | str, config: dict[str, int], kind: str) -> Path:
    """An RRDBNet of ``config`` with seeded random weights into ``directory`` (once)."""

    def make(staging: Path) -> Any:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            return _Saveable(RRDBNet(**config), config)

    marker = {"kind": kind, "version": 1, "dtype": "float32", **config}
    return install(Path(directory), marker, torch.float32, make)


def build_tiny_upscaler(directory: Path | str) -> Path:
    return build_upscaler(directory, TINY_X4, "tiny-upscaler-x4")


class _Saveable:
    """What ``tiny_model.install`` saves: the weights and the config beside them."""

    def __init__(self, net: RRDBNet, config: dict[str, int]) -> None:
        self.net, self.config = net, config

    def save_pretrained(self, folder: Path, safe_serialization: bool = True) -> None:
        assert safe_serialization  # weights are never pickled
        folder.mkdir(parents=True, exist_ok=True)
        save_file(self.net.state_dict(), str(folder / WEIGHTS_NAME))
        (folder / INDEX_NAME).write_text(json.dumps({"_class_name": CLASS_NAME, **self.config}))


def load_upscaler(folder: Path, dtype: torch.dtype) -> Upscaler:
    index: dict[str, Any] = json.loads((folder / INDEX_NAME).read_text())
    config = {name: int(index[name]) for name in REALESRGAN_X4}
    net = RRDBNet(**config)
    net.load_state_dict(load_file(str(folder / WEIGHTS_NAME)))  # strict: every weight present
    return Upscaler(net.to(dtype=dtype))


def run_upscale(
    upscaler: Upscaler,
    dispatch: Dispatch,
    device: torch.device,
    cancelled: bool,
    image: Image.Image | None,
) -> tuple[Outcome, int, int | None, list[Image.Image], str | None]:
    """Upscale the job's input (read already, at width/scale x height/scale): (outcome,
    gpu_ms, cuda_ms, images, a user-fault reason or None). Exceptions of the pass propagate
    to the caller's classification."""
    params = dispatch.parameters
    if image is None or params.scale != upscaler.scale:
        problem = f"the job needs an init image and scale {upscaler.scale}"
        return Outcome.FAILED, 0, None, [], problem
    if cancelled:
        return Outcome.CANCELLED, 0, None, [], None  # nothing ran, nothing billed
    if dispatch.budget_ms <= 0:
        return Outcome.BUDGET_EXHAUSTED, 0, None, [], None
    meter = GpuMeter(device)
    with meter, torch.inference_mode():
        frames = upscaler(image)
    measured = meter.measurement
    assert measured is not None  # the meter's __exit__ always measures
    pixels = (np.nan_to_num(frames, nan=0.0) * 255).round().astype(np.uint8)
    images = [Image.fromarray(frame) for frame in pixels]
    assert images[0].size == (params.width, params.height), images[0].size
    # One pass cannot be stopped midway: a run past its budget is billed at the budget (the
    # settler's min(gpu_ms, budget)), like a diffusion run stopped at its last step.
    return Outcome.COMPLETED, measured.gpu_ms, measured.cuda_ms, images, None
