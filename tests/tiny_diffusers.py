"""Tiny random diffusers DDPM pipelines saved as folders."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

TINY_UNET = dict(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                 down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                 norm_num_groups=4, attention_head_dim=None, flip_sin_to_cos=False, freq_shift=1,
                 downsample_padding=0, norm_eps=1e-6)  # google/ddpm-*'s choices, at a toy size
def tiny_unet(seed: int = 0, size: int = 8) -> UNet2DModel:
    torch.manual_seed(seed)
    unet = UNet2DModel(**TINY_UNET | {"sample_size": size}).eval()
    with torch.no_grad():  # the zero-initialised output layers would make ε̂ = 0: give every weight some value
        for p in unet.parameters():
            p.add_(torch.randn(p.shape) * 0.05)
    return unet


def save_pipeline(folder: Path, seed: int = 0, size: int = 8, **scheduler) -> Path:
    DDPMPipeline(unet=tiny_unet(seed, size), scheduler=DDPMScheduler(**scheduler)).save_pretrained(folder)
    return folder


