"""Held-out evaluation: greedy completions scored by the recipe's rewards."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
from audiorl.rewards import RewardSet
from audiorl.rl.prompts import PromptEncoder
from audiorl.rl.rollout import reward_columns
from audiorl.rollouts.base import RolloutEngine, SamplingParams
ASR_REWARDS = ("asr_correctness", "asr_edit_distance")


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
    lm = prompts.lm
    texts = [lm.completion_text(c.text, c.token_ids) for c in completions]
    columns = reward_columns(rows)
    codes = [lm.audio_codes(c.token_ids) for c in completions]
    scores = rewards.score(texts, [row.get("prompt_text") for row in rows], columns, audio_codes=codes)
    if samples_path:
        with open(samples_path, "w") as f:
            for row, text, total in zip(rows, texts, scores.total):
                f.write(json.dumps({"row": row.get("_row"), "completion": text, "score": None if total != total else float(total)}) + "\n")
    out = {f"eval/{name}": value for name, value in scores.means().items()}
    out.update(asr_corpus_rates(rewards, scores, texts, columns))
    return out


def asr_corpus_rates(rewards: RewardSet, scores, texts: Sequence[str], columns: dict[str, list]) -> dict[str, float]:
    """For each ASR reward: the corpus error rate (total edits / total reference units) over the rows it scored.

    The mean of per-utterance rewards weights a 3-word utterance like a 30-word one; the corpus rate
    is the figure ASR papers report.
    """
    from audiorl.rewards.asr import corpus_error_rate
    from audiorl.rewards.text import answer_span

    out = {}
    for j, r in enumerate(rewards.rewards):
        if r.spec_name not in ASR_REWARDS or "transcript" not in columns:
            continue
        rows = [i for i in range(len(texts)) if not np.isnan(scores.values[i, j])]
        if not rows:
            continue
        language = r.kwargs.get("language", columns.get("language"))
        if isinstance(language, list):
            language = [language[i] for i in rows]
        counts = corpus_error_rate(
            [str(columns["transcript"][i]) for i in rows],
            [answer_span(texts[i])[0] for i in rows],
            language=language,
            metric=r.kwargs.get("metric", "auto"),
        )
        out[f"eval/{r.name}/corpus_{counts.metric}"] = counts.rate
    return out
