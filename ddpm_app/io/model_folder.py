"""The model directory format: ``config.json`` + safetensors weights (opened from disk or the Hub by
:mod:`ddpm_app.io.loading`).

A model directory holds

- ``config.json`` — the architecture and its config, the noise schedule, image size and channels, and
  free-form training metadata; the loader rebuilds the network from this file alone;
- ``model.safetensors`` — the weights (or ``model-0000k-of-0000n.safetensors`` shards with
  ``model.safetensors.index.json`` when a file would exceed the shard size; a single tensor larger than the
  shard size gets a shard of its own, the only kind of file that may exceed it);
- optionally ``README.md`` (the model card), sample images and ``heldout.json`` (the held-out loss curve and
  bits/dim, see :mod:`ddpm_app.metrics.heldout`).

Nothing here unpickles: weights are read with safetensors only, and from the Hub only the files above are fetched.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from ddpm_app.checks import ConfigError, choice, exact_int, exact_real, flag, shown
from ddpm_app.diffusion.samplers import VARIANCES, Variance
from ddpm_app.diffusion.schedule import Schedule, ScheduleConfig
from ddpm_app.models import Denoiser, ModelConfig, arch_name, architecture, build_model, make_config
from ddpm_app.text import CatalogueError

FORMAT = "ddpm-app"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_PATTERN = "model{suffix}.safetensors"
DEFAULT_SHARD_SIZE = "15MB"  # keeps every weights file under 16 MiB (Hub previews, small uploads)
# what a model folder holds on the Hub: fetched (and no other file) by download, uploaded by hub.push_folder
HUB_FILES = ["config.json", "*.safetensors", "*.safetensors.index.json", "README.md", "*.png", "heldout.json"]
HUB_REPO_ID = re.compile(r"[A-Za-z0-9][\w.\-]*/[\w.\-]+")  # "user/name"; huggingface_hub checks the finer rules
HUB_ID_MAX_LENGTH = 96  # the Hub's limit on a repo id
# bounds on what config.json may hold (the networks' and the schedule's own bounds are in their configs)
MAX_CONFIG_BYTES = 1 << 20
MAX_NESTING = 16  # levels of lists and objects (training metadata nests 3 deep)
MAX_FORMAT_VERSION = 1_000_000
MAX_WHY = 1000  # characters of sampling.why
MAX_PARAMETERS = 250_000_000  # 1 GB in fp32; the shipped models have 8–25 M
WEIGHTS_IMAGE_SIZE = "image_size"  # safetensors metadata: the image size the weights were saved for
Part = TypeVar("Part")


class ModelFolderError(CatalogueError):
    """A model could not be saved or loaded; the message (a catalogue key and its values) says which file (and
    field) and what to do."""


@dataclass(frozen=True)
class SamplingDefaults:
    """How the app first samples a model, where it should differ from the app's own defaults (``config.json``'s
    optional ``"sampling"``): the DDIM η, whether x̂₀ is clipped to [−1, 1], DDPM's reverse variance σ_t² (the
    posterior's β̃_t or β_t, see :func:`ddpm_app.diffusion.samplers.ddpm`), and why, in a sentence the app shows when the model
    is loaded."""

    ddim_eta: float = 0.0
    why: str = ""
    clip_x0: bool = True
    variance: Variance = "posterior"

    def __post_init__(self) -> None:
        exact_real(self.ddim_eta, "ddim_eta", 0.0, 1.0)
        if not isinstance(self.why, str) or len(self.why) > MAX_WHY:
            raise ConfigError("error.text", name="why", most=MAX_WHY, got=shown(self.why))
        flag(self.clip_x0, "clip_x0")
        choice(self.variance, "variance", VARIANCES)

    def to_dict(self) -> dict[str, Any]:
        return {"ddim_eta": self.ddim_eta, "why": self.why, "clip_x0": self.clip_x0, "variance": self.variance}


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
    def from_dict(cls, data: Any) -> DiffusionConfig:
        """The config that ``config.json`` holds, each field checked by its config's own validation: a
        :class:`~ddpm_app.checks.ConfigError` names the field ("model.base_channels", "schedule.timesteps") and
        what it allows."""
        if not isinstance(data, dict):
            raise ConfigError("config.not_object")
        if nesting(data) > MAX_NESTING:
            raise ConfigError("config.too_deep", most=MAX_NESTING)
        if data.get("format") != FORMAT:
            raise ConfigError("config.format", format=FORMAT, got=shown(data.get("format")))
        version = exact_int(data.get("format_version", FORMAT_VERSION), "format_version", 0, MAX_FORMAT_VERSION)
        if version > FORMAT_VERSION:
            raise ConfigError("config.newer", version=version, supported=FORMAT_VERSION)
        for key in ("arch", "model", "schedule"):
            if key not in data:
                raise ConfigError("config.missing_key", key=repr(key))
        architecture(data["arch"])
        schedule = _part("schedule", data["schedule"], lambda values: ScheduleConfig(**values))
        model = _part("model", data["model"], lambda values: make_config(data["arch"], values))
        for key, value in (("image_size", model.image_size), ("channels", model.in_channels)):
            if key in data and data[key] != value:
                raise ConfigError("config.disagree", key=key, got=shown(data[key]), value=value)
        sampling = _part("sampling", data.get("sampling") or {}, lambda values: SamplingDefaults(**values))
        training = data.get("training") or {}
        if not isinstance(training, dict):
            raise ConfigError("config.part_not_object", name="training", got=shown(training))
        return cls(model=model, schedule=schedule, training=dict(training), sampling=sampling)


def _part(name: str, values: Any, build: Callable[[dict[str, Any]], Part]) -> Part:
    """``build(values)`` for the part of config.json called ``name``, its errors naming the field as
    ``name.field``."""
    if not isinstance(values, dict):
        raise ConfigError("config.part_not_object", name=name, got=shown(values))
    try:
        return build(values)
    except ConfigError as e:
        raise ConfigError("config.in_part", part=name, detail=e) from None
    except TypeError as e:  # a missing or unexpected field
        raise ConfigError("config.part_fields", part=name, why=re.sub(r"^.*__init__[(][)] ", "", str(e))) from None


def nesting(value: Any) -> int:
    """How many levels of lists and objects a JSON value has (0 for a number or a string), level by level, so a
    deeply nested file cannot exhaust the stack."""
    depth, level = 0, [value]
    while containers := [v for v in level if isinstance(v, (dict, list))]:
        depth += 1
        level = [child for v in containers for child in (v.values() if isinstance(v, dict) else v)]
    return depth


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

    Every weights file records in its safetensors metadata the image size it was saved for (``image_size``), which
    the loader compares with config.json's (:func:`check_image_size`). Files are written into a temporary folder
    first and then renamed into place one by one, so no file is ever half-written under its final name; weight files
    of an earlier save that the new one lacks are removed.
    """
    import shutil

    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    staging = directory / f".saving-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
                 for k, v in model.state_dict().items()}
        staging.mkdir()
        split = split_torch_state_dict_into_shards(state, filename_pattern=WEIGHTS_PATTERN,
                                                   max_shard_size=max_shard_size)
        recorded = {"format": "pt", WEIGHTS_IMAGE_SIZE: str(config.image_size)}  # in every shard: each is checked
        for filename, names in split.filename_to_tensors.items():
            save_file({name: state[name] for name in names}, staging / filename, metadata=recorded)
        if split.is_sharded:
            index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
            (staging / f"{WEIGHTS_PATTERN.format(suffix='')}.index.json").write_text(json.dumps(index, indent=2))
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
    """Parse ``directory/config.json``, with an error that names the file, the field and what it allows."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise ModelFolderError("folder.config_not_found", path=path)
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ModelFolderError("folder.config_large", path=path, size=path.stat().st_size, most=MAX_CONFIG_BYTES)
    try:
        return DiffusionConfig.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFolderError("folder.not_json", path=path, why=e) from None
    except RecursionError:
        raise ModelFolderError("folder.in_file", path=path,
                               detail=ConfigError("config.too_deep", most=MAX_NESTING)) from None
    except ValueError as e:
        raise ModelFolderError("folder.in_file", path=path, detail=e) from None


def check_weights(directory: Path, config: DiffusionConfig, files: list[str]) -> None:
    """Compare the tensors that ``files`` (safetensors, in ``directory``) hold, by their headers alone, with those the
    network of ``config`` has, built without memory on the "meta" device: a config that asks for more parameters than
    :data:`MAX_PARAMETERS`, or other shapes than the weights have, or another image size than the weights were saved
    for, is refused before any tensor is allocated."""
    with torch.device("meta"):
        skeleton = build_model(config.model)
    if skeleton.num_parameters() > MAX_PARAMETERS:
        raise ModelFolderError("folder.too_many_parameters", path=directory / CONFIG_NAME,
                               parameters=skeleton.num_parameters(), most=MAX_PARAMETERS)
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    found: dict[str, tuple[int, ...]] = {}
    for name in files:
        try:
            with safe_open(directory / name, "pt") as weights:
                check_image_size(directory / name, (weights.metadata() or {}).get(WEIGHTS_IMAGE_SIZE), config)
                found |= {k: tuple(weights.get_slice(k).get_shape()) for k in weights.keys()}
        except (SafetensorError, OSError) as e:
            raise ModelFolderError("folder.bad_safetensors", path=directory / name, why=e) from None
    check_shapes(expected, found, directory / files[0], CONFIG_NAME)


def check_image_size(weights: Path, saved_for: str | None, config: DiffusionConfig) -> None:
    """A ModelFolderError unless config.json's image size is the one ``weights`` records it was trained at (its
    safetensors metadata): the networks are fully convolutional, so weights trained at 64×64 would run at 128×128 too,
    and make images they were never trained to make. Weights that record no size (exports older than the record,
    other people's folders) are trusted to match."""
    if saved_for is None or saved_for == str(config.image_size):
        return
    if not (saved_for.isascii() and saved_for.isdigit()):
        raise ModelFolderError("folder.image_size_record", weights=weights, key=WEIGHTS_IMAGE_SIZE,
                               value=shown(saved_for))
    raise ModelFolderError("folder.image_size", path=weights.parent / CONFIG_NAME, size=config.image_size,
                           weights=weights, saved=saved_for, key=WEIGHTS_IMAGE_SIZE)


def load_model_folder(directory: str | Path, device: torch.device | str = "cpu") -> LoadedModel:
    """Rebuild the model from ``directory/config.json`` and load its safetensors weights (strictly), once the config's
    fields and the weights' shapes are checked (:func:`read_config`, :func:`check_weights`)."""
    from huggingface_hub import load_torch_model

    directory = Path(directory)
    if not directory.is_dir():
        raise ModelFolderError("folder.no_such", path=directory)
    config = read_config(directory)
    weights = sorted(p.name for p in directory.glob("model*.safetensors"))
    if not weights:
        raise ModelFolderError("folder.no_weights", path=directory)
    check_weights(directory, config, weights)
    model = build_model(config.model)
    try:
        load_torch_model(model, directory, strict=True, safe=True, filename_pattern=WEIGHTS_PATTERN)
    except (SafetensorError, OSError, ValueError) as e:  # ValueError: huggingface_hub wraps SafetensorError in one
        cause = e.__cause__ if isinstance(e, ValueError) and e.__cause__ is not None else e
        raise ModelFolderError("folder.bad_safetensors", path=f"{directory}/{weights[0]}", why=cause) from None
    except RuntimeError as e:  # missing/unexpected keys or wrong shapes from load_state_dict
        detail = re.sub(r"\s+", " ", str(e))[:500]
        raise ModelFolderError("folder.weights_differ", path=f"{directory}/{weights[0]}", config=CONFIG_NAME,
                               detail=detail) from None
    model.to(device).eval()
    return LoadedModel(model, Schedule(config.schedule), config, str(directory))


def check_shapes(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], weights: Path,
                 config: str) -> None:
    """A ModelFolderError naming ``weights`` unless its tensors (``found``: name → shape, from the file headers) are
    exactly the ones the network ``config`` describes would hold (``expected``), shape for shape."""
    differences = ([CatalogueError("folder.tensor_missing", name=k) for k in expected if k not in found]
                   + [CatalogueError("folder.tensor_extra", name=k) for k in found if k not in expected]
                   + [CatalogueError("folder.tensor_shape", name=k, found=found[k], shape=shape, config=config)
                      for k, shape in expected.items() if k in found and found[k] != shape])
    if differences:
        raise ModelFolderError("folder.weights_differ", path=weights, config=config,
                               detail=differences[:4] + ["…"] * (len(differences) > 4))
