"""The model card (README.md with Hub metadata) written next to an exported model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ddpm_app.io.model_folder import DiffusionConfig


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    license: str  # Hub license id
    license_note: str  # what the card says about it
    hub_license_name: str | None = None  # for license: other


KNOWN_DATASETS = {
    "utkface": DatasetInfo(
        "UTKFace (aligned & cropped faces, resized to 64×64)", "other",
        "UTKFace is available for **non-commercial research purposes only**; this model inherits that "
        "restriction.", "utkface-non-commercial"),
    "emoji": DatasetInfo(
        "Emoji art from emoji-datasource-google and emoji-datasource-twitter 16.0.0 (64×64, composited on white)",
        "cc-by-4.0",
        "Google's Noto emoji art is Apache-2.0. Twemoji art is © Twitter, Inc. and other contributors, "
        "licensed under CC-BY-4.0 (https://creativecommons.org/licenses/by/4.0/); this model was trained on "
        "it and is shared under the same terms, with this attribution."),
}


def dataset_info(data_path: str) -> DatasetInfo:
    """Card facts for a known data pack (by file name), else a neutral entry naming the path."""
    name = Path(data_path).name.lower()
    for key, info in KNOWN_DATASETS.items():
        if key in name:
            return info
    return DatasetInfo(f"`{Path(data_path).name}`", "other", "Check the license of the training images "
                       "before sharing this model.", "see-dataset")


def _params(n: int) -> str:
    return f"{n / 1e6:.1f} M" if n >= 1e5 else f"{n / 1e3:.1f} k"


def render(config: DiffusionConfig, num_parameters: int, *, title: str = "DDPM model",
           sample_image: str | None = None, extra_sections: str = "") -> str:
    """Markdown with a YAML header the Hub reads (library, license, tags, datasets)."""
    training = config.training
    data = training.get("data", {})
    info = dataset_info(str(data.get("path", "")))
    tc = training.get("train_config", {})
    header = ["---", "library_name: ddpm-app", f"license: {info.license}"]
    if info.hub_license_name:
        header.append(f"license_name: {info.hub_license_name}")
    header += ["pipeline_tag: unconditional-image-generation", "tags:", "- unconditional-image-generation",
               "- ddpm", "- diffusion", "- pytorch", "---", ""]
    minutes = training.get("train_seconds", 0) / 60
    lines = [
        f"# {title}", "",
        f"An unconditional {config.image_size}×{config.image_size} denoising diffusion model (DDPM, ε-prediction), "
        "in the ddpm-app format: `config.json` + safetensors weights. Load it with "
        "`ddpm_app.io.loading.load_pretrained(\"<folder or repo id>\")` or pick it in the app's Model tab.", "",
    ]
    if sample_image:
        lines += [f"![samples]({sample_image})", ""]
    lines += [
        "## Model", "",
        "| | |", "|---|---|",
        f"| architecture | `{config.arch}` U-Net, {_params(num_parameters)} parameters |",
        f"| config | `{_compact(config.model.to_dict())}` |",
        f"| noise schedule | {config.schedule.kind}, T = {config.schedule.timesteps}"
        + (f", β from {config.schedule.beta_start:g} to {config.schedule.beta_end:g}"
           if config.schedule.kind == "linear" else "") + " |",
        f"| weights | EMA (decay {tc.get('ema_decay', '?')}) |", "",
        "## Training", "",
        "| | |", "|---|---|",
        f"| dataset | {info.name}, split `{data.get('split') or 'all'}`, {data.get('images', '?')} images |",
        f"| images seen | {_images_seen(training, tc)} |",
        f"| optimiser | AdamW, lr {tc.get('lr', '?')}, warm-up {tc.get('warmup_steps', '?')} steps, "
        f"{tc.get('lr_decay', 'constant')} schedule, grad clip {tc.get('grad_clip', '?')} |",
        f"| loss | MSE on ε, {tc.get('loss_weighting', 'uniform')} weighting over {_t_draws(tc)} |",
        f"| time | {minutes:.1f} min" + (f" on {training['hardware']}" if training.get("hardware") else "") + " |", "",
        "## License", "", info.license_note, "",
        "## Intended use", "",
        "Teaching and experimenting with diffusion models: watching the forward and reverse processes, "
        "comparing samplers and schedules. Not for identifying people or making decisions about them; "
        "samples can reflect the biases and gaps of the training set.", "",
    ]
    return "\n".join(header + lines) + ("\n" + extra_sections if extra_sections else "")


def _t_draws(tc: dict) -> str:
    """How the run drew its timesteps: uniform, or a share of each batch log-uniform (``--small-t-fraction``)."""
    fraction = tc.get("small_t_fraction") or 0.0
    return "uniform t" if not fraction else f"t, {fraction:.0%} of each batch log-uniform (more small t), the rest uniform"


def _images_seen(training: dict, tc: dict) -> str:
    """How many images, in how many steps; for a run started from another model's weights, what came before."""
    seen, steps = int(training.get("images_seen", 0)), training.get("steps", "?")
    batches = training.get("batch_schedule") or f"batch {tc.get('batch_size', '?')}"
    if not tc.get("init_from") or not isinstance(steps, int) or not isinstance(tc.get("batch_size"), int):
        return f"{seen:,} in {steps} steps ({batches})"
    this_run = steps * tc["batch_size"]
    return (f"{seen:,} in all: {this_run:,} in this run's {steps} steps ({batches}), which started from "
            f"`{tc['init_from']}` ({seen - this_run:,} images seen before)")


def _compact(d: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in d.items())


def write(directory: str | Path, config: DiffusionConfig, num_parameters: int, **kwargs) -> Path:
    path = Path(directory) / "README.md"
    path.write_text(render(config, num_parameters, **kwargs))
    return path
