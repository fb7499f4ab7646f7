"""The training loop: ε_θ trained with the simple loss  L = E_{x₀, t, ε} ‖ε − ε_θ(√ᾱ_t·x₀ + √(1−ᾱ_t)·ε, t)‖²
(DDPM eq. 14).

Built for throughput on one or several GPUs: the whole dataset sits on the device as uint8, batches are
drawn by indexing, the network runs in bf16 autocast under ``torch.compile`` (on one GPU, compiled in another process
while the first steps run uncompiled), AdamW is fused, and the EMA update is a single foreach op. Training runs in
resumable chunks: a checkpoint holds the model, the EMA, the optimizer, the step and every RNG state, written
atomically, so ``resume`` continues where an uninterrupted run would be. The loop is a generator of :class:`Progress`
records; entry points print them.

The rest of a run lives beside it: its settings and recipes (:mod:`~ddpm_app.training.config`), the network on its
device (:mod:`~ddpm_app.training.network`), its compile in the background (:mod:`~.background_compile`), the
timesteps and loss weights of a batch (:mod:`~ddpm_app.training.objective`), the checkpoint
(:mod:`~ddpm_app.training.checkpoint`), the EMA (:mod:`~ddpm_app.training.ema`), several GPUs
(:mod:`~ddpm_app.training.distributed`) and the model folder a run ends with (:mod:`~ddpm_app.training.export`).
"""

from __future__ import annotations

import json
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ddpm_app.diffusion import samplers
from ddpm_app.diffusion.loss import diffusion_loss
from ddpm_app.diffusion.schedule import Schedule, ScheduleConfig
from ddpm_app.image import from_uint8, save_grid
from ddpm_app.io.data import DatasetError, ImagePack, load_pack, random_flip, resolve_split
from ddpm_app.io.loading import load_pretrained
from ddpm_app.io.model_folder import DiffusionConfig, LoadedModel, ModelFolderError
from ddpm_app.metrics.eps_mse import HeldOutMSE, held_out_mse, held_out_set
from ddpm_app.models import ModelConfig
from ddpm_app.runtime.inference import prepare, resolve_device
from ddpm_app.training.background_compile import LOG_NAME, BackgroundCompile, CompileReady
from ddpm_app.training.checkpoint import (
    CHECKPOINT_NAME,
    METRICS_NAME,
    check_writable,
    read_resume_checkpoint,
    remove_stale_temp_files,
    save_atomic,
    trim_metrics,
)
from ddpm_app.training.config import TrainConfig, lr_at, out_of_time, with_recipe
from ddpm_app.training.distributed import (
    data_parallel,
    hardware_name,
    per_rank_batch,
    setup_device,
    setup_distributed,
    shard_images,
)
from ddpm_app.training.ema import EMA
from ddpm_app.training.errors import TrainingError
from ddpm_app.training.export import Exported, complete_export, export_checkpoint, plot_loss, sample_grids
from ddpm_app.training.network import build_network, compiled, convs_channels_last_inside
from ddpm_app.training.objective import loss_weights, sample_timesteps

STOP_SYNC_STEPS = 10  # with several processes, a stop request (signal, time limit) is agreed on every N steps


class StartUp(NamedTuple):
    """The phases before training runs at speed, in seconds: reading the images onto the device (the GPU's own start
    included), building the model and its optimizer, timing a step (CPU only, else 0) and the first step (on CUDA this
    compiles the loss)."""

    data_s: float
    model_s: float
    timing_s: float
    first_step_s: float


@dataclass(frozen=True)
class Progress:
    """What the loop reports every ``log_every`` steps, and at its end."""

    step: int
    total_steps: int
    loss: float  # mean training loss since the previous report
    lr: float
    images_per_s: float  # nan for a window of start-up steps only
    elapsed_s: float  # wall time of this process's training so far
    event: str = "log"  # started | log | compiled | sample | checkpoint | eval | done | stopped
    path: str | None = None  # the file an event wrote (sample grid, checkpoint)
    held_out: HeldOutMSE | None = None  # the held-out ε-MSE (event "eval")
    startup: StartUp | None = None  # event "started": the start-up's phases
    step_s: float | None = None  # event "expected": the seconds one step should take here, timed before the first;
    # event "compiled": the seconds of the steps that loaded the graphs compiled in the background (and recorded them)
    compile: CompileReady | None = None  # event "compiled": the background compile has ended (ok or not)


def starting_point(cfg: TrainConfig, model_config: ModelConfig | None, schedule_config: ScheduleConfig | None,
                   checkpoint: dict | None) -> tuple[DiffusionConfig, LoadedModel | None]:
    """The run's model and schedule: a resumed checkpoint's, else ``--init-from``'s model folder's (returned too,
    for its weights; its sampling defaults carry over), else the ones given."""
    if checkpoint is not None:
        return DiffusionConfig.from_dict(checkpoint["diffusion_config"]), None
    if cfg.init_from:
        try:
            start = load_pretrained(cfg.init_from)
        except ModelFolderError as e:
            raise TrainingError(f"--init-from: {e}") from None
        return DiffusionConfig(start.config.model, start.config.schedule, sampling=start.config.sampling), start
    return DiffusionConfig(model_config, schedule_config), None


def load_held_out_split(cfg: TrainConfig, image_size: int) -> ImagePack:
    """The held-out split of ``--eval-every``: up to ``eval_images`` images of the data's ``eval_split`` folder."""
    try:
        return load_pack(cfg.data, image_size, cfg.eval_split, limit=cfg.eval_images)
    except DatasetError:
        raise TrainingError(f"--eval-every: {cfg.data} has no readable held-out images in a folder named "
                            f"{cfg.eval_split!r}; name one with --eval-split, or leave --eval-every at 0") from None


class Trainer:
    """One training run: data on the device, model + EMA + optimizer, checkpoints under ``cfg.out``."""

    def __init__(self, cfg: TrainConfig, model_config: ModelConfig | None, schedule_config: ScheduleConfig | None,
                 pack: ImagePack | None = None, resume: bool = False, checkpoint: dict | None = None,
                 held_out_split: ImagePack | None = None):
        """Build the run's parts: ``resume`` continues from ``cfg.out``'s checkpoint (``checkpoint``, if the caller
        has read it already), whose model and schedule replace the configs given; so does ``cfg.init_from``'s.
        ``held_out_split`` holds the images of the held-out ε-MSE (default: ``cfg.eval_split`` of the data)."""
        self.created = time.perf_counter()
        self.out = Path(cfg.out)
        self.dist = setup_distributed(resolve_device().type if cfg.device == "auto" else cfg.device)
        self.device = setup_device(cfg.device, self.dist)
        self.is_cuda = self.device.type == "cuda"
        self._agreed_check(lambda: check_writable(self.out), "cannot write the run folder")

        if resume and checkpoint is None:
            checkpoint = read_resume_checkpoint(self.out)
        self.diffusion_config, start = starting_point(cfg, model_config, schedule_config, checkpoint)
        self.cfg = cfg = with_recipe(cfg, self.diffusion_config.arch, self.dist.world_size, self.device.type,
                                     getattr(self.diffusion_config.model, "block_norm", "input"))
        self.per_rank_batch = per_rank_batch(cfg.batch_size, self.dist.world_size)
        self.global_batch = self.per_rank_batch * self.dist.world_size
        model_config = self.diffusion_config.model
        self.schedule = Schedule(self.diffusion_config.schedule).to(self.device)
        self.pack = pack if pack is not None else load_pack(cfg.data, model_config.image_size, cfg.split, limit=cfg.max_images or None)
        self.images = shard_images(self.pack, model_config, self.dist, self.device)
        self.data_ready = time.perf_counter()

        self.held_out_set = None  # fixed (x₀, t, ε) for the held-out ε-MSE, on rank 0 only
        if cfg.eval_every and self.dist.is_main:
            split = held_out_split if held_out_split is not None else load_held_out_split(cfg, model_config.image_size)
            images = split.images[:cfg.eval_images]
            self.held_out_set = held_out_set(images, self.diffusion_config.schedule.timesteps).to(self.device)
        self.model, self.channels_last = build_network(model_config, cfg, self.device)
        self.ema = EMA(self.model, cfg.ema_decay, cfg.ema_warmup)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                           betas=(0.9, 0.999), fused=self.is_cuda)
        self.gen = torch.Generator(self.device).manual_seed(cfg.seed * 1000 + self.dist.rank)
        self.step = 0
        self.images_seen = 0  # summed over steps, so it stays right when a resumed run changes batch size
        self.train_seconds = 0.0
        if start is not None:
            self._start_from(start)
        if checkpoint is not None:
            self._restore(checkpoint)
        self._resumed = checkpoint is not None
        self._agreed_check(self._preflight, "the run folder is not usable")

        self.net = data_parallel(self.model, self.dist, self.device)
        self._forward_loss, self._graphed = self._loss, False  # uncompiled until use_compiled()
        # on one GPU the step is compiled in another process while this one trains (log: compile_log)
        self.compiles_in_background = (cfg.compile and self.is_cuda and cfg.background_compile
                                       and self.dist.world_size == 1)
        self._behind: BackgroundCompile | None = None  # the child process, while it compiles
        if cfg.compile and self.is_cuda and not self.compiles_in_background:
            self.use_compiled()
        # fixed noise for the sample grids, so grids from different steps are comparable
        self.grid_noise = torch.randn((16, model_config.in_channels, model_config.image_size, model_config.image_size),
                                      generator=torch.Generator().manual_seed(1234)).to(self.device)
        self._stop_signal: int | None = None

    @property
    def compile_log(self) -> Path:  # the output of the process compiling in the background
        return self.out / LOG_NAME

    def use_compiled(self) -> None:
        """Run the loss under ``torch.compile`` from the next step on: the whole loss, so that noising x₀ and the
        squared error fuse with the network's kernels. Its first call compiles, or loads the graphs from the cache."""
        self._forward_loss = compiled(self._loss, self.cfg, convs_channels_last_inside(self.model, self.device,
                                                                                       self.channels_last))
        self._graphed = self.is_cuda and self.cfg.compile_mode == "reduce-overhead"

    def _start_from(self, start: LoadedModel) -> None:
        """A model folder's (EMA) weights seed both the model and its EMA; its images and time carry on."""
        self.model.load_state_dict(start.model.state_dict())
        self.ema.model.load_state_dict(start.model.state_dict())
        self.images_seen = int(start.config.training.get("images_seen", 0))
        self.train_seconds = float(start.config.training.get("train_seconds", 0.0))

    def _preflight(self) -> None:
        """Room for the next checkpoint beside the current one (model, EMA, two Adam moments) and the export."""
        param_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
        check_writable(self.out, 5 * param_bytes)
        remove_stale_temp_files(self.out)

    # -- checkpoints -----------------------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "step": self.step,
            "images_seen": self.images_seen,
            "train_seconds": self.train_seconds,
            "model": self.model.state_dict(),
            "ema": self.ema.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.gen.get_state(),
            "cpu_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.is_cuda else torch.empty(0, dtype=torch.uint8),
            "diffusion_config": self.diffusion_config.to_dict(),
            "train_config": self.cfg.to_dict(),
            "data": {"path": str(self.cfg.data), "split": resolve_split(self.pack.names, self.cfg.split),
                     "images": len(self.pack)},
        }

    def _restore(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.ema.model.load_state_dict(ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        rank_generators = ckpt.get("rank_generators")
        if rank_generators is not None and len(rank_generators) == self.dist.world_size:
            self.gen.set_state(rank_generators[self.dist.rank])
        elif self.dist.is_main:
            self.gen.set_state(ckpt["generator"])
        else:  # resumed with more processes than saved the checkpoint: a fresh stream of this rank's own
            self.gen.manual_seed((self.cfg.seed * 1000 + self.dist.rank) * 1_000_003 + int(ckpt["step"]))
        torch.set_rng_state(ckpt["cpu_rng"])
        if self.is_cuda and ckpt["cuda_rng"].numel():
            torch.cuda.set_rng_state(ckpt["cuda_rng"], self.device)
        self.step = int(ckpt["step"])
        self.images_seen = int(ckpt.get("images_seen", self.step * self.cfg.batch_size))
        self.train_seconds = float(ckpt.get("train_seconds", 0.0))

    def save_checkpoint(self) -> Path:
        """Write ``checkpoint.pt`` (rank 0); every rank must call it. Refuses to overwrite with non-finite weights."""
        path = self.out / CHECKPOINT_NAME
        finite = torch.stack([torch.isfinite(p).all() for p in self.model.parameters()]).all()
        if not bool(finite):  # the same on every rank: DDP keeps the weights identical
            raise TrainingError(f"the weights became non-finite (NaN/inf) by step {self.step}; "
                                f"{path} was not overwritten. Try a lower --lr or --grad-clip.")
        state = self.state()
        if self.dist.world_size > 1:  # each rank's own random stream, so a resumed run keeps them independent
            generators: list = [None] * self.dist.world_size
            dist.all_gather_object(generators, self.gen.get_state())
            state["rank_generators"] = generators
        self._agreed_check(lambda: save_atomic(state, path), "could not write the checkpoint")
        return path

    def _agree(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any rank (a collective: every rank must call it)."""
        if self.dist.world_size == 1:
            return flag
        t = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def _agreed_check(self, check, what: str) -> None:
        """Run ``check`` on rank 0; if it raises a TrainingError, every rank raises one (no rank is left waiting)."""
        error = None
        if self.dist.is_main:
            try:
                check()
            except TrainingError as e:
                error = e
        if self._agree(error is not None):
            raise error or TrainingError(f"rank 0: {what}; see its error")

    # -- the loop --------------------------------------------------------------------------------------------
    def _batch(self) -> tuple[Tensor, Tensor, Tensor]:
        idx = torch.randint(0, self.images.shape[0], (self.per_rank_batch,), device=self.device, generator=self.gen)
        x0 = from_uint8(random_flip(self.images[idx], self.gen))  # (B, C, H, W) in [−1, 1]
        x0 = x0.contiguous(memory_format=torch.channels_last) if self.channels_last else x0
        t = sample_timesteps(x0.shape[0], self.schedule.timesteps, self.cfg.small_t_fraction, device=self.device,
                             generator=self.gen)
        noise = torch.randn(x0.shape, device=self.device, generator=self.gen)
        return x0, t, noise

    def _loss(self, x0: Tensor, t: Tensor, noise: Tensor, weights: Tensor | None) -> Tensor:
        return diffusion_loss(self.net, self.schedule, x0, t, noise, weights)

    def train_step(self) -> Tensor:
        """One optimizer step; returns the loss as a device tensor (no host sync)."""
        cfg = self.cfg
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(cfg, self.step)
        x0, t, noise = self._batch()
        if self._graphed:  # a new iteration: CUDA-graph outputs of the previous one may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.bf16 and self.is_cuda):
            loss = self._forward_loss(x0, t, noise, loss_weights(self.schedule, t, cfg))
        loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip, foreach=True)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.step)
        self.step += 1
        self.images_seen += self.global_batch
        return loss.detach().clone() if self._graphed else loss.detach()

    def sample_grid(self) -> Path:
        """16 EMA samples from fixed noise with DDIM (cheap; η from the recipe, its noise from a fixed seed too),
        saved as samples/step_XXXXXXX.png."""
        settings = samplers.SamplerSettings("ddim", self.cfg.sample_steps, eta=self.cfg.sample_eta, clip_x0=True)
        net = prepare(self.ema.model, self.device, compile=False, precision="fp32", channels_last=self.channels_last)
        generator = torch.Generator(self.device).manual_seed(self.cfg.seed)
        x = samplers.final(settings.run(net, self.schedule, tuple(self.grid_noise.shape), x_start=self.grid_noise,
                                        generator=generator, device=self.device))
        return save_grid(x, self.out / "samples" / f"step_{self.step:07d}.png", nrow=4)

    def time_step(self, images: int = 4) -> float:
        """The seconds one training step of ``per_rank_batch`` images should take on this CPU: the forward and
        backward pass of ``images`` of them, timed on its second run (the first sets up the kernels), scaled to the
        batch (CPU work grows with the batch). The weights, the optimizer and every random state stay as they were."""
        images = min(images, self.per_rank_batch)
        x0 = torch.zeros((images, *self.images.shape[1:]), device=self.device)
        x0 = x0.contiguous(memory_format=torch.channels_last) if self.channels_last else x0
        t = torch.linspace(0, self.schedule.timesteps - 1, images, device=self.device).long()
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0)).to(x0)
        with torch.random.fork_rng(devices=[]):  # dropout draws from the global generator
            for _ in range(2):
                start = time.perf_counter()
                diffusion_loss(self.model, self.schedule, x0, t, noise).backward()  # no DDP: no other rank waits
                seconds = time.perf_counter() - start
        self.optimizer.zero_grad(set_to_none=True)
        return seconds * self.per_rank_batch / images

    def evaluate_held_out(self) -> HeldOutMSE:
        """The held-out ε-MSE of the EMA and the raw weights (fp32, uncompiled)."""
        return HeldOutMSE(held_out_mse(self.ema.model, self.schedule, self.held_out_set),
                          held_out_mse(self.model, self.schedule, self.held_out_set))

    def _on_signal(self, signum, frame) -> None:  # noqa: ARG002
        self._stop_signal = signum

    def run(self) -> Iterator[Progress]:
        """Train until ``cfg.steps`` (or ``max_minutes``, or SIGINT/SIGTERM), yielding progress."""
        old_handlers = {}
        if _in_main_thread():  # every rank: torchrun passes a Ctrl-C or SIGTERM on to all of them
            for sig in (signal.SIGINT, signal.SIGTERM):
                old_handlers[sig] = signal.signal(sig, self._on_signal)
        metrics = None
        if self.dist.is_main:
            if self._resumed:
                trim_metrics(self.out / METRICS_NAME, self.step)
            metrics = (self.out / METRICS_NAME).open("a")
        try:
            yield from self._loop(metrics)
        finally:
            if self._behind:
                self._behind.stop()
                self._behind = None
            if metrics:
                metrics.close()
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)

    def _loop(self, metrics) -> Iterator[Progress]:
        cfg = self.cfg
        self.model.train()
        setup_end = time.perf_counter()
        seconds_before = self.train_seconds
        window_loss = torch.zeros((), device=self.device)
        window_steps, window_start = 0, time.perf_counter()
        last_good = self.step if self._resumed else None  # step of the newest checkpoint this run can vouch for

        def progress(event: str, loss: float, ips: float, path: Path | None = None) -> Progress:
            return Progress(self.step, cfg.steps, loss, lr_at(cfg, max(0, self.step - 1)), ips,
                            self.train_seconds, event, str(path) if path else None)

        step_s = None  # what the next step should take: on the CPU timed before the first, then the last one's
        if not self.is_cuda and self.step < cfg.steps:
            step_s = self.time_step()
            yield Progress(self.step, cfg.steps, float("nan"), lr_at(cfg, self.step), 0.0, self.train_seconds,
                           "expected", step_s=step_s)
            if self._agree(out_of_time(cfg, time.perf_counter() - self.created, step_s)):
                raise TrainingError(
                    f"--max-minutes {cfg.max_minutes:g} leaves no time for one step: start-up took "
                    f"{time.perf_counter() - self.created:.0f} s and a step of {self.per_rank_batch} images should take "
                    f"about {step_s:.1f} s here. Allow more minutes, or take a smaller --batch-size.")
        start = time.perf_counter()
        first_step, untimed_steps, settling = True, 0, 0
        while self.step < cfg.steps:
            ready = self._behind.ready() if self._behind is not None else None
            if ready is not None:
                self._behind = None
                if ready.ok:  # the first compiled step loads the graphs; with CUDA graphs the second records them
                    self.use_compiled()
                    switched, settling, switch_start = ready, 2 if self._graphed else 1, time.perf_counter()
                else:  # training goes on uncompiled
                    yield Progress(self.step, cfg.steps, float("nan"), lr_at(cfg, self.step), 0.0, self.train_seconds,
                                   "compiled", compile=ready)
            step_start = time.perf_counter()
            window_loss += self.train_step()
            window_steps += 1
            if settling:  # start-up, not throughput
                settling -= 1
                if self.is_cuda:
                    torch.cuda.synchronize(self.device)
                untimed_steps, window_start = window_steps, time.perf_counter()
                if not settling:
                    yield Progress(self.step, cfg.steps, float("nan"), lr_at(cfg, self.step - 1), 0.0,
                                   self.train_seconds, "compiled", compile=switched, step_s=window_start - switch_start)
            if first_step:  # data loading and compilation are start-up, not training throughput
                first_step = False
                if self.is_cuda:
                    torch.cuda.synchronize(self.device)
                now = time.perf_counter()
                timing = start - setup_end if not self.is_cuda else 0.0  # a step is timed on the CPU only
                startup = StartUp(self.data_ready - self.created, setup_end - self.data_ready, timing, now - start)
                if self.compiles_in_background and self.step < cfg.steps:  # the first step had the machine alone
                    self._behind = BackgroundCompile(cfg.to_dict(), self.diffusion_config.to_dict(), str(self.device),
                                                     self.compile_log)
                yield Progress(self.step, cfg.steps, float("nan"), lr_at(cfg, self.step - 1), 0.0,
                               self.train_seconds, "started", startup=startup)
                untimed_steps, window_start = window_steps, time.perf_counter()
            if not self.is_cuda:  # a CUDA step is queued, not done, when train_step returns
                step_s = time.perf_counter() - step_start
            self.train_seconds = seconds_before + time.perf_counter() - start
            stop = self._stop_signal is not None or out_of_time(cfg, time.perf_counter() - self.created, step_s)
            if self.dist.world_size > 1:  # all ranks must leave at the same step, or the others wait forever
                stop = self._agree(stop) if self.step % STOP_SYNC_STEPS == 0 else False
            due_log = self.step % cfg.log_every == 0 or self.step == cfg.steps or stop
            due_save = (cfg.save_every and self.step % cfg.save_every == 0) or self.step == cfg.steps or stop
            due_sample = cfg.sample_every and self.step % cfg.sample_every == 0
            if due_log or due_save or due_sample:
                if self.dist.world_size > 1:  # the mean over ranks, so that all of them see a NaN and stop together
                    dist.all_reduce(window_loss)
                    window_loss /= self.dist.world_size
                loss = (window_loss / window_steps).item()  # the only host sync of the window
                if not math.isfinite(loss):
                    kept = (f"The last good checkpoint (step {last_good}) is kept in {self.out / CHECKPOINT_NAME}."
                            if last_good is not None else "No checkpoint of this run had been written yet.")
                    raise TrainingError(f"loss became {loss} at step {self.step}; stopped. {kept} "
                                        "Try a lower --lr or --grad-clip.")
                timed = window_steps - untimed_steps  # none when the window held only start-up steps: nan
                ips = timed * self.global_batch / (time.perf_counter() - window_start) if timed else float("nan")
                window_loss.zero_()
                window_steps, untimed_steps, window_start = 0, 0, time.perf_counter()
                if metrics:
                    metrics.write(json.dumps({"step": self.step, "loss": loss, "lr": lr_at(cfg, self.step - 1),
                                              "images_per_s": ips if timed else None,  # JSON has no nan
                                              "elapsed_s": self.train_seconds}) + "\n")
                    metrics.flush()
                yield progress("log", loss, ips)
                if due_sample and self.dist.is_main:
                    yield progress("sample", loss, ips, self.sample_grid())
                if due_save:
                    path = self.save_checkpoint()
                    last_good = self.step
                    yield progress("checkpoint", loss, ips, path)
                window_start = time.perf_counter()  # sampling and saving are not training time
            if self.held_out_set is not None and self.step % cfg.eval_every == 0:
                eval_start = time.perf_counter()
                mse = self.evaluate_held_out()
                if metrics:
                    metrics.write(json.dumps({"step": self.step, "images_seen": self.images_seen,
                                              "held_out_mse_ema": mse.ema, "held_out_mse": mse.raw,
                                              "elapsed_s": self.train_seconds}) + "\n")
                    metrics.flush()
                yield Progress(self.step, cfg.steps, float("nan"), lr_at(cfg, self.step - 1), 0.0,
                               self.train_seconds, "eval", held_out=mse)
                window_start += time.perf_counter() - eval_start  # evaluating is not training time
            if stop:
                yield progress("stopped", float("nan"), 0.0)
                return
        yield progress("done", float("nan"), 0.0)

    # -- export ----------------------------------------------------------------------------------------------
    def export(self, directory: str | Path | None = None, *, title: str | None = None,
               hardware: str | None = None) -> Exported:
        """Export the EMA weights as a model folder (default: ``OUT/export``) with its model card, the last sample
        grid (drawn now if this step has none) and the held-out figures; the loss curve goes beside the run
        (``OUT/loss.png``). ``title`` names the card (default: from the data); ``hardware`` the machine."""
        folder = Path(directory or self.out / "export")
        hardware = hardware or hardware_name(self.device)
        export_checkpoint(self.state(), folder, self.cfg.export_dtype, {"hardware": hardware})
        grids = sample_grids(self.out)
        if self.cfg.sample_every == 0 or not grids or not grids[-1].name.endswith(f"{self.step:07d}.png"):
            grids.append(self.sample_grid())
        plot_loss(self.out / METRICS_NAME, self.out / "loss.png")
        return complete_export(folder, grids[-1], title or f"DDPM {Path(self.cfg.data).stem}", data=self.cfg.data,
                               device=str(self.device), heldout_images=self.cfg.heldout_images)


def _in_main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()
