"""Calling rewards and combining them: the one place where weighting and ``None`` handling live.

``RewardSet.score`` calls every reward on a batch, checks what comes back (one finite number or
``None`` per completion), names the reward and the sample when something is wrong, and returns
each reward's values plus their weighted sum (``None`` values are left out of a sample's sum; a
sample no reward applies to gets NaN, and the trainer gives it no advantage).
"""

from __future__ import annotations

import asyncio
import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from audiorl.common.errors import ConfigError, RewardError
from audiorl.rewards.registry import RewardFn, check_signature, required_columns, resolve_reward


@dataclass(frozen=True)
class BoundReward:
    name: str  # how it is logged
    fn: RewardFn
    weight: float
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def accepts_all(self) -> bool:
        return any(p.kind is p.VAR_KEYWORD for p in inspect.signature(self.fn).parameters.values())

    def accepts(self, arg: str) -> bool:
        return self.accepts_all or arg in inspect.signature(self.fn).parameters


@dataclass
class RewardScores:
    names: list[str]
    values: np.ndarray  # [n, k], NaN where a reward returned None
    weights: np.ndarray  # [k]
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


def _snippet(text: object, limit: int = 80) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class RewardSet:
    def __init__(self, specs: Sequence[Any]):
        """``specs``: objects with ``name``, ``weight``, ``kwargs`` and optional ``alias`` (e.g. RewardSpec)."""
        self.rewards: list[BoundReward] = []
        for spec in specs:
            fn = resolve_reward(spec.name)
            kwargs = dict(spec.kwargs or {})
            check_signature(spec.name, fn, kwargs)
            name = getattr(spec, "alias", None) or spec.name.rsplit(":", 1)[-1].rsplit(".", 1)[-1]
            if any(r.name == name for r in self.rewards):
                raise ConfigError(f"two rewards are logged as '{name}': give one an 'alias'")
            weight = float(spec.weight)
            if not math.isfinite(weight):
                raise ConfigError(f"reward '{name}' has a non-finite weight")
            self.rewards.append(BoundReward(name, fn, weight, kwargs))
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
            if missing:
                raise ConfigError(
                    f"reward '{r.name}' needs column(s) {', '.join(missing)} which {where} lacks "
                    f"(columns: {', '.join(columns)})"
                )

    def score(self, completions: Sequence[str], prompts: Sequence[str] | None = None, columns: Mapping[str, Sequence] | None = None) -> RewardScores:
        columns = dict(columns or {})
        n = len(completions)
        for key, values in columns.items():
            if len(values) != n:
                raise ValueError(f"column '{key}' has {len(values)} values for {n} completions")
        values = np.full((n, len(self.rewards)), np.nan)
        for j, r in enumerate(self.rewards):
            values[:, j] = self._call(r, list(completions), prompts, columns)
        return RewardScores(self.names, values, self.weights)

    # ------------------------------------------------------------------ calling
    def _arguments(self, r: BoundReward, completions, prompts, columns, rows: slice) -> dict[str, Any]:
        args: dict[str, Any] = {"completions": completions[rows]}
        if prompts is not None and r.accepts("prompts"):
            args["prompts"] = list(prompts)[rows]
        for key, col in columns.items():
            if key not in ("completions", "prompts") and r.accepts(key):
                args[key] = list(col)[rows]
        args.update(r.kwargs)
        return args

    @staticmethod
    def _invoke(fn: RewardFn, args: dict[str, Any]) -> Any:
        out = fn(**args)
        if inspect.isawaitable(out):
            out = asyncio.run(_await(out))
        return out

    def _call(self, r: BoundReward, completions, prompts, columns) -> list[float]:
        n = len(completions)
        try:
            out = self._invoke(r.fn, self._arguments(r, completions, prompts, columns, slice(None)))
        except Exception as exc:
            raise self._locate_failure(r, completions, prompts, columns, exc) from exc
        if out is None or isinstance(out, (str, bytes)) or not hasattr(out, "__len__"):
            raise RewardError(f"reward '{r.name}' returned {type(out).__name__}; it must return a list of {n} numbers")
        out = list(out)
        if len(out) != n:
            raise RewardError(f"reward '{r.name}' returned {len(out)} values for {n} completions")
        result = []
        for i, v in enumerate(out):
            if v is None:
                result.append(math.nan)
                continue
            try:
                f = float(v)
            except (TypeError, ValueError):
                raise RewardError(
                    f"reward '{r.name}' returned {v!r} for sample {i} (completion {_snippet(completions[i])!r}); "
                    "rewards must be numbers or None"
                ) from None
            if not math.isfinite(f):
                raise RewardError(
                    f"reward '{r.name}' returned {f} for sample {i} (completion {_snippet(completions[i])!r}); "
                    "return None for 'not applicable' instead of NaN/inf"
                )
            result.append(f)
        return result

    def _locate_failure(self, r: BoundReward, completions, prompts, columns, exc: Exception) -> RewardError:
        """Re-run sample by sample to name the one that makes the reward raise."""
        for i in range(len(completions)):
            try:
                self._invoke(r.fn, self._arguments(r, completions, prompts, columns, slice(i, i + 1)))
            except Exception as sample_exc:  # noqa: BLE001 - any failure is reported with its sample
                return RewardError(
                    f"reward '{r.name}' raised {type(sample_exc).__name__}: {sample_exc} on sample {i} "
                    f"(completion {_snippet(completions[i])!r})"
                )
        return RewardError(f"reward '{r.name}' raised {type(exc).__name__}: {exc} on a batch of {len(completions)}")


async def _await(awaitable):
    return await awaitable
