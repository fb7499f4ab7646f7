"""Training on several processes (torchrun, DistributedDataParallel): the process group, each process's device, its
share of the batch and of the images, and the hardware the run trains on. One process is the same code with a world
of one."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ddpm_app.io.data import ImagePack
from ddpm_app.models import ModelConfig
from ddpm_app.runtime.inference import resolve_device
from ddpm_app.runtime.isa import cpu_model_name
from ddpm_app.training.errors import TrainingError


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_kind: str) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): NCCL on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def setup_device(name: str, info: DistInfo) -> torch.device:
    """The device of this process: ``name`` (``auto``: CUDA if visible) and, on CUDA, this rank's GPU."""
    try:
        device = resolve_device(name)
    except RuntimeError as e:
        raise TrainingError(str(e)) from None
    if device.type != "cuda":
        return device
    torch.cuda.set_device(info.local_rank)
    torch.backends.cudnn.benchmark = True  # every batch has the same shape: let cuDNN pick its fastest kernels once
    return torch.device("cuda", info.local_rank)


def per_rank_batch(batch_size: int, world_size: int) -> int:
    """Each process's share of the global batch, which must divide evenly (so images/s and images seen agree)."""
    if batch_size % world_size:
        raise TrainingError(f"--batch-size {batch_size} does not divide evenly among {world_size} processes; "
                            f"use a multiple of {world_size}")
    return batch_size // world_size


def shard_images(pack: ImagePack, model_config: ModelConfig, info: DistInfo, device: torch.device) -> Tensor:
    """This rank's share of the images, kept on the device as uint8 (N, C, H, W), after checking they fit the model."""
    if pack.images.shape[1] != model_config.in_channels or pack.images.shape[-1] != model_config.image_size:
        raise TrainingError(f"data is {tuple(pack.images.shape[1:])} but the model expects "
                            f"({model_config.in_channels}, {model_config.image_size}, {model_config.image_size})")
    if len(pack) < info.world_size:
        raise TrainingError(f"{len(pack)} image(s) cannot be shared among {info.world_size} processes")
    return pack.images[info.rank::info.world_size].to(device)


def data_parallel(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel when there are several processes, else itself."""
    if info.world_size == 1:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def hardware_name(device: torch.device) -> str:
    """The hardware this run trains on, as the model card names it: the GPU (with their count, when several) or the
    CPU model and its threads."""
    if device.type == "cuda":
        n = dist.get_world_size() if dist.is_initialized() else 1
        return f"{n}× {torch.cuda.get_device_name(device)}" if n > 1 else torch.cuda.get_device_name(device)
    return f"CPU ({cpu_model_name()}, {torch.get_num_threads()} threads)"
