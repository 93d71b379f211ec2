"""Error types. Each names what is at fault (file, row, key or reward) so a user can fix it."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class AudioRLError(ValueError):
    """Base class for errors caused by the user's input (config, data, rewards)."""


class ConfigError(AudioRLError):
    """A recipe or CLI override is invalid. Raised before any model loads."""


class DataError(AudioRLError):
    """A dataset row is unusable (missing column, missing or corrupt audio)."""


class AudioLoadError(DataError):
    """An audio file could not be read."""


class RewardError(AudioRLError):
    """A reward function failed or returned something unusable."""


class RolloutServerError(AudioRLError):
    """A rollout server is unreachable, stalled, incompatible with the policy, or failed a request."""


def nearest(name: str, candidates: Iterable[str]) -> str:
    """' (did you mean X?)' for the closest candidate, or '' when none is close."""
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""
