"""From data rows to a scored ``RolloutBatch``: prompts with audio -> the rollout engine -> the rewards.

The engine gets the policy's current weights before it generates whenever they changed since its
last generation (an optimizer step, a merged adapter), inside its resume/release bracket (a
sleeping GPU vLLM must be awake to take them).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from audiorl.rewards import RewardSet
from audiorl.rewards.aggregate import RewardScores
from audiorl.rl.batch import RolloutBatch, pad
from audiorl.rl.prompts import PromptEncoder
from audiorl.rollouts.base import RolloutEngine, SamplingParams

# Row fields that are not reward columns.
_NOT_COLUMNS = ("prompt", "prompt_text")


class Rollouts:
    """``sync`` gives the engine the policy's current weights if it lacks them (``RLRecipe.sync_engine``)."""

    def __init__(self, lm: Any, prompts: PromptEncoder, engine: RolloutEngine, sampling: SamplingParams, sync: Callable[[], None]):
        self.lm = lm
        self.prompts = prompts
        self.engine = engine
        self.sampling = sampling
        self.sync = sync

    def generate(self, rows: Sequence[dict[str, Any]], n: int, sampling: SamplingParams | None = None) -> RolloutBatch:
        """``n`` completions of each row's prompt (rows of one prompt are consecutive: a group)."""
        requests = [self.prompts.request(row["prompt"], n=n, row=row.get("_row")) for row in rows]
        self.engine.resume()
        try:
            self.sync()
            results = self.engine.generate(requests, sampling or self.sampling)
        finally:
            self.engine.release()
        prompt_ids, completion_ids, logprobs, clips, data_rows, groups, texts, finished, codes = [], [], [], [], [], [], [], [], []
        for g, (row, request, completions) in enumerate(zip(rows, requests, results)):
            for c in completions:
                prompt_ids.append(request.prompt_ids)
                completion_ids.append(c.token_ids)
                logprobs.append(c.logprobs if len(c.logprobs) == len(c.token_ids) else [math.nan] * len(c.token_ids))
                clips.append(list(request.clips))
                data_rows.append(row)
                groups.append(g)
                texts.append(self.lm.completion_text(c.text, c.token_ids))
                codes.append(self.lm.audio_codes(c.token_ids))
                finished.append(c.finished)
        pad_id = self.lm.tokenizer.pad_token_id
        p_ids, p_mask = pad(prompt_ids, pad_id, left=True)
        c_ids, c_mask = pad(completion_ids, pad_id, left=False, width=max(max(map(len, completion_ids), default=1), 1))
        sampling_logps, _ = pad(logprobs, math.nan, left=False, dtype=torch.float32, width=c_ids.size(1))
        return RolloutBatch(
            prompt_ids=p_ids, prompt_mask=p_mask, completion_ids=c_ids, completion_mask=c_mask, clips=clips, rows=data_rows,
            group_ids=torch.tensor(groups), texts=texts, finished=torch.tensor(finished, dtype=torch.bool), sampling_logps=sampling_logps,
            audio_codes=codes,
        )


def reward_columns(rows: Sequence[dict[str, Any]]) -> dict[str, list]:
    keys = [k for k in rows[0] if k not in _NOT_COLUMNS] if rows else []
    return {k: [row.get(k) for row in rows] for k in keys}


def score(batch: RolloutBatch, rewards: RewardSet) -> RewardScores:
    """Score every completion of ``batch`` with ``rewards``; the values land on the batch."""
    scores = rewards.score(
        batch.texts, [row.get("prompt_text") for row in batch.rows], reward_columns(batch.rows), audio_codes=batch.audio_codes or None
    )
    batch.reward_names = list(scores.names)
    batch.rewards = torch.tensor(scores.values, dtype=torch.float32)
    batch.total = torch.tensor(scores.total, dtype=torch.float32)
    return scores


def reward_metrics(batch: RolloutBatch, scores: RewardScores) -> dict[str, float]:
    """``reward`` (mean sampled total) first, then its spread and each reward's mean and error count."""
    total = batch.total
    valid = total[~torch.isnan(total)]
    out: dict[str, float] = {"reward": float(valid.mean()) if valid.numel() else math.nan}
    size = batch.group_size
    if size > 1 and len(batch) % size == 0:  # as TRL: the mean of the groups' spreads
        groups = total.view(-1, size)
        std = torch.tensor([float(g[~torch.isnan(g)].std()) if (~torch.isnan(g)).sum() > 1 else math.nan for g in groups])
        out["reward_std"] = float(torch.nanmean(std))
        out["frac_reward_zero_std"] = float((std.nan_to_num(0.0) < 1e-8).float().mean())
    else:
        out["reward_std"] = float(valid.std()) if valid.numel() > 1 else math.nan
    for name, value in scores.means().items():
        if value == value:  # NaN: the reward applied to no sample of this batch
            out[f"rewards/{name}/mean"] = value
    for name, count in scores.errors.items():
        out[f"rewards/{name}/errors"] = float(count)
    lengths = batch.completion_mask.sum(1).float()
    out["completions/mean_length"] = float(lengths.mean())
    out["completions/clipped_ratio"] = float((~batch.finished).float().mean())
    return out
