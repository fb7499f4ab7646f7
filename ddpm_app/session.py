"""What the app does, without Gradio: models on a device, reverse runs kept as trajectories, the forward view, export.

- :class:`ModelLibrary` lists the model folders in a weights directory (plus models downloaded from the Hub),
  loads them lazily and hands out a :class:`DiffusionSession` per model.
- :class:`DiffusionSession` is one model + its schedule + a device: it starts samplers with a per-request
  ``torch.Generator`` and computes q(x_t|x₀) for a photo, calling :mod:`.schedule` and :mod:`.samplers` for the math.
- :func:`stream` runs a sampler to the end, stores every step in a :class:`Trajectory`, and passes on only the
  steps worth previewing (a time-based throttle), so showing the chain never slows it much.
- :func:`export_gif`, :func:`export_mp4`, :func:`export_png` write a trajectory out.

Nothing here prints or touches global state; user-input problems raise :class:`InputError` with the allowed range.
"""

from __future__ import annotations

import importlib.util
import math
import random
import re
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Sequence, TypeVar

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from .checkpoint import CONFIG_NAME, CheckpointError, LoadedModel, download, is_repo_id, load_local
from .image import from_uint8, grid, load_image, to_numpy, to_uint8
from .inference import prepare
from .samplers import SamplerSettings, Step, whole_number
from .schedule import SCHEDULE_KINDS, Schedule, ScheduleConfig

DEFAULT_MODEL = "faces"
MAX_BATCH = 4
MAX_SEED = 2**32 - 1
# seconds between previews sent to the browser: 5 a second look smooth, and cost under 10 % of the sampling
# time on a 2-core CPU (benchmarks/app_stream.py)
DEFAULT_PREVIEW_INTERVAL = 0.2
# per run: every step of DDPM-1000 for four 64×64 RGB images (98 MB as uint8); a dense subset beyond that
DEFAULT_TRAJECTORY_BYTES = 128 * 2**20
STRIP_LENGTH = 8  # x_t at this many evenly spaced t in the forward view
MODELS_IN_MEMORY = 3
T = TypeVar("T")


class InputError(ValueError):
    """A value a user chose is out of range or missing; the message says what is allowed."""


def random_seed() -> int:
    """A fresh seed from the OS, never from (or into) a global generator."""
    return random.SystemRandom().randrange(2**31)


def resolve_seed(seed: float | int | str | None) -> int:
    """The seed to use: blank or −1 draws a random one; otherwise an integer in 0…2³²−1."""
    if seed is None or (isinstance(seed, str) and not seed.strip()):
        return random_seed()
    try:
        value = float(seed)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"seed must be a whole number in 0…{MAX_SEED}, or −1 / blank for a random one; "
                         f"got {seed!r}") from None
    if value == -1:
        return random_seed()
    if not value.is_integer() or not 0 <= value <= MAX_SEED:
        raise InputError(f"seed must be a whole number in 0…{MAX_SEED}, or −1 / blank for a random one; got {seed}")
    return int(value)


class NoiseLevel(NamedTuple):
    """The forward process at one timestep: x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε."""

    t: int
    alpha_bar: float
    sqrt_alpha_bar: float
    sqrt_one_minus_alpha_bar: float
    snr: float  # ᾱ_t / (1 − ᾱ_t)
    snr_db: float


@dataclass(frozen=True)
class ModelSummary:
    """What the model tab shows about a model."""

    name: str
    source: str
    arch: str
    parameters: int
    image_size: int
    channels: int
    schedule: ScheduleConfig
    dataset: str | None  # from config.json's training metadata
    training: dict
    card: str  # the model card's text without its YAML front matter or image links ("" if there is none)
    samples: Path | None  # samples.png next to the weights, if there is one


# ---------------------------------------------------------------------------------------------------------------
# One model on one device


class DiffusionSession:
    """A loaded model, its schedule and its device: the calls the app's handlers make."""

    def __init__(self, name: str, loaded: LoadedModel, device: torch.device | str, folder: Path | None = None):
        self.name = name
        self.loaded = loaded
        self.folder = Path(folder or loaded.source)  # where config.json and the model card are
        self.schedule = loaded.schedule
        self.device = torch.device(device)
        prepared = prepare(loaded.model, self.device)
        self.eps_model = prepared  # ε_θ(x_t, t), made fast for this device
        self.ddpm_step = prepared.ddpm_step  # DDPM's whole step with this network (one CUDA graph on a GPU)

    @property
    def config(self):
        return self.loaded.config

    @property
    def timesteps(self) -> int:
        return self.schedule.timesteps

    def shape(self, batch: int) -> tuple[int, int, int, int]:
        return (batch, self.config.channels, self.config.image_size, self.config.image_size)  # (B, C, H, W)

    def generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(seed)

    def check_t(self, t: float | None) -> int:
        return whole_number(t, "t", 0, self.timesteps - 1, InputError)

    def check_batch(self, batch: float | None) -> int:
        return whole_number(batch, "number of images", 1, MAX_BATCH, InputError)

    def sample(self, settings: SamplerSettings, batch: int, seed: int) -> Iterator[Step]:
        """The reverse chain from x_T ~ N(0, I), drawn (like all its noise) from a generator seeded with ``seed``."""
        return settings.run(self.eps_model, self.schedule, self.shape(batch), step_fn=self.ddpm_step,
                            generator=self.generator(seed), device=self.device)

    def sdedit(self, x_t: Tensor, t: int, settings: SamplerSettings, seed: int) -> Iterator[Step]:
        """The reverse chain from a given x_t at timestep t back to x₀ (SDEdit: noise a photo, then denoise it)."""
        x_start = x_t.to(self.device)[None] if x_t.dim() == 3 else x_t.to(self.device)
        return settings.run(self.eps_model, self.schedule, tuple(x_start.shape), start_t=t,
                            step_fn=self.ddpm_step, generator=self.generator(seed), x_start=x_start,
                            device=self.device)

    def noise_level(self, t: int) -> NoiseLevel:
        s = self.schedule
        return NoiseLevel(t, float(s.alphas_cumprod[t]), float(s.sqrt_alphas_cumprod[t]),
                          float(s.sqrt_one_minus_alphas_cumprod[t]), float(s.float64["snr"][t]), s.snr_db(t))

    def prepare_photo(self, source) -> Tensor:
        """A user photo → x₀ (C, H, W) in [−1, 1] at the model's size: center-cropped, resized, grey if C = 1."""
        x0 = load_image(source, self.config.image_size)  # (3, H, W)
        if self.config.channels == 1:
            x0 = x0.mean(dim=0, keepdim=True)
        elif self.config.channels != 3:
            raise InputError(f"this model takes {self.config.channels}-channel images; photos need 1 or 3")
        return x0

    def draw_noise(self, seed: int) -> Tensor:
        """ε ~ N(0, I) of one image's shape (C, H, W), on the CPU so a seed gives the same ε on any device."""
        return torch.randn(self.shape(1)[1:], generator=torch.Generator().manual_seed(seed))

    def q_sample(self, x0: Tensor, t: int | list[int], eps: Tensor) -> Tensor:
        """x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε for one image (C, H, W) at one or several t → (len(t), C, H, W)."""
        ts = torch.tensor([t] if isinstance(t, int) else t, dtype=torch.long)
        n = len(ts)
        return self.schedule.q_sample(x0.expand(n, *x0.shape), ts, eps.expand(n, *eps.shape))

    def strip_timesteps(self, n: int = STRIP_LENGTH) -> list[int]:
        """``n`` evenly spaced timesteps from 0 to T−1."""
        return sorted({round(i * (self.timesteps - 1) / max(n - 1, 1)) for i in range(n)})

    def summary(self) -> ModelSummary:
        card = ""
        readme = self.folder / "README.md"
        if readme.is_file():
            card = _strip_front_matter(readme.read_text(errors="replace"))
            card = re.sub(r"!\[[^\]]*\]\([^)]*\)\s*", "", card)  # pictures are shown separately
        training = dict(self.config.training)
        data = training.get("data")
        dataset = training.get("dataset") or (data.get("path") if isinstance(data, dict) else data)
        samples = self.folder / "samples.png"
        return ModelSummary(self.name, self.loaded.source, self.config.arch, self.loaded.num_parameters,
                            self.config.image_size, self.config.channels, self.config.schedule,
                            None if dataset is None else str(dataset), training, card,
                            samples if samples.is_file() else None)


def _strip_front_matter(text: str) -> str:
    if text.startswith("---"):
        end = text.find("\n---", 3)
        if end != -1:
            text = text[end + 4:]
    return text.strip()


@lru_cache(maxsize=8)
def schedule_curves(timesteps: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(ᾱ_t, SNR in dB) over t = 0…T−1 for each schedule kind with its default settings."""
    curves = {}
    for kind in SCHEDULE_KINDS:
        s = Schedule(ScheduleConfig(kind=kind, timesteps=timesteps))
        curves[kind] = (s.float64["alphas_cumprod"].numpy(), 10.0 * np.log10(s.float64["snr"].numpy()))
    return curves


@dataclass
class ForwardState:
    """One user's forward-process view: the photo as x₀, the noise ε and x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε."""

    photo: str | None = None  # the file x0 was made from
    model: str | None = None  # the model x0 was sized for
    x0: Tensor | None = None  # (C, H, W) in [−1, 1]
    eps: Tensor | None = None  # (C, H, W)
    eps_seed: int | None = None
    t: int = 0
    x_t: Tensor | None = None  # (C, H, W)

    def update(self, session: DiffusionSession, photo: str | None, t: int, fix_noise: bool,
               noise_seed: float | None = -1) -> None:
        """Noise ``photo`` to timestep ``t``. With ``fix_noise`` the previous ε is kept (unless a different
        ``noise_seed`` is asked for); otherwise ε is drawn anew from ``noise_seed`` (−1 = a random seed)."""
        if photo is None:
            self.photo = self.model = self.x0 = self.x_t = None
            return
        if photo != self.photo or session.name != self.model:
            self.x0 = session.prepare_photo(photo)  # raises ImageError for a bad file
            self.photo, self.model = photo, session.name
        wanted = None if noise_seed is None or noise_seed == -1 else resolve_seed(noise_seed)
        keep = (fix_noise and self.eps is not None and self.eps.shape == self.x0.shape
                and wanted in (None, self.eps_seed))
        if not keep:
            self.eps_seed = wanted if wanted is not None else random_seed()
            self.eps = session.draw_noise(self.eps_seed)
        self.t = t
        self.x_t = session.q_sample(self.x0, t, self.eps)[0]


@dataclass
class UserState:
    """What one browser tab (or API client) keeps between requests: its model, its latest run, its photo."""

    model: str | None = None  # None = the library's default
    run: Trajectory | None = None
    forward: ForwardState = field(default_factory=ForwardState)


def psnr(a: Tensor, b: Tensor) -> float:
    """Peak signal-to-noise ratio in dB between two images (float in [−1, 1] or uint8), peak-to-peak range 2."""
    a, b = (from_uint8(x) if x.dtype == torch.uint8 else x.float() for x in (a, b))
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else 10.0 * math.log10(4.0 / mse)


# ---------------------------------------------------------------------------------------------------------------
# The models the app serves


class DeviceWorker:
    """One thread that does all of the app's tensor work, one job at a time: ``run(fn, …)`` calls ``fn`` there.

    PyTorch's CPU kernels start an OpenMP thread team in each thread that calls them. A web server hands requests
    to any of its pool threads, so each would get a team; with more team threads than cores OpenMP sleeps
    between kernels instead of spinning, and sampling from a pool thread measured ~50 % slower than from a
    script's main thread on a 2-core machine. Calling every kernel from this one thread keeps one team.
    """

    def __init__(self, name: str = "ddpm-device"):
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name,
                                            initializer=self._remember_thread)
        self._thread_id: int | None = None

    def _remember_thread(self) -> None:
        self._thread_id = threading.get_ident()

    def run(self, fn: Callable[..., T], *args, **kwargs) -> T:
        if threading.get_ident() == self._thread_id:  # already on the worker (a job calling another)
            return fn(*args, **kwargs)
        return self._executor.submit(fn, *args, **kwargs).result()


def find_models(weights_dir: str | Path) -> dict[str, Path]:
    """Every model folder (one holding config.json) directly inside ``weights_dir``, by folder name."""
    weights_dir = Path(weights_dir)
    if not weights_dir.is_dir():
        return {}
    return {p.name: p for p in sorted(weights_dir.iterdir()) if (p / CONFIG_NAME).is_file()}


class ModelLibrary:
    """The shipped models in a weights folder plus any downloaded from the Hub, loaded on first use.

    A few stay in memory (least recently used go first); all are loaded onto ``device``. Safe to use from the
    server's worker threads.
    """

    def __init__(self, weights_dir: str | Path, device: torch.device | str = "cpu", default: str | None = None,
                 models_in_memory: int = MODELS_IN_MEMORY, hub_cache_dir: str | Path | None = None):
        self.weights_dir = Path(weights_dir)
        self.device = torch.device(device)
        self.folders: dict[str, Path] = find_models(self.weights_dir)
        if not self.folders:
            raise CheckpointError(f"no models in {self.weights_dir}/: each model is a folder with config.json "
                                  "and model.safetensors (train one, or pass --weights DIR)")
        if default is not None and default not in self.folders:
            raise CheckpointError(f"no model named {default!r} in {self.weights_dir}/; "
                                  f"found: {', '.join(self.folders)}")
        self.default = default or (DEFAULT_MODEL if DEFAULT_MODEL in self.folders else next(iter(self.folders)))
        self.models_in_memory = models_in_memory
        self.hub_cache_dir = hub_cache_dir
        self._loaded: OrderedDict[str, DiffusionSession] = OrderedDict()
        self._lock = threading.Lock()
        self.worker = DeviceWorker()  # all tensor work on this library's device goes through it

    @property
    def names(self) -> list[str]:
        return list(self.folders)

    def session(self, name: str | None = None) -> DiffusionSession:
        """The model called ``name`` (the default if None), loading it if it is not in memory."""
        name = name or self.default
        with self._lock:
            if name in self._loaded:
                self._loaded.move_to_end(name)
                return self._loaded[name]
            if name not in self.folders:
                raise InputError(f"unknown model {name!r}; choose one of {', '.join(self.folders)}")
            session = self.worker.run(self._load, name, self.folders[name])
            self._loaded[name] = session
            while len(self._loaded) > self.models_in_memory:
                self._loaded.popitem(last=False)
            return session

    def add_from_hub(self, repo_id: str) -> str:
        """Download a model in this app's format from the Hub and load it; returns its name (the repo id).

        Raises :class:`CheckpointError` (offline, not found, wrong format) and leaves the library as it was.
        """
        repo_id = (repo_id or "").strip()
        if not is_repo_id(repo_id):
            raise InputError(f"enter a Hub model id like 'user/model-name', got {repo_id!r}")
        folder = download(repo_id, cache_dir=self.hub_cache_dir)
        session = self.worker.run(self._load, repo_id, folder)
        session.loaded.source = repo_id
        with self._lock:
            self.folders[repo_id] = folder
            self._loaded[repo_id] = session
            while len(self._loaded) > self.models_in_memory:
                self._loaded.popitem(last=False)
        return repo_id

    def _load(self, name: str, folder: Path) -> DiffusionSession:
        return DiffusionSession(name, load_local(folder, self.device), self.device, folder)


# ---------------------------------------------------------------------------------------------------------------
# Reverse runs


@dataclass(frozen=True)
class Frame:
    """One stored step of a run, as uint8 pictures."""

    index: int  # step index within the run (0 = first network evaluation)
    t: int
    x_t: Tensor  # (B, C, H, W) uint8
    pred_x0: Tensor  # (B, C, H, W) uint8


@dataclass
class Trajectory:
    """The frames of one reverse run: every step, or every ``stride``-th one (and the last) when all of them
    would take more than ``max_bytes``. Frames are appended one at a time, so a stopped run stays consistent."""

    title: str
    num_steps: int
    shape: tuple[int, ...]  # (B, C, H, W)
    seed: int
    max_bytes: int = DEFAULT_TRAJECTORY_BYTES
    frames: list[Frame] = field(default_factory=list)
    final: Tensor | None = None  # (B, C, H, W) uint8, once the last step has run
    steps_done: int = 0
    stopped: bool = False  # the run ended before its last step (Stop, or an error)

    @property
    def stride(self) -> int:
        per_step = 2 * math.prod(self.shape)  # x_t and x̂₀, one byte per value
        return max(1, math.ceil(self.num_steps * per_step / self.max_bytes))

    @property
    def finished(self) -> bool:
        return self.final is not None

    def keeps(self, index: int) -> bool:
        return index % self.stride == 0 or index == self.num_steps - 1

    def add(self, step: Step) -> None:
        if self.keeps(step.index):
            self.frames.append(Frame(step.index, step.t, to_uint8(step.x_t).cpu(), to_uint8(step.pred_x0).cpu()))
        if step.is_last:
            self.final = to_uint8(step.x_prev).cpu()
        self.steps_done = step.index + 1

    def result(self) -> Tensor | None:
        """The final images, or for a stopped run the latest x̂₀ (uint8, (B, C, H, W))."""
        if self.final is not None:
            return self.final
        return self.frames[-1].pred_x0 if self.frames else None


class Throttle:
    """True at most once per ``interval`` seconds (always on the first call); ``None`` = never."""

    def __init__(self, interval: float | None, clock: Callable[[], float] = time.perf_counter):
        self.interval = interval
        self.clock = clock
        self.next = -math.inf

    def ready(self) -> bool:
        if self.interval is None:
            return False
        now = self.clock()
        if now < self.next:
            return False
        self.next = now + self.interval
        return True


def stream(steps: Iterator[Step], trajectory: Trajectory | None = None, throttle: Throttle | None = None,
           render: Callable[[Step], T] | None = None, worker: DeviceWorker | None = None) -> Iterator[T]:
    """Run every step of a sampler, store each in ``trajectory``, and yield ``render(step)`` (the step itself
    by default) for those to preview: the first, then at most one per throttle interval, and always the last.

    With a ``worker``, the steps and the rendering run on its thread, a stretch of steps per preview. Closing
    this iterator (Stop) ends the sampler after the stretch in progress; the trajectory keeps what was done.
    """
    throttle = throttle or Throttle(DEFAULT_PREVIEW_INTERVAL)
    render = render or (lambda step: step)

    @torch.inference_mode()
    def advance() -> tuple[object, bool] | None:
        """Steps up to the next one to preview: (its rendering, whether it was the last), or None at the end."""
        for step in steps:
            if trajectory is not None:
                trajectory.add(step)
            if throttle.ready() or step.is_last:
                return render(step), step.is_last
        return None

    call = worker.run if worker is not None else (lambda fn: fn())
    try:
        while (preview := call(advance)) is not None:
            yield preview[0]
            if preview[1]:
                return
    finally:  # also when the consumer closes us (Stop)
        if hasattr(steps, "close"):  # a sampler generator: let it run its cleanup on the worker too
            call(steps.close)
        if trajectory is not None and not trajectory.finished:
            trajectory.stopped = True


# ---------------------------------------------------------------------------------------------------------------
# Pictures and export


def picture(x: Tensor, nrow: int | None = None) -> np.ndarray:
    """An image (C, H, W) or a batch (B, C, H, W), float in [−1, 1] or uint8, → one (H', W', C) uint8 grid."""
    if x.dtype == torch.uint8:
        x = from_uint8(x)
    if x.dim() == 3:
        x = x[None]
    return to_numpy(grid(x.float(), nrow=nrow))


def noise_picture(eps: Tensor, nrow: int | None = None) -> np.ndarray:
    """ε (≈ N(0, I)) shown as ε/2, so ±2σ spans the grey range."""
    return picture(eps / 2, nrow)


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def labelled_strip(images: Sequence[Tensor] | Tensor, labels: Sequence[str], min_size: int = 96) -> np.ndarray:
    """Images (each (C, H, W), float in [−1, 1] or uint8) side by side, each labelled underneath → (H', W', 3).
    Small images are enlarged (nearest neighbour) to at least ``min_size`` pixels so the labels stay legible."""
    tiles = [Image.fromarray(picture(x, nrow=1)).convert("RGB") for x in images]
    scale = max(1, math.ceil(min_size / tiles[0].height))
    w, h = tiles[0].width * scale, tiles[0].height * scale
    pad, text_h = 2, 16
    out = Image.new("RGB", (len(tiles) * (w + pad) - pad, h + text_h + 2), "white")
    draw, font = ImageDraw.Draw(out), _font(13)
    for i, (tile, label) in enumerate(zip(tiles, labels)):
        out.paste(tile.resize((w, h), Image.NEAREST), (i * (w + pad), 0))
        draw.text((i * (w + pad) + w // 2, h + 2), label, fill="black", font=font, anchor="ma")
    return np.asarray(out)


def frame_picture(trajectory: Trajectory, frame: Frame, min_height: int = 256) -> Image.Image:
    """x_t | x̂₀ of one stored frame side by side under a label line, upscaled (nearest) to ``min_height``."""
    left = Image.fromarray(picture(frame.x_t))
    right = Image.fromarray(picture(frame.pred_x0))
    scale = max(1, math.ceil(min_height / left.height))
    w, h = left.width * scale, left.height * scale
    bar, gap = 40, 8
    out = Image.new("RGB", (2 * w + gap, h + bar), "white")
    out.paste(left.resize((w, h), Image.NEAREST), (0, bar))
    out.paste(right.resize((w, h), Image.NEAREST), (w + gap, bar))
    draw, font = ImageDraw.Draw(out), _font(14)
    draw.text((4, 2), f"{trajectory.title}   step {frame.index + 1}/{trajectory.num_steps}   t = {frame.t}",
              fill="black", font=font)
    draw.text((4, 21), "x_t", fill="black", font=font)
    draw.text((w + gap + 4, 21), "predicted x0", fill="black", font=font)
    return out


def export_indices(n: int, max_frames: int) -> list[int]:
    """At most ``max_frames`` evenly spaced indices into n frames, always including the first and the last."""
    if n <= max_frames:
        return list(range(n))
    if max_frames < 2:
        return [n - 1]
    return sorted({round(i * (n - 1) / (max_frames - 1)) for i in range(max_frames)})


def _check_frames(trajectory: Trajectory | None) -> Trajectory:
    if trajectory is None or not trajectory.frames:
        raise InputError("nothing to export yet: run Generate (or Denoise) first")
    return trajectory


def export_gif(trajectory: Trajectory | None, path: str | Path, max_frames: int = 120,
               duration_ms: int = 60, hold_last_ms: int = 1500) -> Path:
    """An animated GIF of the stored frames (x_t | x̂₀ side by side, labelled), the last one held a moment."""
    trajectory = _check_frames(trajectory)
    indices = export_indices(len(trajectory.frames), max_frames)
    pictures = [frame_picture(trajectory, trajectory.frames[i]) for i in indices]
    durations = [duration_ms] * (len(pictures) - 1) + [hold_last_ms]
    path = Path(path)
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=durations, loop=0, optimize=False)
    return path


def export_mp4(trajectory: Trajectory | None, path: str | Path, max_frames: int = 300, fps: int = 20) -> Path:
    """An H.264 MP4 of the stored frames (needs the ``imageio-ffmpeg`` package)."""
    trajectory = _check_frames(trajectory)
    if importlib.util.find_spec("imageio_ffmpeg") is None:  # the ffmpeg binary imageio's MP4 writer runs
        raise InputError("MP4 export needs the imageio-ffmpeg package (pip install imageio-ffmpeg); "
                         "the GIF export works without it")
    import imageio.v2 as imageio

    indices = export_indices(len(trajectory.frames), max_frames)
    path = Path(path)
    with imageio.get_writer(path, format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=8,
                            macro_block_size=16, output_params=["-pix_fmt", "yuv420p"]) as writer:
        for i in indices:
            frame = _pad_to(np.asarray(frame_picture(trajectory, trajectory.frames[i])), 16)
            writer.append_data(frame)
        for _ in range(fps):  # hold the last frame for a second
            writer.append_data(frame)
    return path


def _pad_to(frame: np.ndarray, multiple: int) -> np.ndarray:
    """Pad (H, W, 3) with white so both sides are multiples of ``multiple`` (what H.264 encoders want)."""
    h, w = frame.shape[:2]
    ph, pw = -h % multiple, -w % multiple
    return np.pad(frame, ((0, ph), (0, pw), (0, 0)), constant_values=255) if ph or pw else frame


def export_png(trajectory: Trajectory | None, path: str | Path) -> Path:
    """The run's final images (or, for a stopped run, its latest x̂₀) as one PNG grid."""
    trajectory = _check_frames(trajectory)
    result = trajectory.result()
    Image.fromarray(picture(result)).save(path)
    return Path(path)


__all__ = ["DeviceWorker", "DiffusionSession", "ForwardState", "Frame", "InputError", "ModelLibrary", "ModelSummary",
           "NoiseLevel", "SamplerSettings", "Throttle", "Trajectory", "UserState", "export_gif", "export_mp4",
           "export_indices", "export_png", "find_models", "labelled_strip", "noise_picture", "picture", "psnr", "resolve_seed",
           "schedule_curves", "stream"]
