"""The seed tutorial's U-Net, rebuilt so that its ``state_dict`` keys and shapes match the tutorial's.

A checkpoint saved by the tutorial's code (``torch.save(model.state_dict(), …)``) loads here with
``strict=True`` and gives the same outputs. Layout, for the default widths:

- ``init_conv``: 7×7 conv, 3 → 32 channels
- ``time_mlp.1``: Linear(32 → 128) after a 32-dim sinusoidal embedding, then GELU
- ``downs.0…3`` / ``ups.0…3``: :class:`SeedBlock` — GroupNorm, a resampling conv (stride 2 going down,
  nearest ×2 + conv going up), SiLU, grouped 3×3 conv, a timestep scale/shift from ``time_condition``,
  GroupNorm, SiLU, 3×3 conv, dropout, plus a 1×1 ``short_cut`` when widths differ
- ``output``: 1×1 conv, 32 → 3

Each block resamples, so four blocks take 64×64 down to 4×4 and back; there is no attention despite the
tutorial's class name. Skip connections concatenate each down block's output with the matching up block's input.

Every block normalises its input before anything else, its shortcut included, and the first block's
``GroupNorm(32, 32)`` on ``init_conv``'s output has one channel per group: ε_θ(c·x_t, t) = ε_θ(x_t, t) for every
c > 0. The network cannot see how much noise x_t holds: the likely cause of the colour noise that deterministic DDIM
leaves in its samples (``docs/evaluation.md`` has the control experiment). ``block_norm="branch"`` moves each
block's first norm onto its residual branch, after the resampling conv: the same modules and state-dict keys, but
the shortcut now carries x_t's amplitude into the sum.

Going up, "nearest ×2, then a 3×3 conv" is computed by :func:`upsample_conv3x3` as one stride-2 transposed
convolution: the same function of the same weights with 16 instead of 36 multiply-adds per input pixel and
channel pair. These four convolutions hold most of the network's FLOPs. It is used where it is faster
(``SeedUNet.subpixel = True``; the trainer turns it on for CUDA): on a CPU at small batches, building its
4×4 kernel costs more than it saves.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddpm_app.checks import ConfigError, choice, exact_int, exact_ints
from ddpm_app.models.layers import MAX_LEVELS, MAX_WIDTH, Denoiser, check_image, timestep_embedding


@dataclass(frozen=True)
class SeedUNetConfig:
    image_size: int = 64
    in_channels: int = 3
    init_dim: int = 32
    down_channels: tuple[int, ...] = (32, 64, 128, 256, 512)  # init_dim first, then each down block's output
    time_pos_dim: int = 32
    dropout: float = 0.01
    # "branch" keeps x_t's amplitude on the shortcut, which the tutorial's "input" placement normalises away
    block_norm: Literal["input", "branch"] = "input"  # each block's first norm: on its whole input or its branch only

    def __post_init__(self) -> None:
        check_image(self.image_size, self.in_channels, self.dropout)
        choice(self.block_norm, "block_norm", ("input", "branch"))
        exact_int(self.init_dim, "init_dim", 1, MAX_WIDTH)
        exact_int(self.time_pos_dim, "time_pos_dim", 4, MAX_WIDTH)
        object.__setattr__(self, "down_channels",
                           exact_ints(self.down_channels, "down_channels", 1, MAX_WIDTH, (2, MAX_LEVELS)))
        if self.down_channels[0] != self.init_dim:
            raise ConfigError("config.seed_first_width")
        if any(c % 32 for c in self.down_channels):
            raise ConfigError("config.seed_widths")
        if self.image_size % 2 ** (len(self.down_channels) - 1):
            raise ConfigError("config.seed_image_size", by=2 ** (len(self.down_channels) - 1))

    def to_dict(self) -> dict:
        return asdict(self)


def _upsample_taps(w: Tensor, dim: int) -> Tensor:
    """The 4 taps of a stride-2 transposed conv that match 3 taps of a conv on the nearest-×2 upsampled input.

    Along one axis, output row 2i reads upsampled rows 2i−1, 2i, 2i+1, i.e. input rows i−1 (tap 0) and i
    (taps 1 + 2); output row 2i+1 reads input rows i (taps 0 + 1) and i+1 (tap 2). A stride-2, padding-1
    transposed conv sends input row i' to output row 2i'−1+k through its tap k, so k = 0…3 carry
    w₂, w₁+w₂, w₀+w₁, w₀.
    """
    w0, w1, w2 = w.unbind(dim)
    return torch.stack([w2, w1 + w2, w0 + w1, w0], dim)


def upsample_conv3x3(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """conv3x3(upsample_nearest×2(x)) with padding 1, as one transposed convolution: (B, C, H, W) → (B, O, 2H, 2W).

    ``weight`` is the 3×3 conv's (O, C, 3, 3) kernel; gradients reach it through the tap sums.
    """
    kernel = _upsample_taps(_upsample_taps(weight, 2), 3).transpose(0, 1).contiguous()  # (C, O, 4, 4)
    return F.conv_transpose2d(x, kernel, bias, stride=2, padding=1)


class SinusoidalPosEmb(nn.Module):
    """Timestep → sinusoidal vector (parameter-free; kept as a module so ``time_mlp``'s indices match)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t: Tensor) -> Tensor:
        return timestep_embedding(t, self.dim)


class SeedBlock(nn.Module):
    """The tutorial's ``AttnBlock``: a resampling residual block with a scale-shift timestep condition."""

    def __init__(self, in_ch: int, out_ch: int, time_dim: int, up: bool, dropout: float, norm_input: bool = True):
        super().__init__()
        self.norm_input = norm_input  # False: norm1 acts on the residual branch alone, after resampling
        self.subpixel = False  # up blocks may resample with upsample_conv3x3 (same weights, same function)
        self.time_condition = nn.Sequential(nn.Linear(time_dim, time_dim), nn.SiLU(), nn.Linear(time_dim, 2 * out_ch))
        self.norm1 = nn.GroupNorm(32, in_ch)
        self.norm2 = nn.GroupNorm(32, out_ch)
        self.short_cut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        if up:
            self.sample = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(in_ch, in_ch, 3, padding=1))
        else:
            self.sample = nn.Conv2d(in_ch, in_ch, 3, stride=2, padding=1)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1, groups=32)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, time_emb: Tensor) -> Tensor:
        if self.norm_input:
            x = self.norm1(x)
        if self.subpixel:
            x = upsample_conv3x3(x, self.sample[1].weight, self.sample[1].bias)
        else:
            x = self.sample(x)  # the residual path and the main path share the resampled input
        h = self.conv1(F.silu(x if self.norm_input else self.norm1(x)))
        scale, shift = self.time_condition(time_emb)[:, :, None, None].chunk(2, dim=1)  # (B, C, 1, 1)
        h = h * (scale + 1) + shift
        h = self.conv2(F.silu(self.norm2(h)))
        return self.dropout(h) + self.short_cut(x)


class SeedUNet(Denoiser):
    """ε_θ(x_t, t) with the seed tutorial's architecture (≈ 18 M parameters at the default widths)."""

    def __init__(self, config: SeedUNetConfig = SeedUNetConfig()):
        super().__init__()
        self.config = config
        widths = config.down_channels
        time_dim = 4 * config.time_pos_dim
        self.init_conv = nn.Conv2d(config.in_channels, config.init_dim, 7, padding=3)
        self.time_mlp = nn.Sequential(SinusoidalPosEmb(config.time_pos_dim),
                                      nn.Linear(config.time_pos_dim, time_dim), nn.GELU())
        block = dict(time_dim=time_dim, dropout=config.dropout, norm_input=config.block_norm == "input")
        self.downs = nn.ModuleList(SeedBlock(a, b, up=False, **block) for a, b in zip(widths[:-1], widths[1:]))
        rev = widths[::-1]
        self.ups = nn.ModuleList(SeedBlock(2 * a, b, up=True, **block) for a, b in zip(rev[:-1], rev[1:]))
        self.output = nn.Conv2d(config.init_dim, config.in_channels, 1)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    @property
    def subpixel(self) -> bool:
        """Whether up blocks compute "nearest ×2, then 3×3 conv" as one transposed conv (:func:`upsample_conv3x3`)."""
        return self.ups[0].subpixel

    @subpixel.setter
    def subpixel(self, enabled: bool) -> None:
        for block in self.ups:
            block.subpixel = enabled

    def time_features(self, t: Tensor) -> Tensor:
        """The sinusoidal features of t (``time_mlp.0``): (B,) → (B, time_pos_dim) float32."""
        return self.time_mlp[0](t)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.forward_features(x, self.time_features(t))

    def forward_features(self, x: Tensor, features: Tensor) -> Tensor:
        """ε̂ from x_t and :meth:`time_features` (see :meth:`ddpm_app.models.unet.UNet.forward_features`)."""
        emb = self.time_mlp[2](self.time_mlp[1](features))  # Linear, GELU: (B, 4·time_pos_dim)
        h = self.init_conv(x)
        skips = []
        for block in self.downs:
            h = block(h, emb)
            skips.append(h)
        for block in self.ups:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.output(h)
