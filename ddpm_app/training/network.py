"""The network a run trains, as it runs on its device: built, in the memory layout that trains fastest there, and its
loss compiled."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from ddpm_app.models import ModelConfig, SeedUNet, build_model
from ddpm_app.training.config import TrainConfig


def default_channels_last(seed_net: bool, device: torch.device) -> bool:
    """NCHW on CUDA, where both networks train faster in it: in channels_last the compiled step copies activations
    between layouts around its normalisations (docs/training.md). On the CPU the ddpm U-Net keeps channels_last."""
    return device.type != "cuda" and not seed_net


def build_network(model_config: ModelConfig, cfg: TrainConfig, device: torch.device) -> tuple[nn.Module, bool]:
    """A freshly initialised network (seeded with ``cfg.seed``) on ``device``, and whether it is channels_last."""
    torch.manual_seed(cfg.seed)  # parameter init only; the loop's randomness comes from the trainer's generator
    model = build_model(model_config).to(device)
    seed_net = isinstance(model, SeedUNet)
    if device.type == "cuda" and seed_net:
        model.subpixel = True  # the same function with fewer FLOPs: see models/seed.py
    channels_last = default_channels_last(seed_net, device) if cfg.channels_last is None else cfg.channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, channels_last


def convs_channels_last_inside(model: nn.Module, device: torch.device, channels_last: bool) -> bool:
    """Whether the compiled step runs its convolutions, and what lies between them, in channels_last while the
    tensors outside it stay NCHW: on CUDA for the ddpm U-Net, whose step is faster that way than in either layout
    throughout, since cuDNN no longer transposes around every convolution (docs/training.md). Inductor's own rule
    declines it for any network with a convolution of in ≥ 2·out channels, as the decoder's after each skip. The seed
    U-Net was not measured with it."""
    return device.type == "cuda" and not channels_last and not isinstance(model, SeedUNet)


def compiled(loss: Callable[..., Tensor], cfg: TrainConfig,
             convs_channels_last: bool = False) -> Callable[..., Tensor]:
    """``torch.compile`` of the loss in ``cfg.compile_mode`` (its CUDA graphs need a GPU; a CPU runs the rest), with
    Inductor's layout optimisation forced on if ``convs_channels_last`` (:func:`convs_channels_last_inside`)."""
    mode = None if cfg.compile_mode == "default" else cfg.compile_mode
    if not convs_channels_last:
        return torch.compile(loss, mode=mode)
    return torch.compile(loss, options={**torch._inductor.list_mode_options(mode), "force_layout_optimization": True})
