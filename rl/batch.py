"""The typed batches every stage speaks: ``RolloutBatch`` (GRPO, PPO, online DPO) and ``PairBatch`` (DPO).

Rows are laid out as ``[prompt left-padded | completion right-padded]`` (TRL's layout), so the
prompt of every row ends at the same column and one slice gives every completion's positions.
Token roles (text, think, audio codes) come from token-id ranges, so a loss can leave any part
out (DPO's ``loss_on``; Step-Audio-AQAA left the audio codes out of its DPO loss).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from audiorl.data.audio import Clip
from audiorl.model.forward import Sequences

TEXT, THINK, AUDIO = 0, 1, 2
TOKEN_ROLES = {"text": TEXT, "think": THINK, "audio": AUDIO}


def token_roles(
    ids: torch.Tensor, think_ids: tuple[int, int] | None = None, audio_range: tuple[int, int] | None = None, think_open: bool = False
) -> torch.Tensor:
    """Each token's role (TEXT, THINK or AUDIO) in completions ``ids`` ``[B, T]``.

    THINK: from a ``<think>`` token through its ``</think>``, both included (an unclosed think runs
    to the end); ``think_open``: the prompt opened the think (think mode), so it runs from the first
    token. AUDIO: ids in ``audio_range`` (the family's audio-output codes). Else TEXT.

    >>> token_roles(torch.tensor([[5, 1, 6, 2, 7, 9]]), think_ids=(1, 2), audio_range=(9, 10)).tolist()
    [[0, 1, 1, 1, 0, 2]]
    """
    roles = torch.full_like(ids, TEXT)
    if think_ids is not None:
        opened = torch.cumsum(ids == think_ids[0], dim=1) + int(think_open)
        closed_before = torch.cumsum(ids == think_ids[1], dim=1) - (ids == think_ids[1]).long()
        roles = torch.where(opened > closed_before, torch.full_like(ids, THINK), roles)
    if audio_range is not None:
        lo, hi = audio_range
        roles = torch.where((ids >= lo) & (ids < hi), torch.full_like(ids, AUDIO), roles)
    return roles


def role_mask(roles: torch.Tensor, keep: Iterable[str]) -> torch.Tensor:
    """1 where a token's role is among ``keep`` (names of TOKEN_ROLES)."""
    wanted = torch.tensor([TOKEN_ROLES[name] for name in keep], device=roles.device)
    return torch.isin(roles, wanted).long()


def parts_loss_mask(lm: Any, ids: torch.Tensor, mask: torch.Tensor, loss_on: Iterable[str]) -> torch.Tensor:
    """``mask`` less the completion tokens whose role (by ``lm``'s think tags, think mode and speech codes) is not in ``loss_on``."""
    roles = token_roles(ids, lm.think_token_ids(), lm.audio_output_token_range, think_open=lm.think)
    return role_mask(roles, loss_on) * mask


def pad(seqs: Sequence[Sequence[int]], value: float, left: bool, dtype=torch.long, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of different lengths -> ``(values [B, width], mask [B, width])``, padded on the left or the right."""
    width = max((len(s) for s in seqs), default=0) if width is None else width
    out = torch.full((len(seqs), width), value, dtype=dtype)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if not len(s):
            continue
        if left:
            out[i, width - len(s) :] = torch.as_tensor(s, dtype=dtype)
            mask[i, width - len(s) :] = 1
        else:
            out[i, : len(s)] = torch.as_tensor(s, dtype=dtype)
            mask[i, : len(s)] = 1
    return out, mask


# Per-row tensors of a RolloutBatch that have a completion-token axis (trimmed with it).
_TOKEN_FIELDS = ("completion_ids", "completion_mask", "loss_mask", "sampling_logps", "old_logps", "ref_logps", "values", "returns", "token_rewards")


@dataclass
class RolloutBatch:
    """Completions sampled from the policy, with everything a policy-gradient update reads."""

    prompt_ids: torch.Tensor  # [N, P] left-padded
    prompt_mask: torch.Tensor  # [N, P]
    completion_ids: torch.Tensor  # [N, C] right-padded (the stop token included when produced)
    completion_mask: torch.Tensor  # [N, C]
    clips: list[list[Clip]]  # each row's clips
    rows: list[dict[str, Any]]  # the data row each completion answers (reward columns)
    group_ids: torch.Tensor  # [N] rows with the same id answer the same prompt
    texts: list[str]  # completions decoded for the rewards (with the prompt's generation prefix)
    finished: torch.Tensor  # [N] bool: ended with a stop token
    sampling_logps: torch.Tensor | None = None  # [N, C] the rollout engine's log-probs (NaN: none)
    loss_mask: torch.Tensor | None = None  # [N, C] tokens in the loss (default: completion_mask)
    audio_codes: list[list[int]] = field(default_factory=list)  # each row's speech codes (empty: text replies)
    reward_names: list[str] = field(default_factory=list)
    rewards: torch.Tensor | None = None  # [N, k] each reward's value, NaN where it did not apply
    total: torch.Tensor | None = None  # [N] weighted sum, NaN where no reward applied
    # filled by the algorithm before its update
    old_logps: torch.Tensor | None = None  # [N, C]
    ref_logps: torch.Tensor | None = None  # [N, C]
    values: torch.Tensor | None = None  # [N, C]
    returns: torch.Tensor | None = None  # [N, C]
    token_rewards: torch.Tensor | None = None  # [N, C]
    advantages: torch.Tensor | None = None  # [N] or [N, C]

    def __post_init__(self) -> None:
        if self.loss_mask is None:
            self.loss_mask = self.completion_mask.clone()
        n = self.prompt_ids.size(0)
        if not (len(self.clips) == len(self.rows) == len(self.texts) == n):
            raise ValueError(f"rollout batch of {n} rows has {len(self.clips)} clip rows, {len(self.rows)} data rows, {len(self.texts)} texts")

    def __len__(self) -> int:
        return self.prompt_ids.size(0)

    @property
    def group_size(self) -> int:
        counts = torch.unique_consecutive(self.group_ids, return_counts=True)[1]
        return int(counts[0]) if counts.numel() else 0

    def sequences(self) -> Sequences:
        return Sequences(
            input_ids=torch.cat([self.prompt_ids, self.completion_ids], dim=1),
            attention_mask=torch.cat([self.prompt_mask, self.completion_mask], dim=1),
            clips=self.clips,
            start=self.prompt_ids.size(1),
        )

    def select(self, index: Sequence[int] | torch.Tensor, trim: bool = True) -> RolloutBatch:
        """The rows ``index``; ``trim``: cut padding no selected row needs (shorter forwards)."""
        idx = torch.as_tensor(index, dtype=torch.long)
        values: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if torch.is_tensor(v) and v.dim() > 0 and v.size(0) == len(self):
                values[f.name] = v[idx]
            elif isinstance(v, list) and len(v) == len(self) and f.name != "reward_names":
                values[f.name] = [v[i] for i in idx.tolist()]
            else:
                values[f.name] = v
        out = replace(self, **values)
        return out.trimmed() if trim else out

    def trimmed(self) -> RolloutBatch:
        prompt_width = int(self.prompt_mask.sum(1).max()) if len(self) else 0
        completion_width = max(int(self.completion_mask.sum(1).max()) if len(self) else 0, 1)
        values: dict[str, Any] = {
            "prompt_ids": self.prompt_ids[:, self.prompt_ids.size(1) - prompt_width :],
            "prompt_mask": self.prompt_mask[:, self.prompt_mask.size(1) - prompt_width :],
        }
        for name in _TOKEN_FIELDS:
            v = getattr(self, name)
            if v is not None:
                values[name] = v[:, :completion_width]
        if self.advantages is not None and self.advantages.dim() == 2:
            values["advantages"] = self.advantages[:, :completion_width]
        return replace(self, **values)


@dataclass
class PairBatch:
    """Preference pairs: one prompt (with its clips), a chosen and a rejected completion."""

    prompt_ids: torch.Tensor  # [B, P] left-padded
    prompt_mask: torch.Tensor  # [B, P]
    chosen_ids: torch.Tensor  # [B, C] right-padded
    chosen_mask: torch.Tensor  # [B, C]
    rejected_ids: torch.Tensor  # [B, C]
    rejected_mask: torch.Tensor  # [B, C]
    clips: list[list[Clip]]
    chosen_loss_mask: torch.Tensor | None = None  # [B, C] tokens of the chosen completion in the loss
    rejected_loss_mask: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.chosen_loss_mask is None:
            self.chosen_loss_mask = self.chosen_mask.clone()
        if self.rejected_loss_mask is None:
            self.rejected_loss_mask = self.rejected_mask.clone()

    def __len__(self) -> int:
        return self.prompt_ids.size(0)

    @classmethod
    def build(
        cls,
        prompts: Sequence[Sequence[int]],
        chosen: Sequence[Sequence[int]],
        rejected: Sequence[Sequence[int]],
        clips: Sequence[Sequence[Clip]],
        pad_id: int,
    ) -> PairBatch:
        prompt_ids, prompt_mask = pad(prompts, pad_id, left=True)
        width = max(max(map(len, chosen)), max(map(len, rejected)), 1)
        chosen_ids, chosen_mask = pad(chosen, pad_id, left=False, width=width)
        rejected_ids, rejected_mask = pad(rejected, pad_id, left=False, width=width)
        return cls(prompt_ids, prompt_mask, chosen_ids, chosen_mask, rejected_ids, rejected_mask, [list(c) for c in clips])

    def sequences(self) -> Sequences:
        """Chosen rows then rejected rows (``2B``), one forward for both."""
        return Sequences(
            input_ids=torch.cat([torch.cat([self.prompt_ids, self.chosen_ids], 1), torch.cat([self.prompt_ids, self.rejected_ids], 1)]),
            attention_mask=torch.cat([torch.cat([self.prompt_mask, self.chosen_mask], 1), torch.cat([self.prompt_mask, self.rejected_mask], 1)]),
            clips=self.clips + self.clips,
            start=self.prompt_ids.size(1),
        )

    @property
    def loss_mask(self) -> torch.Tensor:
        """``[2B, C]``: the chosen rows' loss mask, then the rejected rows'."""
        return torch.cat([self.chosen_loss_mask, self.rejected_loss_mask])

    def select(self, index: Sequence[int]) -> PairBatch:
        idx = torch.as_tensor(index, dtype=torch.long)
        values = {f.name: (getattr(self, f.name)[idx] if torch.is_tensor(getattr(self, f.name)) else [self.clips[i] for i in idx.tolist()]) for f in fields(self)}
        out = replace(self, **values)
        prompt_width = int(out.prompt_mask.sum(1).max())
        width = max(int(out.chosen_mask.sum(1).max()), int(out.rejected_mask.sum(1).max()), 1)
        return replace(
            out,
            prompt_ids=out.prompt_ids[:, -prompt_width:], prompt_mask=out.prompt_mask[:, -prompt_width:],
            chosen_ids=out.chosen_ids[:, :width], chosen_mask=out.chosen_mask[:, :width], chosen_loss_mask=out.chosen_loss_mask[:, :width],
            rejected_ids=out.rejected_ids[:, :width], rejected_mask=out.rejected_mask[:, :width], rejected_loss_mask=out.rejected_loss_mask[:, :width],
        )
