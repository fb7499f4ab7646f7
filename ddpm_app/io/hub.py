"""Publishing to the Hugging Face Hub: a model folder as a model repo, the app as a Space."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from ddpm_app.io.model_folder import HUB_FILES

try:  # the HTTP client huggingface_hub uses (its connection errors are not OSErrors)
    from httpx2 import HTTPError as _HTTPError
except ImportError:  # pragma: no cover - older huggingface_hub
    from httpx import HTTPError as _HTTPError


class HubError(RuntimeError):
    """Publishing failed; the message says why and that the local folder is untouched."""


def check_repo_id(repo_id: str) -> None:
    """Raise :class:`HubError` if ``repo_id`` cannot name a Hub repo (worth knowing before training, not after)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise HubError(f"{repo_id!r} is not a valid Hub repo id: {e}") from None


def has_token() -> bool:
    """Whether a Hub token is available (``HF_TOKEN`` or a prior ``hf auth login``)."""
    from huggingface_hub import get_token
    return bool(get_token())


# what a pushed model folder holds: what the app downloads, plus any other JSON (e.g. eval.json)
MODEL_FOLDER_FILES = (*HUB_FILES, "*.json")


def select_files(folder: str | Path, allow_patterns: Sequence[str], ignore_patterns: Sequence[str] = ()) -> list[str]:
    """The files under ``folder`` an upload sends: the paths (relative, ``/``-separated, sorted) that match an allow
    pattern and no ignore pattern, by huggingface_hub's own matching (``*`` crosses ``/``; ``.git`` never goes)."""
    from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

    folder = Path(folder)
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return list(filter_repo_objects(files, allow_patterns=list(allow_patterns),
                                    ignore_patterns=list(ignore_patterns) + DEFAULT_IGNORE_PATTERNS))


def upload_files(files: Mapping[str, Path], repo_id: str, *, intact: str, repo_type: str = "model",
                 space_sdk: str | None = None, token: str | None = None, private: bool = False,
                 commit_message: str) -> str:
    """Create ``repo_id`` if needed and upload ``files`` (path in the repo → local file) in one commit; returns the
    repo URL. Large and binary files go to LFS/Xet as the Hub asks.

    The token comes from ``token``, else ``HF_TOKEN``, else a prior ``hf auth login``; it is never printed. Every
    failure raises :class:`HubError`, whose one-line message ends with ``intact`` (what the user still has).
    """
    from huggingface_hub import CommitOperationAdd, HfApi, constants, get_token
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    check_repo_id(repo_id)
    if constants.is_offline_mode():
        raise HubError(f"offline mode is on (HF_HUB_OFFLINE); nothing was uploaded. {intact}")
    token = token or get_token()
    if not token:
        raise HubError(f"no Hugging Face token: set HF_TOKEN or run `hf auth login`, then try again. {intact}")
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=path) for name, path in files.items()]
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, repo_type=repo_type, space_sdk=space_sdk, private=private, exist_ok=True)
        api.create_commit(repo_id, operations, commit_message=commit_message, repo_type=repo_type)
    except OfflineModeIsEnabled:
        raise HubError(f"offline mode is on (HF_HUB_OFFLINE); nothing was uploaded. {intact}") from None
    except (HfHubHTTPError, OSError, _HTTPError) as e:
        reason = " ".join(str(e).replace(token, "***").split())[:300]
        raise HubError(f"could not upload to {repo_id}: {type(e).__name__}: {reason}. {intact}") from None
    return str(url)


def push_folder(folder: str | Path, repo_id: str, *, token: str | None = None, private: bool = False,
                commit_message: str = "Upload DDPM model") -> str:
    """Create the model repo ``repo_id`` if needed and upload ``folder`` (config, safetensors, card, images).
    Returns the URL. The token comes from ``token``, else ``HF_TOKEN``, else a prior ``hf auth login``."""
    folder = Path(folder)
    check_repo_id(repo_id)
    if not (folder / "config.json").is_file():
        raise HubError(f"{folder}: not a model folder (no config.json); export the model first")
    files = {name: folder / name for name in select_files(folder, MODEL_FOLDER_FILES)}
    return upload_files(files, repo_id, token=token, private=private, commit_message=commit_message,
                        intact=f"The local export in {folder} is intact.")
