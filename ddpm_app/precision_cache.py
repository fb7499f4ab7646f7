"""The CPU precision ``auto`` chose, remembered per machine and model: timed once, not at every start.

``auto`` on a CPU with bf16 in hardware times the fp32 and the bf16 network (:func:`ddpm_app.inference.prepare_cpu`),
which builds both and takes seconds on a 2-core CPU; and on a shared machine two start-ups may time them
differently when they are close. A :class:`PrecisionCache` keeps the first timings, and the choice made from them,
in a small JSON file under a :class:`ChoiceKey` that holds everything they depend on: the CPU model and its
instruction sets, the torch thread count, the PyTorch version, the model's architecture and config, the batch
timed, and the version of the networks timed (:data:`NETWORKS`). An entry made for the same model under another
key (another CPU, thread count or PyTorch: stale, or copied from another machine) is not used, and a log line says
what differs. A file that cannot be read, parsed or written is passed over with a log line: the choice is then
timed, as without a cache.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from .isa import CpuFeatures

log = logging.getLogger(__name__)

CACHE_DIR_ENV = "DDPM_APP_CACHE"  # where the app keeps what it measured; default ~/.cache/ddpm-app
FILE_NAME = "cpu-precision.json"
FORMAT = 1  # the file's layout; a file of another format is ignored (and replaced on the next store)
MAX_ENTRIES = 64  # the most recently stored are kept
# the version of the networks inference.prepare_cpu builds and times; raise it when their ops change, so that
# timings of the older networks are not reused. 1: packed convolutions; 2: bf16 1×1 convolutions as matrix products
# and GroupNorm kernels timed per shape (an Intel Xeon with AMX went from fp32 to bf16 at four images with them)
NETWORKS = 2


def default_cache_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """``$DDPM_APP_CACHE``, else ``$XDG_CACHE_HOME/ddpm-app``, else ``~/.cache/ddpm-app``."""
    if environ.get(CACHE_DIR_ENV):
        return Path(environ[CACHE_DIR_ENV]).expanduser()
    base = environ.get("XDG_CACHE_HOME") or Path("~/.cache").expanduser()
    return Path(base) / "ddpm-app"


@dataclass(frozen=True)
class ChoiceKey:
    """What a timing of fp32 against bf16 depends on: the same key, the same answer."""

    cpu: str  # the CPU's model name
    isa: str  # its instruction-set flags, e.g. "avx2 avx512 avx512_bf16"
    threads: int  # torch CPU threads
    torch: str  # PyTorch version (it brings its oneDNN)
    model: str  # architecture and a digest of its config, e.g. "UNet 3f2a…"
    batch: int  # the batch size timed
    networks: int = 1  # the NETWORKS version timed (entries written before the field existed were version 1)

    @classmethod
    def of(cls, cpu: CpuFeatures, model: nn.Module, batch: int, threads: int | None = None,
           torch_version: str = torch.__version__, networks: int = NETWORKS) -> ChoiceKey:
        flags = " ".join(name for name in ("avx2", "avx512", "avx512_bf16", "amx") if getattr(cpu, name))
        return cls(cpu.model, flags, threads or torch.get_num_threads(), torch_version, model_identity(model), batch,
                   networks)

    def differences(self, other: ChoiceKey) -> list[str]:
        """What ``other`` has that this key does not, as "field: theirs (here: ours)"."""
        return [f"{f.name}: {getattr(other, f.name)} (here: {getattr(self, f.name)})"
                for f in dataclasses.fields(self) if getattr(other, f.name) != getattr(self, f.name)]


def model_identity(model: nn.Module) -> str:
    """The network's class and a digest of its config: two models with the same identity run the same ops."""
    config = getattr(model, "config", None)
    fields = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else repr(config)
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"{type(model).__name__} {digest}"


@dataclass(frozen=True)
class RememberedChoice:
    """A timing of the fp32 and bf16 networks, the precision chosen from it, and when it was made."""

    precision: str
    ms_per_step: dict[str, float]  # {"fp32": …, "bf16": …}
    measured: str  # UTC date and time, e.g. "2026-11-29 15:10 UTC"


class PrecisionCache:
    """Remembered precision choices in one JSON file (see the module's docstring); safe to lose or corrupt."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def default(cls, environ: Mapping[str, str] = os.environ) -> PrecisionCache:
        return cls(default_cache_dir(environ) / FILE_NAME)

    def lookup(self, key: ChoiceKey) -> RememberedChoice | None:
        """The choice stored under ``key``, or None. Entries for the same model under another key are logged."""
        for entry_key, choice in self._entries():
            if entry_key == key:
                return choice
            if entry_key.model == key.model:
                log.info("precision cache %s: not using the choice for %s made with %s", self.path, key.model,
                         "; ".join(key.differences(entry_key)))
        return None

    def store(self, key: ChoiceKey, choice: RememberedChoice) -> None:
        """Keep ``choice`` under ``key`` (replacing what was there), written atomically; a failure is logged."""
        entries = [(k, c) for k, c in self._entries(quiet=True) if k != key] + [(key, choice)]
        payload = {"format": FORMAT, "entries": [{"key": dataclasses.asdict(k), **dataclasses.asdict(c)}
                                                 for k, c in entries[-MAX_ENTRIES:]]}
        temporary = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".tmp-", suffix=".json")
            with os.fdopen(handle, "w") as f:
                json.dump(payload, f, indent=1)
            os.replace(temporary, self.path)
        except OSError as e:
            log.info("precision cache %s not written (%s): the choice will be timed again at the next start",
                     self.path, e)
            if temporary is not None:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)

    def _entries(self, quiet: bool = False) -> list[tuple[ChoiceKey, RememberedChoice]]:
        """The file's well-formed entries; an unreadable or malformed file or entry is skipped with a log line."""
        say = (lambda *args: None) if quiet else log.warning
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            say("precision cache %s ignored: cannot read it (%s)", self.path, e)
            return []
        if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("entries"), list):
            say("precision cache %s ignored: not a format-%d cache file", self.path, FORMAT)
            return []
        entries = []
        for item in data["entries"]:
            try:
                key = ChoiceKey(**item["key"])
                choice = RememberedChoice(item["precision"], {p: float(ms) for p, ms in item["ms_per_step"].items()},
                                          item["measured"])
                if not {"fp32", "bf16"} <= choice.ms_per_step.keys():
                    raise KeyError("ms_per_step")
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                say("precision cache %s: a malformed entry ignored (%s: %s)", self.path, type(e).__name__, e)
                continue
            entries.append((key, choice))
        return entries


def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
