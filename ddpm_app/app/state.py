"""What one user (a browser tab or an API client) keeps between requests."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from .inputs import random_seed, requested_seed
from .runs import Trajectory
from .served import ServedModel


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

    def update(self, served: ServedModel, photo: str | None, t: int, fix_noise: bool,
               noise_seed: float | None = -1) -> None:
        """Noise ``photo`` to timestep ``t``. With ``fix_noise`` the previous ε is kept (unless a different
        ``noise_seed`` is asked for); otherwise ε is drawn anew from ``noise_seed`` (−1 = a random seed)."""
        wanted = requested_seed(noise_seed)  # None: draw one
        if photo is None:
            self.photo = self.model = self.x0 = self.x_t = None
            return
        if photo != self.photo or served.name != self.model:
            self.x0 = served.prepare_photo(photo)  # raises ImageError for a bad file
            self.photo, self.model = photo, served.name
        keep = (fix_noise and self.eps is not None and self.eps.shape == self.x0.shape
                and wanted in (None, self.eps_seed))
        if not keep:
            self.eps_seed = wanted if wanted is not None else random_seed()
            self.eps = served.draw_noise(self.eps_seed)
        self.t = t
        self.x_t = served.q_sample(self.x0, t, self.eps)[0]


@dataclass
class UserState:
    """What one browser tab (or API client) keeps between requests: its model, its latest run, its photo."""

    model: str | None = None  # None = the library's default
    run: Trajectory | None = None
    forward: ForwardState = field(default_factory=ForwardState)
