"""Error types. Each names what is at fault (file, row, key or reward) so a user can fix it."""

from __future__ import annotations

import contextvars
import difflib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager


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


_missing_inputs: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("missing_inputs", default=None)


def missing_input(message: str) -> None:
    """A file the recipe names is not on this machine: a ConfigError, or a note under ``collect_missing_inputs``.

    ``audiorl validate`` checks a recipe on any machine (a laptop, before a cluster run whose
    checkpoints and data live elsewhere): there, missing inputs are listed, not fatal. ``train``
    always stops on them, before anything loads.
    """
    notes = _missing_inputs.get()
    if notes is None:
        raise ConfigError(message)
    notes.append(message)


@contextmanager
def collect_missing_inputs() -> Iterator[list[str]]:
    notes: list[str] = []
    token = _missing_inputs.set(notes)
    try:
        yield notes
    finally:
        _missing_inputs.reset(token)
