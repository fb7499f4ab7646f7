"""Opening a model from wherever it is: a project model folder (:mod:`ddpm_app.io.model_folder`), a diffusers DDPM
folder (:mod:`ddpm_app.io.diffusers_folder`), or a Hub repo id fetched into the local cache. Both formats are read
with safetensors only, and from the Hub only their configs, weights, card and images are fetched."""

from __future__ import annotations

from pathlib import Path

import torch

from ddpm_app.io.diffusers_folder import HUB_FILES as DIFFUSERS_FILES
from ddpm_app.io.diffusers_folder import MODEL_INDEX, is_diffusers_folder, load_diffusers
from ddpm_app.io.model_folder import (
    CONFIG_NAME,
    HUB_FILES,
    HUB_ID_MAX_LENGTH,
    HUB_REPO_ID,
    LoadedModel,
    ModelFolderError,
    load_model_folder,
)


def load_local(directory: str | Path, device: torch.device | str = "cpu") -> LoadedModel:
    """The model in ``directory``: diffusers' layout (model_index.json, unet/, scheduler/) or the project's."""
    if is_diffusers_folder(Path(directory)):
        return load_diffusers(Path(directory), device)
    return load_model_folder(directory, device)


def is_repo_id(source: str) -> bool:
    """True for strings shaped like a Hub repo id ("user/name"), which a local path is not assumed to be."""
    return len(source) <= HUB_ID_MAX_LENGTH and bool(HUB_REPO_ID.fullmatch(source)) and not Path(source).exists()


def download(repo_id: str, revision: str | None = None, cache_dir: str | Path | None = None) -> Path:
    """Fetch a model folder from the Hub (only config, safetensors, card and images: no code, no pickles), or a
    diffusers DDPM folder (its model_index.json, configs, safetensors and card): the configs come first and say
    which."""
    markers = _snapshot(repo_id, revision, cache_dir, [CONFIG_NAME, MODEL_INDEX])
    return _snapshot(repo_id, revision, cache_dir,
                     DIFFUSERS_FILES if (markers / MODEL_INDEX).is_file() else HUB_FILES)


def _snapshot(repo_id: str, revision: str | None, cache_dir: str | Path | None, patterns: list[str]) -> Path:
    """The files of ``repo_id`` that match ``patterns``, fetched into the Hub's cache (or found there)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    try:
        path = snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=patterns)
    except GatedRepoError:
        raise ModelFolderError("hub.gated", repo=repo_id) from None
    except RepositoryNotFoundError:
        raise ModelFolderError("hub.not_found", repo=repo_id) from None
    except RevisionNotFoundError:
        raise ModelFolderError("hub.no_revision", repo=repo_id, revision=repr(revision)) from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        raise ModelFolderError("hub.offline", repo=repo_id) from None
    except (HfHubHTTPError, OSError) as e:
        raise ModelFolderError("hub.failed", repo=repo_id, why=f"{type(e).__name__}: {str(e)[:200]}") from None
    return Path(path)


def load_pretrained(source: str | Path, device: torch.device | str = "cpu", revision: str | None = None,
                    cache_dir: str | Path | None = None) -> LoadedModel:
    """Load a model from a local folder, or from a Hub repo id ("user/name") through the local cache."""
    source_str = str(source)
    if isinstance(source, str) and is_repo_id(source):
        loaded = load_local(download(source, revision, cache_dir), device)
        loaded.source = source_str
        return loaded
    return load_local(source, device)


