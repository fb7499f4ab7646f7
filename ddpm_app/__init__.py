"""ddpm_app: denoising diffusion (DDPM) you can watch — schedule, U-Nets, samplers, checkpoints, training, UI."""

__version__ = "0.1.0"
