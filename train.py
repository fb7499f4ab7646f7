"""Train a DDPM U-Net on a folder or zip of images, export it, and optionally publish it to the Hub.

    python train.py --data ../shared/datasets/utkface-64.zip --out runs/faces [options]
    python train.py --out runs/faces --resume            # continue from runs/faces/checkpoint.pt
    python train.py export --ckpt runs/faces/checkpoint.pt --out weights/faces
    python train.py push runs/faces/export USER/REPO
    torchrun --nproc_per_node=2 train.py --data … --out …   # several GPUs (DistributedDataParallel)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from ddpm_app.cli import options as cli

DEFAULT_ARCH = "ddpm"


def use_compile_cache() -> Path:
    """Where torch.compile keeps its caches (compiled graphs and kernels) between runs: ``TORCHINDUCTOR_CACHE_DIR`` if
    set, else ``ddpm_app/torchinductor`` in the user's cache folder (``$XDG_CACHE_HOME`` or ``~/.cache``), which this
    sets. A run whose graphs are in the cache compiles its first step in seconds instead of minutes; PyTorch's own
    default is a folder under /tmp, which many systems empty when they restart."""
    given = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if given:
        return Path(given)
    folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ddpm_app" / "torchinductor"
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    return folder


def build_parser() -> argparse.ArgumentParser:
    from ddpm_app.diffusion.schedule import SCHEDULE_KINDS, ScheduleConfig
    from ddpm_app.models import SeedUNetConfig, UNetConfig
    from ddpm_app.training.config import TrainConfig

    # option helps state their own defaults (from the config dataclasses), so no ArgumentDefaultsHelpFormatter. The
    # options of a run leave no attribute when not given: the configs fill in their defaults, and a resumed run
    # tells the options given now from the settings it was started with
    p = argparse.ArgumentParser(prog="train.py", description="Train a DDPM U-Net (ε-prediction, simple loss).")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt (model, EMA, "
                   "optimizer, step, RNG states) with its settings, except the options given now; model and schedule "
                   "options are then taken from the checkpoint")
    p.add_argument("--push-to-hub", metavar="USER/REPO", default=None,
                   help="after training, upload the export folder to this Hub repo (token: HF_TOKEN or `hf auth login`)")
    p.add_argument("--private", action="store_true", help="create the Hub repo as private")
    p.add_argument("--name", default=None, help="title of the model card (default: from the data pack)")
    p.add_argument("--hardware", default=None, help="hardware to name in the model card (default: detected GPU/CPU)")
    cli.add_dataclass_options(p.add_argument_group("training"), TrainConfig, omit_unset=True)

    g = p.add_argument_group("model", "architecture and its config fields (unset ones keep the architecture's "
                             "defaults; `ddpm` and `seed` each take their own)")
    g.add_argument("--arch", choices=["ddpm", "seed"], default=argparse.SUPPRESS,
                   help=f"U-Net design (default: {DEFAULT_ARCH})")
    seen = set()
    for cls, label in ((UNetConfig, "ddpm"), (SeedUNetConfig, "seed")):
        names = [f for f in cls.__dataclass_fields__ if f not in seen]
        cli.add_dataclass_options(g, cls, skip=tuple(seen), defaults=False, omit_unset=True,
                                  help_prefix=f"[{label}] ")
        seen.update(names)

    s = p.add_argument_group("noise schedule")
    s.add_argument("--schedule", dest="kind", choices=SCHEDULE_KINDS, default=argparse.SUPPRESS,
                   help=f"β_t layout (default: {ScheduleConfig.kind})")
    cli.add_dataclass_options(s, ScheduleConfig, skip=("kind",), omit_unset=True)
    return p


def model_config_from_args(args, recipe_fields: tuple = ()):
    """The model config the options give (:func:`ddpm_app.training.config.model_config`, ``recipe_fields`` filling
    in); an option of the other architecture is an error."""
    from ddpm_app.models import ARCHITECTURES, SeedUNetConfig, UNetConfig
    from ddpm_app.training.config import model_config

    arch = getattr(args, "arch", DEFAULT_ARCH)
    own = ARCHITECTURES[arch][0]
    given = {**cli.pick(args, UNetConfig), **cli.pick(args, SeedUNetConfig)}
    foreign = sorted(set(given) - set(own.__dataclass_fields__))
    if foreign:
        raise SystemExit(f"error: --arch {arch} has no option(s) "
                         + ", ".join("--" + f.replace("_", "-") for f in foreign))
    return model_config(arch, given, recipe_fields)


def architecture_options(args) -> list[str]:
    """The model and noise-schedule options given, which a resumed run takes from its checkpoint instead."""
    from ddpm_app.diffusion.schedule import ScheduleConfig
    from ddpm_app.models import SeedUNetConfig, UNetConfig

    names = {"arch", *UNetConfig.__dataclass_fields__, *SeedUNetConfig.__dataclass_fields__,
             *ScheduleConfig.__dataclass_fields__}
    flags = {"kind": "schedule"}  # --schedule sets ScheduleConfig.kind
    return ["--" + flags.get(name, name).replace("_", "-") for name in sorted(set(vars(args)) & names)]


def train_main(argv, started: float) -> int:
    """A training run; ``started`` (time.perf_counter()) is when the command began: the start-up printed counts from it."""
    args = build_parser().parse_args(argv)
    compile_cache = use_compile_cache()  # before torch is imported
    from tqdm import tqdm

    from ddpm_app.diffusion.schedule import ScheduleConfig
    from ddpm_app.io.data import DatasetError
    from ddpm_app.runtime.inference import resolve_device
    from ddpm_app.training import config
    from ddpm_app.training.checkpoint import resume_config
    from ddpm_app.training.distributed import hardware_name
    from ddpm_app.training.errors import TrainingError
    from ddpm_app.training.trainer import Trainer

    if args.push_to_hub:  # a bad repo id is worth knowing now, not after hours of training
        from ddpm_app.io.hub import HubError, check_repo_id, has_token
        try:
            check_repo_id(args.push_to_hub)
        except HubError as e:
            print(f"error: --push-to-hub: {e}", file=sys.stderr)
            return 2
        if not has_token() and os.environ.get("RANK", "0") == "0":
            print("warning: no Hugging Face token yet; set HF_TOKEN or run `hf auth login` before training ends, "
                  "or the model will only be exported locally", file=sys.stderr)
    given = cli.pick(args, config.TrainConfig)  # the training options given; TrainConfig or the checkpoint has the rest
    try:
        checkpoint = None  # the training state to resume from, read once
        if args.resume:
            cfg, checkpoint = resume_config(given)
            ignored = architecture_options(args)
            if ignored:
                print("warning: --resume takes the model and noise schedule from the checkpoint; ignoring "
                      + ", ".join(ignored), file=sys.stderr)
        else:
            cfg = config.TrainConfig(**given)
        if not cfg.data:
            print("error: --data is required (an image folder or a .zip pack)", file=sys.stderr)
            return 2
        on = "cuda" if "cuda" in cfg.device else resolve_device(cfg.device).type  # a rank's own GPU is not asked for yet
        recipe = config.recipe_for(cfg, getattr(args, "arch", DEFAULT_ARCH), on)
        model_config = None if args.resume else model_config_from_args(args, recipe.model)
        schedule_config = ScheduleConfig(**cli.pick(args, ScheduleConfig))
        imports_s = time.perf_counter() - started  # torch and the library, parsing the options
        trainer = Trainer(cfg, model_config, schedule_config, resume=args.resume, checkpoint=checkpoint)
    except (TrainingError, DatasetError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    main_rank = trainer.dist.is_main
    if main_rank:
        pack = trainer.pack
        if pack.skipped:
            print(f"warning: skipped {len(pack.skipped)} unreadable image file(s) of {len(pack) + len(pack.skipped)} "
                  f"(first: {pack.skipped[0]})", file=sys.stderr)
        n_params = trainer.model.num_parameters()
        print(f"training {trainer.diffusion_config.arch} U-Net ({n_params / 1e6:.2f} M parameters) on {len(pack)} "
              f"images from {cfg.data} on {hardware_name(trainer.device)}"
              + (f", resuming at step {trainer.step}" if args.resume else ""), file=sys.stderr)
        cfg = trainer.cfg  # with the architecture's recipe filled in
        if not trainer.is_cuda:
            print(cpu_note(cfg, trainer.diffusion_config.arch), file=sys.stderr)
        print(f"batch {cfg.batch_size}, lr {cfg.lr:.3g} (warm-up {cfg.warmup_steps} steps, {cfg.lr_decay}), "
              f"EMA {cfg.ema_decay}, "
              + (f"{cfg.small_t_fraction:.0%} of t log-uniform, " if cfg.small_t_fraction else "")
              + (f"torch.compile mode {cfg.compile_mode}" if cfg.compile and trainer.is_cuda else "not compiled"),
              file=sys.stderr)
    bar = tqdm(total=cfg.steps, initial=trainer.step, unit="step", dynamic_ncols=True, disable=not main_rank)
    status = "done"
    loop_start = None
    final_speed = not trainer.compiles_in_background  # whether the steps run as they will to the end
    try:
        for p in trainer.run():
            if p.event == "expected" and main_rank:
                bar.write(expected_note(cfg, p))
            elif p.event == "started" and main_rank:
                loop_start = time.perf_counter() - p.startup.first_step_s  # --max-minutes counts from here
                bar.write(startup_note(p.startup, imports_s, time.perf_counter() - started,
                                       compile_cache if cfg.compile and trainer.is_cuda else None,
                                       trainer.compile_log if trainer.compiles_in_background else None))
            elif p.event == "compiled" and main_rank:
                final_speed = True
                bar.write(compiled_note(p, trainer.compile_log))
            elif p.event == "log":
                # will the time limit cut the run? Judged on the first window timed at full speed
                if loop_start is not None and final_speed and p.images_per_s > 0 and main_rank:
                    warning = config.time_limit_warning(cfg, p.step, p.images_per_s, time.perf_counter() - loop_start)
                    if warning:
                        bar.write(warning, file=sys.stderr)
                    loop_start = None
                bar.update(p.step - bar.n)
                speed = f"{p.images_per_s:,.0f}" if p.images_per_s > 0 else "—"  # nan: start-up steps only
                bar.set_postfix(loss=f"{p.loss:.4f}", lr=f"{p.lr:.1e}", img_s=speed)
            elif p.event in ("sample", "checkpoint") and main_rank:
                bar.write(f"step {p.step}: {p.event} → {p.path}")
            elif p.event == "eval":
                bar.write(f"step {p.step}: held-out ε-MSE {p.held_out.ema:.5f} (EMA weights), "
                          f"{p.held_out.raw:.5f} (raw weights)")
            elif p.event in ("stopped", "done"):
                status = p.event
    except (TrainingError, OSError) as e:  # OSError: e.g. the disk filled up while writing a sample grid
        bar.close()
        print(f"error: {e}", file=sys.stderr)
        return 3
    bar.close()
    if status == "stopped":
        if main_rank:
            print(f"stopped at step {trainer.step} of {cfg.steps}; checkpoint saved. Continue with:\n"
                  f"  python train.py --out {cfg.out} --resume", file=sys.stderr)
        return 0
    if not main_rank:
        return 0
    exported = trainer.export(title=args.name, hardware=args.hardware)
    if exported.figures:
        print(exported.figures, file=sys.stderr)
    print(f"exported to {exported.folder}", file=sys.stderr)
    if args.push_to_hub:
        return push(exported.folder, args.push_to_hub, args.private)
    return 0


def startup_note(startup, imports_s: float, total_s: float, compile_cache: Path | None,
                 compile_log: Path | None = None) -> str:
    """The start-up's phases (:class:`ddpm_app.training.trainer.StartUp`) in one line; ``compile_cache`` where the
    run compiles, ``compile_log`` where another process compiles while the first steps run uncompiled."""
    if compile_log:
        compiling = f" (uncompiled; another process is compiling the step into {compile_cache}, log {compile_log})"
    else:
        compiling = f" (compiling; cache {compile_cache})" if compile_cache else ""
    return (f"start-up: {imports_s:.1f} s to import, {startup.data_s:.1f} s to load the data, {startup.model_s:.1f} s "
            f"to build the model, "
            + (f"{startup.timing_s:.1f} s to time a step, " if startup.timing_s else "")
            + f"{startup.first_step_s:.1f} s for the first step{compiling}"
            + f": the first step ended {total_s:.1f} s after the start; images/s count from the second step")


def compiled_note(p, compile_log: Path) -> str:
    """The background compile has ended: the step it switched at, or why training goes on uncompiled."""
    ready = p.compile
    if ready.ok:
        return (f"step {p.step}: switched to the compiled step ({ready.background_s:.0f} s compiling in the background, "
                f"{p.step_s:.1f} s to load it from the cache and start it)")
    return (f"warning: compiling in the background failed after {ready.background_s:.0f} s ({ready.note}; log "
            f"{compile_log}); training goes on uncompiled. --no-background-compile compiles in this process instead")


def cpu_note(cfg, arch: str) -> str:
    """What training without a GPU does, said before it starts: which settings, and how to get the others."""
    from ddpm_app.training.config import CPU_RECIPES, RECIPES, recipe_for

    recipe = recipe_for(cfg, arch, "cpu")
    if recipe is CPU_RECIPES[arch]:
        return (f"no CUDA GPU: training on the CPU with settings made for it (--recipe cpu): a smaller network and "
                f"batch {recipe.batch_size}, so a step takes about a second on 2 cores. It shows the trainer at work; "
                f"good samples take a GPU's hours. --recipe gpu takes the shipped models' settings "
                f"(batch {RECIPES[arch].batch_size}) here too, at minutes a step.")
    return (f"no CUDA GPU: training on the CPU with the GPU recipe (--recipe {cfg.recipe}); a step of "
            f"{cfg.batch_size} images can take minutes here (--recipe cpu: about a second)")


def expected_note(cfg, p) -> str:
    """The time a step should take, timed before the first one, and what that means for the run."""
    note = f"expected: about {p.step_s:.2g} s a step here (batch {cfg.batch_size}, timed before the first step)"
    left = p.total_steps - p.step
    if cfg.max_minutes > 0 and left * p.step_s > cfg.max_minutes * 60:
        return note + f"; --max-minutes {cfg.max_minutes:g} stops the run near step {p.step + int(cfg.max_minutes * 60 / p.step_s)}"
    return note + f"; {left} steps: about {left * p.step_s / 60:.0f} minutes"


def push(folder: Path, repo_id: str, private: bool = False) -> int:
    from ddpm_app.io.hub import HubError, push_folder
    try:
        url = push_folder(folder, repo_id, private=private)
    except HubError as e:
        print(f"error: {e}", file=sys.stderr)
        return 4
    print(f"published {folder} to {url}", file=sys.stderr)
    return 0


def export_main(argv) -> int:
    p = argparse.ArgumentParser(prog="train.py export", description="Re-export a training checkpoint "
                                "(EMA weights) as a model folder with a model card.")
    p.add_argument("--ckpt", required=True, help="path to a checkpoint.pt written by training")
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--export-dtype", choices=["fp32", "fp16"], default="fp32")
    p.add_argument("--name", default=None, help="model card title")
    p.add_argument("--hardware", default=None, help="hardware to name in the model card")
    args = p.parse_args(argv)
    from ddpm_app.training.errors import TrainingError
    from ddpm_app.training.export import export_checkpoint_file
    try:
        exported = export_checkpoint_file(args.ckpt, args.out, args.export_dtype, args.name, args.hardware)
    except TrainingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if exported.figures:
        print(exported.figures, file=sys.stderr)
    print(f"exported {args.ckpt} to {exported.folder}", file=sys.stderr)
    return 0


def push_main(argv) -> int:
    p = argparse.ArgumentParser(prog="train.py push", description="Upload an exported model folder to the Hub.")
    p.add_argument("folder", help="model folder (config.json + safetensors + README.md)")
    p.add_argument("repo_id", help="USER/REPO on the Hugging Face Hub (created if needed)")
    p.add_argument("--private", action="store_true")
    args = p.parse_args(argv)
    return push(Path(args.folder), args.repo_id, args.private)


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "export":
        return export_main(argv[1:])
    if argv and argv[0] == "push":
        return push_main(argv[1:])
    try:
        return train_main(argv, started)
    finally:
        _leave_process_group()


def _leave_process_group() -> None:
    """Shut the process group down before exit.

    Left to interpreter shutdown, the process group (still held by the trainer's DistributedDataParallel wrapper)
    is destroyed in no fixed order and its threads can abort the process ("terminate called without an active
    exception"). So the trainer is collected first, then the group is destroyed while Python is still running.
    """
    import gc

    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
