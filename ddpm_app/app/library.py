"""The models the app serves: the model folders in a weights directory plus any downloaded from the Hub, loaded
on first use, and the one thread that does all of the app's tensor work."""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, TypeVar

import torch

from ..model_folder import CONFIG_NAME, ModelFolderError, download, load_local
from .inputs import choice, hub_model_id
from .served import ServedModel

DEFAULT_MODEL = "faces"
MODELS_IN_MEMORY = 3
Result = TypeVar("Result")


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

    def run(self, fn: Callable[..., Result], *args, **kwargs) -> Result:
        if threading.get_ident() == self._thread_id:  # already on the worker (a job calling another)
            return fn(*args, **kwargs)
        return self._executor.submit(fn, *args, **kwargs).result()

    def submit(self, fn: Callable[..., Result], *args, **kwargs) -> Future[Result]:
        """Start ``fn`` on the worker and return at once (for a caller that reports progress while it runs)."""
        return self._executor.submit(fn, *args, **kwargs)


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
                 models_in_memory: int = MODELS_IN_MEMORY, hub_cache_dir: str | Path | None = None,
                 precision: str = "auto"):
        self.weights_dir = Path(weights_dir)
        self.device = torch.device(device)
        self.precision = precision  # the networks' compute precision (see ddpm_app.inference.prepare)
        self.folders: dict[str, Path] = find_models(self.weights_dir)
        if not self.folders:
            raise ModelFolderError(f"no models in {self.weights_dir}/: each model is a folder with config.json "
                                  "and model.safetensors (train one, or pass --weights DIR)")
        if default is not None and default not in self.folders:
            raise ModelFolderError(f"no model named {default!r} in {self.weights_dir}/; "
                                  f"found: {', '.join(self.folders)}")
        self.default = default or (DEFAULT_MODEL if DEFAULT_MODEL in self.folders else next(iter(self.folders)))
        self.models_in_memory = models_in_memory
        self.hub_cache_dir = hub_cache_dir
        self._loaded: OrderedDict[str, ServedModel] = OrderedDict()
        self._lock = threading.Lock()
        self.worker = DeviceWorker()  # all tensor work on this library's device goes through it

    @property
    def names(self) -> list[str]:
        return list(self.folders)

    def get(self, name: str | None = None) -> ServedModel:
        """The model called ``name`` (the default if None), loading it if it is not in memory."""
        name = self.default if name is None else choice(name, "model", self.names)
        with self._lock:
            if name in self._loaded:
                self._loaded.move_to_end(name)
                return self._loaded[name]
            served = self.worker.run(self._load, name, self.folders[name])
            self._loaded[name] = served
            while len(self._loaded) > self.models_in_memory:
                self._loaded.popitem(last=False)
            return served

    def add_from_hub(self, repo_id: str) -> str:
        """Download a model in this app's format from the Hub and load it; returns its name (the repo id).

        Raises :class:`ModelFolderError` (offline, not found, wrong format) and leaves the library as it was.
        """
        repo_id = hub_model_id(repo_id)
        folder = download(repo_id, cache_dir=self.hub_cache_dir)
        served = self.worker.run(self._load, repo_id, folder)
        served.loaded.source = repo_id
        with self._lock:
            self.folders[repo_id] = folder
            self._loaded[repo_id] = served
            while len(self._loaded) > self.models_in_memory:
                self._loaded.popitem(last=False)
        return repo_id

    def _load(self, name: str, folder: Path) -> ServedModel:
        return ServedModel(name, load_local(folder, self.device), self.device, folder, self.precision)
