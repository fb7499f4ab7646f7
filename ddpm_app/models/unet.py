"""The DDPM U-Net (Ho et al. 2020, appendix B; layout as in improved-diffusion).

Residual blocks with GroupNorm, SiLU and dropout; the timestep enters each block as a scale and shift of
its second normalisation; self-attention at chosen resolutions; a middle block of ResBlock–Attention–ResBlock.
Widths, depth and attention are all in :class:`UNetConfig`, so the same code builds a 2 M-parameter model
for fast CPU sampling and the paper's 35 M-parameter one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

from ddpm_app.checks import ConfigError, exact_int, exact_ints
from ddpm_app.models.layers import (
    MAX_IMAGE_SIZE,
    MAX_LEVELS,
    MAX_WIDTH,
    Denoiser,
    check_image,
    group_norm,
    timestep_embedding,
    zero_module,
)


@dataclass(frozen=True)
class UNetConfig:
    """Defaults: the shipped 64×64 models' design (≈ 12 M parameters), small enough to sample on a laptop's CPU."""

    image_size: int = 64
    in_channels: int = 3
    base_channels: int = 48  # width of the first level
    channel_mult: tuple[int, ...] = (1, 2, 3, 4)  # width multiplier of each level; each level halves H, W
    num_res_blocks: int = 2  # residual blocks per level (the up path has one more)
    attention_resolutions: tuple[int, ...] = (8,)  # feature-map sizes (after patching) that get self-attention
    head_channels: int = 64  # channels per attention head
    dropout: float = 0.1
    # >1 folds p×p pixel patches into channels before the first conv (and back at the end): the whole
    # network then runs at image_size/p, which makes it much cheaper, above all on CPU
    patch_size: int = 2

    def __post_init__(self) -> None:
        check_image(self.image_size, self.in_channels, self.dropout)
        exact_int(self.base_channels, "base_channels", 1, MAX_WIDTH)
        exact_int(self.num_res_blocks, "num_res_blocks", 1, 8)
        exact_int(self.head_channels, "head_channels", 1, MAX_WIDTH)
        exact_int(self.patch_size, "patch_size", 1, 8)
        # JSON gives lists; keep tuples so the config stays hashable and comparable
        object.__setattr__(self, "channel_mult", exact_ints(self.channel_mult, "channel_mult", 1, 16, (1, MAX_LEVELS)))
        object.__setattr__(self, "attention_resolutions", exact_ints(
            self.attention_resolutions, "attention_resolutions", 1, MAX_IMAGE_SIZE, (0, MAX_LEVELS)))
        if self.base_channels * max(self.channel_mult) > MAX_WIDTH:
            raise ConfigError("config.unet_width", most=MAX_WIDTH, base=self.base_channels, mult=max(self.channel_mult))
        if self.image_size % (self.patch_size * 2 ** (len(self.channel_mult) - 1)):
            raise ConfigError("config.unet_image_size", size=self.image_size,
                              by=self.patch_size * 2 ** (len(self.channel_mult) - 1))

    def to_dict(self) -> dict:
        return asdict(self)


class ResBlock(nn.Module):
    """h = x·W_skip + conv(drop(SiLU(GN(conv(SiLU(GN(x))))·(1+scale) + shift)))  with (scale, shift) from t."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1 = group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_module(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)  # (B, C, 1, 1) each
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over the H·W positions of a feature map, with a residual connection."""

    def __init__(self, channels: int, head_channels: int):
        super().__init__()
        self.heads = max(1, channels // head_channels)
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_module(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = rearrange(self.qkv(self.norm(x)), "b (qkv heads d) h w -> qkv b heads (h w) d", qkv=3,
                            heads=self.heads)
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(rearrange(out, "b heads (h w) d -> b (heads d) h w", h=x.shape[2]))


class ResAttnBlock(nn.Module):
    """One ResBlock, optionally followed by attention, taking the timestep embedding (several make a level)."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, attention: bool, head_channels: int):
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, emb_dim, dropout)
        self.attn = Attention(out_ch, head_channels) if attention else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        return self.attn(self.res(x, emb))


class UNet(Denoiser):
    """ε_θ(x_t, t): predicts the noise in x_t. Input and output are (B, C, H, W)."""

    def __init__(self, config: UNetConfig = UNetConfig()):
        super().__init__()
        self.config = config
        cfg = config
        base, p = cfg.base_channels, cfg.patch_size
        emb_dim = 4 * base
        self.time_embed = nn.Sequential(nn.Linear(base, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.input_conv = nn.Conv2d(cfg.in_channels * p * p, base, 3, padding=1)

        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skip_channels = [base]
        ch, res = base, cfg.image_size // p
        for level, mult in enumerate(cfg.channel_mult):
            blocks = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResAttnBlock(ch, base * mult, emb_dim, cfg.dropout, res in cfg.attention_resolutions,
                                           cfg.head_channels))
                ch = base * mult
                skip_channels.append(ch)
            self.down.append(blocks)
            if level < len(cfg.channel_mult) - 1:
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skip_channels.append(ch)
                res //= 2

        self.mid1 = ResBlock(ch, ch, emb_dim, cfg.dropout)
        self.mid_attn = Attention(ch, cfg.head_channels)
        self.mid2 = ResBlock(ch, ch, emb_dim, cfg.dropout)

        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            blocks = nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResAttnBlock(ch + skip_channels.pop(), base * mult, emb_dim, cfg.dropout,
                                           res in cfg.attention_resolutions, cfg.head_channels))
                ch = base * mult
            self.up.append(blocks)
            if level > 0:
                self.upsample.append(nn.Conv2d(ch, ch, 3, padding=1))
                res *= 2

        self.out_norm = group_norm(ch)
        self.out_conv = zero_module(nn.Conv2d(ch, cfg.in_channels * p * p, 3, padding=1))

    def time_features(self, t: Tensor) -> Tensor:
        """The sinusoidal features of t that the network's time MLP reads: (B,) → (B, base) float32."""
        return timestep_embedding(t, self.config.base_channels)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.forward_features(x, self.time_features(t))

    def forward_features(self, x: Tensor, features: Tensor) -> Tensor:
        """ε̂ from x_t and :meth:`time_features` (t·ω_k grows to ~1000: another runtime computing it in bf16 would
        round t itself, so it is handed the sines and cosines instead)."""
        p = self.config.patch_size
        emb = self.time_embed(features)  # (B, 4·base)
        if p > 1:
            x = rearrange(x, "b c (h p1) (w p2) -> b (c p1 p2) h w", p1=p, p2=p)  # each p×p patch a pixel
        h = self.input_conv(x)
        skips = [h]
        for level, blocks in enumerate(self.down):
            for block in blocks:
                h = block(h, emb)
                skips.append(h)
            if level < len(self.downsample):
                h = self.downsample[level](h)
                skips.append(h)

        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)

        for level, blocks in enumerate(self.up):
            for block in blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if level < len(self.upsample):
                h = self.upsample[level](repeat(h, "b c h w -> b c (h 2) (w 2)"))  # nearest ×2

        out = self.out_conv(F.silu(self.out_norm(h)))
        return rearrange(out, "b (c p1 p2) h w -> b c (h p1) (w p2)", p1=p, p2=p) if p > 1 else out
