"""Held-out evaluation: greedy completions scored by the recipe's rewards."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from audiorl.rewards import RewardSet
from audiorl.rl.prompts import PromptEncoder
from audiorl.rollouts.base import RolloutEngine, SamplingParams

_NOT_COLUMNS = ("prompt", "prompt_text")


def evaluate(
    rows: Sequence[dict[str, Any]],
    prompts: PromptEncoder,
    engine: RolloutEngine,
    rewards: RewardSet,
    max_new_tokens: int,
    samples_path: str | None = None,
) -> dict[str, float]:
    """Mean of each reward over greedy completions of ``rows``, as ``{"eval/<reward>": value}``."""
    requests = [prompts.request(row["prompt"], n=1, row=row.get("_row")) for row in rows]
    completions = [c[0] for c in engine.generate(requests, SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0))]
    texts = [c.text for c in completions]
    columns = {k: [row[k] for row in rows] for k in rows[0] if k not in _NOT_COLUMNS}
    scores = rewards.score(texts, [row.get("prompt_text") for row in rows], columns)
    if samples_path:
        with open(samples_path, "w") as f:
            for row, text, total in zip(rows, texts, scores.total):
                f.write(json.dumps({"row": row.get("_row"), "completion": text, "score": None if total != total else float(total)}) + "\n")
    return {f"eval/{name}": value for name, value in scores.means().items()}
