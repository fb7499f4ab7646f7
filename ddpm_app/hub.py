"""Publishing a model folder to the Hugging Face Hub."""

from __future__ import annotations

from pathlib import Path

from .model_folder import HUB_FILES

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


def push_folder(folder: str | Path, repo_id: str, *, token: str | None = None, private: bool = False,
                commit_message: str = "Upload DDPM model") -> str:
    """Create ``repo_id`` if needed and upload ``folder`` (config, safetensors, card, images). Returns the URL.

    The token comes from ``token``, else ``HF_TOKEN``, else a prior ``hf auth login``; it is never printed.
    """
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    folder = Path(folder)
    check_repo_id(repo_id)
    if not (folder / "config.json").is_file():
        raise HubError(f"{folder}: not a model folder (no config.json); export the model first")
    token = token or get_token()
    if not token:
        raise HubError("no Hugging Face token: set HF_TOKEN or run `hf auth login`, then push again "
                       f"(the local export in {folder} is intact)")
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(folder_path=folder, repo_id=repo_id, repo_type="model",
                                 commit_message=commit_message,
                                 allow_patterns=[*HUB_FILES, "*.json"])  # and e.g. eval.json
    except OfflineModeIsEnabled:
        raise HubError(f"offline mode is on (HF_HUB_OFFLINE); nothing was uploaded. "
                       f"The local export in {folder} is intact.") from None
    except (HfHubHTTPError, OSError, _HTTPError) as e:
        reason = str(e).replace(token, "***")[:300]
        raise HubError(f"could not upload to {repo_id}: {type(e).__name__}: {reason}. "
                       f"The local export in {folder} is intact.") from None
    return getattr(info, "repo_url", None) or f"https://huggingface.co/{repo_id}"
