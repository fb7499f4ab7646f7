"""The models the app serves: the model folders in a weights directory plus any downloaded from the Hub, loaded
on first use, with the one thread that does all of their tensor work (:class:`~ddpm_app.serve.worker.DeviceWorker`)."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from concurrent.futures import Future
from pathlib import Path
from typing import Sequence

import torch

from ddpm_app.checks import InvalidValue, choice, shown
from ddpm_app.io.diffusers_folder import MODEL_INDEX
from ddpm_app.io.loading import download, load_local
from ddpm_app.io.model_folder import CONFIG_NAME, ModelFolderError
from ddpm_app.runtime.inference import prepare
from ddpm_app.serve.inputs import hub_model_id
from ddpm_app.serve.served import ServedModel
from ddpm_app.serve.worker import DeviceWorker

DEFAULT_MODEL = "faces"
MODELS_IN_MEMORY = 3


def find_models(weights_dir: str | Path) -> dict[str, Path]:
    """Every model folder (one holding config.json) directly inside ``weights_dir``, by folder name, but for those
    that lead out of it through a link (see :func:`leads_out`)."""
    return model_folders(weights_dir)[0]


def is_model_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a model: this app's (config.json) or a diffusers DDPM pipeline (model_index.json)."""
    return (folder / CONFIG_NAME).is_file() or (folder / MODEL_INDEX).is_file()


def model_folders(weights_dir: str | Path) -> tuple[dict[str, Path], list[str]]:
    """(the model folders directly inside ``weights_dir`` by name, the names of those refused because a link in
    them, or the folder itself, leads out of ``weights_dir``). A weights folder that is itself a diffusers DDPM folder
    serves that one model, under its folder's name."""
    weights_dir = Path(weights_dir)
    if not weights_dir.is_dir():
        return {}, []
    if (weights_dir / MODEL_INDEX).is_file():
        candidates = [weights_dir]
    else:
        candidates = [p for p in sorted(weights_dir.iterdir()) if is_model_folder(p)]
    out = {p: leads_out(p, weights_dir) for p in candidates}
    return {p.name: p for p, link in out.items() if link is None}, [p.name for p, link in out.items() if link]


def leads_out(folder: Path, root: Path) -> Path | None:
    """The first of ``folder`` and the files in it whose real path (every link followed) is outside ``root``'s, or
    None: the app reads model folders from inside its weights folders only, and a link there to /elsewhere would
    let a model folder, or its weights, card or pictures, come from anywhere. A diffusers DDPM folder's parts (unet/,
    scheduler/) and their files are looked at too."""
    real_root = root.resolve()
    folders = [folder]
    if (folder / MODEL_INDEX).is_file():
        folders += [part for part in (folder / "unet", folder / "scheduler") if part.exists()]
    paths = list(folders)
    for inside in folders:
        if inside.is_dir():
            paths += [p for p in sorted(inside.iterdir()) if not p.is_dir()]
    for path in paths:
        if not path.resolve().is_relative_to(real_root):
            return path
    return None


class ModelLibrary:
    """The model folders in one or more weights folders, plus any loaded from the Hub or from a folder nested
    inside a weights folder, loaded on first use.

    The weights folders (``roots``) are the only places models are read from disk: a path a user types, a folder
    found by a scan, and every file a model folder holds are read only if they lie inside one of them once ``..``
    and links are resolved. A few models stay in memory (least recently used go first); all are loaded onto
    ``device``. Safe to use from the server's worker threads: a model loads on its own thread without the library's
    lock, so other users' runs go on meanwhile, and users who ask for a model that is loading wait for that one load.
    """

    def __init__(self, weights_dir: str | Path | Sequence[str | Path], device: torch.device | str = "cpu",
                 default: str | None = None, models_in_memory: int = MODELS_IN_MEMORY,
                 hub_cache_dir: str | Path | None = None, precision: str = "auto",
                 cpu_runtime: str = "pytorch", cpu_threads: int | None = None, hub_models: Sequence[str] = ()):
        dirs = [weights_dir] if isinstance(weights_dir, (str, Path)) else list(weights_dir)
        self.roots = tuple(Path(d) for d in dirs)
        self.weights_dir = self.roots[0]
        self.device = torch.device(device)
        self.precision = precision  # the networks' compute precision (see ddpm_app.runtime.inference.prepare)
        self.cpu_runtime = cpu_runtime  # who runs the network on the CPU: auto, pytorch or openvino
        self.cpu_threads = cpu_threads  # the networks' threads on the CPU (None: PyTorch's count at each load)
        self._added: dict[str, Path] = {}  # from the Hub or a nested folder: kept by a rescan
        self._hub: set[str] = set()  # the models loaded from the Hub (their cache links its files, by design)
        self.refused: list[str] = []  # model folders the last scan left out: a link in them leads out
        self.hub_cache_dir = hub_cache_dir
        for repo_id in hub_models:  # fetched now (a model folder or a diffusers DDPM folder), loaded on first use
            repo_id = hub_model_id(repo_id)
            self._added[repo_id] = download(repo_id, cache_dir=hub_cache_dir)
            self._hub.add(repo_id)
        self.folders: dict[str, Path] = self._scan()
        if not self.folders:
            raise ModelFolderError("folder.no_models", where=self._where)
        if default is not None and default not in self.folders:
            raise ModelFolderError("folder.no_model_named", name=repr(default), where=self._where,
                                   found=", ".join(self.folders))
        first = hub_model_id(hub_models[0]) if hub_models else DEFAULT_MODEL
        self.default = default or (first if first in self.folders else next(iter(self.folders)))
        self.models_in_memory = models_in_memory
        self._loaded: OrderedDict[str, ServedModel] = OrderedDict()
        self._loading: dict[str, Future[ServedModel]] = {}  # by name: the loads under way
        self._lock = threading.Lock()  # guards the three dicts above and the folders; never held during a load
        self.worker = DeviceWorker()  # all tensor work on this library's device goes through it
        self.loader = DeviceWorker("ddpm-load")  # loads models one at a time, beside the worker's runs

    @property
    def _where(self) -> str:
        return ", ".join(f"{root}/" for root in self.roots)

    def _scan(self) -> dict[str, Path]:
        """The model folders directly inside the weights folders (the first of a name wins), then those added."""
        found: dict[str, Path] = {}
        self.refused = []
        for root in self.roots:
            inside, refused = model_folders(root)
            self.refused += [f"{root / name}" for name in refused]
            for name, folder in inside.items():
                found.setdefault(name, folder)
        return found | {name: f for name, f in self._added.items() if is_model_folder(f)}

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
            raise InvalidValue("folder.not_text", got=shown(path))
        text = (path or "").strip()
        if not text:
            raise InvalidValue("folder.enter_one", where=self._where)
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
            raise InvalidValue("folder.outside", path=shown(text), where=self._where)
        for real, root in inside:
            if os.path.isdir(real):  # False for a name too long to look up, as for a missing one
                return (real.relative_to(root).as_posix() if real != root else root.name), real
        raise InvalidValue("folder.missing", path=shown(text), where=self._where)

    def add_folder(self, path: str) -> str:
        """Load the model folder at ``path`` (see :meth:`find_folder`); returns its name (a path relative to its
        weights folder). Raises :class:`InvalidValue` or :class:`ModelFolderError` and leaves the library as it was."""
        if isinstance(path, str) and path.strip() in self.folders:
            return path.strip()
        name, folder = self.find_folder(path)
        self._served(name, folder)
        with self._lock:
            self.folders[name] = self._added[name] = folder
            self._hub.discard(name)
        return name

    @property
    def names(self) -> list[str]:
        return list(self.folders)

    def in_memory(self, name: str) -> bool:
        """Whether the model called ``name`` is loaded (a switch to it is immediate)."""
        with self._lock:
            return name in self._loaded

    def get(self, name: str | None = None) -> ServedModel:
        """The model called ``name`` (the default if None), loading it if it is not in memory."""
        name = self.default if name is None else choice(name, "model", self.names)
        return self._served(name, self.folders[name], hub=name in self._hub)

    def add_from_hub(self, repo_id: str) -> str:
        """Download a model in this app's format, or a diffusers DDPM pipeline, from the Hub and load it; returns its
        name (the repo id).

        Raises :class:`ModelFolderError` (offline, not found, wrong format) and leaves the library as it was.
        """
        repo_id = hub_model_id(repo_id)
        folder = download(repo_id, cache_dir=self.hub_cache_dir)
        self._served(repo_id, folder, hub=True)
        with self._lock:
            self.folders[repo_id] = self._added[repo_id] = folder
            self._hub.add(repo_id)
        return repo_id

    def _served(self, name: str, folder: Path, hub: bool = False) -> ServedModel:
        """The model ``name`` in memory, loaded from ``folder`` on the loader thread if it is not there or on its way.

        The lock is held only to look and to register the load, never during it, so a load does not stall the
        users whose models are in memory; a second user asking for the same model waits for the first one's load.
        """
        with self._lock:
            if name in self._loaded:
                self._loaded.move_to_end(name)
                return self._loaded[name]
            pending = self._loading.get(name)
            if pending is None:
                pending = self._loading[name] = self.loader.submit(self._load_and_keep, name, folder, hub)
        return pending.result()

    def _load_and_keep(self, name: str, folder: Path, hub: bool) -> ServedModel:
        try:
            served = self._load(name, folder, hub)
            with self._lock:
                self._keep(name, served)
            return served
        finally:
            with self._lock:
                del self._loading[name]

    def _keep(self, name: str, served: ServedModel) -> None:
        """Hold ``served`` in memory as the most recently used model (call with the lock held)."""
        self._loaded[name] = served
        self._loaded.move_to_end(name)
        while len(self._loaded) > self.models_in_memory:
            self._loaded.popitem(last=False)

    def _load(self, name: str, folder: Path, hub: bool) -> ServedModel:
        """``folder``'s model (``hub``: the Hub's copy of repo ``name``, in its cache, which links its files by design;
        any other folder only once no link in it leads out of the weights folders)."""
        if not hub:
            self._refuse_links(folder)
        loaded = load_local(folder, self.device)
        if hub:
            loaded.source = name
        network = prepare(loaded.model, self.device, precision=self.precision, cpu_runtime=self.cpu_runtime,
                          cpu_threads=self.cpu_threads)
        return ServedModel(name, loaded, network, folder)

    def _refuse_links(self, folder: Path) -> None:
        """A ModelFolderError unless ``folder`` and every file in it are inside one weights folder, links followed
        (a folder can be swapped for a link between a scan and a load)."""
        if not folder.is_dir():
            return  # load_local says so
        real = folder.resolve()
        root = next((r for r in self.roots if real.is_relative_to(r.resolve())), None)
        link = leads_out(folder, root) if root is not None else folder
        if link is not None:
            raise ModelFolderError("folder.link_out", link=link, where=self._where, target=link.resolve())
