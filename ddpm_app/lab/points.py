"""The lab's data: 2-D point sets, made from a recipe, a drawing or a CSV, each split into training points and a
held-out sample of the same distribution (what a generated cloud is measured against).

Every set is moved and scaled as a whole to fill the square [−1, 1]² (its bounding box centred, its longer side
spanning −1…1), as images fill [−1, 1]: the image models' schedules and their x̂₀ clipping then mean the same here.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ddpm_app.checks import InvalidValue, shown

MAX_POINTS = 5000  # training points in one set, at most
MIN_POINTS = 10
MAX_CSV_BYTES = 1 * 2**20  # a CSV of 5000 points is about 100 kB
MAX_WORD = 12  # characters of the word set
HELD_OUT_SHARE = 0.2  # of the points of a CSV, kept aside to measure against


@dataclass(frozen=True)
class PointSet:
    """Training points and a held-out sample of the same distribution, both in [−1, 1]²."""

    name: str
    train: Tensor  # (N, 2) float32
    heldout: Tensor  # (M, 2) float32


def fit_square(points: Tensor) -> Tensor:
    """The points moved and scaled as a whole so their bounding box is centred and its longer side spans −1…1."""
    lo, hi = points.min(dim=0).values, points.max(dim=0).values
    half = float((hi - lo).max()) / 2
    return ((points - (lo + hi) / 2) / (half if half > 0 else 1.0)).float()


def split(name: str, points: Tensor, train_count: int) -> PointSet:
    """The first ``train_count`` points for training, the rest held out, after fitting all of them to [−1, 1]²
    together (so both halves share one scale)."""
    fitted = fit_square(points)
    return PointSet(name, fitted[:train_count], fitted[train_count:])


# -- recipes: n points from a generator, any scale (fit_square follows) ------------------------------------------

def _two_moons(n: int, g: torch.Generator) -> Tensor:
    theta = torch.rand(n, generator=g) * math.pi
    upper = torch.rand(n, generator=g) < 0.5
    x = torch.where(upper, theta.cos(), 1 - theta.cos())
    y = torch.where(upper, theta.sin(), 0.5 - theta.sin())
    return torch.stack([x, y], 1) + 0.06 * torch.randn(n, 2, generator=g)


def _swiss_roll(n: int, g: torch.Generator) -> Tensor:
    theta = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g))
    return torch.stack([theta * theta.cos(), theta * theta.sin()], 1) + 0.35 * torch.randn(n, 2, generator=g)


def _ring(n: int, g: torch.Generator, modes: int = 8) -> Tensor:
    k = torch.randint(0, modes, (n,), generator=g).double() * 2 * math.pi / modes
    return torch.stack([k.cos(), k.sin()], 1).float() + 0.07 * torch.randn(n, 2, generator=g)


def _smiley(n: int, g: torch.Generator) -> Tensor:
    part = torch.multinomial(torch.tensor([0.5, 0.1, 0.1, 0.3]), n, replacement=True, generator=g)
    angle = torch.rand(n, generator=g) * 2 * math.pi
    face = torch.stack([angle.cos(), angle.sin()], 1)
    eye = 0.06 * torch.randn(n, 2, generator=g)
    smile = -math.pi * (0.2 + 0.6 * torch.rand(n, generator=g))  # the lower arc, −36° … −144°
    mouth = 0.55 * torch.stack([smile.cos(), smile.sin()], 1)
    out = torch.where((part == 0)[:, None], face, mouth)
    out = torch.where((part == 1)[:, None], eye + torch.tensor([-0.35, 0.35]), out)
    out = torch.where((part == 2)[:, None], eye + torch.tensor([0.35, 0.35]), out)
    return out + 0.025 * torch.randn(n, 2, generator=g)


def _word(n: int, g: torch.Generator, text: str = "DDPM") -> Tensor:
    from PIL import Image, ImageDraw

    from ddpm_app.pictures import label_font

    font = label_font(64)
    width = int(font.getlength(text)) + 16
    image = Image.new("L", (max(width, 32), 96), 0)
    ImageDraw.Draw(image).text((8, 8), text, fill=255, font=font)
    return points_from_mask(np.asarray(image) > 127, n, g)


RECIPES: dict[str, Callable[[int, torch.Generator], Tensor]] = {
    "two moons": _two_moons, "swiss roll": _swiss_roll, "ring of Gaussians": _ring, "smiley": _smiley,
    "word": _word,
}
DATASETS: tuple[str, ...] = tuple(RECIPES)


def dataset(name: str, count: int, generator: torch.Generator, word: str = "DDPM") -> PointSet:
    """``count`` training points of a recipe and as many held out, drawn together from ``generator``."""
    if name not in RECIPES:
        raise InvalidValue("error.choice", name="data set", choices=", ".join(DATASETS), got=shown(name))
    if name == "word":
        text = word.strip() if isinstance(word, str) else ""
        if not 1 <= len(text) <= MAX_WORD:
            raise InvalidValue("error.word_length", most=MAX_WORD, got=shown(word))
        points = _word(2 * count, generator, text)
        name = f"word “{text}”"
    else:
        points = RECIPES[name](2 * count, generator)
    return split(name, points, count)


def points_from_mask(mask: np.ndarray, n: int, generator: torch.Generator) -> Tensor:
    """``n`` points spread uniformly over the true pixels of ``mask`` (H, W), y pointing up: each point is a
    random true pixel plus a uniform offset inside it."""
    rows, cols = np.nonzero(mask)
    if len(rows) == 0:
        raise InvalidValue("error.drawing_blank")
    pick = torch.randint(0, len(rows), (n,), generator=generator).numpy()
    jitter = torch.rand(n, 2, generator=generator)
    x = torch.from_numpy(cols[pick]).float() + jitter[:, 0]
    y = -(torch.from_numpy(rows[pick]).float() + jitter[:, 1])
    return torch.stack([x, y], 1)


def from_drawing(image: np.ndarray | None, count: int, generator: torch.Generator) -> PointSet:
    """Points drawn from the strokes of a sketch (H, W, 3 or 4) uint8: ink is a dark pixel (not transparent)."""
    if image is None:
        raise InvalidValue("error.drawing_blank")
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[0] * array.shape[1] > 4096 * 4096:
        raise InvalidValue("error.drawing_size")
    ink = array[..., :3].mean(axis=2) < 128
    if array.shape[2] == 4:
        ink &= array[..., 3] > 0
    return split("your drawing", points_from_mask(ink, 2 * count, generator), count)


def parse_points(text: str) -> Tensor:
    """Points from CSV text (one "x,y" per line; commas, semicolons, tabs or spaces between; one header line
    and blank lines allowed) or a JSON list of [x, y] pairs: (N, 2) float64. Errors name the line."""
    if not isinstance(text, str):
        raise InvalidValue("error.points_form", got=shown(text))
    if len(text.encode()) > MAX_CSV_BYTES:
        raise InvalidValue("error.points_bytes", mb=MAX_CSV_BYTES // 2**20, most=MAX_POINTS)
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise InvalidValue("error.points_json", why=e.msg, at=e.pos) from None
        if not isinstance(rows, list):
            raise InvalidValue("error.points_pairs")
        values = []
        for i, row in enumerate(rows):
            if not (isinstance(row, list) and len(row) == 2
                    and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in row)):
                raise InvalidValue("error.point_pair", n=i + 1, got=shown(row))
            values.append(_finite([float(v) for v in row], "error.point_not_finite", i + 1))
        return _checked(values)
    values = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.replace(";", ",").replace("\t", ",").replace(" ", ",").split(",")
        fields = [f for f in fields if f]
        if not fields:
            continue
        try:
            if len(fields) != 2:
                raise ValueError
            pair = [float(fields[0]), float(fields[1])]
        except ValueError:
            if number == 1 and not values:  # a header such as "x,y"
                continue
            raise InvalidValue("error.csv_line", n=number, got=shown(line)) from None
        values.append(_finite(pair, "error.csv_line_not_finite", number))
        if len(values) > MAX_POINTS:
            raise InvalidValue("error.csv_too_many", most=MAX_POINTS, n=number)
    return _checked(values)


def _finite(pair: list[float], key: str, n: int) -> list[float]:
    """``pair`` if both coordinates are finite, else the error ``key`` naming point or line ``n``."""
    if not all(math.isfinite(v) for v in pair):
        raise InvalidValue(key, n=n, x=pair[0], y=pair[1])
    return pair


def _checked(values: list[list[float]]) -> Tensor:
    if len(values) > MAX_POINTS:
        raise InvalidValue("error.too_many_points", count=len(values), most=MAX_POINTS)
    if len(values) < MIN_POINTS:
        raise InvalidValue("error.too_few_points", count=len(values), least=MIN_POINTS)
    points = torch.tensor(values, dtype=torch.float64)
    if float((points.max(dim=0).values - points.min(dim=0).values).max()) == 0:
        raise InvalidValue("error.same_point")
    return points


def from_csv(text: str, generator: torch.Generator, name: str = "your points") -> PointSet:
    """A set from CSV (or JSON) text, shuffled with ``generator``; :data:`HELD_OUT_SHARE` of it is held out."""
    points = parse_points(text)
    order = torch.randperm(len(points), generator=generator)
    held = max(2, round(len(points) * HELD_OUT_SHARE))
    return split(name, points[order], len(points) - held)
