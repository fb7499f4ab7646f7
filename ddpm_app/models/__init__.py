"""The noise-prediction networks ε_θ(x_t, t) and the registry that builds one from its config."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from ddpm_app.checks import ConfigError, shown
from ddpm_app.models.diffusers_unet import DiffusersUNet, DiffusersUNetConfig
from ddpm_app.models.layers import Denoiser
from ddpm_app.models.seed import SeedUNet, SeedUNetConfig
from ddpm_app.models.unet import UNet, UNetConfig

ModelConfig = UNetConfig | SeedUNetConfig | DiffusersUNetConfig

# architecture name (as written in config.json) → (config class, model class)
ARCHITECTURES: dict[str, tuple[type, type[Denoiser]]] = {
    "ddpm": (UNetConfig, UNet),
    "seed": (SeedUNetConfig, SeedUNet),
    "diffusers-unet2d": (DiffusersUNetConfig, DiffusersUNet),  # diffusers' UNet2DModel (see diffusers_folder)
}


def arch_name(config: ModelConfig) -> str:
    for name, (config_cls, _) in ARCHITECTURES.items():
        if isinstance(config, config_cls):
            return name
    raise TypeError(f"not a model config: {type(config).__name__}")


def architecture(arch: object) -> tuple[type, type[Denoiser]]:
    """(config class, model class) of the architecture named ``arch`` (config.json's "arch"), or a ConfigError."""
    if not isinstance(arch, str) or arch not in ARCHITECTURES:
        raise ConfigError("config.unknown_arch", got=shown(arch), known=", ".join(ARCHITECTURES))
    return ARCHITECTURES[arch]


def make_config(arch: str, values: dict[str, Any]) -> ModelConfig:
    """The config dataclass of ``arch`` from a dict (e.g. config.json); unknown keys are an error, and so is any value
    the config's own checks refuse (a :class:`~ddpm_app.checks.ConfigError` naming the field)."""
    config_cls = architecture(arch)[0]
    if not isinstance(values, dict):
        raise ConfigError("config.arch_not_object", arch=arch, got=shown(values))
    known = {f.name for f in fields(config_cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError("config.unknown_fields", arch=arch, names=", ".join(unknown))
    return config_cls(**values)


def build_model(config: ModelConfig) -> Denoiser:
    """A freshly initialised network for ``config``."""
    return ARCHITECTURES[arch_name(config)][1](config)


__all__ = ["ARCHITECTURES", "architecture", "Denoiser", "DiffusersUNet", "DiffusersUNetConfig", "ModelConfig", "SeedUNet", "SeedUNetConfig", "UNet", "UNetConfig",
           "arch_name", "build_model", "make_config"]
