"""What users send that only serving knows how to check: how many images one run makes, and a Hub model id. Both
raise :class:`~ddpm_app.checks.InvalidValue`, like every other check (:mod:`ddpm_app.checks`)."""

from __future__ import annotations

import functools

from ddpm_app.checks import InvalidValue, shown, whole_number
from ddpm_app.io.model_folder import HUB_ID_MAX_LENGTH, HUB_REPO_ID

MAX_BATCH = 4


def batch_size(value: object) -> int:
    """How many images one run makes: 1…MAX_BATCH."""
    return whole_number(value, "number of images", 1, MAX_BATCH)


@functools.lru_cache(maxsize=1)
def _hub_validator():
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id
    return validate_repo_id, HFValidationError


def hub_model_id(value: object) -> str:
    """A Hub repo id "user/model-name": letters, digits, '-', '_' and '.', at most 96 characters, checked here
    (with huggingface_hub's own rules) before anything touches the network or the disk."""
    text = value.strip() if isinstance(value, str) else None
    valid = text is not None and len(text) <= HUB_ID_MAX_LENGTH and HUB_REPO_ID.fullmatch(text) is not None
    if valid:
        validate, refused = _hub_validator()
        try:
            validate(text)  # no '..' or '--', no name ending in '.' or '-', …
        except refused:
            valid = False
    if not valid:
        raise InvalidValue("error.hub_id", most=HUB_ID_MAX_LENGTH, got=shown(value))
    return text
