"""The model directory format: ``config.json`` + safetensors weights, loaded from disk or the Hugging Face Hub.

A model directory holds

- ``config.json`` — the architecture and its config, the noise schedule, image size and channels, and
  free-form training metadata; the loader rebuilds the network from this file alone;
- ``model.safetensors`` — the weights (or ``model-0000k-of-0000n.safetensors`` shards with
  ``model.safetensors.index.json`` when a file would exceed the shard size; a single tensor larger than the
  shard size gets a shard of its own, the only kind of file that may exceed it);
- optionally ``README.md`` (the model card), sample images and ``heldout.json`` (the held-out loss curve and
  bits/dim, see :mod:`ddpm_app.heldout`).

Nothing here unpickles: weights are read with safetensors only, and from the Hub only the files above are fetched.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import nn

from .models import Denoiser, ModelConfig, arch_name, build_model, make_config
from .schedule import Schedule, ScheduleConfig

FORMAT = "ddpm-app"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_PATTERN = "model{suffix}.safetensors"
DEFAULT_SHARD_SIZE = "15MB"  # keeps every weights file under 16 MiB (Hub previews, small uploads)
# what a model folder holds on the Hub: fetched (and no other file) by download, uploaded by hub.push_folder
HUB_FILES = ["config.json", "*.safetensors", "*.safetensors.index.json", "README.md", "*.png", "heldout.json"]
HUB_REPO_ID = re.compile(r"[A-Za-z0-9][\w.\-]*/[\w.\-]+")  # "user/name"; huggingface_hub checks the finer rules
HUB_ID_MAX_LENGTH = 96  # the Hub's limit on a repo id


class ModelFolderError(Exception):
    """A model could not be saved or loaded; the message says which file and what to do."""


@dataclass(frozen=True)
class SamplingDefaults:
    """How the app first samples a model, where it should differ from the app's own defaults (``config.json``'s
    optional ``"sampling"``): the DDIM η, and why, in a sentence the app shows when the model is loaded."""

    ddim_eta: float = 0.0
    why: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.ddim_eta, bool) or not isinstance(self.ddim_eta, (int, float)) \
                or not 0.0 <= self.ddim_eta <= 1.0:
            raise ValueError(f"sampling.ddim_eta must be a number from 0 to 1, got {self.ddim_eta!r}")
        if not isinstance(self.why, str):
            raise ValueError(f"sampling.why must be text, got {self.why!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"ddim_eta": self.ddim_eta, "why": self.why}


@dataclass(frozen=True)
class DiffusionConfig:
    """Everything needed to rebuild a model and its schedule: what ``config.json`` holds."""

    model: ModelConfig
    schedule: ScheduleConfig = ScheduleConfig()
    training: dict[str, Any] = field(default_factory=dict)  # metadata only: dataset, steps, time, metrics…
    sampling: SamplingDefaults = SamplingDefaults()  # the app's first DDIM η for this model

    @property
    def arch(self) -> str:
        return arch_name(self.model)

    @property
    def image_size(self) -> int:
        return self.model.image_size

    @property
    def channels(self) -> int:
        return self.model.in_channels

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "arch": self.arch, "image_size": self.image_size, "channels": self.channels,
            "model": self.model.to_dict(), "schedule": self.schedule.to_dict(), "training": self.training,
        } | ({"sampling": self.sampling.to_dict()} if self.sampling != SamplingDefaults() else {})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DiffusionConfig:
        if not isinstance(data, dict):
            raise ValueError("config.json must hold a JSON object")
        if data.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} model config (format = {data.get('format')!r})")
        if data.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(f"format_version {data['format_version']} is newer than this app supports "
                             f"({FORMAT_VERSION}); upgrade the app")
        for key in ("arch", "model", "schedule"):
            if key not in data:
                raise ValueError(f"missing key {key!r}")
        try:
            schedule = ScheduleConfig(**data["schedule"])
        except TypeError as e:
            raise ValueError(f"bad schedule: {e}") from None
        try:
            model = make_config(data["arch"], data["model"])
        except TypeError as e:
            raise ValueError(f"bad model config: {e}") from None
        sampling = data.get("sampling") or {}
        if not isinstance(sampling, dict):
            raise ValueError("bad sampling defaults: \"sampling\" must be a JSON object")
        try:
            defaults = SamplingDefaults(**sampling)
        except TypeError as e:
            raise ValueError(f"bad sampling defaults: {e}") from None
        return cls(model=model, schedule=schedule, training=dict(data.get("training") or {}), sampling=defaults)


@dataclass
class LoadedModel:
    """A network ready for sampling, with its schedule, config and where it came from."""

    model: Denoiser
    schedule: Schedule
    config: DiffusionConfig
    source: str

    @property
    def num_parameters(self) -> int:
        return self.model.num_parameters()

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.model(x, t)


def save_pretrained(model: nn.Module, config: DiffusionConfig, directory: str | Path, *,
                    dtype: torch.dtype | None = None, max_shard_size: int | str = DEFAULT_SHARD_SIZE) -> Path:
    """Write ``config.json`` and the safetensors weights (cast to ``dtype`` if given) into ``directory``.

    Files are written into a temporary folder first and then renamed into place one by one, so no file is
    ever half-written under its final name; weight files of an earlier save that the new one lacks are removed.
    """
    import shutil

    from huggingface_hub import save_torch_state_dict

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    staging = directory / f".saving-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
                 for k, v in model.state_dict().items()}
        staging.mkdir()
        save_torch_state_dict(state, staging, filename_pattern=WEIGHTS_PATTERN, max_shard_size=max_shard_size)
        (staging / CONFIG_NAME).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        new_files = sorted(p.name for p in staging.iterdir())
        for old in directory.glob("model*.safetensors*"):  # stale shards or index of an earlier save
            if old.name not in new_files:
                old.unlink()
        for name in sorted(new_files, key=lambda n: n == CONFIG_NAME):  # config.json last
            os.replace(staging / name, directory / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def read_config(directory: str | Path) -> DiffusionConfig:
    """Parse ``directory/config.json``, with an error that names the file and the problem."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise ModelFolderError(f"{path}: not found. A model folder needs config.json and model.safetensors.")
    try:
        return DiffusionConfig.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFolderError(f"{path}: not valid JSON ({e})") from None
    except ValueError as e:
        raise ModelFolderError(f"{path}: {e}") from None


def load_local(directory: str | Path, device: torch.device | str = "cpu") -> LoadedModel:
    """Rebuild the model from ``directory/config.json`` and load its safetensors weights (strictly)."""
    from huggingface_hub import load_torch_model

    directory = Path(directory)
    if not directory.is_dir():
        raise ModelFolderError(f"{directory}: no such model folder")
    config = read_config(directory)
    model = build_model(config.model)
    weights = sorted(p.name for p in directory.glob("model*.safetensors*"))
    if not weights:
        raise ModelFolderError(f"{directory}: no model.safetensors found next to config.json")
    try:
        load_torch_model(model, directory, strict=True, safe=True, filename_pattern=WEIGHTS_PATTERN)
    except (SafetensorError, OSError, ValueError) as e:  # ValueError: huggingface_hub wraps SafetensorError in one
        cause = e.__cause__ if isinstance(e, ValueError) and e.__cause__ is not None else e
        raise ModelFolderError(f"{directory}/{weights[0]}: not a readable safetensors file ({cause}). "
                              "Re-export or re-download the model.") from None
    except RuntimeError as e:  # missing/unexpected keys or wrong shapes from load_state_dict
        detail = re.sub(r"\s+", " ", str(e))[:500]
        raise ModelFolderError(f"{directory}/{weights[0]}: weights do not match config.json ({detail})") from None
    model.to(device).eval()
    return LoadedModel(model, Schedule(config.schedule), config, str(directory))


def is_repo_id(source: str) -> bool:
    """True for strings shaped like a Hub repo id ("user/name"), which a local path is not assumed to be."""
    return len(source) <= HUB_ID_MAX_LENGTH and bool(HUB_REPO_ID.fullmatch(source)) and not Path(source).exists()


def download(repo_id: str, revision: str | None = None, cache_dir: str | Path | None = None) -> Path:
    """Fetch a model folder from the Hub (only config, safetensors, card and images: no code, no pickles)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        OfflineModeIsEnabled, RepositoryNotFoundError, RevisionNotFoundError)
    try:
        path = snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=HUB_FILES)
    except GatedRepoError:
        raise ModelFolderError(f"{repo_id}: the repo is gated; accept its terms on the Hub and log in "
                              "(`hf auth login`).") from None
    except RepositoryNotFoundError:
        raise ModelFolderError(f"{repo_id}: no such model repo on the Hub (or it is private: log in first).") from None
    except RevisionNotFoundError:
        raise ModelFolderError(f"{repo_id}: revision {revision!r} not found.") from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        raise ModelFolderError(f"{repo_id}: cannot reach the Hugging Face Hub and the model is not cached. "
                              "Check the network, or use a model folder on disk.") from None
    except (HfHubHTTPError, OSError) as e:
        raise ModelFolderError(f"{repo_id}: download failed ({type(e).__name__}: {str(e)[:200]}).") from None
    return Path(path)


def load_pretrained(source: str | Path, device: torch.device | str = "cpu", revision: str | None = None,
                    cache_dir: str | Path | None = None) -> LoadedModel:
    """Load a model from a local folder, or from a Hub repo id ("user/name") through the local cache."""
    source_str = str(source)
    if isinstance(source, str) and is_repo_id(source):
        loaded = load_local(download(source, revision, cache_dir), device)
        loaded.source = source_str
        return loaded
    return load_local(source, device)
