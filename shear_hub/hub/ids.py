"""Hub repo ids: one rule for every place that decides whether a string names a Hub repo.

The rule is huggingface_hub's own (``huggingface_hub.utils.validate_repo_id``, the check every Hub call makes before
it sends a request): ``name`` or ``namespace/name``, letters, digits, '-', '_' and '.', at most 96 characters a part,
not starting or ending with '-' or '.', no '--' or '..', not ending in '.git'. Whether a string that is also an
existing local path means the folder is the caller's decision (loading, card and Space each check it themselves).
space/app.py runs in a Space without shear_hub and calls ``validate_repo_id`` directly: the same rule.
"""

from __future__ import annotations

from huggingface_hub.utils import HFValidationError, validate_repo_id


def is_hub_id(ref: object, *, namespace: bool = False) -> bool:
    """``ref`` follows the Hub's repo-id rule; with ``namespace``, it also has the form namespace/name."""
    if not isinstance(ref, str) or (namespace and "/" not in ref):
        return False
    try:
        validate_repo_id(ref)
    except HFValidationError:
        return False
    return True
