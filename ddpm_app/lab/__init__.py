"""The 2-D lab: DDPM on points in the plane, where the whole distribution fits in one picture.

- :mod:`.points`: the data sets (two moons, swiss roll, a ring of Gaussians, a smiley, a word), points from a
  drawing or a CSV, and the train / held-out split; :class:`~ddpm_app.checks.InvalidValue` names what was wrong.
- :mod:`.model`: :class:`PointMLP`, a small ε-model with a sinusoidal timestep embedding, and its config.
- :mod:`.train`: :class:`Trainer`, Algorithm 1 on points, yielding one record per step.
- :mod:`.forward`: q(x_t | x₀) around one point, and the noised cloud.
- :mod:`.metrics`: the energy distance between two point clouds.

The schedule, the loss and the samplers are the library's own (:mod:`ddpm_app.diffusion.schedule`, :mod:`ddpm_app.diffusion.loss`,
:mod:`ddpm_app.diffusion.samplers`): they work on (B, 2) tensors as on (B, C, H, W) images.
"""

from ddpm_app.lab.forward import Gaussian, noised_cloud, q_gaussian
from ddpm_app.lab.metrics import energy_distance
from ddpm_app.lab.model import PointMLP, PointMLPConfig, build_model, predict_field
from ddpm_app.lab.points import DATASETS, PointSet, dataset, from_csv, from_drawing, split
from ddpm_app.lab.train import Trainer, TrainRecord, TrainSettings

__all__ = ["DATASETS", "Gaussian", "PointMLP", "PointMLPConfig", "PointSet", "TrainRecord", "Trainer",
           "TrainSettings", "build_model", "dataset", "energy_distance", "from_csv", "from_drawing",
           "noised_cloud", "predict_field", "q_gaussian", "split"]
