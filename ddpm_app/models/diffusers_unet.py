"""diffusers' ``UNet2DModel`` (the U-Net of Ho et al.'s released DDPMs and of diffusers' ``train_unconditional.py``) as an
ε_θ(x_t, t) network of this app: ``eps = net(x, t)``, like the app's own U-Nets.

:class:`DiffusersUNetConfig` holds the fields of ``unet/config.json`` this app builds the network from, each checked
with bounds like the app's own configs (:mod:`ddpm_app.models.layers`); the network itself is diffusers' class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import Tensor

from ddpm_app.checks import ConfigError, exact_int, exact_ints, exact_real, shown
from ddpm_app.models.layers import MAX_IMAGE_CHANNELS, MAX_IMAGE_SIZE, MAX_LEVELS, MAX_WIDTH, Denoiser

DOWN_BLOCKS = ("DownBlock2D", "AttnDownBlock2D")
UP_BLOCKS = ("UpBlock2D", "AttnUpBlock2D")


def _one_of(*choices: object) -> Callable[[object, str], object]:
    def check(value: object, name: str) -> object:
        if isinstance(value, bool) != isinstance(choices[0], bool) or value not in choices:
            raise ConfigError("error.choice", name=name, choices=", ".join(map(repr, choices)), got=shown(value))
        return value
    return check


def _optional(check: Callable[[object, str], object]) -> Callable[[object, str], object]:
    return lambda value, name: None if value is None else check(value, name)


def _blocks(allowed: tuple[str, ...]) -> Callable[[object, str], object]:
    def check(value: object, name: str) -> tuple[str, ...]:
        if (not isinstance(value, (list, tuple)) or not 1 <= len(value) <= MAX_LEVELS
                or any(v not in allowed for v in value)):
            raise ConfigError("config.blocks", name=name, most=MAX_LEVELS, allowed=", ".join(allowed), got=shown(value))
        return tuple(value)
    return check


# UNet2DModel's arguments this app builds: name → (check, diffusers' default). A field of unet/config.json not named
# here is one diffusers' UNet2DModel does not take either (it ignores it too); "_"-fields are diffusers' bookkeeping.
FIELDS: dict[str, tuple[Callable[[object, str], object], object]] = {
    "sample_size": (lambda v, n: exact_int(v, n, 1, MAX_IMAGE_SIZE), None),
    "in_channels": (lambda v, n: exact_int(v, n, 1, MAX_IMAGE_CHANNELS), 3),
    "out_channels": (lambda v, n: exact_int(v, n, 1, 2 * MAX_IMAGE_CHANNELS), 3),
    "center_input_sample": (_one_of(False, True), False),
    "time_embedding_type": (_one_of("positional"), "positional"),
    "time_embedding_dim": (_optional(lambda v, n: exact_int(v, n, 1, 4 * MAX_WIDTH)), None),
    "freq_shift": (lambda v, n: exact_int(v, n, 0, 1), 0),
    "flip_sin_to_cos": (_one_of(True, False), True),
    "down_block_types": (_blocks(DOWN_BLOCKS), ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D")),
    "mid_block_type": (_optional(_one_of("UNetMidBlock2D")), "UNetMidBlock2D"),
    "up_block_types": (_blocks(UP_BLOCKS), ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")),
    "block_out_channels": (lambda v, n: exact_ints(v, n, 1, MAX_WIDTH, (1, MAX_LEVELS)), (224, 448, 672, 896)),
    "layers_per_block": (lambda v, n: exact_int(v, n, 1, 8), 2),
    "mid_block_scale_factor": (lambda v, n: exact_real(v, n, 0.0, 100.0), 1),
    "downsample_padding": (lambda v, n: exact_int(v, n, 0, 2), 1),
    "downsample_type": (_one_of("conv", "resnet"), "conv"),
    "upsample_type": (_one_of("conv", "resnet"), "conv"),
    "dropout": (lambda v, n: exact_real(v, n, 0.0, 1.0), 0.0),
    "act_fn": (_one_of("silu", "swish", "mish", "gelu", "relu"), "silu"),
    "attention_head_dim": (_optional(lambda v, n: exact_int(v, n, 1, MAX_WIDTH)), 8),
    "norm_num_groups": (lambda v, n: exact_int(v, n, 1, MAX_WIDTH), 32),
    "attn_norm_num_groups": (_optional(lambda v, n: exact_int(v, n, 1, MAX_WIDTH)), None),
    "norm_eps": (lambda v, n: exact_real(v, n, 0.0, 1.0), 1e-5),
    "resnet_time_scale_shift": (_one_of("default", "scale_shift"), "default"),
    "add_attention": (_one_of(True, False), True),
    "class_embed_type": (_optional(_one_of("unconditional")), None),  # anything but None: a class-conditional model
    "num_class_embeds": (_optional(lambda v, n: exact_int(v, n, 0, 0)), None),
    "num_train_timesteps": (_optional(lambda v, n: exact_int(v, n, 1, 10_000)), None),
}


@dataclass(frozen=True)
class DiffusersUNetConfig:
    """diffusers' ``UNet2DModel`` for unconditional ε-prediction at ``image_size``² with ``in_channels`` channels; ``unet``
    holds the checked arguments of ``UNet2DModel`` (sorted (name, value) pairs, so the config stays hashable)."""

    image_size: int
    in_channels: int
    unet: tuple[tuple[str, Any], ...]

    def __post_init__(self) -> None:
        values = dict(self.unet) if not isinstance(self.unet, dict) else self.unet
        object.__setattr__(self, "unet", tuple(sorted(check_unet(values).items())))
        exact_int(self.image_size, "image_size", 1, MAX_IMAGE_SIZE)
        exact_int(self.in_channels, "in_channels", 1, MAX_IMAGE_CHANNELS)
        unet = dict(self.unet)
        if (unet["sample_size"], unet["in_channels"]) != (self.image_size, self.in_channels):
            raise ConfigError("config.unet_disagrees", size=self.image_size, channels=self.in_channels,
                              unet_size=unet["sample_size"], unet_channels=unet["in_channels"])

    @classmethod
    def from_unet(cls, values: dict[str, Any]) -> DiffusersUNetConfig:
        """The config of the ``UNet2DModel`` that ``values`` (unet/config.json) describes."""
        unet = check_unet(values)
        return cls(unet["sample_size"], unet["in_channels"], tuple(sorted(unet.items())))

    def unet_kwargs(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.unet}

    def to_dict(self) -> dict[str, Any]:
        return {"image_size": self.image_size, "in_channels": self.in_channels, "unet": self.unet_kwargs()}


def check_unet(values: dict[str, Any]) -> dict[str, Any]:
    """The ``UNet2DModel`` arguments of ``values`` (unet/config.json), each checked, with diffusers' defaults for those
    left out; a :class:`~ddpm_app.checks.ConfigError` names the field that this app cannot run as diffusers would."""
    if not isinstance(values, dict):
        raise ConfigError("config.unet_not_object", got=shown(values))
    unet = {name: check(values[name], name) if name in values else default
            for name, (check, default) in FIELDS.items()}
    if unet["sample_size"] is None:
        raise ConfigError("config.no_sample_size")
    if unet["out_channels"] != unet["in_channels"]:
        raise ConfigError("config.out_channels", out=unet["out_channels"], channels=unet["in_channels"])
    levels = len(unet["block_out_channels"])
    for name in ("down_block_types", "up_block_types"):
        if len(unet[name]) != levels:
            raise ConfigError("config.block_count", name=name, blocks=len(unet[name]), levels=levels)
    for width in unet["block_out_channels"]:
        if width % unet["norm_num_groups"]:
            raise ConfigError("config.norm_groups", groups=unet["norm_num_groups"], width=width)
    if unet["sample_size"] % 2 ** (levels - 1):
        raise ConfigError("config.sample_size_divisible", size=unet["sample_size"], by=2 ** (levels - 1))
    return unet


class DiffusersUNet(Denoiser):
    """ε_θ(x_t, t) = ``UNet2DModel(x_t, t).sample``: diffusers' network, called as the app calls its own."""

    def __init__(self, config: DiffusersUNetConfig):
        super().__init__()
        from diffusers import UNet2DModel

        self.config = config
        self.unet = UNet2DModel(**config.unet_kwargs())

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.unet(x, t).sample  # (B, C, H, W)
