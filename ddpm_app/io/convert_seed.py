"""Convert a checkpoint saved by the seed tutorial's code into a model folder (config.json + safetensors).

The tutorial saves ``torch.save(model.state_dict(), "…pth")``: a pickle of tensors with no record of the
widths it was built with. This module reads it with ``torch.load(weights_only=True)`` — PyTorch's restricted
unpickler, which refuses anything but tensors and plain containers, so a file carrying code is rejected
without running it — reads the widths off the tensor shapes, loads the tensors strictly into
:class:`~ddpm_app.models.SeedUNet`, and writes the result with :func:`~ddpm_app.io.model_folder.save_pretrained`.

    python -m ddpm_app.cli.convert_seed ddpm_T1000_l2_epochs_300.pth weights/seed-celeba --image-size 96
"""

from __future__ import annotations

import hashlib
import pickle
import re
import warnings
from pathlib import Path
from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from ddpm_app.diffusion.schedule import ScheduleConfig
from ddpm_app.io.model_folder import DiffusionConfig, save_pretrained
from ddpm_app.models import SeedUNet, SeedUNetConfig

# prefixes that wrappers add to every key: torch.compile (``_orig_mod.``) and DataParallel (``module.``)
WRAPPER_PREFIXES = ("_orig_mod.", "module.")
MAX_LISTED_KEYS = 5


class ConversionError(ValueError):
    """The file is not a usable seed-tutorial state dict; the message names the file and the problem."""


class Converted(NamedTuple):
    directory: Path
    config: DiffusionConfig


def _load_error(path: Path, error: Exception) -> ConversionError:
    """A one-line explanation of why ``torch.load(weights_only=True)`` refused the file."""
    message = str(error)
    if isinstance(error, pickle.UnpicklingError):
        found = re.search(r"GLOBAL ([\w.]+)", message)
        if found:
            return ConversionError(
                f"{path}: refused to unpickle {found.group(1)} — the file holds Python objects or code, not just "
                "tensors (nothing in it was run). Save the weights with torch.save(model.state_dict(), path).")
        operand = re.search(r"Unsupported operand \d+", message)
        detail = f" ({operand.group(0)})" if operand else ""
        return ConversionError(f"{path}: refused — not a weights-only PyTorch file{detail}; it may be a plain "
                               "pickle or another format (nothing in it was run).")
    if isinstance(error, EOFError):
        return ConversionError(f"{path}: the file is empty or truncated.")
    first_line = message.strip().splitlines()[0][:200] if message.strip() else type(error).__name__
    return ConversionError(f"{path}: not a PyTorch checkpoint ({first_line}).")


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a ``.pth`` state dict, read with the weights-only unpickler onto the CPU."""
    path = Path(path)
    if not path.exists():
        raise ConversionError(f"{path}: no such file.")
    if not path.is_file():
        raise ConversionError(f"{path}: not a file (give the .pth file itself).")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": noise next to our own message
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # arbitrary bytes make the unpickler raise almost any exception type
        raise _load_error(path, e) from None
    if not isinstance(state, dict) or not state:
        raise ConversionError(f"{path}: expected a state dict (a dict of tensors), got "
                              f"{'an empty dict' if isinstance(state, dict) else type(state).__name__}.")
    not_tensors = [str(k) for k, v in state.items() if not (isinstance(k, str) and isinstance(v, Tensor))]
    if not_tensors:
        what = "the entry {} is not a tensor" if len(not_tensors) == 1 else "the entries {} are not tensors"
        raise ConversionError(f"{path}: expected a state dict (a dict of tensors), but "
                              + what.format(_listing(not_tensors))
                              + " (a training checkpoint? save model.state_dict() on its own).")
    for prefix in WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _listing(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:MAX_LISTED_KEYS])
    return shown + (f" and {len(keys) - MAX_LISTED_KEYS} more" if len(keys) > MAX_LISTED_KEYS else "")


def infer_config(state: dict[str, Tensor], image_size: int = 64) -> SeedUNetConfig:
    """The :class:`SeedUNetConfig` whose layers have the shapes found in ``state``.

    ``init_conv.weight`` is (init_dim, in_channels, 7, 7), ``time_mlp.1.weight`` is (4·time_pos_dim,
    time_pos_dim), and each down block's ``norm2.weight`` has its output width. The image size is not stored
    in a state dict, so it is an argument.
    """
    required = {"init_conv.weight": 4, "time_mlp.1.weight": 2, "downs.0.norm2.weight": 1}  # key → ndim
    missing = [k for k in required if k not in state]
    if missing:
        raise ConversionError(f"not a seed-tutorial U-Net state dict: missing {_listing(missing)}.")
    for key, ndim in required.items():
        if state[key].ndim != ndim:
            raise ConversionError(f"{key} has shape {tuple(state[key].shape)}; a seed U-Net's is {ndim}-dimensional.")
    init_dim, in_channels = state["init_conv.weight"].shape[:2]
    time_pos_dim = state["time_mlp.1.weight"].shape[1]
    widths = [init_dim]
    while (norm := state.get(f"downs.{len(widths) - 1}.norm2.weight")) is not None and norm.ndim == 1:
        widths.append(norm.shape[0])
    try:
        return SeedUNetConfig(image_size=image_size, in_channels=int(in_channels), init_dim=int(init_dim),
                              down_channels=tuple(int(w) for w in widths), time_pos_dim=int(time_pos_dim))
    except ValueError as e:
        found = ", ".join(map(str, widths))
        raise ConversionError(f"no seed U-Net has widths {found} at image size {image_size}: {e}") from None


def check_layout(state: dict[str, Tensor], model: SeedUNet) -> None:
    """Raise a :class:`ConversionError` listing missing, unexpected and wrongly shaped keys, if any."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} vs {expected[k]}" for k in expected
             if k in state and tuple(state[k].shape) != expected[k]]
    problems = [f"{label}: {_listing(keys)}" for label, keys in
                (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)) if keys]
    if problems:
        raise ConversionError("does not match the seed U-Net's layout — " + "; ".join(problems) + ".")


def convert(pth_path: str | Path, out_dir: str | Path, *, image_size: int = 64,
            schedule: ScheduleConfig = ScheduleConfig(), dtype: torch.dtype | None = None) -> Converted:
    """Read a tutorial ``.pth`` state dict, load it strictly into a SeedUNet and save it as a model folder."""
    pth_path = Path(pth_path)
    state = read_state_dict(pth_path)
    try:
        model_config = infer_config(state, image_size)
        model = SeedUNet(model_config)
        check_layout(state, model)
    except ConversionError as e:
        raise ConversionError(f"{pth_path}: {e}") from None
    model.load_state_dict(state, strict=True)
    config = DiffusionConfig(model=model_config, schedule=schedule, training={
        "converted_from": "seed tutorial checkpoint (torch.save(model.state_dict()))",
        "source_file": pth_path.name,
        "source_sha256": hashlib.sha256(pth_path.read_bytes()).hexdigest(),
    })
    return Converted(save_pretrained(model, config, out_dir, dtype=dtype), config)
