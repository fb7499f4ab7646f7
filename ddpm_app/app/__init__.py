"""What the app does, without Gradio: models on a device, reverse runs kept as trajectories, the forward view, export.

- :mod:`.inputs`: checking what a user sends, one function per kind of value (numbers, choices, flags, seeds, Hub
  ids); :class:`InputError` names the field and the allowed range.
- :mod:`.served`: :class:`ServedModel`, one model + its schedule + a device, shared by every user: it starts
  samplers with a per-request ``torch.Generator`` and computes q(x_t|x₀) for a photo.
- :mod:`.library`: :class:`ModelLibrary` lists the model folders in a weights directory (plus models downloaded
  from the Hub) and loads them lazily; :class:`DeviceWorker` is the one thread that does the tensor work.
- :mod:`.state`: :class:`UserState`, what one user keeps between requests (its model, latest run, photo), and
  :class:`Users`, which releases it when the user leaves, after a time-to-live, or to bound the total.
- :mod:`.runs`: :func:`stream` runs a sampler to the end, stores every step in a :class:`Trajectory`, and passes
  on only the steps worth previewing.
- :mod:`.pictures` and :mod:`.export`: tensors as pictures; a trajectory as GIF, MP4 or PNG.
- :mod:`.numbers`: how a number is written for people, one style everywhere (scientific notation for small values).

Nothing here prints or touches global state.
"""

from .export import ExportFolder, export_gif, export_indices, export_mp4, export_png, frame_picture
from .inputs import MAX_BATCH, MAX_SEED, InputError, random_seed, resolve_seed
from .library import DEFAULT_MODEL, DeviceWorker, ModelLibrary, find_models
from .pictures import labelled_strip, noise_picture, picture
from .runs import (DEFAULT_PREVIEW_INTERVAL, DEFAULT_TRAJECTORY_BYTES, PREVIEW_BUDGET, Frame, Throttle, Trajectory,
                   stream)
from .served import ModelSummary, NoiseLevel, ServedModel, schedule_curves
from .state import ForwardState, Users, UserState

__all__ = ["DEFAULT_MODEL", "DEFAULT_PREVIEW_INTERVAL", "DEFAULT_TRAJECTORY_BYTES", "MAX_BATCH", "MAX_SEED",
           "PREVIEW_BUDGET",
           "DeviceWorker", "ExportFolder", "ForwardState", "Frame", "InputError", "ModelLibrary", "ModelSummary",
           "NoiseLevel", "ServedModel", "Throttle", "Trajectory", "Users", "UserState", "export_gif", "export_indices",
           "export_mp4", "export_png", "find_models", "frame_picture", "labelled_strip", "noise_picture", "picture",
           "random_seed", "resolve_seed", "schedule_curves", "stream"]
