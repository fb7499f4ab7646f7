"""A reverse run written out: an animated GIF or MP4 of x_t | x̂₀ per stored step, or the final images as a PNG."""

from __future__ import annotations

import importlib.util
import math
import os
import re
import shutil
import tempfile
import time
import weakref
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from PIL import Image, ImageDraw

from ddpm_app.checks import InvalidValue
from ddpm_app.diffusion.schedule import paper_t
from ddpm_app.fonts import draw_text, text_width
from ddpm_app.pictures import picture
from ddpm_app.serve.runs import Frame, Trajectory
from ddpm_app.text import ENGLISH, text


def frame_picture(trajectory: Trajectory, frame: Frame, min_height: int = 256, language: str = ENGLISH) -> Image.Image:
    """x_t | x̂₀ of one stored frame side by side under two label lines, upscaled (nearest) to ``min_height``.

    The labels are drawn with :func:`~ddpm_app.fonts.draw_text`, whose fonts have every character they use."""
    left = Image.fromarray(picture(frame.x_t))
    right = Image.fromarray(picture(frame.pred_x0))
    scale = max(1, math.ceil(min_height / left.height))
    w, h = left.width * scale, left.height * scale
    bar, gap = 40, 8
    out = Image.new("RGB", (2 * w + gap, h + bar), "white")
    out.paste(left.resize((w, h), Image.NEAREST), (0, bar))
    out.paste(right.resize((w, h), Image.NEAREST), (w + gap, bar))
    draw = ImageDraw.Draw(out)
    title = trajectory.title
    size = 14
    while size > 9 and text_width(title, size) > out.width - 8:  # long titles: smaller, still whole
        size -= 1
    draw_text(draw, (4, 2), title, size)
    label = text("export.x_t", language, step=frame.index + 1, steps=trajectory.num_steps, t=paper_t(frame.t))
    draw_text(draw, (4, 21), label, 14)
    draw_text(draw, (w + gap + 4, 21), text("picture.pred_x0", language), 14)
    return out


def export_indices(n: int, max_frames: int) -> list[int]:
    """At most ``max_frames`` evenly spaced indices into n frames, always including the first and the last."""
    if n <= max_frames:
        return list(range(n))
    if max_frames < 2:
        return [n - 1]
    return sorted({round(i * (n - 1) / (max_frames - 1)) for i in range(max_frames)})


# told (frames drawn, frames in all) as an export goes, so a user sees it move
ExportProgress = Callable[[int, int], None]


def _pictures(trajectory: Trajectory, indices: list[int], progress: ExportProgress | None, language: str = ENGLISH):
    """The labelled pictures of the frames at ``indices``, one at a time, reporting progress before each."""
    pictures = (frame_picture(trajectory, trajectory.frames[i], language=language) for i in indices)
    return _reporting(pictures, len(indices), progress)


def _reporting(pictures: Iterable[Image.Image], total: int, progress: ExportProgress | None):
    """``pictures`` (a lazy iterable) drawn one at a time, telling ``progress`` (done, total) before each."""
    it = iter(pictures)
    for n in range(total):
        if progress is not None:
            progress(n, total)
        yield next(it)


def _check_frames(trajectory: Trajectory | None) -> Trajectory:
    if trajectory is not None and trajectory.released:
        raise InvalidValue("export.released")
    if trajectory is None or not trajectory.frames:
        raise InvalidValue("figures.none_step")
    return trajectory


# A GIF compresses noisy pictures poorly (LZW barely gains from nearest-neighbour enlargement), so its frames are
# smaller than the MP4's and of fewer colours: 120 frames of a 64×64 DDPM run at 128 px and 48 colours take
# ~1.9 MB, at 256 px and 256 colours 6.6 MB. The MP4 keeps the full size.
GIF_HEIGHT = 128  # pixels of x_t (and of x̂₀) per frame, at least
GIF_COLOURS = 48


def export_gif(trajectory: Trajectory | None, path: str | Path, max_frames: int = 120,
               duration_ms: int = 60, hold_last_ms: int = 1500, progress: ExportProgress | None = None,
               language: str = ENGLISH) -> Path:
    """An animated GIF of the stored frames (x_t | x̂₀ side by side, labelled in ``language``), the last one held
    a moment."""
    trajectory = _check_frames(trajectory)
    indices = export_indices(len(trajectory.frames), max_frames)
    pictures = (frame_picture(trajectory, trajectory.frames[i], GIF_HEIGHT, language) for i in indices)
    return save_gif(list(_reporting(pictures, len(indices), progress)), path, duration_ms, hold_last_ms)


def save_gif(pictures: list[Image.Image], path: str | Path, duration_ms: int = 60, hold_last_ms: int = 1500,
             colours: int = GIF_COLOURS) -> Path:
    """``pictures`` as an animated GIF that loops, the last one held ``hold_last_ms``; each frame gets its own
    palette of ``colours`` (median cut, no dithering: dithered noise compresses worst)."""
    durations = [duration_ms] * (len(pictures) - 1) + [hold_last_ms]
    path = Path(path)
    frames = [p.convert("RGB").quantize(colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
              for p in pictures]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=durations, loop=0, optimize=False)
    return path


def export_mp4(trajectory: Trajectory | None, path: str | Path, max_frames: int = 300, fps: int = 20,
               progress: ExportProgress | None = None, language: str = ENGLISH) -> Path:
    """An H.264 MP4 of the stored frames, labelled in ``language`` (needs the ``imageio-ffmpeg`` package)."""
    trajectory = _check_frames(trajectory)
    indices = export_indices(len(trajectory.frames), max_frames)
    return save_mp4(_pictures(trajectory, indices, progress, language), path, fps)


def save_mp4(pictures: Iterable[Image.Image | np.ndarray], path: str | Path, fps: int = 20) -> Path:
    """``pictures`` (all of one size) as an H.264 MP4, the last one held a second (needs ``imageio-ffmpeg``)."""
    if importlib.util.find_spec("imageio_ffmpeg") is None:  # the ffmpeg binary imageio's MP4 writer runs
        raise InvalidValue("export.no_ffmpeg")
    import imageio.v2 as imageio

    path = Path(path)
    with imageio.get_writer(path, format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=8,
                            macro_block_size=16, pixelformat="yuv420p") as writer:  # what every player decodes
        for labelled in pictures:
            frame = _pad_to(np.asarray(labelled), 16)
            writer.append_data(frame)
        for _ in range(fps):  # hold the last frame for a second
            writer.append_data(frame)
    return path


def _pad_to(frame: np.ndarray, multiple: int) -> np.ndarray:
    """Pad (H, W, 3) with white so both sides are multiples of ``multiple`` (what H.264 encoders want)."""
    h, w = frame.shape[:2]
    ph, pw = -h % multiple, -w % multiple
    return np.pad(frame, ((0, ph), (0, pw), (0, 0)), constant_values=255) if ph or pw else frame


PNG_SIZE = 512  # pixels per image of the PNG export, at least (like the slide figures)


def export_png(trajectory: Trajectory | None, path: str | Path, min_size: int = PNG_SIZE) -> Path:
    """The run's final images (or, for a stopped run, its latest x̂₀) as one PNG grid, enlarged nearest-neighbour
    so that each image is at least ``min_size`` pixels and its pixels stay sharp."""
    trajectory = _check_frames(trajectory)
    result = trajectory.result()  # (B, C, H, W)
    grid = Image.fromarray(picture(result))
    scale = max(1, math.ceil(min_size / result.shape[-1]))
    grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST).save(path)
    return Path(path)


class ExportFolder:
    """Where exports are written: one sub-folder per export, so each file keeps its plain download name. A failed
    export leaves nothing behind, and the folder stays bounded: before each export, exports older than
    ``max_age_s`` go, then the oldest until at most ``max_exports`` − 1 remain and they take at most ``max_bytes``.
    (Gradio copies a returned file into its own cache at once, so an export is only needed here for a moment.)"""

    def __init__(self, root: str | Path, max_exports: int = 32, max_bytes: int = 256 * 2**20,
                 max_age_s: float = 3600):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_exports, self.max_bytes, self.max_age_s = max_exports, max_bytes, max_age_s

    @classmethod
    def temporary(cls, prefix: str, temp_dir: str | Path | None = None) -> ExportFolder:
        """A new folder ``{prefix}pid{pid}-…`` in the temporary directory, removed when the process exits or this
        object goes. A process that was killed cannot remove its own, so this first removes those of ``prefix``
        whose process is gone (:func:`remove_stale`)."""
        temp_dir = Path(temp_dir or tempfile.gettempdir())
        remove_stale(prefix, temp_dir)
        folder = cls(tempfile.mkdtemp(prefix=f"{prefix}pid{os.getpid()}-", dir=temp_dir))
        weakref.finalize(folder, shutil.rmtree, folder.root, ignore_errors=True)
        return folder

    def write(self, name: str, writer: Callable[[Path], Path]) -> Path:
        """``writer(path)`` in a fresh folder, then the file renamed to ``name``: a file under that name is always
        complete (a process killed mid-export leaves only ``partial-{name}``). The folder is removed again if
        ``writer`` fails."""
        self.prune()
        folder = Path(tempfile.mkdtemp(dir=self.root))
        try:
            return writer(folder / f"partial-{name}").replace(folder / name)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    def exports(self) -> list[tuple[float, int, Path]]:
        """(modified time, bytes, folder) of every export, oldest first."""
        found = []
        for folder in self.root.iterdir():
            try:
                files = [f.stat() for f in folder.iterdir()] if folder.is_dir() else []
                found.append((folder.stat().st_mtime, sum(f.st_size for f in files), folder))
            except FileNotFoundError:  # removed meanwhile by another request
                continue
        return sorted(found)

    def prune(self) -> None:
        exports = self.exports()
        total = sum(size for _, size, _ in exports)
        now = time.time()
        for i, (modified, size, folder) in enumerate(exports):
            if (now - modified <= self.max_age_s and len(exports) - i < self.max_exports
                    and total <= self.max_bytes):
                break
            shutil.rmtree(folder, ignore_errors=True)
            total -= size


def remove_stale(prefix: str, temp_dir: str | Path) -> list[Path]:
    """Remove the folders ``{prefix}pid{pid}-…`` in ``temp_dir`` (made by :meth:`ExportFolder.temporary`) that
    belong to this user and whose process no longer runs; returns them. Anything else is left alone: other names,
    links, other users' folders, and those of a running process (or of a process id now reused)."""
    removed = []
    for folder in Path(temp_dir).glob(f"{prefix}pid*-*"):
        match = re.fullmatch(rf"{re.escape(prefix)}pid(\d+)-[a-z0-9_]+", folder.name)
        try:
            owned = folder.is_dir() and not folder.is_symlink() and folder.stat().st_uid == os.getuid()
        except OSError:  # removed meanwhile
            continue
        if match and owned and int(match[1]) > 0 and not process_exists(int(match[1])):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def process_exists(pid: int) -> bool:
    """Whether a process ``pid`` (> 0) runs, ours or another user's: signal 0 checks without sending anything."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        pass
    return True
