"""Export: a checkpoint's EMA weights written as a model folder the app loads (config.json + safetensors), finished
with its model card, the run's last sample grid (samples.png) and, when the data has a test/ split, the held-out
figures (heldout.json). A run exports into ``OUT/export`` when it ends; ``train.py export`` exports a checkpoint file
again later."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import NamedTuple

import torch

from ddpm_app.io import model_card
from ddpm_app.io.model_folder import DiffusionConfig, read_config, save_pretrained
from ddpm_app.metrics import heldout
from ddpm_app.models import build_model
from ddpm_app.runtime.inference import resolve_device
from ddpm_app.training.checkpoint import load_checkpoint, read_metrics


class Exported(NamedTuple):
    """A finished export: the model folder, and what became of its held-out figures (None: no data to measure on)."""

    folder: Path
    figures: str | None


def export_checkpoint(ckpt: dict, directory: str | Path, dtype: str = "fp32", extra: dict | None = None) -> Path:
    """Write a checkpoint's EMA weights in the model-folder format (config.json + safetensors)."""
    config = DiffusionConfig.from_dict(ckpt["diffusion_config"])
    training = {
        "steps": int(ckpt["step"]),
        "train_seconds": round(float(ckpt.get("train_seconds", 0.0)), 1),
        "images_seen": int(ckpt.get("images_seen", int(ckpt["step"]) * int(ckpt["train_config"]["batch_size"]))),
        "data": ckpt.get("data", {}),
        "train_config": ckpt["train_config"],
        "weights": "ema",
        **(extra or {}),
    }
    config = DiffusionConfig(config.model, config.schedule, training, config.sampling)
    model = build_model(config.model)
    model.load_state_dict(ckpt["ema"])
    return save_pretrained(model, config, directory, dtype=torch.float16 if dtype == "fp16" else None)


def complete_export(folder: Path, samples: Path | None, title: str, data: str | None = None,
                    device: str = "cpu", heldout_images: int | None = None) -> Exported:
    """Finish an exported model folder: the sample grid as samples.png, the model card (README.md) and, when the
    data pack has a test/ split, the held-out figures: the loss curve and bits/dim (heldout.json)."""
    if samples is not None:
        shutil.copy(samples, folder / "samples.png")
    config = read_config(folder)
    with torch.device("meta"):  # the parameter count without allocating the weights
        num_parameters = build_model(config.model).num_parameters()
    model_card.write(folder, config, num_parameters, title=title,
                     sample_image="samples.png" if samples is not None else None)
    figures = None
    if data and Path(data).exists():
        measured = heldout.measure_folder(folder, data, device=device, limit=heldout_images or heldout.HELDOUT_IMAGES)
        figures = (f"held-out figures: {measured.method}" if measured
                   else f"{data} has no test/ split: no held-out figures stored")
    return Exported(folder, figures)


def sample_grids(run: Path) -> list[Path]:
    """The sample grids a run has drawn (``OUT/samples/step_XXXXXXX.png``), oldest first."""
    return sorted((run / "samples").glob("step_*.png"))


def export_checkpoint_file(path: str | Path, directory: str | Path, dtype: str = "fp32", title: str | None = None,
                           hardware: str | None = None) -> Exported:
    """Export a training checkpoint file, finished with the last sample grid of its run folder and the held-out
    figures of its data, measured on the GPU when there is one (seconds there, minutes on a CPU)."""
    ckpt = load_checkpoint(path)
    extra = {"hardware": hardware} if hardware else None
    folder = export_checkpoint(ckpt, directory, dtype, extra)
    grids = sample_grids(Path(path).parent)
    data = (ckpt.get("data") or {}).get("path") or ckpt["train_config"].get("data")
    return complete_export(folder, grids[-1] if grids else None, title or "DDPM model", data=data,
                           device=str(resolve_device()))


def plot_loss(metrics_path: Path, out_path: Path) -> Path | None:
    """The training loss of ``metrics.jsonl`` against the step, on a log scale, as a PNG; None when none is logged."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in read_metrics(metrics_path) if "loss" in r]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1)
    ax.set(xlabel="step", ylabel="loss (ε MSE)", yscale="log", title="training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path)
    plt.close(fig)
    return out_path
