"""diffusers' DDPM folders (``DDPMPipeline.save_pretrained``, the layout of Ho et al.'s models on the Hub and of
diffusers' ``train_unconditional.py``), loaded as this app's models.

A diffusers DDPM folder holds

- ``model_index.json`` — the pipeline (``DDPMPipeline`` or ``DDIMPipeline``) and its parts;
- ``unet/config.json`` and ``unet/diffusion_pytorch_model.safetensors`` — diffusers' ``UNet2DModel``, run as it is
  (:class:`~ddpm_app.models.diffusers_unet.DiffusersUNet`);
- ``scheduler/scheduler_config.json`` — a ``DDPMScheduler`` (or ``DDIMScheduler``) config, mapped onto the app's
  :class:`~ddpm_app.diffusion.schedule.ScheduleConfig` and :class:`~ddpm_app.io.model_folder.SamplingDefaults` by
  :func:`schedule_from_scheduler`. A field the app cannot run exactly as diffusers would (v-prediction, a learned
  variance, a schedule it does not have) is refused with a message naming it, never approximated.

Weights are read with safetensors only; a folder with only ``.bin`` (pickle) weights is refused, never unpickled.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from ddpm_app.checks import ConfigError, exact_int, exact_real, shown
from ddpm_app.diffusion.schedule import MAX_TIMESTEPS, Schedule, ScheduleConfig
from ddpm_app.io.model_folder import (
    MAX_CONFIG_BYTES,
    MAX_NESTING,
    MAX_PARAMETERS,
    DiffusionConfig,
    LoadedModel,
    ModelFolderError,
    SamplingDefaults,
    check_shapes,
    nesting,
)
from ddpm_app.models import DiffusersUNet, DiffusersUNetConfig

MODEL_INDEX = "model_index.json"
UNET_CONFIG = "unet/config.json"
SCHEDULER_CONFIG = "scheduler/scheduler_config.json"
UNET_WEIGHTS = re.compile(r"diffusion_pytorch_model(-\d+-of-\d+)?\.safetensors")  # no variants (".fp16.")
# what a diffusers DDPM folder holds on the Hub that the app fetches (no pickles, no code)
HUB_FILES = [MODEL_INDEX, UNET_CONFIG, "unet/diffusion_pytorch_model.safetensors",
             "unet/diffusion_pytorch_model-*-of-*.safetensors", SCHEDULER_CONFIG, "README.md"]
PIPELINES = ("DDPMPipeline", "DDIMPipeline")
SCHEDULERS = ("DDPMScheduler", "DDIMScheduler")
# diffusers' beta_schedule → this app's schedule kind; others (scaled_linear, sigmoid, laplace) it does not have
BETA_SCHEDULES = {"linear": "linear", "squaredcos_cap_v2": "cosine"}
# diffusers' variance_type → the app's reverse variance σ_t²: β̃_t (the posterior's) or β_t. "fixed_small_log" is
# fixed_small's σ computed through its log; learned variances need a network output the app does not use
VARIANCE_TYPES = {"fixed_small": "posterior", "fixed_small_log": "posterior", "fixed_large": "beta"}


def is_diffusers_folder(directory: str | Path) -> bool:
    """Whether ``directory`` is laid out as a diffusers pipeline (it has model_index.json)."""
    return (Path(directory) / MODEL_INDEX).is_file()


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``, with the limits of the app's own config.json; errors name the file."""
    if not path.is_file():
        raise ModelFolderError("diffusers.not_found", path=path, index=MODEL_INDEX, unet=UNET_CONFIG,
                               scheduler=SCHEDULER_CONFIG)
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ModelFolderError("diffusers.config_large", path=path, size=path.stat().st_size, most=MAX_CONFIG_BYTES)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFolderError("folder.not_json", path=path, why=e) from None
    except RecursionError:
        raise ModelFolderError("folder.in_file", path=path,
                               detail=ConfigError("config.too_deep", most=MAX_NESTING)) from None
    if not isinstance(data, dict):
        raise ModelFolderError("diffusers.not_object", path=path)
    if nesting(data) > MAX_NESTING:
        raise ModelFolderError("folder.in_file", path=path, detail=ConfigError("config.too_deep", most=MAX_NESTING))
    return data


def schedule_from_scheduler(values: dict[str, Any]) -> tuple[ScheduleConfig, SamplingDefaults]:
    """The app's schedule and first sampling settings for a diffusers scheduler config (scheduler_config.json):
    β_t from ``num_train_timesteps``, ``beta_schedule``, ``beta_start``/``beta_end``; DDPM's σ_t² from ``variance_type``;
    clipping of x̂₀ from ``clip_sample``. A :class:`~ddpm_app.checks.ConfigError` names any field the app cannot run
    exactly. ``timestep_spacing`` and ``steps_offset`` only place diffusers' own DDIM steps: the app places its own."""
    name = values.get("_class_name")
    if name not in SCHEDULERS:
        raise ConfigError("error.choice", name="_class_name", choices=", ".join(SCHEDULERS), got=shown(name))

    def field(key: str, default: object) -> Any:
        return values.get(key, default)

    if field("prediction_type", "epsilon") != "epsilon":
        raise ConfigError("diffusers.prediction_type", got=shown(values["prediction_type"]))
    if field("trained_betas", None) is not None:
        raise ConfigError("diffusers.trained_betas")
    kind = field("beta_schedule", "linear")
    if kind not in BETA_SCHEDULES:
        raise ConfigError("error.choice", name="beta_schedule", choices=", ".join(BETA_SCHEDULES), got=shown(kind))
    for flag_name in ("thresholding", "rescale_betas_zero_snr"):
        if field(flag_name, False) is not False:
            raise ConfigError("diffusers.only_false", name=flag_name, got=shown(values[flag_name]))
    clip = field("clip_sample", True)
    if not isinstance(clip, bool):
        raise ConfigError("error.flag", name="clip_sample", got=shown(clip))
    if clip and exact_real(field("clip_sample_range", 1.0), "clip_sample_range", 0.0, 1e6) != 1.0:
        raise ConfigError("diffusers.clip_range", got=shown(values["clip_sample_range"]))
    if name == "DDIMScheduler":
        if field("set_alpha_to_one", True) is not True:
            raise ConfigError("diffusers.alpha_to_one")
        variance_type = "fixed_small"  # DDIMScheduler has no such field; its DDPM (η = 1) noise is β̃_t
    else:
        variance_type = field("variance_type", "fixed_small")
    if variance_type not in VARIANCE_TYPES:
        raise ConfigError("diffusers.variance_type", choices=", ".join(VARIANCE_TYPES), got=shown(variance_type))
    timesteps = exact_int(field("num_train_timesteps", 1000), "num_train_timesteps", 1, MAX_TIMESTEPS)
    beta_start = exact_real(field("beta_start", 1e-4), "beta_start", 0.0, 1.0)
    beta_end = exact_real(field("beta_end", 0.02), "beta_end", 0.0, 1.0)
    if BETA_SCHEDULES[kind] == "linear":
        schedule = ScheduleConfig("linear", timesteps, beta_start, beta_end)
    else:  # diffusers' betas_for_alpha_bar: cos²((t/T + 0.008)/1.008·π/2), β capped at 0.999
        schedule = ScheduleConfig("cosine", timesteps, cosine_s=0.008, max_beta=0.999)
    variance = VARIANCE_TYPES[variance_type]
    sigma = "β̃_t" if variance == "posterior" else "β_t"
    why = f"as its {name} config says (variance_type {variance_type}: σ_t² = {sigma}; clip_sample {str(clip).lower()})"
    return schedule, SamplingDefaults(ddim_eta=0.0, why=why, clip_x0=clip, variance=variance)


def read_diffusers_config(directory: str | Path) -> DiffusionConfig:
    """The app's config for the diffusers DDPM folder ``directory``: the UNet from unet/config.json, the schedule and
    sampling defaults from scheduler/scheduler_config.json; errors name the file and the field."""
    directory = Path(directory)
    index = read_json(directory / MODEL_INDEX)
    pipeline = index.get("_class_name")
    if pipeline not in PIPELINES:
        raise ModelFolderError("diffusers.pipeline", path=directory / MODEL_INDEX, choices=", ".join(PIPELINES),
                               got=shown(pipeline))
    for part, classes in (("unet", ("UNet2DModel",)), ("scheduler", SCHEDULERS)):
        entry = index.get(part)
        if not (isinstance(entry, list) and len(entry) == 2 and entry[1] in classes):
            raise ModelFolderError("diffusers.part", path=directory / MODEL_INDEX, part=part,
                                   choices=", ".join(classes), got=shown(entry))
    unet_values = read_json(directory / UNET_CONFIG)
    try:
        if unet_values.get("_class_name") != "UNet2DModel":
            raise ConfigError("error.choice", name="_class_name", choices="UNet2DModel",
                              got=shown(unet_values.get("_class_name")))
        model = DiffusersUNetConfig.from_unet(unet_values)
    except ConfigError as e:
        raise ModelFolderError("folder.in_file", path=directory / UNET_CONFIG, detail=e) from None
    scheduler_values = read_json(directory / SCHEDULER_CONFIG)
    try:
        schedule, sampling = schedule_from_scheduler(scheduler_values)
    except ConfigError as e:
        raise ModelFolderError("folder.in_file", path=directory / SCHEDULER_CONFIG, detail=e) from None
    training = {"format": f"diffusers {pipeline}", "scheduler": scheduler_values["_class_name"]}
    version = unet_values.get("_diffusers_version")
    if isinstance(version, str):
        training["saved with diffusers"] = version[:20]
    return DiffusionConfig(model=model, schedule=schedule, training=training, sampling=sampling)


def weight_files(unet_dir: Path) -> list[str]:
    """The UNet's safetensors files in ``unet_dir``, or a ModelFolderError naming what is there instead."""
    found = sorted(p.name for p in unet_dir.iterdir() if UNET_WEIGHTS.fullmatch(p.name)) if unet_dir.is_dir() else []
    if found:
        return found
    pickles = sorted(p.name for p in unet_dir.glob("*.bin")) if unet_dir.is_dir() else []
    if pickles:
        raise ModelFolderError("diffusers.pickle", path=unet_dir / pickles[0])
    raise ModelFolderError("diffusers.no_weights", path=unet_dir / "diffusion_pytorch_model.safetensors")


def load_diffusers(directory: str | Path, device: torch.device | str = "cpu") -> LoadedModel:
    """diffusers' ``UNet2DModel`` and the app's schedule for the DDPM folder ``directory``. The weights' names and shapes
    are compared with the network's by their headers first (a parameter count over the app's limit is refused before
    any tensor is made), then loaded strictly: no weight may be missing or left over."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelFolderError("folder.no_such", path=directory)
    config = read_diffusers_config(directory)
    unet_dir = directory / "unet"
    files = weight_files(unet_dir)
    with torch.device("meta"):
        skeleton = DiffusersUNet(config.model)
    if skeleton.num_parameters() > MAX_PARAMETERS:
        raise ModelFolderError("diffusers.too_many_parameters", path=directory / UNET_CONFIG,
                               parameters=skeleton.num_parameters(), most=MAX_PARAMETERS)
    shapes: dict[str, tuple[int, ...]] = {}
    for name in files:
        try:
            with safe_open(unet_dir / name, "pt") as weights:
                shapes |= {k: tuple(weights.get_slice(k).get_shape()) for k in weights.keys()}
        except (SafetensorError, OSError) as e:
            raise ModelFolderError("diffusers.bad_safetensors", path=unet_dir / name, why=e) from None
    # weights saved before diffusers renamed its attention layers (query → to_q, …) load as diffusers loads them
    skeleton.unet._fix_state_dict_keys_on_load(shapes)
    expected = {k: tuple(v.shape) for k, v in skeleton.unet.state_dict().items()}
    check_shapes(expected, shapes, unet_dir / files[0], UNET_CONFIG)
    model = DiffusersUNet(config.model)
    state: dict[str, torch.Tensor] = {}
    for name in files:
        try:
            state |= load_file(unet_dir / name)
        except (SafetensorError, OSError) as e:
            raise ModelFolderError("diffusers.unreadable", path=unet_dir / name, why=e) from None
    model.unet._fix_state_dict_keys_on_load(state)
    model.unet.load_state_dict(state, strict=True)
    model.to(device).eval()
    return LoadedModel(model, Schedule(config.schedule), config, str(directory))
