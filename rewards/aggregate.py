"""Calling rewards and combining them: the one place where weighting and ``None`` handling live.

``RewardSet.score`` calls every reward on a batch, checks what comes back (one finite number or
``None`` per completion), names the reward and the sample when something is wrong, and returns
each reward's values plus their weighted sum (``None`` values are left out of a sample's sum; a
sample no reward applies to gets NaN, and the trainer gives it no advantage).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from audiorl.common.errors import ConfigError, RewardError
from audiorl.data.audio import SAMPLE_RATE, AudioStore
from audiorl.rewards.calling import EXECUTION_OPTIONS, BoundReward
from audiorl.rewards.registry import PART_ARGS, check_signature, required_columns, resolve_reward
from audiorl.rewards.text import as_text, strip_thinking, thinking

# A weighted sum beyond this overflows float32 statistics (the group std squares it): reward_std
# becomes inf/NaN and the loss 0, silently. Rewards are bounded in calling.py (MAX_REWARD).
MAX_WEIGHT = 1e6


@dataclass
class RewardScores:
    names: list[str]
    values: np.ndarray  # [n, k], NaN where a reward returned None
    weights: np.ndarray  # [k]
    errors: dict[str, int] = field(default_factory=dict)  # samples a reward failed on (on_error zero/skip)
    total: np.ndarray = field(init=False)  # [n]

    def __post_init__(self) -> None:
        weighted = np.where(np.isnan(self.values), 0.0, self.values * self.weights)
        applicable = ~np.isnan(self.values).all(axis=1)
        self.total = np.where(applicable, weighted.sum(axis=1), np.nan)

    def means(self) -> dict[str, float]:
        """Mean of each reward over the samples it applied to (NaN if none)."""
        out = {}
        for j, name in enumerate(self.names):
            col = self.values[:, j]
            out[name] = float(np.nanmean(col)) if (~np.isnan(col)).any() else math.nan
        return out


def completion_parts(completions: Sequence, audio_codes: Sequence[Sequence[int]] | None = None) -> dict[str, list]:
    """Each completion's think text (None without one), answer text (the rest) and speech codes."""
    texts = [as_text(c) for c in completions]
    codes = [list(c) for c in audio_codes] if audio_codes is not None else [[] for _ in texts]
    if len(codes) != len(texts):
        raise ValueError(f"{len(codes)} audio-code lists for {len(texts)} completions")
    return {"thinks": [thinking(t) for t in texts], "answers": [strip_thinking(t).strip() for t in texts], "audio_codes": codes}


class RewardSet:
    def __init__(self, specs: Sequence[Any], audio_store: Any = None):
        """``specs``: objects with ``name``, ``weight``, ``kwargs`` and optional ``alias``, ``on_error``,
        ``timeout_s``, ``workers``, ``batch_size`` (e.g. RewardSpec). ``audio_store``: where rewards
        that take ``waveforms`` get them (the trainer's, so clips are decoded once)."""
        self.audio_store = audio_store
        self.rewards: list[BoundReward] = []
        for spec in specs:
            fn = resolve_reward(spec.name)
            kwargs = dict(spec.kwargs or {})
            check_signature(spec.name, fn, kwargs)
            check_kwargs = getattr(fn, "check_kwargs", None)  # a reward's own early check of its options
            if check_kwargs is not None:
                check_kwargs(**kwargs)
            name = getattr(spec, "alias", None) or spec.name.rsplit(":", 1)[-1].rsplit(".", 1)[-1]
            if any(r.name == name for r in self.rewards):
                raise ConfigError(f"two rewards are logged as '{name}': give one an 'alias'")
            weight = float(spec.weight)
            if not math.isfinite(weight) or abs(weight) > MAX_WEIGHT:
                raise ConfigError(f"reward '{name}': weight {weight:g} must be a finite number within +-{MAX_WEIGHT:g}")
            options = {k: getattr(spec, k) for k in EXECUTION_OPTIONS if hasattr(spec, k)}  # else BoundReward's defaults
            self.rewards.append(BoundReward(name, spec.name, fn, weight, kwargs, **options))
        if not self.rewards:
            raise ConfigError("no rewards configured: add at least one under 'rewards'")

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.rewards]

    @property
    def weights(self) -> np.ndarray:
        return np.array([r.weight for r in self.rewards], dtype=np.float64)

    def check_columns(self, columns: Sequence[str], where: str) -> None:
        """Raise ConfigError if a reward needs a column that ``where`` (a dataset) lacks."""
        for r in self.rewards:
            missing = [c for c in required_columns(r.fn, dict(r.kwargs)) if c not in columns]
            if r.accepts("waveforms") and "audio" not in columns:
                missing.append("audio")
            if missing:
                raise ConfigError(
                    f"reward '{r.name}' needs column(s) {', '.join(missing)} which {where} lacks "
                    f"(columns: {', '.join(columns)})"
                )

    def score(
        self,
        completions: Sequence[str],
        prompts: Sequence[str] | None = None,
        columns: Mapping[str, Sequence] | None = None,
        audio_codes: Sequence[Sequence[int]] | None = None,
    ) -> RewardScores:
        """``audio_codes``: each completion's speech codes (none given: text replies)."""
        columns = dict(columns or {})
        n = len(completions)
        for key, values in columns.items():
            if len(values) != n:
                raise ValueError(f"column '{key}' has {len(values)} values for {n} completions")
        values = np.full((n, len(self.rewards)), np.nan)
        errors: dict[str, int] = {}
        waveforms = None
        for j, r in enumerate(self.rewards):
            samples: dict[str, list] = {"completions": list(completions)}
            constants: dict[str, Any] = {}
            if prompts is not None and r.accepts("prompts"):
                samples["prompts"] = list(prompts)
            for key, col in columns.items():
                if key not in ("completions", "prompts") and r.accepts(key):
                    samples[key] = list(col)
            if r.accepts("waveforms"):
                if waveforms is None:
                    waveforms = self._waveforms(r, columns.get("audio"), n)
                samples["waveforms"] = waveforms
            if r.accepts("sampling_rate"):
                constants["sampling_rate"] = SAMPLE_RATE
            if any(r.accepts(arg) for arg in PART_ARGS):
                parts = completion_parts(completions, audio_codes)
                samples.update({arg: parts[arg] for arg in PART_ARGS if r.accepts(arg)})
            values[:, j], failed = r(samples, constants)
            if failed:
                errors[r.name] = failed
        return RewardScores(self.names, values, self.weights, errors)

    def _waveforms(self, r: BoundReward, audio: Sequence | None, n: int) -> list[list[np.ndarray]]:
        """Each sample's clips at 16 kHz, from the ``audio`` column (paths), through the shared audio store."""
        if audio is None:
            raise RewardError(f"reward '{r.name}' takes 'waveforms' but the batch has no 'audio' column")
        if self.audio_store is None:
            self.audio_store = AudioStore()
        out = []
        for i, paths in enumerate(audio):
            paths = paths if isinstance(paths, (list, tuple)) else [paths]
            try:
                out.append([self.audio_store.wave(self.audio_store.add_file(p)) for p in paths])
            except Exception as exc:
                raise RewardError(f"reward '{r.name}': the audio of sample {i} could not be read: {exc}") from exc
        return out

    def close(self) -> None:
        """Stop the rewards' worker pools."""
        for r in self.rewards:
            r.close()
