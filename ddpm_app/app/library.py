"""The models the app serves: the model folders in a weights directory plus any downloaded from the Hub, loaded
on first use, and the one thread that does all of the app's tensor work."""

from __future__ import annotations

import contextvars
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import torch

from ..model_folder import CONFIG_NAME, ModelFolderError, download, load_local
from ..values import shown
from .inputs import InputError, choice, hub_model_id
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
        """``fn(*args, **kwargs)`` on the worker, in the caller's context (so a ``gr.Progress`` still finds its
        event, as with ``asyncio.to_thread``)."""
        if threading.get_ident() == self._thread_id:  # already on the worker (a job calling another)
            return fn(*args, **kwargs)
        return self._executor.submit(contextvars.copy_context().run, fn, *args, **kwargs).result()

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
    """The model folders in one or more weights folders, plus any loaded from the Hub or from a folder nested
    inside a weights folder, loaded on first use.

    The weights folders (``roots``) are the only places models are read from disk: a path a user types is
    loaded only if it lies inside one of them once ``..`` and symlinks are resolved. A few models stay in memory
    (least recently used go first); all are loaded onto ``device``. Safe to use from the server's worker threads.
    """

    def __init__(self, weights_dir: str | Path | Sequence[str | Path], device: torch.device | str = "cpu",
                 default: str | None = None, models_in_memory: int = MODELS_IN_MEMORY,
                 hub_cache_dir: str | Path | None = None, precision: str = "auto",
                 cpu_runtime: str = "pytorch", cpu_threads: int | None = None):
        dirs = [weights_dir] if isinstance(weights_dir, (str, Path)) else list(weights_dir)
        self.roots = tuple(Path(d) for d in dirs)
        self.weights_dir = self.roots[0]
        self.device = torch.device(device)
        self.precision = precision  # the networks' compute precision (see ddpm_app.inference.prepare)
        self.cpu_runtime = cpu_runtime  # who runs the network on the CPU: auto, pytorch or openvino
        self.cpu_threads = cpu_threads  # the networks' threads on the CPU (None: PyTorch's count at each load)
        self._added: dict[str, Path] = {}  # from the Hub or a nested folder: kept by a rescan
        self.folders: dict[str, Path] = self._scan()
        if not self.folders:
            raise ModelFolderError(f"no models in {self._where}: each model is a folder with config.json "
                                  "and model.safetensors (train one, or pass --weights DIR)")
        if default is not None and default not in self.folders:
            raise ModelFolderError(f"no model named {default!r} in {self._where}; "
                                  f"found: {', '.join(self.folders)}")
        self.default = default or (DEFAULT_MODEL if DEFAULT_MODEL in self.folders else next(iter(self.folders)))
        self.models_in_memory = models_in_memory
        self.hub_cache_dir = hub_cache_dir
        self._loaded: OrderedDict[str, ServedModel] = OrderedDict()
        self._lock = threading.Lock()
        self.worker = DeviceWorker()  # all tensor work on this library's device goes through it

    @property
    def _where(self) -> str:
        return ", ".join(f"{root}/" for root in self.roots)

    def _scan(self) -> dict[str, Path]:
        """The model folders directly inside the weights folders (the first of a name wins), then those added."""
        found: dict[str, Path] = {}
        for root in self.roots:
            for name, folder in find_models(root).items():
                found.setdefault(name, folder)
        return found | {name: f for name, f in self._added.items() if (f / CONFIG_NAME).is_file()}

    def rescan(self) -> tuple[list[str], list[str]]:
        """Look at the weights folders again: (names of models new there, names of models gone)."""
        with self._lock:
            found = self._scan()
            new = [name for name in found if name not in self.folders]
            gone = [name for name in self.folders if name not in found]
            for name in gone:
                self._loaded.pop(name, None)
            self.folders = found
            if self.default not in found and found:
                self.default = DEFAULT_MODEL if DEFAULT_MODEL in found else next(iter(found))
            return new, gone

    def find_folder(self, path: str) -> tuple[str, Path]:
        """(name, folder) of the model folder a user typed: relative to a weights folder (or to the working
        directory), or absolute, and inside a weights folder once ``..`` and symlinks are resolved."""
        if path is not None and not isinstance(path, str):
            raise InputError(f"model folder must be a path (text), got {shown(path)}")
        text = (path or "").strip()
        if not text:
            raise InputError(f"enter a model folder inside {self._where}")
        given = Path(text)
        candidates = [given] if given.is_absolute() else [root / given for root in self.roots] + [given]
        inside = []
        for candidate in candidates:
            try:
                real = candidate.resolve()
            except (OSError, RuntimeError, ValueError):  # a name too long, a symlink loop, a NUL byte
                continue
            for root in self.roots:
                if real.is_relative_to(root.resolve()):
                    inside.append((real, root.resolve()))
                    break
        if not inside:
            raise InputError(f"{shown(text)} is outside the weights folders; only model folders inside {self._where} "
                             "can be loaded (start the app with --weights DIR to allow another folder)")
        for real, root in inside:
            if real.is_dir():
                return (real.relative_to(root).as_posix() if real != root else root.name), real
        raise InputError(f"no folder {shown(text)} in {self._where}")

    def add_folder(self, path: str) -> str:
        """Load the model folder at ``path`` (see :meth:`find_folder`); returns its name (a path relative to its
        weights folder). Raises :class:`InputError` or :class:`ModelFolderError` and leaves the library as it was."""
        if isinstance(path, str) and path.strip() in self.folders:
            return path.strip()
        name, folder = self.find_folder(path)
        served = self.worker.run(self._load, name, folder)
        with self._lock:
            self.folders[name] = self._added[name] = folder
            self._keep(name, served)
        return name

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
            self._keep(name, served)
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
            self.folders[repo_id] = self._added[repo_id] = folder
            self._keep(repo_id, served)
        return repo_id

    def _keep(self, name: str, served: ServedModel) -> None:
        """Hold ``served`` in memory as the most recently used model (call with the lock held)."""
        self._loaded[name] = served
        self._loaded.move_to_end(name)
        while len(self._loaded) > self.models_in_memory:
            self._loaded.popitem(last=False)

    def _load(self, name: str, folder: Path) -> ServedModel:
        return ServedModel(name, load_local(folder, self.device), self.device, folder, self.precision,
                           self.cpu_runtime, self.cpu_threads)
